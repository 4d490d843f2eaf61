//! Image recipes (`sandboxes/<name>.toml`): parsed, parents folded in, hashed into the image tag.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::suite::Home;

/// Bumped when the way images are assembled changes, so old tags are not reused.
/// 2: images carry what was measured in them at build ([`ImageFacts`]).
/// 3: measured with the OpenBLAS kernel of the host's CPU (`config::suite::blas_core`).
pub(crate) const BUILDER_VERSION: u32 = 3;

/// Why a recipe could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{path}: {message}")]
    Recipe { path: String, message: String },
    #[error("no image recipe {name:?} (looked for {path}; available: {available})")]
    NoRecipe {
        name: String,
        path: String,
        available: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    extends: Option<String>,
    #[serde(default)]
    suite: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    workdir: Option<String>,
}

/// A recipe with its parents folded in: everything that decides the image's content.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    pub suite: String,
    pub variant: String,
    pub packages: Vec<String>,
    pub user: String,
    pub uid: u32,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    pub builder_version: u32,
    /// Set when the image is built from `sandboxes/<name>.Dockerfile` (then `suite`, `variant`,
    /// `packages` and `env` are empty: the Dockerfile decides them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<Dockerfile>,
}

/// A recipe's Dockerfile and build context, as they are sent to the engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dockerfile {
    /// SHA-256 of the context: the Dockerfile as sent (its `FROM gptx/<name>` resolved to tags)
    /// and the files of `sandboxes/<name>/`.
    pub context: String,
    /// The recipes it is built `FROM` (`FROM gptx/<name>`), which are built first.
    pub bases: Vec<String>,
    /// The context's files, the Dockerfile first.
    #[serde(skip)]
    pub files: Vec<ContextFile>,
}

/// One file of a build context.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextFile {
    /// Relative, with `/` separators.
    pub path: String,
    /// 0o755 or 0o644.
    pub mode: u32,
    pub bytes: Vec<u8>,
}

/// The user every sandbox runs commands as, its uid, and the workdir (`docker::sandbox`).
pub const SANDBOX_USER: &str = "agent";
pub const SANDBOX_UID: u32 = 1000;
pub const SANDBOX_WORKDIR: &str = "/workspace";

/// The most a build context (`sandboxes/<name>/` and the Dockerfile) may hold: it is sent whole.
const CONTEXT_MAX: u64 = 64 << 20;

fn bad(path: &std::path::Path, message: impl Into<String>) -> RecipeError {
    RecipeError::Recipe {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Reads and parses `sandboxes/<n>.toml`, which must name itself `n`.
fn read_raw(home: &Home, n: &str) -> Result<RawRecipe, RecipeError> {
    let path = home.sandboxes().join(format!("{n}.toml"));
    if !path.exists() {
        return Err(RecipeError::NoRecipe {
            name: n.to_string(),
            path: path.display().to_string(),
            available: available(home).join(", "),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|e| bad(&path, e.to_string()))?;
    let raw: RawRecipe = toml::from_str(&text).map_err(|e| bad(&path, e.to_string().trim_end()))?;
    if raw.name != n {
        return Err(bad(
            &path,
            format!("name = {:?} but the file is {n}.toml", raw.name),
        ));
    }
    Ok(raw)
}

impl Recipe {
    /// Loads `sandboxes/<name>.toml`, following `extends`; or, when `sandboxes/<name>.Dockerfile`
    /// is beside it, reads the Dockerfile and its context.
    pub fn load(home: &Home, name: &str) -> Result<Self, RecipeError> {
        Self::load_within(home, name, &mut Vec::new())
    }

    /// [`Recipe::load`] with the names being loaded above it (`FROM gptx/<name>` and `extends`
    /// may not go round in a loop).
    fn load_within(home: &Home, name: &str, stack: &mut Vec<String>) -> Result<Self, RecipeError> {
        let mut chain: Vec<RawRecipe> = Vec::new();
        let mut next = Some(name.to_string());
        while let Some(n) = next {
            if stack.contains(&n) || chain.iter().any(|r| r.name == n) {
                return Err(bad(
                    &home.sandboxes(),
                    format!("recipes extend each other in a loop at {n:?}"),
                ));
            }
            let raw = read_raw(home, &n)?;
            next = raw.extends.clone();
            chain.push(raw);
        }
        let file = home.sandboxes().join(format!("{name}.Dockerfile"));
        stack.push(name.to_string());
        let r = match file.exists() {
            true => Self::from_dockerfile(home, &chain[0], &file, stack),
            false => Ok(Self::fold(name, &chain)),
        };
        stack.pop();
        r.and_then(|r| r.sandbox_user(home))
    }

    /// Refuses a user, uid or workdir other than the sandbox's: every sandbox runs commands as
    /// `agent` (1000) in `/workspace`, whatever the recipe says.
    fn sandbox_user(self, home: &Home) -> Result<Self, RecipeError> {
        let toml = home.sandboxes().join(format!("{}.toml", self.name));
        let want = (SANDBOX_USER, SANDBOX_UID, SANDBOX_WORKDIR);
        if (self.user.as_str(), self.uid, self.workdir.as_str()) != want {
            return Err(bad(
                &toml,
                format!(
                    "user {:?}, uid {}, workdir {:?}: every sandbox runs as user {:?}, uid {}, in {:?}",
                    self.user, self.uid, self.workdir, want.0, want.1, want.2
                ),
            ));
        }
        Ok(self)
    }

    /// The chain of raw recipes, folded from the root ancestor down.
    fn fold(name: &str, chain: &[RawRecipe]) -> Self {
        let mut r = Recipe {
            name: name.to_string(),
            description: chain[0].description.clone(),
            suite: "bookworm".into(),
            variant: "minbase".into(),
            packages: vec![],
            user: "agent".into(),
            uid: 1000,
            env: BTreeMap::new(),
            workdir: "/workspace".into(),
            builder_version: BUILDER_VERSION,
            dockerfile: None,
        };
        for raw in chain.iter().rev() {
            if let Some(s) = &raw.suite {
                r.suite = s.clone();
            }
            if let Some(v) = &raw.variant {
                r.variant = v.clone();
            }
            r.packages.extend(raw.packages.iter().cloned());
            if let Some(u) = &raw.user {
                r.user = u.clone();
            }
            if let Some(u) = raw.uid {
                r.uid = u;
            }
            r.env.extend(raw.env.clone());
            if let Some(w) = &raw.workdir {
                r.workdir = w.clone();
            }
        }
        r.packages.sort();
        r.packages.dedup();
        r
    }

    /// A recipe whose image is `file` (`sandboxes/<name>.Dockerfile`) built with the context
    /// folder `sandboxes/<name>/` if there is one. Its toml names the user, uid and workdir the
    /// image must have, and nothing the Dockerfile decides.
    fn from_dockerfile(
        home: &Home,
        raw: &RawRecipe,
        file: &std::path::Path,
        stack: &mut Vec<String>,
    ) -> Result<Self, RecipeError> {
        let toml = home.sandboxes().join(format!("{}.toml", raw.name));
        let decided = [
            ("extends", raw.extends.is_some()),
            ("suite", raw.suite.is_some()),
            ("variant", raw.variant.is_some()),
            ("packages", !raw.packages.is_empty()),
            ("env", !raw.env.is_empty()),
        ];
        if let Some((field, _)) = decided.iter().find(|(_, set)| *set) {
            return Err(bad(
                &toml,
                format!(
                    "{field} is decided by {} (FROM, RUN, ENV): leave it out of the toml",
                    file.display()
                ),
            ));
        }
        let text = std::fs::read_to_string(file).map_err(|e| bad(file, e.to_string()))?;
        let (text, bases) = resolve_from(home, &text, file, stack)?;
        let mut files = vec![ContextFile {
            path: "Dockerfile".into(),
            mode: 0o644,
            bytes: text.into_bytes(),
        }];
        let dir = home.sandboxes().join(&raw.name);
        if dir.is_dir() {
            context_files(&dir, "", &mut files)?;
        }
        let total: u64 = files.iter().map(|f| f.bytes.len() as u64).sum();
        if total > CONTEXT_MAX {
            return Err(bad(
                &dir,
                format!("the build context holds {total} bytes; at most {CONTEXT_MAX}"),
            ));
        }
        let mut r = Self::fold(&raw.name, std::slice::from_ref(raw));
        (r.suite, r.variant) = (String::new(), String::new());
        r.dockerfile = Some(Dockerfile {
            context: context_hash(&files),
            bases,
            files,
        });
        Ok(r)
    }

    /// First 12 hex digits of the SHA-256 of the resolved recipe.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("recipe json");
        let digest = Sha256::digest(&json);
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `gptx/<name>:<hash>`.
    pub fn tag(&self) -> String {
        format!("gptx/{}:{}", self.name, self.hash())
    }
}

/// What an image holds and how fast it multiplies matrices, measured in its root filesystem when it
/// was built and kept with it (the label [`FACTS_LABEL`]): the agent's instructions state it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ImageFacts {
    /// `python3`'s version; None in an image without Python.
    #[serde(default)]
    pub python: Option<String>,
    /// Python libraries found, with their versions (`numpy`, `torch`, ...).
    #[serde(default)]
    pub libraries: BTreeMap<String, String>,
    /// The BLAS numpy calls through `libblas.so.3` (`OpenBLAS 0.3.21 ...`, or `reference BLAS`).
    #[serde(default)]
    pub blas: Option<String>,
    /// A float32 1024×1024 matmul per library and thread count.
    #[serde(default)]
    pub matmul: Vec<Matmul>,
}

/// One float32 1024×1024 matrix product, timed: the median of several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matmul {
    pub library: String,
    pub threads: u32,
    pub gflops: f64,
}

/// The image label that holds an image's [`ImageFacts`] as JSON.
pub const FACTS_LABEL: &str = "gptx.measured";

impl ImageFacts {
    /// The fastest measured product with at most `cpus` threads (rounded up), per library.
    pub fn matmul_for(&self, cpus: f64) -> Vec<&Matmul> {
        let most = cpus.ceil().max(1.0) as u32;
        let mut best: BTreeMap<&str, &Matmul> = BTreeMap::new();
        for m in self.matmul.iter().filter(|m| m.threads <= most) {
            let slot = best.entry(m.library.as_str()).or_insert(m);
            if m.threads > slot.threads {
                *slot = m;
            }
        }
        best.into_values().collect()
    }

    /// One sentence for the agent: the libraries with their versions, the BLAS, and the matmul
    /// figure on `cpus` CPUs. None when nothing was measured (an image without Python).
    pub fn sentence(&self, cpus: f64) -> Option<String> {
        let python = self.python.as_ref()?;
        let mut libs = vec![format!("Python {python}")];
        libs.extend(self.libraries.iter().map(|(k, v)| format!("{k} {v}")));
        let mut text = format!(
            "Measured in this image when it was built: {}",
            libs.join(", ")
        );
        if let Some(b) = &self.blas {
            text.push_str(&format!("; numpy's BLAS is {b}"));
        }
        let runs: Vec<String> = self
            .matmul_for(cpus)
            .iter()
            .map(|m| {
                let threads = if m.threads == 1 { "thread" } else { "threads" };
                format!(
                    "{} {:.0} GFLOP/s ({} {threads})",
                    m.library, m.gflops, m.threads
                )
            })
            .collect();
        if !runs.is_empty() {
            text.push_str(&format!(
                "; a float32 1024×1024 matrix product runs at {}",
                runs.join(", ")
            ));
        }
        text.push('.');
        Some(text)
    }
}

/// `text` with each `FROM gptx/<name>` (no tag) turned into that recipe's tag, and the names.
fn resolve_from(
    home: &Home,
    text: &str,
    file: &std::path::Path,
    stack: &mut Vec<String>,
) -> Result<(String, Vec<String>), RecipeError> {
    let mut bases: Vec<String> = Vec::new();
    let mut out = String::with_capacity(text.len() + 64);
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let at = |why: String| bad(file, format!("line {}: {why}", n + 1));
        let Some((image, base)) = gptx_base(line).map_err(at)? else {
            out.push_str(line);
            continue;
        };
        let recipe = Recipe::load_within(home, base, stack)
            .map_err(|e| at(format!("FROM {image}: its recipe cannot be read: {e}")))?;
        out.push_str(&line.replacen(image, &recipe.tag(), 1));
        if !bases.iter().any(|b| b == base) {
            bases.push(base.to_string());
        }
    }
    Ok((out, bases))
}

/// The image and recipe name of a `FROM gptx/<name>` line; None for any other line. Refused: a
/// reference to gptx's images that gptx cannot resolve (a tag, a registry, a variable, a `FROM`
/// continued on the next line, `--from=`): the engine would look for it on Docker Hub.
fn gptx_base(line: &str) -> Result<Option<(&str, &str)>, String> {
    let fix = "write `FROM gptx/<name>` on one line, with no tag: gptx gives it its recipe's tag";
    if let Some(w) = line
        .split_whitespace()
        .find(|w| w.starts_with("--from=") && w.contains("gptx/"))
    {
        return Err(format!("{w} names a gptx image; copy from a build stage (`FROM gptx/<name> AS <stage>`) instead"));
    }
    let Some(image) = from_image(line) else {
        return Ok(None);
    };
    if image == "\\" || line.trim_end().ends_with('\\') {
        return Err(format!("a FROM continued on the next line: {fix}"));
    }
    if image.contains('$') {
        return Err(format!(
            "FROM {image}: gptx cannot resolve a variable in FROM; {fix}"
        ));
    }
    match image.strip_prefix("gptx/") {
        Some(n) if !n.is_empty() && !n.contains([':', '@', '/']) => Ok(Some((image, n))),
        _ if image.contains("gptx/") => Err(format!("FROM {image}: {fix}")),
        _ => Ok(None),
    }
}

/// The image a `FROM [--flag ...] <image> [AS <stage>]` line names.
fn from_image(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("FROM") {
        return None;
    }
    words.find(|w| !w.starts_with("--"))
}

/// Adds the regular files under `dir` (folders followed, in name order) to `files`, as `prefix/...`.
fn context_files(
    dir: &std::path::Path,
    prefix: &str,
    files: &mut Vec<ContextFile>,
) -> Result<(), RecipeError> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| bad(dir, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(dir, e.to_string()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            return Err(bad(&path, "a build context's file names must be UTF-8"));
        };
        let rel = format!("{prefix}{name}");
        if rel == "Dockerfile" || rel == ".gptx" {
            return Err(bad(
                &path,
                format!("{rel:?} is reserved in a build context"),
            ));
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|e| bad(&path, e.to_string()))?;
        if meta.is_dir() {
            context_files(&path, &format!("{rel}/"), files)?;
        } else if meta.is_file() {
            let sum: u64 = files.iter().map(|f| f.bytes.len() as u64).sum();
            if sum + meta.len() > CONTEXT_MAX {
                return Err(bad(
                    &path,
                    format!("the build context grows past {CONTEXT_MAX} bytes here"),
                ));
            }
            let bytes = std::fs::read(&path).map_err(|e| bad(&path, e.to_string()))?;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            files.push(ContextFile {
                path: rel,
                mode,
                bytes,
            });
        } else {
            return Err(bad(
                &path,
                "a build context holds regular files and folders only (not a symlink, FIFO or device)",
            ));
        }
    }
    Ok(())
}

/// SHA-256 over every file's path, mode, length and bytes, in order.
fn context_hash(files: &[ContextFile]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.path.as_bytes());
        h.update([0]);
        h.update(f.mode.to_le_bytes());
        h.update((f.bytes.len() as u64).to_le_bytes());
        h.update(&f.bytes);
    }
    hex::encode(h.finalize())
}

fn available(home: &Home) -> Vec<String> {
    crate::config::suite::toml_names(&home.sandboxes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured() -> ImageFacts {
        let m = |library: &str, threads, gflops| Matmul {
            library: library.into(),
            threads,
            gflops,
        };
        ImageFacts {
            python: Some("3.11.2".into()),
            libraries: [("numpy", "1.24.2"), ("torch", "1.13.0a0")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            blas: Some("OpenBLAS 0.3.21 DYNAMIC_ARCH".into()),
            matmul: vec![
                m("numpy", 1, 61.4),
                m("torch", 1, 55.0),
                m("numpy", 2, 118.6),
                m("torch", 2, 101.2),
            ],
        }
    }

    #[test]
    fn the_measured_sentence_gives_the_figure_for_the_sandboxs_cpus() {
        let f = measured();
        let two = f.sentence(2.0).unwrap();
        assert_eq!(
            two,
            "Measured in this image when it was built: Python 3.11.2, numpy 1.24.2, torch 1.13.0a0; numpy's BLAS is OpenBLAS 0.3.21 DYNAMIC_ARCH; a float32 1024×1024 matrix product runs at numpy 119 GFLOP/s (2 threads), torch 101 GFLOP/s (2 threads)."
        );
        let one = f.sentence(1.0).unwrap();
        assert!(
            one.ends_with("numpy 61 GFLOP/s (1 thread), torch 55 GFLOP/s (1 thread)."),
            "{one}"
        );
        // 1.5 CPUs run two threads (the quota is spread over both).
        assert!(f.sentence(1.5).unwrap().contains("(2 threads)"));
        // An image without Python has nothing to say.
        assert_eq!(ImageFacts::default().sentence(2.0), None);
    }

    /// A home with an empty `sandboxes/` (the folder is kept alive by the first).
    fn sandboxes_home() -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sandboxes")).unwrap();
        let home = Home {
            root: dir.path().to_path_buf(),
            cache_dir: None,
        };
        (dir, home)
    }

    #[test]
    fn dockerfile_recipes_resolve_their_base_and_hash_their_context() {
        let (_dir, home) = sandboxes_home();
        let sb = home.sandboxes();
        let write = |name: &str, text: &str| std::fs::write(sb.join(name), text).unwrap();
        write("base.toml", "name = \"base\"\npackages = [\"python3\"]\n");
        write("t.toml", "name = \"t\"\ndescription = \"torch\"\n");
        write(
            "t.Dockerfile",
            "# from base\nFROM --platform=linux/amd64 gptx/base AS build\nRUN true\nfrom gptx/base\nFROM debian:bookworm\n",
        );
        let base = Recipe::load(&home, "base").unwrap();
        assert!(base.dockerfile.is_none());
        let t = Recipe::load(&home, "t").unwrap();
        let df = t.dockerfile.as_ref().unwrap();
        assert_eq!(df.bases, ["base"]);
        let sent = String::from_utf8(df.files[0].bytes.clone()).unwrap();
        assert_eq!(
            sent,
            format!("# from base\nFROM --platform=linux/amd64 {tag} AS build\nRUN true\nfrom {tag}\nFROM debian:bookworm\n", tag = base.tag())
        );
        assert_eq!(
            (t.user.as_str(), t.uid, t.suite.as_str()),
            ("agent", 1000, "")
        );
        // The context folder's files are in the hash; so is the base's tag.
        std::fs::create_dir_all(sb.join("t/sub")).unwrap();
        write("t/sub/a.txt", "a");
        let with_file = Recipe::load(&home, "t").unwrap();
        assert_eq!(
            with_file.dockerfile.as_ref().unwrap().files[1].path,
            "sub/a.txt"
        );
        assert_ne!(with_file.hash(), t.hash());
        write(
            "base.toml",
            "name = \"base\"\npackages = [\"python3\", \"procps\"]\n",
        );
        assert_ne!(Recipe::load(&home, "t").unwrap().hash(), with_file.hash());
        // What the Dockerfile decides cannot be in the toml; a context holds files only.
        write("t.toml", "name = \"t\"\npackages = [\"x\"]\n");
        let e = Recipe::load(&home, "t").unwrap_err().to_string();
        assert!(
            e.contains("t.toml") && e.contains("packages is decided by"),
            "{e}"
        );
        write("t.toml", "name = \"t\"\n");
        std::os::unix::fs::symlink("/etc/shadow", sb.join("t/link")).unwrap();
        let e = Recipe::load(&home, "t").unwrap_err().to_string();
        assert!(
            e.contains("t/link") && e.contains("regular files and folders only"),
            "{e}"
        );
        std::fs::remove_file(sb.join("t/link")).unwrap();
        // FROM each other: a loop, named.
        write("u.toml", "name = \"u\"\n");
        write("u.Dockerfile", "FROM gptx/t\n");
        write("t.Dockerfile", "FROM gptx/u\n");
        let e = Recipe::load(&home, "t").unwrap_err().to_string();
        assert!(e.contains("loop"), "{e}");
        write("t.Dockerfile", "FROM gptx/nothere\n");
        let e = Recipe::load(&home, "t").unwrap_err().to_string();
        assert!(e.contains("t.Dockerfile: line 1: FROM gptx/nothere"), "{e}");
    }

    /// A gptx image gptx cannot resolve would be looked for on Docker Hub: refused, by line; and
    /// the sandbox's user, uid and workdir are fixed.
    #[test]
    fn dockerfile_references_gptx_cannot_resolve_are_refused() {
        let (_dir, home) = sandboxes_home();
        let sb = home.sandboxes();
        let write = |name: &str, text: &str| std::fs::write(sb.join(name), text).unwrap();
        write("base.toml", "name = \"base\"\n");
        write("t.toml", "name = \"t\"\n");
        for (text, why) in [
            (
                "FROM gptx/base:pinned\n",
                "FROM gptx/base:pinned: write `FROM gptx/<name>`",
            ),
            (
                "FROM docker.io/gptx/base\n",
                "FROM docker.io/gptx/base: write",
            ),
            (
                "ARG B=gptx/base\nFROM $B\n",
                "line 2: FROM $B: gptx cannot resolve a variable",
            ),
            (
                "FROM \\\n gptx/base\n",
                "line 1: a FROM continued on the next line",
            ),
            (
                "FROM debian\nCOPY --from=gptx/base /x /x\n",
                "line 2: --from=gptx/base names a gptx image",
            ),
        ] {
            write("t.Dockerfile", text);
            let e = Recipe::load(&home, "t").unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        // The sandbox's user, uid and workdir are fixed.
        write("t.Dockerfile", "FROM gptx/base\n");
        write("t.toml", "name = \"t\"\nuid = 1001\n");
        let e = Recipe::load(&home, "t").unwrap_err().to_string();
        assert!(
            e.contains("t.toml") && e.contains("uid 1001") && e.contains("uid 1000"),
            "{e}"
        );
    }

    #[test]
    fn recipes_resolve_with_parents_and_hash_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sandboxes")).unwrap();
        std::fs::write(
            dir.path().join("sandboxes/a.toml"),
            "name = \"a\"\npackages = [\"python3\"]\nenv = { LANG = \"C.UTF-8\" }\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sandboxes/b.toml"),
            "name = \"b\"\nextends = \"a\"\npackages = [\"python3-torch\", \"python3\"]\n",
        )
        .unwrap();
        let home = Home {
            root: dir.path().to_path_buf(),
            cache_dir: None,
        };
        let b = Recipe::load(&home, "b").unwrap();
        assert_eq!(b.packages, ["python3", "python3-torch"]);
        assert_eq!(b.env["LANG"], "C.UTF-8");
        assert!(b.tag().starts_with("gptx/b:"));
        let a = Recipe::load(&home, "a").unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), Recipe::load(&home, "a").unwrap().hash());
        let e = Recipe::load(&home, "zz").unwrap_err().to_string();
        assert!(e.contains("a, b"), "{e}");
        std::fs::write(
            dir.path().join("sandboxes/c.toml"),
            "name = \"c\"\npackage = []\n",
        )
        .unwrap();
        let e = Recipe::load(&home, "c").unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("package"), "{e}");
    }
}
