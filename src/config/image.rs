//! Image recipes (`sandboxes/<name>.toml`): parsed, parents folded in, hashed into the image tag.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::suite::Home;

/// Bumped when the way images are assembled changes, so old tags are not reused.
/// 2: images carry what was measured in them at build ([`ImageFacts`]).
pub(crate) const BUILDER_VERSION: u32 = 2;

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
}

impl Recipe {
    /// Loads `sandboxes/<name>.toml`, following `extends`.
    pub fn load(home: &Home, name: &str) -> Result<Self, RecipeError> {
        let mut chain = Vec::new();
        let mut next = Some(name.to_string());
        while let Some(n) = next {
            if chain.iter().any(|r: &RawRecipe| r.name == n) {
                return Err(RecipeError::Recipe {
                    path: home.sandboxes().display().to_string(),
                    message: format!("recipes extend each other in a loop at {n:?}"),
                });
            }
            let path = home.sandboxes().join(format!("{n}.toml"));
            if !path.exists() {
                return Err(RecipeError::NoRecipe {
                    name: n,
                    path: path.display().to_string(),
                    available: available(home).join(", "),
                });
            }
            let text = std::fs::read_to_string(&path).map_err(|e| RecipeError::Recipe {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            let raw: RawRecipe = toml::from_str(&text).map_err(|e| RecipeError::Recipe {
                path: path.display().to_string(),
                message: e.to_string().trim_end().to_string(),
            })?;
            if raw.name != n {
                return Err(RecipeError::Recipe {
                    path: path.display().to_string(),
                    message: format!("name = {:?} but the file is {n}.toml", raw.name),
                });
            }
            next = raw.extends.clone();
            chain.push(raw);
        }
        // Fold from the root ancestor down.
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
