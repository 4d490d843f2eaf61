//! `workspace.git`: a bare repository with one commit per step that changed the workspace (git2).
//!
//! The first snapshot walks the host view of the workspace; later ones look again only at the paths
//! the inotify tracker ([`super::watch`]) reported and at the files mapped writable, updating an
//! in-memory model of the last snapshot (`walk`), so a step that touches one file costs about that
//! file, not a walk of everything. Blob ids of files whose size, mtime, ctime and inode did not
//! change are reused (an mtime set back with `utime` still moves the ctime).
//! Files over [`LARGE_FILE`] are not committed; they are listed with size, allocated bytes and (up to
//! [`HASH_LIMIT`], when not sparse) SHA-256 in [`MANIFEST`] inside the commit. The walk goes through
//! directory descriptors and never follows a link or opens a FIFO; it stops reading after
//! [`SNAPSHOT_BUDGET`] and lists what it left out.

#[cfg(test)]
mod incremental_tests;
mod walk;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use git2::{FileMode, Oid, Repository, Signature};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::watch::Tracker;

/// Files larger than this are listed in the manifest instead of committed.
pub(crate) const LARGE_FILE: u64 = 10 * 1024 * 1024;
/// Large files up to this size (and not sparse) get a SHA-256 in the manifest; larger ones only
/// their size, so a snapshot never reads more than this of one file.
pub(crate) const HASH_LIMIT: u64 = 256 * 1024 * 1024;
/// How long one snapshot may walk and read; what is left when it runs out is listed as skipped.
pub(crate) const SNAPSHOT_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);
/// The manifest's path inside every commit that needs one.
pub(crate) const MANIFEST: &str = ".gptx-large-files.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Stamp {
    size: u64,
    mtime: i64,
    mtime_ns: i64,
    /// The change time, which no process can set back (an mtime can be: `utime`).
    ctime: i64,
    ctime_ns: i64,
    dev: u64,
    ino: u64,
    mode: u32,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            size: m.len(),
            mtime: m.mtime(),
            mtime_ns: m.mtime_nsec(),
            ctime: m.ctime(),
            ctime_ns: m.ctime_nsec(),
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
        }
    }

    /// Whether the change time is within a second of `started` (nanoseconds since the epoch): a
    /// write in the same clock tick after the file was read would leave the stamp as it was.
    fn racy(&self, started: i128) -> bool {
        self.changed(started).is_none()
    }

    /// The change time in nanoseconds since the epoch, unless it is [`Self::racy`].
    fn changed(&self, started: i128) -> Option<i128> {
        let changed = nanos(self.ctime, self.ctime_ns);
        (changed < started - 1_000_000_000).then_some(changed)
    }
}

/// Seconds and nanoseconds since the epoch as nanoseconds.
fn nanos(secs: i64, nsecs: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsecs)
}

/// A file too large to commit, as listed in the manifest.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct LargeFile {
    pub path: String,
    pub size: u64,
    /// Bytes the file takes on disk (far below `size` for a sparse file).
    pub allocated: u64,
    /// Its SHA-256, when it was hashed (see `note` when not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A file a commit lists as too large to hold, as [`WorkspaceHistory::restore`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreLarge {
    pub path: String,
    pub size: u64,
    /// Its SHA-256 when the snapshot hashed it: only a file with this hash is taken back.
    pub sha256: Option<String>,
}

/// A file left out of a snapshot because it could not be read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// The manifest as committed: entries in path order, whatever order the directories list them in.
#[derive(Serialize)]
struct Manifest<'a> {
    large_files: Vec<&'a LargeFile>,
    skipped: Vec<&'a Skipped>,
}

/// Which workspace files some live process in the sandbox has mapped shared and writable right now,
/// as the sandbox tells before a snapshot: a write through such a mapping reports no inotify event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// Workspace-relative paths (a path with `..` or a root is ignored), and the files' (device,
    /// inode): a descriptor whose name was removed still writes to the file's other names.
    Known {
        paths: Vec<PathBuf>,
        inodes: Vec<(u64, u64)>,
    },
    /// It could not be told, and why: the snapshot walks the whole workspace.
    Unknown(String),
}

/// The mapped files the sandbox told of, by name and by inode.
#[derive(Debug, Default)]
struct Told {
    paths: Vec<PathBuf>,
    inodes: Vec<walk::Ino>,
}

impl Told {
    /// What `mapped` tells, and why the snapshot must walk everything when it tells nothing.
    fn of(mapped: Mapped) -> (Self, Option<String>) {
        match mapped {
            Mapped::Known { paths, inodes } => {
                let paths = paths.iter().filter_map(|p| relative(p)).collect();
                (Self { paths, inodes }, None)
            }
            Mapped::Unknown(why) => (
                Self::default(),
                Some(format!(
                    "which files are mapped writable is not known ({why})"
                )),
            ),
        }
    }
}

/// What was read of each file, by the stamp it had: a file whose stamp is the same is not read again.
#[derive(Default)]
struct Cache {
    blobs: HashMap<PathBuf, (Stamp, Oid)>,
    digests: HashMap<PathBuf, (Stamp, String)>,
}

/// The run's workspace history.
pub struct WorkspaceHistory {
    repo: Repository,
    root: PathBuf,
    cache: Cache,
    head: Option<Oid>,
    head_tree: Option<Oid>,
    /// The last snapshot, which the next one updates along the paths the tracker reports.
    model: walk::Model,
    tracker: Option<Tracker>,
    /// Why there is no tracker (inotify could not be set up), when so.
    untracked: Option<String>,
    /// What [`Self::note_mapped`] told for the next snapshot.
    mapped: Option<Mapped>,
    /// The files mapped at the last snapshot: read again at the next one too.
    mapped_before: Told,
    /// Why the last snapshot walked everything though it had one to start from, when so.
    fell_back: Option<String>,
    walk_note: Option<String>,
    /// Whether the last snapshot walked the whole workspace (the tests look).
    #[cfg_attr(not(test), allow(dead_code))]
    walked_all: bool,
    /// Whether the last incremental snapshot swept every recorded file's stamp (the tests look).
    #[cfg_attr(not(test), allow(dead_code))]
    swept: bool,
}

impl WorkspaceHistory {
    fn with(repo: Repository, root: &Path, head: Option<Oid>, head_tree: Option<Oid>) -> Self {
        Self {
            repo,
            root: root.to_path_buf(),
            cache: Cache::default(),
            head,
            head_tree,
            model: walk::Model::default(),
            tracker: None,
            untracked: None,
            mapped: None,
            mapped_before: Default::default(),
            fell_back: None,
            walk_note: None,
            walked_all: false,
            swept: false,
        }
    }

    /// Creates `git_dir` as a bare repository recording snapshots of `workspace`.
    pub fn create(git_dir: &Path, workspace: &Path) -> Result<Self, git2::Error> {
        let repo = own_rules(Repository::init_bare(git_dir)?)?;
        Ok(Self::with(repo, workspace, None, None))
    }

    /// Opens the history of an interrupted run to go on recording it: the next commit's parent is
    /// `head` (the last commit the trace records; a later one the trace never mentions is left
    /// out of the branch), or none.
    pub fn open(git_dir: &Path, workspace: &Path, head: Option<&str>) -> Result<Self, git2::Error> {
        let repo = own_rules(Repository::open_bare(git_dir)?)?;
        let (head, head_tree) = match head {
            Some(h) => {
                let commit = repo.find_commit(Oid::from_str(h)?)?;
                repo.reference("refs/heads/main", commit.id(), true, "resume")?;
                repo.set_head("refs/heads/main")?;
                (Some(commit.id()), Some(commit.tree_id()))
            }
            None => (None, None),
        };
        Ok(Self::with(repo, workspace, head, head_tree))
    }

    /// Whether the tree at `other` (another copy of the workspace) is the one of the head commit
    /// (an empty tree when there is none), as a snapshot would record it: large files by size and
    /// hash. Nothing is committed.
    pub fn matches(&mut self, other: &Path) -> Result<bool, git2::Error> {
        let root = std::mem::replace(&mut self.root, other.to_path_buf());
        self.forget();
        let mut cx = walk::Cx::new(walk::Model::default(), HashSet::new(), None);
        let tree = self.walk_all(&mut cx);
        let tree = tree.and_then(|t| self.with_manifest(t, &cx.model));
        self.root = root;
        self.forget();
        let tree = tree?;
        Ok(match self.head_tree {
            Some(h) => h == tree,
            None => self.is_empty_tree(tree)?,
        })
    }

    /// Drops what is known of the files (blob and digest caches, the last snapshot's model): the
    /// next snapshot walks the workspace whole.
    fn forget(&mut self) {
        self.cache = Cache::default();
        self.model = walk::Model::default();
    }

    /// Whether the head commit records the workspace whole enough for [`Self::matches`] to stand
    /// for equality: every large file hashed, nothing left out (a skipped file, or a large file
    /// listed by size only, could have changed unseen). True without a head.
    pub fn head_is_whole(&self) -> Result<bool, git2::Error> {
        let Some(head) = self.head else {
            return Ok(true);
        };
        let tree = self.repo.find_commit(head)?.tree()?;
        let Some(m) = tree.get_name(MANIFEST) else {
            return Ok(true);
        };
        let blob = self.repo.find_blob(m.id())?;
        let v: serde_json::Value = serde_json::from_slice(blob.content()).unwrap_or_default();
        let hashed = v["large_files"]
            .as_array()
            .is_none_or(|l| l.iter().all(|f| f["sha256"].is_string()));
        let skipped = v["skipped"].as_array().is_some_and(|l| !l.is_empty());
        Ok(hashed && !skipped)
    }

    /// Writes the tree of `commit` into the empty directory `into`: directories, files with their
    /// modes and links as links, each new (nothing there is followed or overwritten), owned by
    /// `owner` when given. The manifest of large files is not written: its entries come back, for
    /// the caller to find again.
    pub fn restore(
        &self,
        commit: &str,
        into: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<Vec<RestoreLarge>, git2::Error> {
        let tree = self.repo.find_commit(Oid::from_str(commit)?)?.tree()?;
        let mut large = Vec::new();
        if let Some(m) = tree.get_name(MANIFEST) {
            let blob = self.repo.find_blob(m.id())?;
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(blob.content()) {
                for f in v["large_files"].as_array().into_iter().flatten() {
                    large.push(RestoreLarge {
                        path: f["path"].as_str().unwrap_or("").to_string(),
                        size: f["size"].as_u64().unwrap_or(0),
                        sha256: f["sha256"].as_str().map(str::to_string),
                    });
                }
            }
        }
        self.write_tree(&tree, into, true, owner)?;
        Ok(large)
    }

    fn write_tree(
        &self,
        tree: &git2::Tree,
        dir: &Path,
        top: bool,
        owner: Option<(u32, u32)>,
    ) -> Result<(), git2::Error> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err =
            |p: &Path, e: std::io::Error| git2::Error::from_str(&format!("{}: {e}", p.display()));
        for entry in tree.iter() {
            let Ok(name) = entry.name() else { continue };
            if top && name == MANIFEST {
                continue;
            }
            if name.contains('/') || name == "." || name == ".." || name.is_empty() {
                continue;
            }
            let path = dir.join(name);
            let mode = entry.filemode();
            match entry.kind() {
                Some(git2::ObjectType::Tree) => {
                    std::fs::create_dir(&path).map_err(|e| err(&path, e))?;
                    if let Some((u, g)) = owner {
                        std::os::unix::fs::chown(&path, Some(u), Some(g))
                            .map_err(|e| err(&path, e))?;
                    }
                    let sub = self.repo.find_tree(entry.id())?;
                    self.write_tree(&sub, &path, false, owner)?;
                }
                Some(git2::ObjectType::Blob) => {
                    let blob = self.repo.find_blob(entry.id())?;
                    if mode == i32::from(FileMode::Link) {
                        let target = std::ffi::OsStr::from_bytes(blob.content());
                        std::os::unix::fs::symlink(target, &path).map_err(|e| err(&path, e))?;
                        if let Some((u, g)) = owner {
                            std::os::unix::fs::lchown(&path, Some(u), Some(g))
                                .map_err(|e| err(&path, e))?;
                        }
                        continue;
                    }
                    let perm = if mode == i32::from(FileMode::BlobExecutable) {
                        0o755
                    } else {
                        0o644
                    };
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(perm)
                        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                        .open(&path)
                        .map_err(|e| err(&path, e))?;
                    f.write_all(blob.content()).map_err(|e| err(&path, e))?;
                    if let Some((u, g)) = owner {
                        std::os::unix::fs::fchown(&f, Some(u), Some(g))
                            .map_err(|e| err(&path, e))?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Snapshots the workspace; commits with `message` when the tree changed. Returns the new commit id.
    ///
    /// The first snapshot walks the whole workspace and watches every directory; later ones look
    /// again only at what the watches reported, at the files [`Self::note_mapped`] named and at
    /// the few entries no event can vouch for (files with several names, entries left out). The
    /// tree is the one a walk of the whole workspace would make.
    pub fn commit_if_changed(&mut self, message: &str) -> Result<Option<String>, git2::Error> {
        let tree = self.snapshot_tree()?;
        self.commit_tree(tree, message)
    }

    /// Tells which files are mapped shared and writable in the sandbox now, for the next snapshot
    /// (without a call, none are).
    pub fn note_mapped(&mut self, mapped: Mapped) {
        self.mapped = Some(mapped);
    }

    /// Once: why the last snapshot walked the whole workspace when it could have looked only at
    /// what changed (events lost, the watch limit, mapped files unknown, no inotify). The same
    /// reason twice in a row is told once.
    pub fn take_walk_note(&mut self) -> Option<String> {
        self.walk_note.take()
    }

    /// The tree a snapshot of the workspace makes (written to the repository, not committed).
    fn snapshot_tree(&mut self) -> Result<Oid, git2::Error> {
        let (fresh, unknown) = self.take_mapped();
        let mut cx = walk::Cx::new(std::mem::take(&mut self.model), fresh, self.tracker.take());
        let walked = self.walk(&mut cx, unknown);
        self.tracker = cx.tracker.take();
        self.model = std::mem::take(&mut cx.model);
        let (tree, fallback) = match walked {
            Ok(w) => w,
            Err(e) => {
                self.model = walk::Model::default();
                return Err(e);
            }
        };
        if fallback.is_some() && fallback != self.fell_back {
            self.walk_note = fallback
                .as_ref()
                .map(|r| format!("the snapshot walked the whole workspace: {r}"));
        }
        self.fell_back = fallback;
        self.with_manifest(tree, &self.model)
    }

    /// The paths [`Self::note_mapped`] named (and those of the snapshot before), and why the
    /// snapshot must walk everything when they are unknown.
    fn take_mapped(&mut self) -> (HashSet<PathBuf>, Option<String>) {
        let (now, unknown) = self.mapped.take().map(Told::of).unwrap_or_default();
        // Inodes by the names the model gives them now: told last time, a file may have been
        // linked under a new name in the same step.
        let before = std::mem::replace(&mut self.mapped_before, now);
        let names = |t: &Told| {
            let by_ino = t.inodes.iter().flat_map(|i| self.model.names_of(*i));
            t.paths.iter().chain(by_ino).cloned().collect::<Vec<_>>()
        };
        let fresh = names(&before).into_iter().chain(names(&self.mapped_before));
        (fresh.collect(), unknown)
    }

    /// Updates the last snapshot along what changed, or walks everything (the first snapshot, or
    /// for a reason: then the reason comes back with the root's tree).
    fn walk(
        &mut self,
        cx: &mut walk::Cx,
        unknown: Option<String>,
    ) -> Result<(Option<Oid>, Option<String>), git2::Error> {
        cx.all_fresh = unknown.is_some();
        cx.model.prune();
        let changes = cx.tracker.as_ref().map(Tracker::take).unwrap_or_default();
        self.take_feed(cx, changes.inodes, changes.opened)?;
        let mut reason = unknown
            .or(changes.full_walk)
            .or_else(|| self.no_tracker(cx));
        let previous = cx.model.root.take();
        let had_previous = previous.is_some();
        if let (Some(root), None) = (previous, &reason) {
            let marks = walk::Marks::of(&cx.model, changes.paths, &cx.fresh);
            self.walked_all = false;
            let walked = self.walk_marked(cx, root, &marks);
            match walked.and_then(|tree| self.follow_links(cx, tree)) {
                Ok(tree) => return Ok((tree, None)),
                Err(Some(e)) => return Err(e),
                Err(None) => reason = Some("the workspace directory was replaced".into()),
            }
        }
        // A new tracker: its watches are armed by the walk, before each directory is listed.
        cx.tracker = None;
        cx.tracker = self.start_tracker();
        self.walked_all = true;
        let tree = self.walk_all(cx)?;
        // The new feed saw no open made before it: the next snapshot asks the kernel of every file.
        cx.model.check_all = true;
        Ok((tree, reason.filter(|_| had_previous)))
    }

    /// Takes in what the inode feed says: the inodes changed (for a sweep), and the files some
    /// open file description may still write unseen, read again whatever their stamp.
    fn take_feed(
        &self,
        cx: &mut walk::Cx,
        changed: Option<HashSet<walk::Ino>>,
        opened: Option<HashSet<walk::Ino>>,
    ) -> Result<(), git2::Error> {
        cx.links.changed = changed;
        cx.links.carried = std::mem::take(&mut cx.model.sweep_next);
        if cx.tracker.as_ref().is_some_and(Tracker::fed) {
            let writers = cx.model.writers(&self.open_root()?, opened);
            cx.fresh.extend(writers);
        }
        Ok(())
    }

    /// Why `cx` has no tracker, when so.
    fn no_tracker(&self, cx: &walk::Cx) -> Option<String> {
        let why = || self.untracked.clone();
        cx.tracker
            .is_none()
            .then(|| why().unwrap_or_else(|| "no inotify tracker".into()))
    }

    /// A new inotify tracker, or none (and why, kept for the trace).
    fn start_tracker(&mut self) -> Option<Tracker> {
        let started = Tracker::start(Some(&self.root));
        self.untracked =
            (started.as_ref().err()).map(|e| format!("inotify could not be set up ({e})"));
        started.ok()
    }

    /// Looks again at the other recorded names of every file of several names the walk met, until
    /// no inode is new: a link made since the last snapshot (inside `.git`, say, where no name is
    /// recorded) must take the older name along when it is written through. When a name may have
    /// come and gone unseen, then sweeps every recorded file's stamp once.
    fn follow_links(
        &mut self,
        cx: &mut walk::Cx,
        mut tree: Option<Oid>,
    ) -> Result<Option<Oid>, Option<git2::Error>> {
        let mut done = HashSet::new();
        self.swept = false;
        loop {
            let mut marks = walk::Marks::default();
            let new: Vec<walk::Ino> = cx.links.seen.drain().filter(|i| done.insert(*i)).collect();
            for name in new.iter().flat_map(|i| cx.model.names_of(*i)) {
                marks.add(name, Default::default());
            }
            if marks.is_empty() && (cx.links.vanished || cx.links.carried) {
                marks = self.sweep(cx)?;
            }
            if marks.is_empty() {
                return Ok(tree);
            }
            let root = cx.model.root.take().ok_or(None)?;
            tree = self.walk_marked(cx, root, &marks)?;
        }
    }

    /// Stats the recorded files the inode feed names, or every one when it names nothing for sure.
    /// A write raises its inotify and its fanotify event in either order, so the two may fall
    /// into two snapshots: after a sweep the feed's inodes stood in for, the next snapshot sweeps
    /// its own feed's inodes too.
    fn sweep(&mut self, cx: &mut walk::Cx) -> Result<walk::Marks, Option<git2::Error>> {
        let only = cx.links.changed.take();
        self.swept = only.is_none();
        cx.model.sweep_next = only.is_some() && cx.links.vanished;
        (cx.links.vanished, cx.links.carried) = (false, false);
        let marks = cx.model.sweep(&self.open_root()?, only.as_ref());
        cx.links.changed = only;
        Ok(marks)
    }

    /// The workspace's tree with the manifest added at the top, when it lists anything.
    fn with_manifest(&self, tree: Option<Oid>, model: &walk::Model) -> Result<Oid, git2::Error> {
        if model.large.is_empty() && model.skipped.is_empty() {
            return match tree {
                Some(t) => Ok(t),
                None => self.repo.treebuilder(None)?.write(),
            };
        }
        let manifest = Manifest {
            large_files: model.large.values().collect(),
            skipped: model.skipped.values().collect(),
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest");
        let blob = self.repo.blob(&json)?;
        let base = tree.map(|id| self.repo.find_tree(id)).transpose()?;
        let mut b = self.repo.treebuilder(base.as_ref())?;
        b.insert(MANIFEST, blob, FileMode::Blob.into())?;
        b.write()
    }

    fn commit_tree(&mut self, tree: Oid, message: &str) -> Result<Option<String>, git2::Error> {
        let tree = match tree {
            t if Some(t) == self.head_tree => return Ok(None),
            t => t,
        };
        if self.head.is_none() && self.is_empty_tree(tree)? {
            self.head_tree = Some(tree);
            return Ok(None);
        }
        let sig = Signature::now("agent", "agent@gptx.invalid")?;
        let tree_obj = self.repo.find_tree(tree)?;
        let parent = self.head.map(|h| self.repo.find_commit(h)).transpose()?;
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let id = self.repo.commit(
            Some("refs/heads/main"),
            &sig,
            &sig,
            message,
            &tree_obj,
            &parents,
        )?;
        if self.head.is_none() {
            self.repo.set_head("refs/heads/main")?;
        }
        self.head = Some(id);
        self.head_tree = Some(tree);
        Ok(Some(id.to_string()))
    }

    /// The last commit, if any.
    pub fn head(&self) -> Option<String> {
        self.head.map(|h| h.to_string())
    }

    fn is_empty_tree(&self, tree: Oid) -> Result<bool, git2::Error> {
        Ok(self.repo.find_tree(tree)?.is_empty())
    }

    /// The blob of a regular file, opened without following a link and without blocking, its stamp
    /// taken from the open file; a large file goes into the manifest instead.
    fn file_blob(
        &mut self,
        dir: &OwnedFd,
        name: &std::ffi::OsStr,
        rel_path: &Path,
        cx: &mut walk::Cx,
    ) -> Result<Option<(Oid, FileMode)>, git2::Error> {
        let (file, meta) = match open_regular(dir, name) {
            Ok(f) => f,
            Err(why) => return Ok(cx.model.skipped(rel_path, why)),
        };
        let stamp = Stamp::of(&meta);
        cx.saw_file(rel_path, &meta, stamp.changed(cx.started));
        // A mapped file is read again whatever its stamp says; a stamp that moved within a second
        // of the snapshot is not trusted next time. A file of many names is read once a snapshot.
        let fresh = cx.all_fresh || cx.fresh.contains(rel_path);
        let trusted = !stamp.racy(cx.started);
        let mode =
            [FileMode::Blob, FileMode::BlobExecutable][usize::from(meta.mode() & 0o111 != 0)];
        if meta.len() > LARGE_FILE {
            let entry = self.large_once(cx, file, &meta, rel_path, (stamp, fresh, trusted));
            cx.model.large.insert(rel_path.to_path_buf(), entry);
            return Ok(None);
        }
        let cache = &self.cache.blobs;
        let cached = cache.get(rel_path).filter(|(s, _)| *s == stamp && !fresh);
        if let Some(oid) = cached
            .map(|c| c.1)
            .or_else(|| cx.read.blobs.get(&stamp).copied())
        {
            return Ok(Some((oid, mode)));
        }
        let mut data = Vec::with_capacity(meta.len() as usize);
        if let Err(e) = (&file).take(LARGE_FILE + 1).read_to_end(&mut data) {
            return Ok(cx.model.skipped(rel_path, e.to_string()));
        }
        let oid = self.blob(&data)?;
        cx.read.blobs.insert(stamp, oid);
        self.cache.blobs.remove(rel_path);
        if trusted {
            self.cache.blobs.insert(rel_path.into(), (stamp, oid));
        }
        Ok(Some((oid, mode)))
    }

    /// The blob of `data`, written only when the repository lacks it (writing costs a temporary
    /// file even when the object exists: 200,000 empty files would cost 200,000 of them).
    fn blob(&self, data: &[u8]) -> Result<Oid, git2::Error> {
        let oid = Oid::hash_object(git2::ObjectType::Blob, data)?;
        if self.repo.odb()?.exists(oid) {
            return Ok(oid);
        }
        self.repo.blob(data)
    }

    /// [`Self::large`], once a snapshot for each inode (the entry of another of its names, renamed).
    fn large_once(
        &mut self,
        cx: &mut walk::Cx,
        file: std::fs::File,
        meta: &std::fs::Metadata,
        rel: &Path,
        (stamp, fresh, trusted): (Stamp, bool, bool),
    ) -> LargeFile {
        let path = rel.display().to_string();
        if let Some(entry) = cx.read.large.get(&stamp) {
            return LargeFile {
                path,
                ..entry.clone()
            };
        }
        let entry = self.large(file, meta, rel, stamp, fresh, trusted);
        cx.read.large.insert(stamp, entry.clone());
        entry
    }

    /// The manifest entry of a file over [`LARGE_FILE`]: hashed when it is at most [`HASH_LIMIT`] and
    /// not sparse; otherwise only its size and allocated bytes, so a 40 GB hole costs nothing.
    fn large(
        &mut self,
        mut file: std::fs::File,
        meta: &std::fs::Metadata,
        rel: &Path,
        stamp: Stamp,
        fresh: bool,
        trusted: bool,
    ) -> LargeFile {
        let allocated = meta.blocks() * 512;
        let mut entry = LargeFile {
            path: rel.display().to_string(),
            size: meta.len(),
            allocated,
            sha256: None,
            note: None,
        };
        if meta.len() > HASH_LIMIT {
            entry.note = Some(format!(
                "not hashed: over the {} MiB hashing limit",
                HASH_LIMIT >> 20
            ));
            return entry;
        }
        if allocated < meta.len() / 2 {
            entry.note = Some("not hashed: sparse (mostly holes)".into());
            return entry;
        }
        let digests = &mut self.cache.digests;
        match digests.get(rel) {
            Some((s, d)) if *s == stamp && !fresh => {
                entry.sha256 = Some(d.clone());
                return entry;
            }
            _ => {}
        }
        match sha256_bounded(&mut file) {
            Ok(d) => {
                digests.remove(rel);
                if trusted {
                    digests.insert(rel.into(), (stamp, d.clone()));
                }
                entry.sha256 = Some(d);
            }
            Err(note) => entry.note = Some(note),
        }
        entry
    }
}

/// The history's repository, with the names its trees refuse set by its own config whatever the
/// host's git config says (`core.protectHFS` there would refuse `.g\u{200c}it`, and then every
/// snapshot of a workspace holding such a name would fail).
fn own_rules(repo: Repository) -> Result<Repository, git2::Error> {
    let mut config = repo.config()?;
    config.set_bool("core.protectHFS", false)?;
    config.set_bool("core.protectNTFS", true)?;
    drop(config);
    Ok(repo)
}

/// `p` as a workspace-relative path of names only, if it is one.
fn relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Opens a regular file without following a link or blocking on a FIFO; its metadata is the opened
/// file's. Err: why it was left out.
fn open_regular(
    dir: &OwnedFd,
    name: &std::ffi::OsStr,
) -> Result<(std::fs::File, std::fs::Metadata), String> {
    let flags =
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())
        .map_err(|e| std::io::Error::from(e).to_string())?;
    let file = std::fs::File::from(fd);
    match file.metadata() {
        Ok(m) if m.is_file() => Ok((file, m)),
        Ok(_) => Err("not a regular file when opened".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The SHA-256 of a file of at most [`HASH_LIMIT`] bytes; Err: why it is not hashed.
fn sha256_bounded(file: &mut std::fs::File) -> Result<String, String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = HASH_LIMIT;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hex::encode(h.finalize())),
            Ok(n) => {
                h.update(&buf[..n]);
                left = left.saturating_sub(n as u64);
                if left == 0 {
                    return Err("not hashed: it grew while it was read".into());
                }
            }
            Err(e) => return Err(format!("not hashed: {e}")),
        }
    }
}

/// One file changed by a commit.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileChange {
    pub path: String,
    /// added, deleted, modified, renamed, typechange.
    pub status: String,
    pub binary: bool,
    pub additions: usize,
    pub deletions: usize,
    /// The unified diff of this file (empty for binary files).
    pub patch: String,
}

/// What one workspace commit changed against its parent (the first commit: against nothing).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CommitDiff {
    pub commit: String,
    pub message: String,
    pub files: Vec<FileChange>,
    /// True when the patch text was cut at `max_patch_bytes`.
    pub truncated: bool,
}

/// The changes of `commit` in the bare repository `git_dir`, patches cut after `max_patch_bytes` in all.
pub fn commit_diff(
    git_dir: &Path,
    commit: &str,
    max_patch_bytes: usize,
) -> Result<CommitDiff, git2::Error> {
    let repo = Repository::open_bare(git_dir)?;
    let c = repo.find_commit(Oid::from_str(commit)?)?;
    let tree = c.tree()?;
    let parent_tree = match c.parents().next() {
        Some(p) => Some(p.tree()?),
        None => None,
    };
    let mut opts = git2::DiffOptions::new();
    opts.context_lines(3);
    let mut diff = repo.diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), Some(&mut opts))?;
    diff.find_similar(None)?;
    let mut files: Vec<FileChange> = diff
        .deltas()
        .map(|d| FileChange {
            path: d
                .new_file()
                .path()
                .or_else(|| d.old_file().path())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            status: match d.status() {
                git2::Delta::Added => "added",
                git2::Delta::Deleted => "deleted",
                git2::Delta::Renamed => "renamed",
                git2::Delta::Typechange => "typechange",
                _ => "modified",
            }
            .into(),
            binary: d.flags().is_binary(),
            additions: 0,
            deletions: 0,
            patch: String::new(),
        })
        .collect();
    let mut total = 0usize;
    let mut truncated = false;
    diff.print(git2::DiffFormat::Patch, |delta, _hunk, line| {
        let path = delta
            .new_file()
            .path()
            .or_else(|| delta.old_file().path())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(f) = files.iter_mut().find(|f| f.path == path) else {
            return true;
        };
        match line.origin() {
            '+' => f.additions += 1,
            '-' => f.deletions += 1,
            'B' => f.binary = true,
            _ => {}
        }
        if line.origin() == 'F' {
            return true; // the file header: the path is shown on its own
        }
        let content = String::from_utf8_lossy(line.content());
        let text = match line.origin() {
            '+' | '-' | ' ' => format!("{}{content}", line.origin()),
            _ => content.into_owned(),
        };
        if total + text.len() > max_patch_bytes {
            truncated = true;
        } else {
            total += text.len();
            f.patch.push_str(&text);
        }
        true
    })?;
    Ok(CommitDiff {
        commit: c.id().to_string(),
        message: c.message().unwrap_or("").trim_end().to_string(),
        files,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_is_restored_whole_and_a_copy_that_differs_does_not_match() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        std::fs::create_dir_all(ws.join("src/deep")).unwrap();
        std::fs::write(ws.join("src/deep/a.py"), b"print(1)\n").unwrap();
        std::fs::write(ws.join("run.sh"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(ws.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("src/deep/a.py", ws.join("link")).unwrap();
        let big = vec![3u8; (LARGE_FILE + 1) as usize];
        std::fs::write(ws.join("big.bin"), &big).unwrap();
        // The agent's own "manifest", naming a host file with a guessed hash: never taken for it.
        std::fs::write(
            ws.join(MANIFEST),
            br#"{"large_files":[{"path":"x/secret","size":6,"sha256":"00"}]}"#,
        )
        .unwrap();
        let git = tmp.path().join("ws.git");
        let mut h = WorkspaceHistory::create(&git, &ws).unwrap();
        let c = h.commit_if_changed("step 1").unwrap().unwrap();
        // The workspace as committed matches; a copy with one byte changed does not.
        let mut again = WorkspaceHistory::open(&git, &ws, Some(&c)).unwrap();
        assert!(again.matches(&ws).unwrap());
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let large = again.restore(&c, &out, None).unwrap();
        assert_eq!(large.len(), 1);
        assert_eq!(large[0].path, "big.bin");
        assert_eq!(
            large[0].sha256.as_deref(),
            Some(crate::trace::sha256_hex(&big).as_str())
        );
        assert_eq!(
            std::fs::read(out.join("src/deep/a.py")).unwrap(),
            b"print(1)\n"
        );
        assert_eq!(
            std::fs::metadata(out.join("run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::read_link(out.join("link")).unwrap(),
            std::path::Path::new("src/deep/a.py")
        );
        assert!(
            !out.join(MANIFEST).exists(),
            "the manifest is not the agent's"
        );
        assert!(
            !out.join("big.bin").exists(),
            "large files are found again, not made up"
        );
        // Restored, plus the large file and the agent's file of the manifest's name (which the
        // history lists as skipped, not as the agent's content): it matches again.
        std::fs::write(out.join("big.bin"), &big).unwrap();
        std::fs::copy(ws.join(MANIFEST), out.join(MANIFEST)).unwrap();
        assert!(again.matches(&out).unwrap());
        std::fs::write(out.join("src/deep/a.py"), b"print(2)\n").unwrap();
        assert!(!again.matches(&out).unwrap());
        // Later commits descend from the reopened head.
        std::fs::write(ws.join("new.txt"), b"n").unwrap();
        let next = again.commit_if_changed("step 2").unwrap().unwrap();
        let repo = Repository::open_bare(&git).unwrap();
        let commit = repo.find_commit(Oid::from_str(&next).unwrap()).unwrap();
        assert_eq!(commit.parent_id(0).unwrap().to_string(), c);
    }

    #[test]
    fn commits_only_on_change_and_lists_large_files() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let mut h = WorkspaceHistory::create(&tmp.path().join("w.git"), &ws).unwrap();
        assert_eq!(h.commit_if_changed("empty").unwrap(), None);
        std::fs::write(ws.join("a.txt"), b"hello").unwrap();
        let c1 = h.commit_if_changed("write a").unwrap().expect("commit");
        assert_eq!(h.commit_if_changed("nothing").unwrap(), None);
        std::fs::create_dir_all(ws.join("d/.git")).unwrap();
        std::fs::write(ws.join("d/.git/x"), b"ignored").unwrap();
        assert_eq!(h.commit_if_changed("only .git").unwrap(), None);
        let big = vec![7u8; (LARGE_FILE + 1) as usize];
        std::fs::write(ws.join("d/big.bin"), &big).unwrap();
        let c2 = h.commit_if_changed("big").unwrap().expect("commit");
        assert_ne!(c1, c2);

        let repo = Repository::open_bare(tmp.path().join("w.git")).unwrap();
        let commit = repo.find_commit(Oid::from_str(&c2).unwrap()).unwrap();
        assert_eq!(commit.message().unwrap(), "big");
        assert_eq!(commit.parent_id(0).unwrap().to_string(), c1);
        let tree = commit.tree().unwrap();
        assert!(tree.get_path(Path::new("d/big.bin")).is_err());
        let m = tree.get_path(Path::new(MANIFEST)).unwrap();
        let blob = repo.find_blob(m.id()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(blob.content()).unwrap();
        assert_eq!(v["large_files"][0]["path"], "d/big.bin");
        assert_eq!(v["large_files"][0]["size"], LARGE_FILE + 1);
        assert_eq!(
            v["large_files"][0]["sha256"],
            hex::encode(Sha256::digest(&big))
        );
        assert!(v["large_files"][0]["allocated"].as_u64().unwrap() >= LARGE_FILE);
    }

    #[test]
    fn a_file_rewritten_in_place_with_its_mtime_set_back_is_committed_anew() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let git = tmp.path().join("w.git");
        let mut h = WorkspaceHistory::create(&git, &ws).unwrap();
        let file = ws.join("notes.txt");
        std::fs::write(&file, b"placeholder text").unwrap();
        let before = std::fs::metadata(&file).unwrap().modified().unwrap();
        h.commit_if_changed("placeholder").unwrap().expect("commit");
        // The same size, the same inode, the mtime put back: only the ctime tells.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"the hidden texts").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(before)
            .unwrap();
        let c = h.commit_if_changed("rewritten").unwrap().expect("a commit");
        let repo = git2::Repository::open_bare(&git).unwrap();
        let oid = git2::Oid::from_str(&c).unwrap();
        let tree = repo.find_commit(oid).unwrap().tree().unwrap();
        let blob = tree
            .get_name("notes.txt")
            .unwrap()
            .to_object(&repo)
            .unwrap();
        assert_eq!(blob.as_blob().unwrap().content(), b"the hidden texts");
    }

    #[test]
    fn sparse_files_fifos_and_linked_directories_cost_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let mut h = WorkspaceHistory::create(&tmp.path().join("w.git"), &ws).unwrap();
        // A 40 GB hole, a FIFO nobody writes to, and a link to a directory outside.
        let f = std::fs::File::create(ws.join("huge.bin")).unwrap();
        f.set_len(40 << 30).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            ws.join("pipe"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"host").unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("link")).unwrap();
        std::fs::write(ws.join("a.txt"), b"a").unwrap();
        let c = h.commit_if_changed("all").unwrap().expect("commit");
        let repo = Repository::open_bare(tmp.path().join("w.git")).unwrap();
        let tree = repo
            .find_commit(Oid::from_str(&c).unwrap())
            .unwrap()
            .tree()
            .unwrap();
        let m = tree.get_path(Path::new(MANIFEST)).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(repo.find_blob(m.id()).unwrap().content()).unwrap();
        let big = &v["large_files"][0];
        assert_eq!(big["path"], "huge.bin");
        assert_eq!(big["size"], 40u64 << 30);
        assert!(big.get("sha256").is_none(), "{big}");
        assert!(big["note"].as_str().unwrap().contains("not hashed"));
        assert!(tree.get_path(Path::new("pipe")).is_err());
        // The link is recorded as a link, never entered.
        let link = tree.get_path(Path::new("link")).unwrap();
        assert_eq!(link.filemode(), i32::from(FileMode::Link));
        assert!(tree.get_path(Path::new("link/secret")).is_err());
    }

    #[test]
    fn commit_diff_shows_each_file_and_cuts_long_patches() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let git = tmp.path().join("w.git");
        let mut h = WorkspaceHistory::create(&git, &ws).unwrap();
        std::fs::write(ws.join("a.txt"), "one\ntwo\n").unwrap();
        std::fs::write(ws.join("gone.txt"), "bye\n").unwrap();
        let c1 = h.commit_if_changed("first").unwrap().unwrap();
        let d1 = commit_diff(&git, &c1, 1 << 20).unwrap();
        assert_eq!(d1.files.len(), 2);
        assert!(d1.files.iter().all(|f| f.status == "added"));
        std::fs::write(ws.join("a.txt"), "one\nTWO\n").unwrap();
        std::fs::remove_file(ws.join("gone.txt")).unwrap();
        std::fs::write(ws.join("bin.dat"), [0u8, 1, 2, 0, 255]).unwrap();
        let c2 = h.commit_if_changed("second").unwrap().unwrap();
        let d2 = commit_diff(&git, &c2, 1 << 20).unwrap();
        assert_eq!(d2.message, "second");
        let a = d2.files.iter().find(|f| f.path == "a.txt").unwrap();
        assert_eq!(
            (a.status.as_str(), a.additions, a.deletions),
            ("modified", 1, 1)
        );
        assert!(
            a.patch.contains("-two\n") && a.patch.contains("+TWO\n"),
            "{}",
            a.patch
        );
        let g = d2.files.iter().find(|f| f.path == "gone.txt").unwrap();
        assert_eq!(g.status, "deleted");
        let b = d2.files.iter().find(|f| f.path == "bin.dat").unwrap();
        assert!(b.binary);
        assert!(!d2.truncated);
        let cut = commit_diff(&git, &c2, 10).unwrap();
        assert!(cut.truncated);
        assert!(cut.files.iter().map(|f| f.patch.len()).sum::<usize>() <= 10);
        assert!(commit_diff(&git, "0123", 10).is_err());
    }
}
