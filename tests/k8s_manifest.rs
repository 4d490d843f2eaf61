//! `gptx k8s manifest`: the YAML a plan becomes (snapshot), its structure read back, the CLI's exit codes, and the Kubernetes Python client's typed models reading every field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gptx::plan::k8s::{manifest, Options};
use gptx::plan::{Overrides, Plan, WorldPin};
use serde::Deserialize;
use serde_json::Value;

/// A plan of 2 agents × 2 seeds of the mini suite with fixed pins, written to `dir`.
fn plan_in(dir: &Path) -> (Plan, PathBuf) {
    let suite = gptx::config::suite::Home::locate()
        .unwrap()
        .suite("mini")
        .unwrap();
    let mut plan = Plan::new(
        &suite,
        "mini",
        "ab".repeat(32),
        vec![],
        Some(WorldPin {
            name: "mini".into(),
            seed: 1,
            hash: "cd".repeat(32),
        }),
        BTreeMap::from([("base".into(), "gptx/base:0123456789ab".into())]),
        Overrides::default(),
        gptx::trace::rundir::RunOptions {
            rescue: true,
            temperature: None,
            max_output_tokens: 4096,
            context_tokens: 100_000,
            agent_env: vec![],
        },
        PathBuf::from("runs"),
        &["null".to_string(), "reference".to_string()],
        &[1, 2],
    )
    .unwrap();
    // Not part of the id: fixed so the ConfigMap's bytes are too.
    plan.created_at = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
    let path = dir.join("plan.json");
    plan.write(&path).unwrap();
    (Plan::load(&path).unwrap(), path)
}

fn opts() -> Options {
    Options {
        image: "registry.example.com/gptx:0.1.0".into(),
        parallelism: 2,
        backoff_limit_per_index: 3,
        claim: "gptx-runs".into(),
        existing_claim: false,
        claim_size: "50Gi".into(),
        namespace: "gptx".into(),
    }
}

/// The manifest with what changes by itself (the plan id, which hashes the gptx version and the
/// suite's limits; the version) put as placeholders.
fn redacted(yaml: &str, plan: &Plan) -> String {
    yaml.replace(&plan.plan_id, "[plan_id]").replace(
        &format!("\"gptx_version\": \"{}\"", plan.gptx_version),
        "\"gptx_version\": \"[version]\"",
    )
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn by_name<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

fn mounts(container: &Value) -> BTreeMap<String, String> {
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap().to_string(),
                m["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_plan_becomes_an_indexed_job_with_its_claim_and_config_map() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, path) = plan_in(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    let yaml = manifest(&plan, &text, &opts()).unwrap();
    insta::assert_snapshot!("manifest", redacted(&yaml, &plan));

    let docs = documents(&yaml);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["PersistentVolumeClaim", "ConfigMap", "Job"]);
    for d in &docs {
        assert_eq!(d["metadata"]["namespace"], "gptx");
    }
    let (pvc, cm, job) = (&docs[0], &docs[1], &docs[2]);
    assert_eq!(pvc["metadata"]["name"], "gptx-runs");
    assert_eq!(
        pvc["spec"]["accessModes"],
        serde_json::json!(["ReadWriteMany"])
    );
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "50Gi");
    // The ConfigMap holds the plan file's very bytes.
    assert_eq!(
        cm["metadata"]["name"],
        format!("gptx-plan-{}", plan.plan_id)
    );
    assert_eq!(cm["data"]["plan.json"].as_str().unwrap(), text);

    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["metadata"]["name"], format!("gptx-{}", plan.plan_id));
    let labels = serde_json::json!({"app.kubernetes.io/name": "gptx", "gptx.plan": plan.plan_id});
    assert_eq!(job["metadata"]["labels"], labels);
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"], plan.items.len());
    assert_eq!(spec["parallelism"], 2);
    assert_eq!(spec["backoffLimitPerIndex"], 3);
    assert_eq!(spec["backoffLimit"], plan.items.len() * 4);
    assert_eq!(spec["podReplacementPolicy"], "Failed");
    assert!(spec.get("maxFailedIndexes").is_none());
    assert!(spec.get("ttlSecondsAfterFinished").is_none());
    assert_eq!(spec["template"]["metadata"]["labels"], labels);

    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["terminationGracePeriodSeconds"], 60);
    assert_eq!(pod["activeDeadlineSeconds"], plan.resources.wall_seconds);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let gptx = by_name(&pod["containers"], "gptx");
    let plan_in_pod = format!("/runs/plan-{}.json", plan.plan_id);
    assert_eq!(
        gptx["command"],
        serde_json::json!([
            "gptx",
            "run",
            "--plan",
            plan_in_pod,
            "--item",
            "$(JOB_COMPLETION_INDEX)",
            "--quiet"
        ])
    );
    assert_eq!(gptx["image"], "registry.example.com/gptx:0.1.0");
    let need = serde_json::json!({
        "cpu": plan.resources.cpus.to_string(),
        "memory": format!("{}Mi", plan.resources.memory_mb),
    });
    assert_eq!(gptx["resources"]["requests"], need);
    assert_eq!(gptx["resources"]["limits"], need);
    let env: BTreeMap<&str, &str> = gptx["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert_eq!(env["DOCKER_HOST"], "unix:///run/gptx-engine/docker.sock");
    assert_eq!(env["GPTX_CACHE_DIR"], "/cache");
    // The plan's relative `runs` lands on the claim, beside the copied plan.
    assert_eq!(env["GPTX_RUNS_DIR"], "/runs/runs");
    assert_eq!(
        plan.runs_dir_from(Path::new(&plan_in_pod)),
        Path::new("/runs/runs")
    );
    assert_ne!(gptx["securityContext"]["privileged"], true);
    let m = mounts(gptx);
    assert_eq!(m["/runs"], "runs");
    assert_eq!(m["/cache"], "cache");
    assert_eq!(m["/run/gptx-engine"], "engine-socket");

    // The plan copier, then the engine as a native sidecar with the same paths as gptx.
    let inits = pod["initContainers"].as_array().unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["plan", "engine"]);
    let copier = &inits[0];
    assert!(copier.get("restartPolicy").is_none());
    let script = copier["command"][2].as_str().unwrap();
    assert!(
        script.contains(&format!("mv -f \"$t\" {plan_in_pod}")),
        "{script}"
    );
    assert_eq!(mounts(copier)["/plan"], "plan");
    let engine = &inits[1];
    assert_eq!(engine["restartPolicy"], "Always");
    assert_eq!(engine["image"], "docker:27-dind");
    assert_eq!(engine["securityContext"]["privileged"], true);
    let m = mounts(engine);
    for (path, vol) in [
        ("/runs", "runs"),
        ("/cache", "cache"),
        ("/run/gptx-engine", "engine-socket"),
        ("/var/lib/docker", "engine-storage"),
    ] {
        assert_eq!(m[path], vol, "{path}");
    }
    let vols = &pod["volumes"];
    assert_eq!(
        by_name(vols, "runs")["persistentVolumeClaim"]["claimName"],
        "gptx-runs"
    );
    assert_eq!(
        by_name(vols, "plan")["configMap"]["name"],
        cm["metadata"]["name"]
    );
    for v in ["cache", "engine-socket", "engine-storage"] {
        assert!(by_name(vols, v).get("emptyDir").is_some(), "{v}");
    }

    // An existing claim: not written, but mounted.
    let mut o = opts();
    o.existing_claim = true;
    o.claim = "shared-runs".into();
    let docs = documents(&manifest(&plan, &text, &o).unwrap());
    assert_eq!(docs.len(), 2);
    assert_eq!(
        by_name(&docs[1]["spec"]["template"]["spec"]["volumes"], "runs")["persistentVolumeClaim"]
            ["claimName"],
        "shared-runs"
    );
}

fn gptx(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gptx"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_command_writes_the_manifest_and_refuses_bad_flags_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, path) = plan_in(dir.path());
    let p = path.to_str().unwrap();
    let out = dir.path().join("job.yaml");
    let o = gptx(&[
        "k8s",
        "manifest",
        "--plan",
        p,
        "--image",
        "registry.example.com/gptx:0.1.0",
        "--backoff-limit-per-index",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(o.stdout.is_empty());
    assert!(
        stderr.contains(&format!("kubectl apply -f {}", out.display()))
            && stderr.contains("not run on a cluster"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written, manifest(&plan, &text, &opts()).unwrap());
    // To stdout without --out.
    let o = gptx(&[
        "k8s",
        "manifest",
        "--plan",
        p,
        "--image",
        "img",
        "--existing-claim",
    ]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("kind: Job"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("kubectl apply -f FILE"));

    for (args, want) in [
        (vec!["--namespace", "Bad_NS"], "--namespace \"Bad_NS\""),
        (vec!["--claim", "a.b"], "--claim \"a.b\""),
        (vec!["--parallelism", "0"], "--parallelism"),
    ] {
        let mut all = vec!["k8s", "manifest", "--plan", p, "--image", "img"];
        all.extend(args);
        let o = gptx(&all);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{all:?}: {stderr}");
        assert!(stderr.contains(want), "{stderr}");
    }
    let o = gptx(&[
        "k8s",
        "manifest",
        "--plan",
        "/nonexistent/plan.json",
        "--image",
        "img",
    ]);
    assert_eq!(o.status.code(), Some(2));
    // A plan edited by hand is refused as `gptx run --plan` refuses it.
    std::fs::write(&path, text.replacen("\"seed\": 2", "\"seed\": 9", 1)).unwrap();
    let o = gptx(&["k8s", "manifest", "--plan", p, "--image", "img"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn the_kubernetes_python_client_reads_every_field() {
    let has = Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has,
        "the Kubernetes Python client is missing: install it with `python3 -m pip install kubernetes` (it brings PyYAML)"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/k8s/parse_manifest.py");
    let dir = tempfile::tempdir().unwrap();
    let (plan, path) = plan_in(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    let items = plan.items.len().to_string();
    for existing in [false, true] {
        let mut o = opts();
        o.existing_claim = existing;
        let file = dir.path().join(format!("manifest-{existing}.yaml"));
        std::fs::write(&file, manifest(&plan, &text, &o).unwrap()).unwrap();
        let mut args = vec![
            script.to_str().unwrap(),
            file.to_str().unwrap(),
            "--items",
            &items,
        ];
        if existing {
            args.push("--existing-claim");
        }
        let out = Command::new("python3").args(&args).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}{stderr}");
        eprintln!("{stdout}");
        assert!(stdout.contains("keep every field"), "{stdout}");
    }
    // The script does fail: a field the models do not know, and a wrong completion count.
    let bad = dir.path().join("bad.yaml");
    let yaml = manifest(&plan, &text, &opts()).unwrap().replace(
        "completionMode: Indexed",
        "completionMode: Indexed\n  completionsMode: Indexed",
    );
    std::fs::write(&bad, yaml).unwrap();
    let out = Command::new("python3")
        .args([
            script.to_str().unwrap(),
            bad.to_str().unwrap(),
            "--items",
            "7",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("spec.completionsMode: dropped")
            && stderr.contains("completions 4, the plan has 7"),
        "{stderr}"
    );
}
