//! Sandbox images without a registry: recipes in `sandboxes/`, a Debian rootfs by debootstrap, `docker import`.
//!
//! An image is tagged `gptx/<name>:<hash of its resolved recipe>`, so it is rebuilt only when the recipe
//! changes. The rootfs tree and the downloaded packages are kept under the cache directory, never in git.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::config::suite::Home;

/// Bumped when the way images are assembled changes, so old tags are not reused.
const BUILDER_VERSION: u32 = 1;

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {message}")]
    Recipe { path: String, message: String },
    #[error("no image recipe {name:?} (looked for {path}; available: {available})")]
    NoRecipe {
        name: String,
        path: String,
        available: String,
    },
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    extends: Option<String>,
    #[serde(default)]
    suite: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    workdir: Option<String>,
}

/// A recipe with its parents folded in: everything that decides the image's content.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    pub suite: String,
    pub variant: String,
    pub packages: Vec<String>,
    pub user: String,
    pub uid: u32,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    pub builder_version: u32,
}

impl Recipe {
    /// Loads `sandboxes/<name>.toml`, following `extends`.
    pub fn load(home: &Home, name: &str) -> Result<Self, ImageError> {
        let mut chain = Vec::new();
        let mut next = Some(name.to_string());
        while let Some(n) = next {
            if chain.iter().any(|r: &RawRecipe| r.name == n) {
                return Err(ImageError::Recipe {
                    path: home.sandboxes().display().to_string(),
                    message: format!("recipes extend each other in a loop at {n:?}"),
                });
            }
            let path = home.sandboxes().join(format!("{n}.toml"));
            if !path.exists() {
                return Err(ImageError::NoRecipe {
                    name: n,
                    path: path.display().to_string(),
                    available: available(home).join(", "),
                });
            }
            let text = std::fs::read_to_string(&path).map_err(io(path.display().to_string()))?;
            let raw: RawRecipe = toml::from_str(&text).map_err(|e| ImageError::Recipe {
                path: path.display().to_string(),
                message: e.to_string().trim_end().to_string(),
            })?;
            if raw.name != n {
                return Err(ImageError::Recipe {
                    path: path.display().to_string(),
                    message: format!("name = {:?} but the file is {n}.toml", raw.name),
                });
            }
            next = raw.extends.clone();
            chain.push(raw);
        }
        // Fold from the root ancestor down.
        let mut r = Recipe {
            name: name.to_string(),
            description: chain[0].description.clone(),
            suite: "bookworm".into(),
            variant: "minbase".into(),
            packages: vec![],
            user: "agent".into(),
            uid: 1000,
            env: BTreeMap::new(),
            workdir: "/workspace".into(),
            builder_version: BUILDER_VERSION,
        };
        for raw in chain.iter().rev() {
            if let Some(s) = &raw.suite {
                r.suite = s.clone();
            }
            if let Some(v) = &raw.variant {
                r.variant = v.clone();
            }
            r.packages.extend(raw.packages.iter().cloned());
            if let Some(u) = &raw.user {
                r.user = u.clone();
            }
            if let Some(u) = raw.uid {
                r.uid = u;
            }
            r.env.extend(raw.env.clone());
            if let Some(w) = &raw.workdir {
                r.workdir = w.clone();
            }
        }
        r.packages.sort();
        r.packages.dedup();
        Ok(r)
    }

    /// First 12 hex digits of the SHA-256 of the resolved recipe.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("recipe json");
        crate::trace::sha256_hex(&json)[..12].to_string()
    }

    /// `gptx/<name>:<hash>`.
    pub fn tag(&self) -> String {
        format!("gptx/{}:{}", self.name, self.hash())
    }
}

fn available(home: &Home) -> Vec<String> {
    crate::config::suite::toml_names(&home.sandboxes())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_resolve_with_parents_and_hash_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sandboxes")).unwrap();
        std::fs::write(
            dir.path().join("sandboxes/a.toml"),
            "name = \"a\"\npackages = [\"python3\"]\nenv = { LANG = \"C.UTF-8\" }\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sandboxes/b.toml"),
            "name = \"b\"\nextends = \"a\"\npackages = [\"python3-torch\", \"python3\"]\n",
        )
        .unwrap();
        let home = Home {
            root: dir.path().to_path_buf(),
        };
        let b = Recipe::load(&home, "b").unwrap();
        assert_eq!(b.packages, ["python3", "python3-torch"]);
        assert_eq!(b.env["LANG"], "C.UTF-8");
        assert!(b.tag().starts_with("gptx/b:"));
        let a = Recipe::load(&home, "a").unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), Recipe::load(&home, "a").unwrap().hash());
        let e = Recipe::load(&home, "zz").unwrap_err().to_string();
        assert!(e.contains("a, b"), "{e}");
        std::fs::write(
            dir.path().join("sandboxes/c.toml"),
            "name = \"c\"\npackage = []\n",
        )
        .unwrap();
        let e = Recipe::load(&home, "c").unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("package"), "{e}");
    }
}
