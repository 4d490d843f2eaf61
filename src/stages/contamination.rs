//! The contamination ledger: spans of the hidden documents (T, the out-of-domain set, a private world's public originals of T) that the served web lacks, and the scan of what an agent wrote (tool arguments, workspace history, graded files) for them.
//!
//! Text is compared in a canonical form: ASCII letters and digits only, lower-cased, backslash
//! escapes read as what they stand for, so whitespace, punctuation, case, JSON escaping and
//! re-wrapping hide nothing. A span is a window of [`SPAN`] canonical characters of a T document
//! with at least [`MIN_DISTINCT`] distinct characters in which the served web (every page's gold
//! text, every file under `web/` raw and, with tags stripped and entities unescaped, as text) has
//! no run of [`SERVED_RUN`] characters: so not the window either. Spans are kept as 64-bit hashes
//! (a rolling polynomial hash, mixed) in a sorted list behind a two-probe bit filter; streams are
//! read in chunks and the rolling window carries the last 31 characters across them, so a chunk
//! boundary splits nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use git2::{ObjectType, Oid, Repository};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde_json::Value;

use crate::config::suite::Home;
use crate::stages::contract::CONTAMINATION_MIN_SPANS;
use crate::trace::{IntegrityNote, StageScore};
use crate::world::generate::HiddenDoc;
use crate::world::private::Renaming;
use crate::world::{World, WorldConfig};

/// Canonical characters in a span.
pub const SPAN: usize = 32;
/// Distinct characters a span needs (`aaaa…` or `0101…` is nobody's text).
pub const MIN_DISTINCT: u32 = 8;
/// A window of T with this many characters in a row that the web serves is no span: served text
/// joined to a few coincident characters (the end of one page meeting the `url` key of its corpus
/// line, common code that a reference solution writes too) never makes one.
pub const SERVED_RUN: usize = 24;
/// The integrity note's kind.
pub const KIND: &str = "t_text_in_workspace";
/// The integrity note's kind for entries of the graded files that could not be scanned.
pub const UNSCANNED: &str = "contamination_unscanned";
/// Bytes read at a time from a file, a blob or a kept output.
const CHUNK: usize = 1 << 20;
/// Places a finding names in its detail (the rest are counted).
const MAX_PLACES: usize = 12;
/// Files a tree of the history remembers with hits (the spans are all kept).
const MAX_FILES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ContaminationError {
    #[error("reading the world: {0}")]
    World(#[from] crate::world::WorldError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the workspace history: {0}")]
    Git(#[from] git2::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContaminationError + '_ {
    move |source| ContaminationError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Byte → canonical character (0: dropped).
static CANON: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'0'..=b'9' | b'a'..=b'z' => c,
            b'A'..=b'Z' => c + 32,
            _ => 0,
        };
        b += 1;
    }
    t
};

const BASE: u64 = 0x5851_f42d_4c95_7f2d;

/// The finaliser of MurmurHash3: spreads the polynomial hash over all 64 bits.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Reads bytes as canonical characters: ASCII letters and digits, lower-cased, with backslash
/// escapes (JSON's and C's: `\n`, `\t`, `\"`, `\\`, `\u00e9`) read as what they stand for, so
/// text written as a JSON string reads as the text itself. Its state carries across chunks.
#[derive(Clone, Copy, Default)]
struct Canon {
    /// 0: plain; 1: after a backslash; 2..=5: in the hex digits of `\u` (5: none read yet).
    state: u8,
    code: u32,
}

impl Canon {
    /// The canonical character this byte completes, or 0.
    fn push(&mut self, b: u8) -> u8 {
        match self.state {
            0 if b == b'\\' => {
                self.state = 1;
                0
            }
            1 => match b {
                b'n' | b'r' | b't' | b'b' | b'f' | b'\\' => {
                    self.state = 0;
                    0
                }
                b'u' => {
                    (self.state, self.code) = (5, 0);
                    0
                }
                _ => {
                    self.state = 0;
                    self.push(b)
                }
            },
            2..=5 => match (b as char).to_digit(16) {
                Some(d) => {
                    self.code = self.code * 16 + d;
                    self.state = if self.state == 2 { 0 } else { self.state - 1 };
                    match (self.state, u8::try_from(self.code)) {
                        (0, Ok(c)) => CANON[c as usize],
                        _ => 0,
                    }
                }
                None => {
                    self.state = 0;
                    self.push(b)
                }
            },
            _ => CANON[b as usize],
        }
    }
}

/// The canonical form of bytes (see [`Canon`]).
pub fn canonical(bytes: &[u8]) -> Vec<u8> {
    let mut c = Canon::default();
    bytes
        .iter()
        .map(|&b| c.push(b))
        .filter(|&c| c != 0)
        .collect()
}

/// A rolling window of `N` canonical characters over a stream: bytes go in, in any chunks; out
/// comes the hash of every full window.
#[derive(Clone)]
struct Roller<const N: usize> {
    canon: Canon,
    ring: [u8; N],
    pos: usize,
    filled: usize,
    h: u64,
}

impl<const N: usize> Roller<N> {
    /// `BASE^N`: the weight of the character leaving the window.
    const OUT: u64 = {
        let mut p = 1u64;
        let mut i = 0;
        while i < N {
            p = p.wrapping_mul(BASE);
            i += 1;
        }
        p
    };

    fn new() -> Self {
        Self {
            canon: Canon::default(),
            ring: [0; N],
            pos: 0,
            filled: 0,
            h: 0,
        }
    }

    /// Feeds raw bytes; `f` gets each full window's hash and the roller (its ring is the window).
    fn feed(&mut self, bytes: &[u8], mut f: impl FnMut(u64, &Self)) {
        for &b in bytes {
            let c = self.canon.push(b);
            if c == 0 {
                continue;
            }
            let old = self.ring[self.pos];
            self.ring[self.pos] = c;
            self.pos = (self.pos + 1) % N;
            self.h = self
                .h
                .wrapping_mul(BASE)
                .wrapping_add(u64::from(c))
                .wrapping_sub(u64::from(old).wrapping_mul(Self::OUT));
            if self.filled < N {
                self.filled += 1;
                if self.filled < N {
                    continue;
                }
            }
            f(mix(self.h), self);
        }
    }

    /// Distinct characters in the current window.
    fn distinct(&self) -> u32 {
        let mut seen = 0u64;
        for &c in &self.ring {
            let i = if c <= b'9' { c - b'0' } else { c - b'a' + 10 };
            seen |= 1 << i;
        }
        seen.count_ones()
    }
}

/// A bit filter with two probes: most windows that are no span stop here.
struct Filter {
    bits: Vec<u64>,
    mask: u64,
}

impl Filter {
    fn of(keys: &[u64]) -> Self {
        // 32 bits per key: about 0.4% of other windows pass.
        let want = (keys.len() as u64 * 32)
            .next_power_of_two()
            .clamp(1 << 16, 1 << 32);
        let mut f = Self {
            bits: vec![0; (want / 64) as usize],
            mask: want - 1,
        };
        for &k in keys {
            for p in [k & f.mask, (k >> 32) & f.mask] {
                f.bits[(p >> 6) as usize] |= 1 << (p & 63);
            }
        }
        f
    }

    fn maybe(&self, k: u64) -> bool {
        let a = k & self.mask;
        let b = (k >> 32) & self.mask;
        self.bits[(a >> 6) as usize] & (1 << (a & 63)) != 0
            && self.bits[(b >> 6) as usize] & (1 << (b & 63)) != 0
    }
}

/// The distinctive spans of T: windows of its documents that the served web does not have.
pub struct SpanIndex {
    spans: Vec<u64>,
    filter: Filter,
}

/// Builds a [`SpanIndex`]: T's runs of [`SERVED_RUN`] characters first, then every served text
/// marks those it has; [`Builder::finish`] keeps the windows of T with none of them.
pub struct Builder {
    /// Per document of T: the hash of the run at each position, and of the window (None: too few
    /// distinct characters).
    docs: Vec<(Vec<u64>, Vec<Option<u64>>)>,
    /// T's runs, sorted, and which of them the web serves.
    runs: Vec<u64>,
    served: Vec<bool>,
    filter: Filter,
}

impl Builder {
    /// One served text (a page's gold text, a file): its runs make no span.
    pub fn served(&mut self, text: &[u8]) {
        let (runs, served, filter) = (&self.runs, &mut self.served, &self.filter);
        Roller::<SERVED_RUN>::new().feed(text, |k, _| {
            if filter.maybe(k) {
                if let Ok(i) = runs.binary_search(&k) {
                    served[i] = true;
                }
            }
        });
    }

    /// One file the web server serves: its raw bytes and, when it has markup, its text with tags
    /// stripped and entities unescaped (so `&amp;` inside a sentence hides nothing of it).
    pub fn served_file(&mut self, bytes: &[u8]) {
        self.served(bytes);
        if memchr::memchr(b'<', bytes).is_some() || memchr::memchr(b'&', bytes).is_some() {
            self.served(&html_text(bytes));
        }
    }

    /// Every file under `dir` (the world's `web/`), as [`Builder::served_file`].
    pub fn served_dir(&mut self, dir: &Path) -> Result<(), ContaminationError> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(io_err(&d))? {
                let p = e.map_err(io_err(&d))?.path();
                let meta = std::fs::symlink_metadata(&p).map_err(io_err(&p))?;
                if meta.is_dir() {
                    stack.push(p);
                } else if meta.is_file() {
                    let bytes = std::fs::read(&p).map_err(io_err(&p))?;
                    self.served_file(&bytes);
                }
            }
        }
        Ok(())
    }

    /// The windows of T of enough distinct characters in which the web serves no run.
    pub fn finish(self) -> SpanIndex {
        let served = |k: &u64| self.runs.binary_search(k).is_ok_and(|i| self.served[i]);
        let mut spans = Vec::new();
        for (runs, windows) in &self.docs {
            // Window p holds runs p ..= p + SPAN - SERVED_RUN; count the served ones as it slides.
            let inner = SPAN - SERVED_RUN + 1;
            let flags: Vec<bool> = runs.iter().map(served).collect();
            let mut count = flags.iter().take(inner - 1).filter(|f| **f).count();
            for (p, w) in windows.iter().enumerate() {
                count += usize::from(flags[p + inner - 1]);
                if count == 0 {
                    spans.extend(*w);
                }
                count -= usize::from(flags[p]);
            }
        }
        spans.sort_unstable();
        spans.dedup();
        let filter = Filter::of(&spans);
        SpanIndex { spans, filter }
    }
}

/// An index and the warnings of what could not be indexed.
pub type Built = (SpanIndex, Vec<String>);

/// The hidden texts of a world (T, the out-of-domain documents, T's public originals), its served
/// texts (the gold, the served pages' public originals) and what could not be read of them.
type WorldTexts = (Vec<String>, Vec<String>, Vec<String>);

fn world_texts(world: &World, home: &Home) -> Result<WorldTexts, ContaminationError> {
    let mut hidden: Vec<String> = world.test_docs()?.into_iter().map(|d| d.text).collect();
    let mut served: Vec<String> = world.gold()?.into_iter().map(|(_, t)| t).collect();
    let mut warnings = Vec::new();
    match public_originals(world, home, &hidden, &served) {
        Ok((originals, served_originals)) => {
            hidden.extend(originals);
            served.extend(served_originals);
        }
        Err(e) => warnings.push(format!("the public originals of T are not indexed: {e}")),
    }
    match ood_docs(world) {
        Ok(ood) => hidden.extend(ood.into_iter().map(|d| d.text)),
        Err(e) => warnings.push(format!("the out-of-domain documents are not indexed: {e}")),
    }
    Ok((hidden, served, warnings))
}

/// The hidden out-of-domain documents (`manifest.ood.file`, JSON lines as T's): graded on too.
fn ood_docs(world: &World) -> Result<Vec<HiddenDoc>, ContaminationError> {
    let path = world.dir.join(&world.manifest.ood.file);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let parse = |(i, l): (usize, &str)| {
        serde_json::from_str(l).map_err(|e| {
            ContaminationError::World(crate::world::WorldError::Corpus {
                path: path.display().to_string(),
                line: i + 1,
                message: e.to_string(),
            })
        })
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(parse)
        .collect()
}

/// On a private world, the public texts of the corpus it renamed (`Corpora::generate`'s renaming,
/// rebuilt): those whose renamed text is a document of T, and those whose renamed text is served.
/// Empty for a public world; Err when the corpus is not the one the world was built from.
fn public_originals(
    world: &World,
    home: &Home,
    test: &[String],
    gold: &[String],
) -> Result<(Vec<String>, Vec<String>), String> {
    let m = &world.manifest;
    let (cfg, _, dir) = WorldConfig::load(home, &m.name).map_err(|e| e.to_string())?;
    if !cfg.private {
        return Ok(Default::default());
    }
    let (file, domain, built) = match cfg.sites.iter().find(|s| s.target) {
        Some(s) => (&s.corpus, s.domain.as_str(), m.site_corpora.get(&s.host)),
        None => (&cfg.corpus, "", Some(&m.corpus)),
    };
    let (docs, sha) = crate::world::corpus::load(&dir.join(file)).map_err(|e| e.to_string())?;
    if built.is_none_or(|r| r.sha256 != sha) {
        return Err(format!("{file} is not the corpus the world was built from"));
    }
    let renaming = Renaming::of(&docs, m.seed, &[domain]);
    let t: HashSet<&str> = test.iter().map(String::as_str).collect();
    let served: HashSet<&str> = gold.iter().map(String::as_str).collect();
    let (mut originals, mut served_originals) = (Vec::new(), Vec::new());
    for d in &docs {
        let public = d.text();
        // Blocks are joined by blank lines: renaming the joined text renames each block.
        let renamed = renaming.apply(&public);
        if t.contains(renamed.as_str()) {
            originals.push(public);
        } else if served.contains(renamed.as_str()) {
            served_originals.push(public);
        }
    }
    Ok((originals, served_originals))
}

/// The text of markup: tags dropped, numeric entities decoded, named ones dropped (none of them
/// is a letter or digit).
fn html_text(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => match memchr::memchr(b'>', &bytes[i..]) {
                Some(j) => i += j + 1,
                None => i = bytes.len(),
            },
            b'&' => {
                let end = bytes[i + 1..]
                    .iter()
                    .take(12)
                    .position(|&b| b == b';')
                    .map(|j| i + 1 + j);
                let Some(end) = end else {
                    i += 1;
                    continue;
                };
                let name = &bytes[i + 1..end];
                let code = match name {
                    [b'#', b'x' | b'X', hex @ ..] => std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| u32::from_str_radix(h, 16).ok()),
                    [b'#', dec @ ..] => std::str::from_utf8(dec).ok().and_then(|d| d.parse().ok()),
                    _ if name.iter().all(u8::is_ascii_alphanumeric) => None,
                    _ => {
                        i += 1;
                        continue;
                    }
                };
                if let Some(c) = code.and_then(|c| u8::try_from(c).ok()) {
                    out.push(c);
                }
                i = end + 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

impl SpanIndex {
    /// Starts an index of the spans of these documents.
    pub fn builder<'a>(test: impl IntoIterator<Item = &'a str>) -> Builder {
        let mut docs = Vec::new();
        for doc in test {
            let (mut runs, mut windows) = (Vec::new(), Vec::new());
            Roller::<SERVED_RUN>::new().feed(doc.as_bytes(), |k, _| runs.push(k));
            Roller::<SPAN>::new().feed(doc.as_bytes(), |k, r| {
                windows.push((r.distinct() >= MIN_DISTINCT).then_some(k));
            });
            docs.push((runs, windows));
        }
        let mut runs: Vec<u64> = docs.iter().flat_map(|d| d.0.iter().copied()).collect();
        runs.sort_unstable();
        runs.dedup();
        let filter = Filter::of(&runs);
        Builder {
            docs,
            served: vec![false; runs.len()],
            runs,
            filter,
        }
    }

    /// The index of a built world: T and the hidden out-of-domain documents against every page's
    /// gold text and every file under `web/`. On a private world, T's public originals too, against
    /// the served pages' public originals as well. The warnings say what could not be indexed (the
    /// rest was).
    pub fn of_world(world: &World, home: &Home) -> Result<Built, ContaminationError> {
        let (hidden, served, warnings) = world_texts(world, home)?;
        let mut b = Self::builder(hidden.iter().map(String::as_str));
        for text in &served {
            b.served(text.as_bytes());
        }
        b.served_dir(&world.web_dir())?;
        Ok((b.finish(), warnings))
    }

    /// How many spans T has.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn contains(&self, k: u64) -> bool {
        self.filter.maybe(k) && self.spans.binary_search(&k).is_ok()
    }

    /// A scan of one stream.
    pub fn probe(&self) -> Probe<'_> {
        Probe {
            index: self,
            roller: Roller::<SPAN>::new(),
            found: HashSet::new(),
        }
    }

    /// The distinct spans in these bytes, sorted.
    pub fn find(&self, bytes: &[u8]) -> Vec<u64> {
        let mut p = self.probe();
        p.feed(bytes);
        p.finish()
    }
}

/// The spans found in one stream, fed in chunks of any size.
pub struct Probe<'a> {
    index: &'a SpanIndex,
    roller: Roller<SPAN>,
    found: HashSet<u64>,
}

impl Probe<'_> {
    pub fn feed(&mut self, bytes: &[u8]) {
        let (index, found) = (self.index, &mut self.found);
        self.roller.feed(bytes, |k, _| {
            if index.contains(k) {
                found.insert(k);
            }
        });
    }

    /// Reads `r` to its end in chunks.
    fn read(&mut self, mut r: impl Read, buf: &mut [u8]) -> std::io::Result<()> {
        loop {
            match r.read(buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.feed(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub fn finish(self) -> Vec<u64> {
        let mut v: Vec<u64> = self.found.into_iter().collect();
        v.sort_unstable();
        v
    }
}

/// What one stage's scan found: the distinct spans and where they were.
#[derive(Debug, Default)]
pub struct Finding {
    spans: HashSet<u64>,
    places: Vec<String>,
    more: usize,
    /// What could not be read (the stage is graded on what could).
    pub warnings: Vec<String>,
    /// Entries of the graded files that could not be read: how many, and which (the first few).
    unscanned: Option<(usize, String)>,
}

impl Finding {
    fn add(&mut self, place: impl FnOnce() -> String, spans: &[u64]) {
        if spans.is_empty() {
            return;
        }
        self.spans.extend(spans);
        self.place(place());
    }

    /// Names a place with spans (past [`MAX_PLACES`], only counts it).
    fn place(&mut self, place: String) {
        if self.places.len() < MAX_PLACES {
            self.places.push(place);
        } else {
            self.more += 1;
        }
    }

    /// Entries of the graded files that could not be read: a warning, and an integrity note.
    fn unscanned(&mut self, unread: Vec<String>, label: &str) {
        if unread.is_empty() {
            return;
        }
        let n = unread.len();
        let mut named = unread[..n.min(MAX_PLACES)].join(", ");
        if n > MAX_PLACES {
            named.push_str(&format!(", and {} more", n - MAX_PLACES));
        }
        let detail = format!("{n} entries of {label} could not be read: {named}");
        self.warnings.push(detail.clone());
        self.unscanned = Some((n, detail));
    }

    /// The integrity note of entries of the graded files that could not be scanned for text of T.
    pub fn unscanned_note(&self, stage: &str) -> Option<IntegrityNote> {
        let (n, detail) = self.unscanned.as_ref()?;
        Some(IntegrityNote {
            stage: Some(stage.to_string()),
            kind: UNSCANNED.into(),
            count: *n as u64,
            detail: format!("not scanned for text of the hidden test documents: {detail}"),
        })
    }

    /// Distinct spans found.
    pub fn count(&self) -> usize {
        self.spans.len()
    }

    /// Enough spans to reject the stage.
    pub fn hit(&self) -> bool {
        self.count() >= CONTAMINATION_MIN_SPANS
    }

    /// Where the spans were (paths, steps, commits), never their text.
    pub fn detail(&self) -> String {
        let mut d = self.places.join("; ");
        if self.more > 0 {
            d.push_str(&format!("; and {} more places", self.more));
        }
        d
    }

    /// The integrity note of a hit.
    pub fn note(&self, stage: &str) -> IntegrityNote {
        IntegrityNote {
            stage: Some(stage.to_string()),
            kind: KIND.into(),
            count: self.count() as u64,
            detail: self.detail(),
        }
    }

    /// The grade of a stage with a hit: rejected, not graded on hidden data.
    pub fn rejection(&self) -> StageScore {
        StageScore::zero(
            "rejected",
            format!(
                "text of the hidden test documents in what the agent wrote ({} distinct spans of {SPAN} letters and digits that the served web does not have): {}; not graded",
                self.count(),
                self.detail()
            ),
        )
        .with_public(
            "rejected: text of the hidden test documents was found in what you wrote (tool-call arguments, the workspace history or the graded files), so the stage was not graded",
        )
    }
}

/// The earlier stage of the run whose scan found text of T, from the run's integrity notes (a
/// resumed run has them from its trace): every stage after it is rejected.
pub fn earlier_hit<'a>(notes: &'a [IntegrityNote], stage: &str) -> Option<&'a str> {
    notes
        .iter()
        .filter(|n| n.kind == KIND)
        .filter_map(|n| n.stage.as_deref())
        .find(|s| *s != stage)
}

/// The grade of a stage after one with a hit: rejected, not graded. Text of T kept anywhere (the
/// sandbox's `/tmp` and home outlive a stage, and are never scanned) could be used in any later
/// stage, so sacrificing one stage buys nothing.
pub fn later_rejection(found_in: &str) -> StageScore {
    let why = format!(
        "text of the hidden test documents was found in stage {found_in}; every later stage is rejected"
    );
    StageScore::zero("rejected", format!("{why}; not graded"))
        .with_public(format!("rejected: {why}"))
}

/// One tool call of the stage as the trace records it: step, tool, arguments (large `write_file`
/// contents kept in `outputs/` and referenced).
pub type Call = (u64, String, Value);

/// What one stage's scan reads.
pub struct StageWork<'a> {
    pub stage: &'a str,
    pub calls: &'a [Call],
    /// `outputs/`, where large arguments are kept.
    pub outputs: &'a Path,
    /// `workspace.git`, when the run records one.
    pub history: Option<&'a Path>,
    /// The files the grade reads, and what to call them (`the graded copy`).
    pub files: &'a Path,
    pub files_label: &'a str,
}

/// Hits of a tree of the history: its spans and the files that have any.
struct TreeHits {
    spans: Vec<u64>,
    files: Vec<(String, usize)>,
}

/// The run's ledger: the index, and what the history's objects held (an object is read once a run).
pub struct Ledger {
    index: Arc<SpanIndex>,
    blobs: HashMap<Oid, Option<Arc<Vec<u64>>>>,
    trees: HashMap<Oid, Option<Arc<TreeHits>>>,
}

impl Ledger {
    pub fn new(index: Arc<SpanIndex>) -> Self {
        Self {
            index,
            blobs: HashMap::new(),
            trees: HashMap::new(),
        }
    }

    /// Scans a stage: its calls' arguments, its commits, the files graded. What cannot be read
    /// becomes a warning of the finding.
    pub fn scan(&mut self, w: &StageWork) -> Finding {
        let mut f = Finding::default();
        for (step, tool, args) in w.calls {
            self.scan_call(&mut f, *step, tool, args, w.outputs);
        }
        if let Some(git) = w.history {
            if let Err(e) = self.scan_history(&mut f, git, w.stage) {
                f.warnings.push(e.to_string());
            }
        }
        scan_files(&self.index, &mut f, w.files, w.files_label);
        f
    }

    /// Every string of a call's arguments (keys too), and a large `write_file` content from `outputs/`.
    pub fn scan_call(&self, f: &mut Finding, step: u64, tool: &str, args: &Value, outputs: &Path) {
        let mut spans = Vec::new();
        let mut stack = vec![args];
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) => spans.extend(self.index.find(s.as_bytes())),
                Value::Array(a) => stack.extend(a),
                Value::Object(o) => {
                    for (k, v) in o {
                        spans.extend(self.index.find(k.as_bytes()));
                        stack.push(v);
                    }
                }
                _ => {}
            }
        }
        if let Some(sha) = kept_content(args) {
            let path = outputs.join(sha);
            let mut p = self.index.probe();
            let read = std::fs::File::open(&path)
                .and_then(|file| p.read(file, &mut vec![0; CHUNK]))
                .map_err(io_err(&path));
            match read {
                Ok(()) => spans.extend(p.finish()),
                Err(e) => f
                    .warnings
                    .push(format!("step {step}'s kept arguments: {e}")),
            }
        }
        spans.sort_unstable();
        spans.dedup();
        f.add(|| format!("step {step}'s {tool} arguments"), &spans);
    }

    /// Every blob of every commit the stage made (the commits of its steps, newest first, back to
    /// a commit of another stage or of a rescue), and of the commit it began from: text left in
    /// the workspace from an earlier stage was there to use, even when the stage's first command
    /// used and deleted it.
    pub fn scan_history(
        &mut self,
        f: &mut Finding,
        git: &Path,
        stage: &str,
    ) -> Result<(), ContaminationError> {
        let repo = Repository::open_bare(git)?;
        let Ok(head) = repo.refname_to_id("refs/heads/main") else {
            return Ok(()); // nothing committed yet
        };
        let odb = repo.odb()?;
        // Per file, the commits of the stage it had hits in (newest first).
        let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut commit = Some(repo.find_commit(head)?);
        while let Some(c) = commit.take() {
            let own = step_of(c.message_bytes(), stage);
            if let Some(hits) = self.tree(&repo, &odb, c.tree_id())? {
                f.spans.extend(&hits.spans);
                let id = c.id().to_string();
                for (path, _) in &hits.files {
                    let path = shown(Path::new(path));
                    if own {
                        files.entry(path).or_default().push(id[..10].to_string());
                    } else {
                        f.place(format!("{path} as the stage began (commit {})", &id[..10]));
                    }
                }
            }
            if !own {
                break;
            }
            commit = c.parents().next();
        }
        for (path, commits) in files {
            let oldest = commits.last().cloned().unwrap_or_default();
            f.place(match commits.len() - 1 {
                0 => format!("commit {oldest} ({path})"),
                n => format!("commit {oldest} ({path}, and {n} later commits)"),
            });
        }
        Ok(())
    }

    /// The hits of a tree, from what its subtrees and blobs held (each read once a run). Walked
    /// with a stack of its own, so no depth of directories exhausts the thread's.
    fn tree(
        &mut self,
        repo: &Repository,
        odb: &git2::Odb,
        root: Oid,
    ) -> Result<Option<Arc<TreeHits>>, ContaminationError> {
        struct Frame {
            id: Oid,
            entries: Vec<(String, Oid, Option<ObjectType>)>,
            next: usize,
            spans: Vec<u64>,
            files: Vec<(String, usize)>,
        }
        let open = |id: Oid| -> Result<Frame, ContaminationError> {
            let t = repo.find_tree(id)?;
            let entries = t
                .iter()
                .map(|e| {
                    (
                        String::from_utf8_lossy(e.name_bytes()).into_owned(),
                        e.id(),
                        e.kind(),
                    )
                })
                .collect();
            Ok(Frame {
                id,
                entries,
                next: 0,
                spans: Vec::new(),
                files: Vec::new(),
            })
        };
        if let Some(h) = self.trees.get(&root) {
            return Ok(h.clone());
        }
        let mut stack = vec![open(root)?];
        loop {
            let top = stack.last_mut().expect("a frame");
            if top.next == top.entries.len() {
                let done = stack.pop().expect("a frame");
                let mut spans = done.spans;
                spans.sort_unstable();
                spans.dedup();
                let hits = (!spans.is_empty()).then(|| {
                    Arc::new(TreeHits {
                        spans,
                        files: done.files,
                    })
                });
                self.trees.insert(done.id, hits.clone());
                let Some(parent) = stack.last_mut() else {
                    return Ok(hits);
                };
                let name = parent.entries[parent.next - 1].0.clone();
                if let Some(h) = hits {
                    parent.spans.extend(&h.spans);
                    for (p, n) in &h.files {
                        if parent.files.len() < MAX_FILES {
                            parent.files.push((format!("{name}/{p}"), *n));
                        }
                    }
                }
                continue;
            }
            let (name, id, kind) = top.entries[top.next].clone();
            top.next += 1;
            match kind {
                Some(ObjectType::Tree) => match self.trees.get(&id) {
                    Some(h) => {
                        if let Some(h) = h.clone() {
                            top.spans.extend(&h.spans);
                            for (p, n) in &h.files {
                                if top.files.len() < MAX_FILES {
                                    top.files.push((format!("{name}/{p}"), *n));
                                }
                            }
                        }
                    }
                    None => stack.push(open(id)?),
                },
                Some(ObjectType::Blob) => {
                    if let Some(s) = self.blob(repo, odb, id)? {
                        let top = stack.last_mut().expect("a frame");
                        top.spans.extend(s.iter());
                        if top.files.len() < MAX_FILES {
                            top.files.push((name, s.len()));
                        }
                    }
                }
                _ => {} // a submodule's commit: nothing of the workspace
            }
        }
    }

    /// The spans of a blob, read decompressed as a stream (or whole where the store cannot stream).
    fn blob(
        &mut self,
        repo: &Repository,
        odb: &git2::Odb,
        id: Oid,
    ) -> Result<Option<Arc<Vec<u64>>>, ContaminationError> {
        if let Some(h) = self.blobs.get(&id) {
            return Ok(h.clone());
        }
        let mut p = self.index.probe();
        let streamed = match odb.reader(id) {
            Ok((r, _, _)) => p.read(r, &mut vec![0; CHUNK]).is_ok(),
            Err(_) => false,
        };
        if !streamed {
            p = self.index.probe();
            let b = repo.find_blob(id)?;
            for chunk in b.content().chunks(CHUNK) {
                p.feed(chunk);
            }
        }
        let spans = p.finish();
        let hits = (!spans.is_empty()).then(|| Arc::new(spans));
        self.blobs.insert(id, hits.clone());
        Ok(hits)
    }
}

/// The output a large `write_file` content was kept in (`content_sha256`, with the content the
/// runner put in its place).
fn kept_content(args: &Value) -> Option<&str> {
    let sha = args.get("content_sha256")?.as_str()?;
    let content = args.get("content")?.as_str()?;
    let ok = sha.len() == 64
        && sha.bytes().all(|b| b.is_ascii_hexdigit())
        && content.ends_with(&format!("kept in outputs/{sha}]"));
    ok.then_some(sha)
}

/// Whether a commit's message is one of a step of `stage` (`step 12 (crawl): …`, as the runner
/// writes it; the agent's text only follows the colon).
fn step_of(message: &[u8], stage: &str) -> bool {
    let Some(rest) = message.strip_prefix(b"step ") else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && rest[digits..].starts_with(format!(" ({stage}): ").as_bytes())
}

/// Every regular file under `root`, read in chunks (holes skipped), nothing followed and no FIFO or
/// device opened. Names come as they are (not UTF-8 too). A directory is opened when its turn
/// comes, from its parent's descriptor (shared by the siblings waiting): the descriptors open are
/// bounded by the depth, never by how many siblings wait. What cannot be read is reported.
fn scan_files(index: &SpanIndex, f: &mut Finding, root: &Path, label: &str) {
    let mut buf = vec![0u8; CHUNK];
    let mut unread = Vec::new();
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    type Waiting = (Option<Rc<OwnedFd>>, OsString, PathBuf);
    let mut stack: Vec<Waiting> = vec![(None, root.into(), PathBuf::new())];
    while let Some((parent, name, rel)) = stack.pop() {
        let opened = match parent {
            Some(p) => rustix::fs::openat(&*p, &name, flags | OFlags::DIRECTORY, Mode::empty()),
            None => rustix::fs::open(
                root,
                OFlags::DIRECTORY | flags.difference(OFlags::NOFOLLOW),
                Mode::empty(),
            ),
        };
        let (dir, names) = match opened.and_then(|d| dir_names(&d).map(|n| (Rc::new(d), n))) {
            Ok(d) => d,
            Err(e) => {
                unread.push(format!(
                    "{} ({})",
                    shown(&root.join(&rel)),
                    std::io::Error::from(e)
                ));
                continue;
            }
        };
        for name in names {
            let path = rel.join(&name);
            let st = match rustix::fs::statat(&*dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => continue, // gone
                Err(e) => {
                    unread.push(format!("{} ({})", shown(&path), std::io::Error::from(e)));
                    continue;
                }
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => stack.push((Some(Rc::clone(&dir)), name, path)),
                FileType::RegularFile => {
                    let read =
                        rustix::fs::openat(&*dir, &name, flags | OFlags::NOCTTY, Mode::empty())
                            .map_err(std::io::Error::from)
                            .and_then(|fd| file_spans(index, fd, &mut buf));
                    match read {
                        Ok(spans) => f.add(|| format!("{} in {label}", shown(&path)), &spans),
                        Err(e) => unread.push(format!("{} ({e})", shown(&path))),
                    }
                }
                _ => {} // links, FIFOs, sockets, devices: never opened
            }
        }
    }
    f.unscanned(unread, label);
}

/// The names in a directory but `.` and `..`.
fn dir_names(dir: &OwnedFd) -> rustix::io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let name = e?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    Ok(names)
}

/// The spans of an opened file, checked regular on the descriptor, its data read and its holes
/// (zeros: nothing canonical) skipped.
fn file_spans(index: &SpanIndex, fd: OwnedFd, buf: &mut [u8]) -> std::io::Result<Vec<u64>> {
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file when opened"));
    }
    let size = meta.len();
    let mut p = index.probe();
    let mut at = 0u64;
    while at < size {
        let data = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only a hole is left
            Err(_) => at,                          // no SEEK_DATA here: read everything
        };
        let end = rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(data))
            .unwrap_or(size)
            .clamp(data, size);
        let mut pos = data;
        while pos < end {
            let want = ((end - pos) as usize).min(buf.len());
            let n = file.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                return Ok(p.finish()); // shorter than it said
            }
            p.feed(&buf[..n]);
            pos += n as u64;
        }
        if pos <= at {
            break;
        }
        at = pos;
    }
    Ok(p.finish())
}

/// A path as a detail shows it: lossy UTF-8, at most 120 characters.
fn shown(path: &Path) -> String {
    let s = String::from_utf8_lossy(path.as_os_str().as_bytes());
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HIDDEN: &str = "Write-ahead logging keeps every change in a separate file before the\n\
        database itself is touched; a checkpoint later moves the pages back. Readers never block\n\
        writers and writers never block readers, which is why \"WAL mode\" suits most workloads.";
    const SHARED: &str = "The page cache holds recently used pages of the database file in memory.";

    /// T is the hidden paragraph and a sentence the web serves too.
    fn index() -> SpanIndex {
        let doc = format!("{HIDDEN}\n\n{SHARED}");
        let mut b = SpanIndex::builder([doc.as_str()]);
        b.served(format!("Chapter 2. {SHARED} More served text.").as_bytes());
        b.finish()
    }

    #[test]
    fn spans_are_the_windows_of_t_that_the_web_lacks() {
        let idx = index();
        let hidden = canonical(HIDDEN.as_bytes()).len();
        // T's own windows and those across its two texts, but for those holding a served run.
        assert_eq!(idx.len(), hidden - (SPAN - SERVED_RUN));
        assert!(
            idx.find(SHARED.as_bytes()).is_empty(),
            "served text is no span"
        );
        assert_eq!(idx.find(HIDDEN.as_bytes()).len(), hidden - SPAN + 1);
        // Windows across the two texts of T count: they are in no served text.
        assert!(idx.find(format!("{HIDDEN} {SHARED}").as_bytes()).len() > hidden - SPAN + 1);
        // A window of few distinct characters is never a span.
        let dull = SpanIndex::builder(["ababababababababababababababababababababab0123"]).finish();
        assert_eq!(dull.len(), 0);
        assert!(SpanIndex::builder([""]).finish().is_empty());
    }

    /// Served text joined to other served text by a few characters (the end of a page meeting the
    /// `url` key of its corpus line, the `text` key meeting the start of the next page) matches T
    /// only by coincidence: no span.
    #[test]
    fn windows_holding_a_served_run_are_no_spans() {
        let doc =
            "Read the virtual table documentation for additional information using the call. \
            Save it as plain text. An SQLite database is a single ordinary disk file.";
        let served = [
            "See the virtual table documentation for additional information.",
            "An SQLite database is a single ordinary disk file.",
        ];
        let corpus: String = served
            .iter()
            .map(|t| serde_json::json!({"text": t, "url": "http://x.test/"}).to_string() + "\n")
            .collect();
        let mut b = SpanIndex::builder([doc]);
        for t in served {
            b.served(t.as_bytes());
        }
        let idx = b.finish();
        assert!(idx.len() > 20, "the rest of T is spans: {}", idx.len());
        assert_eq!(idx.find(corpus.as_bytes()), Vec::<u64>::new());
        // Without the rule, the `u` of `url` and the `text` key would have made spans: the corpus
        // has windows of T that no served text has.
        let c = canonical(corpus.as_bytes());
        let t = canonical(doc.as_bytes());
        let web: Vec<Vec<u8>> = served.iter().map(|t| canonical(t.as_bytes())).collect();
        let coincidences = c
            .windows(SPAN)
            .filter(|w| t.windows(SPAN).any(|x| x == *w))
            .filter(|w| !web.iter().any(|s| s.windows(SPAN).any(|x| x == *w)))
            .count();
        assert!(
            coincidences >= 2,
            "the corpus does share windows with T: {coincidences}"
        );
    }

    #[test]
    fn served_markup_counts_as_its_text_and_as_its_bytes() {
        let doc = "Tom & Jerry <b>bold</b> claims nothing about 42 kinds of cheese at all.";
        let mut b = SpanIndex::builder([doc]);
        b.served_file(
            b"<p>Tom &amp; Jerry &lt;b&gt;bold&lt;/b&gt; claims <i>nothing</i> about &#52;&#x32; kinds of cheese at all.</p>",
        );
        assert!(
            b.finish().is_empty(),
            "stripped and unescaped, the page has the text"
        );
        assert_eq!(html_text(b"a&amp;b&#65;&#x62;&zz c&d"), b"abAbzz cd");
        assert_eq!(html_text(b"x<!-- y -->z<unclosed"), b"xz");
    }

    #[test]
    fn re_encoded_text_of_t_is_found() {
        let idx = index();
        let all = idx.find(HIDDEN.as_bytes());
        let json = serde_json::json!({"url": "http://x.test/", "text": HIDDEN}).to_string();
        assert!(json.contains("\\n") && json.contains("\\\""));
        // Escapes read as what they stand for: JSON hides nothing.
        assert_eq!(idx.find(json.as_bytes()), all);
        let ascii = serde_json::to_string(&format!("{HIDDEN} \u{e9}z\u{e9}")).unwrap();
        let python = ascii.replace('\u{e9}', "\\u00e9");
        assert!(python.contains("\\u00e9"));
        assert_eq!(idx.find(python.as_bytes()), all);
        assert_eq!(canonical(br#"a\nb\\nc\u0041\u00e9d\"e\x"#), b"abncadex");
        let wrapped: String = HIDDEN
            .split_whitespace()
            .collect::<Vec<_>>()
            .chunks(3)
            .map(|c| c.join("   "))
            .collect::<Vec<_>>()
            .join("\r\n\t");
        assert_eq!(idx.find(wrapped.as_bytes()), all);
        assert_eq!(idx.find(HIDDEN.to_uppercase().as_bytes()), all);
        let punctuated: String = HIDDEN.chars().flat_map(|c| [c, '|']).collect();
        assert_eq!(idx.find(punctuated.as_bytes()), all);
    }

    #[test]
    fn a_stream_fed_in_any_chunks_finds_what_it_finds_whole() {
        let idx = index();
        let text = format!("{}{HIDDEN}{}", "x".repeat(1000), "y".repeat(1000));
        let whole = idx.find(text.as_bytes());
        for size in [1, 7, 31, 32, 33, 4096] {
            let mut p = idx.probe();
            for c in text.as_bytes().chunks(size) {
                p.feed(c);
            }
            assert_eq!(p.finish(), whole, "chunks of {size}");
        }
    }

    fn finding(idx: SpanIndex, dir: &Path) -> Finding {
        let mut l = Ledger::new(Arc::new(idx));
        l.scan(&StageWork {
            stage: "train",
            calls: &[],
            outputs: dir,
            history: None,
            files: dir,
            files_label: "the graded copy",
        })
    }

    #[test]
    fn files_split_across_chunks_and_holes_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut big = vec![b'.'; CHUNK - 40];
        big.extend_from_slice(HIDDEN.as_bytes());
        big.extend(vec![b'.'; CHUNK]);
        std::fs::create_dir_all(dir.path().join("data/deep")).unwrap();
        std::fs::write(dir.path().join("data/deep/big.txt"), &big).unwrap();
        let f = finding(index(), dir.path());
        assert!(f.hit(), "{f:?}");
        assert_eq!(f.count(), canonical(HIDDEN.as_bytes()).len() - SPAN + 1);
        assert_eq!(f.detail(), "data/deep/big.txt in the graded copy");

        // A sparse file with the text in two halves around a hole of 64 MiB (zeros: nothing).
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = HIDDEN.split_at(HIDDEN.len() / 2);
        let file = std::fs::File::create(dir.path().join("sparse.bin")).unwrap();
        file.write_all_at(a.as_bytes(), 0).unwrap();
        file.write_all_at(b.as_bytes(), 64 << 20).unwrap();
        // A link to it and a FIFO are never read.
        std::os::unix::fs::symlink(dir.path().join("sparse.bin"), dir.path().join("link")).unwrap();
        let fifo = std::ffi::CString::new(dir.path().join("fifo").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let f = finding(index(), dir.path());
        assert_eq!(f.count(), canonical(HIDDEN.as_bytes()).len() - SPAN + 1);
        assert_eq!(f.detail(), "sparse.bin in the graded copy");
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);
    }

    #[test]
    fn under_the_threshold_is_no_hit() {
        let canon = canonical(HIDDEN.as_bytes());
        let dir = tempfile::tempdir().unwrap();
        // SPAN + 2 characters of T: three spans.
        std::fs::write(dir.path().join("a.txt"), &canon[..SPAN + 2]).unwrap();
        let f = finding(index(), dir.path());
        assert_eq!((f.count(), f.hit()), (3, false));
        std::fs::write(dir.path().join("a.txt"), &canon[..SPAN + 3]).unwrap();
        let f = finding(index(), dir.path());
        assert_eq!((f.count(), f.hit()), (CONTAMINATION_MIN_SPANS, true));
        // Spans in two places count once each, together.
        std::fs::write(dir.path().join("a.txt"), &canon[..SPAN + 1]).unwrap();
        std::fs::write(dir.path().join("b.txt"), &canon[2..SPAN + 4]).unwrap();
        let f = finding(index(), dir.path());
        assert_eq!(f.count(), 5, "{f:?}");
        assert!(f.hit());
    }

    #[test]
    fn a_hit_names_places_and_counts_never_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let kept = crate::trace::OutputStore::new(dir.path());
        let sha = kept.put(HIDDEN.as_bytes()).unwrap();
        let calls: Vec<Call> = vec![
            (
                3,
                "bash".into(),
                serde_json::json!({"cmd": format!("cat > x <<'EOF'\n{HIDDEN}\nEOF")}),
            ),
            (4, "bash".into(), serde_json::json!({"cmd": "ls"})),
            (
                5,
                "write_file".into(),
                serde_json::json!({"path": "p", "content": format!("[1 bytes, kept in outputs/{sha}]"), "content_sha256": sha}),
            ),
            // Only the runner's own reference is followed.
            (
                6,
                "write_file".into(),
                serde_json::json!({"path": "q", "content": "short", "content_sha256": sha}),
            ),
        ];
        let ws = tempfile::tempdir().unwrap();
        let mut l = Ledger::new(Arc::new(index()));
        let f = l.scan(&StageWork {
            stage: "crawl",
            calls: &calls,
            outputs: dir.path(),
            history: None,
            files: ws.path(),
            files_label: "the graded copy",
        });
        assert!(f.hit());
        assert_eq!(
            f.detail(),
            "step 3's bash arguments; step 5's write_file arguments"
        );
        let note = serde_json::to_string(&f.note("crawl")).unwrap();
        let score = serde_json::to_string(&f.rejection()).unwrap();
        for text in [&note, &score] {
            assert!(idx_free(text), "{text}");
        }
        let r = f.rejection();
        assert_eq!(
            (r.status.as_str(), r.passed, r.normalized),
            ("rejected", false, Some(0.0))
        );
        let public = r.public_reason.unwrap();
        assert!(
            public.contains("hidden test documents") && !public.chars().any(|c| c.is_ascii_digit())
        );
        assert!(r
            .reason
            .unwrap()
            .contains(&format!("{} distinct spans", f.count())));
    }

    #[test]
    fn a_hit_rejects_every_later_stage() {
        let note = |stage: &str, kind: &str| IntegrityNote {
            stage: Some(stage.into()),
            kind: kind.into(),
            count: 40,
            detail: "data/x.txt in the graded copy".into(),
        };
        let notes = [note("crawl", "processes_killed"), note("tokenize", KIND)];
        assert_eq!(
            earlier_hit(&notes[..1], "train"),
            None,
            "other kinds reject nothing"
        );
        // A stage graded again after a stop scans itself again: its own note is no earlier hit.
        assert_eq!(earlier_hit(&notes, "tokenize"), None);
        assert_eq!(earlier_hit(&notes, "train"), Some("tokenize"));
        let r = later_rejection("tokenize");
        assert_eq!(
            (r.status.as_str(), r.passed, r.normalized),
            ("rejected", false, Some(0.0))
        );
        assert_eq!(
            r.public_reason.as_deref(),
            Some("rejected: text of the hidden test documents was found in stage tokenize; every later stage is rejected")
        );
    }

    /// No span of the test index in this text.
    fn idx_free(text: &str) -> bool {
        index().find(text.as_bytes()).is_empty()
    }

    #[test]
    fn the_history_is_read_per_stage_and_each_object_once() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        std::fs::create_dir_all(ws.join("data")).unwrap();
        let git = tmp.path().join("w.git");
        let mut h = crate::trace::WorkspaceHistory::create(&git, &ws).unwrap();
        std::fs::write(ws.join("data/mem.txt"), HIDDEN).unwrap();
        let first = h
            .commit_if_changed("step 1 (crawl): write_file data/mem.txt")
            .unwrap()
            .unwrap();
        std::fs::remove_file(ws.join("data/mem.txt")).unwrap();
        std::fs::write(ws.join("keep.txt"), "nothing").unwrap();
        h.commit_if_changed("step 2 (crawl): bash rm data/mem.txt")
            .unwrap()
            .unwrap();
        let mut l = Ledger::new(Arc::new(index()));
        let mut f = Finding::default();
        l.scan_history(&mut f, &git, "crawl").unwrap();
        assert!(f.hit(), "{f:?}");
        assert_eq!(
            f.detail(),
            format!("commit {} (data/mem.txt)", &first[..10])
        );
        let objects = l.blobs.len() + l.trees.len();

        // The next stage's commits are its own: the deleted file is not in them.
        std::fs::write(ws.join("keep.txt"), "still nothing").unwrap();
        h.commit_if_changed("step 3 (tokenize): bash echo")
            .unwrap()
            .unwrap();
        let mut f = Finding::default();
        l.scan_history(&mut f, &git, "tokenize").unwrap();
        assert_eq!(f.count(), 0, "{f:?}");
        // One new blob and one new tree were read; the rest came from the run's memory.
        assert_eq!(l.blobs.len() + l.trees.len(), objects + 2);

        // Text left from an earlier stage was there to use: the commit a stage began from counts,
        // even when the stage's first step used it and deleted it.
        std::fs::write(ws.join("data/left.txt"), HIDDEN).unwrap();
        let left = h
            .commit_if_changed("step 4 (tokenize): write_file data/left.txt")
            .unwrap()
            .unwrap();
        std::fs::remove_file(ws.join("data/left.txt")).unwrap();
        h.commit_if_changed("step 5 (train): bash python3 t.py && rm data/left.txt")
            .unwrap()
            .unwrap();
        let mut f = Finding::default();
        l.scan_history(&mut f, &git, "train").unwrap();
        assert!(f.hit());
        assert_eq!(
            f.detail(),
            format!("data/left.txt as the stage began (commit {})", &left[..10])
        );
        // A rescue's commit ends the walk, and an agent's text after the colon fools nothing.
        assert!(step_of(b"step 12 (crawl): bash x", "crawl"));
        assert!(!step_of(b"step 12 (crawl): bash x", "train"));
        assert!(!step_of(b"rescue (crawl): the harness", "crawl"));
        assert!(!step_of(b"step x (crawl): ", "crawl"));
        // A run without commits has nothing to scan.
        let empty = tmp.path().join("e.git");
        crate::trace::WorkspaceHistory::create(&empty, &ws).unwrap();
        let mut f = Finding::default();
        l.scan_history(&mut f, &empty, "crawl").unwrap();
        assert_eq!(f.count(), 0);
    }
}
