//! Images from a recipe's toml built without root: `mmdebstrap --mode=unshare` makes the root filesystem as a tar in a user namespace; imported to a staging tag, measured, labelled and tagged.
//!
//! Inside the user namespace the build is root over a range of subordinate ids (`newuidmap`,
//! `/etc/subuid`, `/etc/subgid`), so the tar's files get their real owners, the sandbox user's
//! included, without privileges. The tar is kept under the cache (`rootfs/<name>-<hash>.tar`,
//! written as `.tar.partial` and renamed once whole). The engine imports it to a staging tag,
//! which is measured in containers and given its config (`ENV`, `WORKDIR`, `USER`, `CMD`), the
//! measured label and the recipe's tag by a metadata-only build, as a Dockerfile image is
//! ([`crate::docker::dockerfile::measure_and_tag`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use bollard::Docker;
use indicatif::ProgressBar;

use crate::config::image::Recipe;
use crate::docker::dockerfile;
use crate::docker::images::{self, io, ImageError, TarSource};

/// Builds `recipe`'s image without root and tags it `recipe.tag()`.
pub(super) async fn build(
    docker: &Docker,
    recipe: &Recipe,
    cache: &Path,
    pb: &ProgressBar,
) -> Result<(), ImageError> {
    let tar = tarball_ready(recipe, cache, pb).await?;
    let staging = dockerfile::staging_tag(&recipe.tag());
    pb.set_message("importing into Docker");
    // The config comes with the label, by a build: Podman 4.3 takes the import's `changes`, which
    // the API sends as one newline-joined value, as a single instruction.
    let source = TarSource::File(&tar);
    if let Err(e) = images::import(docker, recipe, source, &staging, vec![], pb).await {
        dockerfile::untag(docker, &staging).await;
        return Err(e);
    }
    let config = images::config(recipe);
    let tagged = dockerfile::measure_and_tag(docker, recipe, &staging, &config, pb).await;
    tagged.map_err(|e| labelling_failed(e, recipe, &staging))
}

/// A failed labelling build as an import error of the recipe's tag: the build error names a
/// Dockerfile this recipe does not have.
fn labelling_failed(e: ImageError, recipe: &Recipe, staging: &str) -> ImageError {
    match e {
        ImageError::Build { message, tail, .. } => ImageError::Import {
            tag: recipe.tag(),
            message: format!(
                "the build FROM {staging} adding its config and label failed: {message}\nlast lines:\n{tail}"
            ),
        },
        e => e,
    }
}

/// The recipe's root filesystem as a tar under the cache, made by mmdebstrap unless a whole one
/// is already there (only a finished build renames its `.tar.partial` to `.tar`).
async fn tarball_ready(
    recipe: &Recipe,
    cache: &Path,
    pb: &ProgressBar,
) -> Result<PathBuf, ImageError> {
    let dir = cache.join("rootfs");
    let stem = format!("{}-{}", recipe.name, recipe.hash());
    let tar = dir.join(format!("{stem}.tar"));
    if tar.is_file() {
        return Ok(tar);
    }
    std::fs::create_dir_all(&dir).map_err(io(dir.display().to_string()))?;
    let partial = dir.join(format!("{stem}.tar.partial"));
    if partial.exists() {
        std::fs::remove_file(&partial).map_err(io(partial.display().to_string()))?;
    }
    mmdebstrap(recipe, &partial, pb).await?;
    std::fs::rename(&partial, &tar).map_err(io(tar.display().to_string()))?;
    Ok(tar)
}

/// Runs `mmdebstrap --mode=unshare` for the recipe into the tar `out`, its `I: ` lines on the
/// progress bar.
async fn mmdebstrap(recipe: &Recipe, out: &Path, pb: &ProgressBar) -> Result<(), ImageError> {
    let program = images::which("mmdebstrap").ok_or_else(|| ImageError::NoMmdebstrap {
        name: recipe.name.clone(),
    })?;
    let mirror = images::mirror();
    pb.set_message(format!(
        "mmdebstrap {} from {mirror} (unshare)",
        recipe.suite
    ));
    let hooks = Some(Path::new(MERGED_USR)).filter(|d| d.is_dir());
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(mmdebstrap_args(recipe, out, &mirror, hooks));
    let name = recipe.name.clone();
    let fail = |code, tail| ImageError::Mmdebstrap { name, code, tail };
    images::run_builder(&mut cmd, "mmdebstrap", pb, fail).await
}

/// mmdebstrap's hooks that merge `/usr` as debootstrap does (directory symlinks, a dummy
/// `usr-is-merged`); without them apt picks `usrmerge`, which brings perl (some 50 MB).
const MERGED_USR: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

/// mmdebstrap's arguments: the recipe's suite, variant and packages from `mirror`, as an
/// uncompressed tar at `out`, `/usr` merged by the `merged_usr` hooks, finished by
/// [`customize_hook`].
fn mmdebstrap_args(
    recipe: &Recipe,
    out: &Path,
    mirror: &str,
    merged_usr: Option<&Path>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--mode=unshare".into(),
        "--format=tar".into(),
        format!("--variant={}", recipe.variant).into(),
    ];
    if let Some(hooks) = merged_usr {
        let mut arg = OsString::from("--hook-dir=");
        arg.push(hooks);
        args.push(arg);
    }
    if !recipe.packages.is_empty() {
        args.push(format!("--include={}", recipe.packages.join(",")).into());
    }
    args.push(format!("--customize-hook={}", customize_hook(recipe)).into());
    args.extend([recipe.suite.as_str().into(), out.into(), mirror.into()]);
    args
}

/// The script mmdebstrap runs on the finished tree (`$1`) in its user namespace, doing what
/// `images::finish_rootfs` does as root: the recipe's user in passwd, group and shadow (unless
/// there), its home and the workdir owned by it, apt's lists and downloaded packages emptied.
fn customize_hook(recipe: &Recipe) -> String {
    let (user, uid) = (recipe.user.as_str(), recipe.uid);
    let entry = |file: &str, line: String| {
        let (who, line) = (quote(user), quote(&line));
        format!("cut -d: -f1 {file} | grep -qxF -- {who} || printf '%s\\n' {line} >> {file}")
    };
    let dirs = [
        format!("home/{user}"),
        format!("./{}", recipe.workdir.trim_start_matches('/')),
    ]
    .map(|d| quote(&d))
    .join(" ");
    let apt = "var/lib/apt/lists var/cache/apt/archives";
    [
        "set -e".to_string(),
        "cd \"$1\"".into(),
        entry(
            "etc/passwd",
            format!("{user}:x:{uid}:{uid}:gptx sandbox user:/home/{user}:/bin/bash"),
        ),
        entry("etc/group", format!("{user}:x:{uid}:")),
        entry("etc/shadow", format!("{user}:!:19000:0:99999:7:::")),
        format!("mkdir -p -- {dirs}"),
        format!("chown -- {uid}:{uid} {dirs}"),
        format!("for d in {apt}; do if [ -d \"$d\" ]; then find \"$d\" -maxdepth 1 -type f -delete; fi; done"),
    ]
    .join("\n")
}

/// `s` single-quoted for `sh`: each `'` in it closes the quote, is escaped, and reopens it.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(user: &str, packages: &[&str]) -> Recipe {
        Recipe {
            name: "base".into(),
            description: String::new(),
            suite: "bookworm".into(),
            variant: "minbase".into(),
            packages: packages.iter().map(|p| p.to_string()).collect(),
            user: user.into(),
            uid: 1000,
            env: Default::default(),
            workdir: "/workspace".into(),
            builder_version: crate::config::image::BUILDER_VERSION,
            dockerfile: None,
        }
    }

    #[test]
    fn mmdebstrap_gets_the_recipe_as_a_tar_build_in_a_user_namespace() {
        let r = recipe("agent", &["python3", "python3-numpy"]);
        let out = Path::new("/c/rootfs/base-0123.tar.partial");
        let hooks = Some(Path::new(MERGED_USR));
        let args = mmdebstrap_args(&r, out, "http://deb.debian.org/debian", hooks);
        let hook = format!("--customize-hook={}", customize_hook(&r));
        let want = [
            "--mode=unshare",
            "--format=tar",
            "--variant=minbase",
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            "--include=python3,python3-numpy",
            &hook,
            "bookworm",
            "/c/rootfs/base-0123.tar.partial",
            "http://deb.debian.org/debian",
        ];
        assert_eq!(args, want.map(OsString::from));
        let args = mmdebstrap_args(&recipe("agent", &[]), out, "http://m/debian", None);
        let given = |flag: &str| args.iter().any(|a| a.to_string_lossy().starts_with(flag));
        assert!(!given("--include") && !given("--hook-dir"));
        assert_eq!(args.len(), 7);
    }

    #[test]
    fn the_hook_adds_the_user_and_its_directories() {
        let hook = customize_hook(&recipe("agent", &[]));
        assert_eq!(
            hook,
            [
                "set -e",
                "cd \"$1\"",
                "cut -d: -f1 etc/passwd | grep -qxF -- 'agent' || printf '%s\\n' 'agent:x:1000:1000:gptx sandbox user:/home/agent:/bin/bash' >> etc/passwd",
                "cut -d: -f1 etc/group | grep -qxF -- 'agent' || printf '%s\\n' 'agent:x:1000:' >> etc/group",
                "cut -d: -f1 etc/shadow | grep -qxF -- 'agent' || printf '%s\\n' 'agent:!:19000:0:99999:7:::' >> etc/shadow",
                "mkdir -p -- 'home/agent' './workspace'",
                "chown -- 1000:1000 'home/agent' './workspace'",
                "for d in var/lib/apt/lists var/cache/apt/archives; do if [ -d \"$d\" ]; then find \"$d\" -maxdepth 1 -type f -delete; fi; done",
            ]
            .join("\n")
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    /// Runs the hook with `sh` on a tree, as mmdebstrap does, with a `chown` that only records.
    fn run_hook(hook: &str, root: &Path, bin: &Path) {
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let status = std::process::Command::new("sh")
            .args(["-c", hook, "exec"])
            .arg(root)
            .env("PATH", path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn the_hook_runs_once_or_twice_to_the_same_tree_whatever_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let (root, bin) = (dir.path().join("root"), dir.path().join("bin"));
        for d in ["etc", "var/lib/apt/lists/partial", "var/cache/apt/archives"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::create_dir_all(&bin).unwrap();
        let (chown, log) = (bin.join("chown"), dir.path().join("chown.log"));
        std::fs::write(
            &chown,
            format!("#!/bin/sh\necho \"$@\" >> '{}'\n", log.display()),
        )
        .unwrap();
        let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&chown, exec).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nagentx:x:5:5::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        std::fs::write(root.join("var/lib/apt/lists/deb_Packages"), "x").unwrap();
        std::fs::write(root.join("var/cache/apt/archives/a.deb"), "x").unwrap();
        // A name with a quote and a `$` stays one word, never run.
        let hook = customize_hook(&recipe("a'g$ent", &[]));
        run_hook(&hook, &root, &bin);
        run_hook(&hook, &root, &bin);
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert_eq!(
            passwd,
            "root:x:0:0:root:/root:/bin/bash\nagentx:x:5:5::/:/bin/sh\na'g$ent:x:1000:1000:gptx sandbox user:/home/a'g$ent:/bin/bash\n"
        );
        let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
        assert_eq!(group, "root:x:0:\na'g$ent:x:1000:\n");
        assert!(root.join("home/a'g$ent").is_dir() && root.join("workspace").is_dir());
        let chowned = std::fs::read_to_string(&log).unwrap();
        assert_eq!(chowned, "-- 1000:1000 home/a'g$ent ./workspace\n".repeat(2));
        assert!(root.join("var/lib/apt/lists/partial").is_dir());
        assert!(!root.join("var/lib/apt/lists/deb_Packages").exists());
        assert!(!root.join("var/cache/apt/archives/a.deb").exists());
    }
}
