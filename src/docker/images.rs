//! Sandbox images without a registry: recipes in `sandboxes/`, a Debian rootfs by debootstrap (as root) or by mmdebstrap in a user namespace (`rootless`), imported into the engine.
//!
//! An image is tagged `gptx/<name>:<hash of its resolved recipe>`, so it is rebuilt only when the recipe
//! changes. The rootfs tree (a tar without root) and the downloaded packages are kept under the cache
//! directory, never in git.
//! Nodes that cannot reach a Debian mirror get built images as a docker-save tar: [`save`], [`load`].

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bollard::query_parameters::{CreateImageOptions, ImportImageOptions};
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub use crate::config::image::{ImageFacts, Recipe, RecipeError};
use crate::config::suite::Home;

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("debootstrap is not installed; install it with: apt-get install -y debootstrap")]
    NoDebootstrap,
    #[error("debootstrap failed for image {name} (exit {code}); last lines:\n{tail}")]
    Debootstrap {
        name: String,
        code: i32,
        tail: String,
    },
    /// Not root, and no mmdebstrap (or no newuidmap) to build in a user namespace.
    #[error("building image {name} without root needs mmdebstrap and newuidmap; install them with: apt-get install -y mmdebstrap uidmap (and /etc/subuid and /etc/subgid must give this user a range of subordinate ids, e.g. usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER), or build it as root")]
    NoMmdebstrap { name: String },
    /// `mmdebstrap --mode=unshare` failed: its exit code and last lines.
    #[error("mmdebstrap failed for image {name} (exit {code}); building without root needs uidmap and a range of subordinate ids for this user in /etc/subuid and /etc/subgid; last lines:\n{tail}")]
    Mmdebstrap {
        name: String,
        code: i32,
        tail: String,
    },
    #[error("importing image {tag}: {message}")]
    Import { tag: String, message: String },
    #[error("image {name} ({tag}) is not built on this engine: build it first with `gptx images build {name}`")]
    NotBuilt { name: String, tag: String },
    /// The file is not a (complete) docker-save tar.
    #[error("{file}: {message}")]
    Archive { file: String, message: String },
    #[error("saving images to {file}: {message}")]
    Save { file: String, message: String },
    #[error("loading {file}: the engine refused it: {message}")]
    Load { file: String, message: String },
    #[error("loading {file}: the engine took it but has no {tag} afterwards")]
    NotLoaded { file: String, tag: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A Dockerfile build failed: at which step, the engine's message and the last lines.
    #[error("building image {name} from sandboxes/{name}.Dockerfile failed at {step}: {message}\nlast lines:\n{tail}")]
    Build {
        name: String,
        step: String,
        message: String,
        tail: String,
    },
    /// The image cannot host a sandbox as SPEC §5 has it.
    #[error("image {name} ({tag}) breaks the sandbox profile: {reason}")]
    Profile {
        name: String,
        tag: String,
        reason: String,
    },
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
}

/// An I/O error's wrapper, naming what was being done.
pub(super) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
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
    /// What was measured in the image when it was built (None: built before images were measured).
    pub facts: Option<ImageFacts>,
}

/// Does the engine have this image? Returns its id.
pub async fn image_id(docker: &Docker, tag: &str) -> Result<Option<String>, ImageError> {
    Ok(image_with_facts(docker, tag).await?.map(|(id, _)| id))
}

/// The image's id and what was measured in it at build, when the engine has it.
async fn image_with_facts(
    docker: &Docker,
    tag: &str,
) -> Result<Option<(String, Option<ImageFacts>)>, ImageError> {
    match docker.inspect_image(tag).await {
        Ok(info) => Ok(info.id.map(|id| {
            let labels = info.config.and_then(|c| c.labels);
            (id, crate::docker::probe::from_labels(labels.as_ref()))
        })),
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
/// An image that cannot host a sandbox ([`crate::docker::profile`]) is refused with the reason,
/// built or found.
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
    let found = match force {
        true => None,
        false => image_with_facts(docker, &tag).await?,
    };
    let ((id, facts), built) = match found {
        Some(found) => (found, false),
        None => make(docker, home, &recipe, force, quiet).await?,
    };
    crate::docker::profile::check(docker, &recipe, &tag).await?;
    Ok(Built {
        name: name.into(),
        tag,
        id,
        built,
        seconds: t0.elapsed().as_secs_f64(),
        facts,
    })
}

/// Makes the recipe's image under its build lock: from its Dockerfile (its `FROM gptx/<name>`
/// images first) or from a Debian root filesystem. False when another build made it meanwhile.
async fn make(
    docker: &Docker,
    home: &Home,
    recipe: &Recipe,
    force: bool,
    quiet: bool,
) -> Result<((String, Option<ImageFacts>), bool), ImageError> {
    let tag = recipe.tag();
    if let Some(df) = &recipe.dockerfile {
        for base in &df.bases {
            Box::pin(build(docker, home, base, false, quiet)).await?;
        }
    } else {
        debian_builder(recipe)?;
    }
    let pb = spinner(quiet);
    pb.set_prefix(format!("image {}", recipe.name));
    let lock = build_lock(&home.cache(), &recipe.name, &pb).await?;
    // Someone else may have built it while we waited.
    if let Some(found) = image_with_facts(docker, &tag).await?.filter(|_| !force) {
        pb.finish_and_clear();
        return Ok((found, false));
    }
    match &recipe.dockerfile {
        Some(df) => crate::docker::dockerfile::build(docker, recipe, df, force, &pb).await?,
        None => from_debian(docker, recipe, &home.cache(), &pb).await?,
    }
    drop(lock);
    pb.finish_and_clear();
    let found = image_with_facts(docker, &tag).await?;
    let found = found.ok_or_else(|| ImageError::Import {
        tag: tag.clone(),
        message: "the engine made the image but has no such tag".into(),
    })?;
    Ok((found, true))
}

/// Refuses a Debian recipe whose builder is missing: debootstrap as root, else mmdebstrap and
/// newuidmap (a build in a user namespace).
fn debian_builder(recipe: &Recipe) -> Result<(), ImageError> {
    if rustix::process::geteuid().is_root() {
        which("debootstrap").ok_or(ImageError::NoDebootstrap)?;
    } else if which("mmdebstrap").is_none() || which("newuidmap").is_none() {
        return Err(ImageError::NoMmdebstrap {
            name: recipe.name.clone(),
        });
    }
    Ok(())
}

/// The recipe's image from a Debian root filesystem: as root, debootstrapped into a tree, measured
/// there and imported with its facts; otherwise by mmdebstrap in a user namespace
/// ([`crate::docker::rootless`]).
async fn from_debian(
    docker: &Docker,
    recipe: &Recipe,
    cache: &Path,
    pb: &ProgressBar,
) -> Result<(), ImageError> {
    if !rustix::process::geteuid().is_root() {
        return crate::docker::rootless::build(docker, recipe, cache, pb).await;
    }
    let rootfs = rootfs_ready(recipe, cache, pb).await?;
    let facts = measured(&rootfs, recipe, pb).await;
    pb.set_message("importing into Docker");
    let (source, changes) = (TarSource::Dir(&rootfs), changes(recipe, &facts));
    import(docker, recipe, source, &recipe.tag(), changes, pb).await?;
    Ok(())
}

/// Waits for (and takes) the lock on building image `name`.
async fn build_lock(
    cache: &Path,
    name: &str,
    pb: &ProgressBar,
) -> Result<std::fs::File, ImageError> {
    let locks = cache.join("locks");
    std::fs::create_dir_all(&locks).map_err(io(locks.display().to_string()))?;
    let lock_path = locks.join(format!("image-{name}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(io(lock_path.display().to_string()))?;
    pb.set_message("waiting for another build of this image");
    tokio::task::spawn_blocking(move || lock.lock().map(|_| lock))
        .await
        .expect("lock task")
        .map_err(io(lock_path.display().to_string()))
}

/// The recipe's root filesystem under the cache: debootstrapped and finished, unless a complete
/// one is already there.
async fn rootfs_ready(
    recipe: &Recipe,
    cache: &Path,
    pb: &ProgressBar,
) -> Result<PathBuf, ImageError> {
    let rootfs = cache
        .join("rootfs")
        .join(format!("{}-{}", recipe.name, recipe.hash()));
    let done_marker = rootfs.join(".gptx-rootfs-complete");
    if !done_marker.exists() {
        if rootfs.exists() {
            std::fs::remove_dir_all(&rootfs).map_err(io(rootfs.display().to_string()))?;
        }
        std::fs::create_dir_all(&rootfs).map_err(io(rootfs.display().to_string()))?;
        debootstrap(recipe, &rootfs, &cache.join("debs"), pb).await?;
        finish_rootfs(recipe, &rootfs)?;
        std::fs::write(&done_marker, b"").map_err(io(done_marker.display().to_string()))?;
    }
    Ok(rootfs)
}

/// What the probe measures in the root filesystem; nothing (with a warning) when it fails: an
/// image is not refused for that.
async fn measured(rootfs: &Path, recipe: &Recipe, pb: &ProgressBar) -> ImageFacts {
    pb.set_message("measuring the image: libraries, BLAS, a float32 matmul");
    crate::docker::probe::measure(rootfs, recipe)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!("image {}: not measured: {e}", recipe.name);
            ImageFacts::default()
        })
}

/// The image for a run: its tag, built first if missing (and refused, as [`build`] does, if it
/// cannot host a sandbox).
pub async fn ensure(docker: &Docker, home: &Home, name: &str) -> Result<Built, ImageError> {
    build(docker, home, name, false, false).await
}

/// The path of program `cmd`: on `$PATH`, else in `/usr/sbin` or `/sbin`.
pub(super) fn which(cmd: &str) -> Option<PathBuf> {
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
        .arg(&mirror);
    let name = recipe.name.clone();
    let fail = |code, tail| ImageError::Debootstrap { name, code, tail };
    run_builder(&mut cmd, "debootstrap", pb, fail).await
}

/// Runs a root filesystem's builder (debootstrap, mmdebstrap) with its output on the progress
/// line; when it fails, `fail` makes the error of its exit code and last lines.
pub(super) async fn run_builder(
    cmd: &mut tokio::process::Command,
    what: &'static str,
    pb: &ProgressBar,
    fail: impl FnOnce(i32, String) -> ImageError,
) -> Result<(), ImageError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.kill_on_drop(true).spawn().map_err(io(what))?;
    let tail = follow(&mut child, pb).await;
    let status = child.wait().await.map_err(io(what))?;
    match status.success() {
        true => Ok(()),
        false => Err(fail(status.code().unwrap_or(-1), tail.join("\n"))),
    }
}

/// Lines of a debootstrap's or mmdebstrap's output kept for an error.
const TAIL: usize = 20;

/// Reads a child's stdout and stderr to their ends: its `I: ` lines go to the progress bar, and
/// the last [`TAIL`] lines of both are returned.
pub(super) async fn follow(child: &mut tokio::process::Child, pb: &ProgressBar) -> Vec<String> {
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut err = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut tail: Vec<String> = Vec::new();
    let mut keep = |line: String| {
        if let Some(msg) = line.strip_prefix("I: ") {
            pb.set_message(msg.to_string());
        }
        if tail.len() == TAIL {
            tail.remove(0);
        }
        tail.push(line);
    };
    let (mut out_done, mut err_done) = (false, false);
    while !(out_done && err_done) {
        tokio::select! {
            l = out.next_line(), if !out_done => match l {
                Ok(Some(line)) => keep(line),
                _ => out_done = true,
            },
            l = err.next_line(), if !err_done => match l {
                Ok(Some(line)) => keep(line),
                _ => err_done = true,
            },
        }
    }
    tail
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

/// What [`import`] sends the engine: the tar stream of a root filesystem tree (made by `tar`), or a
/// tar file.
pub(super) enum TarSource<'a> {
    Dir(&'a Path),
    File(&'a Path),
}

/// A reader of the source's tar, and the `tar` making it (for a tree), which the caller waits for.
fn open_tar(source: &TarSource) -> Result<(TarReader, Option<tokio::process::Child>), ImageError> {
    let rootfs = match source {
        TarSource::File(path) => {
            let file = std::fs::File::open(path).map_err(io(path.display().to_string()))?;
            return Ok((Box::new(tokio::fs::File::from_std(file)), None));
        }
        TarSource::Dir(rootfs) => rootfs,
    };
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
    Ok((Box::new(stdout), Some(tar)))
}

/// A tar stream read by [`import`].
type TarReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// Imports the source's tar as image `tag` with the config `changes` (as [`changes`] makes them);
/// returns its id.
pub(super) async fn import(
    docker: &Docker,
    recipe: &Recipe,
    source: TarSource<'_>,
    tag: &str,
    changes: Vec<String>,
    pb: &ProgressBar,
) -> Result<String, ImageError> {
    let (reader, tar) = open_tar(&source)?;
    // The whole reference as `repo` (the API allows a tag in it): Podman 4.3 ignores `tag`.
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(tag.into()),
        message: Some(format!(
            "gptx image {} built from sandboxes/{}.toml",
            recipe.name, recipe.name
        )),
        changes,
        ..Default::default()
    };
    let failure = send(docker, options, reader, pb).await;
    let fail = |message: String| ImageError::Import {
        tag: tag.into(),
        message,
    };
    let status = match tar {
        Some(mut tar) => Some(tar.wait().await.map_err(io("tar"))?),
        None => None,
    };
    if let Some(message) = failure {
        return Err(fail(message));
    }
    if let (Some(status), TarSource::Dir(rootfs)) = (status, &source) {
        if !status.success() {
            let message = format!("tar of {} exited with {status}", rootfs.display());
            return Err(fail(message));
        }
    }
    image_id(docker, tag)
        .await?
        .ok_or_else(|| fail("the engine accepted the import but has no such tag".into()))
}

/// Streams a tar into the engine's image import, with the megabytes sent on the progress bar; the
/// engine's error, if any.
async fn send(
    docker: &Docker,
    options: CreateImageOptions,
    reader: TarReader,
    pb: &ProgressBar,
) -> Option<String> {
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let body = tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20).inspect_ok(move |b| {
        counter.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
    });
    let mut stream = docker.create_image(Some(options), Some(bollard::body_try_stream(body)), None);
    let ticker = {
        let pb = pb.clone();
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
    failure
}

/// The image's config: the recipe's environment, workdir and user, and what was measured in it.
fn changes(recipe: &Recipe, facts: &ImageFacts) -> Vec<String> {
    let mut changes = config(recipe);
    changes.push(crate::docker::probe::label(facts));
    changes
}

/// The recipe's environment, workdir, user and command, as Dockerfile instructions.
pub(super) fn config(recipe: &Recipe) -> Vec<String> {
    let env = recipe.env.iter().map(|(k, v)| format!("ENV {k}={v}"));
    env.chain([
        format!("WORKDIR {}", recipe.workdir),
        format!("USER {}", recipe.user),
        "CMD [\"sleep\", \"infinity\"]".into(),
    ])
    .collect()
}

/// The most `manifest.json` (and a PAX or GNU long-name header) of a docker-save tar may hold.
const MANIFEST_MAX: u64 = 1 << 20;
const BLOCK: u64 = 512;

/// One image of a docker-save tar, as its `manifest.json` lists it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ArchiveImage {
    /// The image's config file in the tar: `<hex>.json`, or `blobs/sha256/<hex>` (OCI layout).
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

impl ArchiveImage {
    /// The image id the engine gives it: `sha256:` and the digest of its config.
    pub fn id(&self) -> String {
        let mut parts = self.config.rsplit('/');
        let hex = parts.next().unwrap_or_default();
        let algo = match (parts.next(), parts.next()) {
            (Some(algo), Some("blobs")) => algo,
            _ => "sha256",
        };
        format!("{algo}:{}", hex.trim_end_matches(".json"))
    }

    /// Its tags (an image saved by id has none).
    pub fn tags(&self) -> &[String] {
        self.repo_tags.as_deref().unwrap_or_default()
    }
}

/// What a docker-save tar holds, read from its headers and `manifest.json` without unpacking it.
#[derive(Debug, Clone)]
pub struct Archive {
    pub images: Vec<ArchiveImage>,
    /// Every entry but directories (files, links), by path, with its data size.
    pub entries: BTreeMap<String, u64>,
    /// The size of the tar file.
    pub bytes: u64,
}

impl Archive {
    /// Bytes of the image's config and layers in the tar.
    pub fn image_bytes(&self, image: &ArchiveImage) -> u64 {
        std::iter::once(&image.config)
            .chain(&image.layers)
            .filter_map(|p| self.entries.get(p.trim_start_matches("./")))
            .sum()
    }
}

/// Reads a docker-save tar's table of contents and `manifest.json`: every header is checked and
/// every entry must fit in the file, so a truncated or foreign file is refused before any of it
/// reaches the engine.
pub fn read_archive(path: &Path) -> Result<Archive, ImageError> {
    let file = path.display().to_string();
    let bad = |message: String| ImageError::Archive {
        file: file.clone(),
        message,
    };
    let unreadable = |e: std::io::Error| ImageError::Archive {
        file: file.clone(),
        message: format!("cannot read it: {e}"),
    };
    let mut f = std::fs::File::open(path).map_err(unreadable)?;
    let meta = f.metadata().map_err(unreadable)?;
    if meta.is_dir() {
        return Err(bad("is a directory, not a docker-save tar".into()));
    }
    let len = meta.len();
    if len == 0 {
        return Err(bad("is empty, not a docker-save tar".into()));
    }
    let read_at = |f: &mut std::fs::File, at: u64, buf: &mut [u8]| -> Result<(), ImageError> {
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.read_exact(buf))
            .map_err(unreadable)
    };
    let mut entries = BTreeMap::new();
    let mut manifest: Option<Vec<u8>> = None;
    let mut long_name: Option<String> = None;
    let mut pax_size: Option<u64> = None;
    let mut header = [0u8; BLOCK as usize];
    let mut pos = 0u64;
    // A tar ends with zero blocks; one that stops at a block boundary is read as Docker reads it.
    while pos < len {
        if pos == 0 && len < BLOCK {
            let mut start = vec![0u8; len as usize];
            read_at(&mut f, 0, &mut start)?;
            return Err(bad(not_a_tar(&start)));
        }
        if pos + BLOCK > len {
            return Err(bad(format!(
                "truncated: the file ends at byte {len}, inside the tar header at byte {pos}"
            )));
        }
        read_at(&mut f, pos, &mut header)?;
        if header.iter().all(|&b| b == 0) {
            break;
        }
        if !checksum_ok(&header) {
            return Err(bad(if pos == 0 {
                not_a_tar(&header)
            } else {
                format!("corrupt tar header at byte {pos}")
            }));
        }
        let raw_size = header_size(&header[124..136])
            .ok_or_else(|| bad(format!("corrupt size in the tar header at byte {pos}")))?;
        let kind = header[156];
        let data = pos + BLOCK;
        let size = match kind {
            b'x' | b'g' | b'L' => raw_size,
            _ => pax_size.take().unwrap_or(raw_size),
        };
        let name = match kind {
            b'x' | b'g' | b'L' => String::new(),
            _ => long_name.take().unwrap_or_else(|| header_name(&header)),
        };
        if data.saturating_add(size) > len {
            let what = if name.is_empty() {
                "a tar header"
            } else {
                &name
            };
            return Err(bad(format!(
                "truncated: {what} needs {size} bytes from byte {data} but the file ends at byte {len}"
            )));
        }
        let mut read_data = |what: &str| -> Result<Vec<u8>, ImageError> {
            if size > MANIFEST_MAX {
                return Err(bad(format!(
                    "{what} at byte {pos} is {size} bytes, more than {MANIFEST_MAX}: not a docker-save tar"
                )));
            }
            let mut buf = vec![0u8; size as usize];
            read_at(&mut f, data, &mut buf)?;
            Ok(buf)
        };
        match kind {
            b'L' => {
                let buf = read_data("a long-name header")?;
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                long_name = Some(String::from_utf8_lossy(&buf[..end]).into_owned());
            }
            b'x' => {
                let buf = read_data("a PAX header")?;
                for (key, value) in pax_records(&buf) {
                    match key {
                        "path" => long_name = Some(value.to_string()),
                        "size" => pax_size = value.parse().ok(),
                        _ => {}
                    }
                }
            }
            b'g' | b'5' => {}
            _ => {
                let name = name.trim_start_matches("./").to_string();
                if name == "manifest.json" {
                    manifest = Some(read_data("manifest.json")?);
                }
                entries.insert(name, size);
            }
        }
        pos = data + size.div_ceil(BLOCK) * BLOCK;
    }
    let Some(manifest) = manifest else {
        return Err(bad(
            "has no manifest.json: not a docker-save tar (`gptx images save` and `docker save` write one)"
                .into(),
        ));
    };
    let images: Vec<ArchiveImage> = serde_json::from_slice(&manifest)
        .map_err(|e| bad(format!("manifest.json is not a docker-save manifest: {e}")))?;
    if images.is_empty() {
        return Err(bad("manifest.json lists no image".into()));
    }
    for image in &images {
        for part in std::iter::once(&image.config).chain(&image.layers) {
            if !entries.contains_key(part.trim_start_matches("./")) {
                return Err(bad(format!(
                    "incomplete: manifest.json names {part} but the tar has no such file"
                )));
            }
        }
    }
    Ok(Archive {
        images,
        entries,
        bytes: len,
    })
}

fn checksum_ok(header: &[u8; BLOCK as usize]) -> bool {
    let Some(want) = octal(&header[148..156]) else {
        return false;
    };
    let field = 148..156;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in header.iter().enumerate() {
        let b = if field.contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    want == unsigned || i64::try_from(want).is_ok_and(|w| w == signed)
}

fn not_a_tar(header: &[u8]) -> String {
    let what = if header.starts_with(&[0x1f, 0x8b]) {
        "is gzip-compressed: gunzip it first (`gptx images save` writes a plain tar)"
    } else if header.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
        "is xz-compressed: unxz it first (`gptx images save` writes a plain tar)"
    } else if header.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "is zstd-compressed: unzstd it first (`gptx images save` writes a plain tar)"
    } else {
        "is not a tar archive, so not a docker-save tar (`gptx images save` writes one)"
    };
    what.into()
}

fn octal(field: &[u8]) -> Option<u64> {
    let digits: &[u8] = {
        let start = field.iter().position(|&b| b != b' ')?;
        let field = &field[start..];
        let end = field
            .iter()
            .position(|&b| b == 0 || b == b' ')
            .unwrap_or(field.len());
        &field[..end]
    };
    if digits.is_empty() || !digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok()
}

/// A header's size field: octal, or base-256 when its first bit is set (GNU, for 8 GiB and more).
fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        if field[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    octal(field)
}

fn header_name(header: &[u8; BLOCK as usize]) -> String {
    let cstr = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let name = cstr(&header[0..100]);
    // POSIX ustar splits long paths into a prefix; GNU tar ("ustar  ") uses that space otherwise.
    if &header[257..263] == b"ustar\0" {
        let prefix = cstr(&header[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

/// The `<len> <key>=<value>\n` records of a PAX extended header.
fn pax_records(buf: &[u8]) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = buf;
    while let Some(sp) = rest.iter().position(|&b| b == b' ') {
        let Some(n) = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
        else {
            break;
        };
        if n <= sp + 1 || n > rest.len() {
            break;
        }
        let record = &rest[sp + 1..n];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Ok(text) = std::str::from_utf8(record) {
            if let Some((k, v)) = text.split_once('=') {
                out.push((k, v));
            }
        }
        rest = &rest[n..];
    }
    out
}

/// One image `save` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SavedImage {
    pub name: String,
    pub tag: String,
    pub id: String,
    /// Bytes of its config and layers in the tar.
    pub bytes: u64,
}

/// What `save` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Saved {
    pub file: PathBuf,
    pub images: Vec<SavedImage>,
    /// The size of the tar.
    pub bytes: u64,
    pub seconds: f64,
}

/// Writes the built images `names` (their recipes' tags) to one docker-save tar at `out`: streamed
/// from the engine into a temporary file beside it, checked, synced, then renamed into place.
pub async fn save(
    docker: &Docker,
    home: &Home,
    names: &[String],
    out: &Path,
    quiet: bool,
) -> Result<Saved, ImageError> {
    let t0 = Instant::now();
    let mut wanted: Vec<(String, String, String)> = Vec::new();
    for name in names {
        if wanted.iter().any(|(n, ..)| n == name) {
            continue;
        }
        let tag = Recipe::load(home, name)?.tag();
        let Some(id) = image_id(docker, &tag).await? else {
            return Err(ImageError::NotBuilt {
                name: name.clone(),
                tag,
            });
        };
        wanted.push((name.clone(), tag, id));
    }
    let file = out.display().to_string();
    let Some(file_name) = out.file_name() else {
        return Err(ImageError::Save {
            file,
            message: "not a file name".into(),
        });
    };
    if out.is_dir() {
        return Err(ImageError::Save {
            file,
            message: "is a directory".into(),
        });
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let fail = {
        let file = file.clone();
        move |message: String| ImageError::Save {
            file: file.clone(),
            message,
        }
    };
    if !dir.is_dir() {
        return Err(fail(format!("no directory {}", dir.display())));
    }
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", file_name.to_string_lossy()))
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(|e| {
            fail(format!(
                "cannot create a file in {}: {}",
                dir.display(),
                e.kind()
            ))
        })?;
    let tmp_name = tmp.path().display().to_string();
    let write_err = |e: std::io::Error| fail(format!("writing {tmp_name}: {e}"));
    let pb = spinner(quiet);
    pb.set_prefix("save");
    pb.set_message(format!("exporting to {file}"));
    let tags: Vec<&str> = wanted.iter().map(|(_, t, _)| t.as_str()).collect();
    let mut stream = std::pin::pin!(docker.export_images(&tags));
    let handle = tmp.as_file().try_clone().map_err(write_err)?;
    let mut w = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(handle));
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| fail(e.to_string()))?;
        w.write_all(&chunk).await.map_err(write_err)?;
        bytes += chunk.len() as u64;
        pb.set_message(format!("{:.0} MB written to {file}", bytes as f64 / 1e6));
    }
    w.flush().await.map_err(write_err)?;
    w.into_inner().sync_all().await.map_err(write_err)?;
    pb.set_message(format!("checking {file}"));
    let check = tmp.path().to_path_buf();
    let archive = tokio::task::spawn_blocking(move || read_archive(&check))
        .await
        .expect("archive task")
        .map_err(|e| fail(format!("the engine's export is not a docker-save tar: {e}")))?;
    let mut images = Vec::new();
    for (name, tag, id) in wanted {
        let Some(image) = archive.images.iter().find(|i| i.tags().contains(&tag)) else {
            return Err(fail(format!(
                "the engine's export has no {tag} in its manifest.json"
            )));
        };
        images.push(SavedImage {
            bytes: archive.image_bytes(image),
            name,
            tag,
            id,
        });
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(write_err)?;
    }
    tmp.persist(out)
        .map_err(|e| fail(format!("renaming {tmp_name} into place: {}", e.error)))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail(format!("syncing {}: {e}", dir.display())))?;
    pb.finish_and_clear();
    Ok(Saved {
        file: out.to_path_buf(),
        images,
        bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// How a loaded tag stands against this checkout's recipes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipeMatch {
    /// It is the tag of this checkout's recipe: runs here use it.
    Matches,
    /// This checkout's recipe of that name has another tag (given): runs here build their own.
    Differs(String),
    /// `gptx/<name>:…` but this checkout has no (readable) recipe `name`.
    NoRecipe,
    /// Not a `gptx/<name>:<tag>` tag.
    NotGptx,
}

/// One tag `load` brought in.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedImage {
    pub tag: String,
    /// The recipe name of a `gptx/<name>:<tag>` tag.
    pub name: Option<String>,
    /// Its id on the engine now.
    pub id: String,
    /// The id the tag had before, if it existed.
    pub before: Option<String>,
    pub recipe: RecipeMatch,
}

/// What `load` did.
#[derive(Debug, Clone, Serialize)]
pub struct Loaded {
    pub file: PathBuf,
    pub images: Vec<LoadedImage>,
    /// The size of the tar.
    pub bytes: u64,
    pub seconds: f64,
}

/// The recipe name of a `gptx/<name>:<tag>` tag.
pub fn gptx_name(tag: &str) -> Option<&str> {
    let (name, version) = tag.strip_prefix("gptx/")?.split_once(':')?;
    (!name.is_empty() && !name.contains('/') && !version.is_empty()).then_some(name)
}

/// Loads a docker-save tar (as `save` writes) into the engine, streaming the file; then checks that
/// every tag it names is there and how each stands against this checkout's recipes.
pub async fn load(
    docker: &Docker,
    home: &Home,
    file: &Path,
    quiet: bool,
) -> Result<Loaded, ImageError> {
    let t0 = Instant::now();
    let name = file.display().to_string();
    let path = file.to_path_buf();
    let archive = tokio::task::spawn_blocking(move || read_archive(&path))
        .await
        .expect("archive task")?;
    let tags: Vec<String> = archive
        .images
        .iter()
        .flat_map(|i| i.tags().iter().cloned())
        .collect();
    if !tags.iter().any(|t| gptx_name(t).is_some()) {
        return Err(ImageError::Archive {
            file: name,
            message: format!(
                "holds no gptx/<name>:<tag> image (its tags: {}): not written by `gptx images save`",
                if tags.is_empty() {
                    "none".to_string()
                } else {
                    tags.join(", ")
                }
            ),
        });
    }
    let mut before = Vec::new();
    for tag in &tags {
        before.push(image_id(docker, tag).await?);
    }
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|e| ImageError::Archive {
            file: name.clone(),
            message: format!("cannot read it: {e}"),
        })?;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let body = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).inspect_ok(move |b| {
        counter.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
    });
    let pb = spinner(quiet);
    pb.set_prefix("load");
    let options = ImportImageOptions {
        quiet: true,
        ..Default::default()
    };
    let mut stream = docker.import_image(options, bollard::body_try_stream(body), None);
    let ticker = {
        let pb = pb.clone();
        let sent = sent.clone();
        let total = archive.bytes as f64 / 1e6;
        tokio::spawn(async move {
            loop {
                let mb = sent.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
                pb.set_message(format!(
                    "loading into Docker: {mb:.0} of {total:.0} MB sent"
                ));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let mut failure = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(msg) = info.stream {
                    tracing::debug!("docker load: {}", msg.trim_end());
                }
            }
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    ticker.abort();
    pb.finish_and_clear();
    if let Some(message) = failure {
        return Err(ImageError::Load {
            file: name,
            message,
        });
    }
    let mut images = Vec::new();
    for (tag, before) in tags.into_iter().zip(before) {
        let Some(id) = image_id(docker, &tag).await? else {
            return Err(ImageError::NotLoaded { file: name, tag });
        };
        let recipe_name = gptx_name(&tag).map(str::to_string);
        let recipe = match &recipe_name {
            None => RecipeMatch::NotGptx,
            Some(n) => match Recipe::load(home, n) {
                Ok(r) if r.tag() == tag => RecipeMatch::Matches,
                Ok(r) => RecipeMatch::Differs(r.tag()),
                Err(_) => RecipeMatch::NoRecipe,
            },
        };
        images.push(LoadedImage {
            tag,
            name: recipe_name,
            id,
            before,
            recipe,
        });
    }
    Ok(Loaded {
        file: file.to_path_buf(),
        images,
        bytes: archive.bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A docker-save-shaped tar made by the system's `tar` in `format`.
    fn make_tar(dir: &Path, format: &str, manifest: &str) -> PathBuf {
        let src = dir.join(format!("src-{format}"));
        let layer = "a".repeat(64);
        std::fs::create_dir_all(src.join(&layer)).unwrap();
        std::fs::write(src.join(format!("{}.json", "c".repeat(64))), "{}").unwrap();
        std::fs::write(src.join(&layer).join("layer.tar"), vec![7u8; 3000]).unwrap();
        // A path too long for a plain header, so PAX / GNU long names are exercised.
        let deep = src.join("d".repeat(90)).join("e".repeat(90));
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), "x").unwrap();
        std::fs::write(src.join("manifest.json"), manifest).unwrap();
        let out = dir.join(format!("{format}.tar"));
        let status = std::process::Command::new("tar")
            .arg(format!("--format={format}"))
            .arg("-C")
            .arg(&src)
            .arg("-cf")
            .arg(&out)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        out
    }

    fn manifest() -> String {
        format!(
            r#"[{{"Config":"{}.json","RepoTags":["gptx/base:0123456789ab"],"Layers":["{}/layer.tar"]}}]"#,
            "c".repeat(64),
            "a".repeat(64)
        )
    }

    #[test]
    fn archives_are_read_from_their_headers_and_bad_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        for format in ["pax", "gnu", "ustar"] {
            let tar = make_tar(dir.path(), format, &manifest());
            let a = read_archive(&tar).unwrap_or_else(|e| panic!("{format}: {e}"));
            assert_eq!(a.images.len(), 1);
            assert_eq!(a.images[0].tags(), ["gptx/base:0123456789ab"]);
            assert_eq!(a.images[0].id(), format!("sha256:{}", "c".repeat(64)));
            assert_eq!(a.image_bytes(&a.images[0]), 3002);
            if format != "ustar" {
                let deep = format!("{}/{}/f", "d".repeat(90), "e".repeat(90));
                assert_eq!(a.entries.get(&deep), Some(&1), "{format}: {:?}", a.entries);
            }
            // Cut inside an entry: truncated.
            let bytes = std::fs::read(&tar).unwrap();
            let cut = dir.path().join(format!("{format}-cut.tar"));
            std::fs::write(&cut, &bytes[..1700]).unwrap();
            let e = read_archive(&cut).unwrap_err().to_string();
            assert!(
                e.contains("truncated") && e.contains(&cut.display().to_string()),
                "{e}"
            );
        }
        let tar = make_tar(dir.path(), "pax", "[]");
        let e = read_archive(&tar).unwrap_err().to_string();
        assert!(e.contains("lists no image"), "{e}");
        let tar = make_tar(
            dir.path(),
            "gnu",
            &manifest().replace("layer.tar", "other.tar"),
        );
        let e = read_archive(&tar).unwrap_err().to_string();
        assert!(e.contains("incomplete") && e.contains("other.tar"), "{e}");
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello\n".repeat(200)).unwrap();
        let e = read_archive(&text).unwrap_err().to_string();
        assert!(e.contains("notes.txt") && e.contains("not a tar"), "{e}");
        let empty = dir.path().join("empty.tar");
        std::fs::write(&empty, "").unwrap();
        assert!(read_archive(&empty)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let e = read_archive(&dir.path().join("missing.tar"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.tar"), "{e}");
    }

    #[test]
    fn gptx_tags_name_their_recipe() {
        assert_eq!(gptx_name("gptx/base:0123"), Some("base"));
        assert_eq!(gptx_name("gptx/base"), None);
        assert_eq!(gptx_name("debian:bookworm"), None);
        assert_eq!(gptx_name("gptx/a/b:1"), None);
        let oci = ArchiveImage {
            config: format!("blobs/sha256/{}", "f".repeat(64)),
            repo_tags: None,
            layers: vec![],
        };
        assert_eq!(oci.id(), format!("sha256:{}", "f".repeat(64)));
        assert!(oci.tags().is_empty());
    }
}
