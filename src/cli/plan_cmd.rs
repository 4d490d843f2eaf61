//! `gptx plan` (a batch written as a plan file), `gptx run --plan FILE [--item K]` (a plan's items, checked against this node), and `gptx runs --plan FILE` (where each item stands).

use super::*;
use crate::plan::{ItemLock, ItemState, Plan, Tally, WorldPin};

/// `gptx plan`: checks the batch as `gptx run` would (every agent spec, the suite, the stages,
/// the budgets), builds its world to pin the hash, and writes the plan file.
pub(super) async fn make(a: PlanArgs) -> Result<i32, Exit> {
    let home = Home::locate().map_err(env_error)?;
    let suite = home
        .suite(a.batch.suite())
        .map_err(|e| usage(anyhow::Error::from(e).context("--suite")))?;
    // Every item's plan is made now, so a bad agent, stage or budget is refused here, not on a node.
    let plans = run::plans(&a.batch, &a.runs_dir).map_err(usage)?;
    let mut seeds: Vec<u64> = Vec::new();
    for (_, p) in &plans {
        if !seeds.contains(&p.suite.seed) {
            seeds.push(p.suite.seed);
        }
    }
    let world = match plans.first().map(|(_, p)| p) {
        Some(p) if p.suite.world.is_some() => {
            let mut p =
                run::plan_for(&a.batch, &a.runs_dir, &a.batch.agent[0], None).map_err(usage)?;
            run::with_world(&mut p, false).await?;
            p.world.as_ref().map(|w| WorldPin {
                name: w.manifest.name.clone(),
                seed: w.manifest.seed,
                hash: w.manifest.world_hash.clone(),
            })
        }
        _ => None,
    };
    let recipe = crate::config::image::Recipe::load(&home, &suite.image).map_err(usage)?;
    let images = std::collections::BTreeMap::from([(suite.image.clone(), recipe.tag())]);
    let suite_sha256 = crate::plan::file_sha256(&suite.path).map_err(usage)?;
    let plan = Plan::new(
        // Resources come from the suite as the items run it: stages and budgets applied.
        &plans[0].1.suite,
        a.batch.suite(),
        suite_sha256,
        a.batch.stages.clone(),
        world,
        images,
        a.batch.overrides(),
        a.batch.options(),
        a.runs_dir.clone(),
        &a.batch.agent,
        &seeds,
    )
    .map_err(usage)?;
    plan.write(&a.out).map_err(failed)?;
    if a.json {
        out_text(&format!(
            "{}\n",
            serde_json::to_string_pretty(&plan).expect("json")
        ));
    } else {
        out_text(&format!(
            "plan {} · {} items ({} agent(s) × {} seed(s)) · suite {} · world {} · each item asks {} CPUs, {} MB\nwrote {} (runs go to {})\nrun one item: gptx run --plan {} --item 0 · all here: gptx run --plan {} --parallel 2 · on Slurm: gptx slurm submit --plan {}\n",
            plan.plan_id,
            plan.items.len(),
            a.batch.agent.len(),
            seeds.len(),
            plan.suite,
            plan.world.as_ref().map(|w| &w.hash[..12.min(w.hash.len())]).unwrap_or("none"),
            plan.resources.cpus,
            plan.resources.memory_mb,
            a.out.display(),
            plan.runs_dir_from(&a.out).display(),
            a.out.display(),
            a.out.display(),
            a.out.display(),
        ));
    }
    Ok(exit::OK)
}

/// A plan read and checked against this node: the same gptx version, suite file and image
/// recipes; every item's run plan; the runs directory.
struct Checked {
    plan: Plan,
    runs_dir: std::path::PathBuf,
    runs: Vec<(String, RunPlan)>,
}

/// `only`: the one item to build a run plan for (`--item K`), else every item.
fn check(path: &std::path::Path, only: Option<&str>) -> Result<Checked, Exit> {
    let plan = Plan::load(path).map_err(usage)?;
    let only = match only {
        Some(key) => Some(plan.item(key, path).map_err(usage)?.index),
        None => None,
    };
    let shown = path.display();
    let env = |m: String| env_error(anyhow::anyhow!("{shown}: {m}"));
    if plan.gptx_version != env!("CARGO_PKG_VERSION") {
        return Err(env(format!(
            "the plan was made by gptx {} and this is gptx {}: run every item with the gptx that made the plan",
            plan.gptx_version,
            env!("CARGO_PKG_VERSION")
        )));
    }
    let home = Home::locate().map_err(env_error)?;
    let suite = home
        .suite(&plan.suite)
        .map_err(|e| usage(anyhow::Error::from(e).context(format!("{shown}: suite"))))?;
    let sha = crate::plan::file_sha256(&suite.path).map_err(usage)?;
    if sha != plan.suite_sha256 {
        return Err(env(format!(
            "this node's suite file {} (sha256 {}) is not the one the plan was made with ({}): check out the same tasks/",
            suite.path.display(),
            &sha[..12],
            &plan.suite_sha256[..12]
        )));
    }
    if suite.reference != plan.reference {
        return Err(env(format!(
            "this node's reference values for suite {} (tasks/worlds/*.reference.json) are not the plan's: scores would not compare; check out the same tasks/",
            suite.name
        )));
    }
    for (name, tag) in &plan.images {
        let recipe = crate::config::image::Recipe::load(&home, name).map_err(usage)?;
        if &recipe.tag() != tag {
            return Err(env(format!(
                "this node's recipe for image {name} has tag {}, the plan's is {tag}: check out the same sandboxes/",
                recipe.tag()
            )));
        }
    }
    let runs_dir = plan.runs_dir_from(path);
    let o = &plan.overrides;
    let batch = BatchArgs {
        suite: Some(plan.suite.clone()),
        stages: plan.stages.clone(),
        max_steps: o.max_steps,
        max_sandbox_seconds: o.max_sandbox_seconds,
        max_wall_seconds: o.max_wall_seconds,
        max_step_seconds: o.max_step_seconds,
        max_tokens: o.max_tokens,
        max_cost_usd: o.max_cost_usd,
        temperature: plan.options.temperature,
        max_output_tokens: Some(plan.options.max_output_tokens),
        context_tokens: Some(plan.options.context_tokens),
        agent_env: plan.options.agent_env.clone(),
        rescue: Some(plan.options.rescue),
        ..Default::default()
    };
    let mut runs = Vec::new();
    for item in plan
        .items
        .iter()
        .filter(|i| only.is_none_or(|k| k == i.index))
    {
        let mut p = run::plan_for(&batch, &runs_dir, &item.agent, Some(item.seed))
            .map_err(|e| usage(e.context(format!("{shown}: item {}", item.id))))?;
        p.plan_item = Some(plan.item_ref(item));
        runs.push((item.agent.clone(), p));
    }
    Ok(Checked {
        plan,
        runs_dir,
        runs,
    })
}

/// Builds (or reads) the plan's world on this node and refuses one whose hash is not the plan's.
async fn world_checked(plan: &Plan, p: &mut RunPlan, quiet: bool) -> Result<(), Exit> {
    run::with_world(p, quiet).await?;
    let got = p.world.as_ref().map(|w| w.manifest.world_hash.clone());
    let want = plan.world.as_ref().map(|w| w.hash.clone());
    if got != want {
        return Err(env_error(anyhow::anyhow!(
            "plan {}: this node's world is {} and the plan's is {}: the world's files (tasks/worlds/) differ",
            plan.plan_id,
            got.as_deref().unwrap_or("none"),
            want.as_deref().unwrap_or("none")
        )));
    }
    Ok(())
}

/// What running one item gave: its run and whether it was kept (done already).
type ItemResult = Result<(session::RunOutput, bool), Exit>;

/// `gptx run --plan FILE [--item K]`.
pub(super) async fn run_plan(path: &std::path::Path, args: &RunArgs) -> Result<i32, Exit> {
    let given = args.batch.given();
    if !given.is_empty() {
        return Err(usage(anyhow::anyhow!(
            "--plan {}: the plan fixes the suite, agents, seeds, budgets and options; drop {}",
            path.display(),
            given.join(", ")
        )));
    }
    if args.force {
        return Err(usage(anyhow::anyhow!(
            "--plan {}: --force would run done items again, and a plan counts each item's first done run; make a new plan instead",
            path.display()
        )));
    }
    let mut checked = check(path, args.item.as_deref())?;
    // The world once, for every item.
    if let Some((_, p)) = checked.runs.first_mut() {
        world_checked(&checked.plan, p, args.quiet).await?;
        let world = p.world.clone();
        for (_, q) in checked.runs.iter_mut() {
            q.world = world.clone();
        }
    }
    let cancel = CancellationToken::new();
    install_interrupts(cancel.clone());
    let Checked {
        plan,
        runs_dir,
        runs,
    } = checked;
    if let Some(key) = &args.item {
        let item = plan.item(key, path).map_err(usage)?.clone();
        let (agent, rp) = runs.into_iter().next().expect("the item's run plan");
        let wait = std::time::Duration::from_secs_f64(args.item_wait.clamp(0.0, 86_400.0));
        let (out, _) = item_once(
            &plan, &item, &agent, rp, &runs_dir, wait, args.quiet, cancel,
        )
        .await?;
        run::print_result(&out, args.json);
        return Ok(run::status_code(out.meta.status));
    }
    // Every item here, `--parallel` at a time, each exactly as `--item` runs it.
    let total = plan.items.len();
    let parallel = usize::from(args.parallel).min(total).max(1);
    eprintln!(
        "gptx run: plan {} ({}): {total} items, {parallel} at a time, runs in {}",
        plan.plan_id,
        path.display(),
        runs_dir.display()
    );
    use futures_util::StreamExt;
    let quiet = parallel > 1 || args.quiet;
    let mut stream = futures_util::stream::iter(plan.items.iter().cloned().zip(runs))
        .map(|(item, (agent, rp))| {
            let (plan, runs_dir, cancel) = (&plan, &runs_dir, cancel.clone());
            async move {
                if cancel.is_cancelled() {
                    return (item, None);
                }
                // Another gptx running an item (a Slurm task, say) keeps it.
                let r = item_once(
                    plan,
                    &item,
                    &agent,
                    rp,
                    runs_dir,
                    std::time::Duration::ZERO,
                    quiet,
                    cancel,
                )
                .await;
                (item, Some(r))
            }
        })
        .buffer_unordered(parallel);
    let mut rows: Vec<(crate::plan::Item, Option<ItemResult>)> = Vec::new();
    while let Some((item, r)) = stream.next().await {
        if let Some(r) = &r {
            match r {
                Ok((out, kept)) => eprintln!(
                    "[{}/{total}] item {} {} seed {}: {} {} · Bootstrap Index {:.1} · {}{}",
                    rows.len() + 1,
                    item.index,
                    item.agent,
                    item.seed,
                    out.meta.status,
                    out.score.level,
                    out.score.bootstrap_index,
                    out.run_id,
                    if *kept { " (kept: done already)" } else { "" }
                ),
                Err(e) => eprintln!(
                    "[{}/{total}] item {} {} seed {}: {:#}",
                    rows.len() + 1,
                    item.index,
                    item.agent,
                    item.seed,
                    e.error
                ),
            }
        }
        rows.push((item, r));
    }
    drop(stream);
    rows.sort_by_key(|(i, _)| i.index);
    let mut code = exit::OK;
    let mut table = format!(
        "{:>5}  {:<34} {:<11} {:<10} {:>6}  run\n",
        "item", "id", "status", "level", "index"
    );
    let mut lines = String::new();
    for (item, r) in &rows {
        match r {
            None => {
                code = exit::INTERRUPTED;
                table.push_str(&format!(
                    "{:>5}  {:<34} not run: the batch was interrupted\n",
                    item.index, item.id
                ));
            }
            Some(Ok((out, kept))) => {
                match out.meta.status {
                    RunStatus::Done => {}
                    RunStatus::Interrupted => code = exit::INTERRUPTED,
                    _ if code == exit::OK => code = exit::FAILED,
                    _ => {}
                }
                table.push_str(&format!(
                    "{:>5}  {:<34} {:<11} {:<10} {:>6.1}  {}{}\n",
                    item.index,
                    item.id,
                    out.meta.status.to_string(),
                    out.score.level,
                    out.score.bootstrap_index,
                    out.run_id,
                    if *kept { " (kept)" } else { "" }
                ));
                lines.push_str(&format!(
                    "{}\n",
                    serde_json::json!({"item": item.id, "index": item.index, "run_id": out.run_id,
                        "status": out.meta.status, "level": out.score.level,
                        "bootstrap_index": out.score.bootstrap_index, "kept": kept})
                ));
            }
            Some(Err(e)) => {
                if code == exit::OK {
                    code = e.code;
                }
                table.push_str(&format!(
                    "{:>5}  {:<34} error: {:#}\n",
                    item.index, item.id, e.error
                ));
            }
        }
    }
    if cancel.is_cancelled() {
        code = exit::INTERRUPTED;
    }
    out_text(if args.json { &lines } else { &table });
    Ok(code)
}

/// One item, under its lock: kept when it has a done run, its interrupted run resumed, a run of
/// it whose gptx is gone (on any host: the lock was free) taken over and resumed, else started.
/// The output comes with whether it was kept.
#[allow(clippy::too_many_arguments)]
async fn item_once(
    plan: &Plan,
    item: &crate::plan::Item,
    agent: &str,
    rp: RunPlan,
    runs_dir: &std::path::Path,
    wait: std::time::Duration,
    quiet: bool,
    cancel: CancellationToken,
) -> Result<(session::RunOutput, bool), Exit> {
    let item_ref = plan.item_ref(item);
    let lock = {
        let (dir, id, item_id) = (
            runs_dir.to_path_buf(),
            plan.plan_id.clone(),
            item.id.clone(),
        );
        tokio::task::spawn_blocking(move || ItemLock::acquire(&dir, &id, &item_id, wait))
            .await
            .map_err(failed)?
            .map_err(failed)?
    };
    crate::plan::note_attempt(runs_dir, &item_ref, serde_json::json!({"event": "started"}));
    for p in mark_dead_runs(runs_dir) {
        eprintln!("gptx: {p}");
    }
    let label = format!("item {} ({})", item.index, item.id);
    let (all, _) = crate::trace::rundir::list_runs(runs_dir);
    // We hold the item's lock, which every gptx running it holds: a run of it still `running`
    // has lost its gptx, on whatever host that was. One whose trace is locked is being resumed
    // by a `gptx resume` that has not taken the item lock: left alone, and the item is busy.
    for (dir, meta) in &all {
        if meta.status == RunStatus::Running && meta.plan.as_ref() == Some(&item_ref) {
            match crate::trace::rundir::mark_stale(dir) {
                Ok(Some(_)) => eprintln!(
                    "gptx: run {} of item {} marked interrupted: its gptx (on {}) is gone",
                    meta.run_id,
                    item.id,
                    meta.owner
                        .as_ref()
                        .map(|o| o.host.as_str())
                        .unwrap_or("an unknown host")
                ),
                Ok(None) => {}
                Err(e) => eprintln!("gptx: run {}: {e:#}", meta.run_id),
            }
        }
    }
    let (all, _) = crate::trace::rundir::list_runs(runs_dir);
    if let Some((_, m)) = all
        .iter()
        .find(|(_, m)| m.status == RunStatus::Running && m.plan.as_ref() == Some(&item_ref))
    {
        drop(lock);
        return Err(failed(anyhow::anyhow!(
            "{label}: its run {} is being driven by another gptx (its trace is locked); left to it",
            m.run_id
        )));
    }
    let hash = rp.world.as_ref().map(|w| w.manifest.world_hash.clone());
    if let Some(out) = run::already_done(&all, agent, &rp, &hash) {
        eprintln!(
            "gptx run: {label} is done: run {} ({}, Bootstrap Index {:.1}); nothing to do",
            out.run_id, out.score.level, out.score.bootstrap_index
        );
        crate::plan::note_attempt(
            runs_dir,
            &item_ref,
            serde_json::json!({"event": "kept", "run_id": out.run_id}),
        );
        return Ok((out, true));
    }
    let busy = |e: &Exit| {
        matches!(
            e.error.downcast_ref::<session::SessionError>(),
            Some(session::SessionError::Busy(_))
        )
    };
    let r = match run::to_resume(&all, agent, &rp, &hash) {
        Some(dir) => {
            eprintln!("gptx run: {label}: resuming run {}", dir.id());
            let resumed = match run::resume_plan(&dir, runs_dir) {
                Ok(mut p) => {
                    p.world = rp.world.clone();
                    run::execute_resume(p, dir, quiet, cancel.clone()).await
                }
                Err(e) => Err(usage(e)),
            };
            match resumed {
                // Refused (its trace does not hold, its world changed): the item starts anew.
                // Driven by another gptx: never run twice at once.
                Err(e) if e.code == exit::USAGE && !busy(&e) => {
                    eprintln!(
                        "gptx run: {label}: cannot be resumed ({:#}); running it anew",
                        e.error
                    );
                    run::execute(rp, quiet, cancel).await
                }
                r => r,
            }
        }
        None => {
            eprintln!("gptx run: {label}: {agent} seed {}: starting", item.seed);
            run::execute(rp, quiet, cancel).await
        }
    };
    crate::plan::note_attempt(
        runs_dir,
        &item_ref,
        match &r {
            Ok(out) => {
                serde_json::json!({"event": "ended", "run_id": out.run_id, "status": out.meta.status, "level": out.score.level})
            }
            Err(e) => serde_json::json!({"event": "error", "error": format!("{:#}", e.error)}),
        },
    );
    drop(lock);
    r.map(|out| (out, false))
}

/// Where each item of a plan stands, from its runs directory and any `extra` runs directories.
pub(crate) fn item_states(
    path: &std::path::Path,
    extra: &[std::path::PathBuf],
) -> anyhow::Result<(Plan, std::path::PathBuf, Vec<crate::plan::ItemStatus>)> {
    let plan = Plan::load(path)?;
    let runs_dir = plan.runs_dir_from(path);
    let mut all = crate::trace::rundir::list_runs(&runs_dir).0;
    for d in extra {
        if d != &runs_dir {
            all.extend(crate::trace::rundir::list_runs(d).0);
        }
    }
    let states = crate::plan::states(&plan, &all, &runs_dir);
    Ok((plan, runs_dir, states))
}

/// One line of an item table: index, id, state and run, then `tail`.
pub(crate) fn item_row(s: &crate::plan::ItemStatus, tail: &str) -> String {
    format!(
        "{:>5}  {:<34} {:<11} {:<24} {tail}\n",
        s.item.index,
        s.item.id,
        s.state.to_string(),
        crate::report::term::terminal_safe(s.run_id.as_deref().unwrap_or("-"), false),
    )
}

/// `gptx runs --plan FILE`: a line per item, then the tally.
pub(super) fn status(path: &std::path::Path, json: bool) -> Result<i32, Exit> {
    let (plan, runs_dir, states) = item_states(path, &[]).map_err(usage)?;
    let tally = Tally::of(&states);
    if json {
        out_text(&format!(
            "{}\n",
            serde_json::json!({"plan_id": plan.plan_id, "runs_dir": runs_dir, "tally": tally, "items": states})
        ));
        return Ok(exit::OK);
    }
    let mut text = format!(
        "plan {} · {} · runs in {}\n{:>5}  {:<34} {:<11} {:<24} agent / seed\n",
        plan.plan_id,
        tally,
        runs_dir.display(),
        "item",
        "id",
        "state",
        "run"
    );
    for s in &states {
        text.push_str(&item_row(
            s,
            &format!(
                "{} seed {}",
                crate::report::term::terminal_safe(&s.item.agent, false),
                s.item.seed
            ),
        ));
    }
    if !tally.complete() {
        let left: Vec<String> = states
            .iter()
            .filter(|s| s.state != ItemState::Done)
            .map(|s| s.item.index.to_string())
            .collect();
        text.push_str(&format!("not done: items {}\n", left.join(",")));
    }
    out_text(&text);
    Ok(exit::OK)
}
