//! Housekeeping commands: `gptx images`, `gptx world build|show` and `gptx gc`.

use super::*;

pub(super) async fn images_build(names: Vec<String>, force: bool, json: bool) -> Result<i32, Exit> {
    let home = Home::locate().map_err(env_error)?;
    let docker = crate::docker::engine::connect().await.map_err(env_error)?;
    let names = if names.is_empty() {
        vec!["base".to_string()]
    } else {
        names
    };
    let mut results = Vec::new();
    for name in &names {
        let built = crate::docker::images::build(&docker, &home, name, force, json)
            .await
            .map_err(|e| match e {
                crate::docker::images::ImageError::Recipe(_) => Exit {
                    code: exit::USAGE,
                    error: e.into(),
                },
                other => env_error(other),
            })?;
        if !json {
            println!(
                "{:<6} {}  {}  ({:.1} s{})",
                built.name,
                built.tag,
                crate::docker::engine::short(built.id.trim_start_matches("sha256:")),
                built.seconds,
                if built.built {
                    ", built"
                } else {
                    ", already built: skipped"
                }
            );
        }
        results.push(built);
    }
    if json {
        println!("{}", serde_json::to_string(&results).expect("json"));
    }
    Ok(exit::OK)
}

pub(super) async fn images_list() -> Result<i32, Exit> {
    let home = Home::locate().map_err(env_error)?;
    let docker = crate::docker::engine::connect().await.map_err(env_error)?;
    for name in crate::config::suite::toml_names(&home.sandboxes()) {
        let recipe = crate::docker::images::Recipe::load(&home, &name).map_err(failed)?;
        let tag = recipe.tag();
        let have = crate::docker::images::image_id(&docker, &tag)
            .await
            .map_err(failed)?;
        println!(
            "{name:<6} {tag:<24} {:<9} {}",
            if have.is_some() { "built" } else { "not built" },
            recipe.description
        );
    }
    Ok(exit::OK)
}

pub(super) fn world(a: WorldArgs, show: bool) -> Result<i32, Exit> {
    let home = Home::locate().map_err(env_error)?;
    let suite = home.suite(&a.suite).map_err(|e| Exit {
        code: exit::USAGE,
        error: e.into(),
    })?;
    let Some(name) = suite.world.clone() else {
        return Err(Exit {
            code: exit::USAGE,
            error: anyhow::anyhow!(
                "suite {} has no world (no `world = ...` in {})",
                suite.name,
                suite.path.display()
            ),
        });
    };
    let seed = a.seed.unwrap_or(suite.world_seed);
    let bar = crate::report::progress::WorldBar::new(a.json);
    let (w, built) = crate::world::ensure(&home, &name, seed, &bar).map_err(|e| match e {
        crate::world::WorldError::NotFound { .. } | crate::world::WorldError::Config { .. } => {
            Exit {
                code: exit::USAGE,
                error: e.into(),
            }
        }
        other => failed(other),
    })?;
    bar.finish();
    if a.json {
        let mut v = serde_json::to_value(&w.manifest).map_err(failed)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("served");
            o.remove("canaries");
            o.insert("dir".into(), w.dir.display().to_string().into());
            o.insert("built".into(), built.into());
        }
        println!("{v}");
    } else if show {
        print!("{}", crate::report::show::world(&w));
        match crate::config::reference::load(&home, &name) {
            Ok(Some(r)) => {
                let stale = if r.world_hash == w.manifest.world_hash {
                    ""
                } else {
                    " — measured on another world hash: run `gptx world reference` again"
                };
                println!(
                    "reference values (run {}, {}, {}){stale}:",
                    r.run_id, r.measured_at, r.level
                );
                for (k, v) in &r.values {
                    println!("  {k:<26} {v}");
                }
            }
            Ok(None) => println!(
                "no reference values yet: `gptx world reference --suite {}` measures them",
                a.suite
            ),
            Err(e) => println!("reference values: {e}"),
        }
    } else {
        let m = &w.manifest;
        println!(
            "world {} (seed {}) {}  {}  ({:.1} s{})",
            m.name,
            m.seed,
            &m.world_hash[..12],
            w.dir.display(),
            m.stats.build_seconds,
            if built {
                ", built"
            } else {
                ", cached: skipped"
            }
        );
    }
    Ok(exit::OK)
}

pub(super) async fn gc(all: bool, runs_dir: &std::path::Path) -> Result<i32, Exit> {
    let mut marking = mark_dead_runs(runs_dir);
    let docker = crate::docker::engine::connect().await.map_err(env_error)?;
    let (removed, mut warnings) = crate::docker::engine::gc(&docker, all)
        .await
        .map_err(failed)?;
    println!(
        "removed {} container(s), {} network(s), {} volume(s)",
        removed.containers.len(),
        removed.networks.len(),
        removed.volumes.len()
    );
    // Workspace disks of runs that have no container left: their gptx is gone.
    let mut released = 0;
    for (mount, run) in crate::sandbox::quota::orphans() {
        let alive = crate::docker::engine::leftovers(&docker, &run)
            .await
            .unwrap_or(1)
            > 0;
        if alive && !all {
            continue;
        }
        // A run whose gptx is there (a fresh run before its first container, a resume restoring
        // its workspace) keeps its disk, unless --all.
        let run_dir = mount
            .ancestors()
            .skip(1)
            .map(|a| crate::trace::rundir::RunDir::new(a.to_path_buf()))
            .find(|d| d.run_json().exists());
        if !all && run_dir.is_some_and(|d| crate::trace::rundir::is_driven(&d)) {
            continue;
        }
        match crate::sandbox::quota::release_orphan(&mount) {
            Ok(()) => released += 1,
            Err(e) => warnings.push(e.to_string()),
        }
    }
    if released > 0 {
        println!("released {released} workspace disk(s) of dead runs (their contents kept)");
    }
    warnings.append(&mut marking);
    for w in &warnings {
        eprintln!("gptx gc: {w}");
    }
    Ok(if warnings.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// Exit code of an image error from `save` or `load`: a bad name is usage, a missing image or no
/// engine the environment, anything else a failure.
fn image_exit(e: crate::docker::images::ImageError) -> Exit {
    use crate::docker::images::ImageError;
    let code = match &e {
        ImageError::Recipe(_) => exit::USAGE,
        ImageError::NotBuilt { .. } => exit::ENVIRONMENT,
        _ => exit::FAILED,
    };
    Exit {
        code,
        error: e.into(),
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// `gptx images save`.
pub(super) async fn images_save(names: Vec<String>, out: &std::path::Path) -> Result<i32, Exit> {
    let home = Home::locate().map_err(env_error)?;
    let names = if names.is_empty() {
        vec!["base".to_string()]
    } else {
        names
    };
    let docker = crate::docker::engine::connect().await.map_err(env_error)?;
    let saved = crate::docker::images::save(&docker, &home, &names, out, false)
        .await
        .map_err(image_exit)?;
    for i in &saved.images {
        println!(
            "{:<6} {}  {}  {} bytes ({})",
            i.name,
            i.tag,
            crate::docker::engine::short(i.id.trim_start_matches("sha256:")),
            i.bytes,
            megabytes(i.bytes)
        );
    }
    println!(
        "wrote {}: {} image(s), {} bytes ({}) in {:.1} s ({:.0} MB/s); load it with: gptx images load {}",
        saved.file.display(),
        saved.images.len(),
        saved.bytes,
        megabytes(saved.bytes),
        saved.seconds,
        saved.bytes as f64 / 1e6 / saved.seconds.max(1e-3),
        saved.file.display()
    );
    Ok(exit::OK)
}

/// `gptx images load`.
pub(super) async fn images_load(file: &std::path::Path) -> Result<i32, Exit> {
    use crate::docker::images::RecipeMatch;
    let home = Home::locate().map_err(env_error)?;
    let docker = crate::docker::engine::connect().await.map_err(env_error)?;
    let loaded = crate::docker::images::load(&docker, &home, file, false)
        .await
        .map_err(image_exit)?;
    let short = |id: &str| crate::docker::engine::short(id.trim_start_matches("sha256:"));
    for i in &loaded.images {
        let state = match &i.before {
            None => "loaded (new)".to_string(),
            Some(b) if *b == i.id => "unchanged (already on this engine)".to_string(),
            Some(b) => format!("loaded (replaces {})", short(b)),
        };
        let recipe = match &i.recipe {
            RecipeMatch::Matches => "matches this checkout's recipe".to_string(),
            RecipeMatch::Differs(ours) => {
                eprintln!(
                    "gptx: warning: {} is not this checkout's recipe ({ours}): runs here will build their own",
                    i.tag
                );
                format!("not this checkout's recipe ({ours})")
            }
            RecipeMatch::NoRecipe => format!(
                "no recipe {} in this checkout",
                i.name.as_deref().unwrap_or_default()
            ),
            RecipeMatch::NotGptx => "not a gptx image".to_string(),
        };
        println!(
            "{:<6} {}  {}  {state}  {recipe}",
            i.name.as_deref().unwrap_or("-"),
            i.tag,
            short(&i.id)
        );
    }
    println!(
        "loaded {} image(s) from {}: {} bytes ({}) in {:.1} s",
        loaded.images.len(),
        loaded.file.display(),
        loaded.bytes,
        megabytes(loaded.bytes),
        loaded.seconds
    );
    Ok(exit::OK)
}
