//! The graded-copy scan under a low descriptor limit (this binary's own: it holds one test).

use std::path::Path;
use std::sync::Arc;

use gptx::stages::contamination::{Finding, Ledger, SpanIndex, StageWork, UNSCANNED};

const HIDDEN: &str = "Write-ahead logging keeps every change in a separate file before the \
    database itself is touched; a checkpoint later moves the pages back. Readers never block \
    writers and writers never block readers.";

fn scan(dir: &Path) -> Finding {
    let index = SpanIndex::builder([HIDDEN]).finish();
    Ledger::new(Arc::new(index)).scan(&StageWork {
        stage: "train",
        calls: &[],
        outputs: dir,
        history: None,
        files: dir,
        files_label: "the graded copy",
    })
}

/// 3,000 sibling directories beside the one holding text of T, scanned with 256 descriptors: the
/// walk opens a directory only when its turn comes, so it finds the text and reads everything.
/// A tree deeper than the limit cannot be read to its end: that is reported, as a warning and an
/// integrity note naming the path, never skipped silently.
#[test]
fn siblings_exhaust_no_descriptors_and_what_cannot_be_read_is_reported() {
    let limit = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let tmp = tempfile::tempdir().unwrap();
    let wide = tmp.path().join("wide");
    for i in 0..3000 {
        std::fs::create_dir_all(wide.join(format!("d{i:04}"))).unwrap();
    }
    std::fs::write(wide.join("d1234/t.txt"), HIDDEN).unwrap();
    let f = scan(&wide);
    assert!(f.hit(), "{f:?}");
    assert_eq!(f.detail(), "d1234/t.txt in the graded copy");
    assert!(f.warnings.is_empty(), "{:?}", f.warnings);
    assert!(f.unscanned_note("train").is_none());

    // 500 levels, each with siblings made before and after (so, in creation order or its
    // reverse, one waits and the level's descriptor stays open), the text at the bottom: past
    // about 250 of them no descriptor is left.
    let deep = tmp.path().join("deep");
    let mut bottom = deep.clone();
    for _ in 0..500 {
        for sibling in ["m", "n", "o"] {
            std::fs::create_dir_all(bottom.join(sibling)).unwrap();
        }
        bottom.push("n");
    }
    std::fs::write(bottom.join("t.txt"), HIDDEN).unwrap();
    std::fs::write(deep.join("t.txt"), HIDDEN).unwrap();
    let f = scan(&deep);
    assert!(f.hit(), "what could be read was scanned: {f:?}");
    assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
    let note = f.unscanned_note("train").expect("a note");
    assert_eq!(note.kind, UNSCANNED);
    assert!(note.count >= 1, "{note:?}");
    assert!(note.detail.contains("n/n/n/n/"), "{}", note.detail);
    assert!(note.detail.contains("the graded copy"), "{}", note.detail);
    assert!(
        note.detail.contains("(Too many open files"),
        "{}",
        note.detail
    );
}
