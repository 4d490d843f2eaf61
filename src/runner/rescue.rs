//! `--rescue`: the reference artifact of a failed crawl or tokenize, handed to the agent so the ladder goes on.

use super::*;

const RESCUE_CORPUS: &str = "data/corpus.jsonl";
/// Where the rescue writes the reference tokenizer's sources.
const RESCUE_DIR: &str = "gptx-rescue";
const RESCUE_SECONDS: u64 = 300;

impl Runner {
    /// Hands the agent the reference artifact of a failed stage: the world's gold corpus for crawl;
    /// the reference tokenizer, trained in the sandbox on the workspace's corpus, for tokenize. The
    /// workspace is committed and a `rescue` event says what was written; false when it failed.
    pub(super) async fn rescue_stage(&mut self, stage: &str) -> bool {
        let t0 = Instant::now();
        let (ok, files, detail) = match stage {
            "crawl" => self.rescue_crawl(),
            "tokenize" => self.rescue_tokenize().await,
            _ => (false, vec![], format!("stage {stage} has no rescue")),
        };
        let commit = match self.history.as_mut() {
            Some(h) => h
                .commit_if_changed(&format!(
                    "rescue ({stage}): the harness handed over the reference artifact\n\n{detail}\n"
                ))
                .unwrap_or_else(|e| {
                    tracing::warn!("could not record the rescue in git: {e}");
                    None
                }),
            None => None,
        };
        self.emit(Event::Rescue {
            stage: stage.into(),
            ok,
            files,
            detail,
            seconds: t0.elapsed().as_secs_f64(),
            commit,
        });
        ok
    }

    fn rescue_crawl(&mut self) -> (bool, Vec<String>, String) {
        let Some(world) = self.world.clone() else {
            return (false, vec![], "this run has no world".into());
        };
        let gold = match world.gold() {
            Ok(g) => g,
            Err(e) => return (false, vec![], format!("reading the world's gold: {e}")),
        };
        let mut text = String::new();
        for (url, t) in &gold {
            text.push_str(&json!({"url": url, "text": t}).to_string());
            text.push('\n');
        }
        let path = crate::sandbox::paths::WorkspacePath::parse(RESCUE_CORPUS).expect("constant");
        match self.sandbox.write_file(&path, text.as_bytes()) {
            Ok(n) => (
                true,
                vec![RESCUE_CORPUS.into()],
                format!(
                    "wrote {RESCUE_CORPUS}: the world's gold text of {} served pages ({n} bytes)",
                    gold.len()
                ),
            ),
            Err(e) => (false, vec![], format!("writing {RESCUE_CORPUS}: {e}")),
        }
    }

    async fn rescue_tokenize(&mut self) -> (bool, Vec<String>, String) {
        let dir = self.home.tasks().join("tokenize").join("reference");
        let mut files = Vec::new();
        let mut names = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if e.path().is_file() && !name.starts_with('.') {
                    names.push(name);
                }
            }
        }
        names.sort();
        for name in names {
            let target = format!("{RESCUE_DIR}/tokenize/{name}");
            let written = std::fs::read(dir.join(&name))
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    let p = crate::sandbox::paths::WorkspacePath::parse(&target)
                        .map_err(|e| e.to_string())?;
                    self.sandbox.write_file(&p, &b).map_err(|e| e.to_string())
                });
            if let Err(e) = written {
                return (false, files, format!("writing {target}: {e}"));
            }
            files.push(target);
        }
        let req = ExecRequest {
            cmd: format!("GPTX_TIME_LIMIT={RESCUE_SECONDS} sh {RESCUE_DIR}/tokenize/run.sh"),
            timeout: Duration::from_secs(RESCUE_SECONDS + 30),
            env: vec![],
            stdin: None,
        };
        let mut out = Vec::new();
        let res = {
            let mut sink = |_: OutStream, d: &[u8]| {
                out.extend_from_slice(d);
                if out.len() > 8192 {
                    out.drain(..out.len() - 4096);
                }
            };
            self.sandbox.exec(&req, &mut sink).await
        };
        let tail = String::from_utf8_lossy(&out).trim().to_string();
        match res {
            Ok(o) if o.shell_code() == 0 => {
                files.extend(["tokenizer/".to_string(), "bin/tokenize".to_string()]);
                (
                    true,
                    files,
                    format!("trained the reference tokenizer on the workspace's corpus: {tail}"),
                )
            }
            Ok(o) => (
                false,
                files,
                format!(
                    "the reference tokenizer failed (exit {}): {tail}",
                    o.shell_code()
                ),
            ),
            Err(e) => (
                false,
                files,
                format!("running the reference tokenizer: {e}"),
            ),
        }
    }
}
