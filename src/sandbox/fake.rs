//! A recording fake sandbox for unit tests of the runner: real file operations on a temp dir, scripted commands.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    ExecOutcome, ExecRequest, OutStream, OutputSink, Sandbox, SandboxError, WorkspaceRoot,
};

/// One thing the runner asked of the sandbox.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Exec { cmd: String, timeout_ms: u128 },
    SetNetwork(Option<String>),
    Remove,
}

/// A scripted reply to one `exec`: output chunks, then the outcome. It may also write workspace files.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub output: Vec<(OutStream, Vec<u8>)>,
    pub outcome: ExecOutcome,
    pub writes: Vec<(String, Vec<u8>)>,
    /// The sandbox fails the command with this message instead (a harness-side failure).
    pub fail: Option<String>,
}

impl Reply {
    /// Exit 0 with this stdout.
    pub fn ok(stdout: &str) -> Self {
        Self {
            output: vec![(OutStream::Stdout, stdout.as_bytes().to_vec())],
            outcome: ExecOutcome {
                exit_code: Some(0),
                duration_ms: 1.0,
                ..Default::default()
            },
            writes: vec![],
            fail: None,
        }
    }

    /// The sandbox itself fails the command (its container is gone, say).
    pub fn sandbox_failure(message: &str) -> Self {
        Self {
            fail: Some(message.into()),
            ..Self::default()
        }
    }
}

/// Records every call; commands get the scripted replies in order (then `Reply::ok("")`).
pub struct RecordingSandbox {
    workspace: WorkspaceRoot,
    _dir: Option<tempfile::TempDir>,
    replies: Mutex<VecDeque<Reply>>,
    calls: Mutex<Vec<Recorded>>,
    engine_lost: Mutex<Option<String>>,
}

impl RecordingSandbox {
    /// A fake whose workspace is a fresh temp dir.
    pub fn new(replies: Vec<Reply>) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let workspace = WorkspaceRoot::open(dir.path(), None)?;
        Ok(Self {
            workspace,
            _dir: Some(dir),
            replies: Mutex::new(replies.into()),
            calls: Mutex::new(Vec::new()),
            engine_lost: Mutex::new(None),
        })
    }

    /// A fake over an existing workspace directory.
    pub fn with_workspace(dir: &std::path::Path, replies: Vec<Reply>) -> std::io::Result<Self> {
        Ok(Self {
            workspace: WorkspaceRoot::open(dir, None)?,
            _dir: None,
            replies: Mutex::new(replies.into()),
            calls: Mutex::new(Vec::new()),
            engine_lost: Mutex::new(None),
        })
    }

    /// From now on the engine behind the fake is gone, for this reason.
    pub fn lose_engine(&self, why: &str) {
        *self.engine_lost.lock().unwrap() = Some(why.into());
    }

    /// Everything recorded so far.
    pub fn calls(&self) -> Vec<Recorded> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Sandbox for RecordingSandbox {
    fn id(&self) -> &str {
        "fake"
    }

    fn workspace(&self) -> &WorkspaceRoot {
        &self.workspace
    }

    async fn exec(
        &self,
        req: &ExecRequest,
        sink: OutputSink<'_>,
    ) -> Result<ExecOutcome, SandboxError> {
        self.calls.lock().unwrap().push(Recorded::Exec {
            cmd: req.cmd.clone(),
            timeout_ms: req.timeout.as_millis(),
        });
        let reply = self
            .replies
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Reply::ok(""));
        if let Some(message) = reply.fail {
            return Err(SandboxError::other("exec", message));
        }
        for (path, data) in &reply.writes {
            self.workspace
                .write(&super::WorkspacePath::parse(path)?, data)?;
        }
        for (stream, data) in &reply.output {
            sink(*stream, data);
        }
        Ok(reply.outcome)
    }

    async fn set_network(&self, network: Option<&str>) -> Result<(), SandboxError> {
        self.calls
            .lock()
            .unwrap()
            .push(Recorded::SetNetwork(network.map(str::to_string)));
        Ok(())
    }

    async fn remove(&self) -> Result<(), SandboxError> {
        self.calls.lock().unwrap().push(Recorded::Remove);
        Ok(())
    }

    async fn engine_lost(&self) -> Option<String> {
        self.engine_lost.lock().unwrap().clone()
    }
}
