//! Images from a Dockerfile on the real engine: one `FROM gptx/base` builds offline, is measured, and hosts a stage; a failed build names its step; images that break the sandbox profile are refused with the reason.

mod common;

use std::path::Path;

use bollard::query_parameters::{ListContainersOptions, RemoveImageOptions};
use bollard::Docker;
use gptx::config::suite::Home;
use gptx::docker::images::{self, ImageError};

/// A home of its own in `dir`: this checkout's tasks and `base` recipe (so the base image is the
/// one already built), and the Dockerfile recipes given as (name, toml body, Dockerfile).
fn home_with(dir: &Path, recipes: &[(&str, &str, &str)]) -> Home {
    let checkout = common::home();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(checkout.tasks())
        .arg(dir.join("tasks"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::create_dir(dir.join("sandboxes")).unwrap();
    std::fs::copy(
        checkout.sandboxes().join("base.toml"),
        dir.join("sandboxes/base.toml"),
    )
    .unwrap();
    for (name, toml, dockerfile) in recipes {
        let toml = format!("name = \"{name}\"\ndescription = \"a test recipe\"\n{toml}");
        std::fs::write(dir.join(format!("sandboxes/{name}.toml")), toml).unwrap();
        std::fs::write(dir.join(format!("sandboxes/{name}.Dockerfile")), dockerfile).unwrap();
    }
    Home {
        root: dir.to_path_buf(),
        cache_dir: Some(dir.join("cache")),
    }
}

/// A copy of `mini` named `name` on the image `image`, in `home`'s suites.
fn suite_on(home: &Home, name: &str, image: &str) {
    let mini = std::fs::read_to_string(home.tasks().join("suites/mini.toml")).unwrap();
    let suite = mini
        .replace("name = \"mini\"", &format!("name = \"{name}\""))
        .replace("image = \"base\"", &format!("image = \"{image}\""));
    std::fs::write(home.tasks().join(format!("suites/{name}.toml")), suite).unwrap();
}

async fn remove_image(docker: &Docker, tag: &str) {
    let _ = docker
        .remove_image(
            tag,
            Some(RemoveImageOptions {
                force: true,
                ..Default::default()
            }),
            None,
        )
        .await;
}

/// Containers of these images still on the engine (the profile check's and the probe's are
/// removed as soon as they have served).
async fn containers_of(docker: &Docker, tags: &[String]) -> Vec<String> {
    let all = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    all.into_iter()
        .filter(|c| c.image.as_ref().is_some_and(|i| tags.contains(i)))
        .flat_map(|c| c.names.unwrap_or_default())
        .collect()
}

/// A recipe `FROM gptx/base` with a file of its own context builds through the engine's API with
/// no registry (the base is this engine's), is measured in a container, and keeps its tag until
/// its context changes; then `gptx run` uses it for a crawl stage, which is graded.
#[tokio::test(flavor = "multi_thread")]
async fn a_dockerfile_image_from_base_builds_offline_and_runs_a_stage() {
    let (docker, base) = common::docker_and_image().await;
    let dir = tempfile::tempdir().unwrap();
    let dockerfile = "FROM gptx/base\nUSER root\nRUN echo built-by-a-dockerfile > /opt/marker\nCOPY note.txt /opt/note.txt\nUSER agent\n";
    let home = home_with(dir.path(), &[("dfimage", "", dockerfile)]);
    std::fs::create_dir(home.sandboxes().join("dfimage")).unwrap();
    std::fs::write(
        home.sandboxes().join("dfimage/note.txt"),
        "from the context\n",
    )
    .unwrap();

    let built = images::build(&docker, &home, "dfimage", false, true)
        .await
        .expect("the Dockerfile image builds");
    assert!(
        built.built && built.tag.starts_with("gptx/dfimage:"),
        "{built:?}"
    );
    // Measured in a container of the image: base's Python and numpy, with OpenBLAS.
    let facts = built.facts.clone().expect("measured");
    assert!(
        facts.python.is_some() && facts.libraries.contains_key("numpy"),
        "{facts:?}"
    );
    assert!(!facts.matmul.is_empty(), "{facts:?}");
    // Built FROM this checkout's base, by its tag, and not again while nothing changed.
    let info = docker.inspect_image(&built.tag).await.unwrap();
    let base_info = docker.inspect_image(&base).await.unwrap();
    let base_layers = base_info.root_fs.unwrap().layers.unwrap();
    let layers = info.root_fs.unwrap().layers.unwrap();
    assert_eq!(layers[..base_layers.len()], base_layers[..]);
    assert!(layers.len() > base_layers.len());
    let again = images::build(&docker, &home, "dfimage", false, true)
        .await
        .unwrap();
    assert!(!again.built && again.id == built.id);
    // The staging tag is gone.
    assert!(
        images::image_id(&docker, &format!("{}-building", built.tag))
            .await
            .unwrap()
            .is_none()
    );
    // A change to the context is a new tag.
    std::fs::write(home.sandboxes().join("dfimage/note.txt"), "changed\n").unwrap();
    let changed = images::Recipe::load(&home, "dfimage").unwrap().tag();
    assert_ne!(changed, built.tag);
    std::fs::write(
        home.sandboxes().join("dfimage/note.txt"),
        "from the context\n",
    )
    .unwrap();

    // A suite on the image: the crawl stage runs in it and is graded.
    suite_on(&home, "mini-df", "dfimage");
    let runs = tempfile::tempdir().unwrap();
    let checkout_cache = common::home().cache();
    let (v, _) = common::run_json_with(
        &[
            "--suite",
            "mini-df",
            "--agent",
            "reference",
            "--stages",
            "crawl",
        ],
        runs.path(),
        &[
            ("GPTX_HOME", dir.path().to_str().unwrap()),
            ("GPTX_CACHE_DIR", checkout_cache.to_str().unwrap()),
        ],
    );
    assert_eq!(v["stages"]["crawl"]["status"], "scored", "{v}");
    let run_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(v["dir"].as_str().unwrap()).join("run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(run_json["images"]["agent"], built.id, "{run_json}");
    common::assert_nothing_left(&docker, &v).await;
    let staging = format!("{}-building", built.tag);
    assert_eq!(
        containers_of(&docker, &[built.tag.clone(), staging]).await,
        Vec::<String>::new()
    );
    remove_image(&docker, &built.tag).await;
}

/// A build that fails names the step it failed at, with the engine's message (the classic
/// builder counts the recipe label as a last step: 5 in all).
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_build_names_the_failing_step() {
    let (docker, _) = common::docker_and_image().await;
    let dir = tempfile::tempdir().unwrap();
    let dockerfile = "FROM gptx/base\nRUN echo first-step\nRUN exit 3\nRUN echo never\n";
    let home = home_with(dir.path(), &[("dffails", "", dockerfile)]);
    let e = images::build(&docker, &home, "dffails", false, true)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ImageError::Build { .. }), "{text}");
    assert!(
        text.contains("failed at \"Step 3/5 : RUN exit 3\"")
            && text.contains("returned a non-zero code: 3")
            && text.contains("first-step"),
        "{text}"
    );
    let tag = images::Recipe::load(&home, "dffails").unwrap().tag();
    assert!(images::image_id(&docker, &tag).await.unwrap().is_none());
}

/// Images that cannot host a sandbox are refused before a run starts, each with its reason:
/// root as the user, a VOLUME, a user missing from `/etc/passwd`; `gptx run` says so and exits.
#[tokio::test(flavor = "multi_thread")]
async fn images_that_break_the_profile_are_refused_with_the_reason() {
    let (docker, _) = common::docker_and_image().await;
    let dir = tempfile::tempdir().unwrap();
    let recipes = [
        ("dfroot", "", "FROM gptx/base\nUSER root\n"),
        ("dfvolume", "", "FROM gptx/base\nVOLUME /data\n"),
        (
            "dfnouser",
            "",
            "FROM gptx/base\nUSER root\nRUN sed -i '/^agent:/d' /etc/passwd\nUSER 1000\n",
        ),
        ("dfworkdir", "", "FROM gptx/base\nWORKDIR /tmp\n"),
    ];
    let home = home_with(dir.path(), &recipes);
    let expect = [
        ("dfroot", "it runs as USER root"),
        ("dfvolume", "it declares VOLUME /data"),
        ("dfnouser", "/etc/passwd has no user agent"),
        ("dfworkdir", "its WORKDIR is \"/tmp\""),
    ];
    let mut tags = Vec::new();
    for (name, reason) in expect {
        let e = images::ensure(&docker, &home, name).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ImageError::Profile { .. }), "{name}: {text}");
        assert!(
            text.contains(&format!("image {name} (gptx/{name}:"))
                && text.contains("breaks the sandbox profile")
                && text.contains(reason),
            "{name}: {text}"
        );
        tags.push(images::Recipe::load(&home, name).unwrap().tag());
    }
    // `gptx run` on a suite of such an image stops before any sandbox, with the reason.
    suite_on(&home, "mini-root", "dfroot");
    let runs = tempfile::tempdir().unwrap();
    let out = common::gptx()
        .args(["run", "--suite", "mini-root", "--agent", "null", "--quiet"])
        .arg("--runs-dir")
        .arg(runs.path())
        .env("GPTX_HOME", dir.path())
        .env("GPTX_CACHE_DIR", common::home().cache())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit 3: the environment; {stderr}"
    );
    assert!(
        stderr.contains("breaks the sandbox profile") && stderr.contains("USER agent"),
        "{stderr}"
    );
    assert_eq!(containers_of(&docker, &tags).await, Vec::<String>::new());
    for tag in tags {
        remove_image(&docker, &tag).await;
    }
}

/// An image cannot run code of its own in a sandbox: its ENTRYPOINT (which would run first, as
/// root, and wrap the supervisor) and its HEALTHCHECK (run as root every second, reading whatever
/// the agent left where it looks) never run; the supervisor answers as the sandbox user.
#[tokio::test(flavor = "multi_thread")]
async fn an_images_entrypoint_and_healthcheck_never_run_in_a_sandbox() {
    let (docker, _) = common::docker_and_image().await;
    let dir = tempfile::tempdir().unwrap();
    let dockerfile = "FROM gptx/base\nUSER root\nRUN printf '#!/bin/sh\\necho hijacked > /tmp/entrypoint-ran\\nexec \"$@\"\\n' > /usr/local/bin/wrap && chmod 755 /usr/local/bin/wrap\nENTRYPOINT [\"/usr/local/bin/wrap\"]\nHEALTHCHECK --interval=1s --start-period=1s CMD touch /tmp/healthcheck-ran\nUSER agent\n";
    let home = home_with(dir.path(), &[("dfhijack", "", dockerfile)]);
    let built = images::build(&docker, &home, "dfhijack", false, true)
        .await
        .expect("the image keeps the profile: it builds");
    let tag = built.tag.clone();
    common::with_sandbox(
        "hijack",
        move |s| s.image = tag,
        |sb, _ws| async move {
            // Long enough for a 1 s healthcheck to have run twice.
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            let (o, out, err) = common::sh(&*sb, "id -u; ls -a /tmp", 10.0).await;
            assert_eq!(o.exit_code, Some(0), "{out}{err}");
            assert!(out.starts_with("1000\n"), "{out}");
            assert!(
                !out.contains("entrypoint-ran") && !out.contains("healthcheck-ran"),
                "{out}"
            );
        },
    )
    .await;
    assert_eq!(
        containers_of(&docker, std::slice::from_ref(&built.tag)).await,
        Vec::<String>::new()
    );
    remove_image(&docker, &built.tag).await;
}
