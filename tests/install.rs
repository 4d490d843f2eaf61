//! `cargo install` of gptx, run with its checkout gone: it finds its suites, worlds and recipes in itself.

mod common;

use std::path::Path;
use std::process::Command;

/// What `cargo install --path` needs of a checkout.
const SOURCES: [&str; 8] = [
    "Cargo.toml",
    "Cargo.lock",
    "build.rs",
    "src",
    "supervisor",
    "tasks",
    "sandboxes",
    "benches",
];

/// Copies a tree, passing over hidden files and Python's caches (and a file removed meanwhile).
fn copy(from: &Path, to: &Path) {
    let name = from.file_name().unwrap().to_string_lossy();
    if name.starts_with('.') || name == "__pycache__" {
        return;
    }
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy(&e.path(), &to.join(e.file_name()));
        }
    } else if let Err(e) = std::fs::copy(from, to) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::NotFound,
            "{}: {e}",
            from.display()
        );
    }
}

/// The installed gptx, run from an empty directory with no checkout anywhere, as a user whose
/// cache is `home/.cache`.
fn installed(bin: &Path, cwd: &Path, home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .env_remove("GPTX_HOME")
        .env_remove("GPTX_CACHE_DIR")
        .env_remove("GPTX_RUNS_DIR")
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

/// Installs a copy of the checkout into a temporary root (a debug build, in a target directory of
/// its own under `target/`), removes the copy, and runs `gptx world show` and the `mini` suite
/// with the null agent from an empty directory: the task files come from the binary, unpacked
/// into the user's cache, and the world is built there too. `--home` then points it at a checkout.
#[tokio::test(flavor = "multi_thread")]
async fn an_installed_gptx_runs_the_main_job_with_its_checkout_gone() {
    let (docker, _) = common::docker_and_image().await;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let [src, root, home, work] = ["src", "root", "home", "work"].map(|d| tmp.path().join(d));
    std::fs::create_dir_all(&src).unwrap();
    for name in SOURCES {
        copy(&repo.join(name), &src.join(name));
    }
    let status = Command::new(env!("CARGO"))
        .args([
            "install",
            "--debug",
            "--locked",
            "--offline",
            "--quiet",
            "--path",
        ])
        .arg(&src)
        .arg("--root")
        .arg(&root)
        .env("CARGO_TARGET_DIR", repo.join("target/install-test"))
        .status()
        .unwrap();
    assert!(status.success(), "cargo install: {status}");
    std::fs::remove_dir_all(&src).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let bin = root.join("bin/gptx");

    let (code, out, err) = installed(&bin, &work, &home, &["world", "show", "--suite", "mini"]);
    assert_eq!(code, 0, "world show: {out}\n{err}");
    assert!(out.contains("xz"), "the baseline ladder: {out}");
    let cache = home.join(".cache/gptx");
    let unpacked: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        unpacked.iter().any(|n| n.starts_with("home-")),
        "{unpacked:?}"
    );
    assert!(
        unpacked.iter().any(|n| n == "worlds"),
        "the world is cached there: {unpacked:?}"
    );

    let args = [
        "run", "--suite", "mini", "--agent", "null", "--json", "--quiet",
    ];
    let (code, out, err) = installed(&bin, &work, &home, &args);
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(code, 0, "the run finished: {out}\n{err}");
    assert_eq!(v["level"], "L0", "a null agent passes nothing: {v}");
    assert!(work.join("runs").is_dir(), "runs go where it is run");
    common::assert_nothing_left(&docker, &v).await;

    // --home points it at a checkout (edited task files); one without tasks/suites is refused.
    let with_home = ["--home", repo.to_str().unwrap(), "world", "show", "--json"];
    let (code, out, err) = installed(&bin, &work, &home, &with_home);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, _, err) = installed(
        &bin,
        &work,
        &home,
        &["--home", "/nonexistent", "world", "show"],
    );
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("/nonexistent, which has no tasks/suites/"),
        "{err}"
    );
}
