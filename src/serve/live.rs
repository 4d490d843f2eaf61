//! Live runs: new trace lines as server-sent events (`/runs/{id}/live`) or as JSON (`/api/runs/{id}/events`).
//!
//! Both tail `events.jsonl` through the run's index from a `seq` the client already has. A stream ends
//! when the run finishes, when its client goes (the stream is dropped with the connection), when the
//! server stops, or after [`STREAM_LIFETIME`] (browsers reconnect with `Last-Event-ID` and resume).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures_util::Stream;
use serde::Serialize;

use super::index::Kind;
use super::{blocking, canonical_id, lock, pages, AppState, Ctx, PageError};
use crate::trace::rundir::{self, RunDir, RunMeta, RunStatus};

/// How often a stream looks at the trace.
const POLL: Duration = Duration::from_millis(400);
/// How long one stream lasts before the client is asked to reconnect.
const STREAM_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Steps sent in one batch at most (a client far behind catches up over several).
const BATCH: usize = 500;
/// A comment line this often keeps proxies from closing an idle stream and shows a gone client.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// One new trace line, as the client sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Steps: the step's number and its timeline row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Damaged lines: what is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What arrived after a `seq`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Batch {
    pub items: Vec<Item>,
    /// The `seq` to ask from next time.
    pub last_seq: Option<u64>,
    /// The run has ended (a `run_finished` line, or run.json no longer says running).
    pub finished: bool,
    /// The step still running, with its timeline row (none when no step is running).
    pub in_flight: Option<InFlightRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The step still running, as the client sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct InFlightRow {
    pub step: u64,
    pub html: String,
}

/// Lines after `after`, with timeline rows for steps (bars drawn against `scale_ms`).
fn collect(
    app: &AppState,
    dir: &RunDir,
    id: &str,
    after: Option<u64>,
    scale_ms: f64,
) -> Result<Batch, PageError> {
    let meta: RunMeta = rundir::read_json(&dir.run_json())
        .map_err(|e| PageError::internal("This run cannot be read", e.to_string()))?;
    let idx = app.index(dir);
    let mut g = lock(&idx);
    let error = g.refresh().err();
    let lines: Vec<_> = g.lines_after(after).to_vec();
    let mut step_pos = g.steps_after(after).start;
    let mut items = Vec::new();
    let mut steps = 0;
    let mut last_seq = after;
    let mut cut = false;
    for l in lines {
        let mut item = Item {
            seq: l.seq,
            kind: l.kind,
            step: None,
            html: None,
            error: None,
        };
        match l.kind {
            Kind::Step => {
                if steps == BATCH {
                    cut = true;
                    break;
                }
                steps += 1;
                match g.summary_at(step_pos) {
                    Ok(s) => {
                        item.step = Some(s.step);
                        item.html = Some(pages::step_row(id, &s, scale_ms));
                    }
                    Err(p) => item.error = Some(format!("line {}: {}", p.line_no, p.message)),
                }
                step_pos += 1;
            }
            Kind::Corrupt => {
                item.error = g
                    .problems()
                    .iter()
                    .find(|p| p.line_no == l.line_no)
                    .map(|p| format!("line {}: {}", p.line_no, p.message));
            }
            _ => {}
        }
        last_seq = Some(l.seq);
        items.push(item);
    }
    let finished = !cut && (g.finished() || meta.status != RunStatus::Running);
    let in_flight = if finished || cut {
        None
    } else {
        g.in_flight().map(|f| InFlightRow {
            step: f.step,
            html: pages::inflight_row(&f),
        })
    };
    Ok(Batch {
        items,
        last_seq,
        finished,
        in_flight,
        error,
    })
}

fn seq_param(q: &HashMap<String, String>, headers: &HeaderMap) -> Result<Option<u64>, PageError> {
    // A reconnecting browser says where it was; that wins over the page's starting point.
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    match from_header.or(q.get("after").map(|s| s.trim()).filter(|s| !s.is_empty())) {
        None => Ok(None),
        Some(s) => s.parse::<u64>().map(Some).map_err(|_| {
            PageError::bad_request(format!("?after={s}: a trace seq is a number from 0"))
        }),
    }
}

fn scale_param(q: &HashMap<String, String>) -> Result<f64, PageError> {
    match q.get("scale").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(1000.0),
        Some(s) => match s.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
            _ => Err(PageError::bad_request(format!(
                "?scale={s}: milliseconds drawn as a full bar, a positive number"
            ))),
        },
    }
}

/// `GET /api/runs/{id}/events?after=SEQ`: what arrived since, as JSON.
pub(super) async fn poll(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Batch>, PageError> {
    let after = seq_param(&q, &headers).map_err(PageError::json)?;
    let scale = scale_param(&q).map_err(PageError::json)?;
    let app = ctx.app.clone();
    blocking(move || {
        let dir = app.run_dir(&id)?;
        let id = canonical_id(&dir);
        collect(&app, &dir, &id, after, scale).map(Json)
    })
    .await
    .map_err(PageError::json)
}

/// Counts a live stream while it exists.
struct Guard(AppState);

impl Guard {
    fn new(app: &AppState) -> Self {
        app.live.fetch_add(1, Ordering::SeqCst);
        Self(app.clone())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Tail {
    ctx: Ctx,
    dir: RunDir,
    id: String,
    after: Option<u64>,
    scale: f64,
    queue: VecDeque<SseEvent>,
    done: bool,
    first: bool,
    ends: Instant,
    last_error: Option<String>,
    /// The in-flight step last sent (its number), so a change is sent once.
    in_flight: Option<u64>,
    _guard: Guard,
}

fn message(name: &str, seq: Option<u64>, data: &impl Serialize) -> SseEvent {
    let e = SseEvent::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_else(|_| "{}".into()));
    match seq {
        Some(s) => e.id(s.to_string()),
        None => e,
    }
}

impl Tail {
    /// Looks at the trace once and queues what is new.
    async fn poll(&mut self) {
        let (app, dir, id, after, scale) = (
            self.ctx.app.clone(),
            self.dir.clone(),
            self.id.clone(),
            self.after,
            self.scale,
        );
        let batch = blocking(move || collect(&app, &dir, &id, after, scale)).await;
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                let text = format!("{}: {}", e.title, e.detail);
                if self.last_error.as_ref() != Some(&text) {
                    self.queue.push_back(message(
                        "problem",
                        None,
                        &serde_json::json!({"error": text}),
                    ));
                    self.last_error = Some(text);
                }
                return;
            }
        };
        if let Some(err) = &batch.error {
            if self.last_error.as_ref() != Some(err) {
                self.queue
                    .push_back(message("problem", None, &serde_json::json!({"error": err})));
                self.last_error = Some(err.clone());
            }
        }
        for item in batch.items {
            let name = match item.kind {
                Kind::Step => "step",
                Kind::Corrupt => "problem",
                Kind::StageStarted
                | Kind::StageEnded
                | Kind::StageScored
                | Kind::Rescue
                | Kind::Integrity
                | Kind::Warning
                | Kind::RunFinished => "event",
                // Counted, not shown live.
                _ => {
                    self.after = Some(item.seq);
                    continue;
                }
            };
            self.after = Some(item.seq);
            self.queue.push_back(message(name, Some(item.seq), &item));
        }
        self.after = batch.last_seq.or(self.after);
        let now = batch.in_flight.as_ref().map(|f| f.step);
        if now != self.in_flight {
            self.in_flight = now;
            let data = match &batch.in_flight {
                Some(f) => serde_json::json!({"step": f.step, "html": f.html}),
                None => serde_json::json!({"step": null}),
            };
            self.queue.push_back(message("inflight", None, &data));
        }
        if batch.finished {
            self.queue.push_back(message(
                "finished",
                self.after,
                &serde_json::json!({"seq": self.after}),
            ));
            self.done = true;
        }
    }

    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Self)> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some((Ok(e), self));
            }
            if self.done || Instant::now() >= self.ends || self.ctx.cancel.is_cancelled() {
                return None;
            }
            if !self.first {
                tokio::select! {
                    _ = self.ctx.cancel.cancelled() => return None,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            self.first = false;
            self.poll().await;
        }
    }
}

/// `GET /runs/{id}/live?after=SEQ&scale=MS`: server-sent events `step` (with the timeline row),
/// `event` (a stage started, ended or was scored; a warning; a rescue), `problem`, and `finished`.
pub(super) async fn stream(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, PageError> {
    let dir = ctx.app.run_dir(&id)?;
    let id = canonical_id(&dir);
    let after = seq_param(&q, &headers)?;
    let scale = scale_param(&q)?;
    let tail = Tail {
        _guard: Guard::new(&ctx.app),
        ctx,
        dir,
        id,
        after,
        scale,
        queue: VecDeque::new(),
        done: false,
        first: true,
        ends: Instant::now() + STREAM_LIFETIME,
        last_error: None,
        in_flight: None,
    };
    let s = futures_util::stream::unfold(tail, |t| t.next());
    Ok(Sse::new(s).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
