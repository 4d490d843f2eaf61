//! Suites and stages: parsing `tasks/suites/*.toml` into a validated plan, budgets, and where gptx's files live.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A problem with a suite or task file; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("no suite named {name:?}: looked for {path} (available: {available})")]
    NotFound {
        name: String,
        path: String,
        available: String,
    },
    #[error("cannot find gptx's task files (a directory with tasks/suites/) and cannot unpack its own: neither XDG_CACHE_HOME nor HOME is set; run from a checkout or set GPTX_HOME")]
    NoHome,
    #[error(
        "GPTX_HOME (or --home) is {0}, which has no tasks/suites/: point it at a gptx checkout"
    )]
    BadHome(String),
    #[error("unpacking gptx's own task files: {0}")]
    Unpack(String),
}

/// Where gptx's own files are: tasks/, sandboxes/, and the cache.
#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
    /// The cache, when not `$GPTX_CACHE_DIR` or `<root>/.gptx-cache` (tests keep their own).
    pub cache_dir: Option<PathBuf>,
}

/// The nearest ancestor of `cwd` with `tasks/suites`, else `built` if it has them. A directory
/// inside a run's workspace (`<run>/workspace/`, beside `<run>/run.json`) is passed over: an
/// agent writes there, and a home's recipes are built as root.
fn checkout(cwd: &Path, built: PathBuf) -> Option<PathBuf> {
    let agents = |d: &Path| {
        d.ancestors().any(|a| {
            a.file_name() == Some("workspace".as_ref()) && a.with_file_name("run.json").is_file()
        })
    };
    let mut found = cwd.ancestors().map(Path::to_path_buf).chain([built]);
    found.find(|d| d.join("tasks/suites").is_dir() && !agents(d))
}

impl Home {
    /// `$GPTX_HOME` (or `--home`), else the nearest ancestor of the current directory with
    /// `tasks/suites`, else the source tree this binary was built from, else the task files built
    /// into the binary, unpacked into the user's cache (which is then the cache too).
    pub fn locate() -> Result<Self, SuiteError> {
        let at = |root: PathBuf| Self {
            root,
            cache_dir: None,
        };
        if let Some(h) = std::env::var_os("GPTX_HOME") {
            let root = PathBuf::from(h);
            let bad = || SuiteError::BadHome(root.display().to_string());
            return Some(at(root.clone()))
                .filter(|h| h.root.join("tasks/suites").is_dir())
                .ok_or_else(bad);
        }
        let cwd = std::env::current_dir().unwrap_or_default();
        match checkout(&cwd, PathBuf::from(env!("CARGO_MANIFEST_DIR"))) {
            Some(root) => Ok(at(root)),
            None => Self::unpacked(),
        }
    }

    /// The task files built into the binary, unpacked into the user's cache, which is then the
    /// cache too (unless `$GPTX_CACHE_DIR` says otherwise).
    fn unpacked() -> Result<Self, SuiteError> {
        let cache = crate::config::embedded::user_cache().ok_or(SuiteError::NoHome)?;
        let root = crate::config::embedded::unpack(&cache).map_err(SuiteError::Unpack)?;
        let own_cache = std::env::var_os("GPTX_CACHE_DIR").is_none();
        Ok(Self {
            root,
            cache_dir: own_cache.then_some(cache),
        })
    }

    pub fn tasks(&self) -> PathBuf {
        self.root.join("tasks")
    }

    pub fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// Large generated data (rootfs trees, package caches): `$GPTX_CACHE_DIR`, else
    /// `<home>/.gptx-cache` when the home is this user's, else the user's cache (XDG): a user
    /// never writes into a checkout someone else owns.
    pub fn cache(&self) -> PathBuf {
        if let Some(c) = &self.cache_dir {
            return c.clone();
        }
        if let Some(c) = std::env::var_os("GPTX_CACHE_DIR") {
            return PathBuf::from(c);
        }
        let mine = std::fs::metadata(&self.root).is_ok_and(|m| {
            std::os::unix::fs::MetadataExt::uid(&m) == rustix::process::geteuid().as_raw()
        });
        match crate::config::embedded::user_cache() {
            Some(user) if !mine => user,
            _ => self.root.join(".gptx-cache"),
        }
    }

    /// A suite by name (`mini`) or by path (`x/y.toml`).
    pub fn suite(&self, name_or_path: &str) -> Result<Suite, SuiteError> {
        let as_path = Path::new(name_or_path);
        if name_or_path.ends_with(".toml") || name_or_path.contains('/') {
            return self.with_reference(Suite::load(as_path)?);
        }
        let path = self
            .tasks()
            .join("suites")
            .join(format!("{name_or_path}.toml"));
        if !path.exists() {
            let available = toml_names(&self.tasks().join("suites"));
            return Err(SuiteError::NotFound {
                name: name_or_path.into(),
                path: path.display().to_string(),
                available: available.join(", "),
            });
        }
        self.with_reference(Suite::load(&path)?)
    }

    /// Fills the suite's reference values from its world's `<world>.reference.json`; a `[reference]`
    /// table in the suite file wins key by key.
    fn with_reference(&self, mut suite: Suite) -> Result<Suite, SuiteError> {
        let Some(world) = suite.world.clone() else {
            return Ok(suite);
        };
        let stored =
            crate::config::reference::load(self, &world).map_err(|e| SuiteError::Invalid {
                path: crate::config::reference::path(self, &world)
                    .display()
                    .to_string(),
                message: e.to_string(),
            })?;
        if let Some(r) = stored {
            let mut values = r.values.clone();
            values.extend(suite.reference.clone());
            suite.reference = values;
            suite.reference_world_hash = Some(r.world_hash);
        }
        Ok(suite)
    }
}

/// The stems of the `*.toml` files in a directory, sorted (empty when it cannot be read).
pub fn toml_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".toml")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Per-stage budgets, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budgets {
    pub max_steps: u64,
    pub max_sandbox_seconds: f64,
    pub max_wall_seconds: f64,
    /// Longest a single `bash` call may run (an agent's `timeout_s` is capped by it).
    pub max_step_seconds: f64,
    /// Timeout of a `bash` call that names none.
    pub default_step_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_cost_usd: Option<f64>,
}

/// Budget fields that a suite, a stage or the command line may set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetOverrides {
    pub max_steps: Option<u64>,
    pub max_sandbox_seconds: Option<f64>,
    pub max_wall_seconds: Option<f64>,
    pub max_step_seconds: Option<f64>,
    pub default_step_seconds: Option<f64>,
    pub max_tokens: Option<u64>,
    pub max_cost_usd: Option<f64>,
}

impl BudgetOverrides {
    /// Later values win.
    pub fn then(&self, over: &BudgetOverrides) -> BudgetOverrides {
        BudgetOverrides {
            max_steps: over.max_steps.or(self.max_steps),
            max_sandbox_seconds: over.max_sandbox_seconds.or(self.max_sandbox_seconds),
            max_wall_seconds: over.max_wall_seconds.or(self.max_wall_seconds),
            max_step_seconds: over.max_step_seconds.or(self.max_step_seconds),
            default_step_seconds: over.default_step_seconds.or(self.default_step_seconds),
            max_tokens: over.max_tokens.or(self.max_tokens),
            max_cost_usd: over.max_cost_usd.or(self.max_cost_usd),
        }
    }

    fn resolve(&self) -> Budgets {
        let max_step = self.max_step_seconds.unwrap_or(600.0);
        Budgets {
            max_steps: self.max_steps.unwrap_or(100),
            max_sandbox_seconds: self.max_sandbox_seconds.unwrap_or(1800.0),
            max_wall_seconds: self.max_wall_seconds.unwrap_or(3600.0),
            max_step_seconds: max_step,
            default_step_seconds: self.default_step_seconds.unwrap_or(120.0).min(max_step),
            max_tokens: self.max_tokens,
            max_cost_usd: self.max_cost_usd,
        }
    }
}

/// Resource limits of the agent's sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxLimits {
    #[serde(default = "default_memory")]
    pub memory_mb: u64,
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    #[serde(default = "default_pids")]
    pub pids: u64,
    /// Size of the workspace's own filesystem (a loop-mounted image when gptx runs as root): a write
    /// past it fails inside the sandbox with ENOSPC. The selfhost rebuild gets the same.
    #[serde(default = "default_disk")]
    pub disk_mb: u64,
    /// Size of `/tmp` and of the home directory (tmpfs; the root filesystem is read-only).
    #[serde(default = "default_tmp")]
    pub tmp_mb: u64,
    /// GPUs of the agent's sandbox, of its scoring sandboxes and of the selfhost rebuild (None: no
    /// GPU, and the containers are made as without this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Gpus>,
}

/// The GPUs a suite gives its sandboxes (`[sandbox] gpus`), as `docker run --gpus` takes them: the
/// host's every GPU, a number of them, or the ones with these ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gpus {
    /// `"all"`.
    All,
    /// `N`, at least 1.
    Count(u32),
    /// `["0", "1"]`: device ids (indexes or UUIDs), non-empty strings without commas.
    Devices(Vec<String>),
}

/// What `sandbox.gpus` may be, as its errors say it.
const GPUS_EXPECTED: &str =
    "sandbox.gpus to be \"all\", a number of GPUs (1 or more), or a list of device ids such as [\"0\", \"1\"]";

impl Gpus {
    /// How many GPUs the request names (None for "all": the host decides).
    pub fn count(&self) -> Option<u32> {
        match self {
            Self::All => None,
            Self::Count(n) => Some(*n),
            Self::Devices(ids) => Some(ids.len() as u32),
        }
    }

    /// The request within a scheduler's allocation: `allocated` is Slurm's `SLURM_JOB_GPUS` (the
    /// host's indexes of the job's GPUs, comma-separated). A count or `"all"` becomes the first of
    /// those (so two jobs on one node never share a device); ids given stay as given; without an
    /// allocation the request stands.
    pub fn within(&self, allocated: Option<&str>) -> Self {
        let ids = allocated.unwrap_or_default().split(',').map(str::trim);
        let ids: Vec<String> = ids.filter(|s| !s.is_empty()).map(String::from).collect();
        match self {
            _ if ids.is_empty() => self.clone(),
            Self::All => Self::Devices(ids),
            Self::Count(n) => Self::Devices(ids.into_iter().take(*n as usize).collect()),
            Self::Devices(_) => self.clone(),
        }
    }

    /// Device ids, checked: at least one, each a non-empty string without a comma.
    fn devices(ids: Vec<String>) -> Result<Self, String> {
        if ids.is_empty() {
            return Err("sandbox.gpus = [] names no GPU; leave `gpus` out for none".into());
        }
        match ids
            .iter()
            .find(|id| id.trim().is_empty() || id.contains(','))
        {
            Some(id) => Err(format!(
                "sandbox.gpus: the device id {id:?} must be a non-empty string without commas"
            )),
            None => Ok(Self::Devices(ids)),
        }
    }
}

/// `all`, `2`, `device=0,1`: the request as `docker run --gpus` would take it.
impl std::fmt::Display for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Count(n) => write!(f, "{n}"),
            Self::Devices(ids) => write!(f, "device={}", ids.join(",")),
        }
    }
}

/// The suite's form: `"all"`, a number, or a list of ids.
impl Serialize for Gpus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::All => s.serialize_str("all"),
            Self::Count(n) => s.serialize_u32(*n),
            Self::Devices(ids) => ids.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Gpus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(GpusVisitor)
    }
}

/// Reads `sandbox.gpus`; every error names the field.
struct GpusVisitor;

impl<'de> serde::de::Visitor<'de> for GpusVisitor {
    type Value = Gpus;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(GPUS_EXPECTED)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Gpus, E> {
        match v {
            "all" => Ok(Gpus::All),
            _ => Err(E::custom(format!(
                "sandbox.gpus = {v:?}: the only word it takes is \"all\" (else a number of GPUs, or a list of device ids)"
            ))),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Gpus, E> {
        gpu_count(v, u32::try_from(v).ok())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Gpus, E> {
        gpu_count(v, u32::try_from(v).ok())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Gpus, A::Error> {
        let mut ids = Vec::new();
        while let Some(GpuId(id)) = seq.next_element()? {
            ids.push(id);
        }
        Gpus::devices(ids).map_err(serde::de::Error::custom)
    }
}

/// `sandbox.gpus = N`: `n` is `N` when it fits a count.
fn gpu_count<E: serde::de::Error>(v: impl std::fmt::Display, n: Option<u32>) -> Result<Gpus, E> {
    match n {
        Some(n) if n >= 1 => Ok(Gpus::Count(n)),
        _ => Err(E::custom(format!(
            "sandbox.gpus = {v} is not a number of GPUs: it must be at least 1 (leave `gpus` out for none)"
        ))),
    }
}

/// One device id of `sandbox.gpus`: a string (`"0"`, not `0`).
struct GpuId(String);

impl<'de> Deserialize<'de> for GpuId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(GpuId).map_err(|e| {
            serde::de::Error::custom(format!(
                "sandbox.gpus: device ids are strings, such as [\"0\", \"1\"] ({})",
                e.to_string().trim_end()
            ))
        })
    }
}

/// The environment a sandbox with GPUs starts with: cuBLAS's workspace fixed, so that
/// `torch.use_deterministic_algorithms(True)` can run its matrix products (empty without GPUs).
pub fn gpu_env(gpus: Option<&Gpus>) -> Vec<String> {
    gpus.map(|_| vec!["CUBLAS_WORKSPACE_CONFIG=:4096:8".to_string()])
        .unwrap_or_default()
}

/// The BLAS settings every sandbox of `cpus` CPUs starts with: OpenBLAS's kernel for this host's
/// CPU ([`blas_core`]), then the thread counts (`OMP_NUM_THREADS` and the BLAS libraries' own): the
/// CPUs rounded up, so a BLAS runs as many threads as the quota's CPUs, not one per CPU of the
/// machine, and a scorer's floating-point sums come out the same in every sandbox.
pub fn thread_env(cpus: f64) -> Vec<String> {
    let n = cpus.ceil().max(1.0) as u64;
    let core = host_blas_core().map(|c| format!("OPENBLAS_CORETYPE={c}"));
    let threads = THREAD_VARS.map(|k| format!("{k}={n}"));
    core.into_iter().chain(threads).collect()
}

/// The thread counts [`thread_env`] sets.
const THREAD_VARS: [&str; 3] = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"];

/// [`blas_core`] of this host's `/proc/cpuinfo`, read once; nothing when the engine may be on
/// another machine (`DOCKER_HOST` other than a unix socket): a kernel forced on a CPU without its
/// instructions would kill every matmul there.
pub fn host_blas_core() -> Option<&'static str> {
    static CORE: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *CORE.get_or_init(|| {
        let engine = std::env::var("DOCKER_HOST").unwrap_or_default();
        if !engine.is_empty() && !engine.starts_with("unix://") {
            return None;
        }
        let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        blas_core(&info)
    })
}

/// The OpenBLAS kernel (`OPENBLAS_CORETYPE`) for the CPU `cpuinfo` describes, from its flags.
/// OpenBLAS picks its kernel by CPU model, and a model it does not know (a virtual machine's
/// "Intel(R) Xeon(R) Processor") gets its oldest, Prescott: a float32 matmul five times slower
/// than with the AVX-512 kernel on the same CPU. AVX-512 gives SkylakeX, AVX2 with FMA Haswell,
/// anything else (or another architecture) nothing: OpenBLAS's own choice stands.
pub fn blas_core(cpuinfo: &str) -> Option<&'static str> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let line = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
    let flags: std::collections::HashSet<&str> =
        line.split_once(':')?.1.split_whitespace().collect();
    let has = |want: &[&str]| want.iter().all(|f| flags.contains(f));
    if has(&["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"]) {
        Some("SkylakeX")
    } else if has(&["avx2", "fma"]) {
        Some("Haswell")
    } else {
        None
    }
}

fn default_memory() -> u64 {
    2048
}
fn default_cpus() -> f64 {
    1.0
}
fn default_pids() -> u64 {
    512
}
fn default_disk() -> u64 {
    4096
}
fn default_tmp() -> u64 {
    512
}

impl Default for SandboxLimits {
    /// An empty `[sandbox]`: each field's serde default, the one place it is defined.
    fn default() -> Self {
        toml::from_str("").expect("every [sandbox] field has a default")
    }
}

/// Which network a stage's sandbox is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StageNetwork {
    /// Loopback only.
    #[default]
    None,
    /// The run's internal network, whose only other member is the world's web server.
    World,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: String,
    #[serde(default)]
    network: Option<StageNetwork>,
    #[serde(default)]
    budgets: BudgetOverrides,
    /// selfhost: more workspace paths never copied into the rebuild (besides data/, model/, tokenizer/).
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    seed: u64,
    image: String,
    #[serde(default)]
    world: Option<String>,
    #[serde(default)]
    sandbox: SandboxLimits,
    #[serde(default)]
    budgets: BudgetOverrides,
    #[serde(default)]
    gates: BTreeMap<String, f64>,
    #[serde(default)]
    reference: BTreeMap<String, f64>,
    #[serde(default)]
    scoring: ScoringLimits,
    stages: Vec<RawStage>,
}

/// One stage of a suite, budgets resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    pub name: String,
    pub network: StageNetwork,
    /// The stage file's own overrides, before the command line's.
    #[serde(skip)]
    overrides: BudgetOverrides,
    pub budgets: Budgets,
    /// selfhost: more workspace paths the recipe copy leaves out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// A validated suite.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suite {
    pub name: String,
    pub description: String,
    pub path: PathBuf,
    pub seed: u64,
    /// The suite file's own seed: the world is built from it, whatever `--seed` says.
    pub world_seed: u64,
    pub image: String,
    pub world: Option<String>,
    pub sandbox: SandboxLimits,
    pub gates: BTreeMap<String, f64>,
    /// The reference agent's measured results on this suite's world (for normalised scores).
    pub reference: BTreeMap<String, f64>,
    /// The world hash the stored reference values were measured on.
    pub reference_world_hash: Option<String>,
    /// Limits of the scoring sandboxes (`[scoring]`).
    pub scoring: ScoringLimits,
    pub stages: Vec<Stage>,
    /// Sandbox seconds the selfhost rebuild gets: the sum of `max_sandbox_seconds` of the stages
    /// before selfhost in the suite file, whatever `--stages` keeps.
    pub rebuild_seconds: f64,
    #[serde(skip)]
    defaults: BudgetOverrides,
}

impl Suite {
    /// Reads and validates a suite file.
    pub fn load(path: &Path) -> Result<Self, SuiteError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SuiteError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses suite text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SuiteError> {
        let shown = path.display().to_string();
        let raw: RawSuite = toml::from_str(text).map_err(|e| SuiteError::Parse {
            path: shown.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |message: String| SuiteError::Invalid {
            path: shown.clone(),
            message,
        };
        if raw.stages.is_empty() {
            return Err(invalid(
                "`stages` is empty; a suite needs at least one stage".into(),
            ));
        }
        let mut stages: Vec<Stage> = Vec::new();
        for (i, s) in raw.stages.iter().enumerate() {
            let Some(def) = super::stages::find(&s.name) else {
                return Err(invalid(format!(
                    "stages[{i}].name = {:?} is not a stage (one of: {})",
                    s.name,
                    super::stages::names().collect::<Vec<_>>().join(", ")
                )));
            };
            if stages.iter().any(|t| t.name == s.name) {
                return Err(invalid(format!(
                    "stages[{i}].name = {:?} appears twice",
                    s.name
                )));
            }
            let overrides = raw.budgets.then(&s.budgets);
            stages.push(Stage {
                name: s.name.clone(),
                network: s.network.unwrap_or(def.network),
                budgets: overrides.resolve(),
                overrides: s.budgets.clone(),
                exclude: s.exclude.clone(),
            });
        }
        let suite = Suite {
            name: raw.name,
            description: raw.description,
            path: path.to_path_buf(),
            seed: raw.seed,
            world_seed: raw.seed,
            image: raw.image,
            world: raw.world,
            sandbox: raw.sandbox,
            gates: raw.gates,
            reference: raw.reference,
            reference_world_hash: None,
            scoring: raw.scoring,
            rebuild_seconds: 0.0,
            stages,
            defaults: raw.budgets,
        };
        let mut suite = suite;
        suite.rebuild_seconds = suite.earlier_sandbox_seconds();
        suite.check().map_err(invalid)?;
        Ok(suite)
    }

    fn check(&self) -> Result<(), String> {
        if self.sandbox.memory_mb < 64 {
            return Err(format!(
                "sandbox.memory_mb = {} is below the 64 MiB minimum",
                self.sandbox.memory_mb
            ));
        }
        if self.sandbox.cpus.is_nan() || self.sandbox.cpus <= 0.0 {
            return Err("sandbox.cpus must be above 0".into());
        }
        if self.sandbox.disk_mb < 16 {
            return Err(format!(
                "sandbox.disk_mb = {} is below the 16 MiB minimum",
                self.sandbox.disk_mb
            ));
        }
        if self.sandbox.tmp_mb < 1 {
            return Err("sandbox.tmp_mb must be at least 1".into());
        }
        let sc = &self.scoring;
        if sc.memory_mb < 64 {
            return Err(format!(
                "scoring.memory_mb = {} is below the 64 MiB minimum",
                sc.memory_mb
            ));
        }
        if sc.cpus.is_nan() || sc.cpus <= 0.0 {
            return Err("scoring.cpus must be above 0".into());
        }
        if !(sc.timeout_seconds.is_finite() && sc.timeout_seconds > 0.0) {
            return Err(format!(
                "scoring.timeout_seconds = {} must be a positive number",
                sc.timeout_seconds
            ));
        }
        if sc.max_vocab_size < 2 || sc.max_vocab_size > u32::MAX as u64 {
            return Err(format!(
                "scoring.max_vocab_size = {} must be between 2 and 2^32-1",
                sc.max_vocab_size
            ));
        }
        for s in &self.stages {
            let b = &s.budgets;
            for (field, v) in [
                ("max_sandbox_seconds", b.max_sandbox_seconds),
                ("max_wall_seconds", b.max_wall_seconds),
                ("max_step_seconds", b.max_step_seconds),
                ("default_step_seconds", b.default_step_seconds),
            ] {
                if !v.is_finite() || v <= 0.0 {
                    return Err(format!(
                        "stage {}: budgets.{field} = {v} must be a positive number",
                        s.name
                    ));
                }
            }
            if b.max_steps == 0 {
                return Err(format!(
                    "stage {}: budgets.max_steps must be at least 1",
                    s.name
                ));
            }
        }
        Ok(())
    }

    /// Applies command-line overrides to every stage (they win over the suite file).
    pub fn with_overrides(mut self, cli: &BudgetOverrides) -> Result<Self, SuiteError> {
        for s in &mut self.stages {
            s.budgets = self.defaults.then(&s.overrides).then(cli).resolve();
        }
        // Overrides come before `select`, so every stage of the file is still here.
        self.rebuild_seconds = self.earlier_sandbox_seconds();
        self.check().map_err(|message| SuiteError::Invalid {
            path: "command line".into(),
            message,
        })?;
        Ok(self)
    }

    /// Keeps only the named stages (in suite order); names must exist in the suite.
    pub fn select(mut self, names: &[String]) -> Result<Self, SuiteError> {
        for n in names {
            if !self.stages.iter().any(|s| &s.name == n) {
                return Err(SuiteError::Invalid {
                    path: "--stages".into(),
                    message: format!(
                        "{n:?} is not a stage of suite {} (it has: {})",
                        self.name,
                        self.stage_names().join(", ")
                    ),
                });
            }
        }
        self.stages.retain(|s| names.contains(&s.name));
        Ok(self)
    }

    /// Sum of `max_sandbox_seconds` over the stages before selfhost.
    fn earlier_sandbox_seconds(&self) -> f64 {
        self.stages
            .iter()
            .take_while(|s| s.name != "selfhost")
            .map(|s| s.budgets.max_sandbox_seconds)
            .sum()
    }

    pub fn stage_names(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.name.clone()).collect()
    }

    /// Each stage's resolved budgets, by name: what `run.json` records, and what a repeated batch
    /// compares.
    pub fn budgets_by_stage(&self) -> BTreeMap<String, Budgets> {
        self.stages
            .iter()
            .map(|s| (s.name.clone(), s.budgets.clone()))
            .collect()
    }

    /// Does any stage need the world network?
    pub fn needs_world(&self) -> bool {
        self.stages.iter().any(|s| s.network == StageNetwork::World)
    }
}

/// Limits of one scoring call (SPEC §5), from the suite's `[scoring]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringLimits {
    /// Memory of a scoring sandbox.
    #[serde(default = "scoring_memory")]
    pub memory_mb: u64,
    #[serde(default = "scoring_cpus")]
    pub cpus: f64,
    /// Wall time of one call (one `score`, one `next` batch, one `encode`...).
    #[serde(default = "scoring_timeout")]
    pub timeout_seconds: f64,
    /// Random positions at which `next` is checked against `score` (SPEC §3, K).
    #[serde(default = "scoring_k")]
    pub positions: usize,
    /// The largest `vocab_size` a tokenizer may declare.
    #[serde(default = "scoring_vocab")]
    pub max_vocab_size: u64,
}

fn scoring_memory() -> u64 {
    2048
}
fn scoring_cpus() -> f64 {
    1.0
}
fn scoring_timeout() -> f64 {
    300.0
}
fn scoring_k() -> usize {
    64
}
fn scoring_vocab() -> u64 {
    32768
}

impl Default for ScoringLimits {
    fn default() -> Self {
        Self {
            memory_mb: scoring_memory(),
            cpus: scoring_cpus(),
            timeout_seconds: scoring_timeout(),
            positions: scoring_k(),
            max_vocab_size: scoring_vocab(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_taken_from_a_slurm_jobs_allocation() {
        let ids = |v: &[&str]| Gpus::Devices(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(Gpus::Count(2).within(Some("3,5,6")), ids(&["3", "5"]));
        assert_eq!(Gpus::All.within(Some("3,5")), ids(&["3", "5"]));
        assert_eq!(ids(&["0"]).within(Some("3,5")), ids(&["0"]));
        assert_eq!(Gpus::Count(2).within(None), Gpus::Count(2));
        assert_eq!(Gpus::All.within(Some(" ")), Gpus::All);
    }

    #[test]
    fn the_blas_kernel_comes_from_the_cpus_flags() {
        let info = |flags: &str| {
            format!("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse2 {flags}\n")
        };
        let avx512 = "avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl";
        assert_eq!(blas_core(&info(avx512)), Some("SkylakeX"));
        assert_eq!(blas_core(&info("avx avx2 fma")), Some("Haswell"));
        assert_eq!(blas_core(&info("avx avx2")), None);
        assert_eq!(blas_core("no flags here"), None);
        let env = thread_env(1.5);
        assert_eq!(
            &env[env.len() - 3..],
            [
                "OMP_NUM_THREADS=2",
                "OPENBLAS_NUM_THREADS=2",
                "MKL_NUM_THREADS=2"
            ]
        );
        assert_eq!(env.len() == 4, host_blas_core().is_some());
    }

    /// An agent that writes `tasks/suites` (and recipes) into its workspace does not become the
    /// home of a gptx started from inside that workspace: the search goes on above the run.
    #[test]
    fn a_home_in_a_runs_workspace_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let run = root.join("runs/20261207-000000-abcdef");
        let planted = run.join("workspace/sub");
        for d in [root.join("tasks/suites"), planted.join("tasks/suites")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(run.join("run.json"), "{}").unwrap();
        let nowhere = root.join("no-build-tree");
        assert_eq!(
            checkout(&planted, nowhere.clone()),
            Some(root.to_path_buf())
        );
        assert_eq!(
            checkout(&planted.join("tasks"), nowhere.clone()),
            Some(root.to_path_buf())
        );
        // Without run.json beside it, a directory named workspace is an ordinary checkout.
        std::fs::remove_file(run.join("run.json")).unwrap();
        assert_eq!(checkout(&planted, nowhere), Some(planted));
    }

    const OK: &str = r#"
name = "t"
image = "base"
[budgets]
max_steps = 10
[[stages]]
name = "crawl"
[[stages]]
name = "train"
budgets = { max_steps = 3, max_step_seconds = 5 }
"#;

    #[test]
    fn parses_and_layers_budgets() {
        let s = Suite::parse(OK, Path::new("t.toml")).unwrap();
        assert_eq!(s.stage_names(), ["crawl", "train"]);
        assert_eq!(s.stages[0].budgets.max_steps, 10);
        assert_eq!(s.stages[0].network, StageNetwork::World);
        assert_eq!(s.stages[1].budgets.max_steps, 3);
        assert_eq!(s.stages[1].budgets.default_step_seconds, 5.0);
        assert_eq!(s.stages[1].network, StageNetwork::None);
        let s = s
            .with_overrides(&BudgetOverrides {
                max_steps: Some(1),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(s.stages[1].budgets.max_steps, 1);
        assert_eq!(s.stages[1].budgets.max_step_seconds, 5.0);
        let s = s.select(&["train".into()]).unwrap();
        assert_eq!(s.stage_names(), ["train"]);
        assert!(s.select(&["eval".into()]).is_err());
    }

    /// `[sandbox] gpus` in each form `docker run --gpus` takes; absent is no GPU, and the suite
    /// serializes as it was written.
    #[test]
    fn gpus_are_all_a_count_or_device_ids() {
        let with = |v: &str| OK.replace("[budgets]", &format!("[sandbox]\ngpus = {v}\n[budgets]"));
        let gpus = |v: &str| {
            Suite::parse(&with(v), Path::new("g.toml"))
                .unwrap()
                .sandbox
                .gpus
        };
        assert_eq!(gpus("\"all\""), Some(Gpus::All));
        assert_eq!(gpus("2"), Some(Gpus::Count(2)));
        let ids = Gpus::Devices(vec!["0".into(), "GPU-8f1c".into()]);
        assert_eq!(gpus(r#"["0", "GPU-8f1c"]"#), Some(ids.clone()));
        let none = Suite::parse(OK, Path::new("g.toml")).unwrap().sandbox;
        assert_eq!(none.gpus, None);
        assert!(!serde_json::to_string(&none).unwrap().contains("gpus"));
        let limits = SandboxLimits {
            gpus: Some(ids.clone()),
            ..SandboxLimits::default()
        };
        let json = serde_json::to_value(&limits).unwrap();
        assert_eq!(json["gpus"], serde_json::json!(["0", "GPU-8f1c"]));
        let back: SandboxLimits = serde_json::from_value(json).unwrap();
        assert_eq!(back.gpus, Some(ids));
        assert_eq!(Gpus::All.count(), None);
        assert_eq!(Gpus::Count(3).to_string(), "3");
        let two = Gpus::Devices(vec!["0".into(), "1".into()]);
        assert_eq!(
            (two.count(), two.to_string()),
            (Some(2), "device=0,1".into())
        );
        assert_eq!(
            gpu_env(Some(&Gpus::All)),
            ["CUBLAS_WORKSPACE_CONFIG=:4096:8"]
        );
        assert!(gpu_env(None).is_empty());
    }

    /// Anything else is an error that names the suite file and `sandbox.gpus`, and says why.
    #[test]
    fn bad_gpus_name_the_file_and_the_field() {
        let with = |v: &str| OK.replace("[budgets]", &format!("[sandbox]\ngpus = {v}\n[budgets]"));
        for (value, why) in [
            ("0", "at least 1"),
            ("-1", "at least 1"),
            ("4294967296", "at least 1"),
            ("\"some\"", "the only word it takes is \"all\""),
            ("\"ALL\"", "the only word it takes is \"all\""),
            ("[]", "names no GPU"),
            (r#"["0", ""]"#, "non-empty string without commas"),
            (r#"["0,1"]"#, "non-empty string without commas"),
            ("[0, 1]", "device ids are strings"),
            ("1.5", "a number of GPUs (1 or more)"),
            ("true", "a number of GPUs (1 or more)"),
            ("{ count = 1 }", "a number of GPUs (1 or more)"),
        ] {
            let e = Suite::parse(&with(value), Path::new("suites/gpu.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("suites/gpu.toml: "), "{value}: {e}");
            assert!(
                e.contains("sandbox.gpus") && e.contains(why),
                "{value}: {e}"
            );
        }
        // The table still refuses fields it does not know.
        let e = Suite::parse(&with("1\ngpu = 1"), Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.toml") && e.contains("unknown field `gpu`"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = Suite::parse(
            &OK.replace("max_steps = 10", "max_step = 10"),
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x.toml") && e.contains("max_step"), "{e}");
        let e = Suite::parse(&OK.replace("\"train\"", "\"fly\""), Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stages[1].name") && e.contains("fly"), "{e}");
        let e = Suite::parse(
            &OK.replace("max_steps = 10", "max_steps = 0"),
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_steps"), "{e}");
    }
}
