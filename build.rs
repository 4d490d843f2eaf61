//! Builds the in-sandbox supervisor (`supervisor/main.rs`) as a static executable that gptx embeds.
//!
//! It is compiled by the same rustc, for the same target, with the C library linked in
//! (`+crt-static`), so it runs in any image: one without Python, or without a C library at all.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=supervisor/main.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("gptx-supervisor");
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
