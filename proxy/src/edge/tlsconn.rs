//! TLS over a bare TCP socket that holds no buffer while the connection is
//! idle, built on rustls' unbuffered API.
//!
//! rustls' buffered `ServerConnection` (what tokio-rustls wraps) keeps a
//! 4 KiB receive buffer for the life of every connection, which was the
//! largest single item of an idle wss tunnel. Here the caller owns the
//! buffers: TLS bytes are read into a buffer borrowed from a per-thread
//! pool and given back as soon as no partial record is left in it, and
//! encrypted output is held only until the socket takes it. An idle
//! connection is its socket and rustls' session state (keys, sequence
//! numbers), nothing more.
//!
//! [`accept`] completes the handshake before anything else runs, so HTTP
//! and the tunnel only ever see application data; session tickets and
//! other post-handshake messages are sent whenever rustls produces them.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::server::ServerConnectionData;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Room for one record of either TLS version on the wire (16 KiB of
/// plaintext plus the largest expansion), so a read never has to grow the
/// buffer except for a record that straddles two reads.
const BUF_SIZE: usize = 16 * 1024 + 2048 + 5;
/// Buffers kept per thread; only as many as are in use at once are made.
const MAX_FREE_PER_THREAD: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Vec<u8> {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE])
}

fn give_back(buf: &mut Vec<u8>) {
    let buf = std::mem::take(buf);
    if buf.len() != BUF_SIZE {
        // Grown for a straddling record, or never taken: not pooled.
        return;
    }
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < MAX_FREE_PER_THREAD {
            f.push(buf);
        }
    });
}

/// A server-side TLS connection. Implements `AsyncRead` and `AsyncWrite`
/// for application data once [`accept`] has returned it.
pub struct TlsConn {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received TLS bytes, `inbuf[..in_used]` not yet processed. Empty
    /// (unallocated) whenever no partial record is pending.
    inbuf: Vec<u8>,
    in_used: usize,
    /// Decrypted application data not yet read, from `plain_pos`.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Encrypted bytes not yet written, `out[out_pos..out_len]`.
    out: Vec<u8>,
    out_pos: usize,
    out_len: usize,
    /// The peer closed (close_notify or end of stream).
    read_closed: bool,
    close_notify_sent: bool,
}

/// What the caller of [`TlsConn::process`] wants from this step.
enum Want<'a, 'b> {
    /// Application data, copied straight into the caller's buffer where it
    /// fits (the rest waits in `plain`).
    Read(&'a mut ReadBuf<'b>),
    /// Only to finish the handshake: data would wait in `plain`.
    Handshake,
    Write(&'a [u8]),
    CloseNotify,
}

/// What one step of rustls' state machine did.
enum Step {
    /// Something happened (records decrypted, handshake data queued); go on.
    Progress,
    /// rustls needs more bytes from the peer.
    NeedData,
    /// This many plaintext bytes were encrypted into the output.
    Encrypted(usize),
    /// The peer sent close_notify, or the session is over.
    Closed,
}

/// What a rustls encoder did with the free part of the output buffer.
enum Filled {
    /// Wrote this many bytes.
    Wrote(usize),
    /// Needs this many bytes of room.
    Grow(usize),
}

/// Runs `fill` on the free part of `out` (taken from the pool if there is
/// none), growing it as often as rustls asks.
fn append_out(
    out: &mut Vec<u8>,
    out_len: &mut usize,
    mut fill: impl FnMut(&mut [u8]) -> io::Result<Filled>,
) -> io::Result<()> {
    loop {
        if out.is_empty() {
            *out = take_buf();
        }
        match fill(&mut out[*out_len..])? {
            Filled::Wrote(n) => {
                *out_len += n;
                return Ok(());
            }
            Filled::Grow(room) => out.resize(*out_len + room, 0),
        }
    }
}

/// Appends a handshake message or alert from rustls to the output.
fn encode_into(
    out: &mut Vec<u8>,
    out_len: &mut usize,
    encode: &mut EncodeTlsData<'_, ServerConnectionData>,
) {
    // Encoding cannot fail otherwise: `fill` never returns an error.
    let _ = append_out(out, out_len, |buf| {
        Ok(match encode.encode(buf) {
            Ok(n) => Filled::Wrote(n),
            Err(EncodeError::InsufficientSize(e)) => Filled::Grow(e.required_size),
            Err(EncodeError::AlreadyEncoded) => Filled::Wrote(0),
        })
    });
}

fn tls_error(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Runs the TLS handshake on `tcp`.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsConn> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut tls = TlsConn {
        tcp,
        conn,
        inbuf: Vec::new(),
        in_used: 0,
        plain: Vec::new(),
        plain_pos: 0,
        out: Vec::new(),
        out_pos: 0,
        out_len: 0,
        read_closed: false,
        close_notify_sent: false,
    };
    std::future::poll_fn(|cx| tls.poll_handshake(cx)).await?;
    Ok(tls)
}

impl TlsConn {
    /// The client and wsgate agreed on HTTP/2 in ALPN.
    pub fn negotiated_h2(&self) -> bool {
        self.conn.alpn_protocol() == Some(b"h2")
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.conn.is_handshaking() {
                return self.poll_write_out(cx);
            }
            match self.process(Want::Handshake)? {
                Step::Progress | Step::Encrypted(_) => {}
                Step::Closed => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Step::NeedData => {
                    // Send the whole flight queued so far in one write, not
                    // one write per handshake message, then wait for the
                    // peer's answer.
                    std::task::ready!(self.poll_write_out(cx))?;
                    if std::task::ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
            }
        }
    }

    /// Advances rustls by one state with the bytes received so far. On a
    /// TLS error, the fatal alert rustls prepared for the peer is sent first.
    fn process(&mut self, want: Want<'_, '_>) -> io::Result<Step> {
        let result = self.advance(want);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::InvalidData) {
            self.send_fatal_alert();
        }
        result
    }

    /// Best effort, never waits: the connection is being dropped, and a
    /// peer that does not read must not hold it. An alert is a few bytes,
    /// so one write into an empty socket buffer takes it whole.
    fn send_fatal_alert(&mut self) {
        // rustls queued the alert when it returned the error; the next call
        // hands it out for encoding (it has nothing else to give after an
        // error, so two rounds are plenty).
        for _ in 0..2 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut self.out, &mut self.out_len, &mut encode);
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => break,
            }
        }
        while self.out_pos < self.out_len {
            match self.tcp.try_write(&self.out[self.out_pos..self.out_len]) {
                Ok(n) if n > 0 => self.out_pos += n,
                _ => return,
            }
        }
        self.release_out();
    }

    fn advance(&mut self, mut want: Want<'_, '_>) -> io::Result<Step> {
        let Self {
            conn,
            inbuf,
            in_used,
            plain,
            out,
            out_len,
            ..
        } = self;
        let UnbufferedStatus { mut discard, state } =
            conn.process_tls_records(&mut inbuf[..*in_used]);
        let step = match state.map_err(tls_error)? {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record.map_err(tls_error)?;
                    discard += record.discard;
                    let mut payload = record.payload;
                    if let Want::Read(dst) = &mut want {
                        if plain.is_empty() {
                            let n = dst.remaining().min(payload.len());
                            dst.put_slice(&payload[..n]);
                            payload = &payload[n..];
                        }
                    }
                    plain.extend_from_slice(payload);
                }
                Step::Progress
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(out, out_len, &mut encode);
                Step::Progress
            }
            ConnectionState::TransmitTlsData(transmit) => {
                // The bytes are queued in `out`, which is written before
                // anything encrypted after them; rustls only needs to know
                // they will go out in order.
                transmit.done();
                Step::Progress
            }
            ConnectionState::WriteTraffic(mut traffic) => match want {
                Want::Read(_) | Want::Handshake => Step::NeedData,
                Want::Write(data) => {
                    let chunk = &data[..data.len().min(16 * 1024)];
                    encrypt_into(out, out_len, |buf| traffic.encrypt(chunk, buf))?;
                    Step::Encrypted(chunk.len())
                }
                Want::CloseNotify => {
                    encrypt_into(out, out_len, |buf| traffic.queue_close_notify(buf))?;
                    Step::Encrypted(0)
                }
            },
            ConnectionState::BlockedHandshake => Step::NeedData,
            ConnectionState::PeerClosed | ConnectionState::Closed => Step::Closed,
            // Early data is never enabled in our config.
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected TLS state",
                ))
            }
        };
        if discard > 0 {
            inbuf.copy_within(discard..*in_used, 0);
            *in_used -= discard;
        }
        if *in_used == 0 && !inbuf.is_empty() {
            give_back(inbuf);
        }
        Ok(step)
    }

    /// Reads more TLS bytes from the socket. Ready(0) is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.inbuf.is_empty() {
            self.inbuf = take_buf();
        } else if self.in_used == self.inbuf.len() {
            // A record larger than what is left: grow for it.
            let len = self.inbuf.len() + BUF_SIZE;
            self.inbuf.resize(len, 0);
        }
        let mut rb = ReadBuf::new(&mut self.inbuf[self.in_used..]);
        let polled = Pin::new(&mut self.tcp).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        match polled {
            Poll::Ready(Ok(())) => {
                self.in_used += n;
                if self.in_used == 0 {
                    give_back(&mut self.inbuf);
                }
                Poll::Ready(Ok(n))
            }
            other => {
                // Idle again: hold no buffer while waiting.
                if self.in_used == 0 {
                    give_back(&mut self.inbuf);
                }
                other.map_ok(|()| 0)
            }
        }
    }

    /// Writes queued TLS bytes to the socket; Ready once none are left.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out_len {
            let pending = &self.out[self.out_pos..self.out_len];
            match std::task::ready!(Pin::new(&mut self.tcp).poll_write(cx, pending)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.out_pos += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.release_out();
        Poll::Ready(Ok(()))
    }

    /// Everything queued is sent: the output buffer goes back to the pool.
    fn release_out(&mut self) {
        if !self.out.is_empty() {
            give_back(&mut self.out);
            self.out_pos = 0;
            self.out_len = 0;
        }
    }
}

/// Runs `encrypt` into the free part of `out`, growing it if rustls asks.
fn encrypt_into(
    out: &mut Vec<u8>,
    out_len: &mut usize,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    append_out(out, out_len, |buf| match encrypt(buf) {
        Ok(n) => Ok(Filled::Wrote(n)),
        Err(EncryptError::InsufficientSize(e)) => Ok(Filled::Grow(e.required_size)),
        Err(e) => Err(tls_error(e)),
    })
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.plain_pos < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_pos);
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            // Handshake-era output (a session ticket) goes out as soon as
            // it can; a slow peer does not block reading.
            if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                return Poll::Ready(Err(e));
            }
            let before = buf.filled().len();
            match this.process(Want::Read(buf))? {
                Step::Progress | Step::Encrypted(_) => {
                    if buf.filled().len() > before {
                        return Poll::Ready(Ok(()));
                    }
                }
                Step::Closed => this.read_closed = true,
                Step::NeedData => match std::task::ready!(this.poll_fill(cx))? {
                    0 if this.in_used > 0 => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed in the middle of a TLS record",
                        )))
                    }
                    0 => this.read_closed = true,
                    _ => {}
                },
            }
        }
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        std::task::ready!(this.poll_write_out(cx))?;
        loop {
            let had_plain = this.plain.len();
            match this.process(Want::Write(data))? {
                Step::Encrypted(n) => {
                    // Start sending now; what the socket does not take yet
                    // goes out on the next write or flush.
                    if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Ready(Ok(n));
                }
                Step::Progress => {
                    if this.plain.len() != had_plain {
                        // Records decrypted here must be read: make sure
                        // the reader (this same task) runs again.
                        cx.waker().wake_by_ref();
                    }
                    std::task::ready!(this.poll_write_out(cx))?;
                }
                Step::NeedData => {
                    return Poll::Ready(Err(io::Error::other(
                        "TLS session cannot send application data",
                    )))
                }
                Step::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_notify_sent {
            this.close_notify_sent = true;
            // Best effort: a session that can no longer send just closes.
            // A few steps at most, in case rustls has records to hand over
            // before it offers to encrypt.
            for _ in 0..4 {
                match this.process(Want::CloseNotify) {
                    Ok(Step::Progress) => continue,
                    _ => break,
                }
            }
        }
        std::task::ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const STEP: Duration = Duration::from_secs(10);

    /// Server config and a client config trusting its fresh certificate;
    /// the client offers only TLS 1.2 when asked.
    fn configs(tls12: bool) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
            &[&rustls::version::TLS12]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A socket that writes at most 7 bytes per call, so TLS records reach
    /// the server split across many reads.
    struct Trickle(TcpStream);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = data.len().min(7);
            Pin::new(&mut self.0).poll_write(cx, &data[..n])
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    fn holds_no_buffer(tls: &TlsConn) -> bool {
        tls.inbuf.capacity() == 0 && tls.out.capacity() == 0 && tls.plain.capacity() == 0
    }

    async fn echo_through(trickle: bool, tls12: bool) {
        let (server_cfg, client_cfg) = configs(tls12);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = accept(tcp, server_cfg).await.unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 4096];
            while got.len() < 100_000 {
                let n = tls.read(&mut buf).await.unwrap();
                assert!(n > 0, "early end of stream");
                got.extend_from_slice(&buf[..n]);
            }
            tls.write_all(&got).await.unwrap();
            tls.flush().await.unwrap();
            // Idle between messages: nothing is buffered.
            let idle = holds_no_buffer(&tls);
            let n = tls.read(&mut buf).await.unwrap();
            (idle, n, tls)
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connector = tokio_rustls::TlsConnector::from(client_cfg);
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut echoed = vec![0u8; payload.len()];
        if trickle {
            let mut c = connector.connect(name, Trickle(tcp)).await.unwrap();
            c.write_all(&payload).await.unwrap();
            c.flush().await.unwrap();
            c.read_exact(&mut echoed).await.unwrap();
            c.shutdown().await.unwrap();
        } else {
            let mut c = connector.connect(name, tcp).await.unwrap();
            c.write_all(&payload).await.unwrap();
            c.flush().await.unwrap();
            c.read_exact(&mut echoed).await.unwrap();
            c.shutdown().await.unwrap();
        }
        assert!(echoed == payload, "echo changed the bytes");
        let (idle, n, tls) = tokio::time::timeout(STEP, server).await.unwrap().unwrap();
        assert!(idle, "an idle connection held a buffer");
        assert_eq!(n, 0, "close_notify reads as end of stream");
        assert!(holds_no_buffer(&tls));
    }

    #[tokio::test]
    async fn many_records_echo_intact_and_idle_holds_nothing() {
        tokio::time::timeout(STEP, echo_through(false, false))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn records_split_across_reads_reassemble() {
        tokio::time::timeout(STEP, echo_through(true, false))
            .await
            .unwrap();
    }

    /// A peer that breaks the protocol gets a fatal alert saying why before
    /// the connection closes, as with rustls' buffered mode, instead of a
    /// bare TCP close it cannot tell from a crash.
    #[tokio::test]
    async fn a_protocol_error_is_answered_with_a_fatal_alert() {
        let (server_cfg, _) = configs(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, server_cfg).await.err()
        });
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // Plain HTTP to a TLS port: not a TLS record at all.
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let err = tokio::time::timeout(STEP, server).await.unwrap().unwrap();
        assert_eq!(
            err.map(|e| e.kind()),
            Some(io::ErrorKind::InvalidData),
            "the handshake fails as a TLS error"
        );
        let mut got = Vec::new();
        tokio::time::timeout(STEP, tcp.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        // One plaintext alert record: content type 21, a version, length 2,
        // level 2 (fatal), then the description.
        assert_eq!(
            got.len(),
            7,
            "one alert record, then end of stream: {got:?}"
        );
        assert_eq!((got[0], got[3], got[4], got[5]), (21, 0, 2, 2), "{got:?}");
    }

    #[tokio::test]
    async fn tls12_sessions_work_too() {
        tokio::time::timeout(STEP, echo_through(true, true))
            .await
            .unwrap();
    }
}
