//! Sandbox images without a registry: recipes in `sandboxes/`, a Debian rootfs by debootstrap, `docker import`.
//!
//! An image is tagged `gptx/<name>:<hash of its resolved recipe>`, so it is rebuilt only when the recipe
//! changes. The rootfs tree and the downloaded packages are kept under the cache directory, never in git.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

pub use crate::config::image::{Recipe, RecipeError};
use crate::config::suite::Home;

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("building image {name} needs root (debootstrap must chroot and set file owners); run it as root: sudo gptx images build {name}")]
    NotRoot { name: String },
    #[error("debootstrap is not installed; install it with: apt-get install -y debootstrap")]
    NoDebootstrap,
    #[error("debootstrap failed for image {name} (exit {code}); last lines:\n{tail}")]
    Debootstrap {
        name: String,
        code: i32,
        tail: String,
    },
    #[error("importing image {tag}: {message}")]
    Import { tag: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

/// The Debian mirror: `$GPTX_DEBIAN_MIRROR`, else the host's apt sources, else deb.debian.org.
pub fn mirror() -> String {
    if let Ok(m) = std::env::var("GPTX_DEBIAN_MIRROR") {
        return m;
    }
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources") {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            let suites = field("Suites:").unwrap_or_default();
            if suites.split_whitespace().any(|s| !s.contains('-')) {
                if let Some(uri) =
                    field("URIs:").and_then(|u| u.split_whitespace().next().map(str::to_string))
                {
                    return uri;
                }
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
        for line in text.lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() >= 3 && parts[0] == "deb" && !parts[2].contains('-') {
                return parts[1].to_string();
            }
        }
    }
    "http://deb.debian.org/debian".into()
}

/// What `build` did.
#[derive(Debug, Clone, Serialize)]
pub struct Built {
    pub name: String,
    pub tag: String,
    pub id: String,
    /// False when the tag already existed and nothing was built.
    pub built: bool,
    pub seconds: f64,
}

/// Does the engine have this image? Returns its id.
pub async fn image_id(docker: &Docker, tag: &str) -> Result<Option<String>, ImageError> {
    match docker.inspect_image(tag).await {
        Ok(info) => Ok(info.id),
        Err(e) if crate::docker::engine::is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn spinner(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {prefix:.bold} [{elapsed}] {msg}")
            .expect("template"),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Builds image `name` unless its tag exists (or `force`). Holds a lock so concurrent builds wait.
pub async fn build(
    docker: &Docker,
    home: &Home,
    name: &str,
    force: bool,
    quiet: bool,
) -> Result<Built, ImageError> {
    let t0 = Instant::now();
    let recipe = Recipe::load(home, name)?;
    let tag = recipe.tag();
    let skipped = |id: String| Built {
        name: name.into(),
        tag: tag.clone(),
        id,
        built: false,
        seconds: t0.elapsed().as_secs_f64(),
    };
    if !force {
        if let Some(id) = image_id(docker, &tag).await? {
            return Ok(skipped(id));
        }
    }
    if !rustix::process::geteuid().is_root() {
        return Err(ImageError::NotRoot { name: name.into() });
    }
    if which("debootstrap").is_none() {
        return Err(ImageError::NoDebootstrap);
    }
    let cache = home.cache();
    let locks = cache.join("locks");
    std::fs::create_dir_all(&locks).map_err(io(locks.display().to_string()))?;
    let lock_path = locks.join(format!("image-{name}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(io(lock_path.display().to_string()))?;
    let pb = spinner(quiet);
    pb.set_prefix(format!("image {name}"));
    pb.set_message("waiting for another build of this image");
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|_| lock))
        .await
        .expect("lock task")
        .map_err(io(lock_path.display().to_string()))?;
    // Someone else may have built it while we waited.
    if !force {
        if let Some(id) = image_id(docker, &tag).await? {
            pb.finish_and_clear();
            return Ok(skipped(id));
        }
    }
    let rootfs = cache
        .join("rootfs")
        .join(format!("{name}-{}", recipe.hash()));
    let done_marker = rootfs.join(".gptx-rootfs-complete");
    if !done_marker.exists() {
        if rootfs.exists() {
            std::fs::remove_dir_all(&rootfs).map_err(io(rootfs.display().to_string()))?;
        }
        std::fs::create_dir_all(&rootfs).map_err(io(rootfs.display().to_string()))?;
        debootstrap(&recipe, &rootfs, &cache.join("debs"), &pb).await?;
        finish_rootfs(&recipe, &rootfs)?;
        std::fs::write(&done_marker, b"").map_err(io(done_marker.display().to_string()))?;
    }
    pb.set_message("importing into Docker");
    let id = import(docker, &recipe, &rootfs, &tag, &pb).await?;
    drop(lock);
    pb.finish_and_clear();
    Ok(Built {
        name: name.into(),
        tag,
        id,
        built: true,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The image for a run: its tag, built first if missing.
pub async fn ensure(docker: &Docker, home: &Home, name: &str) -> Result<Built, ImageError> {
    build(docker, home, name, false, false).await
}

fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

async fn debootstrap(
    recipe: &Recipe,
    rootfs: &Path,
    debs: &Path,
    pb: &ProgressBar,
) -> Result<(), ImageError> {
    std::fs::create_dir_all(debs).map_err(io(debs.display().to_string()))?;
    let debs = debs
        .canonicalize()
        .map_err(io(debs.display().to_string()))?;
    let mirror = mirror();
    pb.set_message(format!("debootstrap {} from {mirror}", recipe.suite));
    let mut cmd =
        tokio::process::Command::new(which("debootstrap").ok_or(ImageError::NoDebootstrap)?);
    cmd.arg(format!("--variant={}", recipe.variant));
    if !recipe.packages.is_empty() {
        cmd.arg(format!("--include={}", recipe.packages.join(",")));
    }
    cmd.arg(format!("--cache-dir={}", debs.display()))
        .arg(&recipe.suite)
        .arg(rootfs)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(io("debootstrap"))?;
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut err = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut tail: Vec<String> = Vec::new();
    let keep = |line: String, tail: &mut Vec<String>| {
        if tail.len() == 20 {
            tail.remove(0);
        }
        tail.push(line);
    };
    let (mut out_done, mut err_done) = (false, false);
    while !(out_done && err_done) {
        tokio::select! {
            l = out.next_line(), if !out_done => match l {
                Ok(Some(line)) => {
                    if let Some(msg) = line.strip_prefix("I: ") {
                        pb.set_message(msg.to_string());
                    }
                    keep(line, &mut tail);
                }
                _ => out_done = true,
            },
            l = err.next_line(), if !err_done => match l {
                Ok(Some(line)) => keep(line, &mut tail),
                _ => err_done = true,
            },
        }
    }
    let status = child.wait().await.map_err(io("debootstrap"))?;
    if !status.success() {
        return Err(ImageError::Debootstrap {
            name: recipe.name.clone(),
            code: status.code().unwrap_or(-1),
            tail: tail.join("\n"),
        });
    }
    Ok(())
}

/// Adds the sandbox user and the workspace, and drops apt's caches from the tree.
fn finish_rootfs(recipe: &Recipe, rootfs: &Path) -> Result<(), ImageError> {
    let (user, uid) = (&recipe.user, recipe.uid);
    let append = |file: &str, line: String| -> Result<(), ImageError> {
        let path = rootfs.join(file);
        let mut text = std::fs::read_to_string(&path).map_err(io(path.display().to_string()))?;
        if !text.lines().any(|l| l.starts_with(&format!("{user}:"))) {
            if !text.ends_with('\n') && !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&line);
            text.push('\n');
            std::fs::write(&path, text).map_err(io(path.display().to_string()))?;
        }
        Ok(())
    };
    append(
        "etc/passwd",
        format!("{user}:x:{uid}:{uid}:gptx sandbox user:/home/{user}:/bin/bash"),
    )?;
    append("etc/group", format!("{user}:x:{uid}:"))?;
    append("etc/shadow", format!("{user}:!:19000:0:99999:7:::"))?;
    for dir in [
        format!("home/{user}"),
        recipe.workdir.trim_start_matches('/').to_string(),
    ] {
        let path = rootfs.join(&dir);
        std::fs::create_dir_all(&path).map_err(io(path.display().to_string()))?;
        std::os::unix::fs::chown(&path, Some(uid), Some(uid))
            .map_err(io(path.display().to_string()))?;
    }
    for dir in ["var/lib/apt/lists", "var/cache/apt/archives"] {
        let path = rootfs.join(dir);
        if let Ok(rd) = std::fs::read_dir(&path) {
            for e in rd.flatten() {
                if e.path().is_file() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    Ok(())
}

async fn import(
    docker: &Docker,
    recipe: &Recipe,
    rootfs: &Path,
    tag: &str,
    pb: &ProgressBar,
) -> Result<String, ImageError> {
    let mut tar = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args([
            "--numeric-owner",
            "--exclude=./.gptx-rootfs-complete",
            "-cf",
            "-",
            ".",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io("tar"))?;
    let stdout = tar.stdout.take().expect("stdout");
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let body = tokio_util::io::ReaderStream::with_capacity(stdout, 1 << 20).inspect_ok(move |b| {
        counter.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
    });
    let (repo, version) = tag.split_once(':').expect("tag has a colon");
    let mut changes: Vec<String> = recipe
        .env
        .iter()
        .map(|(k, v)| format!("ENV {k}={v}"))
        .collect();
    changes.push(format!("WORKDIR {}", recipe.workdir));
    changes.push(format!("USER {}", recipe.user));
    changes.push("CMD [\"sleep\", \"infinity\"]".into());
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(version.into()),
        message: Some(format!(
            "gptx image {} built from sandboxes/{}.toml",
            recipe.name, recipe.name
        )),
        changes,
        ..Default::default()
    };
    let mut stream = docker.create_image(Some(options), Some(bollard::body_try_stream(body)), None);
    let ticker = {
        let pb = pb.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let mb = sent.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
                pb.set_message(format!("importing into Docker: {mb:.0} MB sent"));
            }
        })
    };
    let mut failure = None;
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            failure = Some(e.to_string());
            break;
        }
    }
    ticker.abort();
    let status = tar.wait().await.map_err(io("tar"))?;
    if let Some(message) = failure {
        return Err(ImageError::Import {
            tag: tag.into(),
            message,
        });
    }
    if !status.success() {
        return Err(ImageError::Import {
            tag: tag.into(),
            message: format!("tar of {} exited with {status}", rootfs.display()),
        });
    }
    image_id(docker, tag)
        .await?
        .ok_or_else(|| ImageError::Import {
            tag: tag.into(),
            message: "the engine accepted the import but has no such tag".into(),
        })
}
