//! The source tree keeps its shape: folders import only folders below them in the pipeline, no stage module imports another, every file says what it owns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The top-level modules of `src/`, lowest first: each may import only those before it.
const LAYERS: [&str; 14] = [
    "files", "config", "trace", "sandbox", "world", "agent", "stages", "runner", "docker", "plan",
    "report", "serve", "synth", "cli",
];

/// The stage modules of `src/stages/`, none of which may import another.
const STAGE_MODULES: [&str; 5] = ["crawl", "tokenize", "train", "eval", "selfhost"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Text of a file without its `#[cfg(test)]` tail (tests may import anything).
fn code(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap();
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Every `crate::NAME` the text mentions (comments too: a doc link is an arrow a reader follows).
fn names(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let after = &rest[i + prefix.len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
        rest = after;
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn top(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn folders_import_only_folders_below_them() {
    let src = src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut tops: Vec<String> = files.iter().map(|f| top(&src, f)).collect();
    tops.sort();
    tops.dedup();
    tops.retain(|t| t != "lib" && t != "main");
    let mut listed: Vec<String> = LAYERS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(tops, listed, "every top-level module has a place in LAYERS");
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    let mut backward = Vec::new();
    for f in &files {
        let from = top(&src, f);
        let Some(&r) = rank.get(from.as_str()) else {
            continue;
        };
        for to in names(&code(f), "crate::") {
            if let Some(&t) = rank.get(to.as_str()) {
                if t > r {
                    backward.push(format!(
                        "{} names crate::{to} ({from} is below {to})",
                        f.strip_prefix(&src).unwrap().display()
                    ));
                }
            }
        }
    }
    backward.sort();
    backward.dedup();
    assert!(
        backward.is_empty(),
        "imports against the pipeline:\n{}",
        backward.join("\n")
    );
}

#[test]
fn no_stage_module_imports_another() {
    let dir = src().join("stages");
    let mut found = Vec::new();
    for m in STAGE_MODULES {
        let text = code(&dir.join(format!("{m}.rs")));
        let mut others = names(&text, "crate::stages::");
        others.extend(names(&text, "super::"));
        for o in others {
            if o != m && STAGE_MODULES.contains(&o.as_str()) {
                found.push(format!("stages/{m}.rs names {o}"));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn every_file_opens_with_what_it_owns_and_every_folder_says_who_imports_it() {
    let src = src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let first = text.lines().next().unwrap_or("");
        assert!(
            first.starts_with("//! ") && first.len() > 12,
            "{}: the first line should be a `//!` line saying what the file owns",
            f.display()
        );
        if f.file_name().is_some_and(|n| n == "mod.rs") {
            assert!(
                text.contains("Imported by"),
                "{}: a folder's mod.rs says what may import it (`Imported by`)",
                f.display()
            );
        }
    }
}

#[test]
fn the_layout_tour_names_every_folder() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    for layer in LAYERS {
        assert!(
            lib.contains(&format!("`{layer}`")),
            "lib.rs's `# Layout` tour does not name {layer}"
        );
    }
}
