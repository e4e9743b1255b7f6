//! One client connection served as HTTP/2: negotiated by ALPN on TLS, or
//! by the client's preface on a plain listener with `h2c: true`. Every
//! stream is a request for the gateway, as an HTTP/1.1 request is; an
//! extended CONNECT (RFC 8441) is a WebSocket, whose stream the gateway's
//! upgrade hands to the tunnel (`splice`).
//!
//! Unlike HTTP/1.1, the connection outlives its upgrades: the WebSocket
//! streams are carried by this connection's task, so it runs until the
//! last stream ends. Closing (the listener removed, the process shutting
//! down) sends GOAWAY at once: no new streams, requests in flight are
//! answered, and each WebSocket stream is closed by its own tunnel with a
//! Close frame (1001) as the control plane paces them. A connection with no
//! stream open for `timeouts.handshake` is closed the same way, as an idle
//! HTTP/1.1 keep-alive connection is.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::Http2Limits;
use crate::gateway::{ClientInfo, Gateway};

/// What an HTTP/2 client sends first (RFC 9113 3.4). No HTTP/1.1 request
/// starts with `PRI`, so its first three bytes tell the two apart.
const PREFACE_START: &[u8] = b"PRI";

/// One client connection's HTTP/2 settings, read from the snapshot it was
/// accepted under.
pub(super) struct Http2 {
    pub gateway: Arc<Gateway>,
    /// A connection without streams for this long is closed.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub limits: Http2Limits,
}

impl Http2 {
    pub(super) async fn serve<I>(
        self,
        io: I,
        client: Arc<ClientInfo>,
        mut closing: watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let gateway = self.gateway.clone();
        let info = client.clone();
        let streams = Arc::new(AtomicU64::new(0));
        let counted = streams.clone();
        let service = service_fn(move |req| {
            counted.fetch_add(1, Relaxed);
            let (gateway, client) = (gateway.clone(), client.clone());
            async move {
                let (response, upgrade) = gateway.handle(&client, req).await;
                if let Some(upgrade) = upgrade {
                    super::splice::spawn(upgrade);
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        // The connection's own references; each stream adds its own.
        let base = Arc::strong_count(&info);
        let l = self.limits;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .enable_connect_protocol()
            .max_concurrent_streams(l.max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .initial_stream_window_size(l.stream_window)
            .initial_connection_window_size(l.connection_window)
            .max_pending_accept_reset_streams(l.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(l.max_local_error_reset_streams);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let why = tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
                }
                return;
            }
            () = idle(&info, base, &streams, self.idle_timeout) => "idle",
            () = async { drop(closing.wait_for(|closing| *closing).await) } => "listener closing",
        };
        tracing::debug!(why, "HTTP/2 connection closing: GOAWAY");
        conn.as_mut().graceful_shutdown();
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP/2 connection ended with an error while closing");
        }
    }
}

/// Resolves once the connection has had no stream open, and opened none,
/// for `timeout` (checked once per `timeout`, so after one to two of them).
///
/// A stream holds the connection's `ClientInfo` while it runs: its request,
/// its response body, its tunnel. `base` references are the connection's
/// own, so a count of `base` means no stream is open.
async fn idle(info: &Arc<ClientInfo>, base: usize, streams: &AtomicU64, timeout: Duration) {
    let mut last = None;
    loop {
        tokio::time::sleep(timeout).await;
        let now = (Arc::strong_count(info) <= base).then(|| streams.load(Relaxed));
        if now.is_some() && now == last {
            return;
        }
        last = now;
    }
}

/// Whether a client on a plain listener speaks HTTP/2 with prior knowledge:
/// its first bytes are the preface. Only peeks, so an HTTP/1.1 client's
/// bytes stay in the socket for hyper, and the socket stays the bare
/// `TcpStream` the splice takes back. A client that sends nothing within
/// `timeout` is left to HTTP/1.1's header timer.
pub(super) async fn sends_preface(tcp: &TcpStream, timeout: Duration) -> bool {
    let mut buf = [0u8; PREFACE_START.len()];
    let peek = async {
        loop {
            let n = tcp.peek(&mut buf).await.unwrap_or(0);
            if n == 0 || !buf[..n].starts_with(&PREFACE_START[..n]) {
                return false;
            }
            if n == PREFACE_START.len() {
                return true;
            }
            // The first segment held fewer than three bytes. A peek finds
            // the same bytes ready again at once, so wait a little rather
            // than spin until the rest arrives.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(timeout, peek).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn first_bytes(sent: &'static [&'static [u8]]) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for part in sent {
                c.write_all(part).await.unwrap();
                c.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c
        });
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .unwrap()
            .unwrap();
        let h2 = sends_preface(&tcp, Duration::from_secs(5)).await;
        let _client = client.await.unwrap();
        // Nothing was consumed: the request is still there for hyper.
        let mut buf = [0u8; 3];
        assert_eq!(tcp.peek(&mut buf).await.unwrap(), 3);
        h2
    }

    #[tokio::test]
    async fn the_preface_is_told_from_an_http11_request_without_reading_it() {
        assert!(first_bytes(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).await);
        assert!(first_bytes(&[b"P", b"RI * HTTP/2.0\r\n"]).await);
        assert!(!first_bytes(&[b"GET / HTTP/1.1\r\n"]).await);
        assert!(!first_bytes(&[b"P", b"OST / HTTP/1.1\r\n"]).await);
    }
}
