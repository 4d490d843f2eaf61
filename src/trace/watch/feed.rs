//! The inode feed: a fanotify mark on the workspace's whole file system, naming by inode every file written, or whose attributes or link count changed, by whatever name it was reached.
//!
//! inotify watches folders, so it names a change by the name it was made through: a write
//! through a second name removed in the same step leaves no trace of which file it changed, and
//! the snapshot then has to `stat` every recorded file. This feed names the file itself. It needs
//! root (a file-system mark), and is used only where the workspace is an ext4 file system of its
//! own (the loop mount of a root run), whose file handles carry the inode number.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::Fed;

/// ext4's magic number, as `statfs` gives it.
const EXT4_MAGIC: i64 = 0xEF53;
/// `FILEID_INO32_GEN` and `FILEID_INO32_GEN_PARENT`: handles that start with the 32-bit inode.
const INO32_GEN: i32 = 1;
const INO32_GEN_PARENT: i32 = 2;
/// `struct fanotify_event_metadata`.
const METADATA: usize = 24;

/// A fanotify group marking the workspace's file system for writes and attribute changes.
pub(super) struct Feed {
    fd: OwnedFd,
    /// The file system's device, as `stat` gives it on the host: the first half of an inode's key.
    dev: u64,
}

impl Feed {
    /// A feed for the file system whose root is `root`, or why there can be none.
    pub fn start(root: &Path) -> Result<Self, String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(root).map_err(|e| e.to_string())?;
        let parent = std::fs::metadata(root.join("..")).map_err(|e| e.to_string())?;
        if meta.dev() == parent.dev() {
            // A mark there would take in the whole of the host's file system.
            return Err("the workspace is not a file system of its own".into());
        }
        let fs = rustix::fs::statfs(root).map_err(|e| e.to_string())?;
        if fs.f_type as i64 != EXT4_MAGIC {
            return Err("the workspace's file system is not ext4".into());
        }
        let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
        // SAFETY: a plain system call; the descriptor it gives is owned at once.
        let fd =
            unsafe { libc::fanotify_init(flags | libc::FAN_REPORT_FID, libc::O_RDONLY as u32) };
        if fd < 0 {
            return Err(format!("fanotify: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just made and is not owned elsewhere.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path =
            std::ffi::CString::new(root.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        let how = libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM;
        let what = libc::FAN_MODIFY | libc::FAN_ATTRIB | libc::FAN_OPEN;
        // A lease the snapshot takes (see `writers`) signals its holder when broken: SIGIO,
        // fatal unless ignored. The lease is let go at once, so the signal says nothing.
        // SAFETY: setting a signal's disposition to ignore.
        unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let r = unsafe {
            libc::fanotify_mark(fd.as_raw_fd(), how, what, libc::AT_FDCWD, path.as_ptr())
        };
        if r < 0 {
            return Err(format!(
                "fanotify mark: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self {
            fd,
            dev: meta.dev(),
        })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Reads what the queue holds into `fed`, at most `reads` reads; whether it is empty.
    pub fn read(&self, fed: &mut Fed, buf: &mut [u8], reads: usize) -> bool {
        for _ in 0..reads {
            // SAFETY: reading into our own buffer, within its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n == 0 {
                return true;
            }
            if n < 0 {
                match std::io::Error::last_os_error().kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    std::io::ErrorKind::WouldBlock => {}
                    _ => fed.lost = true,
                }
                return true;
            }
            self.take_in(&buf[..n as usize], fed);
        }
        false
    }

    /// Notes the inode of every event in `b` (whole events, as `read` gives them).
    fn take_in(&self, mut b: &[u8], fed: &mut Fed) {
        while b.len() >= METADATA {
            let event_len = u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
            let meta_len = u16::from_ne_bytes([b[6], b[7]]) as usize;
            let mask = u64::from_ne_bytes(b[8..16].try_into().expect("8 bytes"));
            let pid = i32::from_ne_bytes(b[20..24].try_into().expect("4 bytes"));
            if meta_len < METADATA || event_len < meta_len || event_len > b.len() {
                fed.lost = true;
                return;
            }
            match ino_of(&b[meta_len..event_len]) {
                Some(ino) if mask & libc::FAN_Q_OVERFLOW == 0 => {
                    let ino = (self.dev, ino);
                    if mask & (libc::FAN_MODIFY | libc::FAN_ATTRIB) != 0 {
                        fed.inodes.insert(ino);
                    }
                    // The harness's own opens (the snapshot's reads) are not the agent's.
                    if mask & libc::FAN_OPEN != 0 && pid as u32 != std::process::id() {
                        fed.opened.insert(ino);
                    }
                }
                _ => fed.lost = true,
            }
            b = &b[event_len..];
        }
    }
}

/// The inode an event's information records name: its file-identifier record's handle, when
/// the handle starts with a 32-bit inode (ext4's do); None otherwise.
pub(super) fn ino_of(mut info: &[u8]) -> Option<u64> {
    let u32_at =
        |r: &[u8], at: usize| Some(u32::from_ne_bytes(r.get(at..at + 4)?.try_into().ok()?));
    while info.len() >= 4 {
        let len = u16::from_ne_bytes([info[2], info[3]]) as usize;
        if len < 4 || len > info.len() {
            return None;
        }
        let record = &info[..len];
        if info[0] == libc::FAN_EVENT_INFO_TYPE_FID {
            // Header (4 bytes), fsid (8), handle_bytes (u32), handle_type (i32), the handle.
            let (bytes, kind) = (u32_at(record, 12)?, u32_at(record, 16)? as i32);
            let ino32 = kind == INO32_GEN || kind == INO32_GEN_PARENT;
            return (ino32 && bytes >= 8)
                .then(|| u32_at(record, 20))
                .flatten()
                .map(u64::from);
        }
        info = &info[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file-identifier record as the kernel writes it: header, fsid, handle length and type,
    /// then the handle.
    fn record(kind: i32, handle: &[u8]) -> Vec<u8> {
        let len = 4 + 8 + 8 + handle.len();
        let mut r = vec![libc::FAN_EVENT_INFO_TYPE_FID, 0];
        r.extend_from_slice(&(len as u16).to_ne_bytes());
        r.extend_from_slice(&[9u8; 8]);
        r.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        r.extend_from_slice(&kind.to_ne_bytes());
        r.extend_from_slice(handle);
        r
    }

    #[test]
    fn an_ext4_handle_gives_its_inode_and_anything_else_gives_none() {
        let mut h = 4242u32.to_ne_bytes().to_vec();
        h.extend_from_slice(&7u32.to_ne_bytes());
        assert_eq!(ino_of(&record(INO32_GEN, &h)), Some(4242));
        assert_eq!(
            ino_of(&record(INO32_GEN_PARENT, &[h.clone(), h.clone()].concat())),
            Some(4242)
        );
        assert_eq!(
            ino_of(&record(0x81, &h)),
            None,
            "another file system's handle"
        );
        assert_eq!(
            ino_of(&record(INO32_GEN, &h[..4])),
            None,
            "too short a handle"
        );
        let mut bad = record(INO32_GEN, &h);
        bad[2] = 200; // a record longer than what is there
        assert_eq!(ino_of(&bad), None);
        for cut in 0..bad.len() {
            assert_eq!(ino_of(&record(INO32_GEN, &h)[..cut]), None, "cut at {cut}");
        }
        let zero_len = [libc::FAN_EVENT_INFO_TYPE_FID, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(
            ino_of(&zero_len),
            None,
            "a record of length 0 does not loop"
        );
    }
}
