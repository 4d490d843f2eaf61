//! Images from `sandboxes/<name>.Dockerfile`: the context sent as a tar stream to the engine's build API, measured, then tagged.
//!
//! The build goes to a staging tag first (`<tag>-building`); the probe measures that image in a
//! container; a second, metadata-only build adds the measured label and takes the recipe's tag.
//! So the recipe's tag only ever names a whole, measured image. Images built without root
//! (`rootless`) are imported to a staging tag and finished by the same second half.

use std::collections::HashMap;

use bollard::query_parameters::{BuildImageOptions, RemoveImageOptions};
use bollard::Docker;
use futures_util::StreamExt;
use indicatif::ProgressBar;

use crate::config::image::{ContextFile, Dockerfile, ImageFacts, Recipe};
use crate::docker::images::ImageError;

/// Where a recipe's context finds the host's trusted certificates (`COPY .gptx/host-ca.crt ...`):
/// registries behind a TLS-inspecting proxy are reachable only with them. Not part of the
/// context's hash: it is the machine's, not the recipe's.
pub(crate) const HOST_CA: &str = ".gptx/host-ca.crt";

/// The host's CA bundles, in the order they are looked for.
const HOST_CA_FILES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// Lines of build output kept for an error.
const TAIL: usize = 20;

/// Builds `recipe`'s image from its Dockerfile and tags it `recipe.tag()`.
pub(super) async fn build(
    docker: &Docker,
    recipe: &Recipe,
    df: &Dockerfile,
    force: bool,
    pb: &ProgressBar,
) -> Result<(), ImageError> {
    let staging = staging_tag(&recipe.tag());
    let labels = HashMap::from([("gptx.recipe".to_string(), recipe.name.clone())]);
    let context = context_tar(&df.files, host_ca())?;
    run(docker, &recipe.name, context, &staging, labels, force, pb).await?;
    measure_and_tag(docker, recipe, &staging, &[], pb).await
}

/// A staging tag for an image of `tag` still being made: its own, so builders of other homes on
/// the same engine do not share it.
pub(super) fn staging_tag(tag: &str) -> String {
    format!("{tag}-building-{:08x}", rand::random::<u32>())
}

/// Measures the image at `staging` in containers, then gives it the `config` instructions (`ENV`,
/// `USER`...), the measured label and the recipe's tag by a metadata-only build (`FROM <staging>`);
/// the staging tag is removed whatever happens.
pub(super) async fn measure_and_tag(
    docker: &Docker,
    recipe: &Recipe,
    staging: &str,
    config: &[String],
    pb: &ProgressBar,
) -> Result<(), ImageError> {
    pb.set_message("measuring the image: libraries, BLAS, a float32 matmul");
    let facts = crate::docker::probe::measure_image(docker, staging, recipe.uid)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!("image {}: not measured: {e}", recipe.name);
            ImageFacts::default()
        });
    let lines = config
        .iter()
        .cloned()
        .chain([crate::docker::probe::label(&facts)]);
    let labelled = format!("FROM {staging}\n{}\n", lines.collect::<Vec<_>>().join("\n"));
    let file = ContextFile {
        path: "Dockerfile".into(),
        mode: 0o644,
        bytes: labelled.into_bytes(),
    };
    let done = async {
        let context = context_tar(std::slice::from_ref(&file), None)?;
        pb.set_message("labelling the image with what was measured");
        let (tag, labels) = (recipe.tag(), HashMap::new());
        run(docker, &recipe.name, context, &tag, labels, false, pb).await
    }
    .await;
    untag(docker, staging).await;
    done
}

/// Removes the tag `staging` only: the image itself is the parent of the tagged one.
pub(super) async fn untag(docker: &Docker, staging: &str) {
    let untag = RemoveImageOptions {
        noprune: true,
        ..Default::default()
    };
    let _ = docker.remove_image(staging, Some(untag), None).await;
}

/// The host's CA bundle, when it has one.
fn host_ca() -> Option<Vec<u8>> {
    HOST_CA_FILES.iter().find_map(|p| std::fs::read(p).ok())
}

/// The build context as an uncompressed tar: the recipe's files (owned by root, dated 1970) and
/// [`HOST_CA`] (empty when the host has none, so a `COPY` of it never fails).
pub(crate) fn context_tar(
    files: &[ContextFile],
    host_ca: Option<Vec<u8>>,
) -> Result<Vec<u8>, ImageError> {
    let mut tar = tar::Builder::new(Vec::new());
    let ca = ContextFile {
        path: HOST_CA.into(),
        mode: 0o644,
        bytes: host_ca.unwrap_or_default(),
    };
    let wrap = |e: std::io::Error| ImageError::Io {
        what: "making the build context".into(),
        source: e,
    };
    for f in files.iter().chain(std::iter::once(&ca)) {
        let mut h = tar::Header::new_gnu();
        h.set_size(f.bytes.len() as u64);
        h.set_mode(f.mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        // GNU long-name entries for a path past the header's 100 bytes.
        tar.append_data(&mut h, &f.path, f.bytes.as_slice())
            .map_err(|e| ImageError::Io {
                what: format!("making the build context: {}", f.path),
                source: e,
            })?;
    }
    tar.into_inner().map_err(wrap)
}

/// What a build printed, as far as it got.
#[derive(Default)]
struct Progress {
    /// The last `Step N/M : ...` line.
    step: String,
    tail: Vec<String>,
}

impl Progress {
    fn line(&mut self, line: &str, pb: &ProgressBar) {
        let line = line.trim_end();
        if line.trim().is_empty() {
            return;
        }
        if line.starts_with("Step ") {
            self.step = line.to_string();
        }
        pb.set_message(line.chars().take(120).collect::<String>());
        if self.tail.len() == TAIL {
            self.tail.remove(0);
        }
        self.tail.push(line.to_string());
    }

    fn failed(self, name: &str, message: String) -> ImageError {
        ImageError::Build {
            name: name.to_string(),
            step: if self.step.is_empty() {
                "its start (before any step)".into()
            } else {
                format!("\"{}\"", self.step)
            },
            message: message.trim_end().to_string(),
            tail: self.tail.join("\n"),
        }
    }
}

/// One build through the engine's API (the classic builder: it never pulls an image the engine
/// has), streaming its output to the progress bar; `fresh` uses no cached step (`--force`).
async fn run(
    docker: &Docker,
    name: &str,
    context: Vec<u8>,
    tag: &str,
    labels: HashMap<String, String>,
    fresh: bool,
    pb: &ProgressBar,
) -> Result<(), ImageError> {
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".into(),
        t: Some(tag.into()),
        nocache: fresh,
        rm: true,
        forcerm: true,
        labels: (!labels.is_empty()).then_some(labels),
        ..Default::default()
    };
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut progress = Progress::default();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(e) => return Err(progress.failed(name, engine_message(e))),
        };
        for line in info.stream.as_deref().unwrap_or_default().lines() {
            progress.line(line, pb);
        }
        let detail = info.error_detail.and_then(|d| d.message);
        if let Some(message) = detail {
            return Err(progress.failed(name, message));
        }
    }
    Ok(())
}

/// The engine's own words for a failed build.
fn engine_message(e: bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerStreamError { error } => error,
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_is_a_tar_of_the_files_and_the_host_ca() {
        let files = vec![
            ContextFile {
                path: "Dockerfile".into(),
                mode: 0o644,
                bytes: b"FROM gptx/base:0123\n".to_vec(),
            },
            ContextFile {
                path: "bin/run.sh".into(),
                mode: 0o755,
                bytes: b"#!/bin/sh\n".to_vec(),
            },
        ];
        let tar = context_tar(&files, Some(b"CERT".to_vec())).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mode = e.header().mode().unwrap();
            let (uid, mtime) = (e.header().uid().unwrap(), e.header().mtime().unwrap());
            let mut body = String::new();
            std::io::Read::read_to_string(&mut e, &mut body).unwrap();
            seen.push((path, mode, uid, mtime, body));
        }
        assert_eq!(
            seen,
            [
                ("Dockerfile", 0o644, 0, 0, "FROM gptx/base:0123\n"),
                ("bin/run.sh", 0o755, 0, 0, "#!/bin/sh\n"),
                (HOST_CA, 0o644, 0, 0, "CERT"),
            ]
            .map(|(p, m, u, t, b)| (p.to_string(), m, u, t, b.to_string()))
        );
        // The same files make the same bytes: the context does not depend on when it was made.
        assert_eq!(tar, context_tar(&files, Some(b"CERT".to_vec())).unwrap());
    }

    #[test]
    fn a_failed_build_names_its_step_and_keeps_the_last_lines() {
        let pb = ProgressBar::hidden();
        let mut p = Progress::default();
        for line in [
            "Step 1/3 : FROM gptx/base:0123",
            " ---> 5d1f",
            "Step 2/3 : RUN false",
            " ---> Running in 9a8b",
            "",
        ] {
            p.line(line, &pb);
        }
        let e = p
            .failed(
                "torch2",
                "The command '/bin/sh -c false' returned a non-zero code: 1\n".into(),
            )
            .to_string();
        assert!(
            e.starts_with("building image torch2 from sandboxes/torch2.Dockerfile failed at \"Step 2/3 : RUN false\": The command '/bin/sh -c false' returned a non-zero code: 1\nlast lines:\nStep 1/3"),
            "{e}"
        );
        assert!(e.ends_with(" ---> Running in 9a8b"), "{e}");
        let e = Progress::default().failed("x", "dockerfile parse error".into());
        assert!(e.to_string().contains("failed at its start"), "{e}");
    }
}
