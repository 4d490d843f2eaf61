//! The world's web server as a container (`gptx.role=web`) on the run's internal network.

use crate::docker::sandbox::{SANDBOX_GID, SANDBOX_UID};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig};
use bollard::query_parameters::{CreateContainerOptions, LogsOptions};
use bollard::Docker;
use futures_util::StreamExt;

use crate::docker::engine;
use crate::world::World;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("web server: {what}: {message}")]
    Docker { what: &'static str, message: String },
    #[error("web server did not start within {seconds} s; its output: {output}")]
    NotReady { seconds: u64, output: String },
}

/// The sysctl that lets the server, not root, listen on port 80.
const PORTS: &str = "net.ipv4.ip_unprivileged_port_start";
/// A running web container.
pub struct WebServer {
    docker: Docker,
    pub id: String,
    pub name: String,
    volumes: Vec<String>,
    /// The world's host names and the server's address on its network, once it is up.
    hosts: Vec<String>,
    ip: Option<String>,
}

fn bind_volume(name: &str, host: &Path) -> bollard::models::VolumeCreateRequest {
    bollard::models::VolumeCreateRequest {
        name: Some(name.to_string()),
        driver: Some("local".into()),
        driver_opts: Some(HashMap::from([
            ("type".into(), "none".into()),
            ("o".into(), "bind".into()),
            ("device".into(), host.display().to_string()),
        ])),
        ..Default::default()
    }
}

impl WebServer {
    /// Starts the server for `world` on `network`, answering to every host of the world, logging
    /// requests to `<log_dir>/requests.jsonl`; returns once it listens.
    pub async fn start(
        docker: &Docker,
        run_id: &str,
        image: &str,
        world: &World,
        network: &str,
        log_dir: &Path,
        instance: Option<&str>,
    ) -> Result<Self, WebError> {
        let err = |what: &'static str| {
            move |e: bollard::errors::Error| WebError::Docker {
                what,
                message: e.to_string(),
            }
        };
        let name = match instance {
            Some(i) => format!("gptx-{run_id}-web-{i}"),
            None => format!("gptx-{run_id}-web"),
        };
        let labels = engine::labels(run_id, "web");
        let web = world
            .web_dir()
            .canonicalize()
            .map_err(|e| WebError::Docker {
                what: "world directory",
                message: format!("{}: {e}", world.web_dir().display()),
            })?;
        let log = log_dir.canonicalize().map_err(|e| WebError::Docker {
            what: "log directory",
            message: format!("{}: {e}", log_dir.display()),
        })?;
        let mut server = Self {
            docker: docker.clone(),
            id: String::new(),
            name: name.clone(),
            volumes: vec![],
            hosts: vec![],
            ip: None,
        };
        for (vol, host) in [
            (format!("{name}-world"), &web),
            (format!("{name}-log"), &log),
        ] {
            let mut req = bind_volume(&vol, host);
            req.labels = Some(labels.clone());
            if let Err(e) = docker.create_volume(req).await {
                server.remove().await;
                return Err(err("create volume")(e));
            }
            server.volumes.push(vol);
        }
        let aliases: Vec<String> = world.manifest.hosts.clone();
        server.hosts = aliases.clone();
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            user: Some(format!("{SANDBOX_UID}:{SANDBOX_GID}")),
            // The server is the entrypoint: an image's own ENTRYPOINT never wraps it.
            entrypoint: Some(vec!["python3".into()]),
            cmd: Some(
                [
                    "-u",
                    "/world/server.py",
                    "--root",
                    "/world",
                    "--log",
                    &format!("/log/{}", crate::trace::rundir::REQUESTS_LOG),
                    "--port",
                    "80",
                ]
                .map(String::from)
                .to_vec(),
            ),
            labels: Some(labels),
            host_config: Some(HostConfig {
                binds: Some(vec![
                    format!("{}:/world:ro", server.volumes[0]),
                    format!("{}:/log:rw", server.volumes[1]),
                ]),
                init: Some(true),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                memory: Some(512 * 1024 * 1024),
                memory_swap: Some(512 * 1024 * 1024),
                nano_cpus: Some(1_000_000_000),
                pids_limit: Some(256),
                network_mode: Some(network.to_string()),
                sysctls: Some(HashMap::from([(PORTS.into(), "0".into())])),
                readonly_rootfs: Some(true),
                userns_mode: crate::docker::sandbox::userns(&crate::docker::flavor::current()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network.to_string(),
                    EndpointSettings {
                        aliases: Some(aliases),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        match docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
        {
            Ok(c) => server.id = c.id,
            Err(e) => {
                server.remove().await;
                return Err(err("create container")(e));
            }
        }
        if let Err(e) = docker.start_container(&server.id, None).await {
            server.remove().await;
            return Err(err("start container")(e));
        }
        let t0 = Instant::now();
        let limit = Duration::from_secs(30);
        loop {
            let out = server.output().await;
            if out.contains("gptx-web listening") {
                server.ip = docker
                    .inspect_container(&server.id, None)
                    .await
                    .ok()
                    .and_then(|c| c.network_settings)
                    .and_then(|n| n.networks)
                    .and_then(|mut n| n.remove(network))
                    .and_then(|e| e.ip_address)
                    .filter(|ip| !ip.is_empty());
                return Ok(server);
            }
            let running = docker
                .inspect_container(&server.id, None)
                .await
                .ok()
                .and_then(|c| c.state)
                .and_then(|s| s.running)
                .unwrap_or(false);
            if !running || t0.elapsed() > limit {
                server.remove().await;
                return Err(WebError::NotReady {
                    seconds: limit.as_secs(),
                    output: if out.trim().is_empty() {
                        "(none)".into()
                    } else {
                        out.trim().to_string()
                    },
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `name:ip` host entries for the world's sites, so sandboxes resolve them without DNS (empty
    /// when the address is not known: names then resolve through Docker's DNS as before).
    pub(crate) fn host_entries(&self) -> Vec<String> {
        match &self.ip {
            Some(ip) => self.hosts.iter().map(|h| format!("{h}:{ip}")).collect(),
            None => vec![],
        }
    }

    /// What the server printed so far (stdout and stderr).
    pub async fn output(&self) -> String {
        let mut s = String::new();
        let mut logs = self.docker.logs(
            &self.id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        while let Some(Ok(chunk)) = logs.next().await {
            s.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            if s.len() > 64 * 1024 {
                break;
            }
        }
        s
    }

    /// Removes the container and its volumes; never fails (the run's sweep catches leftovers).
    pub async fn remove(&self) -> Vec<String> {
        let mut warnings = vec![];
        if !self.id.is_empty() {
            if let Err(e) = engine::remove_container(&self.docker, &self.id).await {
                warnings.push(format!("removing the web container: {e}"));
            }
        }
        for v in &self.volumes {
            if let Err(e) = engine::remove_volume(&self.docker, v).await {
                warnings.push(format!("removing volume {v}: {e}"));
            }
        }
        warnings
    }
}
