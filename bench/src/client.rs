//! Opening client WebSocket connections the way every mode needs them:
//! TCP from a chosen source address, optional TLS (rustls, ring), the HTTP
//! Upgrade, and the backend's first message ("hello").
//!
//! Each step has its own timeout and its own error kind, so a summary can
//! say "412 timed out in TLS" rather than "412 failed".

use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::http::{HeaderMap, Uri};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::cli::ConnArgs;

/// Placeholder in `--url` replaced by each connection's user name.
pub const USER_PLACEHOLDER: &str = "{user}";

/// CA bundles tried when `--ca` is not given (Debian/Ubuntu, Fedora/RHEL, BSD/macOS).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A byte stream a WebSocket can run over: plain TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A client WebSocket over plain TCP or TLS.
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// The steps of a connection's life, for timings and timeout errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Tcp,
    Tls,
    Upgrade,
    Hello,
    Echo,
    Close,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Tcp => "tcp",
            Phase::Tls => "tls",
            Phase::Upgrade => "upgrade",
            Phase::Hello => "hello",
            Phase::Echo => "echo",
            Phase::Close => "close",
        })
    }
}

/// The target could not be set up; nothing was sent yet.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--url `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("resolving {host}:{port}: {source}")]
    Resolve {
        host: String,
        port: u16,
        source: io::Error,
    },
    #[error("{host}:{port} resolved to no {family} address (check --source-ips and --connect-to)")]
    NoAddress {
        host: String,
        port: u16,
        family: &'static str,
    },
    #[error("reading CA file {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("no CA bundle found at {SYSTEM_CA_BUNDLES:?}: pass --ca FILE (or --insecure for a dev cert)")]
    NoCa,
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// One connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("creating a socket: {0}")]
    Socket(io::Error),
    #[error("binding source address {addr}: {source} (if ports ran out, add --source-ips)")]
    Bind { addr: IpAddr, source: io::Error },
    #[error("TCP connect to {addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    #[error("TLS handshake: {0} (self-signed certificate? pass --ca FILE or --insecure)")]
    Tls(io::Error),
    #[error("the server answered HTTP {0} instead of 101 Switching Protocols")]
    Status(u16),
    #[error("WebSocket handshake: {0}")]
    Upgrade(WsError),
    #[error("{phase} step timed out")]
    Timeout { phase: Phase },
    #[error("waiting for the server's first message: {0} (use --no-hello if it sends none)")]
    Hello(String),
    #[error("echo: {0}")]
    Echo(String),
    #[error("closing: {0}")]
    Close(WsError),
    #[error("HTTP/2: {0}")]
    H2(String),
}

impl ConnectError {
    /// Short stable name for error counts in the summary.
    pub fn kind(&self) -> String {
        match self {
            ConnectError::Socket(_) => "socket".into(),
            ConnectError::Bind { .. } => "bind".into(),
            ConnectError::Tcp { .. } => "tcp".into(),
            ConnectError::Tls(_) => "tls".into(),
            ConnectError::Status(code) => format!("http_{code}"),
            ConnectError::Upgrade(_) => "upgrade".into(),
            ConnectError::Timeout { phase } => format!("timeout_{phase}"),
            ConnectError::Hello(_) => "hello".into(),
            ConnectError::Echo(_) => "echo".into(),
            ConnectError::Close(_) => "close".into(),
            ConnectError::H2(_) => "h2".into(),
        }
    }
}

/// How long each step of one connection took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub tcp: Duration,
    pub tls: Option<Duration>,
    pub upgrade: Duration,
    pub hello: Option<Duration>,
}

/// An open WebSocket, with what the handshake told us.
pub struct Connected {
    pub ws: Ws,
    /// Headers of the 101 response.
    pub headers: HeaderMap,
    /// The server's first message, when `--no-hello` was not given.
    pub hello: Option<String>,
    pub timings: Timings,
}

/// Where and how to connect; shared by all connections of a run.
pub struct Target {
    url: String,
    user_prefix: String,
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The same TLS settings offering only `h2` in ALPN (the `h2` mode).
    pub(crate) h2_tls: Option<TlsConnector>,
    sources: Vec<IpAddr>,
    next_source: AtomicU64,
    hello: bool,
    /// Limit for each step (connect, TLS, upgrade, hello, echo, close).
    pub timeout: Duration,
    pub(crate) ws_config: WebSocketConfig,
}

impl Target {
    /// Parses the URL, resolves the address and loads TLS trust.
    pub async fn new(args: &ConnArgs) -> Result<Self, SetupError> {
        let parsed = parse_url(&args.url)?;
        let sources = args.source_ips.clone().map(|s| s.0).unwrap_or_default();
        let addr = match args.connect_to {
            Some(addr) => addr,
            None => resolve(&parsed.host, parsed.port, sources.first()).await?,
        };
        let (tls, h2_tls) = match parsed.tls {
            false => (None, None),
            true => {
                let config = tls_config(
                    args.ca.as_deref(),
                    args.danger_accept_any_cert,
                    args.tls_resume,
                )?;
                let mut h2 = config.clone();
                h2.alpn_protocols = vec![b"h2".to_vec()];
                let name =
                    ServerName::try_from(parsed.host.clone()).map_err(|e| SetupError::BadUrl {
                        url: args.url.clone(),
                        reason: format!("host is not a valid TLS server name: {e}"),
                    })?;
                (
                    Some((TlsConnector::from(Arc::new(config)), name)),
                    Some(TlsConnector::from(Arc::new(h2))),
                )
            }
        };
        Ok(Self {
            url: args.url.clone(),
            user_prefix: args.user_prefix.clone(),
            addr,
            tls,
            h2_tls,
            sources,
            next_source: AtomicU64::new(0),
            hello: !args.no_hello,
            timeout: args.timeout,
            // Small buffers: idle mode holds thousands of connections, and
            // every mode sends small messages. 4 KiB is read per syscall.
            ws_config: WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0),
        })
    }

    /// The URL template as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL for user number `user`.
    pub fn url_for(&self, user: u64) -> String {
        url_for(&self.url, &self.user_prefix, user)
    }

    /// Opens a WebSocket for user number `user` and waits for the hello.
    pub async fn connect(&self, user: u64) -> Result<Connected, ConnectError> {
        let start = Instant::now();
        let tcp = self.tcp().await?;
        let tcp_time = start.elapsed();
        let (io, tls_time): (Box<dyn Io>, _) = match &self.tls {
            None => (Box::new(tcp), None),
            Some((connector, name)) => {
                let t = Instant::now();
                let tls = step(
                    self.timeout,
                    Phase::Tls,
                    connector.connect(name.clone(), tcp),
                )
                .await?
                .map_err(ConnectError::Tls)?;
                (Box::new(tls), Some(t.elapsed()))
            }
        };
        let t = Instant::now();
        let url = self.url_for(user);
        let (mut ws, response) = step(
            self.timeout,
            Phase::Upgrade,
            tokio_tungstenite::client_async_with_config(url.as_str(), io, Some(self.ws_config)),
        )
        .await?
        .map_err(|e| match e {
            WsError::Http(response) => ConnectError::Status(response.status().as_u16()),
            other => ConnectError::Upgrade(other),
        })?;
        let upgrade = t.elapsed();
        let (hello, hello_time) = self.hello(&mut ws).await?;
        Ok(Connected {
            ws,
            headers: response.into_parts().0.headers,
            hello,
            timings: Timings {
                tcp: tcp_time,
                tls: tls_time,
                upgrade,
                hello: hello_time,
            },
        })
    }

    /// The server's first message and how long it took, unless
    /// `--no-hello` was given.
    pub(crate) async fn hello(
        &self,
        ws: &mut Ws,
    ) -> Result<(Option<String>, Option<Duration>), ConnectError> {
        if !self.hello {
            return Ok((None, None));
        }
        let t = Instant::now();
        let text = step(self.timeout, Phase::Hello, first_message(ws))
            .await?
            .map_err(ConnectError::Hello)?;
        Ok((Some(text), Some(t.elapsed())))
    }

    /// The TLS server name, for `wss://` targets.
    pub(crate) fn server_name(&self) -> Option<&ServerName<'static>> {
        self.tls.as_ref().map(|(_, name)| name)
    }

    pub(crate) async fn tcp(&self) -> Result<TcpStream, ConnectError> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(ConnectError::Socket)?;
        if !self.sources.is_empty() {
            let i = self.next_source.fetch_add(1, Ordering::Relaxed) % self.sources.len() as u64;
            let ip = self.sources[i as usize];
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|source| ConnectError::Bind { addr: ip, source })?;
        }
        let addr = self.addr;
        let stream = step(self.timeout, Phase::Tcp, socket.connect(addr))
            .await?
            .map_err(|source| ConnectError::Tcp { addr, source })?;
        // Small messages must not wait for Nagle.
        stream
            .set_nodelay(true)
            .map_err(|source| ConnectError::Tcp { addr, source })?;
        Ok(stream)
    }
}

/// Runs one step under the per-step timeout.
pub async fn step<T>(
    limit: Duration,
    phase: Phase,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, ConnectError> {
    timeout(limit, fut)
        .await
        .map_err(|_| ConnectError::Timeout { phase })
}

/// The first data message, skipping control frames.
async fn first_message(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Binary(bytes))) => return Ok(String::from_utf8_lossy(&bytes).into()),
            Some(Ok(Message::Close(frame))) => {
                return Err(format!(
                    "closed by the server with code {}",
                    frame.map_or(1005, |f| u16::from(f.code))
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the connection ended".into()),
        }
    }
}

/// Sends one message and waits for the next data message (its echo).
pub async fn echo_once(ws: &mut Ws, payload: Message, limit: Duration) -> Result<(), ConnectError> {
    step(limit, Phase::Echo, async {
        ws.send(payload).await.map_err(|e| e.to_string())?;
        first_message(ws).await.map(drop)
    })
    .await?
    .map_err(ConnectError::Echo)
}

/// Closes with 1000 and waits for the server's Close (or the end of the
/// stream), as a well-behaved client does.
pub async fn close(ws: &mut Ws, limit: Duration) -> Result<(), ConnectError> {
    step(limit, Phase::Close, async {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        match ws.close(Some(frame)).await {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
            Err(e) => return Err(ConnectError::Close(e)),
        }
        // Read until the server's Close arrives and the stream ends.
        while let Some(Ok(_)) = ws.next().await {}
        Ok(())
    })
    .await?
}

/// The pieces of `--url` we need.
#[derive(Debug, PartialEq, Eq)]
struct ParsedUrl {
    tls: bool,
    host: String,
    port: u16,
}

fn parse_url(template: &str) -> Result<ParsedUrl, SetupError> {
    let bad = |reason: &str| SetupError::BadUrl {
        url: template.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = url_for(template, "u", 0)
        .parse()
        .map_err(|e: tokio_tungstenite::tungstenite::http::uri::InvalidUri| bad(&e.to_string()))?;
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(bad("the scheme must be ws:// or wss://")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(ParsedUrl { tls, host, port })
}

fn url_for(template: &str, prefix: &str, user: u64) -> String {
    template.replace(USER_PLACEHOLDER, &format!("{prefix}{user}"))
}

async fn resolve(host: &str, port: u16, source: Option<&IpAddr>) -> Result<SocketAddr, SetupError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| SetupError::Resolve {
            host: host.to_string(),
            port,
            source,
        })?
        .collect();
    // With source addresses the destination must be of the same family.
    let wanted = |a: &&SocketAddr| source.is_none_or(|s| s.is_ipv4() == a.is_ipv4());
    addrs
        .iter()
        .find(wanted)
        .copied()
        .ok_or(SetupError::NoAddress {
            host: host.to_string(),
            port,
            family: match source {
                Some(IpAddr::V6(_)) => "IPv6",
                Some(IpAddr::V4(_)) => "IPv4",
                None => "",
            },
        })
}

fn tls_config(
    ca: Option<&Path>,
    danger_accept_any_cert: bool,
    resume: bool,
) -> Result<ClientConfig, SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if danger_accept_any_cert {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(DangerAcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(load_roots(ca)?)
            .with_no_client_auth()
    };
    // WebSockets over HTTP/1.1 Upgrade: don't let the server pick h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        // Every connection pays for a full handshake, as new clients do.
        config.resumption = Resumption::disabled();
    }
    Ok(config)
}

fn load_roots(ca: Option<&Path>) -> Result<RootCertStore, SetupError> {
    let path = match ca {
        Some(path) => path.to_path_buf(),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or(SetupError::NoCa)?,
    };
    let err = |reason: String| SetupError::Ca {
        path: path.clone(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&path).map_err(|e| err(e.to_string()))? {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        roots.add(cert).map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(roots)
}

/// `--insecure`: accepts any server certificate. Signatures are still
/// checked, so the handshake costs what a real one does; only the chain and
/// the name are not. For self-signed development certificates only.
#[derive(Debug)]
struct DangerAcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for DangerAcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            url_for("ws://h/ws?user={user}", "u", 42),
            "ws://h/ws?user=u42"
        );
        assert_eq!(url_for("ws://h/echo", "u", 42), "ws://h/echo");
        let p = parse_url("wss://localhost/ws?user={user}").unwrap();
        assert_eq!((p.tls, p.host.as_str(), p.port), (true, "localhost", 443));
        let p = parse_url("ws://[::1]:8080/echo").unwrap();
        assert_eq!((p.tls, p.host.as_str(), p.port), (false, "::1", 8080));
        assert!(parse_url("http://localhost/").is_err());
        assert!(parse_url("ws:///nohost").is_err());
    }

    #[test]
    fn error_kinds() {
        assert_eq!(ConnectError::Status(503).kind(), "http_503");
        assert_eq!(
            ConnectError::Timeout { phase: Phase::Tls }.kind(),
            "timeout_tls"
        );
    }
}
