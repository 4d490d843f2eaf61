//! A plan on the Slurm test's cluster (`tests/slurm/cluster.sh`, as in `slurm.rs`), its items run
//! under rootless Podman as an ordinary user, the job's user, with no Docker daemon involved: the
//! user (`gptxuser`, set up by `tests/rootless/setup.sh`) submits the job array with
//! `GPTX_ENGINE=podman` in its environment, sbatch hands that environment to every task (its
//! default `--export=ALL`), slurmd starts each task as that user, and each task's `gptx run --plan
//! FILE --item K` starts a `podman system service` of its own for as long as it runs.
//!
//! The tasks have no login session: the submitter's environment, and so the jobs', carries no
//! XDG_RUNTIME_DIR, as a job started by a Slurm without pam_systemd has none. Podman then uses
//! /run/user/<uid> when that is the user's directory (setup.sh makes it), else
//! /tmp/podman-run-<uid>; gptx puts its service's socket in $TMPDIR/gptx-<uid> (Slurm sets
//! TMPDIR=/tmp).

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;

/// The ordinary user the jobs run as: tests/rootless/common.sh's (GPTX_ROOTLESS_USER overrides it).
fn user_name() -> String {
    std::env::var("GPTX_ROOTLESS_USER").unwrap_or_else(|_| "gptxuser".into())
}

/// An ordinary user, and the environment of the commands the test runs as that user.
struct User {
    name: String,
    uid: u32,
    home: String,
    /// NAME=value pairs besides the login-like ones (the cluster's SLURM_CONF, gptx's engine).
    env: Vec<(String, String)>,
}

impl User {
    /// The user's passwd entry, if the user exists.
    fn lookup(name: &str) -> Option<Self> {
        let out = Command::new("getent")
            .args(["passwd", name])
            .output()
            .ok()?;
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let f: Vec<&str> = line.trim().split(':').collect();
        (out.status.success() && f.len() >= 7).then(|| Self {
            name: name.to_string(),
            uid: f[2].parse().unwrap(),
            home: f[5].to_string(),
            env: vec![],
        })
    }

    /// `program` run as the user (runuser) with only a login-like environment plus `self.env`:
    /// HOME, USER, LOGNAME, PATH, LANG, and no XDG_RUNTIME_DIR (a Slurm job has no session).
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", &self.name, "--", "env", "-i"]);
        c.arg(format!("HOME={}", self.home));
        c.arg(format!("USER={}", self.name));
        c.arg(format!("LOGNAME={}", self.name));
        c.arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
        c.arg("LANG=C.UTF-8");
        for (k, v) in &self.env {
            c.arg(format!("{k}={v}"));
        }
        c.arg(program);
        c
    }

    fn gptx(&self) -> Command {
        self.cmd(env!("CARGO_BIN_EXE_gptx"))
    }
}

/// Makes sure the user exists with rootless Podman and this checkout's images in its storage:
/// `tests/rootless/setup.sh` (idempotent; about 2 s when everything is in place) creates the user
/// with subordinate ids, /run/user/<uid>, overlay storage, and loads the base and minimal images
/// the root engine built.
fn prepare_user(name: &str) -> User {
    let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rootless/setup.sh");
    assert!(
        setup.exists(),
        "{} is missing: it sets up the ordinary user this test's jobs run as",
        setup.display()
    );
    let out = Command::new("bash")
        .arg(&setup)
        .arg(env!("CARGO_BIN_EXE_gptx"))
        .env("GPTX_ROOTLESS_USER", name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tests/rootless/setup.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    User::lookup(name).unwrap_or_else(|| panic!("setup.sh did not create the user {name}"))
}

// The cluster is the Docker variant's (`tests/slurm/cluster.sh`, stopped when dropped).
use super::slurm::Cluster;

/// `cmd`'s stdout; panics with its stderr when it fails.
fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `podman system service` processes of `uid` started by a gptx of the Slurm job `job`
/// (a task's gptx, recognised by SLURM_ARRAY_JOB_ID in its environment): pid and socket address.
fn job_services(uid: u32, job: &str) -> Vec<(u32, String)> {
    let mut out = vec![];
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    let want = format!("SLURM_ARRAY_JOB_ID={job}");
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if p.metadata().ok().map(|m| m.uid()) != Some(uid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.len() < 4 || !args[0].ends_with("podman") || args[1..3] != ["system", "service"] {
            continue;
        }
        let Some(ppid) = std::fs::read_to_string(p.path().join("stat"))
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1.to_string();
                after.split_whitespace().nth(1)?.parse::<u32>().ok()
            })
        else {
            continue;
        };
        let parent_is_gptx =
            std::fs::read_to_string(format!("/proc/{ppid}/comm")).is_ok_and(|c| c.trim() == "gptx");
        let of_job = std::fs::read(format!("/proc/{ppid}/environ"))
            .is_ok_and(|e| e.split(|b| *b == 0).any(|kv| kv == want.as_bytes()));
        if parent_is_gptx && of_job {
            let socket = args.iter().find(|a| a.starts_with("unix://")).cloned();
            out.push((pid, socket.unwrap_or_default()));
        }
    }
    out
}

/// The plan's items and their states, as the user's `gptx runs --json --plan` reports them.
fn plan_states(user: &User, plan: &Path) -> serde_json::Value {
    common::json_of(user.gptx().args(["runs", "--json", "--plan"]).arg(plan))
}

/// Writes the plan, as the user in `work`: two items, and checks that it has them.
fn write_plan(user: &User, work: &Path, plan: &Path) {
    // Two items side by side, one per node: the null agent, and the reference's crawl, which
    // works in its sandbox and crawls the world through the sandbox network.
    stdout_of(
        user.gptx()
            .current_dir(work)
            .args(["plan", "--suite", "mini", "--seeds", "1"])
            .args(["--stages", "crawl,tokenize"])
            .args(["--agent", "null", "--agent", "reference:crawl"])
            .arg("--out")
            .arg(plan),
    );
    assert_eq!(plan_states(user, plan)["tally"]["items"], 2);
}

/// Submits the plan as the user and returns the job id, checking that Slurm runs it as the user.
fn submit(user: &User, cluster: &Cluster, work: &Path, plan: &Path) -> String {
    let job = stdout_of(
        user.gptx()
            .current_dir(work)
            .args(["slurm", "submit", "--plan"])
            .arg(plan),
    )
    .trim()
    .to_string();
    assert!(job.chars().all(|c| c.is_ascii_digit()), "job id {job:?}");
    // Slurm runs the tasks as the user who submitted them.
    let show = stdout_of(cluster.cmd("scontrol").args(["show", "job", &job]));
    assert!(
        show.contains(&format!("UserId={}({})", user.name, user.uid)),
        "{show}"
    );
    job
}

/// Waits for both items to be done and the tasks to end: the last states and the services seen.
async fn wait_for_items(
    docker: &Docker,
    user: &User,
    cluster: &Cluster,
    job: &str,
    plan: &Path,
    runs: &Path,
    t0: Instant,
) -> (serde_json::Value, Vec<(u32, String)>) {
    // Until both items are done and the tasks have ended: no run of the plan ever has a container,
    // network or volume in the root Docker engine, and each task's gptx runs a Podman service of
    // its own.
    let mut services: Vec<(u32, String)> = vec![];
    let mut last;
    loop {
        last = plan_states(user, plan);
        for it in last["items"].as_array().unwrap() {
            if let Some(run_id) = it["run_id"].as_str() {
                assert_eq!(
                    common::leftovers(docker, run_id).await,
                    0,
                    "run {run_id} has resources in the root Docker engine"
                );
            }
        }
        for s in job_services(user.uid, job) {
            if !services.contains(&s) {
                services.push(s);
            }
        }
        let queued = stdout_of(cluster.cmd("squeue").args([
            "--noheader",
            "--array",
            "--format=%K",
            "--jobs",
            job,
        ]));
        if last["tally"]["done"] == 2 && queued.trim().is_empty() {
            break;
        }
        let log = std::fs::read_to_string(cluster.dir.join("log/jobcomp.txt")).unwrap_or_default();
        assert!(
            t0.elapsed() < Duration::from_secs(900),
            "the items did not end done within 15 minutes:\n{last:#}\nsqueue: {queued}\njobcomp: {log}\n{}",
            super::slurm::logs(runs)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    (last, services)
}

/// Checks Slurm's accounting: both tasks ran as the user and ended well.
fn check_jobcomp(user: &User, cluster: &Cluster) {
    // Both tasks ran as the user and ended well (the cluster is this test's: every line is ours).
    let comp = std::fs::read_to_string(cluster.dir.join("log/jobcomp.txt")).unwrap();
    let lines: Vec<&str> = comp.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 2, "{comp}");
    for l in &lines {
        assert!(
            l.contains(&format!("UserId={}({})", user.name, user.uid)),
            "{l}"
        );
        assert!(l.contains("JobState=COMPLETED"), "{l}");
        assert!(l.contains(" ExitCode=0:0"), "{l}");
    }
}

/// Checks that the tasks' own Podman services ran on the fallback socket and are gone.
fn check_services(user: &User, services: &[(u32, String)]) {
    // The task's gptx started its own service, on a socket in its runtime directory (no
    // XDG_RUNTIME_DIR in a job: $TMPDIR/gptx-<uid>); each is gone, socket and all.
    assert!(
        !services.is_empty(),
        "no task's gptx was seen running a Podman service of its own"
    );
    let fallback = format!("unix:///tmp/gptx-{}/podman-", user.uid);
    for (pid, socket) in services {
        assert!(socket.starts_with(&fallback), "{socket}");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the Podman service {pid} ({socket}) outlived its task"
        );
        let path = socket.trim_start_matches("unix://");
        assert!(!Path::new(path).exists(), "{path} is left");
    }
}

/// Checks each item's run (owner, run.json's isolation, score, verify): run ids and engines.
fn check_runs(user: &User, last: &serde_json::Value, runs: &Path) -> (Vec<String>, Vec<String>) {
    let mut run_ids = vec![];
    let mut engines = vec![];
    for it in last["items"].as_array().unwrap() {
        let agent = it["item"]["agent"].as_str().unwrap();
        let run_id = it["run_id"].as_str().unwrap().to_string();
        let dir = Path::new(it["run_dir"].as_str().unwrap());
        // The run is the user's: gptx ran as the job's user.
        assert_eq!(
            std::fs::metadata(dir).unwrap().uid(),
            user.uid,
            "{}",
            dir.display()
        );
        let run: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
        let iso = &run["isolation"];
        assert!(
            iso["engine"]
                .as_str()
                .is_some_and(|e| e.starts_with("podman")),
            "{agent}: run.json's isolation.engine is not Podman's: {iso}"
        );
        assert_eq!(iso["rootless"], true, "{agent}: {iso}");
        let score: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("score.json")).unwrap())
                .unwrap();
        let want = if agent == "null" { "L0" } else { "L1" };
        assert_eq!(score["level"], want, "{agent}");
        assert_eq!(it["runs"], 1, "{agent}");
        let v = user
            .gptx()
            .args(["verify", &run_id, "--runs-dir"])
            .arg(runs)
            .output()
            .unwrap();
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
        engines.push(format!("{agent}: {}", iso["engine"].as_str().unwrap()));
        run_ids.push(run_id);
    }
    (run_ids, engines)
}

/// The `gptx.run` labels of the containers created in the root Docker engine since `since`.
fn docker_creations(since: u64) -> String {
    // The root Docker engine never saw these runs: no container of theirs was ever created there.
    stdout_of(Command::new("docker").args([
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &unix_now().to_string(),
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--format",
        "{{index .Actor.Attributes \"gptx.run\"}}",
    ]))
}

/// The `gptx.run` labels of the containers created in the user's Podman since `since`.
fn podman_creations(user: &User, since: u64) -> String {
    // The user's Podman did: the sandboxes of every run were created there, and none is left.
    stdout_of(user.cmd("podman").args([
        "events",
        "--stream=false",
        "--since",
        &format!("{}s", unix_now() - since),
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--format",
        "{{index .Attributes \"gptx.run\"}}",
    ]))
}

/// Checks that Docker was never involved in the run: nothing created there, nothing left.
async fn check_docker_never_involved(docker: &Docker, created: &str, run_id: &str) {
    assert!(
        !created.lines().any(|l| l.trim() == run_id),
        "a container of run {run_id} was created in the root Docker engine"
    );
    assert_eq!(common::leftovers(docker, run_id).await, 0, "{run_id}");
}

/// Checks that the run's containers were created in the user's Podman and that none is left.
fn check_podman_leftovers(user: &User, podman_created: &str, run_id: &str) {
    assert!(
        podman_created.lines().any(|l| l.trim() == run_id),
        "no container of run {run_id} in {}'s Podman events:\n{podman_created}",
        user.name
    );
    let label = format!("label=gptx.run={run_id}");
    for what in [
        &["ps", "-aq"][..],
        &["network", "ls", "-q"],
        &["volume", "ls", "-q"],
    ] {
        let left = stdout_of(user.cmd("podman").args(what).args(["--filter", &label]));
        assert!(
            left.trim().is_empty(),
            "podman {}: run {run_id} left {left}",
            what.join(" ")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_on_slurm_runs_as_the_jobs_user_under_rootless_podman() {
    assert!(
        rustix::process::geteuid().is_root(),
        "run as root (CI does): the test starts slurmd and submits the plan as an ordinary user"
    );
    let docker = gptx::docker::engine::connect()
        .await
        .expect("the root Docker engine (the test checks that the runs never touch it)");
    let mut user = prepare_user(&user_name());
    let cluster = Cluster::start(2);
    user.env = vec![
        ("SLURM_CONF".into(), cluster.conf.clone()),
        ("GPTX_HOME".into(), env!("CARGO_MANIFEST_DIR").into()),
        // `gptx slurm submit` does not talk to the engine (it leaves this as it is); sbatch hands
        // it to the tasks, whose `gptx run` starts a rootless Podman service of its own.
        ("GPTX_ENGINE".into(), "podman".into()),
    ];

    // The plan and its runs belong to the user.
    let work = tempfile::Builder::new()
        .prefix("gptx-slurm-podman-work")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(work.path(), Some(user.uid), None).unwrap();
    let plan = work.path().join("plan.json");
    let runs = work.path().join("runs");
    write_plan(&user, work.path(), &plan);

    let t0 = Instant::now();
    let since = unix_now() - 5;
    let job = submit(&user, &cluster, work.path(), &plan);
    let (last, services) = wait_for_items(&docker, &user, &cluster, &job, &plan, &runs, t0).await;
    let wall = t0.elapsed();

    check_jobcomp(&user, &cluster);
    check_services(&user, &services);
    let (run_ids, engines) = check_runs(&user, &last, &runs);

    let created = docker_creations(since);
    let podman_created = podman_creations(&user, since);
    for run_id in &run_ids {
        check_docker_never_involved(&docker, &created, run_id).await;
        check_podman_leftovers(&user, &podman_created, run_id);
    }
    eprintln!(
        "slurm_podman: 2 items done as {} in {:.0} s, by {} Podman services of gptx's own ({}); {}",
        user.name,
        wall.as_secs_f64(),
        services.len(),
        services
            .iter()
            .map(|s| s.1.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        engines.join("; ")
    );
}
