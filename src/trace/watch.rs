//! The host-side inotify tracker of the workspace: one watch per directory, drained on its own thread into the set of paths the next snapshot must look at again.
//!
//! Where the workspace is a file system of its own (the loop-mounted ext4 of a root run), a
//! fanotify mark on the whole file system also names, by inode, every file written or whose
//! attributes or link count changed, whatever name it was reached by (see [`Feed`]).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

mod feed;
use feed::Feed;

/// Past this many changed paths between two snapshots, the next one walks the whole workspace
/// (the set would cost more memory than the walk costs time).
const MAX_DIRTY: usize = 2_000_000;

/// Past this many files named by the inode feed between two snapshots, the set is dropped (a
/// sweep of every recorded file costs less than its memory, about 40 bytes a file).
const MAX_FED: usize = 1 << 18;

/// What every directory's watch reports: each change of an entry's name, content or attributes.
/// `IN_OPEN` is added once a snapshot is done reading the directory (see [`Tracker::arm`]). Not
/// `IN_EXCL_UNLINK`: a write through a name already removed is reported under that name, and may
/// have changed the file's other names.
const QUIET: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF)
    .union(WatchFlags::ONLYDIR);

/// What the events since the last snapshot say of one path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    /// The whole subtree below must be listed again (a directory that appeared or moved in).
    pub whole: bool,
    /// An entry was made here and then removed or replaced: if it was a second name of a
    /// recorded file, that name is gone with no event on the file's own folder.
    pub transient: bool,
    /// The last event was not a move away, nor of a directory: if nothing is here now and nothing
    /// was recorded here, a file may have been written through a name that no longer exists.
    pub suspect: bool,
    /// An entry was made here since the last snapshot (internal: for `transient`).
    made: bool,
}

impl Change {
    /// Takes in what `other` says of the same path.
    pub fn merge(&mut self, other: Change) {
        self.whole |= other.whole;
        self.transient |= other.transient;
        self.suspect |= other.suspect;
    }

    /// Folds in one event of `mask`.
    fn fold(&mut self, mask: ReadFlags) {
        let is_dir = mask.contains(ReadFlags::ISDIR);
        let made = mask.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO);
        self.whole |= is_dir && made;
        // A folder made and removed in one step may have held a second name of a recorded file.
        self.transient |= self.made && (made || mask.contains(ReadFlags::DELETE));
        self.made |= made;
        self.suspect = !is_dir && !mask.contains(ReadFlags::MOVED_FROM);
    }
}

/// The changes seen since the last [`Tracker::take`].
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Workspace-relative paths whose entry may have changed, with what the events said.
    pub paths: HashMap<PathBuf, Change>,
    /// Why the events cannot be trusted, when so: the next snapshot walks everything.
    pub full_walk: Option<String>,
    /// Every (device, inode) of the workspace written, or whose attributes or link count changed,
    /// since the last take, by any name; None when not known whole (no feed, or events lost).
    pub inodes: Option<HashSet<(u64, u64)>>,
    /// Every (device, inode) the agent opened since the last take; None when not known whole.
    pub opened: Option<HashSet<(u64, u64)>>,
}

#[derive(Default)]
struct State {
    changes: Changes,
    /// The inode feed's findings since the last take, when there is a feed.
    feed: Option<Fed>,
    /// What the feed found in the window before (None: not whole). The two queues are read one
    /// after the other, so a write between the two reads is in this window's inodes and the next
    /// window's paths: a window's inodes are its own and the window before's.
    fed_before: Option<HashSet<(u64, u64)>>,
    /// Watch descriptor → the directory's workspace-relative path ("" is the workspace).
    wds: HashMap<i32, PathBuf>,
    /// Where events are read into.
    buf: Vec<MaybeUninit<u8>>,
}

/// A set of (device, inode).
type Inodes = HashSet<(u64, u64)>;

/// What the inode feed found since the last take.
#[derive(Default)]
struct Fed {
    inodes: HashSet<(u64, u64)>,
    /// Files the agent opened (in any mode).
    opened: HashSet<(u64, u64)>,
    /// Events were lost, or named a file in a way not understood: the set is not whole.
    lost: bool,
}

impl State {
    fn fail(&mut self, why: String) {
        if self.changes.full_walk.is_none() {
            self.changes.full_walk = Some(why);
        }
        self.changes.paths = HashMap::new();
    }

    fn mark(&mut self, path: PathBuf, mask: ReadFlags) {
        if self.changes.full_walk.is_some() {
            return; // everything is walked anyway
        }
        if self.changes.paths.len() >= MAX_DIRTY && !self.changes.paths.contains_key(&path) {
            self.fail(format!(
                "more than {MAX_DIRTY} paths changed between two snapshots"
            ));
            return;
        }
        self.changes.paths.entry(path).or_default().fold(mask);
    }

    /// Records one event.
    fn apply(&mut self, wd: i32, mask: ReadFlags, name: Option<&[u8]>) {
        if mask.contains(ReadFlags::QUEUE_OVERFLOW) {
            return self.fail("the inotify queue overflowed (events were lost)".into());
        }
        if mask.contains(ReadFlags::UNMOUNT) {
            return self.fail("the workspace's file system was unmounted".into());
        }
        let Some(base) = self.wds.get(&wd).cloned() else {
            return self.fail(format!("an inotify event came for an unknown watch ({wd})"));
        };
        if mask.contains(ReadFlags::IGNORED) {
            // The watch is gone (its directory deleted): whatever is at its path now is listed again.
            self.wds.remove(&wd);
            return self.mark(base, ReadFlags::ISDIR | ReadFlags::CREATE);
        }
        if mask.intersects(ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF) {
            if base.as_os_str().is_empty() {
                self.fail("the workspace directory itself was moved or deleted".into());
            }
            return; // the parent's watch names the entry
        }
        let is_dir = mask.contains(ReadFlags::ISDIR);
        if is_dir && (mask & !(ReadFlags::ISDIR | ReadFlags::OPEN)).is_empty() {
            return; // opening a directory changes nothing
        }
        let path = match name {
            Some(n) => base.join(OsStr::from_bytes(n)),
            None => base,
        };
        self.mark(path, mask);
    }
}

struct Shared {
    state: Mutex<State>,
    /// Test hook: while set, the thread leaves events in the kernel's queue.
    paused: AtomicBool,
}

impl Shared {
    fn new(fed: bool) -> Self {
        let feed = fed.then(Fed::default);
        Self {
            state: Mutex::new(State {
                fed_before: feed.as_ref().map(|_| HashSet::new()),
                feed,
                ..State::default()
            }),
            paused: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An inotify instance watching the workspace's directories (and the inode feed, where there is
/// one), with the thread that drains them. Dropping it ends the thread and closes its descriptors.
pub(crate) struct Tracker {
    fd: Arc<OwnedFd>,
    feed: Option<Arc<Feed>>,
    shared: Arc<Shared>,
    /// The write end of the pipe that wakes the thread: dropping it ends the thread.
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Tracker {
    /// A tracker with no watch yet ([`Self::arm`] adds them), with an inode feed for the file
    /// system whose root is `root` where one can be had.
    pub fn start(root: Option<&Path>) -> std::io::Result<Self> {
        let fd = Arc::new(inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?);
        let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let feed = root.and_then(feed_for);
        let shared = Arc::new(Shared::new(feed.is_some()));
        let (f, fe, sh) = (fd.clone(), feed.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("gptx-watch".into())
            .spawn(move || drain(&f, fe.as_deref(), &rd, &sh))?;
        let (wake, thread) = (Some(wr), Some(thread));
        Ok(Self {
            fd,
            feed,
            shared,
            wake,
            thread,
        })
    }

    /// Whether an inode feed runs.
    pub fn fed(&self) -> bool {
        self.feed.is_some()
    }

    /// Watches the open directory `dir`, at workspace-relative `rel` (the same directory watched
    /// again keeps its descriptor, now mapped to `rel`). Quiet leaves out `IN_OPEN`, so the
    /// snapshot's own reads of the directory's files are not reported; the snapshot arms the
    /// directory again, not quiet, when it is done with it. A failure (the watch limit) makes
    /// the next snapshot a full walk.
    pub fn arm(&self, dir: &OwnedFd, rel: &Path, quiet: bool) {
        let mask = if quiet {
            QUIET
        } else {
            QUIET | WatchFlags::OPEN
        };
        // Through the descriptor: the very directory that was opened, whatever its path is now.
        let path = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let mut state = self.shared.lock();
        match inotify::add_watch(&*self.fd, path, mask) {
            Ok(wd) => {
                state.wds.insert(wd, rel.to_path_buf());
            }
            Err(Errno::NOSPC) => state
                .fail("the inotify watch limit (fs.inotify.max_user_watches) is reached".into()),
            Err(e) => state.fail(format!("could not watch /{}: {e}", rel.display())),
        }
    }

    /// The changes since the last call: every event queued before the call (read here if the
    /// thread has not yet); later events go to the next call.
    pub fn take(&self) -> Changes {
        self.shared.lock().take(&self.fd, self.feed.as_deref())
    }

    /// Test hook: makes the next snapshot a full walk, for `why`.
    #[cfg(test)]
    pub fn fail(&self, why: String) {
        self.shared.lock().fail(why);
    }

    /// Test hook: makes the inode feed's set not whole until the next take (as lost events do).
    #[cfg(test)]
    pub fn lose_feed(&self) {
        if let Some(f) = &mut self.shared.lock().feed {
            f.lost = true;
        }
    }

    /// Test hook: stops (or restarts) draining the kernel's queue, so it can overflow.
    #[cfg(test)]
    pub fn pause(&self, on: bool) {
        self.shared.paused.store(on, Ordering::SeqCst);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.wake.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long the paused thread (a test hook) sleeps between looks.
const PAUSE: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 20_000_000,
};

/// The thread: waits for events (or the wake pipe's end) and records them.
fn drain(fd: &OwnedFd, feed: Option<&Feed>, wake: &OwnedFd, shared: &Shared) {
    loop {
        let paused = shared.paused.load(Ordering::SeqCst);
        let mut fds = vec![
            PollFd::new(wake, PollFlags::IN),
            PollFd::new(fd, PollFlags::IN),
        ];
        fds.extend(feed.map(|f| PollFd::new(f.fd(), PollFlags::IN)));
        let polled = match paused {
            true => rustix::event::poll(&mut fds[..1], Some(&PAUSE)),
            false => rustix::event::poll(&mut fds, None),
        };
        match polled {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return shared.lock().fail(format!("polling inotify failed: {e}")),
        }
        if !fds[0].revents().is_empty() {
            return; // the tracker was dropped
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        if !paused && shared.lock().read_ready(fd, feed, &ready).is_err() {
            return;
        }
    }
}

/// The inode feed of the workspace's file system, where one can be had.
fn feed_for(root: &Path) -> Option<Arc<Feed>> {
    let feed = Feed::start(root).map_err(|why| tracing::debug!("no inode feed: {why}"));
    feed.ok().map(Arc::new)
}

impl Fed {
    /// The inodes changed and those opened, when the sets are whole.
    fn whole(self) -> Option<(Inodes, Inodes)> {
        (!self.lost).then_some((self.inodes, self.opened))
    }
}

impl State {
    /// The changes since the last take: every event queued before the call is read here first.
    fn take(&mut self, fd: &OwnedFd, feed: Option<&Feed>) -> Changes {
        match self.read_events(fd, 1 << 14) {
            Ok(true) => {}
            Ok(false) => self.fail("inotify events came faster than they could be read".into()),
            Err(e) => self.fail(format!("reading inotify events failed: {e}")),
        }
        if let Some(feed) = feed {
            self.read_feed(feed, 1 << 14, true);
        }
        let mut changes = std::mem::take(&mut self.changes);
        let now = self.feed.as_mut().map(std::mem::take).and_then(Fed::whole);
        let (now, opened) = now.unzip();
        let before = std::mem::replace(&mut self.fed_before, now.clone());
        changes.inodes = before
            .zip(now)
            .map(|(b, n)| b.into_iter().chain(n).collect());
        changes.opened = opened;
        changes
    }

    /// Reads from the queues `ready` says have events (inotify's, the feed's), a bounded number
    /// of reads each: a flood of events never delays the tracker's end. Err when inotify failed.
    fn read_ready(&mut self, fd: &OwnedFd, feed: Option<&Feed>, ready: &[bool]) -> Result<(), ()> {
        if ready[1] {
            if let Err(e) = self.read_events(fd, 64) {
                self.fail(format!("reading inotify events failed: {e}"));
                return Err(());
            }
        }
        if let (Some(f), Some(true)) = (feed, ready.get(2)) {
            self.read_feed(f, 64, false);
        }
        Ok(())
    }

    /// Reads what the inode feed's queue holds, at most `reads` reads; with `all`, a queue left
    /// unread makes the set not whole.
    fn read_feed(&mut self, feed: &Feed, reads: usize, all: bool) {
        let Some(fed) = &mut self.feed else { return };
        let mut buf = vec![0u8; 64 * 1024];
        let drained = feed.read(fed, &mut buf, reads);
        fed.lost |= all && !drained;
        if fed.inodes.len() + fed.opened.len() > MAX_FED {
            // More than a sweep costs: the set is dropped and the next sweep stats everything.
            *fed = Fed {
                lost: true,
                ..Fed::default()
            };
        }
    }
}

impl State {
    /// Reads and records what the queue holds, at most `reads` buffers of it; whether it is empty.
    /// Called under the lock only, so no event read is ever outside the state.
    fn read_events(&mut self, fd: &OwnedFd, reads: usize) -> rustix::io::Result<bool> {
        let mut buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            buf = vec![MaybeUninit::<u8>::uninit(); 256 * 1024];
        }
        let mut batch: Vec<(i32, ReadFlags, Option<Vec<u8>>)> = Vec::new();
        let mut reader = inotify::Reader::new(fd, &mut buf);
        let mut done = 0;
        let drained = loop {
            match reader.next() {
                Ok(ev) => batch.push((
                    ev.wd(),
                    ev.events(),
                    ev.file_name().map(|n| n.to_bytes().to_vec()),
                )),
                Err(Errno::AGAIN) => break Ok(true),
                Err(Errno::INTR) => continue,
                Err(e) => break Err(e),
            }
            if reader.is_buffer_empty() {
                done += 1;
                if done >= reads {
                    break Ok(false);
                }
            }
        };
        self.buf = buf;
        for (wd, mask, name) in batch {
            self.apply(wd, mask, name.as_deref().filter(|n| !n.is_empty()));
        }
        drained
    }
}
