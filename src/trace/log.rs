//! `events.jsonl`: append-only, one JSON object per line, each line chained to the previous by SHA-256.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::events::Event;

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A line of the trace: chain fields, then the event's own fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub seq: u64,
    pub ts: chrono::DateTime<chrono::Utc>,
    /// Hex SHA-256 of the previous line's bytes (without its newline); "" on the first line.
    pub prev_sha256: String,
    #[serde(flatten)]
    pub event: Event,
}

/// Appends events, flushing each line to the OS as it is written.
#[derive(Debug)]
pub struct EventLog {
    file: File,
    path: PathBuf,
    prev: String,
    seq: u64,
    /// Bytes of whole lines in the file.
    written: u64,
    /// Set by the first failed write: the file ends at its last whole line and takes no more.
    broken: Option<String>,
}

impl EventLog {
    /// Creates a new trace file (it must not exist).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            prev: String::new(),
            seq: 0,
            written: 0,
            broken: None,
        })
    }

    /// Opens an existing trace to go on writing it: the chain continues from its last line (a live
    /// run's trace in tests; resuming a run).
    pub fn open_existing(path: &Path) -> Result<Self, TraceError> {
        let shown = path.display().to_string();
        let io = |source| TraceError::Io {
            path: shown.clone(),
            source,
        };
        let text = std::fs::read(path).map_err(io)?;
        let lines = text.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        let (n, last) = lines.enumerate().last().map(|(i, l)| (i + 1, l)).unzip();
        let (prev, seq) = match last {
            Some(line) => {
                let env: Envelope =
                    serde_json::from_slice(line).map_err(|e| TraceError::Parse {
                        path: shown.clone(),
                        line: n.unwrap_or(0) as u64,
                        message: e.to_string(),
                    })?;
                (sha256_hex(line), env.seq + 1)
            }
            None => (String::new(), 0),
        };
        let file = OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            prev,
            seq,
            written: text.len() as u64,
            broken: None,
        })
    }

    /// Writes one event; returns the line's hash.
    pub fn append(&mut self, event: &Event) -> std::io::Result<String> {
        let env = Envelope {
            seq: self.seq,
            ts: chrono::Utc::now(),
            prev_sha256: std::mem::take(&mut self.prev),
            event: event.clone(),
        };
        if let Some(why) = &self.broken {
            self.prev = env.prev_sha256;
            return Err(std::io::Error::other(format!(
                "the trace stopped at its last whole line after an earlier write failed ({why})"
            )));
        }
        let mut line = serde_json::to_vec(&env).map_err(std::io::Error::other)?;
        let hash = sha256_hex(&line);
        line.push(b'\n');
        match self.file.write_all(&line).and_then(|_| self.file.flush()) {
            Ok(()) => {
                self.prev = hash.clone();
                self.seq += 1;
                self.written += line.len() as u64;
                Ok(hash)
            }
            Err(e) => {
                // Never a partial line: cut the file back to its last whole line, and write no more
                // (the caller stops the run as failed).
                let _ = self.file.set_len(self.written);
                self.prev = env.prev_sha256;
                self.broken = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Why the trace can take no more lines, once a write failed.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Hash of the last line written ("" before the first).
    pub fn last_hash(&self) -> &str {
        &self.prev
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of events written.
    pub fn len(&self) -> u64 {
        self.seq
    }

    pub fn is_empty(&self) -> bool {
        self.seq == 0
    }
}

/// Where and why a trace failed verification.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: not a trace event: {message}")]
    Parse {
        path: String,
        line: u64,
        message: String,
    },
    #[error("{path} line {line}: prev_sha256 does not match line {prev}; the trace was edited after it was written")]
    Broken { path: String, line: u64, prev: u64 },
    #[error("{path} line {line}: seq is {found}, expected {expected}")]
    Seq {
        path: String,
        line: u64,
        found: u64,
        expected: u64,
    },
    #[error("{path}: the last line's hash {found} differs from {expected} recorded in run.json; the trace was edited or cut")]
    Tail {
        path: String,
        found: String,
        expected: String,
    },
}

/// What a verified trace holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub events: u64,
    pub last_sha256: String,
}

/// Reads a trace, checking every line's chain link; `expected_tail` (from run.json) also pins the last line.
pub fn verify(path: &Path, expected_tail: Option<&str>) -> Result<Verified, TraceError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| TraceError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut prev = String::new();
    let mut n = 0u64;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|source| TraceError::Io {
            path: shown.clone(),
            source,
        })?;
        n += 1;
        let env: Envelope = serde_json::from_slice(&line).map_err(|e| TraceError::Parse {
            path: shown.clone(),
            line: n,
            message: e.to_string(),
        })?;
        if env.prev_sha256 != prev {
            return Err(TraceError::Broken {
                path: shown,
                line: n,
                prev: n - 1,
            });
        }
        if env.seq != n - 1 {
            return Err(TraceError::Seq {
                path: shown,
                line: n,
                found: env.seq,
                expected: n - 1,
            });
        }
        prev = sha256_hex(&line);
    }
    if let Some(expected) = expected_tail {
        if expected != prev {
            return Err(TraceError::Tail {
                path: shown,
                found: prev,
                expected: expected.to_string(),
            });
        }
    }
    Ok(Verified {
        events: n,
        last_sha256: prev,
    })
}

/// Reads every event of a trace without verifying it (for viewers; pair with [`verify`]).
pub fn read_events(path: &Path) -> Result<Vec<Envelope>, TraceError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| TraceError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| TraceError::Io {
            path: shown.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| TraceError::Parse {
            path: shown.clone(),
            line: i as u64 + 1,
            message: e.to_string(),
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warn(i: usize) -> Event {
        Event::Warning {
            message: format!("event {i}"),
        }
    }

    #[test]
    fn chain_verifies_and_any_byte_edit_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut log = EventLog::create(&path).unwrap();
        for i in 0..5 {
            log.append(&warn(i)).unwrap();
        }
        let tail = log.last_hash().to_string();
        let ok = verify(&path, Some(&tail)).unwrap();
        assert_eq!(ok.events, 5);
        let original = std::fs::read(&path).unwrap();
        // Flip one byte inside each line's message in turn: always detected.
        let positions: Vec<usize> = original
            .windows(7)
            .enumerate()
            .filter(|(_, w)| w == b"event 1" || w == b"event 4")
            .map(|(i, _)| i + 6)
            .collect();
        for pos in positions {
            let mut edited = original.clone();
            edited[pos] = b'9';
            std::fs::write(&path, &edited).unwrap();
            assert!(verify(&path, Some(&tail)).is_err(), "edit at {pos} missed");
        }
        // Cutting the last line is caught by the pinned tail.
        let cut = original[..original.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap();
        std::fs::write(&path, &original[..=cut]).unwrap();
        assert!(matches!(
            verify(&path, Some(&tail)),
            Err(TraceError::Tail { .. })
        ));
        assert!(verify(&path, None).is_ok());
    }

    #[test]
    fn open_existing_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut log = EventLog::create(&path).unwrap();
        log.append(&warn(0)).unwrap();
        log.append(&warn(1)).unwrap();
        drop(log);
        let mut more = EventLog::open_existing(&path).unwrap();
        assert_eq!(more.len(), 2);
        let tail = more.append(&warn(2)).unwrap();
        assert_eq!(verify(&path, Some(&tail)).unwrap().events, 3);
        std::fs::write(&path, b"not json\n").unwrap();
        assert!(matches!(
            EventLog::open_existing(&path),
            Err(TraceError::Parse { line: 1, .. })
        ));
    }

    #[test]
    fn create_refuses_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, b"x").unwrap();
        assert!(EventLog::create(&path).is_err());
    }
}
