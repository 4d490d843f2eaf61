//! The sandbox profile an image must allow (SPEC §5), checked before a run starts: an image that breaks it is refused with the reason.
//!
//! What gptx imposes on every sandbox whatever the image says (the user commands run as, the
//! workdir, the injected supervisor as the entrypoint, the read-only root, no capabilities, no new
//! privileges) needs no check. What the image itself must bring is checked here:
//! - a configured user that is the recipe's, not root;
//! - the workdir `/workspace`;
//! - no `VOLUME`: each would be a writable anonymous volume beside the read-only root;
//! - the recipe's user in `/etc/passwd` with the recipe's uid, so its tools know who they are.

use std::io::Read;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, DownloadFromContainerOptions};
use bollard::Docker;
use futures_util::StreamExt;

use crate::config::image::Recipe;
use crate::docker::images::ImageError;

/// How long the engine may take to hand over an image's `/etc/passwd`.
const ENGINE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The most of `/etc/passwd` read.
const PASSWD_MAX: u64 = 1 << 20;

/// What an image's config says, as far as the profile cares.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ImageConfig {
    pub user: String,
    pub workdir: String,
    pub volumes: Vec<String>,
}

/// Refuses `tag` (recipe `recipe`) when it cannot host a sandbox; says why.
pub async fn check(docker: &Docker, recipe: &Recipe, tag: &str) -> Result<(), ImageError> {
    let refuse = |reason: String| ImageError::Profile {
        name: recipe.name.clone(),
        tag: tag.to_string(),
        reason,
    };
    let info = docker.inspect_image(tag).await?;
    let config = info.config.unwrap_or_default();
    let mut volumes: Vec<String> = config.volumes.unwrap_or_default();
    volumes.sort();
    let config = ImageConfig {
        user: config.user.unwrap_or_default(),
        workdir: config.working_dir.unwrap_or_default(),
        volumes,
    };
    check_config(recipe, &config).map_err(refuse)?;
    let name = format!("gptx-profile-{:016x}", rand::random::<u64>());
    let read = tokio::time::timeout(ENGINE_WAIT, read_passwd(docker, tag, &name)).await;
    // Removed on every path, a read that ran out of time included.
    let _ = crate::docker::engine::remove_container(docker, &name).await;
    let waited = format!(
        "the engine did not hand over its /etc/passwd within {} s",
        ENGINE_WAIT.as_secs()
    );
    let passwd = read.unwrap_or(Err(waited)).map_err(refuse)?;
    check_passwd(recipe, &passwd).map_err(refuse)
}

/// The image config's part of the profile.
pub fn check_config(recipe: &Recipe, c: &ImageConfig) -> Result<(), String> {
    let who = c.user.split(':').next().unwrap_or_default();
    let fix = format!("end the Dockerfile with `USER {}`", recipe.user);
    if who.is_empty() || who == "root" || who == "0" {
        let what = if who.is_empty() {
            "no USER (root)"
        } else {
            "USER root"
        };
        return Err(format!(
            "it runs as {what}: the sandbox user is {} ({}); {fix}",
            recipe.user, recipe.uid
        ));
    }
    if who != recipe.user && who != recipe.uid.to_string() {
        return Err(format!(
            "its USER is {who:?}, not the recipe's {} ({}); {fix}",
            recipe.user, recipe.uid
        ));
    }
    if c.workdir != crate::sandbox::WORKSPACE {
        return Err(format!(
            "its WORKDIR is {:?}, not {}; add `WORKDIR {}`",
            c.workdir,
            crate::sandbox::WORKSPACE,
            crate::sandbox::WORKSPACE
        ));
    }
    if !c.volumes.is_empty() {
        return Err(format!(
            "it declares VOLUME {}: each would be a writable volume outside {} beside the read-only root; remove it",
            c.volumes.join(", "),
            crate::sandbox::WORKSPACE
        ));
    }
    Ok(())
}

/// `/etc/passwd` must give the recipe's user the recipe's uid.
pub fn check_passwd(recipe: &Recipe, passwd: &str) -> Result<(), String> {
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&recipe.user.as_str()));
    match entry {
        Some(f) if f.get(2) == Some(&recipe.uid.to_string().as_str()) => Ok(()),
        Some(f) => Err(format!(
            "/etc/passwd gives {} the uid {}, not {}",
            recipe.user,
            f.get(2).unwrap_or(&"(none)"),
            recipe.uid
        )),
        None => Err(format!(
            "/etc/passwd has no user {} (uid {}); add one, as `useradd -u {} -m {}` does",
            recipe.user, recipe.uid, recipe.uid, recipe.user
        )),
    }
}

/// The image's `/etc/passwd`, read through a container `name` created (never started) for it;
/// the caller removes it.
async fn read_passwd(docker: &Docker, tag: &str, name: &str) -> Result<String, String> {
    let body = ContainerCreateBody {
        image: Some(tag.into()),
        entrypoint: Some(vec!["/nonexistent".into()]),
        cmd: Some(vec![]),
        labels: Some(crate::docker::engine::labels("image-profile", "profile")),
        network_disabled: Some(true),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(name.into()),
        ..Default::default()
    };
    docker
        .create_container(Some(options), body)
        .await
        .map_err(|e| format!("a container of it cannot be created: {e}"))?;
    let download = DownloadFromContainerOptions {
        path: "/etc/passwd".into(),
    };
    let mut stream = std::pin::pin!(docker.download_from_container(name, Some(download)));
    let mut tar = Vec::new();
    // The archive's header, the file and its padding; a bigger file is cut (and refused).
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("it has no readable /etc/passwd: {e}"))?;
        tar.extend_from_slice(&chunk);
        if tar.len() as u64 > PASSWD_MAX + 4096 {
            return Err(format!("its /etc/passwd is over {PASSWD_MAX} bytes"));
        }
    }
    passwd_from_tar(&tar)
}

/// The one regular file of the engine's archive of `/etc/passwd`.
fn passwd_from_tar(tar: &[u8]) -> Result<String, String> {
    let mut archive = tar::Archive::new(tar);
    let mut entries = archive.entries().map_err(|e| e.to_string())?;
    let entry = entries.next().ok_or("its /etc/passwd came back empty")?;
    let mut entry = entry.map_err(|e| e.to_string())?;
    if entry.header().entry_type() != tar::EntryType::Regular {
        return Err("its /etc/passwd is not a regular file".into());
    }
    let mut text = String::new();
    entry
        .read_to_string(&mut text)
        .map_err(|e| format!("its /etc/passwd is not text: {e}"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Recipe {
        Recipe {
            name: "torch2".into(),
            description: String::new(),
            suite: String::new(),
            variant: String::new(),
            packages: vec![],
            user: "agent".into(),
            uid: 1000,
            env: Default::default(),
            workdir: "/workspace".into(),
            builder_version: 2,
            dockerfile: None,
        }
    }

    fn config(user: &str, workdir: &str, volumes: &[&str]) -> ImageConfig {
        ImageConfig {
            user: user.into(),
            workdir: workdir.into(),
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn the_image_config_must_keep_the_profile() {
        let r = recipe();
        assert_eq!(
            check_config(&r, &config("agent", "/workspace", &[])),
            Ok(())
        );
        assert_eq!(
            check_config(&r, &config("1000:1000", "/workspace", &[])),
            Ok(())
        );
        let e = check_config(&r, &config("root", "/workspace", &[])).unwrap_err();
        assert!(e.contains("USER root") && e.contains("USER agent"), "{e}");
        let e = check_config(&r, &config("", "/workspace", &[])).unwrap_err();
        assert!(e.contains("no USER"), "{e}");
        let e = check_config(&r, &config("0:0", "/workspace", &[])).unwrap_err();
        assert!(e.contains("USER root"), "{e}");
        let e = check_config(&r, &config("bob", "/workspace", &[])).unwrap_err();
        assert!(e.contains("\"bob\""), "{e}");
        let e = check_config(&r, &config("agent", "/", &[])).unwrap_err();
        assert!(e.contains("WORKDIR is \"/\""), "{e}");
        let e = check_config(&r, &config("agent", "/workspace", &["/data", "/cache"]));
        assert!(e.unwrap_err().contains("VOLUME /data, /cache"));
    }

    #[test]
    fn passwd_must_give_the_user_its_uid() {
        let r = recipe();
        let ok = "root:x:0:0:root:/root:/bin/bash\nagent:x:1000:1000::/home/agent:/bin/bash\n";
        assert_eq!(check_passwd(&r, ok), Ok(()));
        let e = check_passwd(&r, "root:x:0:0:root:/root:/bin/bash\n").unwrap_err();
        assert!(e.contains("no user agent"), "{e}");
        let e = check_passwd(&r, "agent:x:0:0::/:/bin/sh\n").unwrap_err();
        assert!(e.contains("uid 0, not 1000"), "{e}");
    }

    #[test]
    fn passwd_comes_out_of_the_engines_archive() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path("passwd").unwrap();
        h.set_size(5);
        h.set_cksum();
        b.append(&h, &b"a:x:1"[..]).unwrap();
        assert_eq!(passwd_from_tar(&b.into_inner().unwrap()).unwrap(), "a:x:1");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path("passwd").unwrap();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_link_name("/proc/self/environ").unwrap();
        h.set_size(0);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
        let e = passwd_from_tar(&b.into_inner().unwrap()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(passwd_from_tar(&[]).is_err());
    }
}
