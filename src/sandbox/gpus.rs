//! What GPUs a sandbox sees: `nvidia-smi`'s list, asked through the [`Sandbox`] seam as a harness command.

use crate::sandbox::{ExecRequest, OutStream, Sandbox};
use crate::trace::rundir::GpuDevice;

/// The harness's command: one CSV line per GPU, `0, NVIDIA A100-SXM4-80GB, 81920 MiB`.
pub const QUERY: &str = "nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader";

/// How long the list may take (a GPU whose driver hangs must not hold the run).
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The GPUs `nvidia-smi` lists in `sb`; why not, when it fails, is missing or lists none.
pub async fn list(sb: &dyn Sandbox) -> Result<Vec<GpuDevice>, String> {
    let req = ExecRequest {
        cmd: QUERY.into(),
        timeout: TIMEOUT,
        env: vec![],
        stdin: None,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut sink = |s: OutStream, d: &[u8]| match s {
        OutStream::Stdout => out.extend_from_slice(d),
        OutStream::Stderr => err.extend_from_slice(d),
    };
    let o = sb.exec(&req, &mut sink).await.map_err(|e| e.to_string())?;
    if o.timed_out {
        return Err(format!(
            "nvidia-smi did not answer in {} s",
            TIMEOUT.as_secs()
        ));
    }
    match o.shell_code() {
        0 => parse(&String::from_utf8_lossy(&out)),
        127 => Err("nvidia-smi is not in the image".into()),
        c => Err(format!(
            "nvidia-smi exited with {c}: {}",
            String::from_utf8_lossy(&err).trim()
        )),
    }
}

/// `index, name, memory.total` lines into GPUs; an error names the line it cannot read.
pub fn parse(text: &str) -> Result<Vec<GpuDevice>, String> {
    let gpus = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let &[index, name, memory] = fields.as_slice() else {
                return Err(format!(
                    "nvidia-smi printed {line:?}, not index, name, memory"
                ));
            };
            let index = index
                .parse()
                .map_err(|_| format!("nvidia-smi printed {line:?}: {index:?} is not an index"))?;
            let memory_mib = memory
                .strip_suffix("MiB")
                .and_then(|m| m.trim().parse().ok());
            Ok(GpuDevice {
                index,
                name: name.to_string(),
                memory_mib,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if gpus.is_empty() {
        return Err("nvidia-smi listed no GPU".into());
    }
    Ok(gpus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::fake::{Recorded, RecordingSandbox, Reply};
    use crate::sandbox::ExecOutcome;

    #[tokio::test]
    async fn the_list_is_read_from_nvidia_smi_and_a_failure_says_why() {
        let listed = "0, NVIDIA A100-SXM4-80GB, 81920 MiB\n1, NVIDIA A100-SXM4-80GB, 81920 MiB\n";
        let missing = Reply {
            outcome: ExecOutcome {
                exit_code: Some(127),
                ..Default::default()
            },
            ..Reply::ok("")
        };
        let sb = RecordingSandbox::new(vec![Reply::ok(listed), missing]).unwrap();
        let gpus = list(&sb).await.unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].index, 1);
        assert_eq!(gpus[1].name, "NVIDIA A100-SXM4-80GB");
        assert_eq!(gpus[1].memory_mib, Some(81920));
        let e = list(&sb).await.unwrap_err();
        assert_eq!(e, "nvidia-smi is not in the image");
        let calls = sb.calls();
        assert!(
            matches!(&calls[0], Recorded::Exec { cmd, .. } if cmd == QUERY),
            "{calls:?}"
        );
    }

    #[test]
    fn odd_lines_are_refused_and_unknown_memory_is_left_out() {
        let gpus = parse("3, Tesla T4, [N/A]\n").unwrap();
        assert_eq!((gpus[0].index, gpus[0].memory_mib), (3, None));
        assert!(parse("").unwrap_err().contains("no GPU"));
        let e = parse("No devices were found\n").unwrap_err();
        assert!(e.contains("No devices were found"), "{e}");
        assert!(parse("x, T4, 15360 MiB\n")
            .unwrap_err()
            .contains("not an index"));
    }
}
