//! Disk limits that hold inside the sandbox: each workspace is its own loop-mounted ext4 image of the suite's `disk_mb`.
//!
//! The storage driver here (fuse-overlayfs) has no per-container size option, so the harness makes
//! the limit itself: a sparse image file of `disk_mb`, formatted ext4 with no reserved blocks and the
//! sandbox user as the root directory's owner, mounted `nosuid,nodev` over the workspace directory.
//! A write past it fails inside the sandbox with ENOSPC, and the host loses at most the image's size.
//! At the end the contents are copied out (`cp -a --sparse=always`: links stay links, FIFOs stay
//! FIFOs, holes stay holes), the image is unmounted and deleted, so the run directory looks as it did
//! without a limit. Mounting needs root; without it the workspace is an ordinary directory and the
//! run's trace says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::trace::rundir::RunDir;

/// Why a disk limit could not be made or undone.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("{what} {path}: {message}")]
    Failed {
        what: &'static str,
        path: String,
        message: String,
    },
}

fn failed(what: &'static str, path: &Path, message: impl Into<String>) -> QuotaError {
    QuotaError::Failed {
        what,
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn run(what: &'static str, path: &Path, cmd: &mut Command) -> Result<(), QuotaError> {
    let out = cmd
        .output()
        .map_err(|e| failed(what, path, format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(
            what,
            path,
            format!(
                "{cmd:?} exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

/// A mounted, size-limited workspace.
#[derive(Debug)]
pub struct Quota {
    pub mount: PathBuf,
    pub image: PathBuf,
    pub megabytes: u64,
    mounted: bool,
}

/// Whether this process can make disk limits (it runs as root).
pub fn available() -> bool {
    rustix::process::geteuid().is_root()
}

impl Quota {
    /// Mounts a fresh `megabytes` ext4 image (at `image`) over the empty directory `mount`, its root
    /// owned by `owner`.
    pub fn mount(
        mount: &Path,
        image: &Path,
        megabytes: u64,
        owner: (u32, u32),
    ) -> Result<Self, QuotaError> {
        std::fs::create_dir_all(mount).map_err(|e| failed("creating", mount, e.to_string()))?;
        let f =
            std::fs::File::create(image).map_err(|e| failed("creating", image, e.to_string()))?;
        f.set_len(megabytes * 1024 * 1024)
            .map_err(|e| failed("sizing", image, e.to_string()))?;
        drop(f);
        run(
            "formatting",
            image,
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-O", "^has_journal", "-E"])
                .arg(format!(
                    "root_owner={}:{},lazy_itable_init=1",
                    owner.0, owner.1
                ))
                .arg(image),
        )?;
        run(
            "mounting",
            mount,
            Command::new("mount")
                .args(["-o", "loop,nosuid,nodev"])
                .arg(image)
                .arg(mount),
        )?;
        // mkfs leaves lost+found: the workspace starts empty.
        let _ = std::fs::remove_dir(mount.join("lost+found"));
        Ok(Self {
            mount: mount.to_path_buf(),
            image: image.to_path_buf(),
            megabytes,
            mounted: true,
        })
    }

    /// Copies the contents out (when `keep`), unmounts, deletes the image; the mount point is left
    /// as an ordinary directory holding what the workspace held.
    pub fn release(mut self, keep: bool) -> Result<(), QuotaError> {
        self.mounted = false;
        let parent = self.mount.parent().unwrap_or(Path::new("."));
        let kept = parent.join(format!(
            ".{}.kept",
            self.mount.file_name().unwrap_or_default().to_string_lossy()
        ));
        let copied = if keep {
            copy_tree(&self.mount, &kept)
        } else {
            Ok(())
        };
        // Unmounted whatever happened to the copy; when the copy failed the image stays, so
        // nothing of the workspace is lost.
        unmount(&self.mount)?;
        if let Err(e) = copied {
            return Err(failed(
                "keeping",
                &self.mount,
                format!("{e}; the workspace is kept in {}", self.image.display()),
            ));
        }
        let _ = std::fs::remove_file(&self.image);
        if keep {
            std::fs::remove_dir(&self.mount)
                .and_then(|_| std::fs::rename(&kept, &self.mount))
                .map_err(|e| failed("restoring", &self.mount, e.to_string()))?;
        }
        Ok(())
    }
}

impl Drop for Quota {
    fn drop(&mut self) {
        if self.mounted {
            let _ = unmount(&self.mount);
            let _ = std::fs::remove_file(&self.image);
        }
    }
}

/// Copies the tree `from` to the new directory `to` without following anything: links stay links,
/// FIFOs and sockets are made anew (never opened), holes stay holes, owners and modes are kept
/// (`cp -a --sparse=always`). A failed copy leaves no partial `to`.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), QuotaError> {
    let _ = std::fs::remove_dir_all(to);
    let r = run(
        "copying",
        from,
        Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(from)
            .arg(to),
    );
    if r.is_err() {
        let _ = std::fs::remove_dir_all(to);
    }
    r
}

/// Copies the contents of the directory `from` into the existing directory `to`, as
/// [`copy_tree`] copies (`cp -a --sparse=always from/. to`).
pub fn copy_into(from: &Path, to: &Path) -> Result<(), QuotaError> {
    run(
        "copying",
        from,
        Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(from.join("."))
            .arg(to),
    )
}

/// Unmounts `path` (lazily when busy, so a leftover open file cannot keep it).
pub(crate) fn unmount(path: &Path) -> Result<(), QuotaError> {
    match run("unmounting", path, Command::new("umount").arg(path)) {
        Ok(()) => Ok(()),
        Err(_) => run(
            "unmounting",
            path,
            Command::new("umount").arg("-l").arg(path),
        ),
    }
}

/// Every workspace image gptx mounted and did not release (its process died): the mount point and
/// the run id (the nearest directory above it holding `run.json`), from /proc/self/mounts.
pub fn orphans() -> Vec<(PathBuf, String)> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (src, at) = (f.next()?, f.next()?);
            src.starts_with("/dev/loop")
                .then(|| PathBuf::from(at.replace("\\040", " ")))
        })
        .filter(|m| m.file_name().is_some_and(|n| n == "workspace"))
        .filter(|m| {
            m.parent()
                .is_some_and(|p| RunDir::new(p.to_path_buf()).workspace_image().exists())
        })
        .filter_map(|m| {
            let run = m
                .ancestors()
                .skip(1)
                .find(|a| RunDir::new(a.to_path_buf()).run_json().exists())?
                .file_name()?
                .to_string_lossy()
                .into_owned();
            Some((m, run))
        })
        .collect()
}

/// Releases a workspace image left mounted by a gptx that died: its contents are kept as a plain
/// directory, as a finished run's are.
pub fn release_orphan(mount: &Path) -> Result<(), QuotaError> {
    Quota {
        mount: mount.to_path_buf(),
        image: mount.with_file_name("workspace.img"),
        megabytes: 0,
        mounted: true,
    }
    .release(true)
}

/// The loop mounts of workspaces below `runs_dir`, from /proc/self/mounts (for `gptx gc`).
pub fn mounts_below(runs_dir: &Path) -> Vec<PathBuf> {
    let Ok(root) = runs_dir.canonicalize() else {
        return vec![];
    };
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(&root))
        .collect()
}
