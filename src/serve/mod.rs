//! `gptx serve`: the web viewer (axum, server-rendered HTML, assets embedded in the binary).
//!
//! Imported by `cli` alone; reads run directories through `trace`, the leaderboard through
//! `report`.
//!
//! Routes: `/` (runs), `/runs/{id}` (a run, `?page=N` of its steps), `/runs/{id}/steps/{n}` (one step
//! with its output and workspace diff), `/runs/{id}/outputs/{sha256}` (a full output as text),
//! `/runs/{id}/live` (server-sent events of a running run), `/runs/{id}/summary` (the run's header as a
//! fragment, for the live page), `/leaderboard`, and JSON under `/api/`. Traces are read through a
//! per-run [`index::TraceIndex`] kept in [`AppState`], so a page reads only its own lines.

pub mod html;
pub mod index;
mod live;
mod pages;
mod view;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::config::suite::Home;
use crate::trace::rundir::RunDir;
use index::TraceIndex;

/// How long connections may take to close after shutdown was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub runs_dir: PathBuf,
    /// More runs directories shown beside `runs_dir` (`--runs-dir` repeated).
    pub more_runs_dirs: Vec<PathBuf>,
    /// Plan files whose item states the leaderboard shows (`--plan`).
    pub plans: Vec<PathBuf>,
    pub home: Option<Home>,
    /// Host names (without port) requests may name besides the loopback ones (`--allow-host`).
    pub allowed_hosts: Vec<String>,
    indexes: Arc<Mutex<HashMap<PathBuf, Arc<Mutex<TraceIndex>>>>>,
    live: Arc<AtomicUsize>,
}

impl AppState {
    pub fn new(runs_dir: PathBuf, home: Option<Home>) -> Self {
        Self {
            runs_dir,
            more_runs_dirs: Vec::new(),
            plans: Vec::new(),
            home,
            allowed_hosts: Vec::new(),
            indexes: Arc::default(),
            live: Arc::default(),
        }
    }

    /// Every runs directory shown: `runs_dir`, then the others.
    pub fn runs_dirs(&self) -> Vec<PathBuf> {
        let mut all = vec![self.runs_dir.clone()];
        all.extend(self.more_runs_dirs.iter().cloned());
        all
    }

    /// Live event streams open right now (each ends when its client goes or the server stops).
    pub fn live_streams(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// The index of a run's trace (created empty on first use; call `refresh` under its lock).
    fn index(&self, dir: &RunDir) -> Arc<Mutex<TraceIndex>> {
        let mut map = lock(&self.indexes);
        map.entry(dir.path.clone())
            .or_insert_with(|| Arc::new(Mutex::new(TraceIndex::new(&dir.events()))))
            .clone()
    }

    /// The run directory of `id` (its exact name under the runs directory).
    fn run_dir(&self, id: &str) -> Result<RunDir, PageError> {
        let plain = !id.is_empty()
            && id != "."
            && id != ".."
            && !id.contains(['/', '\\', '\0'])
            && id.len() <= 200;
        let dirs = self.runs_dirs();
        for d in &dirs {
            let dir = RunDir::new(d.join(id));
            if plain && dir.run_json().is_file() {
                return Ok(dir);
            }
        }
        // A unique prefix of a run id names the run, as on the command line.
        if plain {
            for d in &dirs {
                match crate::trace::rundir::find_run(d, id) {
                    Ok(dir) => return Ok(dir),
                    Err(e) if e.to_string().contains("give more of the id") => {
                        return Err(PageError::not_found("No such run", e.to_string()))
                    }
                    Err(_) => {}
                }
            }
        }
        Err(PageError::not_found(
            "No such run",
            format!(
                "There is no run {id:?} in {}.",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// The run's id as its directory is named (what a unique prefix in a URL resolved to).
fn canonical_id(dir: &RunDir) -> String {
    dir.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A poisoned lock still holds usable data here (indexes are rebuilt from the file when in doubt).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The router's state: the app and the server's stop signal (live streams end on it).
#[derive(Clone)]
struct Ctx {
    app: AppState,
    cancel: CancellationToken,
    /// The address the server is bound to (None: not known; no Host check).
    bound: Option<std::net::SocketAddr>,
}

/// An error as a page (or JSON under `/api/`) with its HTTP status.
#[derive(Debug)]
pub(crate) struct PageError {
    pub status: StatusCode,
    pub title: String,
    pub detail: String,
    json: bool,
}

impl PageError {
    pub fn new(status: StatusCode, title: &str, detail: impl Into<String>) -> Self {
        Self {
            status,
            title: title.into(),
            detail: detail.into(),
            json: false,
        }
    }
    pub fn not_found(title: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, title, detail)
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", detail)
    }
    pub fn internal(title: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, title, detail)
    }
    fn json(mut self) -> Self {
        self.json = true;
        self
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if self.json {
            let body = serde_json::json!({"error": self.title, "detail": self.detail});
            return (self.status, Json(body)).into_response();
        }
        (self.status, Html(pages::error_page(&self))).into_response()
    }
}

/// Runs blocking work (file reads, git) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PageError> + Send + 'static,
) -> Result<T, PageError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(PageError::internal(
            "The viewer failed",
            format!("a page's worker stopped: {e}"),
        ))
    })
}

/// The policy every response carries: scripts and styles from the viewer itself (no inline script; inline
/// `style` attributes draw the bars), nothing from elsewhere, no framing, no form posts off the site.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Whether a request's `Host` may be served: the loopback names, the address the server is bound to,
/// and the `--allow-host` names, each with the server's port. Anything else is a DNS-rebinding page
/// in someone's browser pretending to be a site of its own.
pub(crate) fn host_allowed(host: &str, bound: std::net::SocketAddr, extra: &[String]) -> bool {
    let port = bound.port();
    let (name, p) = match host.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || n.starts_with('[') => (n, p.parse::<u16>().ok()),
        _ => (host, None),
    };
    if p.is_some_and(|p| p != port) || (p.is_none() && port != 80) {
        return false;
    }
    let name = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let bound_ip = bound.ip().to_string();
    name == "localhost"
        || name == "127.0.0.1"
        || name == "::1"
        || (!bound.ip().is_unspecified() && name == bound_ip)
        || extra.iter().any(|h| h.eq_ignore_ascii_case(&name))
}

async fn guard(
    State(ctx): State<Ctx>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let ok = ctx
        .bound
        .is_none_or(|b| host_allowed(&host, b, &ctx.app.allowed_hosts));
    let mut resp = if ok {
        next.run(req).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "gptx serve: Host {host:?} is not one this viewer answers to (use --allow-host NAME)\n"
            ),
        )
            .into_response()
    };
    let h = resp.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// Builds the viewer's routes.
fn router(app: AppState, cancel: CancellationToken, bound: Option<std::net::SocketAddr>) -> Router {
    let ctx = Ctx { app, cancel, bound };
    Router::new()
        .route("/", get(runs_page))
        .route("/leaderboard", get(leaderboard_page))
        .route("/runs/{id}", get(run_page))
        .route("/runs/{id}/summary", get(summary_fragment))
        .route("/runs/{id}/live", get(live::stream))
        .route("/runs/{id}/steps/{n}", get(step_page))
        .route("/runs/{id}/outputs/{sha}", get(output_file))
        .route("/api/runs", get(api_runs))
        .route("/api/runs/{id}/steps", get(api_steps))
        .route("/api/runs/{id}/events", get(live::poll))
        .route("/assets/style.css", get(style))
        .route("/assets/live.js", get(script))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), guard))
        .with_state(ctx)
}

/// Serves until `cancel` fires; live streams end then, and connections get a few seconds to close.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(state, cancel.clone(), listener.local_addr().ok());
    let stop = cancel.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.cancelled().await;
    });
    let server = async move { server.await };
    tokio::select! {
        r = server => r.map_err(|e| anyhow::anyhow!("the viewer's server failed: {e}")),
        _ = async {
            cancel.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    }
}

async fn not_found() -> PageError {
    PageError::not_found("Not found", "There is no page at this address.")
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/style.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/live.js"),
    )
}

/// A `?page=` value: a number from 1.
fn page_param(q: &HashMap<String, String>) -> Result<usize, PageError> {
    match q.get("page").map(|s| s.trim()) {
        None | Some("") => Ok(1),
        Some(p) => match p.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(PageError::bad_request(format!(
                "?page={p}: a page is a number from 1"
            ))),
        },
    }
}

/// The runs filter from `?suite=&agent=&status=`.
fn filter_param(q: &HashMap<String, String>) -> Result<view::Filter, PageError> {
    let pick = |k: &str| {
        q.get(k)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let status = pick("status");
    if let Some(s) = &status {
        if !["running", "done", "failed", "interrupted"].contains(&s.as_str()) {
            return Err(PageError::bad_request(format!(
                "?status={s}: one of running, done, failed, interrupted"
            )));
        }
    }
    Ok(view::Filter {
        suite: pick("suite"),
        agent: pick("agent"),
        status,
    })
}

async fn runs_page(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Html<String>, PageError> {
    let filter = filter_param(&q)?;
    let runs_dirs = ctx.app.runs_dirs();
    let list = blocking(move || Ok(view::runs(&runs_dirs, &filter))).await?;
    Ok(Html(pages::runs_page(&list)))
}

async fn api_runs(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, PageError> {
    let filter = filter_param(&q).map_err(PageError::json)?;
    let runs_dirs = ctx.app.runs_dirs();
    let list = blocking(move || Ok(view::runs(&runs_dirs, &filter))).await?;
    Ok(Json(serde_json::json!({
        "runs": list.rows,
        "problems": list.problems,
    })))
}

async fn run_page(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let page = page_param(&q)?;
    let app = ctx.app.clone();
    let v = blocking(move || {
        let dir = app.run_dir(&id)?;
        let id = canonical_id(&dir);
        view::run(&app, &dir, &id, Some(page))
    })
    .await?;
    let status = if v.damaged() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    Ok((status, Html(pages::run_page(&v))).into_response())
}

async fn summary_fragment(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let app = ctx.app.clone();
    let v = blocking(move || {
        let dir = app.run_dir(&id)?;
        let id = canonical_id(&dir);
        view::run(&app, &dir, &id, None)
    })
    .await?;
    Ok(Html(pages::summary(&v)))
}

async fn api_steps(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, PageError> {
    let page = page_param(&q).map_err(PageError::json)?;
    let app = ctx.app.clone();
    blocking(move || {
        let dir = app.run_dir(&id)?;
        let id = canonical_id(&dir);
        let v = view::run(&app, &dir, &id, Some(page))?;
        let steps: Vec<serde_json::Value> = v
            .steps
            .iter()
            .map(|s| match s {
                Ok(s) => serde_json::to_value(&**s).unwrap_or_default(),
                Err(p) => serde_json::json!({"line": p.line_no, "error": p.message}),
            })
            .collect();
        Ok(Json(serde_json::json!({
            "run_id": v.id,
            "page": v.page,
            "pages": v.pages,
            "total_steps": v.total_steps,
            "last_seq": v.last_seq,
            "steps": steps,
        })))
    })
    .await
    .map_err(PageError::json)
}

async fn step_page(
    State(ctx): State<Ctx>,
    Path((id, n)): Path<(String, String)>,
) -> Result<Html<String>, PageError> {
    let n: u64 = n.trim().parse().map_err(|_| {
        PageError::bad_request(format!("/runs/{id}/steps/{n}: a step is a number from 1"))
    })?;
    let app = ctx.app.clone();
    let v = blocking(move || {
        let dir = app.run_dir(&id)?;
        let id = canonical_id(&dir);
        view::step(&app, &dir, &id, n)
    })
    .await?;
    Ok(Html(pages::step_page(&v)))
}

/// A full output from `outputs/`, as plain text the browser will not interpret.
async fn output_file(
    State(ctx): State<Ctx>,
    Path((id, sha)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let dir = ctx.app.run_dir(&id)?;
    let id = canonical_id(&dir);
    if !view::is_sha256(&sha) {
        return Err(PageError::bad_request(format!(
            "/runs/{id}/outputs/{sha}: an output is named by its 64-digit SHA-256"
        )));
    }
    let path = dir.output(&sha);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| PageError::not_found("No such output", format!("{}: {e}", path.display())))?;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(resp)
}

async fn leaderboard_page(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Html<String>, PageError> {
    let suite = q
        .get("suite")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let app = ctx.app.clone();
    blocking(move || {
        let opts = crate::report::leaderboard::Options {
            suite,
            resamples: 2000,
        };
        let boards = crate::report::leaderboard::collect_many(
            &app.runs_dirs(),
            &app.plans,
            app.home.as_ref(),
            &opts,
        )
        .map_err(|e| PageError::internal("The leaderboard could not be built", e.to_string()))?;
        let suites = view::runs(&app.runs_dirs(), &view::Filter::default()).suites;
        Ok(Html(pages::leaderboard(
            &boards,
            &suites,
            opts.suite.as_deref(),
        )))
    })
    .await
}

#[cfg(test)]
mod guard_tests {
    use super::host_allowed;

    #[test]
    fn only_the_servers_own_names_are_answered() {
        let lo: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(host_allowed("127.0.0.1:8080", lo, &[]));
        assert!(host_allowed("localhost:8080", lo, &[]));
        assert!(host_allowed("[::1]:8080", lo, &[]));
        assert!(!host_allowed("evil.example:8080", lo, &[]));
        assert!(!host_allowed("127.0.0.1:9999", lo, &[]));
        assert!(!host_allowed("", lo, &[]));
        assert!(host_allowed("viewer.lab:8080", lo, &["viewer.lab".into()]));
        let any: std::net::SocketAddr = "0.0.0.0:80".parse().unwrap();
        assert!(host_allowed("localhost", any, &[]));
        assert!(!host_allowed("0.0.0.0", any, &[]));
    }
}
