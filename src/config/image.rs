//! Image recipes (`sandboxes/<name>.toml`): parsed, parents folded in, hashed into the image tag.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::suite::Home;

/// Bumped when the way images are assembled changes, so old tags are not reused.
pub(crate) const BUILDER_VERSION: u32 = 1;

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

fn available(home: &Home) -> Vec<String> {
    crate::config::suite::toml_names(&home.sandboxes())
}

#[cfg(test)]
mod tests {
    use super::*;

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
