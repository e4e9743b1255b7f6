//! An HTTP/2 client for the end-to-end tests: one TLS connection to wsgate
//! that offers only `h2` in ALPN, driven by the `h2` crate, with plain
//! requests and WebSockets over its streams (RFC 8441 extended CONNECT) as
//! tokio-tungstenite streams. Every network await has a timeout.

use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, Method, Request, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::{client_tls, Gate, STEP};

/// One HTTP/2 stream as a byte stream; the load generator's, shared.
pub use wsgate_bench::h2::H2Io;

/// A WebSocket on one HTTP/2 stream.
pub type H2Ws = WebSocketStream<H2Io>;

/// One HTTP/2 connection to wsgate; its frames are driven by a task of its
/// own, which ends when the connection does.
pub struct H2Conn {
    send: SendRequest<Bytes>,
    pub port: u16,
    driver: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// An extended CONNECT's answer: the head and the stream, or the refusal.
type Opening = std::result::Result<(http::response::Parts, H2Io), (StatusCode, HeaderMap, String)>;

/// What wsgate answered an extended CONNECT.
pub enum Opened {
    WebSocket(http::Response<()>, Box<H2Ws>),
    Refused(StatusCode, HeaderMap, String),
}

impl H2Conn {
    /// Connects over TLS with ALPN `h2` only, and waits for wsgate's
    /// SETTINGS to allow extended CONNECT.
    pub async fn open(gate: &Gate) -> Result<H2Conn> {
        let mut tls = (*client_tls(&gate.cert())?).clone();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::time::timeout(STEP, TcpStream::connect(gate.addr())).await??;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let stream = tokio::time::timeout(
            STEP,
            tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp),
        )
        .await??;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!("wsgate did not choose h2 in ALPN");
        }
        H2Conn::handshake(stream, gate.addr().port()).await
    }

    /// HTTP/2 with prior knowledge on a plain listener (`h2c: true`).
    pub async fn open_plain(gate: &Gate) -> Result<H2Conn> {
        let tcp = tokio::time::timeout(STEP, TcpStream::connect(gate.addr())).await??;
        H2Conn::handshake(tcp, gate.addr().port()).await
    }

    async fn handshake<T>(io: T, port: u16) -> Result<H2Conn>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Receive windows as a browser sets them (Chromium: 6 MiB per
        // stream, 15 MiB per connection). With h2's 64 KiB defaults, a
        // hundred streams echoing 1 MiB at once trickle through one 64 KiB
        // window, and a debug build on a busy machine can take longer than
        // a step for one stream's share.
        let handshake = h2::client::Builder::new()
            .initial_window_size(6 << 20)
            .initial_connection_window_size(15 << 20)
            .handshake(io);
        let (send, conn) = tokio::time::timeout(STEP, handshake).await??;
        let driver = tokio::spawn(conn);
        let mut send = tokio::time::timeout(STEP, send.ready()).await??;
        // The server's SETTINGS arrive after the handshake returns; poll
        // for the flag they set, bounded.
        let deadline = tokio::time::Instant::now() + STEP;
        while !send.is_extended_connect_protocol_enabled() {
            if tokio::time::Instant::now() > deadline {
                bail!("wsgate never enabled extended CONNECT");
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            send = tokio::time::timeout(STEP, send.ready()).await??;
        }
        Ok(H2Conn { send, port, driver })
    }

    /// Whether the connection is still up (its driver has not ended).
    pub fn is_open(&self) -> bool {
        !self.driver.is_finished()
    }

    fn uri(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// An extended CONNECT for `path`: `:protocol websocket`,
    /// `Sec-WebSocket-Version: 13` and `headers` (replacing any of the same name).
    fn websocket_request(&self, path: &str, headers: &[(&str, &str)]) -> Result<Request<()>> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri(self.uri(path))
            .extension(h2::ext::Protocol::from_static("websocket"))
            .header("sec-websocket-version", "13")
            .body(())?;
        for (name, value) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes())?,
                http::HeaderValue::from_str(value)?,
            );
        }
        Ok(req)
    }

    /// Opens a WebSocket on a new stream (see `websocket_request`).
    pub async fn websocket(&self, path: &str, headers: &[(&str, &str)]) -> Result<Opened> {
        self.connect(self.websocket_request(path, headers)?).await
    }

    /// Opens a WebSocket on a new stream and returns the stream's bytes,
    /// for reading frames raw (tungstenite refuses some close codes, 1014).
    pub async fn raw_websocket(&self, path: &str) -> Result<H2Io> {
        match self.open_stream(self.websocket_request(path, &[])?).await? {
            Ok((_, io)) => Ok(io),
            Err((status, _, body)) => bail!("{path}: refused {status}: {body}"),
        }
    }

    /// Sends `req` (a CONNECT) on a new stream and waits for the answer.
    pub async fn connect(&self, req: Request<()>) -> Result<Opened> {
        let (parts, io) = match self.open_stream(req).await? {
            Ok(opened) => opened,
            Err((status, headers, body)) => return Ok(Opened::Refused(status, headers, body)),
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let ws = WebSocketStream::from_raw_socket(io, Role::Client, Some(config)).await;
        Ok(Opened::WebSocket(
            http::Response::from_parts(parts, ()),
            Box::new(ws),
        ))
    }

    /// Sends `req` (a CONNECT) on a new stream: the answer's head and the
    /// stream's bytes on `200`, else the refusal's status, headers and body.
    async fn open_stream(&self, req: Request<()>) -> Result<Opening> {
        let mut send = tokio::time::timeout(STEP, self.send.clone().ready()).await??;
        let (response, stream) = send.send_request(req, false)?;
        let response = tokio::time::timeout(STEP, response)
            .await
            .context("no answer to the CONNECT")??;
        let (parts, recv) = response.into_parts();
        if parts.status != StatusCode::OK {
            let body = read_body(recv).await.unwrap_or_default();
            return Ok(Err((
                parts.status,
                parts.headers,
                String::from_utf8_lossy(&body).into_owned(),
            )));
        }
        let io = H2Io::new(stream, recv);
        Ok(Ok((parts, io)))
    }

    /// How the connection ended, waiting for it up to STEP: `Err` with the
    /// GOAWAY's reason when the server sent one with an error code.
    pub async fn ended(&mut self) -> Result<std::result::Result<(), h2::Error>> {
        Ok(tokio::time::timeout(STEP, &mut self.driver).await??)
    }

    /// Sends `req` and returns its stream at once, without waiting for an
    /// answer (for resetting it).
    pub async fn raw_request(&self, req: Request<()>) -> Result<SendStream<Bytes>> {
        let mut send = tokio::time::timeout(STEP, self.send.clone().ready()).await??;
        let (_response, stream) = send.send_request(req, false)?;
        Ok(stream)
    }

    /// A GET on a new stream: status, headers and the whole body.
    pub async fn get(&self, path: &str) -> Result<(StatusCode, HeaderMap, Vec<u8>)> {
        let req = Request::builder()
            .method(Method::GET)
            .version(Version::HTTP_2)
            .uri(self.uri(path))
            .body(())?;
        let mut send = tokio::time::timeout(STEP, self.send.clone().ready()).await??;
        let (response, _) = send.send_request(req, true)?;
        let response = tokio::time::timeout(STEP, response).await??;
        let (parts, recv) = response.into_parts();
        Ok((parts.status, parts.headers, read_body(recv).await?))
    }
}

async fn read_body(mut recv: RecvStream) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = tokio::time::timeout(STEP, recv.data()).await? {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
