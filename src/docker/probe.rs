//! What an image holds, measured in its root filesystem when it is built: Python, its libraries, the BLAS, matmul speed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;

use crate::config::image::{ImageFacts, Recipe, FACTS_LABEL};

/// The script run in the root filesystem, once per thread count.
const PROBE: &str = include_str!("probe.py");
/// The thread counts measured: one CPU, and the two of a typical sandbox.
const THREADS: [u32; 2] = [1, 2];
/// How long one run of the probe may take (importing torch and nine products take seconds).
const LIMIT: Duration = Duration::from_secs(300);

/// Measures `rootfs` as the recipe's user, in a mount namespace of its own with `/proc` and `/sys`
/// (so the BLAS sees the machine's CPUs) and a `/tmp` of its own (nothing the probe writes gets into
/// the image); nothing is left mounted, and a probe past its time dies with `unshare`. An image without `python3` has
/// nothing to measure.
pub(super) async fn measure(rootfs: &Path, recipe: &Recipe) -> Result<ImageFacts, String> {
    if !rootfs.join("usr/bin/python3").exists() {
        return Ok(ImageFacts::default());
    }
    let mut facts: Option<ImageFacts> = None;
    for threads in THREADS {
        merge(&mut facts, run_once(rootfs, recipe.uid, threads).await?);
    }
    Ok(facts.unwrap_or_default())
}

/// The OpenBLAS kernel every sandbox gets on this host (`config::suite::thread_env`), as one
/// environment assignment (a placeholder when OpenBLAS chooses), so the figure is a sandbox's.
fn blas_core() -> String {
    match crate::config::suite::host_blas_core() {
        Some(core) => format!("OPENBLAS_CORETYPE={core}"),
        None => "GPTX_BLAS_CORETYPE=openblas".into(),
    }
}

/// The runs at each thread count as one set of facts.
fn merge(facts: &mut Option<ImageFacts>, one: ImageFacts) {
    match facts.as_mut() {
        None => *facts = Some(one),
        Some(f) => f.matmul.extend(one.matmul),
    }
}

/// Measures a built image (one from a Dockerfile, which has no root filesystem here) in
/// containers of its own as `uid`: no network, no capabilities, a read-only root with a tmpfs
/// `/tmp`, two CPUs; each removed after. An image without `python3` has nothing to measure.
pub(super) async fn measure_image(
    docker: &bollard::Docker,
    image: &str,
    uid: u32,
) -> Result<ImageFacts, String> {
    let mut facts: Option<ImageFacts> = None;
    for threads in THREADS {
        let name = format!("gptx-probe-{:016x}", rand::random::<u64>());
        let one = in_container(docker, image, &name, uid, threads).await;
        let _ = crate::docker::engine::remove_container(docker, &name).await;
        match one? {
            Some(one) => merge(&mut facts, one),
            None => return Ok(ImageFacts::default()),
        }
    }
    Ok(facts.unwrap_or_default())
}

/// One probe run in a container named `name`; None when the image has no `python3`.
async fn in_container(
    docker: &bollard::Docker,
    image: &str,
    name: &str,
    uid: u32,
    threads: u32,
) -> Result<Option<ImageFacts>, String> {
    use bollard::models::{ContainerCreateBody, HostConfig};
    let env = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"]
        .map(|k| format!("{k}={threads}"))
        .into_iter()
        .chain([blas_core()])
        .collect::<Vec<_>>();
    let body = ContainerCreateBody {
        image: Some(image.into()),
        user: Some(format!("{uid}:{uid}")),
        entrypoint: Some(vec!["python3".into(), "-c".into(), PROBE.into()]),
        cmd: Some(vec![]),
        env: Some(
            [
                &env[..],
                &["HOME=/tmp".into(), "PYTHONDONTWRITEBYTECODE=1".into()],
            ]
            .concat(),
        ),
        labels: Some(crate::docker::engine::labels("image-probe", "probe")),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            readonly_rootfs: Some(true),
            tmpfs: Some([("/tmp".to_string(), "rw,size=256m".to_string())].into()),
            nano_cpus: Some(THREADS[1] as i64 * 1_000_000_000),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = bollard::query_parameters::CreateContainerOptions {
        name: Some(name.into()),
        ..Default::default()
    };
    let e = |what: &str| {
        let what = what.to_string();
        move |e: bollard::errors::Error| format!("{what}: {e}")
    };
    docker
        .create_container(Some(options), body)
        .await
        .map_err(e("create"))?;
    match docker.start_container(name, None).await {
        Err(err) if err.to_string().contains("executable file not found") => return Ok(None),
        r => r.map_err(e("start"))?,
    }
    let waited = tokio::time::timeout(LIMIT, async {
        let mut w = docker.wait_container(name, None);
        w.next().await
    })
    .await
    .map_err(|_| format!("the probe ran past {} s", LIMIT.as_secs()))?;
    let (stdout, stderr) = logs(docker, name).await;
    match waited {
        Some(Ok(_)) => {}
        Some(Err(err)) => return Err(format!("the probe exited: {err}: {}", tail(&stderr))),
        None => return Err("the engine did not say how the probe ended".into()),
    }
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .map(Some)
        .map_err(|err| format!("the probe printed {last:?}: {err}"))
}

/// A container's stdout and stderr.
async fn logs(docker: &bollard::Docker, name: &str) -> (String, String) {
    use bollard::container::LogOutput;
    let options = bollard::query_parameters::LogsOptions {
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut stream = docker.logs(name, Some(options));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(Ok(item)) = stream.next().await {
        match item {
            LogOutput::StdOut { message } => out.extend_from_slice(&message),
            LogOutput::StdErr { message } => err.extend_from_slice(&message),
            _ => {}
        }
    }
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (text(out), text(err))
}

/// The last lines of a probe's stderr, on one line.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

async fn run_once(rootfs: &Path, uid: u32, threads: u32) -> Result<ImageFacts, String> {
    let script = r#"mount -t proc proc "$1/proc" && mount --rbind /sys "$1/sys" && mount -t tmpfs tmpfs "$1/tmp" && exec chroot --userspec="$2:$2" "$1" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS="$3" OPENBLAS_NUM_THREADS="$3" "$5" /usr/bin/python3 -c "$4""#;
    let child = tokio::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "--kill-child",
        ])
        .args(["--", "sh", "-c", script, "probe"])
        .arg(rootfs)
        .args([
            uid.to_string(),
            threads.to_string(),
            PROBE.into(),
            blas_core(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("unshare: {e}"))?;
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .map_err(|_| format!("the probe ran past {} s", LIMIT.as_secs()))?
        .map_err(|e| format!("the probe: {e}"))?;
    if !out.status.success() {
        let err = tail(&String::from_utf8_lossy(&out.stderr));
        return Err(format!("the probe exited with {}: {err}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| format!("the probe printed {last:?}: {e}"))
}

/// The `LABEL` instruction that keeps `facts` in the image.
pub(super) fn label(facts: &ImageFacts) -> String {
    let json = serde_json::to_string(facts).expect("facts serialise");
    // The engine's LABEL parser takes backslash escapes and expands `$` variables in the value.
    let quoted = json
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('$', "\\$");
    format!("LABEL {FACTS_LABEL}=\"{quoted}\"")
}

/// The facts an image's label holds (None: an image built before they were measured, or a label
/// that does not parse).
pub(super) fn from_labels(
    labels: Option<&std::collections::HashMap<String, String>>,
) -> Option<ImageFacts> {
    serde_json::from_str(labels?.get(FACTS_LABEL)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::image::Matmul;

    #[test]
    fn facts_go_into_a_label_and_come_back_whole() {
        let facts = ImageFacts {
            python: Some("3.11.2".into()),
            libraries: [("numpy".to_string(), "1.24.2".to_string())].into(),
            blas: Some("OpenBLAS 0.3.21 \"DYNAMIC_ARCH\" \\ $HOME ${X} Haswell".into()),
            matmul: vec![Matmul {
                library: "numpy".into(),
                threads: 2,
                gflops: 51.5,
            }],
        };
        let line = label(&facts);
        let value = line
            .strip_prefix(&format!("LABEL {FACTS_LABEL}=\""))
            .and_then(|v| v.strip_suffix('"'))
            .unwrap();
        // What the engine's LABEL parser does with a double-quoted value: backslash escapes (and `\$`
        // keeps a `$` from being expanded).
        let mut unquoted = String::new();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            unquoted.push(if c == '\\' { chars.next().unwrap() } else { c });
        }
        let labels = [(FACTS_LABEL.to_string(), unquoted)].into();
        assert_eq!(from_labels(Some(&labels)), Some(facts));
        assert_eq!(from_labels(None), None);
    }
}
