//! Purpose-built peers for the hardening tests: real TCP servers on
//! loopback that each do one thing a well-behaved chat backend never does
//! (answer slowly, never read, flood, send an oversize message, record
//! every byte), and the resident-memory probe the tests read.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{encode_frame, read_head, STEP};

/// What a [`RawBackend`] does with each connection.
#[derive(Debug, Clone)]
pub enum Script {
    /// Answer the upgrade, then record every byte received until end of
    /// stream, answering the first Close frame seen with a Close.
    Record,
    /// Answer the upgrade, send these bytes, then record like `Record`.
    SendThenRecord(Vec<u8>),
    /// Answer the upgrade, then write binary frames of 64 KiB until this
    /// many payload bytes are out (or the connection breaks); never read.
    Flood(u64),
    /// Answer the upgrade, then never read nor write.
    Hold,
    /// Plain HTTP: read the request head, wait, then answer 200 "late".
    AnswerAfter(Duration),
    /// Plain HTTP: answer 200 with a body of this many bytes, as fast as
    /// the client takes it.
    BigBody(u64),
    /// Plain HTTP: read the whole `Content-Length` body, then answer 200
    /// with it (as most POST handlers do: nothing before the body is in).
    Collect,
    /// Expects a PROXY protocol header first: answers 200 with the source
    /// address it carries (`LOCAL` for a LOCAL header), or closes.
    ProxiedSource,
}

/// A scripted backend. `received` holds the bytes recorded after the
/// handshake (all connections appended); `written` counts payload bytes
/// a `Flood` wrote; `heads` counts request heads read; `ended` counts
/// connections that ended (EOF or error).
pub struct RawBackend {
    pub addr: SocketAddr,
    pub heads: Arc<std::sync::atomic::AtomicU64>,
    pub received: Arc<Mutex<Vec<u8>>>,
    pub written: Arc<std::sync::atomic::AtomicU64>,
    pub ended: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    pub async fn start(script: Script) -> Result<RawBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ended = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let heads = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counters = Counters {
            received: received.clone(),
            written: written.clone(),
            heads: heads.clone(),
        };
        let e = ended.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (script, c, e) = (script.clone(), counters.clone(), e.clone());
                tokio::spawn(async move {
                    let _ = serve(tcp, script, &c).await;
                    e.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                });
            }
        });
        Ok(RawBackend {
            addr,
            heads,
            received,
            written,
            ended,
            task,
        })
    }

    pub fn received(&self) -> Vec<u8> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 4.2.2).
pub fn accept_for(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[derive(Clone)]
struct Counters {
    received: Arc<Mutex<Vec<u8>>>,
    written: Arc<std::sync::atomic::AtomicU64>,
    heads: Arc<std::sync::atomic::AtomicU64>,
}

async fn serve(mut tcp: TcpStream, script: Script, c: &Counters) -> Result<()> {
    if let Script::ProxiedSource = script {
        return proxied_source(tcp, c).await;
    }
    let (received, written) = (&*c.received, &*c.written);
    let head = String::from_utf8_lossy(&read_head(&mut tcp).await?).into_owned();
    c.heads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match script {
        Script::Collect => {
            let len: usize = header(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            tcp.read_exact(&mut body).await?;
            let resp =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            tcp.write_all(resp.as_bytes()).await?;
            tcp.write_all(&body).await?;
            return Ok(());
        }
        Script::AnswerAfter(wait) => {
            tokio::time::sleep(wait).await;
            let resp = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlate";
            tcp.write_all(resp.as_bytes()).await?;
            return Ok(());
        }
        Script::BigBody(total) => {
            let resp =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n");
            tcp.write_all(resp.as_bytes()).await?;
            let chunk = vec![b'x'; 64 << 10];
            let mut sent = 0u64;
            while sent < total {
                let n = chunk
                    .len()
                    .min(usize::try_from(total - sent).unwrap_or(chunk.len()));
                tcp.write_all(&chunk[..n]).await?;
                sent += n as u64;
                written.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            return Ok(());
        }
        _ => {}
    }
    let key = header(&head, "sec-websocket-key").ok_or_else(|| anyhow!("no key in {head}"))?;
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_for(key)
    );
    tcp.write_all(resp.as_bytes()).await?;
    match script {
        Script::Record => record(tcp, received).await,
        Script::SendThenRecord(bytes) => {
            tcp.write_all(&bytes).await?;
            record(tcp, received).await
        }
        Script::Flood(total) => {
            let frame = encode_frame(0x2, true, &vec![7u8; 64 << 10], None);
            let mut sent = 0u64;
            while sent < total {
                tcp.write_all(&frame).await?;
                sent += 64 << 10;
                written.fetch_add(64 << 10, std::sync::atomic::Ordering::Relaxed);
            }
            // Keep the connection open, never reading, until the peer goes.
            let mut one = [0u8; 1];
            let _ = tcp.peek(&mut one).await;
            std::future::pending::<()>().await;
            Ok(())
        }
        Script::Hold => {
            std::future::pending::<()>().await;
            Ok(())
        }
        Script::AnswerAfter(_) | Script::BigBody(_) | Script::Collect | Script::ProxiedSource => {
            Ok(())
        }
    }
}

async fn proxied_source(mut tcp: TcpStream, c: &Counters) -> Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let header = loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match wsgate::proxyproto::parse(&buf) {
            Ok(h) => break h,
            Err(wsgate::proxyproto::ProxyError::Incomplete { .. }) => continue,
            Err(e) => return Err(anyhow!("no PROXY header: {e}")),
        }
    };
    c.heads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let source = header.source.map_or("LOCAL".to_string(), |s| s.to_string());
    if let Ok(mut r) = c.received.lock() {
        r.extend_from_slice(format!("{source}\n").as_bytes());
    }
    // The request behind the header: read its head, then answer.
    let mut rest = buf.split_off(header.consumed);
    while !rest.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        rest.extend_from_slice(&chunk[..n]);
    }
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{source}",
        source.len()
    );
    tcp.write_all(resp.as_bytes()).await?;
    Ok(())
}

/// Records bytes; answers the first complete Close frame it sees with a
/// server Close (unmasked), as a real backend would.
async fn record(mut tcp: TcpStream, received: &Mutex<Vec<u8>>) -> Result<()> {
    let mut answered = false;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let all = {
            let mut r = received.lock().map_err(|_| anyhow!("poisoned"))?;
            r.extend_from_slice(&buf[..n]);
            r.clone()
        };
        if !answered && close_frames(&all) > 0 {
            answered = true;
            tcp.write_all(&encode_frame(0x8, true, &1000u16.to_be_bytes(), None))
                .await?;
        }
    }
}

/// Walks a client→server byte stream (masked frames) and counts its Close
/// frames; stops at an incomplete frame.
pub fn close_frames(stream: &[u8]) -> usize {
    frames(stream)
        .iter()
        .filter(|(opcode, _)| *opcode == 0x8)
        .count()
}

/// (opcode, payload length) of each complete frame at the start of
/// `stream`, masked or not.
pub fn frames(stream: &[u8]) -> Vec<(u8, u64)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 2 <= stream.len() {
        let opcode = stream[pos] & 0x0f;
        let masked = stream[pos + 1] & 0x80 != 0;
        let len7 = u64::from(stream[pos + 1] & 0x7f);
        let (len, ext) = match len7 {
            126 if pos + 4 <= stream.len() => (
                u64::from(u16::from_be_bytes([stream[pos + 2], stream[pos + 3]])),
                2,
            ),
            127 if pos + 10 <= stream.len() => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&stream[pos + 2..pos + 10]);
                (u64::from_be_bytes(b), 8)
            }
            126 | 127 => break,
            n => (n, 0),
        };
        let header = 2 + ext + if masked { 4 } else { 0 };
        let end = pos as u64 + header as u64 + len;
        if end > stream.len() as u64 {
            break;
        }
        out.push((opcode, len));
        pos = end as usize;
    }
    out
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))
}

/// Opens a plain TCP connection to `addr` with the test's step timeout.
pub async fn tcp(addr: SocketAddr) -> Result<TcpStream> {
    Ok(tokio::time::timeout(STEP, TcpStream::connect(addr)).await??)
}

/// Whether the peer closed `s` (EOF or reset) within `within`; data that
/// arrives first is read and discarded.
pub async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The unmasked payloads of the complete frames with `opcode` at the start
/// of a client→server `stream` (masked frames; unmasked ones as they are).
pub fn payloads(stream: &[u8], opcode: u8) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    for (op, len) in frames(stream) {
        let masked = stream[pos + 1] & 0x80 != 0;
        let ext = match stream[pos + 1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let start = pos + 2 + ext + if masked { 4 } else { 0 };
        let end = start + len as usize;
        if op == opcode {
            let mut body = stream[start..end].to_vec();
            if masked {
                let key = &stream[start - 4..start];
                for (i, b) in body.iter_mut().enumerate() {
                    *b ^= key[i % 4];
                }
            }
            out.push(body);
        }
        pos = end;
    }
    out
}

/// Polls `check` every 20 ms until it returns `Some`, for at most
/// [`STEP`]; panics naming `what` otherwise. For conditions on state a
/// scripted peer records (bytes received, connections ended).
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
