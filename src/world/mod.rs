//! The offline web world: config, deterministic build into the cache, manifest, baselines, web server.
//!
//! Imported by `stages`, `runner`, `docker`, `report` and `cli`; imports only `config` and `files`.
//! Its web server runs as a container from `docker::web`.
//!
//! A world is built once per (config, corpus, seed, generator source) into
//! `<cache>/worlds/<name>-<key>/`:
//!
//! ```text
//! manifest.json        what the world is: hash, splits, served pages, canaries, robots, baselines
//! gold.jsonl           {"url", "text"} per served content page: the crawl stage's gold
//! hidden/test.jsonl    T, the hidden test documents {"id", "text"} (only ever given to scorers)
//! hidden/ood.jsonl     hidden out-of-domain documents
//! web/                 what the web container sees (read-only): routes.json, server.py, sites/
//! ```

pub mod baselines;
pub mod corpus;
pub mod generate;
pub mod holdout;
pub mod html;
pub mod private;
pub mod sites;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::suite::Home;
pub use baselines::Baselines;

/// Bumped by hand when the meaning of a world changes in a way the source hash would miss.
pub(crate) const GENERATOR_VERSION: u32 = 1;
const GENERATOR_SOURCE: [&str; 7] = [
    include_str!("mod.rs"),
    include_str!("generate.rs"),
    include_str!("html.rs"),
    include_str!("corpus.rs"),
    include_str!("sites.rs"),
    include_str!("holdout.rs"),
    include_str!("private.rs"),
];

#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("world {name} not found: no {path} (worlds here: {available})")]
    NotFound {
        name: String,
        path: String,
        available: String,
    },
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    #[error("{path}, line {line}: {message}")]
    Corpus {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: not a built world ({message}); rebuild it with `gptx world build`")]
    Manifest { path: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WorldError + '_ {
    move |source| WorldError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `tasks/worlds/<name>.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The in-domain corpus, relative to `tasks/worlds/`.
    pub corpus: String,
    /// The out-of-domain corpus, relative to `tasks/worlds/`. A world with a target site has none:
    /// its out-of-domain documents are held out from the other sites.
    #[serde(default)]
    pub ood_corpus: Option<String>,
    /// Gold text to serve, in bytes; 0 serves every page not held out.
    pub served_bytes: usize,
    /// Hidden test text T, in bytes.
    pub test_bytes: usize,
    /// Largest page that may go into T.
    #[serde(default = "default_max_test_doc")]
    pub max_test_doc_bytes: usize,
    /// Out-of-domain text, in bytes; 0 takes all of it.
    pub ood_bytes: usize,
    #[serde(default = "default_blog_share")]
    pub blog_share: f64,
    #[serde(default = "default_mirror")]
    pub mirror_pages: usize,
    #[serde(default = "default_latin1")]
    pub latin1_pages: usize,
    #[serde(default = "default_503")]
    pub transient_503_share: f64,
    #[serde(default = "default_canaries")]
    pub canary_pages: usize,
    #[serde(default = "default_broken")]
    pub broken_links: usize,
    /// Requests per second per client before the server answers 429.
    #[serde(default = "default_rate")]
    pub rate_limit: u32,
    /// Requests one client may make of the world's web server in all; past it every request is
    /// answered 429 and logged as refused for the budget. None: no budget.
    #[serde(default)]
    pub request_budget: Option<u32>,
    /// More documentation sites, each from its own corpus; one may be the target T comes from.
    #[serde(default)]
    pub sites: Vec<sites::SiteConfig>,
    /// The corpus T is drawn from (the target site's, else the main one) is served, and T held
    /// out, as a private variant fixed by the seed (`private.rs`): recalled public text does not
    /// match it.
    #[serde(default)]
    pub private: bool,
    /// How T is drawn from its corpus: `pages` one by one, or whole `families` of pages that share
    /// text (`holdout.rs`).
    #[serde(default)]
    pub holdout: holdout::Holdout,
}

fn default_max_test_doc() -> usize {
    40_000
}
fn default_blog_share() -> f64 {
    0.25
}
fn default_mirror() -> usize {
    10
}
fn default_latin1() -> usize {
    3
}
fn default_503() -> f64 {
    0.05
}
fn default_canaries() -> usize {
    4
}
fn default_broken() -> usize {
    6
}
fn default_rate() -> u32 {
    20
}

impl WorldConfig {
    pub fn load(home: &Home, name: &str) -> Result<(Self, String, PathBuf), WorldError> {
        let dir = home.tasks().join("worlds");
        let path = dir.join(format!("{name}.toml"));
        if !path.exists() {
            return Err(WorldError::NotFound {
                name: name.into(),
                path: path.display().to_string(),
                available: crate::config::suite::toml_names(&dir).join(", "),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let cfg: WorldConfig = toml::from_str(&text).map_err(|e| WorldError::Config {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let bad = |m: &str| WorldError::Config {
            path: path.display().to_string(),
            message: m.into(),
        };
        if cfg.name != name {
            return Err(bad(&format!(
                "`name` is {:?} but the file is {name}.toml",
                cfg.name
            )));
        }
        if cfg.test_bytes == 0 {
            return Err(bad("`test_bytes` must be above 0"));
        }
        if !(0.0..=1.0).contains(&cfg.blog_share) || !(0.0..=1.0).contains(&cfg.transient_503_share)
        {
            return Err(bad(
                "`blog_share` and `transient_503_share` are shares between 0 and 1",
            ));
        }
        if cfg.rate_limit == 0 {
            return Err(bad("`rate_limit` must be above 0"));
        }
        sites::validate(&cfg.sites, &generate::HOSTS).map_err(|m| bad(&m))?;
        let target = cfg.sites.iter().any(|s| s.target);
        match (&cfg.ood_corpus, target) {
            (Some(_), true) => {
                return Err(bad(
                    "`ood_corpus` must be left out when a site is the target: the other sites give the out-of-domain documents",
                ))
            }
            (None, false) => {
                return Err(bad(
                    "`ood_corpus` is missing (only a world with a target site goes without)",
                ))
            }
            _ => {}
        }
        if cfg.request_budget == Some(0) {
            return Err(bad(
                "`request_budget` must be above 0 (leave it out for no budget)",
            ));
        }
        Ok((cfg, text, dir))
    }
}

/// A served content page (its gold text is in `gold.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedPage {
    pub url: String,
    pub site: String,
    pub doc: String,
    pub bytes: u64,
    pub sha256: String,
    #[serde(default)]
    pub latin1: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    pub url: String,
    pub canary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusRef {
    pub file: String,
    pub sha256: String,
    pub docs: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub file: String,
    pub docs: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub web_files: usize,
    pub web_bytes: u64,
    pub pages_per_host: BTreeMap<String, usize>,
    pub served_pages: usize,
    pub gold_bytes: u64,
    pub mirror_pages: usize,
    pub latin1_pages: usize,
    pub transient_503_pages: usize,
    pub redirects: usize,
    pub build_seconds: f64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub generator_version: u32,
    pub seed: u64,
    /// SHA-256 over every file of the world but this manifest; leaderboards compare runs of one hash.
    pub world_hash: String,
    pub corpus: CorpusRef,
    /// None for a world with a target site (its out-of-domain documents come from the other sites).
    pub ood_corpus: Option<CorpusRef>,
    /// The corpora of the extra sites, by host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub site_corpora: BTreeMap<String, CorpusRef>,
    pub hosts: Vec<String>,
    pub seed_urls: Vec<String>,
    pub served: Vec<ServedPage>,
    pub gold_file: String,
    pub test: Split,
    pub ood: Split,
    /// Disallowed path prefixes per host, as robots.txt says.
    pub disallowed: BTreeMap<String, Vec<String>>,
    pub canaries: Vec<Canary>,
    pub trap: BTreeMap<String, String>,
    pub stats: Stats,
    pub baselines: Baselines,
    /// Requests one client may make of the web server in all (None: no budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_budget: Option<u32>,
    /// The site T was held out from: the domain the model is judged on, and the gold the crawl's
    /// recall counts. None: T comes from the general web and recall counts every served page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<sites::Target>,
}

/// A built world on disk.
#[derive(Debug, Clone)]
pub struct World {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl World {
    pub fn load(dir: &Path) -> Result<Self, WorldError> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let manifest = serde_json::from_str(&text).map_err(|e| WorldError::Manifest {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// What the web container mounts.
    pub fn web_dir(&self) -> PathBuf {
        self.dir.join("web")
    }

    /// Gold text per served URL.
    pub fn gold(&self) -> Result<Vec<(String, String)>, WorldError> {
        read_jsonl(&self.dir.join(&self.manifest.gold_file), |v: GoldLine| {
            (v.url, v.text)
        })
    }

    /// T, the hidden test documents.
    pub fn test_docs(&self) -> Result<Vec<generate::HiddenDoc>, WorldError> {
        read_jsonl(&self.dir.join(&self.manifest.test.file), |d| d)
    }
}

#[derive(Serialize, Deserialize)]
struct GoldLine {
    url: String,
    text: String,
}

fn read_jsonl<T: serde::de::DeserializeOwned, U>(
    path: &Path,
    f: impl Fn(T) -> U,
) -> Result<Vec<U>, WorldError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(&f)
                .map_err(|e| WorldError::Corpus {
                    path: path.display().to_string(),
                    line: i + 1,
                    message: e.to_string(),
                })
        })
        .collect()
}

/// A world's corpora, read and checked.
pub struct Corpora {
    pub docs: Vec<corpus::Doc>,
    corpus_sha: String,
    ood_docs: Vec<corpus::Doc>,
    ood_ref: Option<CorpusRef>,
    site_docs: Vec<Vec<corpus::Doc>>,
    site_corpora: BTreeMap<String, CorpusRef>,
}

impl Corpora {
    /// Reads the corpora `cfg` names, relative to `dir` (`tasks/worlds/`).
    pub fn load(cfg: &WorldConfig, dir: &Path) -> Result<Self, WorldError> {
        let (docs, corpus_sha) = corpus::load(&dir.join(&cfg.corpus))?;
        let (ood_docs, ood_ref) = match &cfg.ood_corpus {
            Some(file) => {
                let (d, sha) = corpus::load(&dir.join(file))?;
                let r = CorpusRef {
                    file: file.clone(),
                    sha256: sha,
                    docs: d.len(),
                };
                (d, Some(r))
            }
            None => (Vec::new(), None),
        };
        let mut site_docs = Vec::new();
        let mut site_corpora = BTreeMap::new();
        for s in &cfg.sites {
            let path = dir.join(&s.corpus);
            let (d, sha) = corpus::load(&path)?;
            sites::check_ids(&d).map_err(|message| WorldError::Config {
                path: path.display().to_string(),
                message,
            })?;
            site_corpora.insert(
                s.host.clone(),
                CorpusRef {
                    file: s.corpus.clone(),
                    sha256: sha,
                    docs: d.len(),
                },
            );
            site_docs.push(d);
        }
        Ok(Self {
            docs,
            corpus_sha,
            ood_docs,
            ood_ref,
            site_docs,
            site_corpora,
        })
    }

    /// The world these corpora make with `cfg` and `seed` (nothing written).
    pub fn generate(&self, cfg: &WorldConfig, seed: u64) -> generate::Generated {
        let target = cfg.sites.iter().position(|s| s.target);
        let variant = |docs: &[corpus::Doc], domain: &str| {
            cfg.private.then(|| private::variant(docs, seed, domain))
        };
        let site_variant = target.and_then(|t| variant(&self.site_docs[t], &cfg.sites[t].domain));
        let main_variant = if target.is_none() {
            variant(&self.docs, "")
        } else {
            None
        };
        let sites: Vec<(&sites::SiteConfig, &[corpus::Doc])> = cfg
            .sites
            .iter()
            .zip(&self.site_docs)
            .enumerate()
            .map(|(i, (s, d))| match (&site_variant, Some(i) == target) {
                (Some(v), true) => (s, v.as_slice()),
                _ => (s, d.as_slice()),
            })
            .collect();
        let docs = main_variant.as_deref().unwrap_or(&self.docs);
        generate::generate(cfg, seed, docs, &self.ood_docs, &sites)
    }
}

/// The cache directory of a world, from everything that determines its content.
fn cache_key(
    cfg_text: &str,
    corpus: &[u8],
    ood: &[u8],
    sites: &[Vec<u8>],
    seed: u64,
    server: &[u8],
) -> String {
    let mut h = Sha256::new();
    h.update(GENERATOR_VERSION.to_le_bytes());
    for s in GENERATOR_SOURCE {
        h.update(Sha256::digest(s.as_bytes()));
    }
    h.update(Sha256::digest(cfg_text.as_bytes()));
    h.update(Sha256::digest(corpus));
    h.update(Sha256::digest(ood));
    for s in sites {
        h.update(Sha256::digest(s));
    }
    h.update(seed.to_le_bytes());
    h.update(Sha256::digest(server));
    hex::encode(h.finalize())[..12].to_string()
}

/// Progress callbacks for a build (a terminal bar, or nothing).
pub trait BuildProgress: Sync {
    fn phase(&self, _msg: &str) {}
    fn start_baselines(&self, _docs: u64) {}
    fn tick(&self) {}
}

/// No progress output.
pub struct Quiet;
impl BuildProgress for Quiet {}

/// The built world for `name` and `seed`, building it first if the cache lacks it.
pub fn ensure(
    home: &Home,
    name: &str,
    seed: u64,
    progress: &dyn BuildProgress,
) -> Result<(World, bool), WorldError> {
    let (cfg, cfg_text, dir) = WorldConfig::load(home, name)?;
    let corpus_path = dir.join(&cfg.corpus);
    let ood_path = cfg.ood_corpus.as_ref().map(|p| dir.join(p));
    let site_paths: Vec<PathBuf> = cfg.sites.iter().map(|s| dir.join(&s.corpus)).collect();
    let server_path = dir.join("server.py");
    let corpus_raw = std::fs::read(&corpus_path).map_err(io(&corpus_path))?;
    let ood_raw = match &ood_path {
        Some(p) => std::fs::read(p).map_err(io(p))?,
        None => Vec::new(),
    };
    let site_raws = site_paths
        .iter()
        .map(|p| std::fs::read(p).map_err(io(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let server = std::fs::read(&server_path).map_err(io(&server_path))?;
    let key = cache_key(&cfg_text, &corpus_raw, &ood_raw, &site_raws, seed, &server);
    let root = home.cache().join("worlds");
    // The hidden documents are here: root alone may look (external agents run as another user).
    crate::files::make_private(&root).map_err(io(&root))?;
    let out = root.join(format!("{name}-s{seed}-{key}"));
    if let Some(w) = cached(&out)? {
        return Ok((w, false));
    }
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let locks = home.cache().join("locks");
    std::fs::create_dir_all(&locks).map_err(io(&locks))?;
    let lock_path = locks.join(format!("world-{name}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    if let Some(w) = cached(&out)? {
        return Ok((w, false));
    }
    let t0 = Instant::now();
    progress.phase("reading the corpus");
    let c = Corpora::load(&cfg, &dir)?;
    progress.phase("generating sites");
    let g = c.generate(&cfg, seed);
    let (docs, ood_ref, site_corpora) = (&c.docs, c.ood_ref.clone(), c.site_corpora.clone());
    let corpus_sha = c.corpus_sha.clone();

    // Under the lock nobody else builds this world: any half-built one of it is a killed
    // builder's, and goes.
    let stale = format!(".{name}-s");
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&stale) && n.contains(".tmp") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    // Named by host and process: nodes sharing a cache never write into one another's.
    let builder = format!("{}-{}", host_name(), std::process::id());
    let tmp = root.join(format!(".{name}-s{seed}-{key}.tmp{builder}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let (world_hash, web_bytes) = write_world(&g, &server, &tmp)?;

    progress.phase("computing baselines (xz -9e of T given the served text)");
    progress.start_baselines(g.test.len() as u64);
    let mut context = Vec::new();
    for (i, (_, t)) in g.served.iter().enumerate() {
        if i > 0 {
            context.extend_from_slice(b"\n\n");
        }
        context.extend_from_slice(t.as_bytes());
    }
    let tests: Vec<&[u8]> = g.test.iter().map(|d| d.text.as_bytes()).collect();
    let baselines = baselines::compute(&context, &tests, &|| progress.tick());

    let mut pages_per_host = BTreeMap::new();
    for k in g.routes.pages.keys() {
        let host = k.split('/').next().unwrap_or("").to_string();
        *pages_per_host.entry(host).or_insert(0) += 1;
    }
    let manifest = Manifest {
        name: cfg.name.clone(),
        generator_version: GENERATOR_VERSION,
        seed,
        world_hash,
        corpus: CorpusRef {
            file: cfg.corpus.clone(),
            sha256: corpus_sha,
            docs: docs.len(),
        },
        ood_corpus: ood_ref,
        site_corpora,
        hosts: g.hosts.clone(),
        seed_urls: g.seed_urls.clone(),
        served: g.served.iter().map(|(p, _)| p.clone()).collect(),
        gold_file: "gold.jsonl".into(),
        test: Split {
            file: "hidden/test.jsonl".into(),
            docs: g.test.len(),
            bytes: g.test.iter().map(|d| d.text.len() as u64).sum(),
        },
        ood: Split {
            file: "hidden/ood.jsonl".into(),
            docs: g.ood.len(),
            bytes: g.ood.iter().map(|d| d.text.len() as u64).sum(),
        },
        disallowed: g.disallowed.clone(),
        canaries: g.canaries.clone(),
        trap: BTreeMap::from([(
            generate::DOCS.to_string(),
            generate::TRAP_PREFIX.to_string(),
        )]),
        stats: Stats {
            web_files: g.web.len() + 2,
            web_bytes,
            pages_per_host,
            served_pages: g.served.len(),
            gold_bytes: g.served.iter().map(|(p, _)| p.bytes).sum(),
            mirror_pages: g.mirror_pages,
            latin1_pages: g.latin1_pages,
            transient_503_pages: g.transient_503,
            redirects: g.routes.redirects.len() + g.routes.redirect_prefixes.len(),
            build_seconds: t0.elapsed().as_secs_f64(),
        },
        baselines,
        request_budget: cfg.request_budget,
        target: g.target.clone(),
    };
    let mut f = std::fs::File::create(tmp.join("manifest.json")).map_err(io(&tmp))?;
    f.write_all(&serde_json::to_vec_pretty(&manifest).expect("manifest serialises"))
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    // Another node may have finished the same world first (its lock is not ours when the cache
    // is on a filesystem without shared locks): the same seed gives the same bytes, so a copy
    // there that verifies is kept and ours goes; one that does not verify is replaced.
    if let Some(w) = cached(&out)? {
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok((w, false));
    }
    if out.exists() {
        // Only a copy that does not verify gets here (a read error has stopped the build).
        let aside = root.join(format!(".{name}-s{seed}-{key}.bad{builder}"));
        std::fs::rename(&out, &aside).map_err(io(&out))?;
        let _ = std::fs::remove_dir_all(&aside);
    }
    if let Err(e) = std::fs::rename(&tmp, &out) {
        // Another node renamed its copy into place first: keep it if it verifies.
        if let Some(w) = cached(&out)? {
            let _ = std::fs::remove_dir_all(&tmp);
            return Ok((w, false));
        }
        return Err(io(&out)(e));
    }
    drop(lock);
    Ok((World::load(&out)?, true))
}

/// The world cached in `out`, when its files hash to the hash its manifest records; None when
/// there is none or its copy does not verify (edited, truncated, half-copied to this node), and it
/// is built again. A copy that cannot be read (a stale NFS handle, too many open files) is an
/// error: it may be good, and other nodes may be using it.
fn cached(out: &Path) -> Result<Option<World>, WorldError> {
    if !out.join("manifest.json").exists() {
        return Ok(None);
    }
    let Ok(w) = World::load(out) else {
        tracing::warn!("{}: its manifest does not read: built again", out.display());
        return Ok(None);
    };
    let h = hash_tree(out)?;
    if h == w.manifest.world_hash {
        return Ok(Some(w));
    }
    tracing::warn!(
        "{}: its files hash to {h}, its manifest says {}: not trusted, built again",
        out.display(),
        w.manifest.world_hash
    );
    Ok(None)
}

/// This host's name (for names of files several nodes may write).
fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes a generated world's files (all but the manifest) under `tmp`; returns the world hash and
/// the bytes of served HTML.
pub fn write_world(
    g: &generate::Generated,
    server: &[u8],
    tmp: &Path,
) -> Result<(String, u64), WorldError> {
    let write = |rel: &str, bytes: &[u8]| -> Result<(), WorldError> {
        let p = tmp.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&p, bytes).map_err(io(&p))
    };
    let mut web_bytes = 0u64;
    for (rel, bytes) in &g.web {
        web_bytes += bytes.len() as u64;
        write(&format!("web/{rel}"), bytes)?;
    }
    let routes = serde_json::to_vec_pretty(&g.routes).expect("routes serialise");
    write("web/routes.json", &routes)?;
    write("web/server.py", server)?;
    let jsonl = |items: Vec<String>| items.join("\n") + "\n";
    write(
        "gold.jsonl",
        jsonl(
            g.served
                .iter()
                .map(|(p, t)| {
                    serde_json::to_string(&GoldLine {
                        url: p.url.clone(),
                        text: t.clone(),
                    })
                    .expect("json")
                })
                .collect(),
        )
        .as_bytes(),
    )?;
    let hidden = |docs: &[generate::HiddenDoc]| {
        jsonl(
            docs.iter()
                .map(|d| serde_json::to_string(d).expect("json"))
                .collect(),
        )
    };
    write("hidden/test.jsonl", hidden(&g.test).as_bytes())?;
    write("hidden/ood.jsonl", hidden(&g.ood).as_bytes())?;
    Ok((hash_tree(tmp)?, web_bytes))
}

/// SHA-256 over (path, SHA-256 of content) of every file under `dir` but `manifest.json`, sorted.
pub fn hash_tree(dir: &Path) -> Result<String, WorldError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            let p = e.path();
            if e.file_type().map_err(io(&p))?.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .to_string();
                if rel != "manifest.json" {
                    files.push((rel, p));
                }
            }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for (rel, p) in files {
        let bytes = std::fs::read(&p).map_err(io(&p))?;
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(Sha256::digest(&bytes));
    }
    Ok(hex::encode(h.finalize()))
}
