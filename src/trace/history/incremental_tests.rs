//! Tests that a snapshot updated along the tracker's events is the tree a whole walk makes.

use super::*;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The tree (manifest included) a new history's walk of the whole of `ws` makes.
fn whole_tree(ws: &Path) -> Oid {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = WorkspaceHistory::create(&tmp.path().join("whole.git"), ws).unwrap();
    let mut cx = walk::Cx::new(walk::Model::default(), HashSet::new(), None);
    let tree = h.walk_all(&mut cx).unwrap();
    h.with_manifest(tree, &cx.model).unwrap()
}

/// [`whole_tree`], its reads kept from `h`'s tracker (they would mark every file for the next
/// snapshot, which would then look at everything and prove nothing).
fn whole(h: &WorkspaceHistory, ws: &Path) -> Oid {
    let tree = whole_tree(ws);
    if let Some(t) = &h.tracker {
        t.take();
    }
    tree
}

/// A workspace and its history, first snapshot taken.
fn setup() -> (tempfile::TempDir, PathBuf, WorkspaceHistory) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("seed.txt"), b"seed").unwrap();
    let mut h = WorkspaceHistory::create(&tmp.path().join("w.git"), &ws).unwrap();
    h.commit_if_changed("first").unwrap();
    assert!(h.walked_all);
    (tmp, ws, h)
}

/// Snapshots incrementally and checks the tree is the whole walk's; returns the head tree.
fn exact(h: &mut WorkspaceHistory, ws: &Path) -> Oid {
    h.commit_if_changed("step").unwrap();
    assert!(!h.walked_all, "{:?}", h.take_walk_note());
    let tree = h.head_tree.unwrap();
    assert_eq!(
        tree,
        whole(h, ws),
        "the incremental tree is the whole walk's"
    );
    tree
}

/// The content of `path` in `tree`, if it holds a blob there.
fn blob_at(h: &WorkspaceHistory, tree: Oid, path: &str) -> Option<Vec<u8>> {
    let tree = h.repo.find_tree(tree).unwrap();
    let entry = tree.get_path(Path::new(path)).ok()?;
    let blob = h.repo.find_blob(entry.id()).ok()?;
    Some(blob.content().to_vec())
}

#[test]
fn a_write_from_another_thread_is_in_the_next_snapshot() {
    let (_tmp, ws, mut h) = setup();
    let file = ws.join("out.log");
    let f = file.clone();
    std::thread::spawn(move || std::fs::write(f, b"one").unwrap())
        .join()
        .unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "out.log").unwrap(), b"one");
    let f = file.clone();
    std::thread::spawn(move || std::fs::write(f, b"two!").unwrap())
        .join()
        .unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "out.log").unwrap(), b"two!");
    // Nothing changed: no commit.
    assert_eq!(h.commit_if_changed("none").unwrap(), None);
}

/// A shared writable mapping of the first `len` bytes of `path`; the descriptor is closed.
fn map(path: &Path, len: usize) -> *mut u8 {
    use rustix::mm::{MapFlags, ProtFlags};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: a new shared mapping of a file this test owns; unmapped by the test.
    let p = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            &f,
            0,
        )
    };
    p.unwrap().cast()
}

/// Writes `bytes` at the start of the mapping `p`.
fn poke(p: *mut u8, bytes: &[u8]) {
    // SAFETY: `p` maps at least `bytes.len()` bytes, shared and writable.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
}

fn unmap(p: *mut u8, len: usize) {
    // SAFETY: `p` is a mapping of `len` bytes made by `map`, no longer used.
    unsafe { rustix::mm::munmap(p.cast(), len).unwrap() };
}

#[test]
fn a_write_through_a_shared_mapping_is_caught_while_mapped_and_once_after() {
    let (_tmp, ws, mut h) = setup();
    let file = ws.join("weights.bin");
    std::fs::write(&file, b"aaaaaaaa").unwrap();
    let p = map(&file, 8);
    exact(&mut h, &ws);
    poke(p, b"bbbb");
    h.note_mapped(known(&["weights.bin"]));
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "weights.bin").unwrap(), b"bbbbaaaa");
    // Written, then unmapped before the next snapshot: it was mapped at the last one.
    poke(p, b"cc");
    unmap(p, 8);
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "weights.bin").unwrap(), b"ccbbaaaa");
    // Nothing written since: nothing to commit, still exact.
    assert_eq!(h.commit_if_changed("none").unwrap(), None);
    assert!(!h.walked_all);
    assert_eq!(h.head_tree.unwrap(), whole(&h, &ws));
}

#[test]
fn a_mapping_dropped_after_a_write_between_snapshots_is_caught() {
    let (_tmp, ws, mut h) = setup();
    let file = ws.join("m.bin");
    std::fs::write(&file, b"00000000").unwrap();
    let p = map(&file, 8);
    h.note_mapped(known(&["./m.bin", "../x"]));
    exact(&mut h, &ws);
    poke(p, b"11");
    unmap(p, 8);
    h.note_mapped(known(&[]));
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "m.bin").unwrap(), b"11000000");
}

#[test]
fn files_and_directories_renamed_across_folders() {
    let (_tmp, ws, mut h) = setup();
    std::fs::create_dir_all(ws.join("a/sub/deep")).unwrap();
    std::fs::create_dir_all(ws.join("b")).unwrap();
    std::fs::write(ws.join("a/x.txt"), b"x").unwrap();
    std::fs::write(ws.join("a/sub/deep/y.txt"), b"y").unwrap();
    exact(&mut h, &ws);
    std::fs::rename(ws.join("a/x.txt"), ws.join("b/x.txt")).unwrap();
    std::fs::rename(ws.join("a/sub"), ws.join("b/moved")).unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "b/moved/deep/y.txt").unwrap(), b"y");
    assert!(blob_at(&h, t, "a/x.txt").is_none());
    // The moved directory's watches follow it: a write inside is seen at its new path.
    std::fs::write(ws.join("b/moved/deep/y.txt"), b"y2").unwrap();
    std::fs::write(ws.join("b/moved/deep/z.txt"), b"z").unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "b/moved/deep/y.txt").unwrap(), b"y2");
    // Moved back out and in under another name, and out of the workspace.
    std::fs::rename(ws.join("b/moved"), ws.join("top")).unwrap();
    std::fs::rename(ws.join("b"), ws.parent().unwrap().join("gone")).unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "top/deep/z.txt").unwrap(), b"z");
    std::fs::write(ws.parent().unwrap().join("gone/x.txt"), b"outside").unwrap();
    std::fs::write(ws.join("top/deep/z.txt"), b"z2").unwrap();
    exact(&mut h, &ws);
}

/// The sandbox's answer that `paths` are mapped (no inode told).
fn known(paths: &[&str]) -> Mapped {
    Mapped::Known {
        paths: paths.iter().map(PathBuf::from).collect(),
        inodes: vec![],
    }
}

#[test]
fn a_write_through_one_name_of_a_hard_link_changes_both() {
    let (_tmp, ws, mut h) = setup();
    std::fs::create_dir(ws.join("d")).unwrap();
    std::fs::write(ws.join("f.txt"), b"same").unwrap();
    std::fs::hard_link(ws.join("f.txt"), ws.join("d/g.txt")).unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "d/g.txt").unwrap(), b"same");
    std::fs::write(ws.join("d/g.txt"), b"both").unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "f.txt").unwrap(), b"both");
    // A link from inside the agent's .git, which is not watched.
    std::fs::create_dir(ws.join(".git")).unwrap();
    std::fs::hard_link(ws.join("f.txt"), ws.join(".git/h")).unwrap();
    exact(&mut h, &ws);
    std::fs::write(ws.join(".git/h"), b"from git").unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "d/g.txt").unwrap(), b"from git");
}

#[test]
fn a_link_made_after_the_last_snapshot_takes_the_first_name_along() {
    let (_tmp, ws, mut h) = setup();
    std::fs::create_dir(ws.join("d")).unwrap();
    std::fs::write(ws.join("a"), b"one").unwrap();
    exact(&mut h, &ws);
    // Linked and written through the new name in one step: the old name changes in this snapshot.
    std::fs::hard_link(ws.join("a"), ws.join("d/b")).unwrap();
    std::fs::write(ws.join("d/b"), b"two").unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "a").unwrap(), b"two");
    std::fs::write(ws.join("d/b"), b"three").unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "a").unwrap(), b"three");
}

#[test]
fn links_made_where_nothing_is_recorded_are_followed() {
    let (_tmp, ws, mut h) = setup();
    let odd = OsStr::from_bytes(b"odd\xff");
    std::fs::create_dir_all(ws.join(".git/objects")).unwrap();
    std::fs::create_dir_all(ws.join("sub/.git")).unwrap();
    std::fs::create_dir(ws.join(odd)).unwrap();
    for f in ["a", "b", "c", "e"] {
        std::fs::write(ws.join(f), f).unwrap();
    }
    exact(&mut h, &ws);
    // Each file, of one name at the last snapshot, gets a second where nothing is recorded.
    std::fs::hard_link(ws.join("a"), ws.join(".git/objects/x")).unwrap();
    std::fs::hard_link(ws.join("b"), ws.join("sub/.git/y")).unwrap();
    std::fs::hard_link(ws.join("c"), ws.join(odd).join("z")).unwrap();
    // A folder made, linked into, then moved into .git in one step.
    std::fs::create_dir(ws.join("new")).unwrap();
    std::fs::hard_link(ws.join("e"), ws.join("new/w")).unwrap();
    std::fs::rename(ws.join("new"), ws.join(".git/objects/new")).unwrap();
    exact(&mut h, &ws);
    // Written through those names only.
    std::fs::write(ws.join(".git/objects/x"), b"A").unwrap();
    std::fs::write(ws.join("sub/.git/y"), b"B").unwrap();
    std::fs::write(ws.join(odd).join("z"), b"C").unwrap();
    std::fs::write(ws.join(".git/objects/new/w"), b"E").unwrap();
    let t = exact(&mut h, &ws);
    for (f, v) in [("a", "A"), ("b", "B"), ("c", "C"), ("e", "E")] {
        assert_eq!(blob_at(&h, t, f).unwrap(), v.as_bytes(), "{f}");
    }
}

#[test]
fn a_write_through_a_descriptor_whose_name_is_gone_reaches_the_other_name() {
    let (_tmp, ws, mut h) = setup();
    std::fs::write(ws.join("k1"), b"1").unwrap();
    exact(&mut h, &ws);
    let mut held = std::fs::OpenOptions::new()
        .append(true)
        .open(ws.join("k1"))
        .unwrap();
    std::fs::hard_link(ws.join("k1"), ws.join("k2")).unwrap();
    std::fs::remove_file(ws.join("k1")).unwrap();
    // The sandbox names the open file as the kernel does: the removed name, and its inode.
    let meta = held.metadata().unwrap();
    let told = || Mapped::Known {
        paths: vec!["k1 (deleted)".into(), "k1".into()],
        inodes: vec![(meta.dev(), meta.ino())],
    };
    h.note_mapped(told());
    exact(&mut h, &ws);
    // Written and closed before the next snapshot: the file told last time is read again, by the
    // name it has now.
    std::io::Write::write_all(&mut held, b"2").unwrap();
    drop(held);
    h.note_mapped(known(&[]));
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "k2").unwrap(), b"12");
    // Opened again and kept open: told by inode only.
    let mut again = std::fs::OpenOptions::new()
        .append(true)
        .open(ws.join("k2"))
        .unwrap();
    std::io::Write::write_all(&mut again, b"3").unwrap();
    h.note_mapped(Mapped::Known {
        paths: vec![],
        inodes: vec![(meta.dev(), meta.ino())],
    });
    drop(again);
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "k2").unwrap(), b"123");
}

#[test]
fn entries_that_change_type_come_out_right() {
    let (tmp, ws, mut h) = setup();
    std::fs::write(ws.join("f"), b"file").unwrap();
    std::fs::create_dir_all(ws.join("d/inner")).unwrap();
    std::fs::write(ws.join("d/inner/a"), b"a").unwrap();
    std::fs::create_dir_all(ws.join("e/inner")).unwrap();
    std::fs::write(ws.join("e/inner/b"), b"b").unwrap();
    exact(&mut h, &ws);
    // A file replaced by a directory, a directory by a file, another by a link to outside.
    std::fs::remove_file(ws.join("f")).unwrap();
    std::fs::create_dir_all(ws.join("f/g")).unwrap();
    std::fs::write(ws.join("f/g/h"), b"h").unwrap();
    std::fs::remove_dir_all(ws.join("d")).unwrap();
    std::fs::write(ws.join("d"), b"now a file").unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("inner")).unwrap();
    std::fs::write(outside.join("inner/b"), b"host").unwrap();
    std::fs::remove_dir_all(ws.join("e")).unwrap();
    std::os::unix::fs::symlink(&outside, ws.join("e")).unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "f/g/h").unwrap(), b"h");
    assert_eq!(blob_at(&h, t, "d").unwrap(), b"now a file");
    assert_eq!(blob_at(&h, t, "e").unwrap(), outside.as_os_str().as_bytes());
    // Outside, through the link: nothing the workspace records.
    std::fs::write(outside.join("inner/b"), b"changed").unwrap();
    assert_eq!(h.commit_if_changed("none").unwrap(), None);
    // And back: the link replaced by a directory again, the directory by an empty one.
    std::fs::remove_file(ws.join("e")).unwrap();
    std::fs::create_dir(ws.join("e")).unwrap();
    std::fs::write(ws.join("e/c"), b"c").unwrap();
    std::fs::remove_dir_all(ws.join("f/g")).unwrap();
    exact(&mut h, &ws);
}

#[test]
fn a_command_that_runs_past_its_step_is_followed_across_snapshots() {
    let (_tmp, ws, mut h) = setup();
    let gate = Arc::new(Mutex::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (gate, stop, ws) = (gate.clone(), stop.clone(), ws.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _g = gate.lock().unwrap();
                std::fs::create_dir_all(ws.join(format!("ckpt/{}", i % 7))).unwrap();
                std::fs::write(ws.join(format!("ckpt/{}/w", i % 7)), i.to_string()).unwrap();
                std::fs::write(ws.join("log.txt"), format!("{i:08}")).unwrap();
                i += 1;
            }
        })
    };
    let mut trees = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(30));
        let _g = gate.lock().unwrap();
        trees.push(exact(&mut h, &ws));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    exact(&mut h, &ws);
    assert!(trees[0] != trees[2], "the snapshots followed the writes");
}

#[test]
fn lost_events_fall_back_to_a_whole_walk_and_say_why() {
    let (_tmp, ws, mut h) = setup();
    h.tracker.as_ref().unwrap().pause(true);
    std::fs::create_dir(ws.join("many")).unwrap();
    exact(&mut h, &ws); // the directory is watched now
    h.tracker.as_ref().unwrap().pause(true);
    for i in 0..20_000 {
        std::fs::write(ws.join(format!("many/{i}")), b"").unwrap();
    }
    h.commit_if_changed("flood").unwrap();
    assert!(h.walked_all);
    let note = h.take_walk_note().unwrap();
    assert!(note.contains("overflow"), "{note}");
    assert_eq!(h.take_walk_note(), None, "told once");
    assert_eq!(h.head_tree.unwrap(), whole(&h, &ws));
    // Watches are armed again: the next snapshot is incremental.
    std::fs::write(ws.join("many/after"), b"x").unwrap();
    exact(&mut h, &ws);
    // Any other reason, and an unknown mapping, likewise.
    h.tracker.as_ref().unwrap().fail("a test".into());
    h.commit_if_changed("forced").unwrap();
    assert!(h.take_walk_note().unwrap().contains("a test"));
    h.note_mapped(Mapped::Unknown("no /proc".into()));
    h.commit_if_changed("unknown").unwrap();
    assert!(h.take_walk_note().unwrap().contains("no /proc"));
    assert_eq!(h.head_tree.unwrap(), whole(&h, &ws));
    exact(&mut h, &ws);
    assert_eq!(h.take_walk_note(), None);
}

#[test]
fn left_out_entries_are_looked_at_again() {
    let (_tmp, ws, mut h) = setup();
    std::fs::create_dir(ws.join("locked")).unwrap();
    std::fs::write(ws.join("locked/a"), b"a").unwrap();
    std::fs::write(ws.join(MANIFEST), b"{}").unwrap();
    std::fs::write(ws.join(OsStr::from_bytes(b"bad\xff")), b"x").unwrap();
    let big = vec![5u8; (LARGE_FILE + 1) as usize];
    std::fs::write(ws.join("big.bin"), &big).unwrap();
    exact(&mut h, &ws);
    std::fs::set_permissions(ws.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    exact(&mut h, &ws);
    std::fs::set_permissions(ws.join("locked"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_file(ws.join(OsStr::from_bytes(b"bad\xff"))).unwrap();
    std::fs::write(ws.join("big.bin"), &big[1..]).unwrap();
    exact(&mut h, &ws);
    std::fs::remove_file(ws.join("big.bin")).unwrap();
    exact(&mut h, &ws);
}

/// A small xorshift, so a failing sequence can be replayed from its seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// One random change somewhere under `ws` (names from a small set, so they collide).
fn random_change(ws: &Path, rng: &mut u64) {
    let names = ["a", "b", "c", "d", ".git"];
    let depth = (next(rng) % 3) as usize;
    let mut path = ws.to_path_buf();
    for _ in 0..=depth {
        path.push(names[(next(rng) % 5) as usize]);
    }
    let other = ws
        .join(names[(next(rng) % 5) as usize])
        .join(names[(next(rng) % 5) as usize]);
    let _ = match next(rng) % 9 {
        0 | 1 => std::fs::write(&path, next(rng).to_string()),
        2 => std::fs::create_dir_all(&path),
        3 => std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path)),
        4 => std::fs::rename(&path, &other),
        5 => std::os::unix::fs::symlink("../x", &path),
        6 => std::fs::hard_link(&path, &other),
        7 => std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)),
        _ => std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"+")),
    };
}

#[test]
fn any_sequence_of_changes_gives_the_whole_walks_tree() {
    let (_tmp, ws, mut h) = setup();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..150 {
        for _ in 0..(next(&mut rng) % 6) {
            random_change(&ws, &mut rng);
        }
        h.commit_if_changed(&format!("round {round}")).unwrap();
        assert!(!h.walked_all);
        assert_eq!(h.head_tree.unwrap(), whole(&h, &ws), "round {round}");
    }
}

#[test]
fn a_snapshot_of_200_000_files_costs_what_changed() {
    let (_tmp, ws, mut h) = setup();
    for d in 0..2 {
        let dir = ws.join(format!("flat{d}"));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..100_000 {
            std::fs::File::create(dir.join(i.to_string())).unwrap();
        }
    }
    let t = Instant::now();
    h.commit_if_changed("all").unwrap();
    let whole = t.elapsed();
    let t = Instant::now();
    assert_eq!(h.commit_if_changed("none").unwrap(), None);
    let none = t.elapsed();
    std::fs::write(ws.join("flat1/7"), b"one").unwrap();
    let t = Instant::now();
    h.commit_if_changed("one").unwrap().unwrap();
    let one = t.elapsed();
    assert!(!h.walked_all);
    println!("200,000 files: whole walk {whole:?}, no change {none:?}, one change {one:?}");
}

#[test]
fn a_link_made_written_and_removed_in_one_step_is_caught() {
    let (_tmp, ws, mut h) = setup();
    std::fs::write(ws.join("a"), b"one").unwrap();
    std::fs::write(ws.join("z"), b"zed").unwrap();
    exact(&mut h, &ws);
    let append = |p: &str, b: &[u8]| {
        let mut f = std::fs::OpenOptions::new().append(true).open(ws.join(p));
        std::io::Write::write_all(f.as_mut().unwrap(), b).unwrap();
    };
    // The only name the walk could meet is gone by the snapshot.
    std::fs::hard_link(ws.join("a"), ws.join("x")).unwrap();
    append("x", b"+two");
    std::fs::remove_file(ws.join("x")).unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "a").unwrap(), b"one+two");
    // Or replaced by a rename over it.
    std::fs::hard_link(ws.join("a"), ws.join("y")).unwrap();
    append("y", b"+three");
    std::fs::rename(ws.join("z"), ws.join("y")).unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "a").unwrap(), b"one+two+three");
}

#[test]
fn a_descriptor_reopened_through_proc_after_its_name_is_gone_is_caught() {
    use std::os::fd::AsRawFd;
    let (_tmp, ws, mut h) = setup();
    std::fs::write(ws.join("a"), b"one").unwrap();
    // Read-only: never told as open for writing.
    let ro = std::fs::File::open(ws.join("a")).unwrap();
    std::fs::hard_link(ws.join("a"), ws.join("b")).unwrap();
    h.note_mapped(known(&[]));
    exact(&mut h, &ws);
    std::fs::remove_file(ws.join("a")).unwrap();
    h.note_mapped(known(&[]));
    exact(&mut h, &ws);
    let p = format!("/proc/self/fd/{}", ro.as_raw_fd());
    let mut w = std::fs::OpenOptions::new().append(true).open(p).unwrap();
    std::io::Write::write_all(&mut w, b"+evil").unwrap();
    drop(w);
    h.note_mapped(known(&[]));
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "b").unwrap(), b"one+evil");
}

#[test]
fn a_temporary_file_renamed_into_place_needs_no_sweep() {
    let (_tmp, ws, mut h) = setup();
    std::fs::create_dir_all(ws.join(".git")).unwrap();
    exact(&mut h, &ws);
    // Written under a temporary name and moved into place, as git and editors do.
    std::fs::write(ws.join("f.tmp"), b"new").unwrap();
    std::fs::rename(ws.join("f.tmp"), ws.join("f")).unwrap();
    std::fs::write(ws.join(".git/index.lock"), b"i").unwrap();
    std::fs::rename(ws.join(".git/index.lock"), ws.join(".git/index")).unwrap();
    h.commit_if_changed("step").unwrap();
    assert!(
        !h.swept,
        "a rename leaves its inode where the walk meets it"
    );
    // A temporary file removed: its inode might have been a recorded file's, so the stamps are swept.
    std::fs::write(ws.join("t.tmp"), b"x").unwrap();
    std::fs::remove_file(ws.join("t.tmp")).unwrap();
    exact(&mut h, &ws);
    assert!(h.swept);
}

#[test]
fn names_git_refuses_are_left_out_and_their_links_followed() {
    let (_tmp, ws, mut h) = setup();
    std::fs::write(ws.join("a"), b"one").unwrap();
    exact(&mut h, &ws);
    let refused = [".GIT", ".Git", "git~1", ".git.", ".git "];
    for name in refused {
        std::fs::create_dir(ws.join(name)).unwrap();
        std::fs::write(ws.join(name).join("f"), b"x").unwrap();
    }
    // Taken by git, so recorded.
    std::fs::write(ws.join(".gitignore"), b"x").unwrap();
    std::fs::write(ws.join("legit.txt"), b"x").unwrap();
    std::fs::hard_link(ws.join("a"), ws.join(".GIT/link")).unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "legit.txt").unwrap(), b"x");
    assert_eq!(blob_at(&h, t, ".gitignore").unwrap(), b"x");
    let manifest = String::from_utf8(blob_at(&h, t, MANIFEST).unwrap()).unwrap();
    for name in refused {
        assert!(
            manifest.contains(&format!("\"path\": \"{name}\"")),
            "{name}: {manifest}"
        );
    }
    assert!(manifest.contains("git refuses the name"), "{manifest}");
    std::fs::write(ws.join(".GIT/link"), b"two").unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "a").unwrap(), b"two");
}

#[test]
fn a_file_of_many_names_told_as_mapped_is_read_once_and_nothing_is_left_out() {
    let (_tmp, ws, mut h) = setup();
    std::fs::create_dir(ws.join("l")).unwrap();
    std::fs::write(ws.join("big"), vec![1u8; 8 << 20]).unwrap();
    for i in 0..300 {
        std::fs::hard_link(ws.join("big"), ws.join(format!("l/{i}"))).unwrap();
    }
    exact(&mut h, &ws);
    let m = std::fs::metadata(ws.join("big")).unwrap();
    h.note_mapped(Mapped::Known {
        paths: vec![],
        inodes: vec![(m.dev(), m.ino())],
    });
    // Read in full 301 times, it would run past the snapshot's time budget and leave names out.
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, MANIFEST), None, "nothing left out");
    assert_eq!(blob_at(&h, t, "l/299").unwrap().len(), 8 << 20);
}

#[test]
fn when_the_mapped_files_are_unknown_every_file_is_read_again() {
    let (_tmp, ws, mut h) = setup();
    std::fs::write(ws.join("m.bin"), [b'0'; 4096]).unwrap();
    let p = map(&ws.join("m.bin"), 4096);
    poke(p, b"one");
    // Past the second in which a stamp is not trusted: the walk keeps this file's blob by stamp.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    h.note_mapped(Mapped::Unknown("a process could not be read".into()));
    h.commit_if_changed("first").unwrap();
    // The page is still dirty: this write moves no stamp.
    poke(p, b"two");
    h.note_mapped(Mapped::Unknown("a process could not be read".into()));
    h.commit_if_changed("second").unwrap();
    let t = h.head_tree.unwrap();
    assert!(blob_at(&h, t, "m.bin").unwrap().starts_with(b"two"));
    unmap(p, 4096);
}

/// Each way a write through a name that is gone could hide: a decoy put at the old name, the name
/// inside `.git`, a folder made and removed in one step, the old name's folder renamed. The base
/// snapshot is taken more than a second after the files were written, so their stamps are trusted
/// and only the mechanism under test can catch the write.
#[test]
fn writes_through_names_that_are_gone_are_caught_whatever_is_put_in_their_place() {
    use std::os::fd::AsRawFd;
    let (_tmp, ws, mut h) = setup();
    for d in [".git", "d", "keep"] {
        std::fs::create_dir(ws.join(d)).unwrap();
    }
    for f in ["a", "b", "c", "e"] {
        std::fs::write(ws.join(f), b"one").unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    exact(&mut h, &ws);
    let hold = |from: &str, to: &str| {
        std::fs::hard_link(ws.join(from), ws.join(to)).unwrap();
        std::fs::File::open(ws.join(to)).unwrap()
    };
    // Seen with two names at a snapshot, then the second name replaced by a decoy, or removed.
    let fa = hold("a", "x");
    let fb = hold("b", ".git/y");
    let fe = hold("e", "keep/z");
    exact(&mut h, &ws);
    std::fs::remove_file(ws.join("x")).unwrap();
    std::fs::write(ws.join("x"), b"decoy").unwrap();
    std::fs::remove_file(ws.join(".git/y")).unwrap();
    std::fs::remove_file(ws.join("keep/z")).unwrap();
    // Never seen with two names: linked, held and removed with its folder in one step.
    std::fs::create_dir(ws.join("d/sub")).unwrap();
    let fc = hold("c", "d/sub/w");
    std::fs::remove_dir_all(ws.join("d/sub")).unwrap();
    exact(&mut h, &ws);
    std::fs::rename(ws.join("keep"), ws.join("kept")).unwrap();
    exact(&mut h, &ws);
    // One at a time, each in its own step (the last one's event would make a sweep catch all).
    for (held, f) in [(&fa, "a"), (&fb, "b"), (&fc, "c"), (&fe, "e")] {
        let p = format!("/proc/self/fd/{}", held.as_raw_fd());
        let mut w = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        std::io::Write::write_all(&mut w, b"+evil").unwrap();
        if f == "a" {
            std::fs::write(ws.join("x"), b"decoy again").unwrap();
        }
        let t = exact(&mut h, &ws);
        assert_eq!(blob_at(&h, t, f).unwrap(), b"one+evil", "{f}");
    }
}

/// An ext4 image loop-mounted over a directory, unmounted when dropped.
struct Ext4(PathBuf);

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Runs `cmd`, which must succeed.
fn must(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A workspace that is an ext4 file system of its own (a loop mount, as a root run has), and its
/// history, first snapshot taken: the inode feed runs there.
fn setup_ext4() -> (tempfile::TempDir, Ext4, PathBuf, WorkspaceHistory) {
    assert!(
        rustix::process::geteuid().is_root(),
        "the inode feed's tests need root (a loop mount and a file-system mark)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (ws, image) = (tmp.path().join("ws"), tmp.path().join("ws.img"));
    std::fs::create_dir(&ws).unwrap();
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    must(
        std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image),
    );
    must(
        std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&ws),
    );
    let mounted = Ext4(ws.clone());
    std::fs::write(ws.join("seed.txt"), b"seed").unwrap();
    let mut h = WorkspaceHistory::create(&tmp.path().join("w.git"), &ws).unwrap();
    h.commit_if_changed("first").unwrap();
    assert!(h.tracker.as_ref().is_some_and(|t| t.fed()), "no inode feed");
    (tmp, mounted, ws, h)
}

#[test]
fn on_a_file_system_of_its_own_a_name_that_comes_and_goes_costs_no_sweep_and_misses_nothing() {
    let (_tmp, mounted, ws, mut h) = setup_ext4();
    for i in 0..300 {
        std::fs::write(ws.join(format!("f{i}")), b"x").unwrap();
    }
    std::fs::write(ws.join("a"), b"one").unwrap();
    std::fs::create_dir(ws.join("d")).unwrap();
    exact(&mut h, &ws);
    // A second name made, written through and removed in one step: only the feed names `a`.
    std::fs::hard_link(ws.join("a"), ws.join("d/b")).unwrap();
    let mut w = std::fs::OpenOptions::new()
        .append(true)
        .open(ws.join("d/b"))
        .unwrap();
    std::io::Write::write_all(&mut w, b"+two").unwrap();
    drop(w);
    std::fs::remove_file(ws.join("d/b")).unwrap();
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "a").unwrap(), b"one+two");
    assert!(!h.swept, "the feed stood in for the sweep");
    // A descriptor kept on a name that is then removed; the write comes a step later.
    std::fs::hard_link(ws.join("a"), ws.join("d/c")).unwrap();
    let mut w = std::fs::OpenOptions::new()
        .append(true)
        .open(ws.join("d/c"))
        .unwrap();
    std::fs::remove_file(ws.join("d/c")).unwrap();
    exact(&mut h, &ws);
    std::io::Write::write_all(&mut w, b"+three").unwrap();
    drop(w);
    let t = exact(&mut h, &ws);
    assert_eq!(blob_at(&h, t, "a").unwrap(), b"one+two+three");
    // A temporary file: the feed names no recorded file, so nothing is looked at again.
    std::fs::write(ws.join("t.tmp"), b"x").unwrap();
    std::fs::remove_file(ws.join("t.tmp")).unwrap();
    exact(&mut h, &ws);
    assert!(!h.swept);
    // When the feed lost events, every recorded file is swept again.
    std::fs::write(ws.join("u.tmp"), b"x").unwrap();
    std::fs::remove_file(ws.join("u.tmp")).unwrap();
    h.tracker.as_ref().unwrap().lose_feed();
    exact(&mut h, &ws);
    assert!(h.swept);
    drop(h);
    drop(mounted);
}

/// Opens `a` for writing, parks the descriptor in a socket of its own and closes it (no process
/// holds it then), says `parked`; once `go` appears, takes it back, maps the file shared, writes
/// through the map, unmaps, parks it again and says `done`: no event names `a` at all.
const PARKED: &str = r#"
import mmap, os, socket, sys, time
ws = sys.argv[1]
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
fd = os.open(os.path.join(ws, "a"), os.O_RDWR)
socket.send_fds(a, [b"x"], [fd]); os.close(fd)
open(os.path.join(ws, "parked"), "w").close()
while not os.path.exists(os.path.join(ws, "go")): time.sleep(0.01)
_, fds, _, _ = socket.recv_fds(b, 1, 1)
m = mmap.mmap(fds[0], 0); m[0:4] = b"EVIL"; m.close()
socket.send_fds(a, [b"x"], fds); os.close(fds[0])
open(os.path.join(ws, "done"), "w").close()
time.sleep(30)
"#;

#[test]
fn a_write_through_a_parked_descriptor_is_caught_by_the_lease_the_kernel_refuses() {
    let (_tmp, mounted, ws, mut h) = setup_ext4();
    std::fs::write(ws.join("a"), b"one!").unwrap();
    exact(&mut h, &ws);
    let mut parker = std::process::Command::new("/usr/bin/python3")
        .args(["-c", PARKED])
        .arg(&ws)
        .spawn()
        .unwrap();
    let wait = |name: &str| {
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while !ws.join(name).exists() {
            assert!(Instant::now() < deadline, "{name} never came");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    wait("parked");
    exact(&mut h, &ws);
    std::fs::write(ws.join("go"), b"").unwrap();
    wait("done");
    let t = exact(&mut h, &ws);
    let _ = parker.kill();
    let _ = parker.wait();
    assert_eq!(blob_at(&h, t, "a").unwrap(), b"EVIL");
    drop(h);
    drop(mounted);
}

/// The attacker floods the feed (a storm of opens would overflow it) so that its open of the file
/// it parks a descriptor on is lost: the snapshot then asks the kernel of every recorded file.
#[test]
fn a_parked_writer_is_found_when_the_feed_lost_its_open() {
    let (_tmp, mounted, ws, mut h) = setup_ext4();
    std::fs::write(ws.join("a"), b"one!").unwrap();
    exact(&mut h, &ws);
    let mut parker = std::process::Command::new("/usr/bin/python3")
        .args(["-c", PARKED])
        .arg(&ws)
        .spawn()
        .unwrap();
    let wait = |name: &str| {
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while !ws.join(name).exists() {
            assert!(Instant::now() < deadline, "{name} never came");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    wait("parked");
    h.tracker.as_ref().unwrap().lose_feed();
    exact(&mut h, &ws);
    std::fs::write(ws.join("go"), b"").unwrap();
    wait("done");
    let t = exact(&mut h, &ws);
    let _ = parker.kill();
    let _ = parker.wait();
    assert_eq!(blob_at(&h, t, "a").unwrap(), b"EVIL");
    drop(h);
    drop(mounted);
}
