//! The backend side of a WebSocket upgrade, without an HTTP client: the
//! request head is written in one `write` (after the PROXY header, if the
//! pool sends one), the response head is read and parsed with `httparse`,
//! and then either the socket goes to the tunnel (a 101, with any bytes the
//! backend sent after it), or the answer is relayed to the client with its
//! body (any other status).
//!
//! A hyper client connection did this before: a task of its own, channels
//! between it and the request, buffers, and a second parse of every header,
//! for a request that has no body and a response that ends the protocol.
//! Counted by callgrind that was about a tenth of a plain handshake.
//!
//! Bounded like the rest of `upstream`: the connect by `backend_connect`,
//! the exchange (request, head, a refusal's body) by `backend_response`,
//! the head by `limits.max_header_bytes`, a refusal's body by
//! [`MAX_RELAYED_BODY`]. What counts against the backend is what it did:
//! an invalid or truncated answer, a reset, silence.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use super::upstream::HeadError;
use super::upstream::{connect, UpstreamError, UpstreamTimeouts};

/// The body of a backend's refusal (a 403, a 404 page) is relayed whole; a
/// larger one is a 502. Refusals are short, and a body that is streamed
/// would need a timer of its own.
pub const MAX_RELAYED_BODY: usize = 64 * 1024;

use super::upstream::MAX_BACKEND_HEADERS as MAX_HEADERS;

/// The backend's response head may be this long whatever the clients'
/// `limits.max_header_bytes` (tightened against slow clients) says: a
/// backend's long Set-Cookie or CSP header is not an attack.
pub const MIN_BACKEND_HEAD: usize = 64 * 1024;

/// How the backend answered the upgrade.
pub enum Answer {
    /// 101: the head to send the client, the socket for the tunnel, and
    /// what the backend sent after the head (frames glued to the 101).
    Switched {
        head: Response<()>,
        socket: TcpStream,
        early: Bytes,
        /// How long the TCP connect took.
        connect: std::time::Duration,
    },
    /// Any other final status, to relay with its body.
    Other(Response<Bytes>),
}

/// Connects to `address`, sends `request` (a whole request head), and reads
/// the answer.
pub async fn upgrade(
    address: &str,
    request: &[u8],
    timeouts: UpstreamTimeouts,
    max_head: usize,
) -> Result<Answer, UpstreamError> {
    let started = tokio::time::Instant::now();
    let mut socket = connect(address, timeouts.connect).await?;
    let connect = started.elapsed();
    let exchange = exchange(&mut socket, request, max_head, address);
    let answer = match tokio::time::timeout(timeouts.response, exchange).await {
        Err(_) => {
            return Err(UpstreamError::ResponseTimeout {
                address: address.to_string(),
                timeout: timeouts.response,
            })
        }
        Ok(answer) => answer?,
    };
    Ok(match answer {
        Exchanged::Switched { head, early } => Answer::Switched {
            head,
            socket,
            early,
            connect,
        },
        Exchanged::Other(response) => Answer::Other(response),
    })
}

enum Exchanged {
    Switched { head: Response<()>, early: Bytes },
    Other(Response<Bytes>),
}

async fn exchange(
    socket: &mut TcpStream,
    request: &[u8],
    max_head: usize,
    address: &str,
) -> Result<Exchanged, UpstreamError> {
    let failed = |source| UpstreamError::Io {
        address: address.to_string(),
        source,
    };
    socket.write_all(request).await.map_err(failed)?;
    let mut buf = BytesMut::with_capacity(1024);
    let head = loop {
        let parsed = if buf.is_empty() {
            None
        } else {
            parse_head(&buf, max_head).map_err(|e| bad(address, e))?
        };
        match parsed {
            // 100 Continue and the like: the answer follows.
            Some((head, used))
                if head.status().is_informational()
                    && head.status() != StatusCode::SWITCHING_PROTOCOLS =>
            {
                buf.advance(used);
            }
            Some((head, used)) => {
                buf.advance(used);
                break head;
            }
            None => {
                if socket.read_buf(&mut buf).await.map_err(failed)? == 0 {
                    return Err(bad(address, HeadError::Invalid("closed before the head")));
                }
            }
        }
    };
    if head.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Exchanged::Switched {
            head,
            early: buf.freeze(),
        });
    }
    let body = read_body(socket, head.headers(), head.status(), buf, address).await?;
    let (parts, ()) = head.into_parts();
    Ok(Exchanged::Other(Response::from_parts(parts, body)))
}

fn bad(address: &str, reason: HeadError) -> UpstreamError {
    UpstreamError::BadResponse {
        address: address.to_string(),
        reason,
    }
}

/// Parses a response head at the start of `buf`: the head and its length,
/// or None if more bytes are needed.
pub fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<(Response<()>, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let used = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(HeadError::TooLarge(max_head))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Invalid("malformed")),
    };
    if used > max_head {
        return Err(HeadError::TooLarge(max_head));
    }
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(HeadError::Invalid("status code"))?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    let map = response.headers_mut();
    map.reserve(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Invalid("header name"))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Invalid("header value"))?;
        map.append(name, value);
    }
    Ok(Some((response, used)))
}

/// How a refusal's body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

fn framing(headers: &HeaderMap, status: StatusCode) -> Result<Framing, HeadError> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::None);
    }
    if let Some(te) = headers.get(TRANSFER_ENCODING) {
        let last = te
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .unwrap_or_default();
        return if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Ok(Framing::Chunked)
        } else {
            Ok(Framing::UntilClose)
        };
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (None, _) => Ok(Framing::UntilClose),
        (Some(v), None) => std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Framing::Length)
            .ok_or(HeadError::Invalid("content-length")),
        (Some(_), Some(_)) => Err(HeadError::Invalid("several content-length")),
    }
}

/// Decodes a complete chunked body at the start of `buf` (trailers are
/// dropped): the body, or None if more bytes are needed.
pub fn dechunk(buf: &[u8]) -> Result<Option<Vec<u8>>, HeadError> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (used, size) = match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete(done)) => done,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(HeadError::Chunked),
        };
        at += used;
        let size = usize::try_from(size).map_err(|_| HeadError::Chunked)?;
        if size == 0 {
            // The trailer section ends with an empty line.
            let rest = &buf[at..];
            let ended = rest.starts_with(b"\r\n") || rest.windows(4).any(|w| w == b"\r\n\r\n");
            return Ok(ended.then_some(body));
        }
        if size > MAX_RELAYED_BODY - body.len() {
            return Err(HeadError::TooLarge(MAX_RELAYED_BODY));
        }
        // Bounded by MAX_RELAYED_BODY above, so these cannot overflow.
        let end = at + size;
        let Some(chunk) = buf.get(at..end) else {
            return Ok(None);
        };
        match buf.get(end..end + 2) {
            None => return Ok(None),
            Some(b"\r\n") => {}
            Some(_) => return Err(HeadError::Chunked),
        }
        body.extend_from_slice(chunk);
        at = end + 2;
    }
}

async fn read_body(
    socket: &mut TcpStream,
    headers: &HeaderMap,
    status: StatusCode,
    mut buf: BytesMut,
    address: &str,
) -> Result<Bytes, UpstreamError> {
    let framing = framing(headers, status).map_err(|e| bad(address, e))?;
    let too_large = || UpstreamError::RelayTooLarge {
        address: address.to_string(),
        limit: MAX_RELAYED_BODY,
    };
    loop {
        match framing {
            Framing::None => return Ok(Bytes::new()),
            Framing::Length(n) if n > MAX_RELAYED_BODY => return Err(too_large()),
            Framing::Length(n) if buf.len() >= n => return Ok(buf.split_to(n).freeze()),
            Framing::Chunked => match dechunk(&buf) {
                Ok(Some(body)) => return Ok(body.into()),
                Ok(None) if buf.len() > MAX_RELAYED_BODY + 64 * 1024 => return Err(too_large()),
                Ok(None) => {}
                Err(HeadError::TooLarge(_)) => return Err(too_large()),
                Err(e) => return Err(bad(address, e)),
            },
            Framing::UntilClose if buf.len() > MAX_RELAYED_BODY => return Err(too_large()),
            Framing::Length(_) | Framing::UntilClose => {}
        }
        let read = socket
            .read_buf(&mut buf)
            .await
            .map_err(|source| UpstreamError::Io {
                address: address.to_string(),
                source,
            })?;
        if read == 0 {
            return match framing {
                Framing::UntilClose => Ok(buf.freeze()),
                _ => Err(bad(address, HeadError::Invalid("body cut short"))),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_101_head_is_parsed_and_what_follows_is_left() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc\r\n\r\n\x81\x02hi";
        let (head, used) = parse_head(raw, 8192).unwrap().unwrap();
        assert_eq!(head.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(head.headers()["sec-websocket-accept"], "abc");
        assert_eq!(&raw[used..], b"\x81\x02hi");
        for cut in 0..used {
            assert!(
                matches!(parse_head(&raw[..cut], 8192), Ok(None)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn broken_or_oversized_heads_are_errors() {
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n", 8192).is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n", 8192).is_err());
        let long = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(100));
        assert!(matches!(
            parse_head(long.as_bytes(), 64),
            Err(HeadError::TooLarge(64))
        ));
        let lines = |n: usize| -> String {
            let h: String = (0..n).map(|i| format!("h{i}: v\r\n")).collect();
            format!("HTTP/1.1 101 Switching Protocols\r\n{h}\r\n")
        };
        assert!(matches!(
            parse_head(lines(60).as_bytes(), 1 << 20),
            Ok(Some(_))
        ));
        assert!(matches!(
            parse_head(lines(MAX_HEADERS + 1).as_bytes(), 1 << 20),
            Err(HeadError::TooManyHeaders)
        ));
    }

    #[test]
    fn refusal_framing_follows_rfc_9112() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (n, v) in pairs {
                m.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        let ok = StatusCode::FORBIDDEN;
        assert_eq!(
            framing(&h(&[("content-length", "5")]), ok),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing(
                &h(&[
                    ("transfer-encoding", "gzip, chunked"),
                    ("content-length", "5")
                ]),
                ok
            ),
            Ok(Framing::Chunked),
            "Transfer-Encoding overrides Content-Length"
        );
        assert_eq!(framing(&h(&[]), ok), Ok(Framing::UntilClose));
        assert_eq!(framing(&h(&[]), StatusCode::NO_CONTENT), Ok(Framing::None));
        assert!(framing(&h(&[("content-length", "x")]), ok).is_err());
        assert!(framing(&h(&[("content-length", "1"), ("content-length", "2")]), ok).is_err());
    }

    #[test]
    fn chunked_bodies_are_decoded_whole_or_wait() {
        let raw = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(dechunk(raw), Ok(Some(b"hello world".to_vec())));
        for cut in 0..raw.len() - 1 {
            assert_eq!(dechunk(&raw[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(dechunk(b"0\r\n\r\n"), Ok(Some(Vec::new())));
        assert_eq!(dechunk(b"2\r\nabX\r\n"), Err(HeadError::Chunked));
        assert_eq!(dechunk(b"zz\r\n"), Err(HeadError::Chunked));
        let huge = format!("{:x}\r\n", MAX_RELAYED_BODY + 1);
        assert_eq!(
            dechunk(huge.as_bytes()),
            Err(HeadError::TooLarge(MAX_RELAYED_BODY))
        );
    }
}
