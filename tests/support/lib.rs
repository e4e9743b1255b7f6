//! Test harness: starts real `wsgate` and `chat-backend` processes on
//! loopback port 0, learns their addresses from the line each prints, and
//! builds real WebSocket clients (tokio-tungstenite over rustls) that trust
//! the dev certificate. Every process is killed when its handle drops, and
//! every network await in here has a timeout.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

pub mod dns;
pub mod h2client;
pub mod peers;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound for any single network step in tests.
pub const STEP: Duration = Duration::from_secs(20);

/// Path of a workspace binary; `scripts/test.sh` builds them first.
pub fn bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Path of the `wsgate` binary built with other code generation
/// (`-C target-cpu=native`, in its own target directory), which
/// `scripts/test.sh` builds for the replica-agreement test.
pub fn native_wsgate() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("native/debug/wsgate");
    assert!(
        path.exists(),
        "{} is missing: scripts/test.sh builds it with \
         RUSTFLAGS='-C target-cpu=native' cargo build -p wsgate --bin wsgate --target-dir {}",
        path.display(),
        target.join("native").display()
    );
    path
}

/// A fresh scratch directory for one test.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wsgate-test-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Receives a child's stderr, line by line.
type LineSink = Box<dyn FnMut(&str) + Send>;

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    /// Spawns `cmd` and waits (bounded) until stdout prints a line for which
    /// `ready` returns Some. Stderr goes to `stderr_line` line by line, or to
    /// the test's own stderr when that is None.
    fn spawn<T>(
        mut cmd: Command,
        mut ready: impl FnMut(&str) -> Option<T>,
        count: usize,
        stderr_line: Option<LineSink>,
    ) -> Result<(Proc, Vec<T>)> {
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        cmd.stderr(if stderr_line.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
        let mut child = cmd.spawn().context("spawn")?;
        if let (Some(mut sink), Some(stderr)) = (stderr_line, child.stderr.take()) {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink(&line);
                }
            });
        }
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut proc = Proc { child, lines: rx };
        let mut found = Vec::new();
        let deadline = std::time::Instant::now() + STEP;
        while found.len() < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match proc.lines.recv_timeout(left) {
                Ok(line) => found.extend(ready(&line)),
                Err(_) => {
                    let status = proc.child.try_wait().ok().flatten();
                    bail!("process did not become ready (exit status {status:?})");
                }
            }
        }
        Ok((proc, found))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (e.g. "TERM", "KILL") to this process only.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits (bounded) for the process to exit and returns its code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `chat-backend`.
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    pub proc: Proc,
}

impl Backend {
    pub fn start(id: &str) -> Result<Backend> {
        Backend::start_on(id, "127.0.0.1:0")
    }

    pub fn start_on(id: &str, listen: &str) -> Result<Backend> {
        let mut cmd = Command::new(bin("chat-backend"));
        cmd.args(["--listen", listen, "--id", id]);
        Backend::launch(id, cmd, None)
    }

    fn launch(id: &str, cmd: Command, stderr_line: Option<LineSink>) -> Result<Backend> {
        let (proc, addrs) = Proc::spawn(
            cmd,
            |line| {
                line.rsplit_once(" listening on ")
                    .and_then(|(_, a)| a.trim().parse().ok())
            },
            1,
            stderr_line,
        )?;
        Ok(Backend {
            id: id.to_string(),
            addr: addrs[0],
            proc,
        })
    }
}

/// One `chat-backend` per id.
pub fn start_backends(ids: &[&str]) -> Vec<Backend> {
    ids.iter().map(|id| Backend::start(id).unwrap()).collect()
}

/// Each backend as (id, address, weight 1), for [`tls_config`].
pub fn weight_one(backends: &[Backend]) -> Vec<(&str, SocketAddr, u32)> {
    backends
        .iter()
        .map(|b| (b.id.as_str(), b.addr, 1))
        .collect()
}

/// A running `wsgate` with its config in a scratch directory.
pub struct Gate {
    pub dir: PathBuf,
    /// Listener addresses in the order they were announced.
    pub addrs: Vec<SocketAddr>,
    /// The admin API, when the config has one.
    pub admin: Option<SocketAddr>,
    pub proc: Proc,
}

impl Gate {
    /// Starts wsgate from YAML text; `listeners` is how many to wait for.
    pub fn start(yaml: &str, listeners: usize) -> Result<Gate> {
        Gate::start_in(scratch("gate"), yaml, listeners)
    }

    pub fn start_in(dir: PathBuf, yaml: &str, listeners: usize) -> Result<Gate> {
        Gate::launch(dir, yaml, listeners, &[])
    }

    /// Starts wsgate with extra `run` arguments (e.g. `--upgrade`). Waits for
    /// `listeners` listener lines, plus the admin line if the YAML has `admin:`.
    pub fn launch(dir: PathBuf, yaml: &str, listeners: usize, extra: &[&str]) -> Result<Gate> {
        Gate::launch_under(&[], dir, yaml, listeners, extra)
    }

    /// Like [`Gate::launch`], with wsgate started through `wrapper` (e.g.
    /// `["prlimit", "--nofile=1024", "--"]`); an empty wrapper runs it directly.
    pub fn launch_under(
        wrapper: &[&str],
        dir: PathBuf,
        yaml: &str,
        listeners: usize,
        extra: &[&str],
    ) -> Result<Gate> {
        Gate::spawn(&bin("wsgate"), wrapper, extra, dir, yaml, listeners, None)
    }

    /// Like [`Gate::launch_under`], running `program` (e.g. a copy of the
    /// binary in an image-like layout) with its config at `dir/wsgate.yaml`.
    pub fn launch_program(
        program: &Path,
        wrapper: &[&str],
        dir: PathBuf,
        yaml: &str,
        listeners: usize,
    ) -> Result<Gate> {
        Gate::spawn(program, wrapper, &[], dir, yaml, listeners, None)
    }

    /// Like [`Gate::start_in`], running `program` instead of the workspace's
    /// `wsgate` (e.g. [`native_wsgate`]).
    pub fn start_binary(
        program: &Path,
        dir: PathBuf,
        yaml: &str,
        listeners: usize,
    ) -> Result<Gate> {
        Gate::spawn(program, &[], &[], dir, yaml, listeners, None)
    }

    /// Writes the config, runs `[wrapper...] wsgate run -c CONFIG extra...`
    /// with `RUST_LOG=warn`, and waits for the readiness lines: `listeners`
    /// listener lines, plus the admin line if the YAML has `admin:`.
    /// `sink` gets every stderr line, if given.
    fn spawn(
        program: &Path,
        wrapper: &[&str],
        extra: &[&str],
        dir: PathBuf,
        yaml: &str,
        listeners: usize,
        sink: Option<LineSink>,
    ) -> Result<Gate> {
        let config = dir.join("wsgate.yaml");
        std::fs::write(&config, yaml)?;
        let mut cmd = match wrapper.split_first() {
            Some((first, args)) => {
                let mut c = Command::new(first);
                c.args(args).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.arg("run")
            .arg("-c")
            .arg(&config)
            .args(extra)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1");
        let want = listeners + usize::from(yaml.contains("\nadmin:") || yaml.starts_with("admin:"));
        let (proc, found) = Proc::spawn(
            cmd,
            |line| {
                if let Some(rest) = line.strip_prefix("wsgate: admin API on http://") {
                    return rest.parse().ok().map(|a| (true, a));
                }
                let rest = line.strip_prefix("wsgate: listener ")?;
                let url = rest.split(" on ").nth(1)?;
                url.split("://").nth(1)?.parse().ok().map(|a| (false, a))
            },
            want,
            sink,
        )?;
        let admin = found
            .iter()
            .find(|(is_admin, _)| *is_admin)
            .map(|(_, a)| *a);
        let addrs = found
            .iter()
            .filter(|(is_admin, _)| !is_admin)
            .map(|(_, a)| *a)
            .collect();
        Ok(Gate {
            dir,
            addrs,
            admin,
            proc,
        })
    }

    /// A handle for running admin commands, which can move to other threads.
    pub fn cli_handle(&self) -> CliHandle {
        CliHandle {
            config: self.dir.join("wsgate.yaml"),
            token_file: self.dir.join("admin.token"),
            admin: self.admin,
        }
    }

    /// Runs a `wsgate` admin command (`status`, `drain`, ...) against this
    /// gate's admin API; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> Result<(i32, String, String)> {
        self.cli_handle().run(args)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("dev.crt")
    }
}

/// YAML for one TLS listener with a generated certificate, in front of the
/// given backends, sticky on `?user=`, plus any extra top-level YAML.
pub fn tls_config(backends: &[(&str, SocketAddr, u32)], extra: &str) -> String {
    let mut pool = String::new();
    for (id, addr, weight) in backends {
        pool.push_str(&format!(
            "      - {{ id: {id}, address: \"{addr}\", weight: {weight} }}\n"
        ));
    }
    format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n    tls:\n      certificates:\n        - {{ cert: dev.crt, key: dev.key, generate_if_missing: true }}\n\
routes:\n  - path_prefix: /\n    pool: chat\n    sticky_key: [\"query:user\", \"header:x-user-id\", \"cookie:session\"]\n\
pools:\n  chat:\n    backends:\n{pool}{extra}"
    )
}

/// Like [`tls_config`] but with a plain (ws://) listener.
pub fn plain_config(backends: &[(&str, SocketAddr, u32)], extra: &str) -> String {
    tls_config(backends, extra).replace(
        "    tls:\n      certificates:\n        - { cert: dev.crt, key: dev.key, generate_if_missing: true }\n",
        "",
    )
}

/// A rustls client config trusting exactly the given PEM certificate.
pub fn client_tls(cert: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(cert).with_context(|| format!("read {}", cert.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(&pem) {
        roots.add(c)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut body = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE") {
            inside = true;
            body.clear();
        } else if line.starts_with("-----END CERTIFICATE") {
            inside = false;
            if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body.trim()) {
                out.push(der.into());
            }
        } else if inside {
            body.push_str(line.trim());
        }
    }
    out
}

/// Opens `wss://localhost:PORT{path}` through wsgate.
pub async fn wss(gate: &Gate, path: &str) -> Result<Ws> {
    wss_at(gate.addr(), &gate.cert(), path).await
}

/// Opens `wss://localhost:{addr.port}{path}`, trusting `cert`.
pub async fn wss_at(addr: SocketAddr, cert: &Path, path: &str) -> Result<Ws> {
    let url = format!("wss://localhost:{}{path}", addr.port());
    let tls = client_tls(cert)?;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (ws, _resp) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::connect_async_tls_with_config(
            url,
            Some(config),
            false,
            Some(Connector::Rustls(tls)),
        ),
    )
    .await
    .context("connect timed out")??;
    Ok(ws)
}

/// Reads the backend's hello and returns its id.
pub async fn hello(ws: &mut Ws) -> Result<String> {
    let msg = next(ws).await?;
    let text = msg
        .into_text()
        .map_err(|e| anyhow!("hello not text: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(text.as_str())?;
    if v["type"] != "hello" {
        bail!("expected hello, got {text}");
    }
    v["backend"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no backend in {text}"))
}

/// Next message, with a timeout; a closed stream is an error.
pub async fn next(ws: &mut Ws) -> Result<Message> {
    match tokio::time::timeout(STEP, ws.next()).await {
        Err(_) => bail!("timed out waiting for a message"),
        Ok(None) => bail!("stream ended"),
        Ok(Some(m)) => Ok(m?),
    }
}

/// Connects `user` over wss and returns the backend that greeted it.
pub async fn backend_of(gate: &Gate, user: &str) -> Result<String> {
    let mut ws = wss(gate, &format!("/echo?user={user}")).await?;
    let id = hello(&mut ws).await?;
    let _ = tokio::time::timeout(STEP, ws.close(None)).await;
    Ok(id)
}

/// Opens a TLS connection to wsgate for hand-written requests.
pub async fn tls_stream(gate: &Gate) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tls = client_tls(&gate.cert())?;
    let tcp = tokio::time::timeout(STEP, TcpStream::connect(gate.addr())).await??;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let s = tokio::time::timeout(
        STEP,
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await??;
    Ok(s)
}

/// Sends raw request bytes and returns the whole response head plus
/// whatever body arrived before the server closed or 2 s of silence.
pub async fn raw_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> Result<String> {
    tokio::time::timeout(STEP, stream.write_all(request)).await??;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if response_complete(&out) {
                    break;
                }
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// True once a head and its Content-Length body (if any) are in.
fn response_complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return false;
    };
    let len = text[..head_end]
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    bytes.len() >= head_end + 4 + len
}

/// A backend that reads each request head and writes `answer`, then keeps
/// the connection until the peer closes: for answers no real server sends.
pub async fn canned_backend(answer: String) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    Ok(addr)
}

/// Status code of a raw HTTP response.
pub fn status_of(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

/// A plain HTTPS request through wsgate; returns (status, headers, body).
pub async fn https(
    gate: &Gate,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, String, Vec<u8>)> {
    let mut s = tls_stream(gate).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    tokio::time::timeout(STEP, s.write_all(&req)).await??;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(STEP, s.read_to_end(&mut out)).await;
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no response head in {:?}", String::from_utf8_lossy(&out)))?;
    let head = String::from_utf8_lossy(&out[..head_end]).into_owned();
    let status = status_of(&head).ok_or_else(|| anyhow!("bad status line: {head}"))?;
    Ok((status, head, out[head_end + 4..].to_vec()))
}

/// A keep-alive HTTPS/1.1 client connection to wsgate, for many small
/// requests without a TLS handshake each.
pub struct KeepAlive {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub async fn open(gate: &Gate) -> Result<KeepAlive> {
        Ok(KeepAlive {
            stream: tls_stream(gate).await?,
            buf: Vec::new(),
        })
    }

    /// GET `path`; returns status and body (responses must carry Content-Length).
    pub async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>)> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        tokio::time::timeout(STEP, self.stream.write_all(req.as_bytes())).await??;
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = status_of(&head).ok_or_else(|| anyhow!("bad head {head}"))?;
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .ok_or_else(|| anyhow!("no content-length in {head}"))?;
        while self.buf.len() < head_end + 4 + len {
            self.fill().await?;
        }
        let body = self.buf[head_end + 4..head_end + 4 + len].to_vec();
        self.buf.drain(..head_end + 4 + len);
        Ok((status, body))
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(STEP, self.stream.read(&mut chunk)).await??;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// A raw TLS stream that completed a WebSocket upgrade through wsgate and
/// consumed the backend's hello frame, for tests that must see exact bytes.
pub async fn raw_ws(gate: &Gate, path: &str) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut s = tls_stream(gate).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tokio::time::timeout(STEP, s.write_all(req.as_bytes())).await??;
    let head = read_head(&mut s).await?;
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!("upgrade refused: {}", String::from_utf8_lossy(&head));
    }
    let (opcode, payload) = read_frame(&mut s).await?;
    if opcode != 0x1 || !String::from_utf8_lossy(&payload).contains("hello") {
        bail!("expected the hello text frame, got opcode {opcode}");
    }
    Ok(s)
}

/// Serialises one WebSocket frame (RFC 6455 5.2) with the shortest length
/// encoding: `opcode` in the low four bits of the first byte (RSV bits
/// clear), FIN if `fin`, and with `mask` the masking key after the length
/// and the payload XORed with it (as a client must send). This is the one
/// frame encoder of the tests; [`read_frame`] is its reading side.
pub fn encode_frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(opcode <= 0x0f, "an opcode has four bits, got {opcode:#x}");
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65_536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads one unmasked frame (as a server sends): (opcode byte with FIN, payload).
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> Result<(u8, Vec<u8>)> {
    let mut hdr = [0u8; 2];
    tokio::time::timeout(STEP, s.read_exact(&mut hdr)).await??;
    if hdr[1] & 0x80 != 0 {
        bail!("a server frame must not be masked");
    }
    let len = match hdr[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len)?];
    tokio::time::timeout(STEP, s.read_exact(&mut payload)).await??;
    Ok((hdr[0] & 0x0f, payload))
}

/// Reads frames until a Close; returns its code.
pub async fn read_close_code<S: AsyncRead + Unpin>(s: &mut S) -> Result<Option<u16>> {
    loop {
        let (opcode, payload) = read_frame(s).await?;
        if opcode == 0x8 {
            let (code, _) =
                wsgate::tunnel::parse_close_payload(&payload).map_err(|e| anyhow!("{e:?}"))?;
            return Ok(code);
        }
    }
}

/// Counts lines on a backend's log (stderr) that contain all of `needles`.
pub struct LogCounter(pub Arc<std::sync::atomic::AtomicUsize>);

impl LogCounter {
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Backend {
    /// Like `start`, but counts the backend's log lines that contain every
    /// string in `needles` (used to prove the backend saw each Close).
    pub fn start_counting(
        id: &str,
        needles: &'static [&'static str],
    ) -> Result<(Backend, LogCounter)> {
        let mut cmd = Command::new(bin("chat-backend"));
        cmd.args(["--listen", "127.0.0.1:0", "--id", id])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        let sink = Box::new(move |line: &str| {
            if needles.iter().all(|n| line.contains(n)) {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        Ok((Backend::launch(id, cmd, Some(sink))?, LogCounter(count)))
    }
}

/// Runs `wsgate` admin commands against one gate.
#[derive(Clone)]
pub struct CliHandle {
    config: PathBuf,
    token_file: PathBuf,
    admin: Option<SocketAddr>,
}

impl CliHandle {
    /// Passes `--admin` and `--token` explicitly, so commands work even
    /// while the config file on disk is broken.
    pub fn run(&self, args: &[&str]) -> Result<(i32, String, String)> {
        let admin = self
            .admin
            .ok_or_else(|| anyhow!("this gate has no admin API"))?;
        let token = std::fs::read_to_string(&self.token_file)?;
        let (config, admin) = (self.config.display().to_string(), admin.to_string());
        let mut all = args.to_vec();
        all.extend(["-c", &config, "--admin", &admin, "--token", token.trim()]);
        wsgate(&all)
    }
}

/// The code of the Close frame that arrives within `limit`, else None
/// (also when the stream errs or ends without one).
pub async fn close_within<S>(ws: &mut WebSocketStream<S>, limit: Duration) -> Option<u16>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let until = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                // Drive the close handshake to its end (tungstenite answers).
                let _ = tokio::time::timeout_at(until, ws.next()).await;
                return Some(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// Asserts that close times (since the drain began) are spread over a
/// `window` drain: no 100 ms slice holds more than three times its fair
/// share, so the closes were paced rather than sent in a burst.
pub fn assert_spread(times: &[Duration], window: Duration) {
    let mut slices: std::collections::HashMap<u128, usize> = std::collections::HashMap::new();
    for t in times {
        *slices.entry(t.as_millis() / 100).or_default() += 1;
    }
    let fair = times.len() as f64 / (window.as_millis() as f64 / 100.0);
    let worst = slices.values().copied().max().unwrap_or(0);
    assert!(
        worst as f64 <= 3.0 * fair,
        "worst slice {worst}, fair {fair:.1}: {slices:?}"
    );
}

/// Runs `wsgate ARGS...` to its end; returns (exit code, stdout, stderr).
pub fn wsgate(args: &[&str]) -> Result<(i32, String, String)> {
    run_binary(&bin("wsgate"), args)
}

/// Runs `program ARGS...` to its end; returns (exit code, stdout, stderr).
pub fn run_binary(program: &Path, args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(program).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Reads an HTTP head byte by byte, so nothing after it is consumed.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(STEP, s.read_exact(&mut byte)).await??;
        head.push(byte[0]);
    }
    Ok(head)
}

/// Fragment `i` of a binary message cut into `count` parts, as a frame:
/// the first is a Binary frame, the rest Continuations, the last with FIN.
pub fn fragment(part: &[u8], i: usize, count: usize) -> tokio_tungstenite::tungstenite::Message {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let opcode = if i == 0 {
        OpCode::Data(Data::Binary)
    } else {
        OpCode::Data(Data::Continue)
    };
    tokio_tungstenite::tungstenite::Message::Frame(Frame::message(
        part.to_vec(),
        opcode,
        i + 1 == count,
    ))
}

/// A process's log (stderr) as it is written: its size in bytes, and the
/// lines that contain one needle, counted and signalled as they arrive.
pub struct LogTap {
    bytes: Arc<std::sync::atomic::AtomicUsize>,
    matches: Arc<std::sync::atomic::AtomicUsize>,
    seen: std::sync::mpsc::Receiver<String>,
}

impl LogTap {
    /// Bytes written to stderr so far.
    pub fn bytes(&self) -> usize {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lines containing the needle so far.
    pub fn matches(&self) -> usize {
        self.matches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (at most `limit`) for a line containing the needle. Only the
    /// first of the lines that came while nobody waited is kept.
    pub fn wait_match(&self, limit: Duration) -> Result<String> {
        self.seen
            .recv_timeout(limit)
            .map_err(|_| anyhow!("no matching log line within {limit:?}"))
    }
}

impl Gate {
    /// Like [`Gate::launch`] (same readiness lines, `RUST_LOG=warn`), but
    /// with stderr tapped instead of inherited: its size is counted and
    /// the lines containing `needle` are signalled. The first 50 lines are
    /// still copied to the test's stderr, so a flood cannot drown it.
    pub fn launch_tapped(
        dir: PathBuf,
        yaml: &str,
        listeners: usize,
        needle: &'static str,
    ) -> Result<(Gate, LogTap)> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let bytes = Arc::new(AtomicUsize::new(0));
        let matches = Arc::new(AtomicUsize::new(0));
        let (tx, seen) = std::sync::mpsc::sync_channel(1);
        let (b, m) = (bytes.clone(), matches.clone());
        let mut echoed = 0;
        let sink = Box::new(move |line: &str| {
            b.fetch_add(line.len() + 1, Ordering::Relaxed);
            if echoed < 50 {
                echoed += 1;
                eprintln!("[wsgate] {line}");
            }
            if line.contains(needle) {
                m.fetch_add(1, Ordering::Relaxed);
                let _ = tx.try_send(line.to_string());
            }
        });
        let gate = Gate::spawn(&bin("wsgate"), &[], &[], dir, yaml, listeners, Some(sink))?;
        Ok((
            gate,
            LogTap {
                bytes,
                matches,
                seen,
            },
        ))
    }
}

/// CPU time (user + system, all threads) a process has used so far, from
/// `/proc/PID/stat` (Linux).
pub fn cpu_time(pid: i32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15 (proc(5)).
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("no field {} in /proc/{pid}/stat", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(100);
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

/// How many descriptors a process has open (`/proc/PID/fd`, Linux).
pub fn open_fds(pid: i32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// One call to a gate's admin API with its token, on a fresh connection
/// (`Connection: close`); returns the status and the whole response.
pub async fn admin_call(gate: &Gate, method: &str, path: &str) -> Result<(u16, String)> {
    let admin = gate
        .admin
        .ok_or_else(|| anyhow!("this gate has no admin API"))?;
    let token = std::fs::read_to_string(gate.dir.join("admin.token"))?;
    let mut s = tokio::time::timeout(STEP, TcpStream::connect(admin)).await??;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        token.trim()
    );
    let resp = raw_request(&mut s, req.as_bytes()).await?;
    let status = status_of(&resp).ok_or_else(|| anyhow!("no answer: {resp:?}"))?;
    Ok((status, resp))
}

#[cfg(test)]
mod tests {
    use super::encode_frame;

    /// The examples of RFC 6455 section 5.7, byte for byte.
    #[test]
    fn encode_frame_matches_rfc_6455_examples() {
        assert_eq!(
            encode_frame(0x1, true, b"Hello", None),
            [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        assert_eq!(
            encode_frame(0x1, true, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d])),
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        assert_eq!(
            encode_frame(0x1, false, b"Hel", None),
            [0x01, 0x03, 0x48, 0x65, 0x6c]
        );
        assert_eq!(
            encode_frame(0x0, true, b"lo", None),
            [0x80, 0x02, 0x6c, 0x6f]
        );
        let b256 = encode_frame(0x2, true, &[0; 256], None);
        assert_eq!(b256[..4], [0x82, 0x7e, 0x01, 0x00]);
        assert_eq!(b256.len(), 4 + 256);
        let b64k = encode_frame(0x2, true, &[0; 65_536], None);
        assert_eq!(b64k[..10], [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(b64k.len(), 10 + 65_536);
        // The length-form boundaries.
        assert_eq!(encode_frame(0x2, true, &[0; 125], None)[1], 125);
        assert_eq!(
            encode_frame(0x2, true, &[0; 126], None)[1..4],
            [126, 0, 126]
        );
        assert_eq!(
            encode_frame(0x2, true, &[0; 65_535], None)[1..4],
            [126, 0xff, 0xff]
        );
    }
}
