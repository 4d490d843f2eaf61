//! Confinement of agent-supplied paths to the workspace: lexical checks, then kernel-enforced resolution.
//!
//! Every path an agent names goes through [`WorkspacePath::parse`] (no `..`, nothing absolute outside
//! `/workspace`, no NUL), and every open goes through `openat2(RESOLVE_BENEATH)` on a descriptor of the
//! workspace root, so a symlink that leaves the workspace is refused by the kernel, never followed.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// Where the workspace is mounted inside every sandbox.
pub const WORKSPACE: &str = "/workspace";

/// Why a path was refused or a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} contains '..'; paths must stay inside /workspace")]
    DotDot(String),
    #[error("path {0:?} is outside /workspace")]
    Outside(String),
    #[error("path {0:?} names the workspace itself, not a file")]
    Root(String),
    #[error("path {0:?} leaves /workspace through a symlink; refused")]
    SymlinkEscape(String),
    #[error("no such file: {0:?}")]
    NotFound(String),
    #[error("{path:?} is a directory, not a file")]
    IsDir { path: String },
    #[error("{path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A validated path relative to the workspace root (never empty, never with `..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspacePath {
    rel: PathBuf,
    shown: String,
}

impl WorkspacePath {
    /// Accepts `a/b`, `./a/b` and `/workspace/a/b`; refuses everything else with a reason.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.contains('\0') {
            return Err(PathError::Nul(raw.to_string()));
        }
        let path = Path::new(raw);
        let rest = if path.is_absolute() {
            match path.strip_prefix(WORKSPACE) {
                Ok(rest) => rest,
                Err(_) => return Err(PathError::Outside(raw.to_string())),
            }
        } else {
            path
        };
        let mut rel = PathBuf::new();
        for comp in rest.components() {
            match comp {
                Component::Normal(c) => rel.push(c),
                Component::CurDir => {}
                Component::ParentDir => return Err(PathError::DotDot(raw.to_string())),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(PathError::Outside(raw.to_string()))
                }
            }
        }
        if rel.as_os_str().is_empty() {
            return Err(PathError::Root(raw.to_string()));
        }
        Ok(Self {
            rel,
            shown: raw.to_string(),
        })
    }

    /// The path relative to the workspace root.
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    fn io(&self, source: std::io::Error) -> PathError {
        match source.raw_os_error() {
            Some(libc::EXDEV) | Some(libc::ELOOP) => PathError::SymlinkEscape(self.shown.clone()),
            Some(libc::ENOENT) => PathError::NotFound(self.shown.clone()),
            Some(libc::EISDIR) => PathError::IsDir {
                path: self.shown.clone(),
            },
            _ => PathError::Io {
                path: self.shown.clone(),
                source,
            },
        }
    }
}

/// What a workspace entry is, as [`WorkspaceRoot::walk`] saw it (links are never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// One entry below a workspace root: its relative path, kind and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
}

/// A workspace directory on the host, opened once; all file access goes beneath its descriptor.
#[derive(Debug)]
pub struct WorkspaceRoot {
    dir: OwnedFd,
    path: PathBuf,
    /// Owner given to files and directories the harness creates (the sandbox user), if it may chown.
    owner: Option<(u32, u32)>,
}

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

impl WorkspaceRoot {
    /// Opens `path` (which must be a directory) as a workspace root.
    pub fn open(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<Self> {
        let dir = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            dir,
            path: path.to_path_buf(),
            owner,
        })
    }

    /// The host directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads at most `limit` bytes of a file; returns the bytes and the file's full size.
    pub fn read(&self, p: &WorkspacePath, limit: u64) -> Result<(Vec<u8>, u64), PathError> {
        let fd = rustix::fs::openat2(
            &self.dir,
            p.rel(),
            // NONBLOCK: a FIFO planted by the agent must not hang the harness on open.
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
            beneath(),
        )
        .map_err(|e| p.io(e.into()))?;
        let mut file = File::from(fd);
        let meta = file.metadata().map_err(|e| p.io(e))?;
        if meta.is_dir() {
            return Err(PathError::IsDir {
                path: p.shown.clone(),
            });
        }
        if !meta.is_file() {
            return Err(p.io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let mut buf = Vec::with_capacity(meta.len().min(limit) as usize);
        (&mut file)
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| p.io(e))?;
        Ok((buf, meta.len()))
    }

    /// Every entry below the root but directories, sorted by path. Each directory is opened beneath
    /// the root with no symlink on its path, so a directory swapped for a link is never entered.
    pub fn walk(&self) -> std::io::Result<Vec<Entry>> {
        use rustix::fs::{AtFlags, FileType};
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let at = if rel.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                rel.clone()
            };
            let fd = rustix::fs::openat2(
                &self.dir,
                &at,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
                beneath() | ResolveFlags::NO_SYMLINKS,
            )
            .map_err(std::io::Error::from)?;
            let dir = rustix::fs::Dir::read_from(&fd).map_err(std::io::Error::from)?;
            for e in dir {
                let e = e.map_err(std::io::Error::from)?;
                let name = e.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                let name = std::ffi::OsStr::from_bytes(name);
                let st = match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    // Gone since it was listed.
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                };
                let r = rel.join(name);
                let kind = match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => {
                        stack.push(r);
                        continue;
                    }
                    FileType::RegularFile => EntryKind::File,
                    FileType::Symlink => EntryKind::Symlink,
                    _ => EntryKind::Other,
                };
                out.push(Entry {
                    path: r.to_string_lossy().into_owned(),
                    kind,
                    size: st.st_size.max(0) as u64,
                });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Opens a regular file for reading with no symlink anywhere on its path, never blocking (a FIFO
    /// or device is refused after a non-blocking open); the metadata is the opened file's own.
    pub fn open_regular(&self, p: &WorkspacePath) -> Result<(File, std::fs::Metadata), PathError> {
        let fd = rustix::fs::openat2(
            &self.dir,
            p.rel(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::NOFOLLOW,
            Mode::empty(),
            beneath() | ResolveFlags::NO_SYMLINKS,
        )
        .map_err(|e| p.io(e.into()))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| p.io(e))?;
        if !meta.is_file() {
            return Err(p.io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        Ok((file, meta))
    }

    /// Writes a whole file, creating parent directories; the final component may not be a symlink.
    pub fn write(&self, p: &WorkspacePath, data: &[u8]) -> Result<u64, PathError> {
        let mut prefix = PathBuf::new();
        let comps: Vec<_> = p.rel().components().collect();
        for comp in &comps[..comps.len() - 1] {
            prefix.push(comp);
            match rustix::fs::mkdirat(&self.dir, &prefix, Mode::from_raw_mode(0o755)) {
                Ok(()) => {
                    self.chown_beneath(&prefix, p)?;
                }
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(p.io(e.into())),
            }
            // Check the directory we are about to descend into stays beneath the root.
            rustix::fs::openat2(
                &self.dir,
                &prefix,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                beneath(),
            )
            .map_err(|e| p.io(e.into()))?;
        }
        let fd = rustix::fs::openat2(
            &self.dir,
            p.rel(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
            beneath(),
        )
        .map_err(|e| p.io(e.into()))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&fd, Some(uid), Some(gid)).map_err(|e| p.io(e))?;
        }
        let mut file = File::from(fd);
        file.write_all(data).map_err(|e| p.io(e))?;
        Ok(data.len() as u64)
    }

    fn chown_beneath(&self, rel: &Path, p: &WorkspacePath) -> Result<(), PathError> {
        if let Some((uid, gid)) = self.owner {
            let fd = rustix::fs::openat2(
                &self.dir,
                rel,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                beneath(),
            )
            .map_err(|e| p.io(e.into()))?;
            std::os::unix::fs::fchown(&fd, Some(uid), Some(gid)).map_err(|e| p.io(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_at_once_not_waited_on() {
        // An agent could plant data/corpus.jsonl as a FIFO; reading it must not hang the harness.
        let dir = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let root = WorkspaceRoot::open(dir.path(), None).unwrap();
        let err = root
            .read(&WorkspacePath::parse("fifo").unwrap(), 1024)
            .unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn lexical_rules() {
        assert_eq!(
            WorkspacePath::parse("a/b.txt").unwrap().rel(),
            Path::new("a/b.txt")
        );
        assert_eq!(
            WorkspacePath::parse("/workspace/./a").unwrap().rel(),
            Path::new("a")
        );
        assert!(matches!(
            WorkspacePath::parse("../etc/passwd"),
            Err(PathError::DotDot(_))
        ));
        assert!(matches!(
            WorkspacePath::parse("a/../../b"),
            Err(PathError::DotDot(_))
        ));
        assert!(matches!(
            WorkspacePath::parse("/etc/passwd"),
            Err(PathError::Outside(_))
        ));
        assert!(matches!(
            WorkspacePath::parse("/workspacex/a"),
            Err(PathError::Outside(_))
        ));
        assert!(matches!(
            WorkspacePath::parse("/workspace"),
            Err(PathError::Root(_))
        ));
        assert!(matches!(WorkspacePath::parse(""), Err(PathError::Empty)));
        assert!(matches!(
            WorkspacePath::parse("a\0b"),
            Err(PathError::Nul(_))
        ));
    }

    #[test]
    fn symlinks_out_are_refused_inside_are_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s3cret").unwrap();
        let ws = tempfile::tempdir().unwrap();
        std::fs::write(ws.path().join("real.txt"), b"hello").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), ws.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../", ws.path().join("up")).unwrap();
        std::os::unix::fs::symlink("real.txt", ws.path().join("inside")).unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.path().join("outdir")).unwrap();
        let root = WorkspaceRoot::open(ws.path(), None).unwrap();
        let p = |s| WorkspacePath::parse(s).unwrap();

        assert_eq!(root.read(&p("inside"), 100).unwrap().0, b"hello");
        for bad in ["abs", "up/secret", "outdir/secret"] {
            assert!(
                matches!(root.read(&p(bad), 100), Err(PathError::SymlinkEscape(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            root.write(&p("outdir/new"), b"x"),
            Err(PathError::SymlinkEscape(_))
        ));
        assert!(matches!(
            root.write(&p("abs"), b"x"),
            Err(PathError::SymlinkEscape(_))
        ));
        assert!(!outside.path().join("new").exists());
        assert_eq!(
            std::fs::read(outside.path().join("secret")).unwrap(),
            b"s3cret"
        );

        assert_eq!(root.write(&p("d/e/f.txt"), b"abc").unwrap(), 3);
        assert_eq!(root.read(&p("d/e/f.txt"), 2).unwrap(), (b"ab".to_vec(), 3));
        assert!(matches!(
            root.read(&p("d"), 10),
            Err(PathError::IsDir { .. })
        ));
        assert!(matches!(
            root.read(&p("missing"), 10),
            Err(PathError::NotFound(_))
        ));
    }
}
