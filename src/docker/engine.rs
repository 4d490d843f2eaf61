//! The Docker Engine connection, the labels every gptx resource carries, and garbage collection of leftovers.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, ListVolumesOptions, RemoveContainerOptions,
    RemoveVolumeOptions,
};
use bollard::Docker;

use crate::docker::podman;

/// Label naming the run a resource belongs to.
pub(crate) const LABEL_RUN: &str = "gptx.run";
/// Label naming the resource's role: agent, scorer, web, build, bench.
pub(crate) const LABEL_ROLE: &str = "gptx.role";
/// Label with the pid of the gptx process that owns the resource.
pub const LABEL_OWNER_PID: &str = "gptx.owner_pid";
/// Label with that process's start time (clock ticks since boot), so a reused pid is not mistaken for it.
pub(crate) const LABEL_OWNER_START: &str = "gptx.owner_start";

/// Why the engine could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker Engine ({0}); is the daemon running and is /var/run/docker.sock readable? (try: sudo systemctl start docker, or run as root)")]
    Unreachable(String),
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
}

/// Connects to the engine `DOCKER_HOST` names (`unix:///path`, `tcp://host:port`), else the local
/// socket, and agrees on an API version (the engine here may be older than bollard).
pub async fn connect() -> Result<Docker, EngineError> {
    let docker = match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => Docker::connect_with_host(&host),
        _ => Docker::connect_with_local_defaults(),
    }
    .map_err(|e| EngineError::Unreachable(e.to_string()))?
    .with_timeout(Duration::from_secs(600));
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| EngineError::Unreachable(e.to_string()))?;
    crate::docker::flavor::detect(&docker).await;
    Ok(docker)
}

/// The upstream resolver every sandbox on a world network is given: TEST-NET-1 (RFC 5737), routed
/// nowhere. World host names come from host entries, so no sandbox needs DNS; and Docker's embedded
/// resolver, which forwards what it cannot answer to the container's upstream, forwards into a void.
pub(crate) const BLACKHOLE_DNS: &str = "192.0.2.53";

/// Whether an engine version predates the fix for CVE-2024-29018 (the embedded DNS of internal
/// networks forwarding queries out): before 23.0.11, 24.0.9, 25.0.4 and 26.0.0.
pub fn lacks_dns_fix(version: &str) -> bool {
    let parts: Vec<u64> = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .take(3)
        .filter_map(|p| p.parse().ok())
        .collect();
    let v = |i: usize| parts.get(i).copied().unwrap_or(0);
    let (major, minor, patch) = (v(0), v(1), v(2));
    match major {
        0..=22 => true,
        23 => (minor, patch) < (0, 11),
        24 => (minor, patch) < (0, 9),
        25 => (minor, patch) < (0, 4),
        _ => false,
    }
}

/// A warning when the engine lacks the CVE-2024-29018 fix, naming the mitigation in force.
pub(crate) async fn dns_warning(docker: &Docker) -> Option<String> {
    // Podman's version is its own, and its networks are made without a DNS server.
    if crate::docker::flavor::current().podman() {
        return None;
    }
    let version = docker.version().await.ok()?.version?;
    lacks_dns_fix(&version).then(|| {
        format!(
            "Docker Engine {version} predates the fix for CVE-2024-29018 (its embedded DNS can forward queries out of internal networks); mitigation in force: the world's host names come from host entries, and every sandbox's upstream DNS is {BLACKHOLE_DNS} (TEST-NET-1, routed nowhere)"
        )
    })
}

/// The labels for a resource of `run` with `role`, owned by this process.
pub fn labels(run: &str, role: &str) -> HashMap<String, String> {
    let me = std::process::id();
    HashMap::from([
        (LABEL_RUN.to_string(), run.to_string()),
        (LABEL_ROLE.to_string(), role.to_string()),
        (LABEL_OWNER_PID.to_string(), me.to_string()),
        (
            LABEL_OWNER_START.to_string(),
            process_start(me).unwrap_or_default(),
        ),
    ])
}

use crate::trace::rundir::process_start;

/// Is the owner recorded in these labels still alive?
pub(crate) fn owner_alive(labels: &HashMap<String, String>) -> bool {
    let Some(pid) = labels
        .get(LABEL_OWNER_PID)
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return false;
    };
    match (process_start(pid), labels.get(LABEL_OWNER_START)) {
        (Some(now), Some(then)) => &now == then,
        _ => false,
    }
}

fn run_filter(run: Option<&str>) -> HashMap<String, Vec<String>> {
    let value = match run {
        Some(r) => format!("{LABEL_RUN}={r}"),
        None => LABEL_RUN.to_string(),
    };
    HashMap::from([("label".to_string(), vec![value])])
}

/// What a clean-up removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.networks.is_empty() && self.volumes.is_empty()
    }
}

/// Removes containers, then networks, then volumes labelled `gptx.run` (of one run, or all) that `keep`
/// does not protect. Errors on single resources are collected as warnings, never abort the sweep.
pub async fn sweep(
    docker: &Docker,
    run: Option<&str>,
    keep: impl Fn(&HashMap<String, String>) -> bool,
) -> Result<(Removed, Vec<String>), EngineError> {
    let mut removed = Removed::default();
    let mut warnings = Vec::new();
    let mut elsewhere = Vec::new();
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(run_filter(run)),
            ..Default::default()
        }))
        .await?;
    for c in containers {
        let labels = c.labels.unwrap_or_default();
        if keep(&labels) {
            continue;
        }
        let Some(id) = c.id else { continue };
        match docker
            .remove_container(
                &id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => removed.containers.push(short(&id)),
            Err(e) if is_not_found(&e) => {}
            // Another gptx (a concurrent `gc` or a run's start) is removing it: wait for that.
            Err(e) if is_being_removed(&e) => elsewhere.push(id),
            Err(e) => warnings.push(format!("container {}: {e}", short(&id))),
        }
    }
    for id in elsewhere {
        let t0 = std::time::Instant::now();
        loop {
            match docker
                .inspect_container(
                    &id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            {
                Err(e) if is_not_found(&e) => break,
                _ if t0.elapsed() > Duration::from_secs(30) => {
                    warnings.push(format!(
                        "container {}: still being removed after 30 s",
                        short(&id)
                    ));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(run_filter(run)),
        }))
        .await?;
    for n in networks {
        if keep(&n.labels.clone().unwrap_or_default()) {
            continue;
        }
        let Some(name) = n.name else { continue };
        match docker.remove_network(&name).await {
            Ok(()) => removed.networks.push(name),
            Err(e) if is_not_found(&e) => {}
            Err(e) => warnings.push(format!("network {name}: {e}")),
        }
    }
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(run_filter(run)),
        }))
        .await?;
    for v in volumes.volumes.unwrap_or_default() {
        if keep(&v.labels) {
            continue;
        }
        match docker
            .remove_volume(&v.name, Some(RemoveVolumeOptions { force: true }))
            .await
        {
            Ok(()) => removed.volumes.push(v.name),
            Err(e) if is_not_found(&e) => {}
            Err(e) => warnings.push(format!("volume {}: {e}", v.name)),
        }
    }
    Ok((removed, warnings))
}

/// Removes leftovers of runs whose owning gptx process is gone (or of every run, with `all`).
/// How many containers of `run` exist (a run whose gptx is gone has none after a sweep).
pub async fn leftovers(docker: &Docker, run: &str) -> Result<usize, EngineError> {
    Ok(docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(run_filter(Some(run))),
            ..Default::default()
        }))
        .await?
        .len())
}

pub async fn gc(docker: &Docker, all: bool) -> Result<(Removed, Vec<String>), EngineError> {
    sweep(docker, None, |labels| !all && owner_alive(labels)).await
}

/// Is this the engine's 409 for a container whose removal is already under way?
fn is_being_removed(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message,
        } if message.contains("already in progress")
    )
}

/// Is this a 404 from the engine?
pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The first 12 characters of an id.
pub fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

const INHIBIT_IPV4: &str = "com.docker.network.bridge.inhibit_ipv4";

/// Creates a world network `gptx-<run>-<instance>` (`world` for the run's own): an internal bridge (no route out) whose
/// bridge interface gets no IPv4 address (`inhibit_ipv4`), so containers on it reach each other by
/// name and nothing else, not even the host: without that, every port the host listens on would
/// answer at the network's gateway address. Podman has no `inhibit_ipv4`: its own API makes the
/// network, without a DNS server (`podman::network`).
pub async fn create_world_network(
    docker: &Docker,
    run_id: &str,
    instance: &str,
) -> Result<String, bollard::errors::Error> {
    let (name, labels) = (format!("gptx-{run_id}-{instance}"), labels(run_id, "web"));
    if crate::docker::flavor::current().podman() {
        return podman::network(&name, &labels).await.map(|()| name);
    }
    let request = bollard::models::NetworkCreateRequest {
        name: name.clone(),
        driver: Some("bridge".into()),
        internal: Some(true),
        options: Some(HashMap::from([(INHIBIT_IPV4.into(), "true".into())])),
        labels: Some(labels),
        ..Default::default()
    };
    docker.create_network(request).await?;
    Ok(name)
}

/// Force-removes a container and its anonymous volumes; one already gone is not an error.
pub async fn remove_container(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    let opts = bollard::query_parameters::RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(opts)).await {
        Err(e) if !is_not_found(&e) && !is_being_removed(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Removes a volume; one already gone is not an error.
pub(crate) async fn remove_volume(
    docker: &Docker,
    name: &str,
) -> Result<(), bollard::errors::Error> {
    match docker
        .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
        .await
    {
        Err(e) if !is_not_found(&e) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_before_the_dns_fix_are_known() {
        assert!(lacks_dns_fix("20.10.24"));
        assert!(lacks_dns_fix("23.0.10"));
        assert!(!lacks_dns_fix("23.0.11"));
        assert!(lacks_dns_fix("24.0.8"));
        assert!(!lacks_dns_fix("25.0.4"));
        assert!(!lacks_dns_fix("26.1.3"));
        assert!(!lacks_dns_fix("28.2.2"));
    }

    #[test]
    fn own_labels_are_alive_and_bogus_ones_are_not() {
        let mine = labels("r1", "agent");
        assert_eq!(mine[LABEL_RUN], "r1");
        assert!(owner_alive(&mine));
        let mut dead = mine.clone();
        dead.insert(LABEL_OWNER_START.into(), "1".into());
        assert!(!owner_alive(&dead));
        dead.insert(LABEL_OWNER_PID.into(), "not-a-pid".into());
        assert!(!owner_alive(&dead));
        assert!(!owner_alive(&HashMap::new()));
    }
}
