//! The per-run trace index: where each line of `events.jsonl` starts, what it is, and the small fields pages need.
//!
//! Building it reads the file once, in chunks, finding line ends and reading each line's type from its
//! first bytes (the writer always puts `seq`, `ts`, `prev_sha256` and `type` first; other layouts fall
//! back to a parse that skips the large fields). Small events (stages, scores, warnings, rescues, the
//! end of the run) are parsed whole and applied to the run's [`Replay`], which also counts each step
//! from its line's prefix; steps are parsed only when a page shows them, with a struct that keeps a
//! few short fields and skips outputs. Later refreshes resume at the last complete line, so the
//! same index serves the live tail; a shorter file or a changed first line starts it again.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::trace::log::Envelope;
use crate::trace::replay::Replay;
use crate::trace::{Event, StepRecord, StepUsage};

/// Steps per page of the run page's timeline.
pub(crate) const PAGE_SIZE: usize = 100;
/// Bytes read per `pread` while scanning.
const CHUNK: usize = 1 << 20;
/// A line longer than this is reported as damaged instead of being held in memory.
const MAX_LINE: usize = 256 << 20;
/// Bytes of the file's start remembered to notice that it was replaced.
const HEAD: usize = 256;
/// Step summaries kept parsed per run (a page needs 100; more are parsed again when asked for).
const MAX_CACHED: usize = 20_000;
/// Characters kept of a string field in a step summary.
const SHORT: usize = 240;

/// The `type` of a trace line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    RunStarted,
    StageStarted,
    StepStarted,
    Step,
    StageEnded,
    StageScored,
    Warning,
    ModelCall,
    AgentLog,
    Rescue,
    Integrity,
    RunFinished,
    /// A type this viewer does not know.
    Other,
    /// Not a trace event (see the index's problems).
    Corrupt,
}

impl Kind {
    fn from_tag(tag: &str) -> Self {
        match tag {
            "run_started" => Self::RunStarted,
            "stage_started" => Self::StageStarted,
            "step_started" => Self::StepStarted,
            "step" => Self::Step,
            "stage_ended" => Self::StageEnded,
            "stage_scored" => Self::StageScored,
            "warning" => Self::Warning,
            "model_call" => Self::ModelCall,
            "agent_log" => Self::AgentLog,
            "rescue" => Self::Rescue,
            "integrity" => Self::Integrity,
            "run_finished" => Self::RunFinished,
            _ => Self::Other,
        }
    }

    /// Small events, parsed whole while indexing.
    fn kept(self) -> bool {
        matches!(
            self,
            Self::RunStarted
                | Self::StageStarted
                | Self::StageEnded
                | Self::StageScored
                | Self::Warning
                | Self::Rescue
                | Self::Integrity
                | Self::RunFinished
        )
    }
}

/// One line of the trace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LineRef {
    pub offset: u64,
    pub len: u32,
    /// 1-based line number in the file (blank lines count).
    pub line_no: u64,
    /// The event's `seq` (for a damaged line: one more than the line before).
    pub seq: u64,
    pub kind: Kind,
}

/// A step that has started and not ended yet: a live run's command still running.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct InFlight {
    pub seq: u64,
    pub step: u64,
    pub stage: String,
    pub tool: String,
    /// The command, path or first argument, one line, shortened.
    pub summary: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

/// A line that is not a trace event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Problem {
    pub line_no: u64,
    pub message: String,
}

#[derive(Debug, Clone, Copy)]
struct StepRef {
    /// Index into `lines`.
    line: usize,
    /// The step's number over the run (1-based), as the line's prefix says.
    step: u64,
}

/// What the timeline shows of one step.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StepSummary {
    pub seq: u64,
    pub line_no: u64,
    pub step: u64,
    pub stage: String,
    pub stage_step: u64,
    pub tool: String,
    /// The command, path or first argument, one line, shortened.
    pub summary: String,
    pub ok: bool,
    pub exit_code: Option<i64>,
    /// The error code of a failed tool call.
    pub error: Option<String>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub duration_ms: f64,
    pub sandbox_seconds: f64,
    pub cpu_seconds: Option<f64>,
    pub max_rss_kb: Option<u64>,
    pub peak_bytes: Option<u64>,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub commit: Option<String>,
}

/// Counts of the events that are indexed but not kept.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Counts {
    pub model_calls: u64,
    pub agent_logs: u64,
    pub step_started: u64,
}

/// The index of one `events.jsonl`.
pub(crate) struct TraceIndex {
    path: PathBuf,
    file: Option<File>,
    /// Device and inode of the open file, to notice a replaced file.
    identity: (u64, u64),
    exists: bool,
    /// Bytes indexed: the end of the last complete line.
    scanned: u64,
    /// Bytes after `scanned` (a line still being written).
    pending: u64,
    physical_lines: u64,
    head: Vec<u8>,
    lines: Vec<LineRef>,
    steps: Vec<StepRef>,
    by_number: HashMap<u64, usize>,
    summaries: HashMap<usize, Arc<StepSummary>>,
    events: Vec<(u64, Event)>,
    /// The small events applied in order, and the steps counted from their lines' prefixes.
    replay: Replay,
    problems: Vec<Problem>,
    counts: Counts,
}

impl TraceIndex {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            file: None,
            identity: (0, 0),
            exists: false,
            scanned: 0,
            pending: 0,
            physical_lines: 0,
            head: Vec::new(),
            lines: Vec::new(),
            steps: Vec::new(),
            by_number: HashMap::new(),
            summaries: HashMap::new(),
            events: Vec::new(),
            replay: Replay::default(),
            problems: Vec::new(),
            counts: Counts::default(),
        }
    }

    fn reset(&mut self) {
        *self = Self::new(&self.path.clone());
    }

    fn io_error(&self, e: std::io::Error) -> String {
        format!("{}: {e}", self.path.display())
    }

    /// Brings the index up to the file's current end; errors name the file.
    pub(crate) fn refresh(&mut self) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.reset();
                return Ok(());
            }
            Err(e) => return Err(self.io_error(e)),
        };
        let len = meta.len();
        let identity = (meta.dev(), meta.ino());
        if self.file.is_some()
            && (identity != self.identity || len < self.scanned || !self.same_head()?)
        {
            self.reset();
        }
        if self.file.is_none() {
            self.file = Some(File::open(&self.path).map_err(|e| self.io_error(e))?);
            self.identity = identity;
        }
        self.exists = true;
        if len == self.scanned + self.pending && self.scanned > 0 {
            return Ok(());
        }
        self.scan(len)
    }

    fn same_head(&mut self) -> Result<bool, String> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let mut buf = vec![0u8; self.head.len()];
        match file.read_exact_at(&mut buf, 0) {
            Ok(()) => Ok(buf == self.head),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(self.io_error(e)),
        }
    }

    fn scan(&mut self, len: u64) -> Result<(), String> {
        let Some(file) = self.file.take() else {
            return Err(format!("{}: not open", self.path.display()));
        };
        let res = self.scan_file(&file, len);
        self.file = Some(file);
        res
    }

    fn scan_file(&mut self, file: &File, len: u64) -> Result<(), String> {
        let mut buf = vec![0u8; CHUNK];
        let mut pos = self.scanned;
        // The line being assembled across chunks, and where it starts.
        let mut carry: Vec<u8> = Vec::new();
        let mut carry_start = self.scanned;
        let mut oversized = false;
        while pos < len {
            let want = ((len - pos) as usize).min(CHUNK);
            let n = file
                .read_at(&mut buf[..want], pos)
                .map_err(|e| self.io_error(e))?;
            if n == 0 {
                break; // the file shrank under us; the next refresh sees it
            }
            let chunk = &buf[..n];
            if self.head.len() < HEAD && pos < HEAD as u64 {
                let from = pos as usize;
                let take = (HEAD - from).min(n);
                if self.head.len() == from {
                    self.head.extend_from_slice(&chunk[..take]);
                }
            }
            let mut start = 0usize;
            for nl in memchr::memchr_iter(b'\n', chunk) {
                let end_offset = pos + nl as u64 + 1;
                if carry.is_empty() && !oversized {
                    self.add_line(&chunk[start..nl], pos + start as u64);
                } else {
                    if !oversized {
                        carry.extend_from_slice(&chunk[start..nl]);
                    }
                    let line = std::mem::take(&mut carry);
                    if oversized {
                        self.add_oversized(carry_start, end_offset - carry_start - 1);
                    } else {
                        self.add_line(&line, carry_start);
                    }
                    oversized = false;
                }
                start = nl + 1;
                self.scanned = end_offset;
                carry_start = end_offset;
            }
            if start < n && !oversized {
                if carry.len() + (n - start) > MAX_LINE {
                    oversized = true;
                    carry = Vec::new();
                } else {
                    carry.extend_from_slice(&chunk[start..]);
                }
            }
            pos += n as u64;
        }
        self.pending = len.saturating_sub(self.scanned);
        Ok(())
    }

    fn add_oversized(&mut self, offset: u64, len: u64) {
        self.physical_lines += 1;
        let line_no = self.physical_lines;
        let seq = self.next_seq();
        self.problems.push(Problem {
            line_no,
            message: format!("a line of {len} bytes is longer than the viewer reads"),
        });
        self.lines.push(LineRef {
            offset,
            len: 0,
            line_no,
            seq,
            kind: Kind::Corrupt,
        });
    }

    fn next_seq(&self) -> u64 {
        self.lines.last().map(|l| l.seq + 1).unwrap_or(0)
    }

    fn add_line(&mut self, line: &[u8], offset: u64) {
        self.physical_lines += 1;
        let line_no = self.physical_lines;
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        let head = match peek(line) {
            Some(p) => Ok(p),
            None => lite(line),
        };
        let (seq, kind, step) = match head {
            Ok(h) => {
                let kind = Kind::from_tag(&h.kind);
                if let (Kind::Step, Some(stage), Some(_)) = (kind, &h.stage, h.step) {
                    self.replay.step_seen(stage);
                }
                (h.seq, kind, h.step)
            }
            Err(message) => {
                self.problems.push(Problem { line_no, message });
                (self.next_seq(), Kind::Corrupt, None)
            }
        };
        let mut kind = kind;
        if kind.kept() {
            match serde_json::from_slice::<Envelope>(line) {
                Ok(env) => {
                    self.replay.apply_at(env.ts, &env.event);
                    self.events.push((env.seq, env.event));
                }
                Err(e) => {
                    self.problems.push(Problem {
                        line_no,
                        message: format!("not a trace event: {e}"),
                    });
                    kind = Kind::Corrupt;
                }
            }
        }
        match kind {
            Kind::Step => match step {
                Some(n) => {
                    self.by_number.entry(n).or_insert(self.steps.len());
                    self.steps.push(StepRef {
                        line: self.lines.len(),
                        step: n,
                    });
                }
                None => {
                    self.problems.push(Problem {
                        line_no,
                        message: "a step event without a step number".into(),
                    });
                    kind = Kind::Corrupt;
                }
            },
            Kind::ModelCall => self.counts.model_calls += 1,
            Kind::AgentLog => self.counts.agent_logs += 1,
            Kind::StepStarted => self.counts.step_started += 1,
            _ => {}
        }
        self.lines.push(LineRef {
            offset,
            len: u32::try_from(line.len()).unwrap_or(u32::MAX),
            line_no,
            seq,
            kind,
        });
    }

    /// Whether the file existed at the last refresh.
    pub fn exists(&self) -> bool {
        self.exists
    }

    /// Bytes indexed (complete lines).
    pub fn bytes(&self) -> u64 {
        self.scanned
    }

    /// Bytes of a last line still being written.
    pub(crate) fn pending_bytes(&self) -> u64 {
        self.pending
    }

    #[cfg(test)]
    pub fn lines(&self) -> &[LineRef] {
        &self.lines
    }

    /// The `seq` of the last complete line.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.lines.last().map(|l| l.seq)
    }

    pub fn step_count(&self) -> usize {
        self.steps.len()
    }

    pub fn pages(&self) -> usize {
        self.steps.len().div_ceil(PAGE_SIZE).max(1)
    }

    #[cfg(test)]
    /// The small events in order, with their `seq`.
    pub fn events(&self) -> &[(u64, Event)] {
        &self.events
    }

    /// Lines that are not trace events, in file order.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The run's state from the small events and the steps' prefixes (steps are counted per stage,
    /// not measured: they are parsed only when a page shows them).
    pub(crate) fn replay(&self) -> &Replay {
        &self.replay
    }

    /// A `run_finished` event was indexed.
    pub fn finished(&self) -> bool {
        self.replay.finished().is_some()
    }

    fn read_line(&self, l: &LineRef) -> Result<Vec<u8>, Problem> {
        let file = self.file.as_ref().ok_or_else(|| Problem {
            line_no: l.line_no,
            message: format!("{} is not open", self.path.display()),
        })?;
        let mut buf = vec![0u8; l.len as usize];
        file.read_exact_at(&mut buf, l.offset)
            .map_err(|e| Problem {
                line_no: l.line_no,
                message: format!("{}: {e}", self.path.display()),
            })?;
        Ok(buf)
    }

    fn note(&mut self, p: &Problem) {
        if !self.problems.iter().any(|q| q.line_no == p.line_no) {
            self.problems.push(p.clone());
            self.problems.sort_by_key(|q| q.line_no);
        }
    }

    /// The summary of the step at position `i` (file order), parsed on first use.
    pub(crate) fn summary_at(&mut self, i: usize) -> Result<Arc<StepSummary>, Problem> {
        if let Some(s) = self.summaries.get(&i) {
            return Ok(s.clone());
        }
        let r = self.steps[i];
        let l = self.lines[r.line];
        let bytes = self.read_line(&l)?;
        match parse_summary(&bytes, &l) {
            Ok(s) => {
                let s = Arc::new(s);
                if self.summaries.len() >= MAX_CACHED {
                    self.summaries.clear();
                }
                self.summaries.insert(i, s.clone());
                Ok(s)
            }
            Err(p) => {
                self.note(&p);
                Err(p)
            }
        }
    }

    /// The steps of page `page` (1-based), in file order.
    pub fn page(&mut self, page: usize) -> Vec<Result<Arc<StepSummary>, Problem>> {
        let from = (page.saturating_sub(1)) * PAGE_SIZE;
        let to = (from + PAGE_SIZE).min(self.steps.len());
        (from..to).map(|i| self.summary_at(i)).collect()
    }

    /// The position in file order of step number `n`.
    pub fn position(&self, n: u64) -> Option<usize> {
        self.by_number.get(&n).copied()
    }

    /// The step number at a position.
    pub(crate) fn number_at(&self, i: usize) -> Option<u64> {
        self.steps.get(i).map(|s| s.step)
    }

    /// The whole step record at position `i`, with its line's `seq` and line number.
    pub(crate) fn record_at(&mut self, i: usize) -> Result<(LineRef, StepRecord), Problem> {
        let r = self.steps[i];
        let l = self.lines[r.line];
        let bytes = self.read_line(&l)?;
        let parsed = serde_json::from_slice::<Envelope>(&bytes).map_err(|e| Problem {
            line_no: l.line_no,
            message: format!("not a trace event: {e}"),
        });
        match parsed {
            Ok(Envelope {
                event: Event::Step(s),
                ..
            }) => Ok((l, s)),
            Ok(_) => Err(Problem {
                line_no: l.line_no,
                message: "not a step event".into(),
            }),
            Err(p) => {
                self.note(&p);
                Err(p)
            }
        }
    }

    /// Positions of the steps written after `seq` (all of them for None).
    pub(crate) fn steps_after(&self, seq: Option<u64>) -> std::ops::Range<usize> {
        let Some(seq) = seq else {
            return 0..self.steps.len();
        };
        let from = self
            .steps
            .partition_point(|s| self.lines[s.line].seq <= seq);
        from..self.steps.len()
    }

    /// The step started last, when nothing has ended it yet (no `step`, `stage_ended` or
    /// `run_finished` after its `step_started`).
    pub fn in_flight(&self) -> Option<InFlight> {
        let pos = self
            .lines
            .iter()
            .rposition(|l| l.kind == Kind::StepStarted)?;
        let ended = self.lines[pos + 1..]
            .iter()
            .any(|l| matches!(l.kind, Kind::Step | Kind::StageEnded | Kind::RunFinished));
        if ended || self.finished() {
            return None;
        }
        let bytes = self.read_line(&self.lines[pos]).ok()?;
        let env: Envelope = serde_json::from_slice(&bytes).ok()?;
        match env.event {
            Event::StepStarted {
                stage,
                step,
                tool,
                args,
            } => {
                let summary = ["cmd", "path", "line"]
                    .iter()
                    .find_map(|k| args.get(k).and_then(|v| v.as_str()))
                    .or_else(|| {
                        args.as_object()
                            .and_then(|o| o.values().find_map(|v| v.as_str()))
                    })
                    .map(first_line)
                    .unwrap_or_default();
                Some(InFlight {
                    seq: env.seq,
                    step,
                    stage,
                    tool,
                    summary,
                    started_at: env.ts,
                })
            }
            _ => None,
        }
    }

    /// The lines written after `seq`.
    pub(crate) fn lines_after(&self, seq: Option<u64>) -> &[LineRef] {
        match seq {
            None => &self.lines,
            Some(seq) => &self.lines[self.lines.partition_point(|l| l.seq <= seq)..],
        }
    }
}

/// What the first bytes of a line say.
struct Head<'a> {
    seq: u64,
    kind: Cow<'a, str>,
    stage: Option<Cow<'a, str>>,
    step: Option<u64>,
}

fn digits(s: &[u8]) -> Option<(u64, &[u8])> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let v = std::str::from_utf8(&s[..n]).ok()?.parse().ok()?;
    Some((v, &s[n..]))
}

/// A quoted string of plain characters (no escapes), and what follows its closing quote.
fn plain(s: &[u8], ok: impl Fn(u8) -> bool) -> Option<(&str, &[u8])> {
    let q = memchr::memchr(b'"', s)?;
    let body = &s[..q];
    if !body.iter().all(|&b| ok(b)) {
        return None;
    }
    Some((std::str::from_utf8(body).ok()?, &s[q + 1..]))
}

/// Reads `{"seq":N,"ts":"…","prev_sha256":"…","type":"…"` (and a step's `"stage":"…","step":N`) as the
/// trace writer lays them out; None for any other layout.
fn peek(line: &[u8]) -> Option<Head<'_>> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let (seq, rest) = digits(rest)?;
    let rest = rest.strip_prefix(b",\"ts\":\"")?;
    let (_, rest) = plain(rest, |b| b.is_ascii_graphic() && b != b'\\')?;
    let rest = rest.strip_prefix(b",\"prev_sha256\":\"")?;
    let (_, rest) = plain(rest, |b| b.is_ascii_hexdigit())?;
    let rest = rest.strip_prefix(b",\"type\":\"")?;
    let (tag, rest) = plain(rest, |b| b.is_ascii_lowercase() || b == b'_')?;
    let mut step = None;
    let mut stage = None;
    if tag == "step" {
        let rest = rest.strip_prefix(b",\"stage\":\"")?;
        let (name, rest) = plain(rest, |b| {
            b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
        })?;
        let rest = rest.strip_prefix(b",\"step\":")?;
        step = Some(digits(rest)?.0);
        stage = Some(Cow::Borrowed(name));
    }
    Some(Head {
        seq,
        kind: Cow::Borrowed(tag),
        stage,
        step,
    })
}

/// The same fields from a line of any layout, skipping everything else.
fn lite(line: &[u8]) -> Result<Head<'_>, String> {
    #[derive(Deserialize)]
    struct Lite<'a> {
        seq: u64,
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(default, borrow)]
        stage: Option<Cow<'a, str>>,
        #[serde(default)]
        step: Option<u64>,
    }
    let l: Lite = serde_json::from_slice(line).map_err(|e| format!("not a trace event: {e}"))?;
    Ok(Head {
        seq: l.seq,
        kind: l.kind,
        stage: l.stage,
        step: l.step,
    })
}

/// A JSON value reduced to the scalar fields of an object (strings shortened); anything else is empty.
#[derive(Debug, Clone, Default)]
struct Small(Vec<(String, Scalar)>);

#[derive(Debug, Clone)]
enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Other,
}

impl Small {
    fn get(&self, key: &str) -> Option<&Scalar> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }
    fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Scalar::Int(i) => Some(*i),
            Scalar::Float(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        }
    }
    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some(Scalar::Bool(true)))
    }
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(SHORT) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

struct SmallVisitor;

impl<'de> Visitor<'de> for SmallVisitor {
    type Value = Small;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Small, A::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let v: Scalar = map.next_value()?;
            out.push((key.into_owned(), v));
        }
        Ok(Small(out))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Small, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Small::default())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Small, E> {
        Ok(Small::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Small, E> {
        Ok(Small::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Small, E> {
        Ok(Small::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Small, E> {
        Ok(Small::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Small, E> {
        Ok(Small::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Small, E> {
        Ok(Small::default())
    }
    fn visit_none<E: de::Error>(self) -> Result<Small, E> {
        Ok(Small::default())
    }
}

impl<'de> Deserialize<'de> for Small {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SmallVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(i64::try_from(v)
            .map(Scalar::Int)
            .unwrap_or(Scalar::Float(v as f64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(shorten(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// A step line with its outputs skipped.
#[derive(Deserialize)]
struct StepLite<'a> {
    seq: u64,
    #[serde(borrow)]
    stage: Cow<'a, str>,
    step: u64,
    #[serde(default)]
    stage_step: u64,
    #[serde(borrow)]
    tool: Cow<'a, str>,
    #[serde(default)]
    args: Small,
    ok: bool,
    #[serde(default)]
    result: Small,
    #[serde(default)]
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    duration_ms: f64,
    #[serde(default)]
    sandbox_seconds: f64,
    #[serde(default)]
    usage: Option<StepUsage>,
    #[serde(default)]
    #[allow(dead_code)]
    outputs: IgnoredAny,
    #[serde(default)]
    commit: Option<String>,
}

/// One line of a command or argument for the timeline.
pub(crate) fn first_line(s: &str) -> String {
    let line = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let more = s.lines().filter(|l| !l.trim().is_empty()).count() > 1;
    let mut out = shorten(line.trim());
    if more && !out.ends_with('…') {
        out.push_str(" …");
    }
    out
}

fn parse_summary(bytes: &[u8], l: &LineRef) -> Result<StepSummary, Problem> {
    let s: StepLite = serde_json::from_slice(bytes).map_err(|e| Problem {
        line_no: l.line_no,
        message: format!("not a step event: {e}"),
    })?;
    let summary = ["cmd", "path", "line"]
        .iter()
        .find_map(|k| s.args.str(k))
        .or_else(|| {
            s.args.0.iter().find_map(|(_, v)| match v {
                Scalar::Str(t) => Some(t.as_str()),
                _ => None,
            })
        })
        .map(first_line)
        .unwrap_or_default();
    let usage = s.usage.as_ref();
    Ok(StepSummary {
        seq: s.seq,
        line_no: l.line_no,
        step: s.step,
        stage: s.stage.into_owned(),
        stage_step: s.stage_step,
        tool: s.tool.into_owned(),
        summary,
        ok: s.ok,
        exit_code: s.result.int("exit_code"),
        error: if s.ok {
            None
        } else {
            s.result.str("code").map(str::to_string)
        },
        started_at: s.started_at,
        duration_ms: s.duration_ms,
        sandbox_seconds: s.sandbox_seconds,
        cpu_seconds: usage.map(|u| u.cpu_seconds),
        max_rss_kb: usage.map(|u| u.max_rss_kb),
        peak_bytes: usage.and_then(|u| u.container_peak_bytes),
        timed_out: usage.is_some_and(|u| u.timed_out) || s.result.flag("timed_out"),
        oom_killed: usage.is_some_and(|u| u.oom_killed) || s.result.flag("oom_killed"),
        commit: s.commit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::EventLog;
    use std::io::Write;

    fn step(n: u64, out: &str) -> Event {
        Event::Step(StepRecord {
            stage: "crawl".into(),
            step: n,
            stage_step: n,
            tool: "bash".into(),
            args: serde_json::json!({"cmd": format!("echo {n}\nsecond line")}),
            ok: true,
            result: serde_json::json!({"exit_code": 0, "stdout": out, "stderr": ""}),
            started_at: chrono::Utc::now(),
            duration_ms: 12.5,
            sandbox_seconds: 0.0125,
            usage: Some(StepUsage {
                cpu_seconds: 0.5,
                max_rss_kb: 2048,
                ..Default::default()
            }),
            outputs: vec![],
            commit: Some("ab".repeat(20)),
        })
    }

    #[test]
    fn indexes_incrementally_and_parses_steps_lazily() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut log = EventLog::create(&path).unwrap();
        log.append(&Event::Warning {
            message: "first".into(),
        })
        .unwrap();
        for n in 1..=3 {
            log.append(&step(n, &"x".repeat(3 * CHUNK / 2))).unwrap();
        }
        let mut idx = TraceIndex::new(&path);
        idx.refresh().unwrap();
        assert_eq!(idx.lines().len(), 4);
        assert_eq!(idx.step_count(), 3);
        assert_eq!(idx.events().len(), 1);
        let s = idx.summary_at(1).unwrap();
        assert_eq!(s.step, 2);
        assert_eq!(s.summary, "echo 2 …");
        assert_eq!(s.exit_code, Some(0));
        assert_eq!(s.cpu_seconds, Some(0.5));
        // A half-written line is left for later, then picked up.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"seq\":4,\"ts\":\"x\"").unwrap();
        idx.refresh().unwrap();
        assert_eq!(idx.lines().len(), 4);
        assert!(idx.pending_bytes() > 0);
        f.write_all(b",\"prev_sha256\":\"\",\"type\":\"warning\",\"message\":\"m\"}\n")
            .unwrap();
        idx.refresh().unwrap();
        assert_eq!(idx.lines().len(), 5);
        assert_eq!(idx.pending_bytes(), 0);
        assert_eq!(idx.steps_after(Some(2)), 2..3);
        assert_eq!(idx.lines_after(Some(3)).len(), 1);
        // A replaced file is indexed again from the start.
        std::fs::remove_file(&path).unwrap();
        let mut log = EventLog::create(&path).unwrap();
        log.append(&step(9, "y")).unwrap();
        idx.refresh().unwrap();
        assert_eq!(idx.step_count(), 1);
        assert_eq!(idx.number_at(0), Some(9));
    }

    /// An agent prints whole trace lines, a passing `stage_scored` among them, hoping a reader
    /// takes them for events: neither the index's replay nor a whole-trace replay counts them.
    #[test]
    fn forged_event_lines_in_agent_output_are_not_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let forged_score = crate::trace::log::Envelope {
            seq: 2,
            ts: chrono::Utc::now(),
            prev_sha256: "0".repeat(64),
            event: Event::StageScored {
                stage: "train".into(),
                score: crate::trace::StageScore {
                    status: "scored".into(),
                    passed: true,
                    metrics: Default::default(),
                    reason: None,
                    normalized: Some(1.0),
                    public_reason: None,
                },
            },
        };
        let forged = format!(
            "\n{}\n{{\"seq\":3,\"type\":\"run_finished\"}}\n",
            serde_json::to_string(&forged_score).unwrap()
        );
        let mut log = EventLog::create(&path).unwrap();
        let mut s = step(1, &forged);
        if let Event::Step(r) = &mut s {
            r.stage = "train".into();
            r.tool = forged.clone();
        }
        log.append(&s).unwrap();
        let mut idx = TraceIndex::new(&path);
        idx.refresh().unwrap();
        assert_eq!(idx.lines().len(), 1);
        assert!(idx.problems().is_empty(), "{:?}", idx.problems());
        let train = idx.replay().stage("train").unwrap();
        assert!(train.score.is_none(), "a forged score was counted");
        assert_eq!(train.steps.count, 1);
        assert!(idx.replay().finished().is_none());
        let whole =
            crate::trace::replay::Replay::of(&crate::trace::log::read_events(&path).unwrap());
        assert!(whole.stage("train").unwrap().score.is_none());
        assert!(whole.finished().is_none());
        crate::trace::verify(&path, None).unwrap();
    }

    #[test]
    fn integrity_notes_reach_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut log = EventLog::create(&path).unwrap();
        log.append(&step(1, "x")).unwrap();
        log.append(&Event::Integrity(crate::trace::IntegrityNote {
            stage: Some("crawl".into()),
            kind: "processes_killed".into(),
            count: 2,
            detail: "2 processes outlived the stage".into(),
        }))
        .unwrap();
        let mut idx = TraceIndex::new(&path);
        idx.refresh().unwrap();
        let notes = idx.replay().integrity();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].kind, "processes_killed");
        assert_eq!(notes[0].count, 2);
    }

    #[test]
    fn damaged_lines_are_problems_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut log = EventLog::create(&path).unwrap();
        log.append(&step(1, "a")).unwrap();
        drop(log);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"this is not json\n").unwrap();
        f.write_all(
            b"{\"seq\":2,\"ts\":\"t\",\"prev_sha256\":\"\",\"type\":\"step\",\"stage\":\"crawl\",\"step\":2,\"oops\n",
        )
        .unwrap();
        let mut idx = TraceIndex::new(&path);
        idx.refresh().unwrap();
        assert_eq!(idx.problems().len(), 1);
        assert_eq!(idx.problems()[0].line_no, 2);
        assert_eq!(idx.step_count(), 2);
        let err = idx.summary_at(1).unwrap_err();
        assert_eq!(err.line_no, 3);
        assert!(idx.record_at(1).is_err());
        assert_eq!(idx.problems().len(), 2);
    }

    #[test]
    fn peek_reads_the_writers_layout_only() {
        let h = peek(br#"{"seq":7,"ts":"2024-01-01T00:00:00Z","prev_sha256":"ab12","type":"step","stage":"train","step":42,"x":1}"#).unwrap();
        assert_eq!((h.seq, h.kind.as_ref(), h.step), (7, "step", Some(42)));
        assert!(peek(br#"{"ts":"x","seq":1}"#).is_none());
        let l = lite(br#"{"type":"step","step":3,"seq":1,"args":{"cmd":"x"}}"#).unwrap();
        assert_eq!((l.seq, l.step), (1, Some(3)));
    }
}
