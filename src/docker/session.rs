//! One run end to end on the real engine: run directory, image, network, sandbox, the runner, teardown.
//!
//! Teardown always happens, whatever the runner did: the sandbox and network are removed, then every
//! resource labelled with the run id is swept, and only then is `run_finished` written.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::agent::AgentSpec;
use crate::config::suite::{Home, Suite};
use crate::docker::engine;
use crate::docker::images;
use crate::docker::sandbox::{DockerSandbox, DockerSandboxSpec, SANDBOX_GID, SANDBOX_UID};
use crate::runner::{RunResult, Runner};
use crate::sandbox::Sandbox;
use crate::trace::rundir::{self, GpuRecord, RunDir, RunMeta, RunScore, RunStatus};
use crate::trace::{EventLog, EventSink, Recorder, Reporter, WorkspaceHistory};

/// A validated request for one run.
pub struct RunPlan {
    pub home: Home,
    pub suite: Suite,
    pub agent: AgentSpec,
    pub runs_dir: PathBuf,
    /// Hand over the reference artifact of a failed crawl or tokenize stage.
    pub rescue: bool,
    /// LLM agents' options (temperature, output tokens, context budget).
    pub llm: crate::agent::llm::LlmOptions,
    /// An agent made by the caller (the MCP server's), used instead of building `agent`.
    pub prebuilt: Option<Box<dyn crate::agent::Agent>>,
    /// The suite's built world (the caller builds it; it may take a while the first time).
    pub world: Option<Arc<crate::world::World>>,
    /// `exec:` agents: the names of the harness's environment variables passed through to them
    /// (`--agent-env`); nothing else of the harness's environment reaches them.
    pub agent_env: Vec<String>,
    /// The plan item the run carries out (`gptx run --plan FILE --item K`), recorded in run.json.
    pub plan_item: Option<crate::trace::rundir::PlanItemRef>,
}

impl RunPlan {
    /// The options run.json records for `gptx resume`.
    pub fn options(&self) -> crate::trace::rundir::RunOptions {
        crate::trace::rundir::RunOptions {
            rescue: self.rescue,
            temperature: self.llm.temperature,
            max_output_tokens: self.llm.max_output_tokens,
            context_tokens: self.llm.context_tokens,
            agent_env: self.agent_env.clone(),
        }
    }
}

/// A finished (or failed, or interrupted) run.
#[derive(Debug)]
pub struct RunOutput {
    pub run_id: String,
    pub dir: PathBuf,
    pub meta: RunMeta,
    pub score: RunScore,
}

/// Why a run could not even start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error(transparent)]
    Image(#[from] images::ImageError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error("run directory {path}: {source}")]
    RunDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `gptx resume` refused the run: it is not interrupted, or its trace does not hold.
    #[error("{0}")]
    NotResumable(String),
    /// Another gptx drives the run (it runs, or is being resumed).
    #[error("{0}")]
    Busy(String),
    #[error("workspace history {path}: {source}")]
    Git {
        path: String,
        #[source]
        source: git2::Error,
    },
}

/// Runs the plan. Errors before the run directory exists are returned; later failures end the run as
/// `failed` with the reason in `run.json`, and the directory is still complete.
pub async fn run(
    mut plan: RunPlan,
    reporters: Vec<Box<dyn Reporter>>,
    cancel: CancellationToken,
) -> Result<RunOutput, SessionError> {
    let agent = build_agent(&mut plan)?;
    let docker = engine::connect().await?;
    // Leftovers of runs whose gptx is gone (their run.json was marked before this run started).
    let _ = engine::sweep(&docker, None, engine::owner_alive).await;
    let image = images::ensure(&docker, &plan.home, &plan.suite.image).await?;
    within_job(&mut plan);

    let run_id = rundir::new_run_id();
    let dir = RunDir::new(plan.runs_dir.join(&run_id));
    // Each run's directory is root's alone (never the runs directory itself, which may be shared).
    rundir::make_private(&dir.path).map_err(rd_err(&dir.path))?;
    std::fs::create_dir_all(dir.workspace()).map_err(rd_err(&dir.workspace()))?;
    // The workspace's own filesystem, of the suite's size: a write past it fails in the sandbox.
    let (quota, quota_problem) = mount_workspace(&dir, plan.suite.sandbox.disk_mb);
    prepare_workspace(&dir.workspace()).map_err(rd_err(&dir.workspace()))?;
    std::fs::create_dir_all(dir.outputs()).map_err(rd_err(&dir.outputs()))?;

    let meta = new_meta(&plan, agent.as_ref(), &run_id, &image.id);
    rundir::write_json_atomic(&dir.run_json(), &meta).map_err(rd_err(&dir.run_json()))?;
    if let Err(e) = reserve(&dir.reserve(), RESERVE_BYTES) {
        tracing::warn!("could not keep space for the run's end ({e})");
    }
    let log = EventLog::create(&dir.events()).map_err(rd_err(&dir.events()))?;
    let history = WorkspaceHistory::create(&dir.git(), &dir.workspace()).map_err(|source| {
        SessionError::Git {
            path: dir.git().display().to_string(),
            source,
        }
    })?;
    let started = Started {
        docker,
        image,
        dir,
        meta,
        quota,
        quota_problem,
        log,
        history,
        agent,
        resume: None,
        _lock: None,
    };
    Ok(drive(plan, started, reporters, cancel).await)
}

/// The run's agent: the one given (MCP), or built from its spec. An `exec:` agent run without root
/// is hidden the runs directory (its own run's included).
fn build_agent(plan: &mut RunPlan) -> Result<Box<dyn crate::agent::Agent>, SessionError> {
    crate::agent::confine::hide(&plan.runs_dir);
    match plan.prebuilt.take() {
        Some(a) => Ok(a),
        None => Ok(plan.agent.build(&plan.home, &plan.llm, &plan.agent_env)?),
    }
}

/// In a Slurm job given GPUs, the sandboxes get those devices (`config::suite::Gpus::within`).
fn within_job(plan: &mut RunPlan) {
    let allocated = std::env::var("SLURM_JOB_GPUS").ok();
    let gpus = plan.suite.sandbox.gpus.take();
    plan.suite.sandbox.gpus = gpus.map(|g| g.within(allocated.as_deref()));
}

/// A new run's `run.json` as it starts: running, owned by this process.
fn new_meta(
    plan: &RunPlan,
    agent: &dyn crate::agent::Agent,
    run_id: &str,
    image_id: &str,
) -> RunMeta {
    RunMeta {
        run_id: run_id.to_string(),
        agent: agent.spec(),
        suite: plan.suite.name.clone(),
        suite_path: plan.suite.path.display().to_string(),
        world_hash: plan.world.as_ref().map(|w| w.manifest.world_hash.clone()),
        seed: plan.suite.seed,
        stages: plan.suite.stage_names(),
        budgets: plan.suite.budgets_by_stage(),
        gates: plan.suite.gates.clone(),
        gptx_version: env!("CARGO_PKG_VERSION").into(),
        images: BTreeMap::from([("agent".to_string(), image_id.to_string())]),
        started_at: chrono::Utc::now(),
        owner: crate::trace::rundir::Owner::me(),
        options: Some(plan.options()),
        resumes: Vec::new(),
        agent_process: agent_process(agent),
        plan: plan.plan_item.clone(),
        gpus: plan.suite.sandbox.gpus.clone().map(GpuRecord::asked),
        ..Default::default()
    }
}

/// Goes on with the interrupted run in `dir` (`gptx resume`), whose suite and agent `plan` was
/// made from its run.json: under a lock on its trace, which must verify, the workspace is brought
/// back to its last completed step, a new sandbox, network and web server are made, and the
/// trace goes on from its last line with `run_resumed`.
pub async fn resume(
    mut plan: RunPlan,
    dir: RunDir,
    reporters: Vec<Box<dyn Reporter>>,
    cancel: CancellationToken,
) -> Result<RunOutput, SessionError> {
    let events_path = dir.events();
    let lock = std::fs::File::open(&events_path).map_err(rd_err(&events_path))?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(SessionError::Busy(format!(
            "run {} is being resumed (or marked) by another gptx",
            dir.id()
        )));
    }
    let mut meta: RunMeta = rundir::read_json(&dir.run_json())
        .map_err(|e| SessionError::NotResumable(format!("{e:#}")))?;
    check_resumable(&dir, &meta)?;
    let trace = crate::trace::log::read_events(&events_path)
        .map_err(|e| SessionError::NotResumable(e.to_string()))?;
    let state = crate::runner::ResumeState::of(&trace)
        .map_err(|e| SessionError::NotResumable(format!("{}: {e}", events_path.display())))?;
    let agent = build_agent(&mut plan)?;
    let docker = engine::connect().await?;
    let _ = engine::sweep(&docker, None, engine::owner_alive).await;
    // Nothing of the run may outlive its stop into the restored workspace: every container of it is
    // gone before the workspace is touched (the lock says no gptx drives it).
    let left = match engine::sweep(&docker, Some(&meta.run_id), |_| false).await {
        Ok((_, warnings)) => warnings,
        Err(e) => vec![e.to_string()],
    };
    if !left.is_empty() {
        return Err(SessionError::NotResumable(format!(
            "run {}: what is left of it on the engine could not be removed ({}); `gptx gc` may, then resume again",
            meta.run_id,
            left.join("; ")
        )));
    }
    let image = images::ensure(&docker, &plan.home, &plan.suite.image).await?;
    within_job(&mut plan);
    if meta.images.get("agent").is_some_and(|id| *id != image.id) {
        tracing::warn!(
            "the agent image was rebuilt since the run began ({} now); the run goes on with it",
            engine::short(&image.id)
        );
    }
    let reason = meta
        .error
        .clone()
        .unwrap_or_else(|| meta.status.to_string());
    let mut history =
        WorkspaceHistory::open(&dir.git(), &dir.workspace(), state.last_commit.as_deref())
            .map_err(|source| SessionError::Git {
                path: dir.git().display().to_string(),
                source,
            })?;
    let (quota, quota_problem, back) = restore_workspace(
        &dir,
        &mut history,
        state.last_commit.as_deref(),
        plan.suite.sandbox.disk_mb,
    )?;
    std::fs::create_dir_all(dir.outputs()).map_err(rd_err(&dir.outputs()))?;
    meta.status = RunStatus::Running;
    meta.owner = crate::trace::rundir::Owner::me();
    meta.agent_process = agent_process(agent.as_ref());
    meta.error = None;
    meta.ended_at = None;
    meta.resumes.push(crate::trace::rundir::ResumeRecord {
        at: chrono::Utc::now(),
        after_step: state.step,
        reason: reason.clone(),
    });
    rundir::write_json_atomic(&dir.run_json(), &meta).map_err(rd_err(&dir.run_json()))?;
    if let Err(e) = reserve(&dir.reserve(), RESERVE_BYTES) {
        tracing::warn!("could not keep space for the run's end ({e})");
    }
    let log = EventLog::open_existing(&events_path)
        .map_err(|e| SessionError::NotResumable(e.to_string()))?;
    let started = Started {
        docker,
        image,
        dir,
        meta,
        quota,
        quota_problem,
        log,
        history,
        agent,
        resume: Some(crate::runner::ResumeFrom {
            state,
            reason,
            workspace: back.kind.into(),
            aside: back.aside,
            missing: back.missing,
        }),
        _lock: Some(lock),
    };
    Ok(drive(plan, started, reporters, cancel).await)
}

/// Why the run in `dir` cannot be resumed, if it cannot: only an interrupted run whose trace
/// verifies against its pinned tail, and whose agent gptx can start again, can.
pub fn check_resumable(dir: &RunDir, meta: &RunMeta) -> Result<(), SessionError> {
    let no = |why: String| Err(SessionError::NotResumable(why));
    let dead = meta.owner.as_ref().is_none_or(|o| !o.alive());
    match meta.status {
        RunStatus::Interrupted => {}
        RunStatus::Running if dead => {
            return no(format!(
                "run {}: its gptx is gone but the run is not marked yet; `gptx gc` marks it interrupted",
                meta.run_id
            ))
        }
        RunStatus::Running => {
            return Err(SessionError::Busy(format!(
                "run {} is still running (gptx pid {}), or is being resumed",
                meta.run_id,
                meta.owner.as_ref().map_or(0, |o| o.pid)
            )))
        }
        RunStatus::Done => {
            return no(format!(
                "run {} is done; there is nothing to resume",
                meta.run_id
            ))
        }
        RunStatus::Failed => {
            return no(format!(
                "run {} failed ({}); only an interrupted run can be resumed",
                meta.run_id,
                meta.error.as_deref().unwrap_or("no reason recorded")
            ))
        }
    }
    if !meta.resumable() {
        return no(format!(
            "run {}: its agent was an MCP client, which gptx cannot start again; resuming it is not supported",
            meta.run_id
        ));
    }
    crate::trace::verify(&dir.events(), meta.trace_sha256.as_deref()).map_err(|e| {
        SessionError::NotResumable(format!(
            "run {}: its trace does not verify, so it cannot be gone on with: {e}",
            meta.run_id
        ))
    })?;
    Ok(())
}

/// Where an `exec:` agent's processes are, for run.json.
fn agent_process(agent: &dyn crate::agent::Agent) -> Option<crate::trace::rundir::AgentProcess> {
    let uid = if rustix::process::geteuid().is_root() {
        crate::agent::exec::AGENT_UID
    } else {
        rustix::process::geteuid().as_raw()
    };
    agent
        .process_group()
        .map(|g| crate::trace::rundir::AgentProcess::here(g, uid))
}

fn rd_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SessionError {
    let path = path.display().to_string();
    move |source| SessionError::RunDir { path, source }
}

/// Mounts the workspace's own filesystem of `disk_mb`, when this process can; else why not.
fn mount_workspace(
    dir: &RunDir,
    disk_mb: u64,
) -> (Option<crate::sandbox::quota::Quota>, Option<String>) {
    if crate::sandbox::quota::available() {
        match crate::sandbox::quota::Quota::mount(
            &dir.workspace(),
            &dir.workspace_image(),
            disk_mb,
            (SANDBOX_UID, SANDBOX_GID),
        ) {
            Ok(q) => (Some(q), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (
            None,
            Some("gptx is not running as root, so it cannot mount one".to_string()),
        )
    }
}

/// How a resumed run's workspace was brought back.
struct Back {
    kind: &'static str,
    aside: Option<String>,
    missing: Vec<String>,
}

/// Brings an interrupted run's workspace back to `commit` (its last completed step) on a fresh
/// disk. The workspace on disk is moved to `.workspace.live` first (a resume killed midway finds
/// it there again, and whatever half-restored workspace it left is dropped). When its tree is the
/// commit's, it is kept (large files and all); otherwise the commit is written out, large files
/// the commit lists are taken from it when their hash matches, and it is kept aside as
/// `workspace.aside-N`.
fn restore_workspace(
    dir: &RunDir,
    history: &mut WorkspaceHistory,
    commit: Option<&str>,
    disk_mb: u64,
) -> Result<(Option<crate::sandbox::quota::Quota>, Option<String>, Back), SessionError> {
    use crate::sandbox::quota;
    let ws = dir.workspace();
    let live = dir.live_workspace();
    let io = |p: &std::path::Path| rd_err(p);
    // A disk left mounted by a gptx that died: its contents become a plain directory.
    if let Ok(canon) = ws.canonicalize() {
        if quota::mounts_below(&dir.path).contains(&canon) {
            quota::release_orphan(&ws).map_err(|e| SessionError::NotResumable(e.to_string()))?;
        }
    }
    let dropped = dir.dropped_workspace();
    if dropped.exists() {
        std::fs::remove_dir_all(&dropped).map_err(io(&dropped))?;
    }
    if live.exists() {
        if ws.exists() {
            std::fs::remove_dir_all(&ws).map_err(io(&ws))?;
        }
    } else if ws.exists() {
        std::fs::rename(&ws, &live).map_err(io(&ws))?;
    }
    let _ = std::fs::remove_file(dir.workspace_image());
    std::fs::create_dir_all(&ws).map_err(io(&ws))?;
    let (q, problem) = mount_workspace(dir, disk_mb);
    let owner = rustix::process::geteuid()
        .is_root()
        .then_some((SANDBOX_UID, SANDBOX_GID));
    let git = |source| SessionError::Git {
        path: dir.git().display().to_string(),
        source,
    };
    // Kept only when the comparison can stand for equality (see `WorkspaceHistory::head_is_whole`).
    let keep = live.exists()
        && history.head_is_whole().map_err(git)?
        && history.matches(&live).map_err(git)?;
    let back = if keep {
        quota::copy_into(&live, &ws).map_err(|e| SessionError::NotResumable(e.to_string()))?;
        Back {
            kind: "kept",
            aside: None,
            missing: vec![],
        }
    } else {
        let mut missing = Vec::new();
        if let Some(c) = commit {
            for f in history.restore(c, &ws, owner).map_err(git)? {
                if !(live.exists() && take_large(&live, &ws, &f, owner)) {
                    missing.push(f.path);
                }
            }
        }
        Back {
            kind: "restored",
            aside: None,
            missing,
        }
    };
    prepare_workspace(&ws).map_err(io(&ws))?;
    let mut back = back;
    if live.exists() {
        if keep {
            std::fs::rename(&live, &dropped).map_err(io(&live))?;
            std::fs::remove_dir_all(&dropped).map_err(io(&dropped))?;
        } else {
            let n = (1..).find(|n| !dir.aside(*n).exists()).unwrap_or(1);
            std::fs::rename(&live, dir.aside(n)).map_err(io(&live))?;
            back.aside = Some(
                dir.aside(n)
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    Ok((q, problem, back))
}

/// Copies a large file the commit lists from the workspace kept aside into the restored one, when
/// it is a regular file there whose size and SHA-256 are the commit's (an unhashed one is never
/// taken). Nothing is followed at the end of the path; the hash is of the bytes copied.
fn take_large(
    live: &std::path::Path,
    ws: &std::path::Path,
    f: &crate::trace::history::RestoreLarge,
    owner: Option<(u32, u32)>,
) -> bool {
    use sha2::Digest;
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let Some(want) = &f.sha256 else {
        return false;
    };
    let rel = std::path::Path::new(&f.path);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return false;
    }
    let Some(mut src) = open_beneath(live, rel) else {
        return false;
    };
    if !src
        .metadata()
        .is_ok_and(|m| m.is_file() && m.len() == f.size)
    {
        return false;
    }
    // The parents, made where the restored tree has none; never through a link.
    let dst = ws.join(rel);
    let mut at = ws.to_path_buf();
    for c in rel.parent().into_iter().flat_map(|p| p.components()) {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return false,
            Err(_) => {
                if std::fs::create_dir(&at).is_err() {
                    return false;
                }
                if let Some((u, g)) = owner {
                    let _ = std::os::unix::fs::chown(&at, Some(u), Some(g));
                }
            }
        }
    }
    let Ok(mut out) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&dst)
    else {
        return false;
    };
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let copied = loop {
        match src.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => {
                total += n as u64;
                if total > f.size || out.write_all(&buf[..n]).is_err() {
                    break false;
                }
                hash.update(&buf[..n]);
            }
            Err(_) => break false,
        }
    };
    if !copied || total != f.size || hex::encode(hash.finalize()) != *want {
        drop(out);
        let _ = std::fs::remove_file(&dst);
        return false;
    }
    if let Some((u, g)) = owner {
        let _ = std::os::unix::fs::fchown(&out, Some(u), Some(g));
    }
    true
}

/// Opens the regular file `rel` below `root` for reading without following a link anywhere on the
/// way (each directory is opened relative to the last with `O_NOFOLLOW`), and without opening what
/// is not a regular file (its type is looked at first; `O_NONBLOCK | O_NOCTTY` as well).
fn open_beneath(root: &std::path::Path, rel: &std::path::Path) -> Option<std::fs::File> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let mut dir = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .ok()?;
    let parts: Vec<&std::ffi::OsStr> = rel.iter().collect();
    let (last, parents) = parts.split_last()?;
    for p in parents {
        dir = rustix::fs::openat(
            &dir,
            *p,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .ok()?;
    }
    let st = rustix::fs::statat(&dir, *last, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return None;
    }
    let fd = rustix::fs::openat(
        &dir,
        *last,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    )
    .ok()?;
    Some(std::fs::File::from(fd))
}

/// What `run` or `resume` made ready before the run goes.
struct Started {
    docker: bollard::Docker,
    image: images::Built,
    dir: RunDir,
    meta: RunMeta,
    quota: Option<crate::sandbox::quota::Quota>,
    quota_problem: Option<String>,
    log: EventLog,
    history: WorkspaceHistory,
    agent: Box<dyn crate::agent::Agent>,
    resume: Option<crate::runner::ResumeFrom>,
    /// The lock on the trace a resumed run holds while it goes.
    _lock: Option<std::fs::File>,
}

/// The run itself: network, web server and sandbox made, the runner driven (from the start or
/// resumed), everything torn down, and run.json and score.json written. Never fails: what goes
/// wrong ends the run as failed, with the reason.
async fn drive(
    plan: RunPlan,
    started: Started,
    reporters: Vec<Box<dyn Reporter>>,
    cancel: CancellationToken,
) -> RunOutput {
    let Started {
        docker,
        image,
        dir,
        mut meta,
        quota,
        quota_problem,
        log,
        history,
        mut agent,
        resume,
        _lock,
    } = started;
    let run_id = meta.run_id.clone();
    // The engine is watched while the run goes: when it stops answering (a restart, a crash, a cut
    // socket), the run stops within seconds as interrupted, with the reason, instead of at a
    // budget's end.
    let run_cancel = cancel.child_token();
    let engine_lost: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let _watch = WatchGuard(tokio::spawn(watch_engine(
        docker.clone(),
        run_cancel.clone(),
        engine_lost.clone(),
    )));
    // Network and sandbox. A failure here is a failed run, recorded as such.
    let mut network = None;
    let mut failure: Option<String> = None;
    if plan.suite.needs_world() {
        match engine::create_world_network(&docker, &run_id, "world").await {
            Ok(name) => network = Some(name),
            Err(e) => failure = Some(format!("creating the world network: {e}")),
        }
    }
    // The world's web server, on that network only, in the harness's own image.
    let web_image = web_image(&docker, &plan, &image).await;
    let mut web = None;
    if let (Some(net), Some(world), None) = (&network, &plan.world, &failure) {
        match start_web(&docker, &run_id, &web_image, world, net, &dir).await {
            Ok(w) => web = Some(w),
            Err(e) => failure = Some(e),
        }
    }
    let sandbox: Option<Arc<DockerSandbox>> = match failure {
        Some(_) => None,
        None => {
            let hosts = web.as_ref().map(|w| w.host_entries()).unwrap_or_default();
            let spec = agent_spec(&plan, &run_id, &image.tag, &network, &dir, hosts);
            match DockerSandbox::create(&docker, &spec).await {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    failure = Some(format!("creating the agent sandbox: {e}"));
                    None
                }
            }
        }
    };

    let mut events = EventSink::new(Recorder::new(log), reporters);
    warn_at_start(&docker, &plan, quota_problem.as_deref(), &mut events).await;
    let host = (&mut meta, &dir, quota_problem.as_deref());
    record_host(&plan, sandbox.as_deref(), host, &mut events).await;
    let mut result = match &sandbox {
        Some(sb) => {
            let mut runner = make_runner(
                &plan,
                &docker,
                &run_id,
                &image,
                &web_image,
                &dir,
                sb,
                events,
                history,
                &run_cancel,
                &network,
            );
            let result = match resume {
                Some(from) => runner.resume(agent.as_mut(), &image.tag, from).await,
                None => runner.run(agent.as_mut(), &image.tag).await,
            };
            events = runner.events;
            let watched = engine_lost.lock().expect("engine watch").clone();
            match (runner.lost, watched) {
                (Some(why), _) => {
                    *engine_lost.lock().expect("engine watch") = Some(why.clone());
                    failure = Some(why);
                }
                (None, Some(why)) => {
                    events.warn(why.clone());
                    failure = Some(why);
                }
                (None, None) => {}
            }
            result
        }
        None => {
            events.warn(failure.clone().unwrap_or_default());
            RunResult {
                status: RunStatus::Failed,
                level: "L0".into(),
                assisted_level: None,
                bootstrap_index: 0.0,
                stages: vec![],
                wall_seconds: 0.0,
                trace_sha256: None,
                events: 0,
                integrity: vec![],
            }
        }
    };

    // Teardown: never skipped, never fatal; bounded once the engine is known to be gone.
    drop(_watch);
    let gone = engine_lost.lock().expect("engine watch").is_some();
    let limit = if gone {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(3600)
    };
    let docker_teardown = async {
        if let Some(s) = &sandbox {
            if let Err(e) = s.remove().await {
                events.warn(format!("removing the sandbox: {e}"));
            }
        }
        if let Some(w) = &web {
            for warning in w.remove().await {
                events.warn(warning);
            }
        }
        if let Some(n) = &network {
            if let Err(e) = docker.remove_network(n).await {
                if !engine::is_not_found(&e) {
                    events.warn(format!("removing network {n}: {e}"));
                }
            }
        }
        match engine::sweep(&docker, Some(&run_id), |_| false).await {
            Ok((removed, warnings)) => {
                if !removed.is_empty() {
                    events.warn(format!("swept leftovers of this run: {removed:?}"));
                }
                for w in warnings {
                    events.warn(w);
                }
            }
            Err(e) => events.warn(format!("sweeping this run's resources: {e}")),
        }
    };
    if tokio::time::timeout(limit, docker_teardown).await.is_err() {
        events.warn(format!(
            "the engine did not answer the teardown in {} s; `gptx gc` removes what is left",
            limit.as_secs()
        ));
    }
    if let Some(q) = quota {
        if let Err(e) = q.release(true) {
            events.warn(format!("releasing the workspace's disk: {e}"));
        }
    }

    crate::runner::finish(&mut events, &mut result);
    let _ = std::fs::remove_file(dir.reserve());
    meta.status = result.status;
    meta.error = failure.or_else(|| {
        events
            .recorder
            .broken()
            .map(|why| format!("the trace could not be written ({why}); the run stopped"))
    });
    meta.ended_at = Some(chrono::Utc::now());
    meta.trace_sha256 = result.trace_sha256.clone();
    meta.events = result.events;
    if let Err(e) = rundir::write_json_atomic(&dir.run_json(), &meta) {
        tracing::warn!("could not write {}: {e}", dir.run_json().display());
    }
    let score = result.score(&plan.suite.name, &meta);
    if let Err(e) = rundir::write_json_atomic(&dir.score_json(), &score) {
        tracing::warn!("could not write {}: {e}", dir.score_json().display());
    }
    drop(_lock);
    RunOutput {
        run_id,
        dir: dir.path,
        meta,
        score,
    }
}

/// What is amiss before the run goes: the machine's DNS (once per process, on stderr), the
/// workspace's disk limit, the reference values.
async fn warn_at_start(
    docker: &bollard::Docker,
    plan: &RunPlan,
    quota_problem: Option<&str>,
    events: &mut EventSink,
) {
    static DNS_WARNED: std::sync::Once = std::sync::Once::new();
    if let Some(w) = crate::docker::engine::dns_warning(docker).await {
        DNS_WARNED.call_once(|| tracing::warn!("{w}"));
    }
    if let Some(why) = quota_problem {
        events.warn(format!(
            "the workspace has no disk limit ({} MiB asked): {why}",
            plan.suite.sandbox.disk_mb
        ));
    }
    if let Some(w) = reference_warning(plan) {
        events.warn(w);
    }
}

/// What the run's sandbox runs on, into run.json: the engine and the guarantees in force, and the
/// GPUs (nothing when the sandbox could not be made).
async fn record_host(
    plan: &RunPlan,
    sandbox: Option<&DockerSandbox>,
    (meta, dir, quota_problem): (&mut RunMeta, &RunDir, Option<&str>),
    events: &mut EventSink,
) {
    if let Some(sb) = sandbox {
        record_isolation(meta, dir, quota_problem, events);
        record_gpus(plan, sb, meta, dir, events).await;
    }
}

/// The engine and the guarantees in force, into run.json (and a warning for Podman's `vfs`
/// storage, which copies a whole image for every container).
fn record_isolation(
    meta: &mut RunMeta,
    dir: &RunDir,
    quota_problem: Option<&str>,
    events: &mut EventSink,
) {
    let facts = crate::docker::flavor::current();
    if facts.storage_driver == "vfs" {
        events.warn(format!("{}: the vfs storage driver copies the whole image for every container; set driver = \"overlay\" under [storage] in ~/.config/containers/storage.conf", facts.kind));
    }
    let exec = meta
        .agent_process
        .is_some()
        .then(crate::agent::confine::isolation);
    meta.isolation = Some(crate::docker::flavor::isolation(
        &facts,
        quota_problem,
        exec,
    ));
    if let Err(e) = rundir::write_json_atomic(&dir.run_json(), meta) {
        tracing::warn!("could not write {}: {e}", dir.run_json().display());
    }
}

/// The GPUs of the agent's sandbox in run.json before the agent's first command: what the suite
/// asked for, and what `nvidia-smi` lists there (a harness command, not a step of the agent's).
/// When the list cannot be had, a warning says why and the run goes on with no model recorded.
async fn record_gpus(
    plan: &RunPlan,
    sb: &dyn Sandbox,
    meta: &mut RunMeta,
    dir: &RunDir,
    events: &mut EventSink,
) {
    let Some(asked) = &plan.suite.sandbox.gpus else {
        return;
    };
    let record = meta
        .gpus
        .get_or_insert_with(|| GpuRecord::asked(asked.clone()));
    match crate::sandbox::gpus::list(sb).await {
        Ok(devices) => record.devices = Some(devices),
        Err(why) => {
            events.warn(format!(
                "the sandbox's GPUs (--gpus {asked}) could not be listed, so run.json names no model: {why}"
            ));
            return;
        }
    }
    if let Err(e) = rundir::write_json_atomic(&dir.run_json(), meta) {
        tracing::warn!("could not write {}: {e}", dir.run_json().display());
    }
}

/// The image the world's web server runs in: `base`, whatever the agent's image (which need not
/// have Python); the agent's own when `base` cannot be had.
async fn web_image(docker: &bollard::Docker, plan: &RunPlan, agent: &images::Built) -> String {
    if plan.suite.image == "base" || !plan.suite.needs_world() {
        return agent.tag.clone();
    }
    match images::ensure(docker, &plan.home, "base").await {
        Ok(b) => b.tag,
        Err(e) => {
            tracing::warn!("the web server runs in the agent's image: {e}");
            agent.tag.clone()
        }
    }
}

async fn start_web(
    docker: &bollard::Docker,
    run_id: &str,
    image: &str,
    world: &crate::world::World,
    net: &str,
    dir: &RunDir,
) -> Result<crate::docker::web::WebServer, String> {
    let log_dir = dir.world();
    std::fs::create_dir_all(&log_dir)
        .and_then(|_| prepare_workspace(&log_dir))
        .map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
    crate::docker::web::WebServer::start(docker, run_id, image, world, net, &log_dir, None)
        .await
        .map_err(|e| e.to_string())
}

/// The agent's sandbox, as the suite asks.
fn agent_spec(
    plan: &RunPlan,
    run_id: &str,
    image: &str,
    network: &Option<String>,
    dir: &RunDir,
    extra_hosts: Vec<String>,
) -> DockerSandboxSpec {
    DockerSandboxSpec {
        // Created on the world network when the suite has one (Docker cannot later join a
        // container made with network `none`); stages without it leave it, keeping only loopback.
        network: network.clone(),
        workspace_host: dir.workspace(),
        workspace_readonly: false,
        extra_hosts,
        ..DockerSandboxSpec::agent(run_id, image, &plan.suite.sandbox)
    }
}

/// What is amiss with the reference values the run's normalised scores come from.
fn reference_warning(plan: &RunPlan) -> Option<String> {
    let w = plan.world.as_ref()?;
    let (name, hash) = (&w.manifest.name, &w.manifest.world_hash);
    match &plan.suite.reference_world_hash {
        None => Some(format!(
            "world {name} has no reference values (tasks/worlds/{name}.reference.json): normalised scores are 0; measure them with `gptx world reference --suite {}`",
            plan.suite.name
        )),
        Some(h) if h != hash => Some(format!(
            "the reference values were measured on world {} but this world is {}: normalised scores are approximate until `gptx world reference --suite {}` measures them again",
            crate::docker::engine::short(h), crate::docker::engine::short(hash), plan.suite.name
        )),
        Some(_) => None,
    }
}

/// The runner of this run, with its scoring sandboxes and rebuilder.
#[allow(clippy::too_many_arguments)]
fn make_runner(
    plan: &RunPlan,
    docker: &bollard::Docker,
    run_id: &str,
    image: &images::Built,
    web_image: &str,
    dir: &RunDir,
    sb: &Arc<DockerSandbox>,
    events: EventSink,
    history: WorkspaceHistory,
    cancel: &CancellationToken,
    network: &Option<String>,
) -> Runner {
    let mut runner = Runner::new(
        plan.home.clone(),
        plan.suite.clone(),
        run_id.to_string(),
        dir.path.clone(),
        sb.clone(),
        events,
        Some(history),
        cancel.clone(),
    );
    runner.world_network = network.clone();
    runner.world = plan.world.clone();
    runner.image_facts = image.facts.clone();
    let programs = {
        let (docker, run_id, tag) = (docker.clone(), run_id.to_string(), image.tag.clone());
        let (scoring, limits) = (plan.suite.scoring.clone(), plan.suite.sandbox.clone());
        move |path: &std::path::Path| {
            crate::docker::programs::DockerPrograms::new(
                docker.clone(),
                run_id.clone(),
                tag.clone(),
                path.to_path_buf(),
                scoring.clone(),
                limits.clone(),
            )
        }
    };
    runner.programs = Some(Arc::new(programs(&dir.workspace())));
    runner.graded_programs = Some(Arc::new(move |path: &std::path::Path| {
        Arc::new(programs(path)) as Arc<dyn crate::sandbox::programs::Programs>
    }));
    runner.rescue = plan.rescue;
    runner.rebuilder = Some(Arc::new(rebuilder(
        plan, docker, run_id, &image.tag, web_image, dir,
    )));
    runner
}

/// Where the selfhost stage rebuilds: fresh sandboxes of the run's image, next to its world.
fn rebuilder(
    plan: &RunPlan,
    docker: &bollard::Docker,
    run_id: &str,
    image: &str,
    web_image: &str,
    dir: &RunDir,
) -> crate::docker::rebuild::DockerRebuilder {
    let selfhost_dir = dir.selfhost().path;
    if let Err(e) = std::fs::create_dir_all(&selfhost_dir) {
        tracing::warn!("creating {}: {e}", selfhost_dir.display());
    }
    crate::docker::rebuild::DockerRebuilder {
        docker: docker.clone(),
        run_id: run_id.to_string(),
        image: image.to_string(),
        web_image: web_image.to_string(),
        world: plan.world.clone(),
        sandbox: plan.suite.sandbox.clone(),
        scoring: plan.suite.scoring.clone(),
    }
}

/// Bytes kept for the final `run.json` and `score.json` (each a few KiB).
const RESERVE_BYTES: u64 = 1 << 20;

/// Allocates `bytes` at `path` for real (not a sparse file), so freeing it frees that much.
fn reserve(path: &std::path::Path, bytes: u64) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    if rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, bytes).is_err() {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(&f);
        let block = [0u8; 4096];
        for _ in 0..bytes / 4096 {
            w.write_all(&block)?;
        }
        w.flush()?;
    }
    f.sync_all()
}

/// How often the engine is asked whether it is there while a run goes, how long an answer may take,
/// and how many missed answers in a row mean it is gone.
const WATCH_EVERY: Duration = Duration::from_secs(2);
const WATCH_TIMEOUT: Duration = Duration::from_secs(5);
const WATCH_MISSES: u32 = 2;

/// Pings the engine every [`WATCH_EVERY`]; after [`WATCH_MISSES`] failed pings in a row, records why
/// in `lost` and cancels the run.
async fn watch_engine(
    docker: bollard::Docker,
    cancel: CancellationToken,
    lost: Arc<std::sync::Mutex<Option<String>>>,
) {
    let mut misses = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let why = match tokio::time::timeout(WATCH_TIMEOUT, docker.ping()).await {
            Ok(Ok(_)) => {
                misses = 0;
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer in {} s", WATCH_TIMEOUT.as_secs()),
        };
        misses += 1;
        if misses >= WATCH_MISSES {
            *lost.lock().expect("engine watch") = Some(format!(
                "the Docker engine stopped answering ({why}); the run stopped"
            ));
            cancel.cancel();
            return;
        }
    }
}

/// Stops the engine watch when the run is over, however it ends.
struct WatchGuard(tokio::task::JoinHandle<()>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Makes the workspace writable by the sandbox user: owned by it when we are root, else open to all.
pub fn prepare_workspace(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(path, Some(SANDBOX_UID), Some(SANDBOX_GID))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
    } else {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::history::RestoreLarge;

    fn large(path: &str, bytes: &[u8]) -> RestoreLarge {
        RestoreLarge {
            path: path.into(),
            size: bytes.len() as u64,
            sha256: Some(crate::trace::sha256_hex(bytes)),
        }
    }

    #[test]
    fn a_large_file_is_taken_back_only_when_it_is_the_committed_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (live, ws) = (tmp.path().join("live"), tmp.path().join("ws"));
        std::fs::create_dir_all(live.join("d")).unwrap();
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(live.join("d/model.bin"), b"weights").unwrap();
        assert!(take_large(
            &live,
            &ws,
            &large("d/model.bin", b"weights"),
            None
        ));
        assert_eq!(std::fs::read(ws.join("d/model.bin")).unwrap(), b"weights");

        // Changed since the commit: not taken, and nothing half-written is left.
        std::fs::write(live.join("other.bin"), b"weightz").unwrap();
        assert!(!take_large(
            &live,
            &ws,
            &large("other.bin", b"weights"),
            None
        ));
        assert!(!ws.join("other.bin").exists());
        // A link to a file of the harness's: never followed, even with the right hash.
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, b"hidden").unwrap();
        std::os::unix::fs::symlink(&secret, live.join("link.bin")).unwrap();
        assert!(!take_large(&live, &ws, &large("link.bin", b"hidden"), None));
        assert!(!ws.join("link.bin").exists());
        // A directory on the way that is a link to the harness's: not followed either.
        std::fs::create_dir(tmp.path().join("host")).unwrap();
        std::fs::write(tmp.path().join("host/secret"), b"hidden").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("host"), live.join("x")).unwrap();
        assert!(!take_large(&live, &ws, &large("x/secret", b"hidden"), None));
        assert!(!ws.join("x").exists());
        // A FIFO: refused at once, no hang.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            live.join("pipe.bin"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(!take_large(&live, &ws, &large("pipe.bin", b"x"), None));
        // A path out of the workspace, and a file the snapshot did not hash.
        assert!(!take_large(
            &live,
            &ws,
            &large("../secret", b"hidden"),
            None
        ));
        let mut unhashed = large("d/model.bin", b"weights");
        unhashed.sha256 = None;
        assert!(!take_large(&live, &ws, &unhashed, None));
    }
}
