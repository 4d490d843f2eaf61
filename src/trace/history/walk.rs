//! The in-memory model of the last snapshot (every directory's entries, the manifest by path) and the walks that build it whole or update it along changed paths.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use git2::{FileMode, Oid};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::{LargeFile, Skipped, WorkspaceHistory, MANIFEST, SNAPSHOT_BUDGET};
use crate::trace::watch::{Change, Tracker};

/// A directory as the last snapshot saw it.
#[derive(Debug)]
pub(super) struct DirNode {
    /// Device and inode: a directory replaced by another of the same name is listed again.
    id: (u64, u64),
    entries: BTreeMap<OsString, Node>,
    /// Its tree; none when nothing in it is recorded (git keeps no empty directory).
    tree: Option<Oid>,
}

/// One entry of a directory, when the snapshot records something for it.
#[derive(Debug)]
enum Node {
    Dir(DirNode),
    /// A file's or a link's blob.
    Leaf(Oid, FileMode),
}

impl Node {
    /// What the parent's tree holds for this entry.
    fn recorded(&self) -> Option<(Oid, FileMode)> {
        match self {
            Node::Dir(d) => d.tree.map(|t| (t, FileMode::Tree)),
            Node::Leaf(oid, mode) => Some((*oid, *mode)),
        }
    }
}

/// A file's device and inode: what all its names share.
pub(crate) type Ino = (u64, u64);

/// The last snapshot: its tree model and its manifest, each entry under its path.
#[derive(Debug, Default)]
pub(super) struct Model {
    /// None before the first snapshot (or after [`WorkspaceHistory::matches`]): the next one walks.
    pub root: Option<DirNode>,
    pub large: BTreeMap<PathBuf, LargeFile>,
    pub skipped: BTreeMap<PathBuf, Skipped>,
    /// Regular files with more than one name: a write through another name reports no event here.
    pub linked: BTreeMap<PathBuf, ()>,
    /// Every recorded regular file's inode, and each inode's names: a link made later, or a write
    /// through a descriptor whose name is gone, is traced back to the names the snapshot records.
    ino_of: BTreeMap<PathBuf, Seen>,
    names: HashMap<Ino, BTreeSet<PathBuf>>,
    /// Inodes once seen with more than one name, or changed with no event naming them (a sweep
    /// found them): a descriptor on a name now gone may still write them, so their names stay
    /// in `linked` while they are recorded.
    suspects: HashSet<Ino>,
    /// The last snapshot's sweep looked only at what the inode feed named: the next one sweeps
    /// what its feed names too (a write's two events may straddle the two).
    pub sweep_next: bool,
    /// Inodes some open file description may write (a read lease was refused), or opened before
    /// they had a recorded name: looked at again by the next snapshot.
    pub held: HashSet<Ino>,
    /// The next snapshot looks for writers of every recorded file (the feed is new).
    pub check_all: bool,
}

/// A recorded file as its last look saw it, for a [`Model::sweep`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    ino: Ino,
    /// Its change time, nanoseconds since the epoch; none when it was too close to that look's
    /// start to be trusted.
    ctime: Option<i128>,
}

impl Model {
    /// Forgets the entries of `rel`, and of everything below it if `below`. Its inodes whose
    /// recorded names it took away go to `lost`: their other names may have changed with no event.
    fn forget(&mut self, rel: &Path, below: bool, lost: &mut HashSet<Ino>) {
        /// Takes `rel` (and what is below it, if `below`) out of `map`.
        fn cut<V>(map: &mut BTreeMap<PathBuf, V>, rel: &Path, below: bool) -> Vec<(PathBuf, V)> {
            if !below {
                return map.remove_entry(rel).into_iter().collect();
            }
            let gone: Vec<PathBuf> = map
                .range(rel.to_path_buf()..)
                .map(|(p, _)| p)
                .take_while(|p| p.starts_with(rel))
                .cloned()
                .collect();
            gone.iter().filter_map(|p| map.remove_entry(p)).collect()
        }
        cut(&mut self.large, rel, below);
        cut(&mut self.skipped, rel, below);
        cut(&mut self.linked, rel, below);
        for (p, seen) in cut(&mut self.ino_of, rel, below) {
            if let Some(set) = self.names.get_mut(&seen.ino) {
                set.remove(&p);
                if set.is_empty() {
                    self.names.remove(&seen.ino);
                } else {
                    lost.insert(seen.ino);
                }
            }
        }
    }

    /// Empties the model for a whole walk, all but its suspects (a whole walk does not clear them).
    fn restart(&mut self) {
        let old = std::mem::take(self);
        (self.suspects, self.held) = (old.suspects, old.held);
    }

    /// The recorded files some open file description may still write unseen (a descriptor parked
    /// in a socket, then mapped or written by AIO): of the inodes the agent `opened` since the
    /// last snapshot (every recorded one when that is not known) and those held before, the ones
    /// the kernel refuses a read lease on. Those, and those held before, are read again whatever
    /// their stamp (their names come back); an inode with no recorded name yet waits one snapshot.
    pub fn writers(&mut self, root: &OwnedFd, opened: Option<HashSet<Ino>>) -> Vec<PathBuf> {
        let before = std::mem::take(&mut self.held);
        let opened = opened.filter(|_| !std::mem::take(&mut self.check_all));
        let mut candidates = opened.unwrap_or_else(|| self.names.keys().copied().collect());
        candidates.extend(before.iter().copied());
        let mut fresh = Vec::new();
        for ino in candidates {
            let names: Vec<PathBuf> = self.names_of(ino).cloned().collect();
            if names.is_empty() {
                if !before.contains(&ino) {
                    self.held.insert(ino);
                }
                continue;
            }
            // Asked of a name that is still this file (one may have been replaced since).
            let lease = names.iter().find_map(|n| read_lease(root, n, ino));
            let refused = !lease.unwrap_or(false);
            if refused {
                self.held.insert(ino);
            }
            if refused || before.contains(&ino) {
                fresh.extend(names);
            }
        }
        fresh
    }

    /// Keeps only the suspects that still have a recorded name (once a snapshot is done).
    pub fn prune(&mut self) {
        let names = &self.names;
        self.suspects.retain(|i| names.contains_key(i));
    }

    /// Notes that the recorded file at `rel` is the inode `ino`, changed at `ctime` (if trusted).
    pub fn name(&mut self, rel: &Path, ino: Ino, ctime: Option<i128>) {
        self.ino_of.insert(rel.to_path_buf(), Seen { ino, ctime });
        self.names.entry(ino).or_default().insert(rel.to_path_buf());
    }

    /// Every recorded file whose inode or change time is not what it was (or not trusted), by a
    /// `stat` of each under `root`, reading nothing: what a name that came and went in one step
    /// (or a write through a name already gone) may have changed. With `only` (the inodes the
    /// feed says changed), just the recorded names of those.
    pub fn sweep(&mut self, root: &OwnedFd, only: Option<&HashSet<Ino>>) -> Marks {
        let (mut marks, mut suspects) = (Marks::default(), Vec::new());
        for (path, seen) in self.files(only) {
            let now = stat_beneath(root, path);
            if now.is_none_or(|now| now != (seen.ino, seen.ctime)) {
                marks.add(path, Change::default());
                // Changed with no event naming it (not merely too recent to trust): a suspect.
                suspects.extend(now.filter(|_| seen.ctime.is_some()).map(|_| seen.ino));
            }
        }
        self.suspects.extend(suspects);
        marks
    }

    /// Every recorded file, or those of the inodes `only` names.
    fn files<'a>(
        &'a self,
        only: Option<&'a HashSet<Ino>>,
    ) -> Box<dyn Iterator<Item = (&'a PathBuf, &'a Seen)> + 'a> {
        match only {
            None => Box::new(self.ino_of.iter()),
            Some(set) => Box::new(
                set.iter()
                    .flat_map(|i| self.names_of(*i))
                    .filter_map(|p| self.ino_of.get_key_value(p)),
            ),
        }
    }

    /// The recorded names of `ino`.
    pub fn names_of(&self, ino: Ino) -> impl Iterator<Item = &PathBuf> {
        self.names.get(&ino).into_iter().flatten()
    }

    /// [`Self::skip`], as nothing recorded.
    pub fn skipped<T>(&mut self, rel: &Path, reason: String) -> Option<T> {
        self.skip(rel, reason);
        None
    }

    pub fn skip(&mut self, rel: &Path, reason: String) {
        let path = rel.display().to_string();
        self.skipped
            .insert(rel.to_path_buf(), Skipped { path, reason });
    }
}

/// The paths to look at again, as a tree of names.
#[derive(Debug, Default)]
pub(super) struct Marks {
    /// What the events said of this path (`whole`: the subtree is listed again, whatever the
    /// model holds).
    change: Change,
    below: BTreeMap<OsString, Marks>,
}

impl Marks {
    /// Marks `path` (workspace-relative; a path with `..` or a root is ignored).
    pub fn add(&mut self, path: &Path, change: Change) {
        let mut m = self;
        for c in path.components().filter(|c| *c != Component::CurDir) {
            let Component::Normal(n) = c else { return };
            m = m.below.entry(n.to_os_string()).or_default();
        }
        m.change.merge(change);
    }

    pub fn is_empty(&self) -> bool {
        self.below.is_empty()
    }

    /// What a snapshot looks at again: the paths the tracker reported, the files read again
    /// whatever their stamp, and what no event vouches for (files with several names, entries left
    /// out of the last snapshot).
    pub fn of(
        model: &Model,
        reported: std::collections::HashMap<PathBuf, Change>,
        fresh: &HashSet<PathBuf>,
    ) -> Self {
        let mut marks = Marks::default();
        for (path, change) in reported {
            marks.add(&path, change);
        }
        for path in fresh
            .iter()
            .chain(model.linked.keys())
            .chain(model.skipped.keys())
        {
            marks.add(path, Change::default());
        }
        marks
    }
}

/// One snapshot's walk: its model, what it must read again and until when.
pub(super) struct Cx {
    pub model: Model,
    pub deadline: Instant,
    /// Files read again whatever their stamp (mapped writable: a write moves no stamp for sure).
    pub fresh: HashSet<PathBuf>,
    /// The tracker to arm each directory's watch with (none for another copy of the workspace).
    pub tracker: Option<Tracker>,
    /// Nanoseconds since the epoch when the snapshot began: a stamp changed within a second of it
    /// is not trusted later (a write in the same clock tick may leave it as it was).
    pub started: i128,
    pub links: Links,
    pub read: Reads,
    /// Every file is read again whatever its stamp: which files are mapped writable is not known,
    /// and a write through a map to a page already dirty moves no stamp.
    pub all_fresh: bool,
}

/// What this snapshot read, by stamp (device and inode in it): a file of many names is read once
/// (a snapshot could otherwise be made to read one large file thousands of times).
#[derive(Default)]
pub(super) struct Reads {
    pub blobs: HashMap<super::Stamp, Oid>,
    pub large: HashMap<super::Stamp, super::LargeFile>,
}

/// What a walk learns of files of several names.
#[derive(Default)]
pub(super) struct Links {
    /// Inside a folder whose entries are not recorded (`.git`, a name that is not UTF-8): it is
    /// walked and watched only to see links to recorded files made there.
    shadow: bool,
    /// Inodes of more than one name met by this walk (or that lost a recorded name): their other
    /// names are looked at too.
    pub seen: HashSet<Ino>,
    /// A name may have come and gone since the last snapshot, taking a change to a recorded
    /// file with it: the snapshot sweeps every recorded file's stamp.
    pub vanished: bool,
    /// The inodes the feed says changed since the last snapshot, when known whole: a sweep then
    /// looks at their recorded names only.
    pub changed: Option<HashSet<Ino>>,
    /// The snapshot before swept the feed's inodes: this one sweeps its own too.
    pub carried: bool,
}

/// The (device, inode) and change time (ns) of `path` below `root`, resolved without following
/// any link and without leaving `root` (a folder swapped for a link mid-sweep leads nowhere).
fn stat_beneath(root: &OwnedFd, path: &Path) -> Option<(Ino, Option<i128>)> {
    use rustix::fs::ResolveFlags;
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat2(root, path, flags, Mode::empty(), how).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    let ctime = super::nanos(st.st_ctime, st.st_ctime_nsec as i64);
    Some(((st.st_dev, st.st_ino), Some(ctime)))
}

/// Whether the kernel grants a read lease on the regular file at `path` below `root` (let go at
/// once): it refuses one while any open file description of the file is open for writing,
/// wherever it is (a process's table, a map, a socket's buffer). None when `path` cannot be
/// opened or is not the file `ino`.
fn read_lease(root: &OwnedFd, path: &Path, ino: Ino) -> Option<bool> {
    use rustix::fs::ResolveFlags;
    use std::os::fd::AsRawFd;
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = rustix::fs::openat2(root, path, flags | OFlags::CLOEXEC, Mode::empty(), how).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if (st.st_dev, st.st_ino) != ino {
        return None;
    }
    // SAFETY: fcntl on a descriptor this function owns.
    let granted = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) } == 0;
    if granted {
        // SAFETY: as above.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    }
    Some(granted)
}

/// Nanoseconds since the epoch.
fn now_ns() -> i128 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_nanos() as i128)
}

impl Cx {
    pub fn new(model: Model, fresh: HashSet<PathBuf>, tracker: Option<Tracker>) -> Self {
        Self {
            model,
            deadline: Instant::now() + SNAPSHOT_BUDGET,
            fresh,
            tracker,
            started: now_ns(),
            links: Links::default(),
            read: Reads::default(),
            all_fresh: false,
        }
    }

    /// Notes a recorded regular file: its inode, and whether it has other names.
    pub fn saw_file(&mut self, rel: &Path, meta: &std::fs::Metadata, ctime: Option<i128>) {
        use std::os::unix::fs::MetadataExt;
        self.model.name(rel, (meta.dev(), meta.ino()), ctime);
        if meta.nlink() > 1 {
            self.model.suspects.insert((meta.dev(), meta.ino()));
        }
        if self.model.suspects.contains(&(meta.dev(), meta.ino())) {
            self.model.linked.insert(rel.to_path_buf(), ());
            self.links.seen.insert((meta.dev(), meta.ino()));
        }
    }

    /// Forgets what is recorded at `rel`, or `below` it too (nothing is, in a shadow folder).
    fn forget(&mut self, rel: &Path, below: bool) {
        if !self.links.shadow {
            self.model.forget(rel, below, &mut self.links.seen);
        }
    }

    /// What a marked entry's events say once it has been looked at (`empty`: nothing was
    /// recorded there before or now): whether a name may have come and gone unseen. A suspect
    /// path counts only when nothing at all is there (a FIFO is not recorded, but is there).
    fn note_gone(&mut self, change: Change, empty: bool, dir: &OwnedFd, name: &OsStr) {
        let gone = || rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_err();
        let suspect = change.suspect && empty && !self.links.shadow;
        self.links.vanished |= change.transient || (suspect && gone());
    }

    /// Lists `rel` as left out, unless it is inside a folder that is not recorded.
    fn skip(&mut self, rel: &Path, reason: String) {
        if !self.links.shadow {
            self.model.skip(rel, reason);
        }
    }

    /// Whether the entry `name` at `rel` is left out of the record (`.git`, or [`left_out`]); a
    /// reason to give is listed in the manifest.
    fn leaves_out(&mut self, name: &OsStr, rel: &Path, refused: Option<String>) -> bool {
        let reason = refused.or_else(|| left_out(name, rel, self.deadline));
        let reason = reason.filter(|_| name != ".git");
        if reason.is_none() && name != ".git" {
            return false;
        }
        self.forget(rel, true);
        if let Some(reason) = reason {
            self.skip(rel, reason);
        }
        true
    }

    fn arm(&self, fd: &OwnedFd, rel: &Path, quiet: bool) {
        if let Some(t) = &self.tracker {
            t.arm(fd, rel, quiet);
        }
    }
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

fn dir_id(fd: &OwnedFd) -> rustix::io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

fn names_of(fd: &OwnedFd) -> rustix::io::Result<Vec<OsString>> {
    Ok(rustix::fs::Dir::read_from(fd)?
        .filter_map(|e| e.ok())
        .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
        .filter(|n| n != "." && n != "..")
        .collect())
}

impl WorkspaceHistory {
    /// Walks the whole workspace at `self.root` into a new model; returns the root's tree.
    pub(super) fn walk_all(&mut self, cx: &mut Cx) -> Result<Option<Oid>, git2::Error> {
        cx.model.restart();
        let root = self.open_root()?;
        let id = dir_id(&root).map_err(|e| self.root_error(e))?;
        cx.arm(&root, Path::new(""), true);
        let node = self.scan(cx, &root, Path::new(""), id)?;
        cx.arm(&root, Path::new(""), false);
        let tree = node.tree;
        cx.model.root = Some(node);
        Ok(tree)
    }

    /// Updates the model along `marks` only; returns the root's tree, or Err(None) when the
    /// workspace directory is another one than the model's (the caller walks it all).
    pub(super) fn walk_marked(
        &mut self,
        cx: &mut Cx,
        mut node: DirNode,
        marks: &Marks,
    ) -> Result<Option<Oid>, Option<git2::Error>> {
        let root = self.open_root()?;
        if dir_id(&root).map_err(|e| self.root_error(e))? != node.id {
            return Err(None);
        }
        cx.arm(&root, Path::new(""), true);
        self.refresh(cx, &root, &mut node, Path::new(""), marks)?;
        cx.arm(&root, Path::new(""), false);
        let tree = node.tree;
        cx.model.root = Some(node);
        Ok(tree)
    }

    pub(super) fn open_root(&self) -> Result<OwnedFd, git2::Error> {
        rustix::fs::open(
            &self.root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.root_error(e))
    }

    fn root_error(&self, e: rustix::io::Errno) -> git2::Error {
        git2::Error::from_str(&format!("{}: {e}", self.root.display()))
    }

    /// Lists the directory open as `fd` and looks at every entry, with no model to start from.
    fn scan(
        &mut self,
        cx: &mut Cx,
        fd: &OwnedFd,
        rel: &Path,
        id: (u64, u64),
    ) -> Result<DirNode, git2::Error> {
        let mut node = DirNode {
            id,
            entries: BTreeMap::new(),
            tree: None,
        };
        let names = names_of(fd).unwrap_or_else(|e| {
            cx.skip(rel, std::io::Error::from(e).to_string());
            Vec::new()
        });
        for name in names {
            if let Some(n) = self.visit(cx, fd, &name, &rel.join(&name), None, None)? {
                node.entries.insert(name, n);
            }
        }
        // A shadow folder records nothing: it has no tree.
        let shadow = cx.links.shadow;
        node.tree = if shadow { None } else { self.tree_of(&node)? };
        Ok(node)
    }

    /// Looks again at the marked entries of `node` (the directory open as `fd`); writes its tree
    /// anew when what it records changed.
    fn refresh(
        &mut self,
        cx: &mut Cx,
        fd: &OwnedFd,
        node: &mut DirNode,
        rel: &Path,
        marks: &Marks,
    ) -> Result<(), git2::Error> {
        let mut updates = Vec::new();
        for (name, m) in &marks.below {
            let old = node.entries.remove(name);
            let (before, unrecorded) = (old.as_ref().and_then(Node::recorded), old.is_none());
            let new = self.visit(cx, fd, name, &rel.join(name), old, Some(m))?;
            cx.note_gone(m.change, unrecorded && new.is_none(), fd, name);
            let after = new.as_ref().and_then(Node::recorded);
            if after != before {
                updates.push((name, after));
            }
            if let Some(n) = new {
                node.entries.insert(name.clone(), n);
            }
        }
        node.tree = match (node.tree, updates.is_empty()) {
            (tree, true) => tree,
            (Some(tree), false) => self.patch_tree(tree, &updates)?,
            (None, false) => self.tree_of(node)?,
        };
        Ok(())
    }

    /// `tree` with the entries of `updates` put in (or taken out: none), the rest as it was: a
    /// directory of 200,000 entries costs one write of its tree, not 200,000 checks.
    fn patch_tree(
        &self,
        tree: Oid,
        updates: &[(&OsString, Option<(Oid, FileMode)>)],
    ) -> Result<Option<Oid>, git2::Error> {
        let base = self.repo.find_tree(tree)?;
        let mut builder = self.repo.treebuilder(Some(&base))?;
        for (name, entry) in updates {
            let Some(name) = name.to_str() else { continue };
            match entry {
                Some((oid, mode)) => {
                    builder.insert(name, *oid, (*mode).into())?;
                }
                None if builder.get(name)?.is_some() => builder.remove(name)?,
                None => {}
            }
        }
        if builder.is_empty() {
            return Ok(None);
        }
        Ok(Some(builder.write()?))
    }

    /// Looks at one entry of the directory open as `dir`, never following it: its node, or none
    /// when nothing of it is recorded (gone, left out, listed in the manifest, not a file).
    /// `old` is what the model held there; `marks` (none: everything) what below it to look at.
    fn visit(
        &mut self,
        cx: &mut Cx,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        old: Option<Node>,
        marks: Option<&Marks>,
    ) -> Result<Option<Node>, git2::Error> {
        cx.forget(rel, false);
        let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            cx.forget(rel, true);
            return Ok(None); // gone
        };
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::Directory {
            cx.forget(rel, true);
        }
        if cx.links.shadow || cx.leaves_out(name, rel, self.git_refuses(name)) {
            return self.visit_shadow(cx, (dir, name, rel), &st, old, marks);
        }
        match kind {
            FileType::Directory => self.visit_dir(cx, dir, name, rel, old, marks),
            FileType::Symlink => match rustix::fs::readlinkat(dir, name, Vec::new()) {
                Ok(target) => Ok(Some(Node::Leaf(
                    self.blob(target.as_bytes())?,
                    FileMode::Link,
                ))),
                Err(_) => Ok(None),
            },
            FileType::RegularFile => Ok(self
                .file_blob(dir, name, rel, cx)?
                .map(|(oid, mode)| Node::Leaf(oid, mode))),
            _ => Ok(None), // FIFOs, sockets and devices are never opened
        }
    }

    /// An entry that is not recorded: a directory is walked and watched all the same (its node kept,
    /// with no tree), and a file of several names is noted, so a link to a recorded file made
    /// there is seen; nothing is read.
    fn visit_shadow(
        &mut self,
        cx: &mut Cx,
        (dir, name, rel): (&OwnedFd, &OsStr, &Path),
        st: &rustix::fs::Stat,
        old: Option<Node>,
        marks: Option<&Marks>,
    ) -> Result<Option<Node>, git2::Error> {
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile if st.st_nlink > 1 => {
                cx.links.seen.insert((st.st_dev, st.st_ino));
                Ok(None)
            }
            FileType::Directory if Instant::now() <= cx.deadline => {
                let outer = std::mem::replace(&mut cx.links.shadow, true);
                let node = self.visit_dir(cx, dir, name, rel, old, marks);
                cx.links.shadow = outer;
                node
            }
            // Listed, so the next snapshot looks at it again (a link may be made in it).
            FileType::Directory => {
                cx.model.skip(rel, budget_ran_out());
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// A directory entry: the model's node brought up to date when it is the same directory and
    /// not marked whole, else listed anew. Its watch leaves out `IN_OPEN` while its files are read.
    #[allow(clippy::too_many_arguments)]
    fn visit_dir(
        &mut self,
        cx: &mut Cx,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        old: Option<Node>,
        marks: Option<&Marks>,
    ) -> Result<Option<Node>, git2::Error> {
        let opened = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
            .and_then(|fd| dir_id(&fd).map(|id| (fd, id)));
        let (fd, id) = match opened {
            Ok(x) => x,
            Err(e) => {
                cx.forget(rel, true);
                cx.skip(rel, std::io::Error::from(e).to_string());
                return Ok(None);
            }
        };
        cx.arm(&fd, rel, true);
        let node = match (old, marks) {
            (Some(Node::Dir(mut d)), Some(m)) if !m.change.whole && d.id == id => {
                self.refresh(cx, &fd, &mut d, rel, m)?;
                d
            }
            _ => {
                cx.forget(rel, true);
                self.scan(cx, &fd, rel, id)?
            }
        };
        cx.arm(&fd, rel, false);
        Ok(Some(Node::Dir(node)))
    }

    /// Why git would not take `name` into a tree, if it would not (`.GIT`, `git~1`, `.git.`: the
    /// other spellings of `.git` that git refuses on every system). Only names with `git` in them
    /// are tried, by putting an empty file of that name into a scratch tree.
    fn git_refuses(&self, name: &OsStr) -> Option<String> {
        let lower = name.to_str()?.to_ascii_lowercase();
        if !lower.contains("git") || name == ".git" {
            return None;
        }
        let empty = self.blob(b"").ok()?;
        let mut scratch = self.repo.treebuilder(None).ok()?;
        let refused = scratch
            .insert(name.to_str()?, empty, FileMode::Blob.into())
            .err()?;
        Some(format!("git refuses the name ({})", refused.message()))
    }

    /// The tree of a directory's recorded entries; none when there are none.
    fn tree_of(&self, node: &DirNode) -> Result<Option<Oid>, git2::Error> {
        let mut builder = self.repo.treebuilder(None)?;
        for (name, entry) in &node.entries {
            let (Some(name), Some((oid, mode))) = (name.to_str(), entry.recorded()) else {
                continue;
            };
            builder.insert(name, oid, mode.into())?;
        }
        if builder.is_empty() {
            return Ok(None);
        }
        Ok(Some(builder.write()?))
    }
}

/// Why an entry is left out of the snapshot by its name or the clock, if it is.
fn left_out(name: &OsStr, rel: &Path, deadline: Instant) -> Option<String> {
    // The manifest's name at the top is the harness's: an agent's file of that name is never
    // taken for it (a resume trusts the manifest's hashes).
    if rel.parent() == Some(Path::new("")) && name == MANIFEST {
        return Some("the name is the harness's list of large files".into());
    }
    if name.to_str().is_none() {
        return Some("file name is not UTF-8".into());
    }
    (Instant::now() > deadline).then(budget_ran_out)
}

fn budget_ran_out() -> String {
    let secs = SNAPSHOT_BUDGET.as_secs();
    format!("the snapshot's time budget ({secs} s) ran out")
}
