//! The leaderboard on synthetic score files: grouping by suite and world hash, unfinished runs apart,
//! statistics (means, intervals, best-of-k, medians), the markdown (snapshot) and the files written.

use std::collections::BTreeMap;
use std::path::Path;

use gptx::report::leaderboard::{self, Options};
use gptx::trace::rundir::{write_json_atomic, RunMeta, RunScore, RunStatus, StageSummary};

const STAGES: [&str; 5] = ["crawl", "tokenize", "train", "eval", "selfhost"];

struct Fake<'a> {
    id: &'a str,
    agent: &'a str,
    seed: u64,
    world: &'a str,
    status: RunStatus,
    /// Normalised score per stage; a stage passes when its score is at least 0.5.
    scores: [f64; 5],
    bpb: Option<f64>,
    cpu: f64,
}

fn stage(score: f64, bpb: Option<f64>, cpu: f64, name: &str) -> StageSummary {
    let mut metrics = serde_json::Map::new();
    if name == "train" {
        if let Some(b) = bpb {
            metrics.insert("bpb".into(), serde_json::json!(b));
            metrics.insert("verified".into(), serde_json::json!(true));
        }
        metrics.insert(
            "ladder".into(),
            serde_json::json!({"uniform": 8.0, "unigram": 4.8, "gzip": 2.7, "xz": 2.6, "xz_conditional": 1.83}),
        );
    }
    StageSummary {
        status: "scored".into(),
        passed: score >= 0.5,
        ended_by: None,
        steps: 3,
        sandbox_seconds: cpu,
        wall_seconds: cpu + 1.0,
        cpu_seconds: Some(cpu),
        metrics,
        reason: None,
        normalized: Some(score),
        rescued: false,
        tokens: None,
        cost_usd: None,
    }
}

/// The fake run's `run.json`, without a trace yet.
fn run_meta(f: &Fake) -> RunMeta {
    let started: chrono::DateTime<chrono::Utc> = "2026-11-29T10:00:00Z".parse().unwrap();
    RunMeta {
        run_id: f.id.into(),
        agent: f.agent.into(),
        suite: "mini".into(),
        suite_path: "tasks/suites/mini.toml".into(),
        world_hash: Some(f.world.into()),
        seed: f.seed,
        stages: STAGES.iter().map(|s| s.to_string()).collect(),
        budgets: BTreeMap::new(),
        gates: BTreeMap::new(),
        gptx_version: "0.1.0".into(),
        images: BTreeMap::new(),
        started_at: started,
        ended_at: (f.status != RunStatus::Running).then(|| started + chrono::Duration::seconds(60)),
        status: f.status,
        error: (f.status == RunStatus::Failed).then(|| "the engine went away".to_string()),
        trace_sha256: None,
        events: 0,
        owner: None,
        options: None,
        resumes: Vec::new(),
        agent_process: None,
        plan: None,
        gpus: None,
        isolation: None,
    }
}

/// Writes a fake run: `run.json`, `score.json` and the trace the leaderboard checks `score.json`
/// against (it ranks only runs that verify).
fn write(dir: &Path, f: &Fake) {
    let run = dir.join(f.id);
    std::fs::create_dir_all(&run).unwrap();
    let mut meta = run_meta(f);
    write_json_atomic(&run.join("run.json"), &meta).unwrap();
    if f.status == RunStatus::Running {
        return;
    }
    let passed = f.scores.iter().take_while(|s| **s >= 0.5).count();
    let weights = [15.0, 10.0, 40.0, 15.0, 20.0];
    let score = RunScore {
        run_id: f.id.into(),
        suite: "mini".into(),
        agent: f.agent.into(),
        seed: f.seed,
        world_hash: Some(f.world.into()),
        status: f.status,
        level: format!("L{}", passed + usize::from(passed == 5)),
        assisted_level: None,
        bootstrap_index: f.scores.iter().zip(weights).map(|(s, w)| s * w).sum(),
        stages: STAGES
            .iter()
            .zip(f.scores)
            .map(|(s, x)| (s.to_string(), stage(x, f.bpb, f.cpu, s)))
            .collect(),
        integrity: vec![],
        resumed: 0,
        scoring: gptx::stages::scale::SCORING,
    };
    write_json_atomic(&run.join("score.json"), &score).unwrap();
    let mut log = gptx::trace::EventLog::create(&run.join("events.jsonl")).unwrap();
    for (stage, s) in &score.stages {
        log.append(&gptx::trace::Event::StageScored {
            stage: stage.clone(),
            score: gptx::trace::StageScore {
                status: s.status.clone(),
                passed: s.passed,
                metrics: s.metrics.clone(),
                reason: s.reason.clone(),
                normalized: s.normalized,
                public_reason: None,
            },
        })
        .unwrap();
    }
    log.append(&gptx::trace::Event::RunFinished {
        status: f.status,
        level: score.level.clone(),
        bootstrap_index: score.bootstrap_index,
        wall_seconds: 60.0,
        assisted_level: None,
    })
    .unwrap();
    meta.trace_sha256 = Some(log.last_hash().to_string());
    write_json_atomic(&run.join("run.json"), &meta).unwrap();
}

fn fixture() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let full = [1.0, 1.0, 1.0, 1.0, 1.0];
    let crawl_only = [1.0, 0.0, 0.0, 0.0, 0.0];
    let runs = [
        Fake {
            id: "r01",
            agent: "reference",
            seed: 1,
            world: "w1",
            status: RunStatus::Done,
            scores: full,
            bpb: Some(1.42),
            cpu: 100.0,
        },
        Fake {
            id: "r02",
            agent: "reference",
            seed: 2,
            world: "w1",
            status: RunStatus::Done,
            scores: full,
            bpb: Some(1.44),
            cpu: 110.0,
        },
        Fake {
            id: "r03",
            agent: "reference",
            seed: 3,
            world: "w1",
            status: RunStatus::Done,
            scores: [1.0, 1.0, 0.9, 1.0, 0.9],
            bpb: Some(1.50),
            cpu: 120.0,
        },
        Fake {
            id: "r04",
            agent: "crawler",
            seed: 1,
            world: "w1",
            status: RunStatus::Done,
            scores: crawl_only,
            bpb: None,
            cpu: 10.0,
        },
        Fake {
            id: "r05",
            agent: "crawler",
            seed: 2,
            world: "w1",
            status: RunStatus::Done,
            scores: [0.8, 0.0, 0.0, 0.0, 0.0],
            bpb: None,
            cpu: 12.0,
        },
        Fake {
            id: "r06",
            agent: "crawler",
            seed: 3,
            world: "w1",
            status: RunStatus::Done,
            scores: [0.2, 0.0, 0.0, 0.0, 0.0],
            bpb: None,
            cpu: 8.0,
        },
        Fake {
            id: "r07",
            agent: "null",
            seed: 1,
            world: "w1",
            status: RunStatus::Done,
            scores: [0.0; 5],
            bpb: None,
            cpu: 0.0,
        },
        // Unfinished runs are listed apart and never ranked.
        Fake {
            id: "r08",
            agent: "reference",
            seed: 4,
            world: "w1",
            status: RunStatus::Interrupted,
            scores: [0.0; 5],
            bpb: None,
            cpu: 0.0,
        },
        Fake {
            id: "r09",
            agent: "reference",
            seed: 5,
            world: "w1",
            status: RunStatus::Running,
            scores: [0.0; 5],
            bpb: None,
            cpu: 0.0,
        },
        Fake {
            id: "r10",
            agent: "null",
            seed: 2,
            world: "w1",
            status: RunStatus::Failed,
            scores: [0.0; 5],
            bpb: None,
            cpu: 0.0,
        },
        // Another world hash: its own board, never mixed with w1.
        Fake {
            id: "r11",
            agent: "reference",
            seed: 1,
            world: "w2",
            status: RunStatus::Done,
            scores: crawl_only,
            bpb: None,
            cpu: 5.0,
        },
    ];
    for r in &runs {
        write(tmp.path(), r);
    }
    tmp
}

#[test]
fn runs_are_grouped_by_world_hash_and_unfinished_runs_kept_apart() {
    let tmp = fixture();
    let boards = leaderboard::collect(tmp.path(), None, &Options::default()).unwrap();
    assert_eq!(boards.len(), 2);
    let w1 = boards
        .iter()
        .find(|b| b.world_hash.as_deref() == Some("w1"))
        .unwrap();
    let w2 = boards
        .iter()
        .find(|b| b.world_hash.as_deref() == Some("w2"))
        .unwrap();
    assert_eq!(w2.agents.len(), 1);
    assert_eq!(w2.agents[0].runs, 1);
    assert_eq!(w2.agents[0].index_mean, 15.0, "w2's run is apart");

    let names: Vec<&str> = w1.agents.iter().map(|a| a.agent.as_str()).collect();
    assert_eq!(names, ["reference", "crawler", "null"], "ranked by level");
    let r = &w1.agents[0];
    assert_eq!(
        r.runs, 3,
        "the interrupted and running reference runs are not counted"
    );
    assert_eq!(r.levels[6], 3);
    assert_eq!(r.best_of_k, 100.0);
    assert_eq!(r.median_bpb, Some(1.44));
    assert_eq!(r.cpu_seconds, 550.0, "110 CPU-s in each of five stages");
    let (lo, hi) = r.index_ci95.unwrap();
    assert!(
        lo <= r.index_mean && r.index_mean <= hi && hi <= 100.0,
        "{lo} {hi}"
    );
    assert!(lo >= 94.0, "three runs near 100: {lo}");
    let c = &w1.agents[1];
    assert_eq!(c.index_mean, 10.0, "(15 + 12 + 3) / 3");
    assert_eq!(c.stage_pass_rate["crawl"], 2.0 / 3.0);
    assert!((c.stage_scores["crawl"] - 0.6667).abs() < 1e-3);
    let (clo, chi) = c.index_ci95.unwrap();
    assert!(
        clo < 10.0 && 10.0 < chi && clo >= 3.0 && chi <= 15.0,
        "{clo} {chi}"
    );
    let n = &w1.agents[2];
    assert_eq!(n.runs, 1);
    assert_eq!(n.index_ci95, None, "no interval from one run");

    let mut unfinished: Vec<(&str, &str)> = w1
        .unfinished
        .iter()
        .map(|u| (u.run_id.as_str(), u.status.as_str()))
        .collect();
    unfinished.sort();
    assert_eq!(
        unfinished,
        [
            ("r08", "interrupted"),
            ("r09", "running"),
            ("r10", "failed")
        ]
    );
    assert_eq!(w1.baselines.len(), 5);
}

#[test]
fn markdown_snapshot_and_files() {
    let tmp = fixture();
    let opts = Options {
        suite: Some("mini".into()),
        resamples: 2000,
    };
    let boards = leaderboard::collect(tmp.path(), None, &opts).unwrap();
    insta::assert_snapshot!("leaderboard_md", leaderboard::markdown(&boards));

    let out = tmp.path().join("reports");
    let written = leaderboard::write(&boards, &out).unwrap();
    for name in ["leaderboard.md", "leaderboard.json", "leaderboard.html"] {
        assert!(out.join(name).is_file(), "{name}");
    }
    let svgs: Vec<_> = written
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "svg"))
        .collect();
    assert_eq!(svgs.len(), 6, "three charts per board");
    for p in svgs {
        let text = std::fs::read_to_string(p).unwrap();
        assert!(text.starts_with("<svg") && text.contains("</svg>"), "{p:?}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("leaderboard.json")).unwrap()).unwrap();
    assert_eq!(json["boards"].as_array().unwrap().len(), 2);
    assert_eq!(json["boards"][0]["agents"][0]["agent"], "reference");
    let html = std::fs::read_to_string(out.join("leaderboard.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("reference") && html.contains("not ranked"));
}

#[test]
fn an_unknown_suite_names_the_suites_that_have_runs() {
    let tmp = fixture();
    let err = leaderboard::collect(
        tmp.path(),
        None,
        &Options {
            suite: Some("standard".into()),
            resamples: 10,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--suite standard") && err.contains("mini"),
        "{err}"
    );
    let err = leaderboard::collect(&tmp.path().join("nope"), None, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--runs-dir"), "{err}");
}

/// A run stopped by a fault and resumed is ranked like any other, and marked: `resumed` in the JSON,
/// after its agent's levels and after the run in the tables (markdown and HTML).
#[test]
fn a_resumed_run_is_ranked_and_marked() {
    let tmp = tempfile::tempdir().unwrap();
    for (id, seed) in [("r1", 1), ("r2", 2)] {
        write(
            tmp.path(),
            &Fake {
                id,
                agent: "reference",
                seed,
                world: "aaaa",
                status: RunStatus::Done,
                scores: [1.0; 5],
                bpb: Some(1.4),
                cpu: 10.0,
            },
        );
    }
    let mark = |name: &str| {
        let path = tmp.path().join(name);
        let mut meta: RunMeta = gptx::trace::rundir::read_json(&path.join("run.json")).unwrap();
        meta.resumes.push(gptx::trace::rundir::ResumeRecord {
            at: meta.started_at + chrono::Duration::seconds(30),
            after_step: 4,
            reason: "owner process gone".into(),
        });
        // Stopped for an hour: the leaderboard counts the stages' own time, not the hour.
        meta.ended_at = Some(meta.started_at + chrono::Duration::hours(1));
        write_json_atomic(&path.join("run.json"), &meta).unwrap();
        let mut score: RunScore = gptx::trace::rundir::read_json(&path.join("score.json")).unwrap();
        score.resumed = 1;
        write_json_atomic(&path.join("score.json"), &score).unwrap();
    };
    mark("r2");
    let opts = Options {
        suite: None,
        resamples: 100,
    };
    let boards = leaderboard::collect(tmp.path(), None, &opts).unwrap();
    let b = &boards[0];
    assert_eq!(b.entries.len(), 2, "the resumed run is ranked");
    let r2 = b.entries.iter().find(|e| e.run_id == "r2").unwrap();
    assert_eq!(r2.resumed, 1);
    assert!(r2.wall_seconds < 100.0, "{}", r2.wall_seconds);
    assert_eq!(b.agents[0].resumed, 1);
    let md = leaderboard::markdown(&boards);
    assert!(md.contains("(1 resumed)"), "{md}");
    assert!(md.contains("`r2` · resumed 1×"), "{md}");
    assert!(!md.contains("`r1` · resumed"), "{md}");
    let html = leaderboard::html_body(&boards, false);
    assert!(html.contains("resumed 1×"), "{html}");
    let json = serde_json::to_value(b).unwrap();
    assert!(json.to_string().contains("\"resumed\":1"));
}

/// A board whose runs ran under different isolation says so: its levels (engine and the guarantees
/// not in force) each with their runs, and each run that lacked a guarantee marked, in the
/// markdown, the HTML and the JSON; a board of one full level says nothing.
#[test]
fn runs_of_different_isolation_are_never_mixed_unknowingly() {
    use gptx::trace::rundir::{Guarantee, Isolation};
    let tmp = tempfile::tempdir().unwrap();
    let fake = |id| Fake {
        id,
        agent: "reference",
        seed: if id == "r1" { 1 } else { 2 },
        world: "aaaa",
        status: RunStatus::Done,
        scores: [1.0; 5],
        bpb: Some(1.4),
        cpu: 10.0,
    };
    let isolation = |engine: &str, disk: bool| Isolation {
        engine: engine.into(),
        rootless: !disk,
        guarantees: vec![Guarantee {
            name: "disk_limit".into(),
            held: disk,
            detail: "d".into(),
        }],
    };
    let set = |id: &str, i: Isolation| {
        let path = tmp.path().join(id).join("run.json");
        let mut meta: RunMeta = gptx::trace::rundir::read_json(&path).unwrap();
        meta.isolation = Some(i);
        write_json_atomic(&path, &meta).unwrap();
    };
    let opts = Options {
        suite: None,
        resamples: 100,
    };
    write(tmp.path(), &fake("r1"));
    set("r1", isolation("docker 20.10.24, root", true));
    let md = leaderboard::markdown(&leaderboard::collect(tmp.path(), None, &opts).unwrap());
    assert!(
        !md.contains("Isolation") && !md.contains("reduced isolation"),
        "{md}"
    );
    write(tmp.path(), &fake("r2"));
    set("r2", isolation("podman 4.3.1, rootless", false));
    let boards = leaderboard::collect(tmp.path(), None, &opts).unwrap();
    let md = leaderboard::markdown(&boards);
    assert!(md.contains("### Isolation"), "{md}");
    assert!(
        md.contains("- docker 20.10.24, root · every guarantee in force: `r1`"),
        "{md}"
    );
    assert!(
        md.contains("- podman 4.3.1, rootless · not in force: disk_limit: `r2`"),
        "{md}"
    );
    assert!(
        md.contains("`r2` · reduced isolation") && !md.contains("`r1` · reduced"),
        "{md}"
    );
    let html = leaderboard::html_body(&boards, false);
    assert!(html.contains("not in force: disk_limit"), "{html}");
    let json = serde_json::to_value(&boards[0]).unwrap().to_string();
    assert!(json.contains("\"isolation\":[\"docker 20.10.24, root · every guarantee in force\",\"podman 4.3.1, rootless · not in force: disk_limit\"]"), "{json}");
}

/// GPU-seconds are the GPUs of the agent's sandbox × the run's wall time (60 s here): the count
/// asked for, or for "all" how many nvidia-smi listed; "?" when "all" was never counted, "–"
/// without GPUs, in the markdown, the HTML and the JSON.
#[test]
fn gpu_seconds_are_the_gpus_times_the_wall_time() {
    use gptx::config::suite::Gpus;
    use gptx::trace::rundir::{GpuDevice, GpuRecord};
    let tmp = tempfile::tempdir().unwrap();
    let runs = [
        ("g1", "gpu", 1),
        ("g2", "gpu", 2),
        ("c1", "cpu", 1),
        ("b1", "blind", 1),
    ];
    for (id, agent, seed) in runs {
        let scores = [1.0; 5];
        let f = Fake {
            id,
            agent,
            seed,
            world: "aaaa",
            status: RunStatus::Done,
            scores,
            bpb: Some(1.4),
            cpu: 10.0,
        };
        write(tmp.path(), &f);
    }
    let t4 = |index| GpuDevice {
        index,
        name: "Tesla T4".into(),
        memory_mib: Some(15360),
    };
    let give = |id: &str, record: GpuRecord| {
        let path = tmp.path().join(id).join("run.json");
        let mut meta: RunMeta = gptx::trace::rundir::read_json(&path).unwrap();
        meta.gpus = Some(record);
        write_json_atomic(&path, &meta).unwrap();
    };
    give("g1", GpuRecord::asked(Gpus::Count(2)));
    let mut listed = GpuRecord::asked(Gpus::All);
    listed.devices = Some((0..4).map(t4).collect());
    give("g2", listed);
    give("b1", GpuRecord::asked(Gpus::All));
    let opts = Options {
        suite: None,
        resamples: 100,
    };
    let boards = leaderboard::collect(tmp.path(), None, &opts).unwrap();
    let b = &boards[0];
    let run = |id: &str| b.entries.iter().find(|e| e.run_id == id).unwrap();
    assert_eq!(run("g1").gpu_seconds, leaderboard::GpuSeconds::Known(120.0));
    assert_eq!(run("g2").gpu_seconds, leaderboard::GpuSeconds::Known(240.0));
    assert_eq!(run("c1").gpu_seconds, leaderboard::GpuSeconds::None);
    assert_eq!(run("b1").gpu_seconds, leaderboard::GpuSeconds::Unknown);
    let agent = |name: &str| b.agents.iter().find(|a| a.agent == name).unwrap();
    assert_eq!(
        agent("gpu").gpu_seconds,
        leaderboard::GpuSeconds::Known(180.0)
    );
    let md = leaderboard::markdown(&boards);
    assert!(
        md.contains("| CPU-s/run | GPU-s/run | wall s/run |"),
        "{md}"
    );
    let row = |name: &str| {
        let tick = format!("`{name}`");
        let line = md
            .lines()
            .find(|l| l.starts_with("| ") && l.contains(&tick));
        line.unwrap().to_string()
    };
    assert!(
        row("gpu").ends_with("| 50.0 | 180.0 | 60.0 | – | – |"),
        "{md}"
    );
    assert!(row("cpu").ends_with("| 50.0 | – | 60.0 | – | – |"), "{md}");
    assert!(
        row("blind").ends_with("| 50.0 | ? | 60.0 | – | – |"),
        "{md}"
    );
    let html = leaderboard::html_body(&boards, false);
    assert!(html.contains("<th>GPU-s/run</th>"), "{html}");
    assert!(
        html.contains("<td>50.0</td><td>180.0</td><td>60.0</td>"),
        "{html}"
    );
    let json = serde_json::to_value(b).unwrap();
    let agents = json["agents"].as_array().unwrap();
    let of = |name: &str| agents.iter().find(|a| a["agent"] == name).unwrap();
    assert_eq!(of("gpu")["gpu_seconds"], 180.0);
    assert_eq!(
        of("blind").get("gpu_seconds"),
        Some(&serde_json::Value::Null)
    );
    assert!(of("cpu").get("gpu_seconds").is_none(), "{json}");
}

/// A run in which text of the hidden test documents was found is ranked with its rejected stages at
/// 0 and marked in every form of the board.
#[test]
fn a_contaminated_run_is_ranked_and_marked() {
    let tmp = tempfile::tempdir().unwrap();
    for (id, seed) in [("c1", 1), ("c2", 2)] {
        write(
            tmp.path(),
            &Fake {
                id,
                agent: "memoriser",
                seed,
                world: "aaaa",
                status: RunStatus::Done,
                scores: [1.0; 5],
                bpb: Some(1.4),
                cpu: 10.0,
            },
        );
    }
    let path = tmp.path().join("c2");
    let mut score: RunScore = gptx::trace::rundir::read_json(&path.join("score.json")).unwrap();
    score.integrity.push(gptx::trace::IntegrityNote {
        stage: Some("crawl".into()),
        kind: gptx::stages::contamination::KIND.into(),
        count: 40,
        detail: "data/corpus.jsonl in the graded copy".into(),
    });
    write_json_atomic(&path.join("score.json"), &score).unwrap();
    let opts = Options {
        suite: None,
        resamples: 100,
    };
    let boards = leaderboard::collect(tmp.path(), None, &opts).unwrap();
    let b = &boards[0];
    assert_eq!(b.entries.len(), 2, "the contaminated run is ranked");
    let c2 = b.entries.iter().find(|e| e.run_id == "c2").unwrap();
    assert!(c2.contaminated);
    assert!(
        !b.entries
            .iter()
            .find(|e| e.run_id == "c1")
            .unwrap()
            .contaminated
    );
    assert_eq!(b.agents[0].contaminated, ["c2"]);
    let md = leaderboard::markdown(&boards);
    assert!(md.contains("(1 ⚠ contaminated)"), "{md}");
    assert!(md.contains("`c2` · ⚠ contaminated"), "{md}");
    assert!(!md.contains("`c1` · ⚠"), "{md}");
    assert!(md.contains("t_text_in_workspace ×40"), "{md}");
    let html = leaderboard::html_body(&boards, false);
    assert!(html.contains("<code>c2</code> · ⚠ contaminated"), "{html}");
    let json = serde_json::to_value(b).unwrap();
    assert_eq!(json["agents"][0]["contaminated"], serde_json::json!(["c2"]));
    assert_eq!(serde_json::to_value(c2).unwrap()["contaminated"], true);
    let written = tempfile::tempdir().unwrap();
    leaderboard::write(&boards, written.path()).unwrap();
    let file = std::fs::read_to_string(written.path().join("leaderboard.json")).unwrap();
    assert!(file.contains("\"contaminated\": [\n"), "{file}");
}

/// Scores are open above the reference: a run that beats it on train has an index above 100 and
/// ranks above one that ties; the board's record is its bpb, and the tie is that far from it.
#[test]
fn beating_the_reference_ranks_above_a_tie_and_holds_the_record() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |id, agent, train: f64, bpb: f64| Fake {
        id,
        agent,
        seed: 1,
        world: "bbbb",
        status: RunStatus::Done,
        scores: [1.0, 1.0, train, 1.0, 1.0],
        bpb: Some(bpb),
        cpu: 10.0,
    };
    write(tmp.path(), &run("t1", "tie", 1.0, 1.42));
    write(tmp.path(), &run("b1", "better", 1.05, 1.29));
    let opts = Options {
        suite: None,
        resamples: 100,
    };
    let boards = leaderboard::collect(tmp.path(), None, &opts).unwrap();
    let b = &boards[0];
    assert_eq!(b.agents[0].agent, "better");
    assert!(b.agents[0].index_mean > 100.0, "{}", b.agents[0].index_mean);
    assert!((b.agents[1].index_mean - 100.0).abs() < 1e-9);
    let record = b.record.as_ref().unwrap();
    assert_eq!((record.run_id.as_str(), record.bpb), ("b1", 1.29));
    assert_eq!(b.agents[0].to_record, Some(0.0));
    assert!((b.agents[1].to_record.unwrap() - 0.13).abs() < 1e-9);
    let md = leaderboard::markdown(&boards);
    assert!(md.contains("above 100 beats the reference"), "{md}");
    assert!(
        md.contains("Record on this world: 1.290 verified bpb, held by run `b1`"),
        "{md}"
    );
    assert!(md.contains("| +0.130 |"), "{md}");
}

/// The ranking agrees with the ladder: a run that failed the eval gate (L3) with an index above
/// 100, from a great crawl and a better model, ranks below the reference's L6 at 100; within a
/// level the index decides, and the header says both and the formula.
#[test]
fn no_run_outranks_a_run_that_reached_a_higher_level() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |id, agent, scores: [f64; 5]| Fake {
        id,
        agent,
        seed: 1,
        world: "cccc",
        status: RunStatus::Done,
        scores,
        bpb: Some(1.3),
        cpu: 10.0,
    };
    write(tmp.path(), &run("r1", "reference", [1.0; 5]));
    write(
        tmp.path(),
        &run("a1", "crawler", [1.6, 0.9, 1.06, 0.45, 1.06]),
    );
    write(tmp.path(), &run("w1", "weaker", [1.0, 0.9, 0.8, 0.45, 0.8]));
    let opts = Options {
        suite: None,
        resamples: 100,
    };
    let boards = leaderboard::collect(tmp.path(), None, &opts).unwrap();
    let order: Vec<(&str, usize, f64)> = boards[0]
        .agents
        .iter()
        .map(|a| (a.agent.as_str(), a.rank, a.index_mean))
        .collect();
    assert_eq!(order[0].0, "reference", "{order:?}");
    assert!(order[1].2 > 100.0, "{order:?}");
    assert_eq!(
        order.iter().map(|o| o.0).collect::<Vec<_>>(),
        ["reference", "crawler", "weaker"]
    );
    assert_eq!(boards[0].agents[1].best_level, "L3");
    // An agent of one L6 and one L1 run (mean 3.5) ranks below the L6 reference and above the L3
    // crawler, and its best-of-k is its L6 run.
    write(tmp.path(), &run("m1", "mixed", [1.0; 5]));
    write(tmp.path(), &run("m2", "mixed", [1.0, 0.2, 0.2, 0.2, 0.2]));
    let boards = leaderboard::collect(tmp.path(), None, &opts).unwrap();
    let names: Vec<&str> = boards[0].agents.iter().map(|a| a.agent.as_str()).collect();
    assert_eq!(names, ["reference", "mixed", "crawler", "weaker"]);
    assert_eq!(boards[0].agents[1].best_level, "L6");
    let md = leaderboard::markdown(&boards);
    assert!(
        md.contains("ranked by mean level, then by the Bootstrap Index"),
        "{md}"
    );
    assert!(md.contains(&gptx::stages::scale::formula()), "{md}");
}

/// A run scored by an earlier formula (its `score.json` without `scoring`, as before versions
/// were recorded) is listed apart, never ranked beside runs of the current formula.
#[test]
fn a_run_scored_by_an_earlier_formula_is_listed_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |id, agent| Fake {
        id,
        agent,
        seed: 1,
        world: "dddd",
        status: RunStatus::Done,
        scores: [1.0; 5],
        bpb: Some(1.4),
        cpu: 10.0,
    };
    write(tmp.path(), &run("new1", "reference"));
    write(tmp.path(), &run("old1", "veteran"));
    let path = tmp.path().join("old1").join("score.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("scoring");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let opts = Options {
        suite: None,
        resamples: 100,
    };
    let boards = leaderboard::collect(tmp.path(), None, &opts).unwrap();
    let names: Vec<&str> = boards[0].agents.iter().map(|a| a.agent.as_str()).collect();
    assert_eq!(names, ["reference"]);
    let apart = &boards[0].unfinished;
    assert_eq!(apart.len(), 1);
    assert_eq!(apart[0].run_id, "old1");
    assert!(
        apart[0]
            .status
            .contains("scored by an earlier formula (scoring 0"),
        "{}",
        apart[0].status
    );
    let md = leaderboard::markdown(&boards);
    assert!(md
        .contains("### Runs not ranked (unfinished, unverified, or scored by an earlier formula)"));
}

/// A fake run that carries out `item` of `plan`.
fn write_item(dir: &Path, f: &Fake, plan: &gptx::plan::Plan, item: usize) {
    write(dir, f);
    let path = dir.join(f.id).join("run.json");
    let mut meta: RunMeta = gptx::trace::rundir::read_json(&path).unwrap();
    meta.plan = Some(plan.item_ref(&plan.items[item]));
    write_json_atomic(&path, &meta).unwrap();
}

#[test]
fn a_plan_not_done_marks_its_board_incomplete_and_runs_dirs_merge_counting_a_run_once() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let home = gptx::config::suite::Home::locate().unwrap();
    let suite = home.suite("mini").unwrap();
    let plan = gptx::plan::Plan::new(
        &suite,
        "mini",
        "0".repeat(64),
        vec![],
        Some(gptx::plan::WorldPin {
            name: "mini".into(),
            seed: 1,
            hash: "w1".into(),
        }),
        BTreeMap::new(),
        Default::default(),
        gptx::trace::rundir::RunOptions {
            rescue: true,
            temperature: None,
            max_output_tokens: 4096,
            context_tokens: 100_000,
            agent_env: vec![],
        },
        a.path().to_path_buf(),
        &["reference".to_string()],
        &[1, 2],
    )
    .unwrap();
    let plan_file = a.path().join("plan.json");
    plan.write(&plan_file).unwrap();
    let good = [1.0, 1.0, 1.0, 1.0, 1.0];
    let fake = |id: &'static str, agent: &'static str, seed: u64| Fake {
        id,
        agent,
        seed,
        world: "w1",
        status: RunStatus::Done,
        scores: good,
        bpb: Some(1.4),
        cpu: 1.0,
    };
    // Item 0 is done in a, twice (a run done again counts once); a run outside the plan is in b.
    write_item(a.path(), &fake("p0", "reference", 1), &plan, 0);
    write_item(a.path(), &fake("p0-again", "reference", 1), &plan, 0);
    write(b.path(), &fake("x1", "null", 1));
    let dirs = [a.path().to_path_buf(), b.path().to_path_buf()];
    let boards = leaderboard::collect_many(
        &dirs,
        std::slice::from_ref(&plan_file),
        None,
        &Options::default(),
    )
    .unwrap();
    assert_eq!(boards.len(), 1, "{}", leaderboard::markdown(&boards));
    let board = &boards[0];
    assert!(board.provisional);
    assert_eq!(board.plans.len(), 1);
    assert_eq!(board.plans[0].tally.done, 1);
    assert_eq!(board.plans[0].tally.missing, 1);
    assert!(board.agents.iter().all(|r| r.rank == 0), "nothing ranked");
    let reference = board
        .agents
        .iter()
        .find(|r| r.agent == "reference")
        .unwrap();
    assert_eq!(reference.runs, 1, "item 0's second run counts once");
    assert!(board.agents.iter().any(|r| r.agent == "null"), "b is read");
    let md = leaderboard::markdown(&boards);
    assert!(md.contains("INCOMPLETE"), "{md}");
    assert!(
        md.contains("1/2 done") && md.contains("1 reference seed 2 missing"),
        "{md}"
    );
    assert!(md.contains("| – | `reference` |"), "{md}");
    let html = leaderboard::html_body(&boards, false);
    assert!(html.contains("INCOMPLETE") && html.contains("1/2 done"));
    // Item 1 done in b, and item 0's run copied into b as well: complete, ranked, counted once.
    write_item(b.path(), &fake("p1", "reference", 2), &plan, 1);
    copy_dir(&a.path().join("p0"), &b.path().join("p0"));
    let boards = leaderboard::collect_many(&dirs, &[plan_file], None, &Options::default()).unwrap();
    let board = &boards[0];
    assert!(!board.provisional);
    assert!(board.plans[0].tally.complete());
    let reference = board
        .agents
        .iter()
        .find(|r| r.agent == "reference")
        .unwrap();
    assert_eq!(reference.runs, 2);
    let mut ranks: Vec<usize> = board.agents.iter().map(|r| r.rank).collect();
    ranks.sort_unstable();
    assert_eq!(ranks, vec![1, 2], "ranked once complete");
    let md = leaderboard::markdown(&boards);
    assert!(
        !md.contains("INCOMPLETE") && md.contains("2/2 done"),
        "{md}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
