//! The task files and image recipes built into the binary (`build.rs` packs them), unpacked into the user's cache when no checkout is found.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// `tasks/` and `sandboxes/` as `build.rs` packed them.
static PACKED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/home.bin"));
/// What names the unpacked copy: a new build with other task files unpacks beside, not over it.
const HASH: &str = env!("GPTX_HOME_HASH");
const MAGIC: &[u8] = b"GPTXHOME1\n";

/// An I/O error that names its path.
fn at(p: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", p.display())
}

/// One packed file: its path under the home, whether it is executable, its bytes.
type Packed<'a> = (&'a str, bool, &'a [u8]);

/// The user's cache directory for gptx: `$XDG_CACHE_HOME/gptx`, else `$HOME/.cache/gptx` (a
/// relative value of either is ignored, as the XDG specification says).
pub fn user_cache() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let xdg = std::env::var_os("XDG_CACHE_HOME").and_then(absolute);
    let home = || {
        std::env::var_os("HOME")
            .and_then(absolute)
            .map(|h| h.join(".cache"))
    };
    xdg.or_else(home).map(|c| c.join("gptx"))
}

/// The packed home unpacked under `cache` (`home-<hash>/`), written first if missing: into a
/// directory of this process's own (a random name), renamed into place whole, so a reader never
/// sees half of it and two processes unpacking at once, here or on hosts sharing the home, both end
/// with one complete copy. A failed unpack leaves its directory behind, named `.home-*`.
pub fn unpack(cache: &Path) -> Result<PathBuf, String> {
    let dir = cache.join(format!("home-{HASH}"));
    if dir.join("tasks/suites").is_dir() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache).map_err(at(cache))?;
    // A name no other process (on this host, or on another sharing the home) can have.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".home-{HASH}.tmp"))
        .tempdir_in(cache)
        .map_err(at(cache))?
        .keep();
    for (name, executable, bytes) in files(PACKED)? {
        let path = tmp.join(name);
        std::fs::create_dir_all(path.parent().expect("under tmp")).map_err(at(&path))?;
        write_file(&path, executable, bytes).map_err(at(&path))?;
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another process put its copy there first: the same bytes.
        Err(_) if dir.join("tasks/suites").is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

fn write_file(path: &Path, executable: bool, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)
}

/// The files of a packed home, each path checked to stay under it.
fn files(mut rest: &[u8]) -> Result<Vec<Packed<'_>>, String> {
    let bad = |what: &str| format!("the task files built into gptx are damaged: {what}");
    rest = rest.strip_prefix(MAGIC).ok_or_else(|| bad("no header"))?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, r) = take(rest, 4).ok_or_else(|| bad("a cut name length"))?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let (name, r) = take(r, len).ok_or_else(|| bad("a cut name"))?;
        let name = std::str::from_utf8(name).map_err(|_| bad("a name that is not UTF-8"))?;
        let inside = Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !inside || name.is_empty() {
            return Err(bad(&format!("the name {name:?} leaves the home")));
        }
        let (flag, r) = take(r, 1).ok_or_else(|| bad("a cut mode"))?;
        let (size, r) = take(r, 8).ok_or_else(|| bad("a cut size"))?;
        let size = u64::from_le_bytes(size.try_into().expect("8 bytes"));
        let size = usize::try_from(size).map_err(|_| bad("a size past memory"))?;
        let (bytes, r) = take(r, size).ok_or_else(|| bad(&format!("{name} is cut")))?;
        out.push((name, flag[0] != 0, bytes));
        rest = r;
    }
    Ok(out)
}

fn take(b: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (b.len() >= n).then(|| b.split_at(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, exec: bool, bytes: &[u8]) -> Vec<u8> {
        let mut r = (name.len() as u32).to_le_bytes().to_vec();
        r.extend_from_slice(name.as_bytes());
        r.push(u8::from(exec));
        r.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        r.extend_from_slice(bytes);
        r
    }

    #[test]
    fn the_packed_home_holds_every_suite_and_recipe_of_the_tree() {
        let packed = files(PACKED).unwrap();
        let names: Vec<&str> = packed.iter().map(|f| f.0).collect();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in ["tasks/suites", "sandboxes"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                let name = format!("{dir}/{}", e.unwrap().file_name().to_string_lossy());
                assert!(names.contains(&name.as_str()), "{name} is not packed");
            }
        }
        let (_, _, bytes) = packed
            .iter()
            .find(|f| f.0 == "tasks/suites/mini.toml")
            .unwrap();
        assert_eq!(
            *bytes,
            std::fs::read(root.join("tasks/suites/mini.toml")).unwrap()
        );
        assert!(
            packed.iter().any(|f| f.0.ends_with(".jsonl.xz")),
            "the corpora are packed"
        );
    }

    #[test]
    fn a_damaged_pack_is_refused_and_names_that_leave_the_home_too() {
        let mut ok = MAGIC.to_vec();
        ok.extend(record("tasks/a.txt", false, b"hi"));
        assert_eq!(files(&ok).unwrap(), [("tasks/a.txt", false, &b"hi"[..])]);
        let cut = &ok[..ok.len() - 1];
        assert!(files(cut).unwrap_err().contains("tasks/a.txt is cut"));
        for name in ["../x", "/etc/x", "tasks/../../x", ""] {
            let mut bad = MAGIC.to_vec();
            bad.extend(record(name, false, b""));
            assert!(
                files(&bad).unwrap_err().contains("leaves the home"),
                "{name}"
            );
        }
        assert!(files(b"nope").unwrap_err().contains("no header"));
    }

    #[test]
    fn unpacking_makes_one_whole_copy_and_reuses_it() {
        let cache = tempfile::tempdir().unwrap();
        let dir = unpack(cache.path()).unwrap();
        assert!(dir.join("tasks/suites/mini.toml").is_file());
        assert!(dir.join("sandboxes/base.toml").is_file());
        std::fs::write(dir.join("marker"), b"").unwrap();
        assert_eq!(unpack(cache.path()).unwrap(), dir);
        assert!(
            dir.join("marker").exists(),
            "an existing copy is used as it is"
        );
        let left: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary directory is left");
    }
}
