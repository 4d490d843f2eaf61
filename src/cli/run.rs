//! `gptx run` (one run, a batch of agents × seeds, or a plan's items), `gptx resume`, `gptx mcp` and `gptx world reference`: plans from arguments, plan files or run.json, runs on the engine, results printed.

use super::*;

/// Turns a batch of one agent and one seed into a validated plan.
pub fn plan(args: &BatchArgs, runs_dir: &std::path::Path) -> anyhow::Result<RunPlan> {
    let agent = match args.agent.as_slice() {
        [one] => one,
        [] => anyhow::bail!("--agent: give the agent to run"),
        _ => anyhow::bail!("--agent: plan() takes one agent; use plans() for several"),
    };
    plan_for(args, runs_dir, agent, args.seed)
}

/// The runs a batch asks for: every `--agent` × every seed of `--seeds` (or `--seed`).
/// Each plan comes with the `--agent` text it was made from.
pub fn plans(
    args: &BatchArgs,
    runs_dir: &std::path::Path,
) -> anyhow::Result<Vec<(String, RunPlan)>> {
    if args.agent.is_empty() {
        anyhow::bail!("--agent: give at least one agent (or --plan FILE)");
    }
    let mut out = Vec::new();
    for agent in &args.agent {
        for seed in args.seed_list() {
            out.push((agent.clone(), plan_for(args, runs_dir, agent, seed)?));
        }
    }
    Ok(out)
}

pub(super) fn plan_for(
    args: &BatchArgs,
    runs_dir: &std::path::Path,
    agent: &str,
    seed: Option<u64>,
) -> anyhow::Result<RunPlan> {
    let home = Home::locate()?;
    let agent: AgentSpec = agent
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--agent {agent}: {e}"))?;
    let mut suite = home.suite(args.suite()).context("--suite")?;
    let o = args.overrides();
    suite = suite.with_overrides(&BudgetOverrides {
        max_steps: o.max_steps,
        max_sandbox_seconds: o.max_sandbox_seconds,
        max_wall_seconds: o.max_wall_seconds,
        max_step_seconds: o.max_step_seconds,
        max_tokens: o.max_tokens,
        max_cost_usd: o.max_cost_usd,
        ..Default::default()
    })?;
    if !args.stages.is_empty() {
        suite = suite.select(&args.stages)?;
    }
    if let Some(seed) = seed {
        suite.seed = seed;
    }
    let options = args.options();
    Ok(RunPlan {
        home,
        suite,
        agent,
        runs_dir: runs_dir.to_path_buf(),
        rescue: options.rescue,
        prebuilt: None,
        llm: llm_options(
            options.temperature,
            options.max_output_tokens,
            options.context_tokens,
        ),
        world: None,
        agent_env: options.agent_env,
        plan_item: None,
    })
}

/// How a batch is run: at most `parallel` at once, `force` to run done pairs again.
pub(super) struct BatchRun {
    pub parallel: u16,
    pub force: bool,
    pub quiet: bool,
    pub json: bool,
    pub runs_dir: std::path::PathBuf,
    /// How many agents the batch has (for its first line).
    pub agents: usize,
}

pub(super) async fn run(args: RunArgs) -> Result<i32, Exit> {
    if let Some(path) = args.plan.clone() {
        return crate::cli::plan_cmd::run_plan(&path, &args).await;
    }
    let mut plans = plans(&args.batch, &args.dir.runs_dir).map_err(usage)?;
    for p in mark_dead_runs(&args.dir.runs_dir) {
        eprintln!("gptx: {p}");
    }
    if plans.len() > 1 {
        gpus_one_at_a_time(&plans, args.parallel)?;
        let batch = BatchRun {
            parallel: args.parallel,
            force: args.force,
            quiet: args.quiet,
            json: args.json,
            runs_dir: args.dir.runs_dir.clone(),
            agents: args.batch.agent.len(),
        };
        return run_many(plans, &batch).await;
    }
    let (_, plan) = plans.remove(0);
    let cancel = CancellationToken::new();
    install_interrupts(cancel.clone());
    let out = execute(plan, args.quiet, cancel).await?;
    print_result(&out, args.json);
    Ok(status_code(out.meta.status))
}

/// Prints one run's result: its scorecard, or `--json`'s object.
pub(super) fn print_result(out: &session::RunOutput, json: bool) {
    if json {
        out_text(&format!("{}\n", result_json(out)));
    } else {
        out_text(&crate::report::show::scorecard(&out.meta, &out.score));
    }
}

/// The world hash a plan's run will have (the world built or read from the cache), None without one.
pub(super) fn world_hash_of(plan: &RunPlan) -> Option<String> {
    let name = plan.suite.world.as_ref()?;
    crate::world::ensure(
        &plan.home,
        name,
        plan.suite.world_seed,
        &crate::world::Quiet,
    )
    .ok()
    .map(|w| w.0.manifest.world_hash)
}

/// A done run below `runs_dir` of the same pair as `plan` (agent, seed, suite, world hash, budgets)
/// that verifies, as the batch reports it.
pub(super) fn already_done(
    runs: &[(crate::trace::rundir::RunDir, crate::trace::rundir::RunMeta)],
    agent: &str,
    plan: &RunPlan,
    world_hash: &Option<String>,
) -> Option<session::RunOutput> {
    let budgets = plan.suite.budgets_by_stage();
    // The first done run: running a pair again cannot re-roll it.
    runs.iter().find_map(|(dir, meta)| {
        if meta.status != RunStatus::Done || !same_pair(meta, agent, plan, world_hash, &budgets) {
            return None;
        }
        let score = crate::trace::rundir::read_json(&dir.score_json()).ok()?;
        let audit = crate::trace::audit::check(dir).ok()?;
        audit.problems.is_empty().then(|| session::RunOutput {
            run_id: meta.run_id.clone(),
            dir: dir.path.clone(),
            meta: meta.clone(),
            score,
        })
    })
}

/// The latest interrupted run below `runs_dir` of the same pair as `plan` (agent, seed, suite,
/// world hash, budgets) that `gptx resume` can take up, as the batch resumes it.
pub(super) fn to_resume(
    runs: &[(crate::trace::rundir::RunDir, crate::trace::rundir::RunMeta)],
    agent: &str,
    plan: &RunPlan,
    world_hash: &Option<String>,
) -> Option<crate::trace::rundir::RunDir> {
    let budgets = plan.suite.budgets_by_stage();
    runs.iter()
        .rev()
        .find(|(_, meta)| meta.resumable() && same_pair(meta, agent, plan, world_hash, &budgets))
        .map(|(dir, _)| crate::trace::rundir::RunDir::new(dir.path.clone()))
}

/// Whether a run is of the pair `plan` asks for: the same agent string, seed, suite, world hash
/// and budgets by stage, and the same plan item (a plan keeps only its own runs; a batch given by
/// flags only runs outside plans).
fn same_pair(
    meta: &crate::trace::rundir::RunMeta,
    agent: &str,
    plan: &RunPlan,
    world_hash: &Option<String>,
    budgets: &std::collections::BTreeMap<String, crate::config::suite::Budgets>,
) -> bool {
    meta.agent == agent
        && meta.seed == plan.suite.seed
        && meta.suite == plan.suite.name
        && &meta.world_hash == world_hash
        && &meta.budgets == budgets
        && meta.plan == plan.plan_item
}

/// Refuses runs on GPUs side by side: each would get the same devices (a count means the first
/// ones), so one agent's programs could take the memory or the time of another's grading.
fn gpus_one_at_a_time(plans: &[(String, RunPlan)], parallel: u16) -> Result<(), Exit> {
    let gpus = plans.iter().any(|(_, p)| p.suite.sandbox.gpus.is_some());
    if gpus && parallel > 1 {
        return Err(usage(anyhow::anyhow!(
            "--parallel {parallel}: the suite gives its sandboxes GPUs ([sandbox] gpus), which runs side by side would share; run them one at a time (--parallel 1)"
        )));
    }
    Ok(())
}

/// Several runs (agents × seeds), at most `--parallel` at once. Each finished run prints one line;
/// at the end a table of all of them. An interrupt stops the runs going and starts no more.
pub(super) async fn run_many(plans: Vec<(String, RunPlan)>, args: &BatchRun) -> Result<i32, Exit> {
    let total = plans.len();
    let cancel = CancellationToken::new();
    install_interrupts(cancel.clone());
    // Pairs the runs directory already has done are kept, interrupted ones are resumed, the rest
    // are run (unless --force: then every pair is run anew).
    let mut kept: Vec<Option<session::RunOutput>> = (0..total).map(|_| None).collect();
    let mut resume: Vec<Option<crate::trace::rundir::RunDir>> = (0..total).map(|_| None).collect();
    if !args.force {
        let (runs, _) = crate::trace::rundir::list_runs(&args.runs_dir);
        let hash = plans.first().and_then(|(_, p)| world_hash_of(p));
        for (i, (agent, plan)) in plans.iter().enumerate() {
            kept[i] = already_done(&runs, agent, plan, &hash);
            if kept[i].is_none() {
                resume[i] = to_resume(&runs, agent, plan, &hash);
            }
        }
    }
    let done = kept.iter().flatten().count();
    let resuming = resume.iter().flatten().count();
    let was_kept: Vec<bool> = kept.iter().map(Option::is_some).collect();
    let to_run = total - done;
    let parallel = usize::from(args.parallel).min(to_run.max(1));
    eprintln!(
        "gptx run: {total} runs ({} agent(s) × {} seed(s)): {done} done, {resuming} to resume, {} to run; {parallel} at a time{}",
        args.agents,
        total / args.agents.max(1),
        to_run - resuming,
        if done > 0 {
            " (done runs are kept; --force runs every pair again)"
        } else {
            ""
        },
    );
    // The runs share this task (a run's future is not Send): `buffer_unordered` polls at most
    // `parallel` of them at once, and each spends its time waiting on the engine.
    use futures_util::StreamExt;
    let mut results: Vec<Option<(String, Result<session::RunOutput, Exit>)>> =
        (0..total).map(|_| None).collect();
    let mut todo = Vec::new();
    for (i, (agent, plan)) in plans.into_iter().enumerate() {
        match kept[i].take() {
            Some(out) => {
                results[i] = Some((format!("{agent} seed {}", plan.suite.seed), Ok(out)));
            }
            None => todo.push((i, (agent, plan), resume[i].take())),
        }
    }
    let mut labels: Vec<String> = vec![String::new(); total];
    for (i, (agent, plan), _) in &todo {
        labels[*i] = format!("{agent} seed {}", plan.suite.seed);
    }
    let runs_dir = args.runs_dir.clone();
    let mut stream = futures_util::stream::iter(todo)
        .map(|(i, (agent, plan), resume)| {
            let cancel = cancel.clone();
            let label = format!("{agent} seed {}", plan.suite.seed);
            let runs_dir = runs_dir.clone();
            async move {
                if cancel.is_cancelled() {
                    return (i, label, None);
                }
                let r = run_one(
                    plan,
                    resume,
                    &runs_dir,
                    &label,
                    quiet_of(parallel, args.quiet),
                    cancel,
                )
                .await;
                (i, label, Some(r))
            }
        })
        .buffer_unordered(parallel);
    let mut finished = done;
    while let Some((i, label, r)) = stream.next().await {
        let Some(r) = r else {
            continue;
        };
        finished += 1;
        match &r {
            Ok(out) => eprintln!(
                "[{finished}/{total}] {label}: {} {}{} · Bootstrap Index {:.1} · {}{}",
                out.meta.status,
                out.score.level,
                out.score
                    .assisted_level
                    .as_deref()
                    .map(|a| format!(" (assisted {a})"))
                    .unwrap_or_default(),
                out.score.bootstrap_index,
                out.run_id,
                if out.score.resumed > 0 {
                    " (resumed)"
                } else {
                    ""
                }
            ),
            Err(e) => eprintln!("[{finished}/{total}] {label}: error: {:#}", e.error),
        }
        results[i] = Some((label, r));
    }
    drop(stream);
    let mut code = exit::OK;
    let mut lines = Vec::new();
    let width = results
        .iter()
        .flatten()
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(0)
        .max(12);
    let mut table = format!(
        "{:<width$} {:<11} {:<10} {:>6}  run\n",
        "agent / seed", "status", "level", "index"
    );
    for (i, slot) in results.iter().enumerate() {
        let Some((label, r)) = slot else {
            code = exit::INTERRUPTED;
            table.push_str(&format!(
                "{:<width$} not finished: the batch was interrupted\n",
                labels[i]
            ));
            continue;
        };
        match r {
            Ok(out) => {
                let level = match &out.score.assisted_level {
                    Some(a) => format!("{} ({a})", out.score.level),
                    None => out.score.level.clone(),
                };
                table.push_str(&format!(
                    "{label:<width$} {:<11} {level:<10} {:>6.1}  {}{}\n",
                    out.meta.status.to_string(),
                    out.score.bootstrap_index,
                    out.run_id,
                    if was_kept[i] { " (kept)" } else { "" }
                ));
                match out.meta.status {
                    RunStatus::Done => {}
                    RunStatus::Interrupted => code = exit::INTERRUPTED,
                    _ if code == exit::OK => code = exit::FAILED,
                    _ => {}
                }
                lines.push(serde_json::json!({
                    "run_id": out.run_id,
                    "agent": out.meta.agent,
                    "seed": out.meta.seed,
                    "status": out.meta.status,
                    "level": out.score.level,
                    "assisted_level": out.score.assisted_level,
                    "bootstrap_index": out.score.bootstrap_index,
                    "error": out.meta.error,
                    "kept": was_kept[i],
                    "resumed": out.score.resumed,
                }));
            }
            Err(e) => {
                table.push_str(&format!("{label:<width$} error: {:#}\n", e.error));
                if code == exit::OK {
                    code = e.code;
                }
            }
        }
    }
    if cancel.is_cancelled() {
        code = exit::INTERRUPTED;
    }
    if args.json {
        let mut text = String::new();
        for l in lines {
            text.push_str(&format!("{l}\n"));
        }
        out_text(&text);
    } else {
        out_text(&table);
    }
    Ok(code)
}

/// Parallel runs are quiet: one progress line cannot show several.
fn quiet_of(parallel: usize, quiet: bool) -> bool {
    parallel > 1 || quiet
}

/// One run of a batch: its interrupted run resumed when there is one (refused: run anew; driven
/// by another gptx: left to it, never run twice at once), else a new run.
async fn run_one(
    plan: RunPlan,
    resume: Option<crate::trace::rundir::RunDir>,
    runs_dir: &std::path::Path,
    label: &str,
    quiet: bool,
    cancel: CancellationToken,
) -> Result<session::RunOutput, Exit> {
    if let Some(dir) = resume {
        let id = dir.id();
        let r = match resume_plan(&dir, runs_dir) {
            Ok(p) => execute_resume(p, dir, quiet, cancel.clone()).await,
            Err(e) => Err(Exit {
                code: exit::USAGE,
                error: e,
            }),
        };
        let busy = |e: &Exit| {
            matches!(
                e.error.downcast_ref::<session::SessionError>(),
                Some(session::SessionError::Busy(_))
            )
        };
        match r {
            Err(e) if e.code == exit::USAGE && !busy(&e) => {
                eprintln!(
                    "gptx run: {label}: run {id} cannot be resumed ({:#}); running the pair anew",
                    e.error
                );
            }
            r => return r,
        }
    }
    execute(plan, quiet, cancel).await
}

/// `gptx mcp`: a run whose agent is the MCP client on stdin/stdout.
pub(super) async fn mcp(a: McpArgs) -> Result<i32, Exit> {
    let args = BatchArgs {
        suite: Some(a.suite),
        agent: vec!["null".into()],
        seed: a.seed,
        stages: a.stages,
        rescue: Some(a.rescue),
        ..Default::default()
    };
    let mut plan = plan(&args, &a.dir.runs_dir).map_err(|e| Exit {
        code: exit::USAGE,
        error: e,
    })?;
    let (agent, server) = crate::agent::mcp::pair();
    plan.prebuilt = Some(Box::new(agent));
    // Over stdio the client is our parent process; over HTTP it is whoever connects.
    if a.http.is_none() {
        if let Some(w) = crate::agent::mcp::client_warning(rustix::process::getppid(), &plan.home) {
            eprintln!("gptx mcp: warning: {w}");
            tracing::warn!("{w}");
        }
    }
    let serving = match a.http {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                return Err(Exit {
                    code: exit::USAGE,
                    error: anyhow::anyhow!(
                        "--http {addr}: the MCP server binds to loopback only (127.0.0.1 or ::1)"
                    ),
                });
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| failed(anyhow::anyhow!("--http {addr}: {e}")))?;
            let bound = listener.local_addr().map_err(failed)?;
            let token = crate::agent::mcp::new_token();
            // The token is in the URL (or send `Authorization: Bearer <token>`): only who reads this
            // line can talk to the run.
            eprintln!("gptx mcp: listening on http://{bound}/mcp?token={token}");
            tokio::spawn(server.serve_http(listener, token))
        }
        None => tokio::spawn(server.serve(tokio::io::stdin(), tokio::io::stdout())),
    };
    let http = a.http.is_some();
    let cancel = CancellationToken::new();
    install_interrupts(cancel.clone());
    let out = execute(plan, true, cancel).await?;
    eprint!("{}", crate::report::show::scorecard(&out.meta, &out.score));
    // The client hears the end in its last tool result; give it a moment (stdio: to hang up).
    let grace = std::time::Duration::from_secs(if http { 2 } else { 10 });
    let _ = tokio::time::timeout(grace, serving).await;
    Ok(match out.meta.status {
        RunStatus::Done => exit::OK,
        RunStatus::Interrupted => exit::INTERRUPTED,
        RunStatus::Failed | RunStatus::Running => exit::FAILED,
    })
}

/// `gptx world reference`: a full reference run, then its scores as the world's reference values.
pub(super) async fn measure_reference(a: ReferenceArgs) -> Result<i32, Exit> {
    let usage = |e: anyhow::Error| Exit {
        code: exit::USAGE,
        error: e,
    };
    let home = Home::locate().map_err(env_error)?;
    let suite = home.suite(&a.suite).map_err(|e| usage(e.into()))?;
    let Some(world) = suite.world.clone() else {
        return Err(usage(anyhow::anyhow!(
            "suite {} has no world to measure reference values on",
            suite.name
        )));
    };
    let plan = RunPlan {
        home: home.clone(),
        suite,
        agent: AgentSpec::Reference(None),
        runs_dir: a.dir.runs_dir.clone(),
        rescue: false,
        prebuilt: None,
        llm: Default::default(),
        world: None,
        agent_env: vec![],
        plan_item: None,
    };
    let cancel = CancellationToken::new();
    install_interrupts(cancel.clone());
    let out = execute(plan, a.quiet, cancel).await?;
    print!("{}", crate::report::show::scorecard(&out.meta, &out.score));
    let values = out.score.reference_values().map_err(failed)?;
    let record = crate::config::reference::ReferenceValues {
        world: world.clone(),
        world_hash: out.meta.world_hash.clone().unwrap_or_default(),
        suite: out.meta.suite.clone(),
        run_id: out.run_id.clone(),
        measured_at: out
            .meta
            .ended_at
            .unwrap_or_else(chrono::Utc::now)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        gptx_version: out.meta.gptx_version.clone(),
        level: out.score.level.clone(),
        wall_seconds: out
            .meta
            .ended_at
            .map(|e| (e - out.meta.started_at).num_milliseconds() as f64 / 1000.0)
            .unwrap_or(0.0),
        values,
    };
    let path = crate::config::reference::path(&home, &world);
    crate::config::reference::write(&path, &record).map_err(failed)?;
    println!("wrote {}:", path.display());
    for (k, v) in &record.values {
        println!("  {k:<26} {v}");
    }
    Ok(exit::OK)
}

/// The plan that goes on with the run in `dir`: its agent, its suite as it applied it (stages,
/// seed, budgets by stage, gates) and its options, all from its run.json. Errors say why the run
/// cannot be resumed.
pub(super) fn resume_plan(
    dir: &crate::trace::rundir::RunDir,
    runs_dir: &std::path::Path,
) -> anyhow::Result<RunPlan> {
    let meta: crate::trace::rundir::RunMeta = crate::trace::rundir::read_json(&dir.run_json())?;
    let shown = dir.run_json().display().to_string();
    // Said before the world is built; said again under the run's lock.
    session::check_resumable(dir, &meta)?;
    let agent: AgentSpec = meta
        .agent
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{shown}: agent {:?}: {e}", meta.agent))?;
    let home = Home::locate()?;
    let mut suite = if std::path::Path::new(&meta.suite_path).exists() {
        home.suite(&meta.suite_path)
    } else {
        home.suite(&meta.suite)
    }
    .with_context(|| format!("{shown}: suite {}", meta.suite))?;
    if suite.stage_names() != meta.stages {
        suite = suite
            .select(&meta.stages)
            .with_context(|| format!("{shown}: stages"))?;
    }
    suite.seed = meta.seed;
    for stage in &mut suite.stages {
        match meta.budgets.get(&stage.name) {
            Some(b) => stage.budgets = b.clone(),
            None => anyhow::bail!("{shown}: budgets: no entry for stage {}", stage.name),
        }
    }
    if !meta.gates.is_empty() && suite.gates != meta.gates {
        anyhow::bail!(
            "{shown}: the suite file {} changed its gates since the run began; a resumed run must be graded as it began",
            suite.path.display()
        );
    }
    // A run written before its options were recorded took the defaults.
    let options = meta.options.clone().unwrap_or_else(|| {
        let d = crate::agent::llm::LlmOptions::default();
        crate::trace::rundir::RunOptions {
            rescue: true,
            temperature: d.temperature,
            max_output_tokens: d.max_output_tokens,
            context_tokens: d.context_tokens,
            agent_env: vec![],
        }
    });
    Ok(RunPlan {
        home,
        suite,
        agent,
        runs_dir: runs_dir.to_path_buf(),
        rescue: options.rescue,
        prebuilt: None,
        llm: llm_options(
            options.temperature,
            options.max_output_tokens,
            options.context_tokens,
        ),
        world: None,
        agent_env: options.agent_env,
        plan_item: None,
    })
}

/// The LLM options a run is asked for (the rest are the loop's defaults).
fn llm_options(
    temperature: Option<f64>,
    max_output_tokens: u64,
    context_tokens: u64,
) -> crate::agent::llm::LlmOptions {
    crate::agent::llm::LlmOptions {
        temperature,
        max_output_tokens,
        context_tokens,
        ..Default::default()
    }
}

/// `gptx resume`: goes on with an interrupted run from its last completed step.
pub(super) async fn resume(a: ResumeArgs) -> Result<i32, Exit> {
    for p in mark_dead_runs(&a.dir.runs_dir) {
        eprintln!("gptx: {p}");
    }
    let usage = |e: anyhow::Error| Exit {
        code: exit::USAGE,
        error: e,
    };
    let dir = crate::trace::rundir::find_run(&a.dir.runs_dir, &a.run).map_err(usage)?;
    let plan = resume_plan(&dir, &a.dir.runs_dir).map_err(usage)?;
    // A plan item's run is resumed under the item's lock, as `gptx run --plan --item` would.
    let _lock =
        match crate::trace::rundir::read_json::<crate::trace::rundir::RunMeta>(&dir.run_json())
            .ok()
            .and_then(|m| m.plan)
        {
            Some(r) => {
                let parent = dir
                    .path
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default();
                Some(
                    tokio::task::spawn_blocking(move || {
                        crate::plan::ItemLock::acquire(
                            &parent,
                            &r.plan_id,
                            &r.item,
                            std::time::Duration::ZERO,
                        )
                    })
                    .await
                    .map_err(failed)?
                    .map_err(|e| usage(e.into()))?,
                )
            }
            None => None,
        };
    let cancel = CancellationToken::new();
    install_interrupts(cancel.clone());
    let out = execute_resume(plan, dir, a.quiet, cancel).await?;
    print_result(&out, a.json);
    Ok(status_code(out.meta.status))
}

/// The exit code of a run's status.
pub(super) fn status_code(status: RunStatus) -> i32 {
    match status {
        RunStatus::Done => exit::OK,
        RunStatus::Interrupted => exit::INTERRUPTED,
        RunStatus::Failed | RunStatus::Running => exit::FAILED,
    }
}

/// `--json`'s object for one run.
fn result_json(out: &session::RunOutput) -> serde_json::Value {
    let stages: serde_json::Map<String, serde_json::Value> = out
        .score
        .stages
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).expect("json")))
        .collect();
    serde_json::json!({
        "run_id": out.run_id,
        "dir": out.dir.display().to_string(),
        "status": out.meta.status,
        "level": out.score.level,
        "assisted_level": out.score.assisted_level,
        "bootstrap_index": out.score.bootstrap_index,
        "stages": stages,
        "error": out.meta.error,
        "resumed": out.score.resumed,
    })
}

/// Builds the world of a resumed run's suite (it must be the world the run began on), then goes on
/// with the run.
pub(super) async fn execute_resume(
    mut plan: RunPlan,
    dir: crate::trace::rundir::RunDir,
    quiet: bool,
    cancel: CancellationToken,
) -> Result<session::RunOutput, Exit> {
    with_world(&mut plan, quiet).await?;
    let meta: crate::trace::rundir::RunMeta =
        crate::trace::rundir::read_json(&dir.run_json()).map_err(failed)?;
    let hash = plan.world.as_ref().map(|w| w.manifest.world_hash.clone());
    if hash != meta.world_hash {
        return Err(Exit {
            code: exit::USAGE,
            error: anyhow::anyhow!(
                "run {}: its world was {} and the suite's world is now {}; a resumed run must go on in the world it began in",
                meta.run_id,
                meta.world_hash.as_deref().unwrap_or("none"),
                hash.as_deref().unwrap_or("none")
            ),
        });
    }
    let reporters: Vec<Box<dyn crate::trace::Reporter>> =
        vec![Box::new(crate::report::progress::Progress::new(quiet))];
    session::resume(plan, dir, reporters, cancel)
        .await
        .map_err(session_exit)
}

/// The exit code of a run that could not start.
fn session_exit(e: session::SessionError) -> Exit {
    match e {
        session::SessionError::Engine(_) | session::SessionError::Image(_) => env_error(e),
        session::SessionError::NotResumable(_) | session::SessionError::Busy(_) => Exit {
            code: exit::USAGE,
            error: e.into(),
        },
        other => failed(other),
    }
}

/// Builds (or reads from the cache) the plan's world, when its suite has one.
pub(super) async fn with_world(plan: &mut RunPlan, quiet: bool) -> Result<(), Exit> {
    if let Some(name) = plan.suite.world.clone() {
        let home = plan.home.clone();
        let seed = plan.suite.world_seed;
        let world = tokio::task::spawn_blocking(move || {
            let bar = crate::report::progress::WorldBar::new(quiet);
            let r = crate::world::ensure(&home, &name, seed, &bar);
            bar.finish();
            r
        })
        .await
        .map_err(failed)?
        .map_err(|e| match e {
            crate::world::WorldError::NotFound { .. } | crate::world::WorldError::Config { .. } => {
                Exit {
                    code: exit::USAGE,
                    error: anyhow::Error::from(e).context("--suite"),
                }
            }
            other => env_error(other),
        })?;
        plan.world = Some(std::sync::Arc::new(world.0));
    }
    Ok(())
}

/// Builds the world if the suite has one, then does the run with a progress line.
pub(super) async fn execute(
    mut plan: RunPlan,
    quiet: bool,
    cancel: CancellationToken,
) -> Result<session::RunOutput, Exit> {
    with_world(&mut plan, quiet).await?;
    let reporters: Vec<Box<dyn crate::trace::Reporter>> =
        vec![Box::new(crate::report::progress::Progress::new(quiet))];
    session::run(plan, reporters, cancel)
        .await
        .map_err(session_exit)
}
