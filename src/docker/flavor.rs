//! Which engine answers (the Docker Engine or Podman, with root or without) and what that changes in a sandbox.
//!
//! gptx speaks the Docker API to both. Podman answers it with its own version (4.3.1 is not a
//! Docker version), takes other tmpfs and network options, and, run rootless, maps the container's
//! users into the user's subordinate ids and may enforce no cgroup limits at all (cgroup v1). The
//! facts are read once per process, when it connects, and every sandbox is made from them.

use std::sync::OnceLock;

use bollard::Docker;
use serde::{Deserialize, Serialize};

use crate::trace::rundir::{Guarantee, Isolation};

/// What the engine is, as read when gptx connected to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineFacts {
    /// `docker` or `podman`.
    pub kind: String,
    /// The engine's own version (Podman's, not the API version it imitates).
    pub version: String,
    /// Whether it runs without root (its containers' root is an ordinary user on the host).
    pub rootless: bool,
    /// The storage driver (overlay, vfs, ...).
    pub storage_driver: String,
    /// `1` or `2`.
    pub cgroup_version: String,
    /// Whether the engine enforces a container's memory, CPU and pids limits.
    pub cgroup_limits: bool,
}

impl Default for EngineFacts {
    fn default() -> Self {
        Self {
            kind: "docker".into(),
            version: String::new(),
            rootless: false,
            storage_driver: String::new(),
            cgroup_version: String::new(),
            cgroup_limits: true,
        }
    }
}

impl EngineFacts {
    /// Is this Podman?
    pub fn podman(&self) -> bool {
        self.kind == "podman"
    }

    /// One line for a terminal: `podman 4.3.1, rootless, overlay, cgroup v1`.
    pub fn summary(&self) -> String {
        let mode = if self.rootless { "rootless" } else { "root" };
        format!(
            "{} {}, {mode}, {} storage, cgroup v{}",
            self.kind, self.version, self.storage_driver, self.cgroup_version
        )
    }
}

/// How an `exec:` agent was kept from the harness's secrets: `nobody` (gptx ran as root),
/// `namespaces` (its own user, mount and PID namespaces), `none` (neither).
pub type ExecAgentIsolation = &'static str;

/// The run's isolation as run.json records it: the engine, and each guarantee that depends on the
/// host. `disk_problem` is why the workspace has no disk limit (None: it has one); `exec_agent` is
/// set for an `exec:` agent.
pub fn isolation(
    facts: &EngineFacts,
    disk_problem: Option<&str>,
    exec_agent: Option<ExecAgentIsolation>,
) -> Isolation {
    let g = |name: &str, held: bool, detail: String| Guarantee {
        name: name.into(),
        held,
        detail,
    };
    let mut guarantees = vec![
        g("cgroup_limits", facts.cgroup_limits, cgroup_detail(facts)),
        match disk_problem {
            None => g("disk_limit", true, "the workspace is a loop-mounted ext4 of the suite's disk_mb".into()),
            Some(why) => g("disk_limit", false, format!("{why}; /tmp and the home are still size-limited tmpfs, the workspace is bounded by the host's disk alone")),
        },
        agent_uid(facts),
        match disk_problem {
            None => g("write_feed", true, "fanotify reports every write on the workspace's file system".into()),
            Some(_) => g("write_feed", false, "no fanotify mark without root: each snapshot stats every file, and a write through a descriptor the agent parked (SCM_RIGHTS, then AIO or a shared map) can go unseen".into()),
        },
    ];
    if let Some(how) = exec_agent {
        guarantees.push(match how {
            "nobody" => g("exec_agent", true, "the exec: agent runs as nobody (65534)".into()),
            "namespaces" => g("exec_agent", true, "the exec: agent runs as the harness's user in its own user, mount and PID namespaces: the cache, the runs, the engine's socket hidden, the file system read-only".into()),
            _ => g("exec_agent", false, "the exec: agent runs as the harness's user, unconfined (GPTX_UNCONFINED_AGENTS=1): it can read hidden data".into()),
        });
    }
    Isolation {
        engine: facts.summary(),
        rootless: facts.rootless || !rustix::process::geteuid().is_root(),
        guarantees,
    }
}

fn cgroup_detail(facts: &EngineFacts) -> String {
    match facts.cgroup_limits {
        true => "the engine enforces each sandbox's memory, CPU and pids limits".into(),
        false => format!(
            "{} without root on cgroup v{} has no cgroup controllers, so no sandbox has a memory, CPU or pids limit of its own; what bounds them is the host's (a Slurm job's cgroup, where the cluster sets one)",
            facts.kind, facts.cgroup_version
        ),
    }
}

/// Whose uid the sandbox user is on the host.
fn agent_uid(facts: &EngineFacts) -> Guarantee {
    let (held, detail) = match (facts.podman(), facts.rootless) {
        (true, true) => (false, "the sandbox user is the harness's own user on the host (keep-id), inside the container's user, PID, mount and network namespaces, without capabilities; the container's root is a subordinate id".to_string()),
        (_, true) => (true, "the sandbox user is a subordinate id of the engine's user, not the harness's".to_string()),
        _ => (true, "the sandbox user is uid 1000 on the host, not the harness's".to_string()),
    };
    Guarantee {
        name: "agent_uid".into(),
        held,
        detail,
    }
}

static FACTS: OnceLock<EngineFacts> = OnceLock::new();

/// The facts of the engine this process connected to (a Docker Engine with root before any).
pub fn current() -> EngineFacts {
    FACTS.get().cloned().unwrap_or_default()
}

/// Reads the engine's facts and keeps them for the process (the first engine read wins).
pub(crate) async fn detect(docker: &Docker) -> EngineFacts {
    if let Some(f) = FACTS.get() {
        return f.clone();
    }
    let facts = read(docker).await;
    FACTS.get_or_init(|| facts).clone()
}

async fn read(docker: &Docker) -> EngineFacts {
    let version = docker.version().await.ok();
    let info = docker.info().await.ok();
    let podman = version.as_ref().and_then(|v| {
        let components = v.components.as_deref().unwrap_or_default();
        components
            .iter()
            .find(|c| c.name == "Podman Engine")
            .map(|c| c.version.clone())
    });
    let storage_driver = info
        .as_ref()
        .and_then(|i| i.driver.clone())
        .unwrap_or_default();
    let cgroup_version = info
        .as_ref()
        .and_then(|i| i.cgroup_version.as_ref())
        .map(|v| v.to_string().trim_start_matches('v').to_string())
        .unwrap_or_default();
    match podman {
        Some(version) => {
            let libpod = libpod_info().await;
            EngineFacts {
                kind: "podman".into(),
                version,
                rootless: libpod.as_ref().is_none_or(|l| l.rootless),
                storage_driver,
                cgroup_version,
                cgroup_limits: libpod.is_some_and(|l| l.limits()),
            }
        }
        None => {
            let info = info.unwrap_or_default();
            let security = info.security_options.unwrap_or_default();
            let limits = [info.memory_limit, info.pids_limit, info.cpu_cfs_quota];
            EngineFacts {
                kind: "docker".into(),
                version: version.and_then(|v| v.version).unwrap_or_default(),
                rootless: security.iter().any(|s| s.contains("name=rootless")),
                storage_driver,
                cgroup_version,
                cgroup_limits: limits.iter().all(|l| *l == Some(true)),
            }
        }
    }
}

/// What Podman's own API says of itself that its Docker API hides.
#[derive(Debug, Default, PartialEq, Eq)]
struct Libpod {
    rootless: bool,
    /// The cgroup controllers its containers may use (empty: none, rootless on cgroup v1).
    controllers: Vec<String>,
}

impl Libpod {
    fn limits(&self) -> bool {
        !self.rootless
            || ["memory", "cpu", "pids"]
                .iter()
                .all(|c| self.controllers.iter().any(|have| have == c))
    }
}

/// Podman's `/libpod/info`: its Docker API claims memory limits it does not enforce, its own says
/// which controllers it has. None when it cannot be read.
async fn libpod_info() -> Option<Libpod> {
    let (status, body) = crate::docker::podman::request("GET", "/v4.0.0/libpod/info", None)
        .await
        .ok()?;
    (status == 200).then(|| parse_libpod(&body)).flatten()
}

fn parse_libpod(body: &[u8]) -> Option<Libpod> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let host = v.get("host")?;
    let rootless = host.pointer("/security/rootless")?.as_bool()?;
    let controllers = host
        .get("cgroupControllers")
        .and_then(|c| c.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Some(Libpod {
        rootless,
        controllers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpod_info_says_rootless_and_its_controllers() {
        let body = br#"{"host":{"security":{"rootless":true},"cgroupControllers":[]}}"#;
        let l = parse_libpod(body).unwrap();
        assert!(l.rootless && !l.limits());
        let body = br#"{"host":{"security":{"rootless":true},"cgroupControllers":["cpu","memory","pids"]}}"#;
        assert!(parse_libpod(body).unwrap().limits());
        let body = br#"{"host":{"security":{"rootless":false},"cgroupControllers":[]}}"#;
        assert!(parse_libpod(body).unwrap().limits());
        assert_eq!(parse_libpod(b"{}"), None);
        assert_eq!(parse_libpod(b"not json"), None);
    }

    #[test]
    fn each_guarantee_is_held_or_says_why_not() {
        let docker = EngineFacts {
            version: "20.10.24".into(),
            ..EngineFacts::default()
        };
        let full = isolation(&docker, None, None);
        assert!(full.missing().is_empty(), "{full:?}");
        let names: Vec<&str> = full.guarantees.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            ["cgroup_limits", "disk_limit", "agent_uid", "write_feed"]
        );
        let podman = EngineFacts {
            kind: "podman".into(),
            rootless: true,
            cgroup_version: "1".into(),
            cgroup_limits: false,
            ..EngineFacts::default()
        };
        let why = "gptx is not running as root, so it cannot mount one";
        let reduced = isolation(&podman, Some(why), Some("namespaces"));
        assert!(reduced.rootless);
        let missing = ["cgroup_limits", "disk_limit", "agent_uid", "write_feed"];
        assert_eq!(reduced.missing(), missing);
        let disk = &reduced.guarantees[1];
        assert!(disk.detail.starts_with(why), "{}", disk.detail);
        assert!(reduced.guarantees[0].detail.contains("cgroup v1"));
        let unconfined = isolation(&podman, Some(why), Some("none"));
        assert_eq!(unconfined.missing().last(), Some(&"exec_agent"));
    }

    #[test]
    fn the_summary_names_engine_mode_storage_and_cgroups() {
        let f = EngineFacts {
            kind: "podman".into(),
            version: "4.3.1".into(),
            rootless: true,
            storage_driver: "overlay".into(),
            cgroup_version: "1".into(),
            cgroup_limits: false,
        };
        assert_eq!(
            f.summary(),
            "podman 4.3.1, rootless, overlay storage, cgroup v1"
        );
        assert!(f.podman() && !EngineFacts::default().podman());
    }
}
