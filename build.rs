//! Builds the in-sandbox supervisor (`supervisor/main.rs`) as a static executable that gptx embeds,
//! and packs `tasks/` and `sandboxes/` into the binary (`config::embedded` unpacks them).
//!
//! The supervisor is compiled by the same rustc, for the same target, with the C library linked in
//! (`+crt-static`), so it runs in any image: one without Python, or without a C library at all.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    pack_home(&out_dir);
    build_supervisor(&out_dir);
}

/// The directories of the source tree a binary without it needs: suites, stages, worlds, recipes.
const HOME_DIRS: [&str; 2] = ["tasks", "sandboxes"];

/// Writes `home.bin`: `GPTXHOME1\n`, then per file (sorted by path) its path's length (u32 LE),
/// the path, whether it is executable (u8), its length (u64 LE) and its bytes. Sets
/// `GPTX_HOME_HASH` to the FNV-1a hash of it all, which names the unpacked copy.
fn pack_home(out_dir: &Path) {
    let mut files = Vec::new();
    for dir in HOME_DIRS {
        println!("cargo:rerun-if-changed={dir}");
        collect(Path::new(dir), &mut files);
    }
    files.sort();
    let mut blob = b"GPTXHOME1\n".to_vec();
    for path in &files {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.to_str().expect("task file names are UTF-8");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode();
        blob.extend_from_slice(&(name.len() as u32).to_le_bytes());
        blob.extend_from_slice(name.as_bytes());
        blob.push(u8::from(mode & 0o111 != 0));
        blob.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        blob.extend_from_slice(&bytes);
    }
    let hash = blob.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    std::fs::write(out_dir.join("home.bin"), &blob).expect("writing home.bin");
    println!("cargo:rustc-env=GPTX_HOME_HASH={hash:016x}");
}

/// Regular files under `dir`, but hidden ones and Python's caches.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries {
        let e = e.expect("dir entry");
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "__pycache__" || name.ends_with(".pyc") {
            continue;
        }
        let kind = e.file_type().expect("file type");
        if kind.is_dir() {
            collect(&e.path(), out);
        } else if kind.is_file() {
            out.push(e.path());
        }
    }
}

fn build_supervisor(out_dir: &Path) {
    println!("cargo:rerun-if-changed=supervisor/main.rs");
    let out = out_dir.join("gptx-supervisor");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let status = Command::new(&rustc)
        .args(["--edition", "2021", "--crate-name", "gptx_supervisor"])
        .args(["--crate-type", "bin", "--target", &target])
        .args([
            "-C",
            "opt-level=3",
            "-C",
            "panic=abort",
            "-C",
            "codegen-units=1",
        ])
        .args(["-C", "target-feature=+crt-static", "-C", "strip=symbols"])
        .arg("-o")
        .arg(&out)
        .arg("supervisor/main.rs")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "building the static supervisor (supervisor/main.rs) failed ({s}); it needs the C library's \
             static archive (Debian: libc6-dev)"
        ),
        Err(e) => panic!("running {rustc} to build the supervisor: {e}"),
    }
}
