//! HTTP/1.1 server: accept loop, one task per connection, routing, and the
//! plain HTTP endpoints (`GET /healthz`, `GET /whoami`, `POST /echo`, the
//! page at `GET /`). WebSocket upgrades go through `ws`: `/echo` to `echo`,
//! `/ws?user=NAME` to the chat service.
//!
//! On SIGTERM/SIGINT it stops accepting and asks every open WebSocket to
//! close with 1012 "service restart": echo sockets at once, chat sockets at
//! random times within the drain window. It waits until they are done (at
//! most the window plus [`DRAIN_GRACE`]) before returning.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::chat::{Chat, Settings, Storage};
use crate::shutdown::{Controller, Shutdown, Signals};

/// Response body type used by every handler.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// How long shutdown waits, after the drain window, for open connections
/// to finish (close handshakes in flight).
pub const DRAIN_GRACE: Duration = Duration::from_secs(4);

/// Server settings (from the command line).
pub struct Config {
    pub listen: String,
    pub id: String,
    pub chat: Settings,
    pub storage: Storage,
    /// Largest WebSocket message on `/ws`.
    pub max_message_bytes: usize,
}

/// What every request handler needs.
struct State {
    id: Arc<str>,
    chat: Arc<Chat>,
    max_message_bytes: usize,
}

/// A response with a plain-text body.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    let plain = HeaderValue::from_static("text/plain; charset=utf-8");
    resp.headers_mut().insert(CONTENT_TYPE, plain);
    resp
}

/// Opens the chat engine (connecting to Redis if configured), binds, prints
/// `chat-backend <id> listening on <addr>` to stdout, serves until
/// SIGTERM/SIGINT, then drains.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let id: Arc<str> = config.id.into();
    let drain_window = config.chat.drain_window;
    let chat = Chat::start(id.clone(), config.chat, config.storage.clone())
        .await
        .map_err(|err| match &config.storage.redis_url {
            Some(url) => anyhow::anyhow!("cannot use redis at {url}: {err}"),
            None => anyhow::anyhow!("{err}"),
        })?;
    chat.spawn_maintenance();
    let state = Arc::new(State {
        id,
        chat,
        max_message_bytes: config.max_message_bytes,
    });
    let listener = TcpListener::bind(&config.listen).await?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "chat-backend {} listening on {addr}", state.id)?;
    out.flush()?;
    drop(out);

    let controller = Controller::new();
    let signal = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(state.clone(), controller.handle(), stream));
                }
                Err(err) => {
                    // Usually EMFILE: back off instead of spinning.
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            signal = signals.recv() => break signal,
        }
    };
    drop(listener);
    info!(
        signal,
        ?drain_window,
        "shutting down: closing websockets with 1012"
    );
    let grace = drain_window + DRAIN_GRACE;
    if controller.drain(grace).await {
        info!("all connections closed");
    } else {
        warn!("drain timed out after {grace:?}, exiting anyway");
    }
    Ok(())
}

/// Serves one TCP connection (HTTP/1.1 with upgrades); on shutdown, lets the
/// in-flight request finish and closes the connection.
async fn serve_connection(state: Arc<State>, shutdown: Shutdown, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let svc_shutdown = shutdown.clone();
    let service = service_fn(move |req| {
        let resp = route(&state, &svc_shutdown, req);
        async move { Ok::<_, Infallible>(resp) }
    });
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.triggered() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        debug!(%err, "connection error");
    }
}

/// Dispatches a request to its handler and tags the response with our id.
fn route(state: &State, shutdown: &Shutdown, req: Request<Incoming>) -> Response<Body> {
    let id = &state.id;
    let mut resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/whoami") => whoami(id, &req),
        (&Method::POST, "/echo") => {
            // Stream the request body straight back.
            let mut resp = Response::new(req.into_body().boxed());
            let octets = HeaderValue::from_static("application/octet-stream");
            resp.headers_mut().insert(CONTENT_TYPE, octets);
            resp
        }
        (&Method::GET, "/echo") => {
            let (id, shutdown) = (id.clone(), shutdown.clone());
            crate::ws::accept(
                req,
                crate::ws::ECHO_MAX_MESSAGE_SIZE,
                move |ws| async move {
                    crate::echo::run(ws, &id, shutdown).await;
                },
            )
        }
        (&Method::GET, "/ws") => chat(state, shutdown, req),
        (&Method::GET, path) => {
            crate::page::asset(path).unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found"))
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    };
    if let Ok(id) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-backend-id", id);
    }
    resp
}

/// `GET /ws?user=NAME`: the chat WebSocket. The user name is required and
/// must be a valid name (see `chat::protocol`), otherwise 400.
fn chat(state: &State, shutdown: &Shutdown, req: Request<Incoming>) -> Response<Body> {
    let user = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("user="))
        .filter(|u| crate::chat::protocol::valid_user(u))
        .map(str::to_string);
    let Some(user) = user else {
        return text(
            StatusCode::BAD_REQUEST,
            "?user= is required: 1-32 characters from A-Z a-z 0-9 _ - .",
        );
    };
    let (chat, shutdown) = (state.chat.clone(), shutdown.clone());
    crate::ws::accept(req, state.max_message_bytes, move |ws| async move {
        crate::chat::session::run(ws, chat, user, shutdown).await;
    })
}

/// `GET /whoami` response body (field order is part of the output).
#[derive(serde::Serialize)]
struct WhoAmI<'a> {
    backend: &'a str,
    path: &'a str,
    query: &'a str,
    headers: BTreeMap<&'a str, String>,
}

/// `GET /whoami`: which backend answered and what request it received.
fn whoami(id: &str, req: &Request<Incoming>) -> Response<Body> {
    let mut headers = BTreeMap::<&str, String>::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        let joined = headers.entry(name.as_str()).or_default();
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(&value);
    }
    let body = WhoAmI {
        backend: id,
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        headers,
    };
    let body = serde_json::to_string(&body).unwrap_or_default();
    let mut resp = text(StatusCode::OK, body);
    let json = HeaderValue::from_static("application/json");
    resp.headers_mut().insert(CONTENT_TYPE, json);
    resp
}
