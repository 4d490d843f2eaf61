//! The world's web server in a real container on an internal network, seen from a real sandbox:
//! it serves, logs, and never holds the hidden test documents; neither does the agent's sandbox.

mod common;

use std::sync::Arc;

use bollard::exec::{CreateExecOptions, StartExecResults};
use futures_util::StreamExt;
use gptx::docker::sandbox::DockerSandbox;
use gptx::docker::web::WebServer;
use gptx::sandbox::Sandbox;

/// Runs a command in any container; returns (exit code, output).
async fn docker_exec(docker: &bollard::Docker, id: &str, cmd: Vec<String>) -> (i64, String) {
    let ex = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(cmd),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut out = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&ex.id, None).await.unwrap()
    {
        while let Some(Ok(chunk)) = output.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
    }
    let code = docker
        .inspect_exec(&ex.id)
        .await
        .unwrap()
        .exit_code
        .unwrap_or(-1);
    (code, out)
}

/// The longest line of each hidden document that has no HTML-escaped characters (so a copy in a
/// served page would contain it verbatim).
fn probes(world: &gptx::world::World) -> Vec<String> {
    world
        .test_docs()
        .unwrap()
        .iter()
        .map(|d| {
            d.text
                .lines()
                .filter(|l| !l.contains(['&', '<', '>', '"', '\'']))
                .max_by_key(|l| l.len())
                .unwrap()
                .to_string()
        })
        .collect()
}

const FETCH: &str = r#"
import sys, urllib.request, urllib.error
def get(url):
    req = urllib.request.Request(url, headers={"User-Agent": "gptx-test"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), b""
for url in sys.argv[1:]:
    s, t, b = get(url)
    print(s, t, len(b), b[:60])
"#;

#[tokio::test(flavor = "multi_thread")]
async fn web_server_serves_the_world_and_hidden_text_is_nowhere_the_agent_can_reach() {
    let (docker, image) = common::docker_and_image().await;
    let world = gptx::world::ensure(&common::home(), "mini", 1, &gptx::world::Quiet)
        .unwrap()
        .0;
    let run_id = common::test_run_id("web");
    let net = gptx::docker::engine::create_world_network(&docker, &run_id, "world")
        .await
        .unwrap();
    // A listener on every host address: the sandbox must not reach it.
    let host_listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_listener.local_addr().unwrap().port();
    let gateway = docker
        .inspect_network(
            &net,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .unwrap()
        .ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.gateway)
        .unwrap_or_default();
    let logs = tempfile::tempdir().unwrap();
    gptx::docker::session::prepare_workspace(logs.path()).unwrap();
    let ws = tempfile::tempdir().unwrap();
    let mut spec = common::spec(&run_id, &image, ws.path());
    spec.network = Some(net.clone());

    let web = WebServer::start(&docker, &run_id, &image, &world, &net, logs.path(), None)
        .await
        .expect("web server starts");
    let sandbox = Arc::new(
        DockerSandbox::create(&docker, &spec)
            .await
            .expect("sandbox"),
    );
    let body = {
        let sandbox = sandbox.clone();
        let docker = docker.clone();
        let web_id = web.id.clone();
        let world = world.clone();
        let log = logs.path().join("requests.jsonl");
        tokio::spawn(async move {
            // The sites answer by name; robots, Latin-1 and 404 behave.
            let latin1 = world
                .manifest
                .served
                .iter()
                .find(|p| p.latin1)
                .unwrap()
                .url
                .clone();
            sandbox
                .write_file(
                    &gptx::sandbox::WorkspacePath::parse("fetch.py").unwrap(),
                    FETCH.as_bytes(),
                )
                .unwrap();
            let (o, out, err) = common::sh(
                sandbox.as_ref(),
                &format!("python3 fetch.py http://docs.gptx.test/robots.txt {latin1} http://mirror.gptx.test/nothing-here"),
                60.0,
            )
            .await;
            assert_eq!(o.exit_code, Some(0), "{out}{err}");
            let lines: Vec<&str> = out.lines().collect();
            assert!(
                lines[0].starts_with("200 text/plain") && lines[0].contains("robots.txt for"),
                "{out}"
            );
            assert!(
                lines[1].starts_with("200 text/html; charset=iso-8859-1"),
                "{out}"
            );
            assert!(lines[2].starts_with("404"), "{out}");

            // Nothing beyond the world: no internet, and not the host (its listener at the network's
            // gateway address and at docker0's).
            for (ip, port) in [
                ("1.1.1.1".to_string(), 80),
                (gateway.clone(), host_port),
                ("172.17.0.1".to_string(), host_port),
            ] {
                if ip.is_empty() {
                    continue;
                }
                let (o, out, _) = common::sh(
                    sandbox.as_ref(),
                    &format!("python3 -c \"import socket; s=socket.create_connection(('{ip}', {port}), timeout=3)\" 2>&1; echo rc=$?"),
                    30.0,
                )
                .await;
                assert_eq!(o.exit_code, Some(0));
                assert!(
                    out.contains("rc=1"),
                    "a connection to {ip}:{port} must fail: {out}"
                );
            }

            // Every request is logged with status and user agent.
            let logged = std::fs::read_to_string(&log).unwrap();
            let entries: Vec<serde_json::Value> = logged
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(entries.len(), 3, "{logged}");
            assert_eq!(entries[0]["path"], "/robots.txt");
            assert_eq!(entries[2]["status"], 404);
            assert!(entries.iter().all(|e| e["ua"] == "gptx-test"));

            // T is nowhere: not in the web container's files, not in the agent's sandbox.
            let probes = probes(&world);
            let mut grep: Vec<String> = vec!["grep".into(), "-rlsF".into()];
            for p in &probes {
                grep.push("-e".into());
                grep.push(p.clone());
            }
            let dirs = [
                "/world",
                "/log",
                "/etc",
                "/home",
                "/tmp",
                "/usr/share",
                "/root",
            ];
            let (code, out) = docker_exec(
                &docker,
                &web_id,
                [grep.clone(), dirs.map(String::from).to_vec()].concat(),
            )
            .await;
            // 1: no match; 2: no match but unreadable files (e.g. /etc/shadow) were skipped.
            assert!(code == 1 || code == 2, "grep: {code} {out}");
            assert!(
                out.trim().is_empty(),
                "grep found hidden text in the web container: {out}"
            );
            let shell_grep = format!(
                "grep -rlsF {} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev; echo rc=$?",
                probes.iter().map(|p| format!("-e '{}'", p.replace('\'', ""))).collect::<Vec<_>>().join(" ")
            );
            let (_, out, _) = common::sh(sandbox.as_ref(), &shell_grep, 120.0).await;
            assert!(
                out.trim_end().ends_with("rc=1") || out.trim_end().ends_with("rc=2"),
                "{out}"
            );
            assert!(
                !out.contains('/'),
                "grep found hidden text in the sandbox: {out}"
            );

            // The search works: a served gold line is found in the web container.
            let gold = world.gold().unwrap();
            let gold_line = gold[0]
                .1
                .lines()
                .filter(|l| !l.contains(['&', '<', '>', '"', '\'']))
                .max_by_key(|l| l.len())
                .unwrap()
                .to_string();
            let (code, out) = docker_exec(
                &docker,
                &web_id,
                vec![
                    "grep".into(),
                    "-rlF".into(),
                    "-e".into(),
                    gold_line,
                    "/world/sites".into(),
                ],
            )
            .await;
            assert_eq!(code, 0, "positive control: {out}");
        })
    };
    let outcome = body.await;
    drop(host_listener);
    sandbox.remove().await.unwrap();
    assert!(web.remove().await.is_empty());
    docker.remove_network(&net).await.unwrap();
    let left = common::leftovers(&docker, &run_id).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
    assert_eq!(left, 0, "resources of {run_id} left behind");
}
