//! What an image holds, measured in its root filesystem when it is built: Python, its libraries, the BLAS, matmul speed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

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
        let one = run_once(rootfs, recipe.uid, threads).await?;
        match facts.as_mut() {
            None => facts = Some(one),
            Some(f) => f.matmul.extend(one.matmul),
        }
    }
    Ok(facts.unwrap_or_default())
}

async fn run_once(rootfs: &Path, uid: u32, threads: u32) -> Result<ImageFacts, String> {
    let script = r#"mount -t proc proc "$1/proc" && mount --rbind /sys "$1/sys" && mount -t tmpfs tmpfs "$1/tmp" && exec chroot --userspec="$2:$2" "$1" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS="$3" OPENBLAS_NUM_THREADS="$3" /usr/bin/python3 -c "$4""#;
    let child = tokio::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "--kill-child",
        ])
        .args(["--", "sh", "-c"])
        .arg(script)
        .arg("probe")
        .arg(rootfs)
        .arg(uid.to_string())
        .arg(threads.to_string())
        .arg(PROBE)
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
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(format!(
            "the probe exited with {}: {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
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
