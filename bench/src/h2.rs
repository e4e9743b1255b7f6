//! WebSockets over HTTP/2 streams (RFC 8441) for the `h2` mode: one TLS
//! connection offering only `h2` in ALPN, driven by the `h2` crate, and an
//! extended CONNECT (`:protocol websocket`) per WebSocket, whose stream's
//! DATA frames carry the WebSocket bytes. Each stream becomes an ordinary
//! [`Ws`], so the modes' echo and close helpers work on it unchanged.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::client::{step, ConnectError, Connected, Phase, Target, Timings};

/// One HTTP/2 connection; its frames are driven by a task of its own,
/// which ends when the connection does (or this is dropped).
pub struct H2Conn {
    send: SendRequest<Bytes>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn h2_err(what: &str) -> impl Fn(h2::Error) -> ConnectError + '_ {
    move |e| ConnectError::H2(format!("{what}: {e}"))
}

impl H2Conn {
    /// TCP, TLS with ALPN `h2` only, the HTTP/2 preface, and the server's
    /// SETTINGS allowing extended CONNECT.
    pub async fn open(target: &Target) -> Result<(H2Conn, Timings), ConnectError> {
        let (Some(connector), Some(name)) = (&target.h2_tls, target.server_name()) else {
            return Err(ConnectError::H2("the h2 mode needs a wss:// --url".into()));
        };
        let start = Instant::now();
        let tcp = target.tcp().await?;
        let tcp_time = start.elapsed();
        let t = Instant::now();
        let tls = step(
            target.timeout,
            Phase::Tls,
            connector.connect(name.clone(), tcp),
        )
        .await?
        .map_err(ConnectError::Tls)?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ConnectError::H2(
                "the server did not choose h2 in ALPN".into(),
            ));
        }
        let tls_time = t.elapsed();
        let t = Instant::now();
        let (send, conn) = step(target.timeout, Phase::Upgrade, h2::client::handshake(tls))
            .await?
            .map_err(h2_err("handshake"))?;
        let driver = tokio::spawn(async move {
            // Its end is seen by the streams, as errors.
            let _ = conn.await;
        });
        let mut conn = H2Conn { send, driver };
        // The server's SETTINGS arrive after the handshake; its flag for
        // extended CONNECT is seen once `ready` has polled them in.
        let deadline = tokio::time::Instant::now() + target.timeout;
        loop {
            conn.send = step(target.timeout, Phase::Upgrade, conn.send.clone().ready())
                .await?
                .map_err(h2_err("ready"))?;
            if conn.send.is_extended_connect_protocol_enabled() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ConnectError::H2(
                    "the server never enabled extended CONNECT (RFC 8441)".into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let timings = Timings {
            tcp: tcp_time,
            tls: Some(tls_time),
            upgrade: t.elapsed(),
            hello: None,
        };
        Ok((conn, timings))
    }

    /// Opens a WebSocket for user number `user` on a new stream and waits
    /// for the hello.
    pub async fn websocket(&self, target: &Target, user: u64) -> Result<Connected, ConnectError> {
        // `:scheme` is https (RFC 8441 section 5); the URL says wss.
        let url = target.url_for(user).replacen("wss://", "https://", 1);
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .version(http::Version::HTTP_2)
            .uri(url)
            .extension(h2::ext::Protocol::from_static("websocket"))
            .header("sec-websocket-version", "13")
            .body(())
            .map_err(|e| ConnectError::H2(format!("request: {e}")))?;
        let t = Instant::now();
        let mut send = step(target.timeout, Phase::Upgrade, self.send.clone().ready())
            .await?
            .map_err(h2_err("ready"))?;
        let (response, stream) = send.send_request(req, false).map_err(h2_err("CONNECT"))?;
        let response = step(target.timeout, Phase::Upgrade, response)
            .await?
            .map_err(h2_err("CONNECT"))?;
        let (parts, recv) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(ConnectError::Status(parts.status.as_u16()));
        }
        let upgrade = t.elapsed();
        let io: Box<dyn crate::client::Io> = Box::new(H2Io::new(stream, recv));
        let mut ws =
            WebSocketStream::from_raw_socket(io, Role::Client, Some(target.ws_config)).await;
        let (hello, hello_time) = target.hello(&mut ws).await?;
        Ok(Connected {
            ws,
            headers: parts.headers,
            hello,
            timings: Timings {
                tcp: Default::default(),
                tls: None,
                upgrade,
                hello: hello_time,
            },
        })
    }
}

/// One HTTP/2 stream as a byte stream: DATA frames in, DATA frames out.
/// Public for the end-to-end tests' HTTP/2 client, which uses it too.
pub struct H2Io {
    send: SendStream<Bytes>,
    recv: RecvStream,
    buf: Bytes,
    ended: bool,
}

impl H2Io {
    /// The two halves of a stream whose request was answered `200`.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Io {
            send,
            recv,
            buf: Bytes::new(),
            ended: false,
        }
    }

    /// Resets the stream (RST_STREAM CANCEL), as a browser closing a tab does.
    pub fn reset(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Some(Ok(data)) => {
                    // Read at once, so the window is returned at once.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.buf = data;
                }
            }
        }
        let n = self.buf.len().min(out.remaining());
        out.put_slice(&self.buf.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            let n = self.send.capacity().min(buf.len());
            if n > 0 {
                let data = Bytes::copy_from_slice(&buf[..n]);
                self.send.send_data(data, false).map_err(io::Error::other)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(self.send.poll_capacity(cx)) {
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Some(Ok(_)) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            self.ended = true;
            // The stream may already be reset by the peer; nothing to end.
            let _ = self.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}
