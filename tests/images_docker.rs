//! `gptx images save` / `load` against the real engine: the base image round-trips; bad files are refused untouched.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use bollard::query_parameters::{ListImagesOptions, RemoveImageOptions};
use bollard::Docker;
use sha2::{Digest, Sha256};

/// Tags of the images a test here makes for itself (never the real base image).
const TEST_TAG: &str = "test-images-docker-";

fn gptx(args: &[&str], file: &Path) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = common::gptx().args(args).arg(file).output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// The engine's gptx images: (id, tags), leaving out the ones tests here make.
async fn gptx_images(docker: &Docker) -> BTreeSet<(String, Vec<String>)> {
    docker
        .list_images(Some(ListImagesOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_iter()
        .filter(|i| {
            i.repo_tags.iter().any(|t| t.starts_with("gptx/"))
                && !i.repo_tags.iter().any(|t| t.contains(TEST_TAG))
        })
        .map(|i| {
            let mut tags = i.repo_tags;
            tags.sort();
            (i.id, tags)
        })
        .collect()
}

/// The `manifest.json` of a tar, read by the system's `tar`, not by gptx.
fn manifest_of(tar: &Path) -> serde_json::Value {
    common::json_of(
        std::process::Command::new("tar")
            .arg("-xOf")
            .arg(tar)
            .arg("manifest.json"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn base_round_trips_through_save_and_load_and_truncated_copies_are_refused() {
    let (docker, tag) = common::docker_and_image().await;
    let id = gptx::docker::images::image_id(&docker, &tag)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("images.tar");

    let (code, out, err) = gptx(&["images", "save", "base", "--out"], &tar);
    assert_eq!(code, 0, "save: {out}\n{err}");
    let short = &id.trim_start_matches("sha256:")[..12];
    assert!(
        out.contains(&tag) && out.contains(short) && out.contains(" bytes") && out.contains(" s "),
        "{out}"
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["images.tar"], "a temporary file was left behind");
    let manifest = manifest_of(&tar);
    let tags: Vec<&str> = manifest
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["RepoTags"].as_array().unwrap())
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tags, [tag.as_str()], "{manifest}");

    let (code, out, err) = gptx(&["images", "load"], &tar);
    assert_eq!(code, 0, "load: {out}\n{err}");
    assert!(
        out.contains(&tag)
            && out.contains("unchanged")
            && out.contains("matches this checkout's recipe"),
        "{out}"
    );
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(
        gptx::docker::images::image_id(&docker, &tag).await.unwrap(),
        Some(id.clone()),
        "loading changed the image"
    );

    let cut = dir.path().join("cut.tar");
    let bytes = std::fs::read(&tar).unwrap();
    std::fs::write(&cut, &bytes[..1 << 20]).unwrap();
    drop(bytes);
    let before = gptx_images(&docker).await;
    let (code, out, err) = gptx(&["images", "load"], &cut);
    assert_eq!(code, 1, "a truncated tar was not refused: {out}\n{err}");
    assert!(
        err.contains(&cut.display().to_string()) && err.contains("truncated"),
        "{err}"
    );
    assert_eq!(
        gptx_images(&docker).await,
        before,
        "the engine's images changed"
    );
    assert_eq!(
        gptx::docker::images::image_id(&docker, &tag).await.unwrap(),
        Some(id)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn files_that_are_not_docker_save_tars_and_unbuilt_images_are_refused() {
    let (docker, _) = common::docker_and_image().await;
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a tar\n".repeat(100)).unwrap();
    let plain = dir.path().join("plain.tar");
    std::fs::write(dir.path().join("hello"), "hello").unwrap();
    let made = std::process::Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .arg("-cf")
        .arg(&plain)
        .arg("hello")
        .status()
        .unwrap();
    assert!(made.success());
    for (file, why) in [
        (&text, "not a tar"),
        (&plain, "no manifest.json"),
        (&dir.path().join("missing.tar"), "cannot read"),
    ] {
        let (code, out, err) = gptx(&["images", "load"], file);
        assert_eq!(code, 1, "{}: {out}\n{err}", file.display());
        assert!(
            err.contains(&file.display().to_string()) && err.contains(why),
            "{err}"
        );
    }

    let out = dir.path().join("x.tar");
    let (code, _, err) = gptx(&["images", "save", "no-such-recipe", "--out"], &out);
    assert_eq!(code, 2, "{err}");
    // `ml` is a recipe, rarely built: when it is not, saving it says to build it first.
    let ml = gptx::docker::images::Recipe::load(&common::home(), "ml")
        .unwrap()
        .tag();
    if gptx::docker::images::image_id(&docker, &ml)
        .await
        .unwrap()
        .is_none()
    {
        let (code, _, err) = gptx(&["images", "save", "ml", "--out"], &out);
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("gptx images build ml"), "{err}");
    }
    assert!(!out.exists());
}

/// A one-file image in docker-save form, tagged `tags`: built by hand, so it is small and new.
fn tiny_image_tar(dir: &Path, tags: &[String]) -> (std::path::PathBuf, String) {
    let root = dir.join("image");
    let layer_src = dir.join("layer");
    std::fs::create_dir_all(&layer_src).unwrap();
    std::fs::write(layer_src.join("hello.txt"), "hello\n").unwrap();
    let layer_tar = dir.join("layer.tar");
    let made = std::process::Command::new("tar")
        .arg("-C")
        .arg(&layer_src)
        .arg("-cf")
        .arg(&layer_tar)
        .arg("hello.txt")
        .status()
        .unwrap();
    assert!(made.success());
    let layer = std::fs::read(&layer_tar).unwrap();
    let diff_id = hex::encode(Sha256::digest(&layer));
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": { "Labels": { "gptx.test": format!("{:016x}", rand::random::<u64>()) } },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        "history": [{ "created": "2026-01-01T00:00:00Z", "created_by": "tests/images_docker.rs" }],
    })
    .to_string();
    let id = hex::encode(Sha256::digest(config.as_bytes()));
    std::fs::create_dir_all(root.join(&diff_id)).unwrap();
    std::fs::write(root.join(&diff_id).join("layer.tar"), &layer).unwrap();
    std::fs::write(root.join(format!("{id}.json")), &config).unwrap();
    let manifest = serde_json::json!([{
        "Config": format!("{id}.json"),
        "RepoTags": tags,
        "Layers": [format!("{diff_id}/layer.tar")],
    }]);
    std::fs::write(root.join("manifest.json"), manifest.to_string()).unwrap();
    let tar = dir.join("tiny.tar");
    let made = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(made.success());
    (tar, format!("sha256:{id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn images_of_other_recipes_are_loaded_with_a_warning() {
    let (docker, _) = common::docker_and_image().await;
    let home = common::home();
    let ours = gptx::docker::images::Recipe::load(&home, "ml")
        .unwrap()
        .tag();
    let suffix = format!("{TEST_TAG}{:08x}", rand::random::<u32>());
    let other = format!("gptx/ml:{suffix}");
    let stray = format!("gptx/no-such-recipe:{suffix}");
    let dir = tempfile::tempdir().unwrap();
    let (tar, id) = tiny_image_tar(dir.path(), &[other.clone(), stray.clone()]);

    let (code, out, err) = gptx(&["images", "load"], &tar);
    let loaded = gptx::docker::images::image_id(&docker, &other)
        .await
        .unwrap();
    let stray_loaded = gptx::docker::images::image_id(&docker, &stray)
        .await
        .unwrap();
    if loaded.is_some() || stray_loaded.is_some() {
        docker
            .remove_image(
                &id,
                Some(RemoveImageOptions {
                    force: true,
                    noprune: false,
                    ..Default::default()
                }),
                None,
            )
            .await
            .unwrap();
    }
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(loaded.as_deref(), Some(id.as_str()));
    assert_eq!(stray_loaded.as_deref(), Some(id.as_str()));
    assert!(
        err.contains(&format!(
            "{other} is not this checkout's recipe ({ours}): runs here will build their own"
        )),
        "{err}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(&other) && l.contains("loaded (new)")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(&stray) && l.contains("no recipe no-such-recipe")),
        "{out}"
    );
    assert!(out.contains("loaded 2 image(s)"), "{out}");
}

/// The base image carries what was measured in it when it was built (Python, numpy, the BLAS numpy
/// calls, a float32 matmul on one and two threads), read back from the engine; and a sandbox of it
/// starts with its BLAS and OpenMP threads set to its CPUs, rounded up.
#[tokio::test(flavor = "multi_thread")]
async fn the_base_image_carries_its_measured_blas_and_sandboxes_their_thread_counts() {
    let (docker, _) = common::docker_and_image().await;
    let built = gptx::docker::images::ensure(&docker, &common::home(), "base")
        .await
        .unwrap();
    let facts = built.facts.expect("the base image was measured at build");
    assert!(
        facts.python.as_deref().is_some_and(|v| v.starts_with("3.")),
        "{facts:?}"
    );
    assert!(facts.libraries.contains_key("numpy"), "{facts:?}");
    let blas = facts.blas.as_deref().unwrap_or_default();
    assert!(blas.starts_with("OpenBLAS"), "numpy's BLAS is {blas:?}");
    let threads: Vec<u32> = facts.matmul.iter().map(|m| m.threads).collect();
    assert_eq!(threads, [1, 2], "{facts:?}");
    assert!(facts
        .matmul
        .iter()
        .all(|m| m.library == "numpy" && m.gflops > 0.0));
    let sentence = facts.sentence(2.0).unwrap();
    assert!(sentence.contains("numpy's BLAS is OpenBLAS"), "{sentence}");

    let env = "echo $OMP_NUM_THREADS $OPENBLAS_NUM_THREADS $MKL_NUM_THREADS";
    common::with_sandbox(
        "blas-threads",
        |s| s.nano_cpus = 1_500_000_000,
        |sb, _| async move {
            let (o, out, err) = common::sh(sb.as_ref(), env, 30.0).await;
            assert_eq!(o.exit_code, Some(0), "{err}");
            assert_eq!(out.trim(), "2 2 2");
        },
    )
    .await;
}
