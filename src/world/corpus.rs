//! The shipped text corpus (`tasks/worlds/corpus/*.jsonl.xz`): documents made of text blocks.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::WorldError;

/// One block of a page: a heading, paragraph, preformatted text or list item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    /// `h1` | `h2` | `h3` | `p` | `pre` | `li`.
    pub k: String,
    pub t: String,
}

/// One page of the corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    /// The page's path in its source, e.g. `library/os.path.html`.
    pub id: String,
    pub title: String,
    pub blocks: Vec<Block>,
    /// Other pages of the corpus this one links to.
    #[serde(default)]
    pub links: Vec<String>,
}

impl Doc {
    /// The gold main text: the blocks' texts joined by blank lines.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for (i, b) in self.blocks.iter().enumerate() {
            if i > 0 {
                s.push_str("\n\n");
            }
            s.push_str(&b.t);
        }
        s
    }

    /// Can the page be served as ISO-8859-1 without loss?
    pub fn latin1(&self) -> bool {
        self.title.chars().all(|c| (c as u32) < 256)
            && self
                .blocks
                .iter()
                .all(|b| b.t.chars().all(|c| (c as u32) < 256))
    }

    /// Does the text hold characters beyond ASCII (so Latin-1 vs UTF-8 matters)?
    pub(crate) fn non_ascii(&self) -> bool {
        self.blocks.iter().any(|b| !b.t.is_ascii())
    }
}

/// Reads an xz-compressed JSON-lines corpus; returns the documents and the SHA-256 of the
/// decompressed bytes.
pub fn load(path: &Path) -> Result<(Vec<Doc>, String), WorldError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| WorldError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut raw = Vec::new();
    xz2::read::XzDecoder::new(file)
        .read_to_end(&mut raw)
        .map_err(|source| WorldError::Io {
            path: shown.clone(),
            source,
        })?;
    let sha = hex::encode(Sha256::digest(&raw));
    let mut docs = Vec::new();
    for (i, line) in BufReader::new(&raw[..]).lines().enumerate() {
        let line = line.map_err(|source| WorldError::Io {
            path: shown.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let doc: Doc = serde_json::from_str(&line).map_err(|e| WorldError::Corpus {
            path: shown.clone(),
            line: i + 1,
            message: e.to_string(),
        })?;
        if doc.blocks.is_empty() {
            return Err(WorldError::Corpus {
                path: shown.clone(),
                line: i + 1,
                message: format!("document {} has no blocks", doc.id),
            });
        }
        docs.push(doc);
    }
    Ok((docs, sha))
}
