//! Talking to a backend: connect with a timeout, send one request over a
//! fresh HTTP/1.1 connection, wait for the response head with a timeout.
//! Plain requests go through hyper's client here; WebSocket upgrades take
//! the leaner `upgrade` path, with the same connect and error kinds.
//!
//! Failures are classified twice: for the client (refused or broken
//! connections are 502, timeouts 504) and for health
//! ([`UpstreamError::counts_against_backend`]). Only what the backend did
//! counts against it: a refused or timed-out connect, a reset or malformed
//! response, a request body it stopped reading, a response head that did
//! not come within `backend_response` *after the request was fully sent*.
//! A client that aborts or stalls its own request body, and a connect that
//! fails because wsgate is out of descriptors or memory, never do: one
//! hostile client could otherwise walk a whole pool out of rotation.
//!
//! Nothing here can hang: the connect, the upload (by progress) and the
//! response head are each bounded.
//!
//! One connection per request: a WebSocket needs its own connection anyway,
//! and plain HTTP through wsgate (the page, health, long-poll fallbacks) is
//! light. Pooling keep-alive connections for plain HTTP is a possible later
//! optimisation.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::localfault::is_local_resource_error;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("backend {address} did not accept a connection within {timeout:?}")]
    ConnectTimeout { address: String, timeout: Duration },
    /// Refused, unreachable, or the name did not resolve.
    #[error("cannot connect to backend {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    /// wsgate itself is out of descriptors, buffers or memory.
    #[error("wsgate is out of resources to reach backend {address}: {source}")]
    LocalResources {
        address: String,
        source: std::io::Error,
    },
    #[error(
        "backend {address} sent no response head within {timeout:?} of the end of the request"
    )]
    ResponseTimeout { address: String, timeout: Duration },
    /// The backend closed the connection or sent an invalid response.
    #[error("backend {address} failed: {source}")]
    Http {
        address: String,
        source: hyper::Error,
    },
    /// A read or write on the backend connection failed (a reset, say).
    #[error("backend {address} failed: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    /// The backend's answer to an upgrade could not be read (`upgrade`).
    #[error("backend {address} sent an invalid answer: {reason}")]
    BadResponse { address: String, reason: HeadError },
    /// The backend refused an upgrade with a body too large to relay.
    #[error("backend {address} refused the upgrade with a body over {limit} bytes")]
    RelayTooLarge { address: String, limit: usize },
    #[error("backend {address} stopped reading the request body for {timeout:?}")]
    UploadStalled { address: String, timeout: Duration },
    /// The client's own request body broke (aborted, malformed chunking).
    #[error("the request body from the client failed: {source}")]
    ClientBody { source: hyper::Error },
    #[error("the client sent no request body bytes for {timeout:?}")]
    ClientBodyStalled { timeout: Duration },
}

impl UpstreamError {
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::ConnectTimeout { .. }
            | UpstreamError::ResponseTimeout { .. }
            | UpstreamError::UploadStalled { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Connect { .. }
            | UpstreamError::Http { .. }
            | UpstreamError::Io { .. }
            | UpstreamError::BadResponse { .. }
            | UpstreamError::RelayTooLarge { .. } => StatusCode::BAD_GATEWAY,
            UpstreamError::LocalResources { .. } => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            UpstreamError::ClientBodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Whether this is the backend's doing, and so a passive health failure.
    pub fn counts_against_backend(&self) -> bool {
        match self {
            UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Connect { .. }
            | UpstreamError::ResponseTimeout { .. }
            | UpstreamError::Http { .. }
            | UpstreamError::Io { .. }
            | UpstreamError::UploadStalled { .. } => true,
            // A head beyond what wsgate reads may still be valid HTTP.
            UpstreamError::BadResponse { reason, .. } => {
                !matches!(reason, HeadError::TooLarge(_) | HeadError::TooManyHeaders)
            }
            // A valid answer, only too big for wsgate to relay.
            UpstreamError::RelayTooLarge { .. }
            | UpstreamError::LocalResources { .. }
            | UpstreamError::ClientBody { .. }
            | UpstreamError::ClientBodyStalled { .. } => false,
        }
    }
}

/// Why a backend's answer could not be read. Pure: from the bytes alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("invalid response head: {0}")]
    Invalid(&'static str),
    #[error("response head over {0} bytes")]
    TooLarge(usize),
    #[error("more than {} header lines", MAX_BACKEND_HEADERS)]
    TooManyHeaders,
    #[error("invalid chunked body")]
    Chunked,
}

/// At most this many header lines in a backend's response head (as
/// hyper's client allowed); `upgrade` reads heads with this.
pub const MAX_BACKEND_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    /// From the end of the request to the response head.
    pub response: Duration,
    /// The longest the request body may make no progress.
    pub body: Duration,
}

/// Dead peers behind a silent network (a phone that left, a backend host
/// that lost power) are found by TCP keepalive within about two minutes
/// instead of at the idle timeout.
pub fn keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15))
        .with_retries(4)
}

/// Sends `req` to `address` and returns the response head (body streaming).
/// For an upgrade, call `hyper::upgrade::on` on the returned 101.
/// `proxy_header` (a PROXY protocol header) goes first when given.
pub async fn send<B>(
    address: &str,
    req: Request<B>,
    timeouts: UpstreamTimeouts,
    proxy_header: Option<Vec<u8>>,
) -> Result<Response<Incoming>, UpstreamError>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut tcp = connect(address, timeouts.connect).await?;
    if let Some(header) = proxy_header {
        use tokio::io::AsyncWriteExt;
        tcp.write_all(&header)
            .await
            .map_err(|source| UpstreamError::Connect {
                address: address.to_string(),
                source,
            })?;
    }
    let http_err = |source| UpstreamError::Http {
        address: address.to_string(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(http_err)?;
    tokio::spawn(async move {
        // Ends when the response is complete or the connection upgrades;
        // errors surface through `send_request` below.
        let _ = conn.with_upgrades().await;
    });
    let (parts, body) = req.into_parts();
    let upload = Arc::new(Upload::default());
    if body.is_end_stream() {
        upload.end();
    }
    let body = TrackedBody {
        inner: body,
        upload: upload.clone(),
    };
    let response = sender.send_request(Request::from_parts(parts, body));
    tokio::pin!(response);
    let answered = |result: Result<Response<Incoming>, hyper::Error>| {
        result.map_err(|source| {
            if upload.client_failed.load(Relaxed) {
                UpstreamError::ClientBody { source }
            } else {
                http_err(source)
            }
        })
    };

    // While the body is being sent, only progress is watched: a slow upload
    // is fine, a stalled one is cut and blamed on whoever stopped.
    let mut seen = upload.frames.load(Relaxed);
    while !upload.ended.load(Relaxed) {
        tokio::select! {
            result = &mut response => return answered(result),
            () = upload.ended_signal.notified() => {}
            () = tokio::time::sleep(timeouts.body) => {
                let now = upload.frames.load(Relaxed);
                if now == seen {
                    return Err(if upload.waiting_on_client.load(Relaxed) {
                        UpstreamError::ClientBodyStalled { timeout: timeouts.body }
                    } else {
                        UpstreamError::UploadStalled {
                            address: address.to_string(),
                            timeout: timeouts.body,
                        }
                    });
                }
                seen = now;
            }
        }
    }
    match tokio::time::timeout(timeouts.response, &mut response).await {
        Err(_) => Err(UpstreamError::ResponseTimeout {
            address: address.to_string(),
            timeout: timeouts.response,
        }),
        Ok(result) => answered(result),
    }
}

pub(super) async fn connect(address: &str, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Err(_) => {
            return Err(UpstreamError::ConnectTimeout {
                address: address.to_string(),
                timeout,
            })
        }
        Ok(Err(source)) if is_local_resource_error(&source) => {
            return Err(UpstreamError::LocalResources {
                address: address.to_string(),
                source,
            })
        }
        Ok(Err(source)) => {
            return Err(UpstreamError::Connect {
                address: address.to_string(),
                source,
            })
        }
        Ok(Ok(tcp)) => tcp,
    };
    // WebSocket traffic is many small writes; Nagle would add latency.
    let _ = tcp.set_nodelay(true);
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive());
    Ok(tcp)
}

/// How far the request body has got, shared between the connection task
/// that sends it and the request that watches it.
#[derive(Default)]
struct Upload {
    /// Frames read from the client so far.
    frames: AtomicU64,
    /// The last poll of the client's body found nothing to send yet.
    waiting_on_client: AtomicBool,
    ended: AtomicBool,
    /// The client's body returned an error (it aborted, or broke framing).
    client_failed: AtomicBool,
    ended_signal: Notify,
}

impl Upload {
    fn end(&self) {
        self.ended.store(true, Relaxed);
        self.ended_signal.notify_one();
    }
}

/// The client's request body on its way to the backend, recording progress
/// into an [`Upload`].
struct TrackedBody<B> {
    inner: B,
    upload: Arc<Upload>,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let upload = &self.upload;
        upload.waiting_on_client.store(polled.is_pending(), Relaxed);
        match &polled {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(_))) => {
                upload.frames.fetch_add(1, Relaxed);
                if self.inner.is_end_stream() {
                    self.upload.end();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                upload.client_failed.store(true, Relaxed);
                upload.end();
            }
            Poll::Ready(None) => upload.end(),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
