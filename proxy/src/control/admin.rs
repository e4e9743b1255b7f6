//! The admin API, served on its own address (loopback by default) from the
//! control runtime, and the live status page. Every call but `GET
//! /healthz`, the page's three static files and `POST /login` needs
//! `Authorization: Bearer <token>` or the status page's session cookie; a
//! missing or wrong token gets 401 and changes nothing. A call made with
//! the cookie that changes state (any method but GET and HEAD) must also
//! carry `X-Wsgate-Csrf: 1`, else 403: another site's page can make a
//! browser send a form, but not a custom header (that needs a CORS
//! preflight, which this server never approves), and SameSite=Strict
//! keeps the cookie off cross-site requests in the first place. The token comes
//! from `WSGATE_ADMIN_TOKEN` or `admin.token_file` (created with a random
//! token, mode 0600, if missing), is compared in constant time, and is never
//! logged.
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `/v1/status` | pools and backends: state, live connections, pending closes; last reload |
//! | POST | `/v1/pools/{pool}/backends/{id}/drain` | body `{"window":"30s","close_code":1012}`, both optional |
//! | POST | `/v1/pools/{pool}/backends/{id}/undrain` | cancel the closes not yet sent |
//! | PUT | `/v1/pools/{pool}/backends/{id}` | add: body `{"address":"host:port","weight":1}` |
//! | DELETE | `/v1/pools/{pool}/backends/{id}` | remove: drain, then forget |
//! | POST | `/v1/reload` | re-read the config file |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/healthz` | no token: 200 `{"ok":true}` while serving, 503 once shutting down (readiness probes) |
//! | GET | `/v1/activity` | reload history, closes per interval by side and code, drain progress |
//! | GET | `/`, `/status.js`, `/status.css` | no token: the status page, which polls `/v1/status` and `/v1/activity` |
//! | POST | `/login` | no token: form field `token`; the right one gets a session cookie (`session`) and a 303 to `/`, a wrong one 401 |
//! | POST | `/logout` | ends the session and clears the cookie (needs `X-Wsgate-Csrf: 1`) |
//!
//! `/healthz` is open because a probe (a kubelet's) has no token. It tells
//! nothing but "the control task answers, and wsgate is not shutting
//! down", and it is served under the same connection cap and timeouts as
//! every other call.
//! No client, with or without a token, can hold the server: a request head
//! must arrive within [`HEADER_TIMEOUT`] of the connection opening or of
//! the previous response, a body within [`BODY_TIMEOUT`] (else 408), a
//! connection with no request handled for [`IDLE_TIMEOUT`] is closed, and
//! at most [`MAX_CONNECTIONS`] are open at once (one more is closed right
//! after accept). A failing accept backs off and its log line is rate
//! limited (`acceptloop`), so a full descriptor table costs no CPU.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::acceptloop::{self, AcceptState, RepeatLimiter, Verdict, LOG_INTERVAL};
use super::api::{AddRequest, Added, Closing, DrainRequest, ErrorReply, Undrained};
use super::session::{self, constant_time_eq, Sessions};
use super::{metrics, ControlError, ControlHandle};
use crate::config::units::parse_duration;
use crate::config::Admin;
use crate::routing::BackendKey;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the admin API needs a token: set WSGATE_ADMIN_TOKEN or admin.token_file")]
    NoToken,
    #[error("{path}: {message}")]
    TokenFile { path: String, message: String },
    #[error("admin API: cannot listen on {address}: {source}")]
    Bind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The token from the environment or the token file, creating the file
/// with a fresh random token when it does not exist.
pub fn load_token(admin: &Admin) -> Result<String, AdminError> {
    if let Ok(t) = std::env::var("WSGATE_ADMIN_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let path = admin.token_file.as_deref().ok_or(AdminError::NoToken)?;
    let err = |message: String| AdminError::TokenFile {
        path: path.display().to_string(),
        message,
    };
    if !path.exists() {
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        write_private(path, &token).map_err(|e| {
            err(format!(
                "cannot create token file: {e}; {}",
                crate::edge::tls::writable_hint(path)
            ))
        })?;
        tracing::warn!(path = %path.display(), "created a new admin token file");
        return Ok(token);
    }
    let token = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(err("token file is empty".into()));
    }
    Ok(token)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{contents}")
}

/// Longest wait for a complete request head, counted from the moment the
/// connection opens or its previous response is sent; then hyper closes
/// the connection. hyper only enforces it with a timer, so `serve_one`
/// gives it one (without, the timeout is silently off).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a request's whole body (at most [`MAX_BODY`]); then
/// 408 and the connection closes.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection on which no request has been handled for this long is
/// closed, whatever it is doing. A backstop behind the two timeouts above,
/// for instance for a client that never reads its response.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Admin connections open at once. One more is accepted and closed at
/// once (counted), so idle clients cannot hold an unbounded number of
/// descriptors; the operator's next call gets in as soon as one closes,
/// at the latest after [`HEADER_TIMEOUT`].
const MAX_CONNECTIONS: usize = 64;
/// Largest request body.
const MAX_BODY: usize = 64 * 1024;
/// Largest login form: read before any token is checked, so kept small.
const MAX_LOGIN_BODY: usize = 4 * 1024;
/// The admin listener is plain HTTP (loopback by default; there is no TLS
/// option for it), so the session cookie cannot be `Secure`: a browser
/// would not send it back. Should the admin API get TLS, this follows it.
const ADMIN_TLS: bool = false;

/// The status page, served as files (no inline script, so the page's
/// Content-Security-Policy can forbid inline code).
const PAGE_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/status.js");
const PAGE_CSS: &str = include_str!("page/status.css");
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// What authenticates a call: the token, and the status page's logins.
struct Auth {
    token: Arc<str>,
    sessions: Mutex<Sessions>,
}

impl Auth {
    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // Held for a lookup or an insert; a panic cannot leave it half-done.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How a call proved it may be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Bearer,
    Cookie,
}

/// The admin server's own counters, appended to `/metrics`.
struct Stats {
    /// One permit per open connection.
    permits: Arc<Semaphore>,
    refused: AtomicU64,
    accept_errors: AtomicU64,
    body_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
}

impl Stats {
    fn render(&self) -> String {
        use std::fmt::Write as _;
        let open = MAX_CONNECTIONS.saturating_sub(self.permits.available_permits());
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        family(
            "wsgate_admin_connections",
            "gauge",
            "Admin API connections open, this one included.",
            &[("", open as u64)],
        );
        family(
            "wsgate_admin_connections_refused_total",
            "counter",
            "Admin API connections closed right after accept because the cap was reached.",
            &[("", get(&self.refused))],
        );
        family(
            "wsgate_admin_accept_errors_total",
            "counter",
            "Failed accepts on the admin listener (e.g. EMFILE), each followed by a back-off.",
            &[("", get(&self.accept_errors))],
        );
        family(
            "wsgate_admin_timeouts_total",
            "counter",
            "Admin API requests answered 408 because the body was too slow (body), connections closed by the idle bound (idle).",
            &[
                ("{kind=\"body\"}", get(&self.body_timeouts)),
                ("{kind=\"idle\"}", get(&self.idle_timeouts)),
            ],
        );
        out
    }
}

/// Serves the admin API until the control thread ends. Runs on the control
/// runtime; every call becomes a command to the control task. At most
/// [`MAX_CONNECTIONS`] connections are served at once, each bounded by the
/// timeouts above; a failing accept backs off (`acceptloop`).
pub async fn serve(listener: tokio::net::TcpListener, control: ControlHandle, token: String) {
    let auth = Arc::new(Auth {
        token: token.into(),
        sessions: Mutex::new(Sessions::default()),
    });
    let stats = Arc::new(Stats {
        permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        refused: AtomicU64::new(0),
        accept_errors: AtomicU64::new(0),
        body_timeouts: AtomicU64::new(0),
        idle_timeouts: AtomicU64::new(0),
    });
    let mut accepting = AcceptState::new();
    let mut refusals = RepeatLimiter::new(LOG_INTERVAL);
    loop {
        let (stream, peer) =
            acceptloop::accept(&listener, &mut accepting, &stats.accept_errors).await;
        let Ok(permit) = stats.permits.clone().try_acquire_owned() else {
            drop(stream);
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if let Verdict::Log { suppressed } = refusals.check((), Instant::now()) {
                tracing::warn!(
                    %peer,
                    not_logged = suppressed,
                    "admin connection refused: {MAX_CONNECTIONS} already open (logged once per {}s)",
                    LOG_INTERVAL.as_secs()
                );
            }
            continue;
        };
        tokio::spawn(serve_one(
            stream,
            peer,
            control.clone(),
            auth.clone(),
            stats.clone(),
            permit,
        ));
    }
}

/// Whether a connection is handling a request, and when it last finished one.
struct Activity {
    opened: Instant,
    running: AtomicUsize,
    /// Milliseconds from `opened` to the end of the last request handled.
    last_done_ms: AtomicU64,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::Relaxed);
        Running(self.clone())
    }

    /// When the connection has been idle for [`IDLE_TIMEOUT`]; None while
    /// a request is being handled.
    fn idle_deadline(&self) -> Option<Instant> {
        if self.running.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_done_ms.load(Ordering::Relaxed));
        Some(self.opened + last + IDLE_TIMEOUT)
    }
}

/// A request being handled; dropping it (also when hyper drops the handler)
/// marks the end.
struct Running(Arc<Activity>);

impl Drop for Running {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.last_done_ms.store(ms, Ordering::Relaxed);
        a.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One admin connection, holding its `permit` until it closes.
async fn serve_one(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    control: ControlHandle,
    auth: Arc<Auth>,
    stats: Arc<Stats>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity {
        opened: Instant::now(),
        running: AtomicUsize::new(0),
        last_done_ms: AtomicU64::new(0),
    });
    let service = {
        let (activity, stats) = (activity.clone(), stats.clone());
        service_fn(move |req| {
            let running = activity.begin();
            let (control, auth, stats) = (control.clone(), auth.clone(), stats.clone());
            async move {
                let reply = handle(&control, &auth, &stats, req).await;
                drop(running);
                Ok::<_, std::convert::Infallible>(reply.into_response())
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    loop {
        let check_at = activity
            .idle_deadline()
            .unwrap_or_else(|| Instant::now() + IDLE_TIMEOUT);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "admin connection error");
                }
                return;
            }
            () = tokio::time::sleep_until(check_at.into()) => {
                if activity.idle_deadline().is_some_and(|d| d <= Instant::now()) {
                    stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "admin connection idle for {}s; closed", IDLE_TIMEOUT.as_secs());
                    return;
                }
            }
        }
    }
}

/// An answer of the admin API.
enum Reply {
    Json(StatusCode, String),
    /// Prometheus text.
    Metrics(String),
    /// One of the status page's files: content type, text.
    Page(&'static str, &'static str),
    /// A login that worked: the session cookie, and a 303 to the page.
    LoggedIn(String),
    /// 204, clearing the session cookie.
    LoggedOut,
    /// 204.
    NoContent,
}

impl Reply {
    fn json(status: StatusCode, body: &impl Serialize) -> Reply {
        // Our own plain structs always serialise; the fallback is never sent.
        let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_string());
        Reply::Json(status, text)
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Reply {
        Reply::json(
            status,
            &ErrorReply {
                error: message.into(),
            },
        )
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        use http::header::{self, HeaderValue};
        let mut cookie = None;
        let (status, body, content_type) = match self {
            Reply::Json(status, text) => (status, format!("{text}\n"), "application/json"),
            Reply::Metrics(text) => (StatusCode::OK, text, "text/plain; version=0.0.4"),
            Reply::Page(kind, text) => (StatusCode::OK, text.to_string(), kind),
            Reply::LoggedIn(value) => {
                cookie = Some(session::set_cookie(&value, ADMIN_TLS));
                (StatusCode::SEE_OTHER, String::new(), "text/plain")
            }
            Reply::LoggedOut => {
                cookie = Some(session::clear_cookie(ADMIN_TLS));
                (StatusCode::NO_CONTENT, String::new(), "text/plain")
            }
            Reply::NoContent => (StatusCode::NO_CONTENT, String::new(), "text/plain"),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        // Status and tokens' answers belong in no cache; no type sniffing.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if content_type.starts_with("text/html") {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_POLICY),
            );
            headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            headers.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
        }
        if status == StatusCode::SEE_OTHER {
            headers.insert(header::LOCATION, HeaderValue::from_static("/"));
        }
        // Hex and fixed attributes: always a valid header value.
        if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::SET_COOKIE, c);
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: this connection
            // cannot carry another request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

fn error_status(e: &ControlError) -> StatusCode {
    match e {
        ControlError::UnknownPool(_) | ControlError::UnknownBackend(_) => StatusCode::NOT_FOUND,
        ControlError::AlreadyExists(_) | ControlError::NoConfigFile => StatusCode::CONFLICT,
        ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ControlError::InvalidConfig(_) | ControlError::Listener(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ControlError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn handle(
    control: &ControlHandle,
    auth: &Auth,
    stats: &Stats,
    req: Request<Incoming>,
) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return health(control).await,
        (&Method::GET, "/") => return Reply::Page("text/html; charset=utf-8", PAGE_HTML),
        (&Method::GET, "/status.js") => {
            return Reply::Page("text/javascript; charset=utf-8", PAGE_JS)
        }
        (&Method::GET, "/status.css") => return Reply::Page("text/css; charset=utf-8", PAGE_CSS),
        (&Method::POST, "/login") => return login(auth, stats, req).await,
        // Browsers ask for it on their own: no icon, and neither a 401
        // with a warning nor a 404 in the browser's console.
        (&Method::GET, "/favicon.ico") => return Reply::NoContent,
        _ => {}
    }
    let caller = match authorize(auth, req.headers()) {
        Some(c) => c,
        None => return unauthorized(&method, &path),
    };
    let changes_state = method != Method::GET && method != Method::HEAD;
    if caller == Caller::Cookie && changes_state && !csrf_header(req.headers()) {
        tracing::warn!(%method, path, "cookie call without the CSRF header refused");
        return Reply::error(
            StatusCode::FORBIDDEN,
            "a call with the session cookie that changes state needs the header `X-Wsgate-Csrf: 1`",
        );
    }
    if (&method, path.as_str()) == (&Method::POST, "/logout") {
        if let Some(value) = session_cookie(req.headers()) {
            auth.sessions().end(value);
        }
        return Reply::LoggedOut;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let body = match read_body(req.into_body(), MAX_BODY, stats).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    match route(control, stats, &method, &segments, &body).await {
        Ok(reply) => reply,
        Err(e) => Reply::error(error_status(&e), e.to_string()),
    }
}

/// The one answer to a missing or wrong token, whether it came as a
/// bearer header, a session cookie or the login form.
fn unauthorized(method: &Method, path: &str) -> Reply {
    tracing::warn!(%method, path, "admin call without a valid token");
    Reply::error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (or status page session)",
    )
}

/// The bearer token, else a live session's cookie.
fn authorize(auth: &Auth, headers: &http::HeaderMap) -> Option<Caller> {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = presented {
        // A wrong bearer token is refused even with a good cookie: the
        // caller meant the header.
        return constant_time_eq(token.as_bytes(), auth.token.as_bytes()).then_some(Caller::Bearer);
    }
    let value = session_cookie(headers)?;
    auth.sessions()
        .check(value, Instant::now())
        .then_some(Caller::Cookie)
}

fn session_cookie(headers: &http::HeaderMap) -> Option<&str> {
    session::cookie_value(
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

fn csrf_header(headers: &http::HeaderMap) -> bool {
    headers
        .get(session::CSRF_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1")
}

/// `POST /login`: a form with the token. The right one starts a session.
async fn login(auth: &Auth, stats: &Stats, req: Request<Incoming>) -> Reply {
    let body = match read_body(req.into_body(), MAX_LOGIN_BODY, stats).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let presented = session::form_token(&body).unwrap_or_default();
    if !constant_time_eq(presented.as_bytes(), auth.token.as_bytes()) {
        return unauthorized(&Method::POST, "/login");
    }
    let value = auth
        .sessions()
        .create(rand::random::<session::SessionId>(), Instant::now());
    tracing::info!("status page login");
    Reply::LoggedIn(value)
}

/// The whole body, at most `limit` bytes, within [`BODY_TIMEOUT`].
async fn read_body(body: Incoming, limit: usize, stats: &Stats) -> Result<Bytes, Reply> {
    let body = Limited::new(body, limit).collect();
    match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {} KiB", limit / 1024),
        )),
        Ok(Err(e)) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}"),
        )),
        Err(_) => {
            stats.body_timeouts.fetch_add(1, Ordering::Relaxed);
            let secs = BODY_TIMEOUT.as_secs();
            Err(Reply::error(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {secs}s"),
            ))
        }
    }
}

/// `GET /healthz`: ready while the control task answers and wsgate is
/// not shutting down. 503 during a shutdown takes the replica out of a
/// Service's endpoints while its connections close.
async fn health(control: &ControlHandle) -> Reply {
    match control.status().await {
        Ok(s) if s.shutting_down => Reply::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "ok": false, "shutting_down": true }),
        ),
        Ok(_) => Reply::json(StatusCode::OK, &serde_json::json!({ "ok": true })),
        Err(e) => Reply::error(error_status(&e), e.to_string()),
    }
}

/// An empty body means every field's default.
fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ControlError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_required(body)
}

fn parse_required<T: DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::BadRequest(format!("body: {e}")))
}

fn ok(body: &impl Serialize) -> Result<Reply, ControlError> {
    Ok(Reply::json(StatusCode::OK, body))
}

async fn route(
    control: &ControlHandle,
    stats: &Stats,
    method: &Method,
    seg: &[&str],
    body: &[u8],
) -> Result<Reply, ControlError> {
    match (method, seg) {
        (&Method::GET, ["v1", "status"]) => ok(&control.status().await?),
        (&Method::GET, ["v1", "activity"]) => ok(&control.activity().await?),
        (&Method::GET, ["metrics"]) => {
            let text = metrics::render(&control.metrics().await?) + &stats.render();
            Ok(Reply::Metrics(text))
        }
        (&Method::POST, ["v1", "reload"]) => ok(&control.reload().await?),
        (&Method::POST, ["v1", "pools", pool, "backends", id, "drain"]) => {
            let b: DrainRequest = parse(body)?;
            let window = b
                .window
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(ControlError::BadRequest)?;
            let backend = BackendKey::new(pool, id);
            let closing = control.drain(backend.clone(), window, b.close_code).await?;
            ok(&Closing {
                backend: backend.to_string(),
                closing,
            })
        }
        (&Method::POST, ["v1", "pools", pool, "backends", id, "undrain"]) => {
            let backend = BackendKey::new(pool, id);
            let cancelled = control.undrain(backend.clone()).await?;
            ok(&Undrained {
                backend: backend.to_string(),
                cancelled,
            })
        }
        (&Method::PUT, ["v1", "pools", pool, "backends", id]) => {
            let b: AddRequest = parse_required(body)?;
            let backend = BackendKey::new(pool, id);
            control
                .add_backend(backend.clone(), b.address, b.weight)
                .await?;
            Ok(Reply::json(
                StatusCode::CREATED,
                &Added {
                    backend: backend.to_string(),
                },
            ))
        }
        (&Method::DELETE, ["v1", "pools", pool, "backends", id]) => {
            let backend = BackendKey::new(pool, id);
            let closing = control.remove_backend(backend.clone()).await?;
            ok(&Closing {
                backend: backend.to_string(),
                closing,
            })
        }
        _ => Ok(Reply::error(
            StatusCode::NOT_FOUND,
            "no such endpoint; see /v1/status",
        )),
    }
}
