//! The web view (`coordinator --web-addr`, `local --web`): the cluster and its jobs in a browser,
//! live. Any replica serves it from its applied state (a follower's view may lag by a few
//! entries, and per-step figures live in the leader's memory: a follower says so).
//!
//! Routes (axum): `GET /` the cluster (workers, jobs); `GET /jobs/{id}` one job; `GET /live` and
//! `GET /jobs/{id}/live` their server-sent event streams (`update`: `{"sections":{id: html}}`
//! whenever the state or the live step summaries moved, checked every [`TICK`]; `end` once the
//! job is over); `GET /api/jobs/{id}` the job as JSON (state, tasks, ranks, straggler, events);
//! `POST /jobs/{id}/cancel` cancels and `POST /submit` submits (the cluster page's form) through
//! raft, with the same validation as `cyclotron cancel` and `cyclotron submit`.
//!
//! Pages are server-rendered HTML with inline SVG charts ([`chart`]) and one inline script; no
//! file, font or library is fetched from anywhere, so the view works offline and from the binary
//! alone, and reads without JavaScript (the live updates need it).
//!
//! Who may look: with a cluster token configured, every request must carry it, as HTTP basic
//! auth (any user name, the token as password: a browser asks once) or `Authorization: Bearer`,
//! or the session cookie that `GET /login?token=TOKEN&next=/path` sets (what `cyclotron local
//! --web` prints, as Jupyter does: the link logs the browser in).
//! Cancelling and submitting also need the page's form secret (a random value of this server), so another site
//! cannot make a logged-in browser post it. Without a token the view is served on loopback only.
//! Limits: at most [`MAX_CONNECTIONS`] connections, [`HEADER_TIMEOUT`] for a request's headers,
//! and a live stream ends after [`STREAM_DEADLINE`] (the browser reconnects by itself).

pub mod chart;
pub mod html;
pub mod pages;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use cyclotron_proto::auth::{digests_equal, sha256, Token};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

use crate::live::TaskLive;
use crate::state::{ClusterState, Command, JobState};
use pages::Section;

/// How often a live stream looks for changes.
pub const TICK: Duration = Duration::from_millis(500);
/// Most connections open at once (live streams included).
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a live stream stays open.
pub const STREAM_DEADLINE: Duration = Duration::from_secs(3600);

/// What the pages read: the replica's state, the leader's memory (live steps, leases), and the
/// way to propose a cancel.
#[derive(Clone)]
pub(crate) struct Web {
    shared: Arc<crate::server::Shared>,
    token: Option<[u8; 32]>,
    /// The cancel form's secret.
    form_secret: String,
}

#[derive(serde::Deserialize)]
struct CancelForm {
    secret: String,
}

#[derive(serde::Deserialize)]
struct SubmitForm {
    secret: String,
    /// The form's idempotency key (a second post of the same page submits nothing new).
    request: String,
    spec: String,
    workers_per_run: u32,
    #[serde(default)]
    max_restarts: u32,
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
    next: Option<String>,
}

/// The session cookie's name.
const COOKIE: &str = "cyclotron_session";

impl Web {
    fn served_by(&self) -> String {
        let s = self.shared.replica.status();
        if s.is_leader {
            format!("replica {} (leader)", s.id)
        } else {
            format!(
                "replica {} (follower; leader {})",
                s.id,
                s.leader_addr.unwrap_or_else(|| "unknown".into())
            )
        }
    }

    /// The session cookie's value: derived from this server's secret, so it ends with the server.
    fn cookie_value(&self) -> String {
        cyclotron_proto::auth::hex_encode(&sha256(format!("session:{}", self.form_secret).as_bytes()))
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        let Some(want) = &self.token else { return true };
        if !self.form_secret.is_empty() {
            let want_cookie = sha256(self.cookie_value().as_bytes());
            let cookies = headers.get_all(header::COOKIE).into_iter().filter_map(|v| v.to_str().ok());
            for pair in cookies.flat_map(|c| c.split(';')) {
                if let Some((name, value)) = pair.trim().split_once('=') {
                    if name == COOKIE && digests_equal(&sha256(value.as_bytes()), &want_cookie) {
                        return true;
                    }
                }
            }
        }
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let presented = if let Some(b) = value.strip_prefix("Basic ") {
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim()) else { return false };
            let text = String::from_utf8_lossy(&raw).to_string();
            text.split_once(':').map(|(_, p)| p.to_string()).unwrap_or_default()
        } else if let Some(t) = value.strip_prefix("Bearer ") {
            t.trim().to_string()
        } else {
            return false;
        };
        digests_equal(&sha256(presented.as_bytes()), want)
    }

    fn live_of(&self, job: &str) -> Vec<(usize, TaskLive)> {
        let live = self.shared.live();
        live.tasks_of(job).into_iter().map(|(i, t)| (i, t.clone())).collect()
    }

    /// Seconds since each worker's last heartbeat (the leader's lease memory).
    fn heartbeats(&self, state: &ClusterState) -> HashMap<String, u64> {
        let now = crate::server::monotonic_ms();
        let leases = self.shared.leases.lock().unwrap_or_else(|e| e.into_inner());
        state
            .workers
            .iter()
            .filter_map(|(id, w)| {
                let renewed = leases.expires_ms(id)?.checked_sub(w.lease_ms)?;
                Some((id.clone(), now.saturating_sub(renewed)))
            })
            .collect()
    }

    fn cluster_sections(&self) -> Vec<Section> {
        let state = self.shared.state();
        pages::cluster_sections(&state, &self.heartbeats(&state))
    }

    fn job_sections(&self, id: &str, job: &JobState) -> Vec<Section> {
        let leader = self.shared.replica.status().is_leader;
        pages::job_sections(id, job, &self.live_of(id), leader, &self.form_secret)
    }

    /// A change counter of what the pages show: applied entries and live summaries.
    fn version(&self) -> (u64, u64) {
        (self.shared.state().applied_index, self.shared.live().version)
    }
}

fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, r#"Basic realm="cyclotron", charset="UTF-8""#)],
        "this cluster needs its token: any user name, the cluster token as password (or Authorization: Bearer TOKEN)\n",
    )
        .into_response()
}

fn not_found(id: &str) -> Response {
    let body = html::page(
        "not found",
        "",
        &format!(r#"<h1>No job {}</h1><p><a href="/">All jobs</a></p>"#, html::esc(id)),
        None,
    );
    (StatusCode::NOT_FOUND, Html(body)).into_response()
}

async fn login(State(web): State<Web>, Query(q): Query<Login>) -> Response {
    let ok = match &web.token {
        Some(want) => digests_equal(&sha256(q.token.as_bytes()), want),
        None => true,
    };
    if !ok || web.form_secret.is_empty() {
        return unauthorised();
    }
    // only paths of this server: no open redirect
    let next = q.next.filter(|n| n.starts_with('/') && !n.starts_with("//")).unwrap_or_else(|| "/".into());
    let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", web.cookie_value());
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

async fn cluster_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    if !web.authorised(&headers) {
        return unauthorised();
    }
    let mut body = pages::sections_html(&web.cluster_sections(), pages::CLUSTER_TITLES);
    let request = cyclotron_proto::auth::random_bytes::<12>()
        .map(|b| cyclotron_proto::auth::hex_encode(&b))
        .unwrap_or_default();
    body.push_str(&pages::submit_form(&web.form_secret, &request));
    Html(html::page("cluster", &web.served_by(), &body, Some("/live"))).into_response()
}

async fn job_page(State(web): State<Web>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if !web.authorised(&headers) {
        return unauthorised();
    }
    let state = web.shared.state();
    let Some(job) = state.jobs.get(&id) else { return not_found(&id) };
    let body = pages::sections_html(&web.job_sections(&id, job), pages::JOB_TITLES);
    let live = format!("/jobs/{}/live", html::url_segment(&id));
    Html(html::page(&id, &web.served_by(), &body, Some(&live))).into_response()
}

fn update(sections: &[Section]) -> Event {
    let map: serde_json::Map<String, serde_json::Value> =
        sections.iter().map(|(id, html)| (id.to_string(), serde_json::Value::String(html.clone()))).collect();
    Event::default().event("update").data(serde_json::json!({ "sections": map }).to_string())
}

/// A live stream: `render` gives the sections (and whether this is the last update) whenever the
/// version moved, until the client goes, the server stops or the deadline passes.
fn stream<F>(web: Web, render: F) -> Response
where
    F: Fn(&Web) -> Option<(Vec<Section>, bool)> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + STREAM_DEADLINE;
        let mut seen = None;
        let mut stopping = web.shared.stopping.clone();
        loop {
            let v = web.version();
            if seen != Some(v) {
                seen = Some(v);
                let Some((sections, last)) = render(&web) else { break };
                if tx.send(Ok(update(&sections))).await.is_err() {
                    return;
                }
                if last {
                    let _ = tx.send(Ok(Event::default().event("end").data("ended"))).await;
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = tx.closed() => return,
                _ = async { let _ = stopping.wait_for(|s| *s).await; } => return,
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    let events: ReceiverStream<Result<Event, Infallible>> = ReceiverStream::new(rx);
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

async fn cluster_live(State(web): State<Web>, headers: HeaderMap) -> Response {
    if !web.authorised(&headers) {
        return unauthorised();
    }
    stream(web, |w| Some((w.cluster_sections(), false)))
}

async fn job_live(State(web): State<Web>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if !web.authorised(&headers) {
        return unauthorised();
    }
    if !web.shared.state().jobs.contains_key(&id) {
        return not_found(&id);
    }
    stream(web, move |w| {
        let state = w.shared.state();
        let job = state.jobs.get(&id)?;
        Some((w.job_sections(&id, job), job.status.is_terminal()))
    })
}

async fn job_json(State(web): State<Web>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if !web.authorised(&headers) {
        return unauthorised();
    }
    let state = web.shared.state();
    let Some(job) = state.jobs.get(&id) else {
        return (StatusCode::NOT_FOUND, format!("no job {id}\n")).into_response();
    };
    let live = web.live_of(&id);
    let tasks: Vec<serde_json::Value> = job
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let ranks = live.iter().find(|(k, _)| *k == i).map(|(_, l)| l.stats()).unwrap_or_default();
            serde_json::json!({
                "kind": t.task.kind(),
                "status": t.status.name(),
                "restarts": t.restarts,
                // the current group's naming only (a finished task's is history, in `events`)
                "straggler": if t.status.name() == "running" { t.straggler.clone() } else { None },
                "ranks": ranks,
            })
        })
        .collect();
    let body = serde_json::json!({
        "job_id": id,
        "status": job.status.name(),
        "reason": job.status.reason(),
        "tasks": tasks,
        "events": job.events,
        "results": job.results(),
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn cancel(
    State(web): State<Web>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CancelForm>,
) -> Response {
    if !web.authorised(&headers) {
        return unauthorised();
    }
    if web.form_secret.is_empty()
        || !digests_equal(&sha256(form.secret.as_bytes()), &sha256(web.form_secret.as_bytes()))
    {
        return (
            StatusCode::FORBIDDEN,
            "cancel from the job's page (its form carries this server's secret)\n",
        )
            .into_response();
    }
    if let Err(e) = web.shared.require_leader() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}: cancel on the leader's web view\n"))
            .into_response();
    }
    let cmd = Command::CancelJob { job: id.clone(), reason: "cancelled from the web view".into() };
    match web.shared.commit(cmd).await {
        Ok(()) => Redirect::to(&format!("/jobs/{}", html::url_segment(&id))).into_response(),
        Err(e) => (StatusCode::CONFLICT, format!("not cancelled: {e}\n")).into_response(),
    }
}

/// A page that says what went wrong and links back.
fn problem(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        r#"<h1>{}</h1><pre class=log>{}</pre><p><a href="/">Back to the cluster</a></p>"#,
        html::esc(title),
        html::esc(message)
    );
    (status, Html(html::page(title, "", &body, None))).into_response()
}

async fn submit(State(web): State<Web>, headers: HeaderMap, Form(form): Form<SubmitForm>) -> Response {
    if !web.authorised(&headers) {
        return unauthorised();
    }
    if web.form_secret.is_empty()
        || !digests_equal(&sha256(form.secret.as_bytes()), &sha256(web.form_secret.as_bytes()))
    {
        return problem(
            StatusCode::FORBIDDEN,
            "not submitted",
            "submit from the cluster page (its form carries this server's secret)",
        );
    }
    if form.spec.len() > cyclotron_proto::limits::MAX_JOB_REQUEST {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "not submitted",
            "the job spec is larger than a submission may be",
        );
    }
    match crate::server::submit_job(
        &web.shared,
        &form.spec,
        &form.request,
        form.workers_per_run,
        form.max_restarts,
    )
    .await
    {
        Ok(job) => Redirect::to(&format!("/jobs/{}", html::url_segment(&job))).into_response(),
        Err(e) => problem(StatusCode::BAD_REQUEST, "not submitted", &e.to_string()),
    }
}

fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(cluster_page))
        .route("/login", get(login))
        .route("/live", get(cluster_live))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/live", get(job_live))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/submit", post(submit))
        .route("/api/jobs/{id}", get(job_json))
        .with_state(web)
}

/// A running web view; stops when the coordinator does, or on [`WebServer::shutdown`].
#[derive(Debug)]
pub struct WebServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl WebServer {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot serve the web view on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the web view of a cluster without a token is served on loopback only, not {0}: give the coordinator a cluster token (--token-file or CYCLOTRON_TOKEN), or use 127.0.0.1")]
    NotLoopback(SocketAddr),
}

pub(crate) async fn serve(
    shared: Arc<crate::server::Shared>,
    addr: SocketAddr,
    token: Option<&Token>,
) -> Result<WebServer, WebError> {
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(WebError::NotLoopback(addr));
    }
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|source| WebError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| WebError::Bind { addr, source })?;
    // no CSPRNG: a fresh random-looking secret is not to be had, and cancelling from the page
    // stays off (an empty secret never matches: the form check demands a non-empty one)
    let secret = cyclotron_proto::auth::random_bytes::<16>()
        .map(|b| cyclotron_proto::auth::hex_encode(&b))
        .unwrap_or_default();
    let web = Web {
        token: token.map(|t| sha256(t.expose().as_bytes())),
        form_secret: secret,
        shared: shared.clone(),
    };
    let app = router(web);
    let (stop, mut stopped) = watch::channel(false);
    let mut server_stopping = shared.stopping.clone();
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let socket = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = async { let _ = stopped.wait_for(|s| *s).await; } => break,
                _ = async { let _ = server_stopping.wait_for(|s| *s).await; } => break,
            };
            while conns.try_join_next().is_some() {}
            if conns.len() >= MAX_CONNECTIONS {
                drop(socket);
                continue;
            }
            let app = app.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, req).await }
            });
            conns.spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(socket), service);
                let _ = tokio::time::timeout(STREAM_DEADLINE + Duration::from_secs(60), conn).await;
            });
        }
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    });
    Ok(WebServer { addr: bound, stop })
}
