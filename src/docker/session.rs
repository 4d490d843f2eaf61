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
use crate::trace::rundir::{self, RunDir, RunMeta, RunScore, RunStatus};
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
    let mut agent = match plan.prebuilt.take() {
        Some(a) => a,
        None => plan.agent.build(&plan.home, &plan.llm, &plan.agent_env)?,
    };
    let docker = engine::connect().await?;
    // Leftovers of runs whose gptx is gone (their run.json was marked before this run started).
    let _ = engine::sweep(&docker, None, engine::owner_alive).await;
    let image = images::ensure(&docker, &plan.home, &plan.suite.image).await?;

    let run_id = rundir::new_run_id();
    let dir = RunDir::new(plan.runs_dir.join(&run_id));
    let rd_err = |path: &PathBuf| {
        let path = path.display().to_string();
        move |source| SessionError::RunDir { path, source }
    };
    // Each run's directory is root's alone (never the runs directory itself, which may be shared).
    rundir::make_private(&dir.path).map_err(rd_err(&dir.path))?;
    std::fs::create_dir_all(dir.workspace()).map_err(rd_err(&dir.workspace()))?;
    // The workspace's own filesystem, of the suite's size: a write past it fails in the sandbox.
    let (quota, quota_problem) = if crate::sandbox::quota::available() {
        match crate::sandbox::quota::Quota::mount(
            &dir.workspace(),
            &dir.workspace_image(),
            plan.suite.sandbox.disk_mb,
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
    };
    prepare_workspace(&dir.workspace()).map_err(rd_err(&dir.workspace()))?;
    std::fs::create_dir_all(dir.outputs()).map_err(rd_err(&dir.outputs()))?;

    let mut meta = RunMeta {
        run_id: run_id.clone(),
        agent: agent.spec(),
        suite: plan.suite.name.clone(),
        suite_path: plan.suite.path.display().to_string(),
        world_hash: plan.world.as_ref().map(|w| w.manifest.world_hash.clone()),
        seed: plan.suite.seed,
        stages: plan.suite.stage_names(),
        budgets: plan.suite.budgets_by_stage(),
        gates: plan.suite.gates.clone(),
        gptx_version: env!("CARGO_PKG_VERSION").into(),
        images: BTreeMap::from([("agent".to_string(), image.id.clone())]),
        started_at: chrono::Utc::now(),
        ended_at: None,
        status: RunStatus::Running,
        error: None,
        trace_sha256: None,
        events: 0,
        owner: crate::trace::rundir::Owner::me(),
    };
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
    // The world's web server, on that network only.
    let mut web = None;
    if let (Some(net), Some(world), None) = (&network, &plan.world, &failure) {
        let log_dir = dir.world();
        match std::fs::create_dir_all(&log_dir).and_then(|_| prepare_workspace(&log_dir)) {
            Err(e) => failure = Some(format!("creating {}: {e}", log_dir.display())),
            Ok(()) => {
                match crate::docker::web::WebServer::start(
                    &docker, &run_id, &image.tag, world, net, &log_dir, None,
                )
                .await
                {
                    Ok(w) => web = Some(w),
                    Err(e) => failure = Some(e.to_string()),
                }
            }
        }
    }
    let sandbox: Option<Arc<DockerSandbox>> = if failure.is_none() {
        let spec = DockerSandboxSpec {
            run_id: run_id.clone(),
            role: "agent".into(),
            image: image.tag.clone(),
            memory_bytes: (plan.suite.sandbox.memory_mb * 1024 * 1024) as i64,
            nano_cpus: (plan.suite.sandbox.cpus * 1e9) as i64,
            pids: plan.suite.sandbox.pids as i64,
            // Created on the world network when the suite has one (Docker cannot later join a
            // container made with network `none`); stages without it leave it, keeping only loopback.
            network: network.clone(),
            workspace_host: dir.workspace(),
            workspace_readonly: false,
            env: vec![],
            instance: None,
            tmp_mb: plan.suite.sandbox.tmp_mb,
            extra_hosts: web.as_ref().map(|w| w.host_entries()).unwrap_or_default(),
        };
        match DockerSandbox::create(&docker, &spec).await {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                failure = Some(format!("creating the agent sandbox: {e}"));
                None
            }
        }
    } else {
        None
    };

    let mut events = EventSink::new(Recorder::new(log), reporters);
    // A fact of the machine, not of the run: said once per process, on stderr.
    static DNS_WARNED: std::sync::Once = std::sync::Once::new();
    if let Some(w) = crate::docker::engine::dns_warning(&docker).await {
        DNS_WARNED.call_once(|| tracing::warn!("{w}"));
    }
    if let Some(why) = &quota_problem {
        events.warn(format!(
            "the workspace has no disk limit ({} MiB asked): {why}",
            plan.suite.sandbox.disk_mb
        ));
    }
    if let Some(w) = &plan.world {
        match &plan.suite.reference_world_hash {
            None => events.warn(format!(
                "world {} has no reference values (tasks/worlds/{}.reference.json): normalised scores are 0; measure them with `gptx world reference --suite {}`",
                w.manifest.name, w.manifest.name, plan.suite.name
            )),
            Some(h) if *h != w.manifest.world_hash => events.warn(format!(
                "the reference values were measured on world {} but this world is {}: normalised scores are approximate until `gptx world reference --suite {}` measures them again",
                crate::docker::engine::short(h), crate::docker::engine::short(&w.manifest.world_hash), plan.suite.name
            )),
            Some(_) => {}
        }
    }
    let mut result = match &sandbox {
        Some(sb) => {
            let mut runner = Runner::new(
                plan.home.clone(),
                plan.suite.clone(),
                run_id.clone(),
                dir.path.clone(),
                sb.clone(),
                events,
                Some(history),
                run_cancel.clone(),
            );
            runner.world_network = network.clone();
            runner.world = plan.world.clone();
            runner.programs = Some(Arc::new(
                crate::docker::programs::DockerPrograms::new(
                    docker.clone(),
                    run_id.clone(),
                    image.tag.clone(),
                    dir.workspace(),
                    plan.suite.scoring.clone(),
                    plan.suite.sandbox.pids,
                )
                .with_tmp_mb(plan.suite.sandbox.tmp_mb),
            ));
            runner.rescue = plan.rescue;
            {
                let (docker, run_id, tag) = (docker.clone(), run_id.clone(), image.tag.clone());
                let (scoring, pids, tmp) = (
                    plan.suite.scoring.clone(),
                    plan.suite.sandbox.pids,
                    plan.suite.sandbox.tmp_mb,
                );
                runner.graded_programs = Some(Arc::new(move |path: &std::path::Path| {
                    Arc::new(
                        crate::docker::programs::DockerPrograms::new(
                            docker.clone(),
                            run_id.clone(),
                            tag.clone(),
                            path.to_path_buf(),
                            scoring.clone(),
                            pids,
                        )
                        .with_tmp_mb(tmp),
                    ) as Arc<dyn crate::sandbox::programs::Programs>
                }));
            }
            let selfhost_dir = dir.selfhost().path;
            if let Err(e) = std::fs::create_dir_all(&selfhost_dir) {
                tracing::warn!("creating {}: {e}", selfhost_dir.display());
            }
            runner.rebuilder = Some(Arc::new(crate::docker::rebuild::DockerRebuilder {
                docker: docker.clone(),
                run_id: run_id.clone(),
                image: image.tag.clone(),
                world: plan.world.clone(),
                sandbox: plan.suite.sandbox.clone(),
                scoring: plan.suite.scoring.clone(),
            }));
            let result = runner.run(agent.as_mut(), &image.tag).await;
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
    let score = RunScore {
        run_id: run_id.clone(),
        suite: plan.suite.name.clone(),
        agent: meta.agent.clone(),
        seed: meta.seed,
        world_hash: meta.world_hash.clone(),
        status: result.status,
        level: result.level.clone(),
        assisted_level: result.assisted_level.clone(),
        bootstrap_index: result.bootstrap_index,
        stages: result.summaries(),
        integrity: result.integrity.clone(),
    };
    if let Err(e) = rundir::write_json_atomic(&dir.score_json(), &score) {
        tracing::warn!("could not write {}: {e}", dir.score_json().display());
    }
    Ok(RunOutput {
        run_id,
        dir: dir.path,
        meta,
        score,
    })
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
