//! Kubernetes: a plan as an Indexed Job manifest whose pod `i` runs `gptx run --plan … --item i` beside a container engine.
//!
//! [`manifest`] writes, as one multi-document YAML for `kubectl apply -f`:
//!
//! 1. a ReadWriteMany PersistentVolumeClaim for the runs (unless an existing claim is used);
//! 2. a ConfigMap `gptx-plan-<plan id>` holding the plan file's bytes, so every pod reads the
//!    very plan that was made;
//! 3. a `batch/v1` Job `gptx-<plan id>` with one completion per item (`completionMode: Indexed`),
//!    whose pod `i` runs `gptx run --plan … --item i --quiet`: item `i` is done, resumed or
//!    started, under its item lock, exactly as by hand or under Slurm.
//!
//! # Where the plan and the runs go
//!
//! A plan's `runs_dir` is relative to the plan file's folder (or absolute). The ConfigMap is
//! mounted read-only at `/plan`, so a plan read from there would put its runs in `/plan`. Instead
//! an init container copies the plan onto the claim, mounted at [`RUNS_MOUNT`], as
//! `/runs/plan-<plan id>.json` (through a temporary file and a rename: many pods copy the same
//! bytes at once; the id in the name keeps two plans on one claim apart), and gptx runs that
//! copy. A relative `runs_dir` (`runs`) so lands at `/runs/runs` on the claim, beside the plan, as
//! it does on a laptop. A `runs_dir` that climbs out of the claim (`../x`), or an absolute one
//! not under `/runs`, is refused: its runs would be lost with the pod. Every pod of every item
//! shares the claim, so the claim's filesystem must keep `flock`s across nodes (NFS v4, CephFS)
//! for the item locks to hold; and since a replacement pod starts only once the failed one is
//! gone (`podReplacementPolicy: Failed`), two pods of one index are never alive at once anyway.
//!
//! # The container engine
//!
//! gptx drives a Docker Engine API (`DOCKER_HOST`). Each pod runs its own engine, [`ENGINE_IMAGE`],
//! as a native sidecar (an init container with `restartPolicy: Always`, Kubernetes ≥ 1.29; the
//! Job's `backoffLimitPerIndex` and `podReplacementPolicy` need 1.29 too): it is up (its startup
//! probe answers) before gptx starts, and it is stopped only after gptx has exited, so gptx's
//! cleanup on SIGTERM still reaches it. It listens on a unix socket alone, in an `emptyDir` the
//! two containers share; it keeps its images and containers in an `emptyDir` of its own. The
//! engine resolves the paths of the bind volumes gptx makes (a run's workspace and logs on the
//! claim, the world's pages in the cache) in its own filesystem, so it mounts the claim and
//! gptx's cache at the same paths as gptx. Images and the world are built per pod into that
//! node-local cache: the world is built again from the plan's seed to the same hash, which
//! `gptx run --plan` checks.
//!
//! The trade-off. The engine must run `privileged`, which is root on the node: a breakout from a
//! sandbox into the engine is a breakout onto the node, so the namespace must admit privileged
//! pods (Pod Security level `privileged`) and the nodes should be dedicated to gptx. Mounting the
//! node's own socket (`/var/run/docker.sock`) instead needs no privileged container, but gives
//! every pod the node's engine (root on the node all the same, and pods of other tenants and
//! their containers in reach), a Docker engine on every node, and makes cleanup and
//! resource accounting the node's: not done here. A runtime that runs system containers
//! unprivileged (sysbox, `runtimeClassName: sysbox-runc`) would run the same sidecar without
//! `privileged` and is the better choice where the cluster has it.
//!
//! gptx itself runs as root but not privileged. Root, to build images with debootstrap, which
//! chroots and makes device nodes (`SYS_CHROOT` and `MKNOD` are added: not every runtime grants
//! them by default; its `mount -t proc` and `-t sysfs` in the target fail unprivileged, and the
//! debootstrap of Debian 12 goes on past them, `|| true`: not tried on a cluster), and to own each
//! run's directory. Not privileged, so no loop device and no `mount`, which the workspace's disk
//! limit needs (`crate::sandbox::quota`: each workspace an ext4 image of the suite's `disk_mb`,
//! loop-mounted). What gptx does then: a run's workspace (`crate::docker::session`) formats the
//! sparse `workspace.img`, fails to mount it (the image is left in the run directory), and goes
//! on with the workspace as an ordinary directory on the claim, *without* a disk limit; its trace
//! says so ("the workspace has no disk limit (… MiB asked): mounting …"), and an agent can fill
//! the shared claim. The selfhost stage's rebuild (`crate::docker::rebuild`) falls back the same
//! way, with a warning in gptx's log. Making gptx privileged would not help on its own: a loop
//! mount made in gptx's container is not seen by the engine's without bidirectional mount
//! propagation, which leaves stale mounts on the node when a pod dies.
//!
//! The image `--image` must hold gptx on its `PATH`, this checkout's `tasks/` and `sandboxes/`
//! (found from its working directory or `GPTX_HOME`), debootstrap, `mkfs.ext4`, `cp` and `sh`:
//! `gptx run --plan` refuses an item when the image's gptx version, suite file or image recipes
//! are not the plan's.

use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value};

use super::Plan;

/// The container engine every pod runs beside gptx.
pub const ENGINE_IMAGE: &str = "docker:27-dind";
/// Where the runs claim is mounted (in gptx's container, the engine's and the plan copier's).
pub const RUNS_MOUNT: &str = "/runs";
/// Where the plan's ConfigMap is mounted (read-only, in the plan copier alone).
pub const PLAN_MOUNT: &str = "/plan";
/// Where gptx's cache (`GPTX_CACHE_DIR`: rootfs trees, worlds) is, in gptx's container and the engine's.
pub const CACHE_MOUNT: &str = "/cache";
/// The folder of the engine's socket, shared by the engine and gptx. Not `/var/run`: an
/// `emptyDir` there would hide the image's `/run` in gptx's container and share all of dockerd's
/// runtime state (its containerd's sockets, pid files); this folder holds the socket alone.
pub const ENGINE_SOCKET_DIR: &str = "/run/gptx-engine";
/// The key of the plan file in the ConfigMap.
pub const PLAN_KEY: &str = "plan.json";
/// Seconds a pod has after SIGTERM: gptx removes its containers and marks the run interrupted.
pub const GRACE_SECONDS: u32 = 60;
/// The most indexes Kubernetes takes in a Job with `backoffLimitPerIndex`.
pub const MAX_INDEXES: usize = 100_000;
/// The most bytes of plan a ConfigMap holds (1 MiB in all, less room for its metadata).
pub const MAX_PLAN_BYTES: usize = 1_000_000;

/// Why a manifest cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("{flag} {value:?}: {message}")]
    Flag {
        flag: &'static str,
        value: String,
        message: String,
    },
    #[error("the plan's runs_dir {runs_dir:?}: {message}")]
    RunsDir { runs_dir: String, message: String },
    #[error("the plan: {0}")]
    Plan(String),
    #[error("writing the manifest as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// What `gptx k8s manifest` takes besides the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The image with gptx and the checkout's task files.
    pub image: String,
    /// Pods at once.
    pub parallelism: u32,
    /// Retries of one item before its index is marked failed.
    pub backoff_limit_per_index: u32,
    /// The runs claim's name.
    pub claim: String,
    /// The claim exists: do not write it.
    pub existing_claim: bool,
    /// The size of the claim written.
    pub claim_size: String,
    pub namespace: String,
}

/// Whether `s` is a DNS-1123 label: at most 63 of `a-z`, `0-9` and `-`, starting and ending
/// with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| alnum(c) || c == '-')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// Whether `s` is a Kubernetes quantity of bytes as a claim takes it: a number, optionally with
/// a decimal part, and an optional suffix (`50Gi`, `500M`, `1.5Ti`).
fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 13] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", "",
    ];
    SUFFIXES.iter().any(|suffix| {
        s.strip_suffix(suffix).is_some_and(|n| {
            let (int, frac) = n.split_once('.').unwrap_or((n, "0"));
            !int.is_empty()
                && !frac.is_empty()
                && int.chars().all(|c| c.is_ascii_digit())
                && frac.chars().all(|c| c.is_ascii_digit())
                && n.chars().any(|c| c != '0' && c != '.')
        })
    })
}

fn flag(flag: &'static str, value: &str, message: impl Into<String>) -> K8sError {
    K8sError::Flag {
        flag,
        value: value.to_string(),
        message: message.into(),
    }
}

fn check_options(o: &Options) -> Result<(), K8sError> {
    const LABEL: &str = "not a DNS-1123 label (at most 63 of a-z, 0-9 and '-', starting and ending with a letter or digit)";
    if o.parallelism < 1 {
        return Err(flag(
            "--parallelism",
            &o.parallelism.to_string(),
            "at least 1 pod must run",
        ));
    }
    if o.parallelism as usize > MAX_INDEXES {
        return Err(flag(
            "--parallelism",
            &o.parallelism.to_string(),
            format!("Kubernetes runs at most {MAX_INDEXES} pods of a Job with backoffLimitPerIndex at once"),
        ));
    }
    if !is_dns_label(&o.namespace) {
        return Err(flag("--namespace", &o.namespace, LABEL));
    }
    if !is_dns_label(&o.claim) {
        return Err(flag("--claim", &o.claim, LABEL));
    }
    if o.image.is_empty() || o.image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(flag(
            "--image",
            &o.image,
            "an image reference is not empty and has no spaces",
        ));
    }
    if !o.existing_claim && !is_quantity(&o.claim_size) {
        return Err(flag(
            "--claim-size",
            &o.claim_size,
            "not a size Kubernetes takes (e.g. 50Gi, 500Mi, 1Ti)",
        ));
    }
    Ok(())
}

/// Where the plan file is in the pods: on the claim, named by its id.
pub fn pod_plan_path(plan: &Plan) -> PathBuf {
    Path::new(RUNS_MOUNT).join(format!("plan-{}.json", plan.plan_id))
}

/// Where the plan's runs go in the pods: its `runs_dir` resolved from [`pod_plan_path`] as
/// gptx resolves it ([`Plan::runs_dir_from`]), which must be on the claim.
pub fn pod_runs_dir(plan: &Plan) -> Result<PathBuf, K8sError> {
    let bad = |message: String| K8sError::RunsDir {
        runs_dir: plan.runs_dir.display().to_string(),
        message,
    };
    if plan
        .runs_dir
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(bad(format!(
            "it climbs with '..': in the pods the plan is at {} and its runs must stay on the claim at {RUNS_MOUNT}; make the plan with a --runs-dir below its folder",
            pod_plan_path(plan).display()
        )));
    }
    let dir: PathBuf = plan
        .runs_dir_from(&pod_plan_path(plan))
        .components()
        .collect();
    if !dir.starts_with(RUNS_MOUNT) {
        return Err(bad(format!(
            "an absolute runs directory outside {RUNS_MOUNT}, where the pods mount the claim, would be lost with each pod; make the plan with a relative --runs-dir (e.g. runs)"
        )));
    }
    Ok(dir)
}

/// The plan's checks: its id names things, its items fit one Job, its text is the plan.
fn check_plan(plan: &Plan, plan_text: &str) -> Result<(), K8sError> {
    let bad = |m: String| K8sError::Plan(m);
    // `p` and hex digits, as `Plan::load` checks; a label value and part of a DNS label.
    let id = &plan.plan_id;
    if !is_dns_label(id) || id.len() > 40 {
        return Err(bad(format!(
            "plan id {id:?} cannot name a Kubernetes object (a-z, 0-9 and '-', at most 40)"
        )));
    }
    if plan.items.is_empty() {
        return Err(bad("it has no items".into()));
    }
    if plan.items.len() > MAX_INDEXES {
        return Err(bad(format!(
            "{} items: a Kubernetes Job with backoffLimitPerIndex takes at most {MAX_INDEXES} completions; split the batch into several plans",
            plan.items.len()
        )));
    }
    if plan_text.len() > MAX_PLAN_BYTES {
        return Err(bad(format!(
            "the plan file is {} bytes: a ConfigMap holds at most {MAX_PLAN_BYTES}; split the batch into several plans",
            plan_text.len()
        )));
    }
    match serde_json::from_str::<Plan>(plan_text) {
        Ok(p) if &p == plan => Ok(()),
        Ok(p) => Err(bad(format!(
            "the plan file's text is plan {}, not plan {id} (was the file changed while it was read?)",
            p.plan_id
        ))),
        Err(e) => Err(bad(format!("the plan file's text is not a plan: {e}"))),
    }
}

fn labels(plan: &Plan) -> Value {
    json!({"app.kubernetes.io/name": "gptx", "gptx.plan": plan.plan_id})
}

/// The Job's pod template.
fn pod_spec(plan: &Plan, opts: &Options, runs_dir: &Path) -> Value {
    let plan_path = pod_plan_path(plan).display().to_string();
    let socket = format!("unix://{ENGINE_SOCKET_DIR}/docker.sock");
    let runs = json!({"name": "runs", "mountPath": RUNS_MOUNT});
    let cache = json!({"name": "cache", "mountPath": CACHE_MOUNT});
    let engine_socket = json!({"name": "engine-socket", "mountPath": ENGINE_SOCKET_DIR});
    // Every pod copies the same bytes; each through its own temporary file, then a rename (atomic
    // on the claim), so no gptx reads half a plan. `$POD_NAME`, not `$(POD_NAME)`: the shell
    // expands it, Kubernetes leaves it alone.
    let copy = format!(
        "set -eu; t={RUNS_MOUNT}/.plan-{id}.json.$POD_NAME; cp {PLAN_MOUNT}/{PLAN_KEY} \"$t\"; mv -f \"$t\" {plan_path}",
        id = plan.plan_id
    );
    let copier = json!({
        "name": "plan",
        "image": opts.image,
        "command": ["sh", "-c", copy],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "volumeMounts": [
            {"name": "plan", "mountPath": PLAN_MOUNT, "readOnly": true},
            runs.clone(),
        ],
    });
    let engine = json!({
        "name": "engine",
        "image": ENGINE_IMAGE,
        // A native sidecar: started (and probed) before gptx, stopped after it.
        "restartPolicy": "Always",
        // `dockerd` first: the image's entrypoint then adds neither TLS nor a TCP listener (which
        // every pod on the network would reach); the unix socket is the only way in.
        "args": ["dockerd", format!("--host={socket}")],
        "env": [{"name": "DOCKER_HOST", "value": socket}],
        "securityContext": {"privileged": true},
        "startupProbe": {
            "exec": {"command": ["docker", "version"]},
            "periodSeconds": 2,
            "timeoutSeconds": 5,
            "failureThreshold": 90,
        },
        "volumeMounts": [
            engine_socket.clone(),
            {"name": "engine-storage", "mountPath": "/var/lib/docker"},
            // The engine resolves gptx's bind volumes in its own filesystem: the same paths.
            runs.clone(),
            cache.clone(),
        ],
    });
    // The item's whole need is asked on gptx's container: a pod's request is the sum of its
    // containers', so the scheduler places the item where all of it fits. The sandboxes run in
    // the engine's cgroup, each held by the limits gptx gives it through the engine API (the
    // suite's cpus and memory_mb); the engine asks nothing itself, since a limit given without
    // a request becomes the request and would count the item twice.
    let need = json!({
        "cpu": plan.resources.cpus.to_string(),
        "memory": format!("{}Mi", plan.resources.memory_mb),
    });
    let gptx = json!({
        "name": "gptx",
        "image": opts.image,
        // No shell: gptx is the container's first process and gets the SIGTERM itself (to remove
        // its containers and mark the run interrupted). Kubernetes expands `$(JOB_COMPLETION_INDEX)`
        // from the container's environment, where the Job controller puts the pod's index.
        "command": [
            "gptx", "run", "--plan", plan_path,
            "--item", "$(JOB_COMPLETION_INDEX)", "--quiet",
        ],
        "env": [
            {"name": "DOCKER_HOST", "value": socket},
            {"name": "GPTX_CACHE_DIR", "value": CACHE_MOUNT},
            // What `gptx run --plan` uses anyway; here for `kubectl exec … gptx runs`.
            {"name": "GPTX_RUNS_DIR", "value": runs_dir.display().to_string()},
        ],
        "resources": {"requests": need, "limits": need},
        // Root, to build images (debootstrap chroots and makes device nodes) and own each run's
        // directory; not privileged, so no loop device: workspaces have no disk limit (see above).
        "securityContext": {
            "runAsUser": 0,
            "privileged": false,
            "capabilities": {"add": ["SYS_CHROOT", "MKNOD"]},
        },
        "volumeMounts": [engine_socket, runs, cache],
    });
    let mut spec = json!({
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        // Nothing in the pod talks to the Kubernetes API; agents' code runs in it.
        "automountServiceAccountToken": false,
        "initContainers": [copier, engine],
        "containers": [gptx],
        "volumes": [
            {"name": "plan", "configMap": {
                "name": format!("gptx-plan-{}", plan.plan_id),
                "items": [{"key": PLAN_KEY, "path": PLAN_KEY}],
            }},
            {"name": "runs", "persistentVolumeClaim": {"claimName": opts.claim}},
            // Node-local: rootfs trees and the world, built per pod.
            {"name": "cache", "emptyDir": {}},
            {"name": "engine-socket", "emptyDir": {}},
            {"name": "engine-storage", "emptyDir": {}},
        ],
    });
    // The longest one item can take (as Slurm's `--time`): a pod still running then is hung; it
    // is stopped as on SIGTERM, and the index's next attempt resumes its run.
    if plan.resources.wall_seconds > 0 {
        spec["activeDeadlineSeconds"] = plan.resources.wall_seconds.into();
    }
    spec
}

/// The manifest's documents: the claim (unless it exists), the plan's ConfigMap, the Job.
pub fn documents(plan: &Plan, plan_text: &str, opts: &Options) -> Result<Vec<Value>, K8sError> {
    check_options(opts)?;
    check_plan(plan, plan_text)?;
    let runs_dir = pod_runs_dir(plan)?;
    let ns = &opts.namespace;
    let items = plan.items.len();
    let mut docs = Vec::new();
    if !opts.existing_claim {
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": opts.claim,
                "namespace": ns,
                "labels": {"app.kubernetes.io/name": "gptx"},
            },
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": opts.claim_size}},
            },
        }));
    }
    docs.push(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": format!("gptx-plan-{}", plan.plan_id),
            "namespace": ns,
            "labels": labels(plan),
        },
        "data": {PLAN_KEY: plan_text},
    }));
    let per_index = opts.backoff_limit_per_index;
    // Large enough never to cut the per-index retries short: every index may use all of its own.
    let backoff_limit = (items as u64 * (u64::from(per_index) + 1)).min(i32::MAX as u64);
    docs.push(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": format!("gptx-{}", plan.plan_id),
            "namespace": ns,
            "labels": labels(plan),
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": items,
            "parallelism": opts.parallelism,
            "backoffLimitPerIndex": per_index,
            "backoffLimit": backoff_limit,
            // A replacement pod starts once the failed one has terminated, not while it is still
            // terminating: its gptx is still removing its containers and marking the run
            // interrupted, holding the item's lock; the replacement would only wait for that lock
            // and hold a second item's worth of the node meanwhile. (With podFailurePolicy,
            // Kubernetes takes only this value.)
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": [
                // Exit 2 is usage: the plan does not fit this image or the item key is wrong.
                // Retrying cannot help: the index fails at once.
                {"action": "FailIndex", "onExitCodes": {
                    "containerName": "gptx", "operator": "In", "values": [2],
                }},
                // A pod evicted, preempted or drained away is not the item's failure: its
                // replacement resumes the run without using a retry.
                {"action": "Ignore", "onPodConditions": [
                    {"type": "DisruptionTarget", "status": "True"},
                ]},
            ]},
            "template": {
                "metadata": {"labels": labels(plan)},
                "spec": pod_spec(plan, opts, &runs_dir),
            },
        },
    }));
    Ok(docs)
}

/// The manifest as one YAML stream of [`documents`], a comment first.
pub fn manifest(plan: &Plan, plan_text: &str, opts: &Options) -> Result<String, K8sError> {
    let docs = documents(plan, plan_text, opts)?;
    let mut out = format!(
        "# gptx k8s manifest: plan {} ({} items), one Indexed Job completion per item.\n\
         # Apply with `kubectl apply -f FILE`; namespace {} must exist and admit privileged pods.\n",
        plan.plan_id,
        plan.items.len(),
        opts.namespace
    );
    for d in &docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(d)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(runs_dir: &str) -> Plan {
        crate::plan::tests::sample(&["null"], &[1, 2, 3], runs_dir)
    }

    fn opts() -> Options {
        Options {
            image: "registry.example/gptx:1".into(),
            parallelism: 2,
            backoff_limit_per_index: 2,
            claim: "gptx-runs".into(),
            existing_claim: false,
            claim_size: "50Gi".into(),
            namespace: "gptx".into(),
        }
    }

    fn text(p: &Plan) -> String {
        serde_json::to_string_pretty(p).unwrap() + "\n"
    }

    fn err(p: &Plan, o: &Options) -> String {
        manifest(p, &text(p), o).unwrap_err().to_string()
    }

    #[test]
    fn names_and_sizes() {
        for ok in ["gptx", "a", "gptx-runs-2", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "ä", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        for ok in ["50Gi", "1", "1.5Ti", "500M", "10k"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in [
            "", "Gi", "50 Gi", "50GB", "-1Gi", "1.Gi", ".5Gi", "0", "0Gi", "1e3",
        ] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn bad_flags_are_refused_naming_the_flag() {
        let p = plan("runs");
        type Change = fn(&mut Options);
        let cases: [(&str, Change); 9] = [
            ("--parallelism", |o| o.parallelism = 0),
            ("--parallelism", |o| o.parallelism = 100_001),
            ("--namespace", |o| o.namespace = "My_NS".into()),
            ("--namespace", |o| o.namespace = String::new()),
            ("--claim", |o| o.claim = "runs.claim".into()),
            ("--claim", |o| o.claim = "x".repeat(64)),
            ("--image", |o| o.image = String::new()),
            ("--image", |o| o.image = "gptx:1 --privileged".into()),
            ("--claim-size", |o| o.claim_size = "lots".into()),
        ];
        for (want, change) in cases {
            let mut o = opts();
            change(&mut o);
            let e = err(&p, &o);
            assert!(e.starts_with(&format!("{want} ")), "{want}: {e}");
        }
        // The size of a claim that exists is not read.
        let mut o = opts();
        o.existing_claim = true;
        o.claim_size = "lots".into();
        assert!(manifest(&p, &text(&p), &o).is_ok());
    }

    #[test]
    fn runs_must_land_on_the_claim() {
        let o = opts();
        assert_eq!(
            pod_runs_dir(&plan("runs")).unwrap(),
            Path::new("/runs/runs")
        );
        assert_eq!(
            pod_runs_dir(&plan("./a/b/")).unwrap(),
            Path::new("/runs/a/b")
        );
        assert_eq!(pod_runs_dir(&plan(".")).unwrap(), Path::new("/runs"));
        assert_eq!(
            pod_runs_dir(&plan("/runs/x")).unwrap(),
            Path::new("/runs/x")
        );
        let e = err(&plan("../results"), &o);
        assert!(
            e.contains("runs_dir \"../results\"") && e.contains("'..'"),
            "{e}"
        );
        let e = err(&plan("/data/runs"), &o);
        assert!(e.contains("outside /runs"), "{e}");
        assert!(err(&plan("/runs/../etc"), &o).contains("'..'"));
        assert!(err(&plan("/runsx"), &o).contains("outside /runs"));
    }

    #[test]
    fn the_text_must_be_the_plan_and_fit_a_config_map() {
        let p = plan("runs");
        let o = opts();
        let other = plan("elsewhere");
        let e = manifest(&p, &text(&other), &o).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "is plan {}, not plan {}",
                other.plan_id, p.plan_id
            )),
            "{e}"
        );
        let e = manifest(&p, "{}", &o).unwrap_err().to_string();
        assert!(e.contains("not a plan"), "{e}");
        let big = format!("{}{}", text(&p), " ".repeat(MAX_PLAN_BYTES));
        assert!(manifest(&p, &big, &o)
            .unwrap_err()
            .to_string()
            .contains("ConfigMap"));
        let mut bad_id = p.clone();
        bad_id.plan_id = "P_1".into();
        assert!(err(&bad_id, &o).contains("cannot name a Kubernetes object"));
        let mut none = p.clone();
        none.items.clear();
        assert!(err(&none, &o).contains("no items"));
    }

    #[test]
    fn documents_follow_the_flags() {
        let p = plan("runs");
        let mut o = opts();
        let docs = documents(&p, &text(&p), &o).unwrap();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["PersistentVolumeClaim", "ConfigMap", "Job"]);
        let job = &docs[2]["spec"];
        assert_eq!(job["completions"], 3);
        assert_eq!(job["backoffLimit"], 9);
        assert!(
            job.get("maxFailedIndexes").is_none() && job.get("ttlSecondsAfterFinished").is_none()
        );
        o.existing_claim = true;
        o.backoff_limit_per_index = u32::MAX;
        let docs = documents(&p, &text(&p), &o).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["spec"]["backoffLimit"], i32::MAX);
    }
}
