//! The run's record: typed events, the hash-chained `events.jsonl`, full outputs, and workspace history.
//!
//! Imported by `sandbox`, `agent`, `stages`, `runner`, `docker`, `report`, `serve`, `synth` and
//! `cli`; imports only `config` and `files`.

pub mod audit;
pub mod events;
pub mod history;
pub mod log;
pub mod replay;
pub mod rundir;
pub(crate) mod watch;

pub use events::{
    round, BudgetsUsed, EndReason, Event, IntegrityNote, ModelCall, ModelReply, ModelToolUse,
    OutputRef, Resumed, StageScore, StepRecord, StepUsage,
};
pub use history::WorkspaceHistory;
pub use log::{sha256_hex, verify, EventLog, TraceError, Verified};

use sha2::Digest as _;
use std::path::{Path, PathBuf};

/// Reporters see every event, in order, synchronously; this is the runner's only link to them.
pub trait Reporter: Send {
    fn report(&mut self, event: &Event);
}

/// Writes events to `events.jsonl`. A failed write becomes a warning on stderr and the run goes on.
pub struct Recorder {
    log: Option<EventLog>,
    failures: u64,
}

impl Recorder {
    pub fn new(log: EventLog) -> Self {
        Self {
            log: Some(log),
            failures: 0,
        }
    }

    /// A recorder that records nothing (for benches and dry runs).
    pub fn disabled() -> Self {
        Self {
            log: None,
            failures: 0,
        }
    }

    /// Hash of the last line written.
    pub fn last_hash(&self) -> Option<String> {
        self.log.as_ref().map(|l| l.last_hash().to_string())
    }

    /// How many events were written (or attempted).
    pub fn count(&self) -> u64 {
        self.log.as_ref().map(|l| l.len()).unwrap_or(0)
    }

    /// How many events failed to write.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Why the trace can take no more events (a write failed: a full disk), if so. The run must
    /// stop: a run whose trace is incomplete cannot be trusted.
    pub fn broken(&self) -> Option<String> {
        self.log
            .as_ref()
            .and_then(|l| l.broken().map(str::to_string))
    }
}

impl Reporter for Recorder {
    fn report(&mut self, event: &Event) {
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.append(event) {
                self.failures += 1;
                tracing::warn!(
                    "could not record a {} event in {}: {e}",
                    event.kind(),
                    log.path().display()
                );
            }
        }
    }
}

/// The recorder plus the other reporters: every event goes to the recorder first, then to each reporter.
pub struct EventSink {
    pub recorder: Recorder,
    pub reporters: Vec<Box<dyn Reporter>>,
}

impl EventSink {
    pub fn new(recorder: Recorder, reporters: Vec<Box<dyn Reporter>>) -> Self {
        Self {
            recorder,
            reporters,
        }
    }

    pub fn emit(&mut self, event: Event) {
        self.recorder.report(&event);
        for r in &mut self.reporters {
            r.report(&event);
        }
    }

    /// Logs a warning and records it in the trace.
    pub fn warn(&mut self, message: String) {
        tracing::warn!("{message}");
        self.emit(Event::Warning { message });
    }
}

/// `outputs/`: full command outputs, one file per distinct content, named by SHA-256, at most
/// [`OUTPUTS_CAP`] bytes per run (past it, a step keeps only its inline head and tail).
#[derive(Debug, Clone)]
pub struct OutputStore {
    dir: PathBuf,
    used: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cap: u64,
}

/// Bytes of each output stream the agent (and the event) sees inline: head and tail halves.
pub const INLINE_OUTPUT: usize = 32 * 1024;
/// Bytes of each output stream kept in `outputs/` per step; beyond this the output is counted, not kept.
pub const FULL_OUTPUT: usize = 64 * 1024 * 1024;

/// Bytes of `outputs/` one run may write.
pub(crate) const OUTPUTS_CAP: u64 = 1 << 30;

impl OutputStore {
    pub fn new(dir: &Path) -> Self {
        Self::with_cap(dir, OUTPUTS_CAP)
    }

    pub(crate) fn with_cap(dir: &Path, cap: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            used: Default::default(),
            cap,
        }
    }

    /// Stores bytes (once per content) and returns their hash; Err once the run's cap is reached.
    pub fn put(&self, bytes: &[u8]) -> std::io::Result<String> {
        use std::sync::atomic::Ordering;
        let sha = sha256_hex(bytes);
        let path = self.dir.join(&sha);
        if !path.exists() {
            let n = bytes.len() as u64;
            if self.used.fetch_add(n, Ordering::SeqCst) + n > self.cap {
                self.used.fetch_sub(n, Ordering::SeqCst);
                return Err(self.cap_error());
            }
            std::fs::create_dir_all(&self.dir)?;
            let tmp = self.dir.join(format!(".{sha}.tmp"));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(sha)
    }

    pub fn path(&self, sha: &str) -> PathBuf {
        self.dir.join(sha)
    }

    /// A file written as output arrives, hashed on the way, named by its hash at [`OutputWriter::finish`].
    pub fn writer(&self) -> OutputWriter {
        OutputWriter {
            store: self.clone(),
            file: None,
            tmp: self
                .dir
                .join(format!(".{:016x}.tmp", rand::random::<u64>())),
            hash: sha2::Sha256::new(),
            written: 0,
            error: None,
        }
    }

    fn cap_error(&self) -> std::io::Error {
        std::io::Error::other(format!(
            "the run's outputs/ cap of {} MiB is reached; only the inline head and tail are kept",
            self.cap >> 20
        ))
    }
}

/// One output being written to `outputs/` (see [`OutputStore::writer`]); the first error stops it.
pub struct OutputWriter {
    store: OutputStore,
    file: Option<std::fs::File>,
    tmp: PathBuf,
    hash: sha2::Sha256,
    written: u64,
    error: Option<std::io::Error>,
}

impl OutputWriter {
    pub fn write(&mut self, data: &[u8]) {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        if self.error.is_some() || data.is_empty() {
            return;
        }
        let n = data.len() as u64;
        if self.store.used.fetch_add(n, Ordering::SeqCst) + n > self.store.cap {
            self.store.used.fetch_sub(n, Ordering::SeqCst);
            self.error = Some(self.store.cap_error());
            return;
        }
        let result = match &mut self.file {
            Some(f) => f.write_all(data),
            None => std::fs::create_dir_all(&self.store.dir)
                .and_then(|()| std::fs::File::create(&self.tmp))
                .and_then(|mut f| f.write_all(data).map(|()| self.file = Some(f))),
        };
        match result {
            Ok(()) => {
                sha2::Digest::update(&mut self.hash, data);
                self.written += n;
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// The output's hash once it is in `outputs/` (stored once per content), or why it is not.
    pub fn finish(self) -> std::io::Result<String> {
        use std::sync::atomic::Ordering;
        drop(self.file);
        if let Some(e) = self.error {
            self.store.used.fetch_sub(self.written, Ordering::SeqCst);
            let _ = std::fs::remove_file(&self.tmp);
            return Err(e);
        }
        let sha = hex::encode(sha2::Digest::finalize(self.hash));
        let path = self.store.dir.join(&sha);
        if path.exists() {
            self.store.used.fetch_sub(self.written, Ordering::SeqCst);
            std::fs::remove_file(&self.tmp)?;
        } else {
            std::fs::rename(&self.tmp, &path)?;
        }
        Ok(sha)
    }
}

#[cfg(test)]
mod output_tests {
    use super::*;

    #[test]
    fn outputs_stop_at_the_runs_cap_and_repeats_cost_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::with_cap(dir.path(), 100);
        let a = store.put(&[1u8; 60]).unwrap();
        assert_eq!(
            store.put(&[1u8; 60]).unwrap(),
            a,
            "the same content is stored once"
        );
        let e = store.put(&[2u8; 60]).unwrap_err().to_string();
        assert!(e.contains("cap"), "{e}");
        store.put(&[3u8; 40]).unwrap();
    }

    #[test]
    fn a_streamed_output_is_named_by_its_hash_and_stops_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::with_cap(dir.path(), 100);
        let mut w = store.writer();
        w.write(b"hello ");
        w.write(b"world");
        let sha = w.finish().unwrap();
        assert_eq!(sha, sha256_hex(b"hello world"));
        assert_eq!(std::fs::read(store.path(&sha)).unwrap(), b"hello world");
        let mut again = store.writer();
        again.write(b"hello world");
        assert_eq!(again.finish().unwrap(), sha, "stored once");
        let mut big = store.writer();
        big.write(&[7u8; 60]);
        big.write(&[7u8; 60]);
        assert!(big.finish().unwrap_err().to_string().contains("cap"));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left: {left:?}");
        store.put(&[3u8; 60]).unwrap();
    }
}
