//! File helpers every layer uses: atomic JSON writes, JSON reads that name the file, root-only directories.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// When gptx runs as root, makes `dir` (created if missing) reachable by root alone (0700), so that
/// an external agent, which runs as another user, can read nothing below it: the world cache's
/// `worlds/` with its hidden documents, and each run's own directory (traces, scores). Containers are unaffected: the engine mounts
/// what they need, and parents of a mount are not traversed from inside.
pub fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes JSON to `path` through a temp file and a rename, so readers never see half a file.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Reads a JSON file, naming it in errors.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
