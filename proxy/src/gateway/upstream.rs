//! Talking to a backend: connect with a timeout, send one request over a
//! fresh HTTP/1.1 connection, wait for the response head with a timeout.
//!
//! Failures are classified so the client gets the right status: refused or
//! broken connections are 502, timeouts 504. Nothing here can hang: both the
//! connect and the response head are bounded.
//!
//! One connection per request: a WebSocket needs its own connection anyway,
//! and plain HTTP through wsgate (the page, health, long-poll fallbacks) is
//! light. Pooling keep-alive connections for plain HTTP is a possible later
//! optimisation.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
    #[error("backend {address} sent no response head within {timeout:?}")]
    ResponseTimeout { address: String, timeout: Duration },
    /// The backend closed the connection or sent an invalid response.
    #[error("backend {address} failed: {source}")]
    Http {
        address: String,
        source: hyper::Error,
    },
}

impl UpstreamError {
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::ConnectTimeout { .. } | UpstreamError::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            UpstreamError::Connect { .. } | UpstreamError::Http { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    pub response: Duration,
}

/// Sends `req` to `address` and returns the response head (body streaming).
/// For an upgrade, call `hyper::upgrade::on` on the returned 101.
pub async fn send<B>(
    address: &str,
    req: Request<B>,
    timeouts: UpstreamTimeouts,
) -> Result<Response<Incoming>, UpstreamError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = match tokio::time::timeout(timeouts.connect, TcpStream::connect(address)).await {
        Err(_) => {
            return Err(UpstreamError::ConnectTimeout {
                address: address.to_string(),
                timeout: timeouts.connect,
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
    match tokio::time::timeout(timeouts.response, sender.send_request(req)).await {
        Err(_) => Err(UpstreamError::ResponseTimeout {
            address: address.to_string(),
            timeout: timeouts.response,
        }),
        Ok(result) => result.map_err(http_err),
    }
}
