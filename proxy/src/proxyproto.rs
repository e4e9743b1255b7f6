//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2):
//! decoding the header a trusted L4 load balancer (AWS NLB, GCP, MetalLB,
//! HAProxy `send-proxy[-v2]`) puts in front of a TCP connection, and encoding
//! a v2 header for backends (`pools.NAME.send_proxy_protocol: v2`).
//!
//! Pure: no I/O and no allocation in [`parse`]. The caller owns the socket,
//! the `accept_from` check and the handshake timeout.
//!
//! **Why it is strict.** The address [`parse`] yields becomes the client
//! address everywhere: `client_ip` hashing, per-IP limits,
//! `X-Forwarded-For`/`Forwarded`, logs. A lenient parser is an address
//! spoofing bug, so anything that does not match the specification exactly
//! is an error and the connection is closed. The specification also forbids
//! guessing: on a listener with `proxy_protocol`, a connection from an
//! allowed source must start with a header, and one that does not
//! ([`ProxyError::NotProxyProtocol`]) is refused, never served as plain
//! TLS/HTTP.
//!
//! **How to call it.** Pass the bytes received so far. On
//! [`ProxyError::Incomplete`] read more (`at_least` is a lower bound, exact
//! for v2 once its length field has arrived) and call again with the longer
//! buffer. On success drop the first [`Header::consumed`] bytes: what follows
//! is the client's first TLS or HTTP bytes, untouched, because the parser
//! never looks past the header. Any other error: close and count. Errors are
//! reported as early as the bytes allow (a first byte that is neither `P` nor
//! `\r` is refused at once), and a prefix of a malformed header is either
//! `Incomplete` or the same error as the whole header.
//!
//! Decisions, where the specification leaves room:
//! - v1 addresses: IPv4 is exactly four decimal numbers 0-255 without
//!   leading zeros (`01.2.3.4` is refused, as the spec says); IPv6 is what
//!   `std`'s parser takes, which, like `inet_pton`, includes the
//!   `::ffff:1.2.3.4` form and groups of 1-4 hex digits in either case. The
//!   address must be of the announced family (`TCP4` with `::1` is refused).
//! - v1 ports: 1-5 ASCII digits, `0` alone or no leading zero, at most 65535;
//!   no sign.
//! - v1 `UNKNOWN`: whatever follows `UNKNOWN ` up to the CRLF is ignored, as
//!   the spec requires, but a lone CR or LF anywhere before the CRLF is an
//!   error for every protocol. Upper case only.
//! - v2 `LOCAL`: the family byte and the whole address block are ignored
//!   (the spec: "discard the protocol block including the family"), so no
//!   TLV is checked either. The length still counts, and is still capped.
//! - v2 `PROXY` with AF_UNSPEC or transport UNSPEC (e.g. `0x10`, `0x01`), or
//!   with AF_UNIX STREAM: treated as LOCAL (`source: None`, the caller uses
//!   the TCP peer), which the spec allows. AF_UNIX must still have its 216
//!   address bytes; UNSPEC blocks are skipped whole, TLVs unchecked, since
//!   their layout is unknown.
//! - v2 DGRAM (UDP, unix datagram) is an error: a WebSocket rides on a stream.
//! - v2 size: at most [`V2_MAX_LEN`] bytes in all (the format allows
//!   16 + 65535). The TLVs real senders add (NLB's VPC endpoint id, GCP's
//!   PSC connection id, HAProxy's ALPN/authority/SSL/unique id) are tens to a
//!   few hundred bytes; 4 KiB fits them all and bounds what a caller must
//!   buffer for a connection that has not said anything yet.
//! - v2 TLVs after an INET, INET6 or UNIX address block are walked: each one
//!   must fit inside the header, so a truncated TLV (or 1-2 stray bytes) is
//!   an error. Their values are not interpreted, with one exception: a
//!   `PP2_TYPE_CRC32C` TLV is verified (the spec says a receiver that
//!   supports it MUST), must be 4 bytes long and may appear once.
//! - Addresses are returned as sent: a v4-mapped IPv6 address stays IPv6
//!   here; canonicalising is the consumer's job, as for a TCP peer address.

#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// The v2 signature: the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Longest v1 line the spec allows, CRLF included
/// (`PROXY UNKNOWN <39> <39> 65535 65535\r\n`).
pub const V1_MAX_LEN: usize = 107;

/// Largest v2 header wsgate accepts, the 16 fixed bytes included (see the
/// module doc for why).
pub const V2_MAX_LEN: usize = 4096;

const V1_PREFIX: &[u8] = b"PROXY ";
/// Shortest header of either version: `PROXY UNKNOWN\r\n`.
const MIN_LEN: usize = 15;
/// The fixed part of a v2 header: signature, version/command, family, length.
const V2_FIXED_LEN: usize = 16;
/// v2 address block lengths (section 2.2).
const V2_INET_LEN: u16 = 12;
const V2_INET6_LEN: u16 = 36;
const V2_UNIX_LEN: u16 = 216;
const PP2_TYPE_CRC32C: u8 = 0x03;

/// Which version of the protocol the header was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Length of the header in bytes: the connection's own data starts here.
    pub consumed: usize,
    /// The original client. `None` means LOCAL (v2 `LOCAL`, v1 `UNKNOWN`,
    /// or a v2 family treated as LOCAL): the caller uses the TCP peer.
    pub source: Option<SocketAddr>,
    /// The address the client connected to; `None` exactly when `source` is.
    pub destination: Option<SocketAddr>,
    pub version: Version,
}

/// The v1 protocol token of a `TCP4`/`TCP6` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Tcp4,
    Tcp6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Tcp4 => "TCP4",
            Family::Tcp6 => "TCP6",
        })
    }
}

/// Which of the two endpoints a v1 field describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Source,
    Destination,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endpoint::Source => "source",
            Endpoint::Destination => "destination",
        })
    }
}

/// Why a buffer is not (yet) a valid header. Everything but `Incomplete`
/// means the connection must be closed: the sender is misconfigured, is not
/// a PROXY protocol sender at all, or is lying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProxyError {
    /// A valid prefix: read at least this many more bytes and parse again.
    #[error("incomplete PROXY protocol header: at least {at_least} more byte(s) needed")]
    Incomplete { at_least: usize },
    /// The first bytes are neither `PROXY ` nor the v2 signature. Usually a
    /// client talking TLS or HTTP directly, or a balancer not configured to
    /// send the PROXY protocol.
    #[error(
        "not a PROXY protocol header: the connection starts with neither \"PROXY \" (v1) \
         nor the v2 signature; is the load balancer configured to send it?"
    )]
    NotProxyProtocol,
    #[error("PROXY v1: the protocol after \"PROXY \" must be TCP4, TCP6 or UNKNOWN (upper case), then a space or CRLF")]
    V1Protocol,
    #[error("PROXY v1: byte 0x{byte:02x} at offset {offset} cannot appear in an address of a {family} line")]
    V1Byte {
        byte: u8,
        offset: usize,
        family: Family,
    },
    #[error(
        "PROXY v1: expected \"PROXY {family} <source> <destination> <source port> <destination port>\" \
         with exactly one space between the fields"
    )]
    V1Fields { family: Family },
    #[error("PROXY v1: the {which} address is not a valid {family} address (IPv4 numbers have no leading zeros)")]
    V1Address { which: Endpoint, family: Family },
    #[error(
        "PROXY v1: the {which} port is not a decimal number 0-65535 without sign or leading zeros"
    )]
    V1Port { which: Endpoint },
    #[error("PROXY v1: a lone CR or LF before the CRLF that must end the line")]
    V1LineEnd,
    #[error("PROXY v1: no CRLF within the first {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("PROXY v2: protocol version {0} in the version/command byte; only 2 exists")]
    V2Version(u8),
    #[error("PROXY v2: command {0}; only 0 (LOCAL) and 1 (PROXY) exist")]
    V2Command(u8),
    #[error("PROXY v2: address family {0}; only 0-3 (UNSPEC, INET, INET6, UNIX) exist")]
    V2Family(u8),
    #[error("PROXY v2: transport protocol {0}; only 0-2 (UNSPEC, STREAM, DGRAM) exist")]
    V2Transport(u8),
    #[error(
        "PROXY v2: the proxied connection is a datagram (UDP) one; only TCP can carry a WebSocket"
    )]
    V2Datagram,
    #[error("PROXY v2: address length {len} is shorter than the {needed} bytes of an {family} address block")]
    V2TooShort {
        len: u16,
        needed: u16,
        family: &'static str,
    },
    #[error("PROXY v2: the header announces {total} bytes, more than the {max} wsgate accepts", max = V2_MAX_LEN)]
    V2TooLarge { total: usize },
    #[error("PROXY v2: the TLV at offset {offset} runs past the end of the header")]
    V2Tlv { offset: usize },
    #[error("PROXY v2: a CRC32C TLV must be 4 bytes long and appear at most once")]
    V2Crc32cTlv,
    #[error(
        "PROXY v2: the CRC32C checksum does not match the header (corrupted or altered in transit)"
    )]
    V2Checksum,
}

use ProxyError::*;

/// Decodes a PROXY protocol header (v1 or v2) at the start of `buf`, the
/// bytes received so far. Never looks past the header, never panics, never
/// allocates.
pub fn parse(buf: &[u8]) -> Result<Header, ProxyError> {
    match buf.first() {
        None => Err(Incomplete { at_least: MIN_LEN }),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(NotProxyProtocol),
    }
}

/// Encodes a v2 `PROXY` header for a TCP connection from `source` to
/// `destination`, without TLVs. Two IPv4 addresses are sent as AF_INET;
/// otherwise both go as AF_INET6, an IPv4 one v4-mapped. IPv6 flow info and
/// scope ids are not part of the format and are dropped.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(V2_FIXED_LEN + usize::from(V2_INET6_LEN));
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&V2_INET_LEN.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&V2_INET6_LEN.to_be_bytes());
            out.extend_from_slice(&as_v6(s).octets());
            out.extend_from_slice(&as_v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

/// A v2 LOCAL header (no addresses): what a sender puts in front of a
/// connection of its own, such as a health check.
pub fn encode_v2_local() -> [u8; 16] {
    // Version 2, command LOCAL; then AF_UNSPEC/UNSPEC and a length of 0.
    let tail = [0x20, 0x00, 0x00, 0x00];
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(V2_SIGNATURE.iter().chain(tail.iter())) {
        *o = *b;
    }
    out
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

// ---------------------------------------------------------------- v1

fn parse_v1(buf: &[u8]) -> Result<Header, ProxyError> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf.get(..n) != V1_PREFIX.get(..n) {
        return Err(NotProxyProtocol);
    }
    if buf.len() < V1_PREFIX.len() {
        return Err(Incomplete {
            at_least: MIN_LEN - buf.len(),
        });
    }
    // Nothing past the 107th byte can be part of a v1 header.
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let body = window.get(V1_PREFIX.len()..).unwrap_or_default();
    let end = body.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = match end {
        Some(i) => body.get(..i).unwrap_or_default(),
        None => body,
    };
    // Left to right, so a prefix reports the same error as the whole line.
    check_v1_prefix(line)?;
    let Some(i) = end else {
        if window.len() >= V1_MAX_LEN {
            return Err(V1TooLong);
        }
        // At least the CRLF, and at least the shortest header.
        return Err(Incomplete {
            at_least: MIN_LEN.saturating_sub(buf.len()).max(2),
        });
    };
    if body.get(i) == Some(&b'\n') {
        return Err(V1LineEnd);
    }
    // The line is complete up to its CR: validate it before waiting for LF.
    let (source, destination) = parse_v1_line(line)?;
    let cr = V1_PREFIX.len() + i;
    match window.get(cr + 1) {
        Some(b'\n') => Ok(Header {
            consumed: cr + 2,
            source,
            destination,
            version: Version::V1,
        }),
        Some(_) => Err(V1LineEnd),
        None if cr + 1 >= V1_MAX_LEN => Err(V1TooLong),
        None => Err(Incomplete {
            at_least: MIN_LEN.saturating_sub(buf.len()).max(1),
        }),
    }
}

/// Splits at the first space: the token, and what follows it if there was
/// a space.
fn split_token(line: &[u8]) -> (&[u8], Option<&[u8]>) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (
            line.get(..i).unwrap_or_default(),
            Some(line.get(i + 1..).unwrap_or_default()),
        ),
        None => (line, None),
    }
}

fn family_of(token: &[u8]) -> Option<Family> {
    match token {
        b"TCP4" => Some(Family::Tcp4),
        b"TCP6" => Some(Family::Tcp6),
        _ => None,
    }
}

/// Checks what can be checked of an unterminated line (the bytes after
/// `PROXY ` before any CR/LF), scanning left to right: the protocol token
/// and, for TCP4/TCP6, the bytes each field may contain and the spacing.
fn check_v1_prefix(line: &[u8]) -> Result<(), ProxyError> {
    let (token, rest) = split_token(line);
    let Some(rest) = rest else {
        let known: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];
        return if known.iter().any(|p| p.starts_with(token)) {
            Ok(())
        } else {
            Err(V1Protocol)
        };
    };
    if token == b"UNKNOWN" {
        return Ok(());
    }
    let family = family_of(token).ok_or(V1Protocol)?;
    // Offset of `rest` in the header: "PROXY " + "TCPx ".
    let base = V1_PREFIX.len() + token.len() + 1;
    let mut field = 0usize;
    let mut at_field_start = true;
    for (k, &b) in rest.iter().enumerate() {
        if b == b' ' {
            if at_field_start || field == 3 {
                return Err(V1Fields { family });
            }
            field += 1;
            at_field_start = true;
            continue;
        }
        at_field_start = false;
        let ok = match (field, family) {
            (0 | 1, Family::Tcp4) => b.is_ascii_digit() || b == b'.',
            (0 | 1, Family::Tcp6) => b.is_ascii_hexdigit() || b == b':' || b == b'.',
            _ => b.is_ascii_digit(),
        };
        if !ok {
            return Err(match field {
                0 | 1 => V1Byte {
                    byte: b,
                    offset: base + k,
                    family,
                },
                2 => V1Port {
                    which: Endpoint::Source,
                },
                _ => V1Port {
                    which: Endpoint::Destination,
                },
            });
        }
    }
    Ok(())
}

type Addresses = (Option<SocketAddr>, Option<SocketAddr>);

/// Decodes a complete line (the bytes between `PROXY ` and the CRLF).
fn parse_v1_line(line: &[u8]) -> Result<Addresses, ProxyError> {
    let (token, rest) = split_token(line);
    if token == b"UNKNOWN" {
        return Ok((None, None));
    }
    let family = family_of(token).ok_or(V1Protocol)?;
    let rest = rest.ok_or(V1Fields { family })?;
    let mut fields = rest.split(|&b| b == b' ');
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(V1Fields { family });
    };
    if [src, dst, sport, dport].iter().any(|f| f.is_empty()) {
        return Err(V1Fields { family });
    }
    let ip = |field: &[u8], which| {
        let text = std::str::from_utf8(field).map_err(|_| V1Address { which, family })?;
        let ip = match family {
            Family::Tcp4 => text.parse::<Ipv4Addr>().map(IpAddr::V4),
            Family::Tcp6 => text.parse::<Ipv6Addr>().map(IpAddr::V6),
        };
        ip.map_err(|_| V1Address { which, family })
    };
    let src_ip = ip(src, Endpoint::Source)?;
    let dst_ip = ip(dst, Endpoint::Destination)?;
    let src_port = parse_port(sport).ok_or(V1Port {
        which: Endpoint::Source,
    })?;
    let dst_port = parse_port(dport).ok_or(V1Port {
        which: Endpoint::Destination,
    })?;
    Ok((
        Some(SocketAddr::new(src_ip, src_port)),
        Some(SocketAddr::new(dst_ip, dst_port)),
    ))
}

/// A port: 1-5 ASCII digits, no leading zero unless it is `0`, at most 65535.
fn parse_port(field: &[u8]) -> Option<u16> {
    if field.is_empty() || field.len() > 5 || (field.len() > 1 && field.first() == Some(&b'0')) {
        return None;
    }
    let mut value: u32 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    u16::try_from(value).ok()
}

// ---------------------------------------------------------------- v2

/// What a v2 `PROXY` header's address block holds.
enum Block {
    Inet,
    Inet6,
    Unix,
    /// UNSPEC family or transport: unknown layout, skipped whole.
    Unspec,
}

fn parse_v2(buf: &[u8]) -> Result<Header, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf.get(..n) != V2_SIGNATURE.get(..n) {
        return Err(NotProxyProtocol);
    }
    let fixed_missing = Incomplete {
        at_least: V2_FIXED_LEN.saturating_sub(buf.len()),
    };
    let Some(&ver_cmd) = buf.get(12) else {
        return Err(fixed_missing);
    };
    if ver_cmd >> 4 != 2 {
        return Err(V2Version(ver_cmd >> 4));
    }
    let proxy = match ver_cmd & 0x0f {
        0 => false,
        1 => true,
        c => return Err(V2Command(c)),
    };
    let Some(&fam_proto) = buf.get(13) else {
        return Err(fixed_missing);
    };
    // LOCAL ignores the family byte; PROXY must name a known one.
    let block = if proxy {
        Some(v2_block(fam_proto)?)
    } else {
        None
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Err(fixed_missing);
    };
    let len = u16::from_be_bytes([hi, lo]);
    let total = V2_FIXED_LEN + usize::from(len);
    if total > V2_MAX_LEN {
        return Err(V2TooLarge { total });
    }
    let needed = match block {
        Some(Block::Inet) => Some((V2_INET_LEN, "AF_INET")),
        Some(Block::Inet6) => Some((V2_INET6_LEN, "AF_INET6")),
        Some(Block::Unix) => Some((V2_UNIX_LEN, "AF_UNIX")),
        Some(Block::Unspec) | None => None,
    };
    if let Some((needed, family)) = needed {
        if len < needed {
            return Err(V2TooShort {
                len,
                needed,
                family,
            });
        }
    }
    let Some(header) = buf.get(..total) else {
        return Err(Incomplete {
            at_least: total - buf.len(),
        });
    };
    let local = Header {
        consumed: total,
        source: None,
        destination: None,
        version: Version::V2,
    };
    let Some((addr_len, _)) = needed else {
        return Ok(local);
    };
    check_tlvs(header, V2_FIXED_LEN + usize::from(addr_len))?;
    let addrs = header.get(V2_FIXED_LEN..).unwrap_or_default();
    let (source, destination) = match block {
        Some(Block::Inet) => {
            let ip = |at| array::<4>(addrs, at).map(|o| IpAddr::V4(Ipv4Addr::from(o)));
            (
                endpoint(ip(0), port(addrs, 8)),
                endpoint(ip(4), port(addrs, 10)),
            )
        }
        Some(Block::Inet6) => {
            let ip = |at| array::<16>(addrs, at).map(|o| IpAddr::V6(Ipv6Addr::from(o)));
            (
                endpoint(ip(0), port(addrs, 32)),
                endpoint(ip(16), port(addrs, 34)),
            )
        }
        _ => return Ok(local),
    };
    Ok(Header {
        source,
        destination,
        ..local
    })
}

/// Decodes the family/transport byte of a `PROXY` header.
fn v2_block(fam_proto: u8) -> Result<Block, ProxyError> {
    let (family, transport) = (fam_proto >> 4, fam_proto & 0x0f);
    if family > 3 {
        return Err(V2Family(family));
    }
    match transport {
        0 => return Ok(Block::Unspec),
        1 => {}
        2 => return Err(V2Datagram),
        t => return Err(V2Transport(t)),
    }
    Ok(match family {
        1 => Block::Inet,
        2 => Block::Inet6,
        3 => Block::Unix,
        _ => Block::Unspec,
    })
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn port(bytes: &[u8], at: usize) -> Option<u16> {
    array::<2>(bytes, at).map(u16::from_be_bytes)
}

fn endpoint(ip: Option<IpAddr>, port: Option<u16>) -> Option<SocketAddr> {
    // Both are present: the length was checked against the family.
    Some(SocketAddr::new(ip?, port?))
}

/// Walks the TLVs of a complete v2 `header` from `start`: each must lie
/// inside the header; a CRC32C one is verified.
fn check_tlvs(header: &[u8], start: usize) -> Result<(), ProxyError> {
    let mut offset = start;
    let mut crc_at = None;
    while let Some(rest) = header.get(offset..).filter(|r| !r.is_empty()) {
        let (Some(&kind), Some(&hi), Some(&lo)) = (rest.first(), rest.get(1), rest.get(2)) else {
            return Err(V2Tlv { offset });
        };
        let value_len = usize::from(u16::from_be_bytes([hi, lo]));
        if rest.len() < 3 + value_len {
            return Err(V2Tlv { offset });
        }
        if kind == PP2_TYPE_CRC32C {
            if value_len != 4 || crc_at.is_some() {
                return Err(V2Crc32cTlv);
            }
            crc_at = Some(offset + 3);
        }
        offset += 3 + value_len;
    }
    match crc_at {
        Some(at) => verify_crc32c(header, at),
        None => Ok(()),
    }
}

/// Checks the CRC32C TLV whose 4-byte value is at `at`: the checksum of the
/// whole header with that value read as zeros, in network byte order.
fn verify_crc32c(header: &[u8], at: usize) -> Result<(), ProxyError> {
    let (Some(before), Some(sent), Some(after)) = (
        header.get(..at),
        array::<4>(header, at),
        header.get(at + 4..),
    ) else {
        return Err(V2Crc32cTlv);
    };
    let crc = [before, &[0; 4], after]
        .iter()
        .fold(!0u32, |crc, part| crc32c_update(crc, part));
    if !crc == u32::from_be_bytes(sent) {
        Ok(())
    } else {
        Err(V2Checksum)
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: at
/// most 4 KiB, once per connection that carries the TLV, so no table.
fn crc32c_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    crc
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_local_header_parses_as_local() {
        let local = encode_v2_local();
        let h = parse(&local).unwrap();
        assert_eq!((h.consumed, h.source), (16, None));
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn crc32c(bytes: &[u8]) -> u32 {
        !crc32c_update(!0, bytes)
    }

    /// A v2 header: the fixed part with `ver_cmd` and `fam`, then `body`
    /// (addresses and TLVs), the length field set to the body's length.
    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut t = vec![kind];
        t.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        t.extend_from_slice(value);
        t
    }

    /// 192.0.2.1:56324 -> 198.51.100.7:443 as a v2 AF_INET block.
    fn inet_block() -> Vec<u8> {
        let mut b = vec![192, 0, 2, 1, 198, 51, 100, 7];
        b.extend_from_slice(&56324u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b
    }

    /// Adds a CRC32C TLV to a v2 header and fills in its checksum.
    fn with_crc(mut h: Vec<u8>) -> Vec<u8> {
        let len = u16::from_be_bytes([h[14], h[15]]) + 7;
        h[14..16].copy_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&tlv(PP2_TYPE_CRC32C, &[0; 4]));
        let crc = crc32c(&h);
        let at = h.len() - 4;
        h[at..].copy_from_slice(&crc.to_be_bytes());
        h
    }

    fn proxied(consumed: usize, src: &str, dst: &str, version: Version) -> Header {
        Header {
            consumed,
            source: Some(sa(src)),
            destination: Some(sa(dst)),
            version,
        }
    }

    fn local(consumed: usize, version: Version) -> Header {
        Header {
            consumed,
            source: None,
            destination: None,
            version,
        }
    }

    /// Valid headers and what they decode to.
    fn valid() -> Vec<(Vec<u8>, Header)> {
        let v1 = |s: &str| s.as_bytes().to_vec();
        let ff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let mut cases = vec![
            (
                v1("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"),
                proxied(47, "192.168.0.1:56324", "192.168.0.11:443", Version::V1),
            ),
            (
                v1("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"),
                proxied(
                    56,
                    "255.255.255.255:65535",
                    "255.255.255.255:65535",
                    Version::V1,
                ),
            ),
            (
                v1("PROXY TCP4 0.0.0.0 10.0.0.1 0 1\r\n"),
                proxied(33, "0.0.0.0:0", "10.0.0.1:1", Version::V1),
            ),
            (
                v1("PROXY TCP6 2001:db8::1 2001:DB8::2 1234 443\r\n"),
                proxied(45, "[2001:db8::1]:1234", "[2001:db8::2]:443", Version::V1),
            ),
            (
                v1(&format!("PROXY TCP6 {ff} {ff} 65535 65535\r\n")),
                proxied(
                    104,
                    &format!("[{ff}]:65535"),
                    &format!("[{ff}]:65535"),
                    Version::V1,
                ),
            ),
            (
                v1("PROXY TCP6 ::ffff:192.0.2.1 :: 1 2\r\n"),
                proxied(36, "[::ffff:192.0.2.1]:1", "[::]:2", Version::V1),
            ),
            (v1("PROXY UNKNOWN\r\n"), local(15, Version::V1)),
            (
                v1(&format!("PROXY UNKNOWN {ff} {ff} 65535 65535\r\n")),
                local(107, Version::V1),
            ),
            (
                b"PROXY UNKNOWN whatever \x01\x7f\xff\0 here\r\n".to_vec(),
                local(34, Version::V1),
            ),
            (
                v2(0x21, 0x11, &inet_block()),
                proxied(28, "192.0.2.1:56324", "198.51.100.7:443", Version::V2),
            ),
        ];
        // TCP over IPv6 with TLVs: ALPN, authority, an empty NOOP, an SSL TLV
        // with a sub-TLV, AWS's VPC endpoint id (a custom type).
        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&1234u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend(tlv(0x01, b"http/1.1"));
        body.extend(tlv(0x02, b"chat.example.com"));
        body.extend(tlv(0x04, b""));
        let mut ssl = vec![0x01, 0, 0, 0, 0];
        ssl.extend(tlv(0x21, b"TLSv1.3"));
        body.extend(tlv(0x20, &ssl));
        body.extend(tlv(0xEA, b"\x01vpce-0123456789abcdef"));
        let len = 16 + body.len();
        cases.push((
            v2(0x21, 0x21, &body),
            proxied(len, "[2001:db8::1]:1234", "[2001:db8::2]:443", Version::V2),
        ));
        // With a CRC32C TLV.
        let h = with_crc(v2(0x21, 0x11, &inet_block()));
        let len = h.len();
        cases.push((
            h,
            proxied(len, "192.0.2.1:56324", "198.51.100.7:443", Version::V2),
        ));
        // LOCAL: no block, or a block (and family byte) that are ignored.
        cases.push((v2(0x20, 0x00, &[]), local(16, Version::V2)));
        cases.push((v2(0x20, 0x11, &inet_block()), local(28, Version::V2)));
        cases.push((v2(0x20, 0xff, b"\x03\x00"), local(18, Version::V2)));
        // PROXY with UNSPEC family or transport, or AF_UNIX: as LOCAL.
        cases.push((v2(0x21, 0x00, &[]), local(16, Version::V2)));
        cases.push((v2(0x21, 0x10, &inet_block()), local(28, Version::V2)));
        cases.push((v2(0x21, 0x01, b"\x01"), local(17, Version::V2)));
        let mut unix = vec![0u8; 216];
        unix[..9].copy_from_slice(b"/run/a.so");
        unix.extend(tlv(0x05, b"id"));
        cases.push((v2(0x21, 0x31, &unix), local(16 + 221, Version::V2)));
        // The largest accepted.
        let mut big = inet_block();
        big.extend(tlv(0x04, &vec![0; V2_MAX_LEN - 16 - 12 - 3]));
        cases.push((
            v2(0x21, 0x11, &big),
            proxied(
                V2_MAX_LEN,
                "192.0.2.1:56324",
                "198.51.100.7:443",
                Version::V2,
            ),
        ));
        cases
    }

    /// Malformed headers and their error.
    fn invalid() -> Vec<(Vec<u8>, ProxyError)> {
        let v1 = |s: &str| s.as_bytes().to_vec();
        let src = Endpoint::Source;
        let dst = Endpoint::Destination;
        let (t4, t6) = (Family::Tcp4, Family::Tcp6);
        let mut cases = vec![
            (v1("GET / HTTP/1.1\r\n\r\n"), NotProxyProtocol),
            (v1("POST / HTTP/1.1\r\n\r\n"), NotProxyProtocol),
            (v1("PROXY\r\n"), NotProxyProtocol),
            (v1("PROXYTCP4"), NotProxyProtocol),
            (v1("proxy TCP4"), NotProxyProtocol),
            (vec![0x16, 0x03, 0x01, 0x02, 0x00], NotProxyProtocol),
            (b"\r\n\r\n\0\r\nQUIX\n".to_vec(), NotProxyProtocol),
            (b"\r\nGET".to_vec(), NotProxyProtocol),
            (v1("PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n"), V1Protocol),
            (v1("PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n"), V1Protocol),
            (v1("PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n"), V1Protocol),
            (v1("PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n"), V1Protocol),
            (v1("PROXY UNKNOWNX\r\n"), V1Protocol),
            (v1("PROXY \r\n"), V1Protocol),
            (v1("PROXY TCP\r\n"), V1Protocol),
            (v1("PROXY TCP4\r\n"), V1Fields { family: t4 }),
            (v1("PROXY TCP4 \r\n"), V1Fields { family: t4 }),
            (
                v1("PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n"),
                V1Fields { family: t4 },
            ),
            (
                v1("PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n"),
                V1Fields { family: t4 },
            ),
            (
                v1("PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n"),
                V1Fields { family: t4 },
            ),
            (
                v1("PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n"),
                V1Fields { family: t4 },
            ),
            (
                v1("PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n"),
                V1Fields { family: t4 },
            ),
            (v1("PROXY TCP6 ::1 ::1 1 \r\n"), V1Fields { family: t6 }),
            (
                v1("PROXY TCP4 ::1 1.2.3.4 1 2\r\n"),
                V1Byte {
                    byte: b':',
                    offset: 11,
                    family: t4,
                },
            ),
            (
                v1("PROXY TCP4 1.2.3.4 1.2.3.x 1 2\r\n"),
                V1Byte {
                    byte: b'x',
                    offset: 25,
                    family: t4,
                },
            ),
            (
                v1("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"),
                V1Byte {
                    byte: b'%',
                    offset: 18,
                    family: t6,
                },
            ),
            (
                v1("PROXY TCP4 1.2.3.4\t1.2.3.4 1 2\r\n"),
                V1Byte {
                    byte: b'\t',
                    offset: 18,
                    family: t4,
                },
            ),
            (
                v1("PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n"),
                V1Address {
                    which: src,
                    family: t4,
                },
            ),
            (
                v1("PROXY TCP4 1.2.3.4 1.2.3.256 1 2\r\n"),
                V1Address {
                    which: dst,
                    family: t4,
                },
            ),
            (
                v1("PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n"),
                V1Address {
                    which: src,
                    family: t4,
                },
            ),
            (
                v1("PROXY TCP6 1.2.3.4 ::1 1 2\r\n"),
                V1Address {
                    which: src,
                    family: t6,
                },
            ),
            (
                v1("PROXY TCP6 ::1 1::2::3 1 2\r\n"),
                V1Address {
                    which: dst,
                    family: t6,
                },
            ),
            (
                v1("PROXY TCP6 ::1 12345::1 1 2\r\n"),
                V1Address {
                    which: dst,
                    family: t6,
                },
            ),
            (
                v1("PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n"),
                V1Port { which: src },
            ),
            (
                v1("PROXY TCP4 1.2.3.4 1.2.3.4 00 2\r\n"),
                V1Port { which: src },
            ),
            (
                v1("PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n"),
                V1Port { which: src },
            ),
            (
                v1("PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n"),
                V1Port { which: dst },
            ),
            (
                v1("PROXY TCP4 1.2.3.4 1.2.3.4 1 99999\r\n"),
                V1Port { which: dst },
            ),
            (
                v1("PROXY TCP4 1.2.3.4 1.2.3.4 1 123456\r\n"),
                V1Port { which: dst },
            ),
            (v1("PROXY TCP6 ::1 ::1 a 2\r\n"), V1Port { which: src }),
            (
                v1("PROXY TCP4 1.2.3.4 1.2.3.4 1 -2\r\n"),
                V1Port { which: dst },
            ),
            (v1("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n"), V1LineEnd),
            (v1("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\r\r\n"), V1LineEnd),
            (v1("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX"), V1LineEnd),
            (v1("PROXY UNKNOWN a\nb\r\n"), V1LineEnd),
            (v1("PROXY UNKNOWN a\rb\r\n"), V1LineEnd),
            (v1("PROXY UNKNOWN\n"), V1LineEnd),
            (
                v1(&format!("PROXY UNKNOWN {}\r\n", "a".repeat(93))),
                V1TooLong,
            ),
            (
                v1(&format!("PROXY UNKNOWN {}\r\n", "a".repeat(92))),
                V1TooLong,
            ),
            (v1(&format!("PROXY UNKNOWN {}", "a".repeat(200))), V1TooLong),
            (v2(0x11, 0x11, &inet_block()), V2Version(1)),
            (v2(0x31, 0x11, &inet_block()), V2Version(3)),
            (v2(0x01, 0x11, &inet_block()), V2Version(0)),
            (v2(0x22, 0x11, &inet_block()), V2Command(2)),
            (v2(0x2f, 0x11, &inet_block()), V2Command(15)),
            (v2(0x21, 0x41, &inet_block()), V2Family(4)),
            (v2(0x21, 0xf1, &inet_block()), V2Family(15)),
            (v2(0x21, 0x13, &inet_block()), V2Transport(3)),
            (v2(0x21, 0x12, &inet_block()), V2Datagram),
            (v2(0x21, 0x22, &[0; 36]), V2Datagram),
            (v2(0x21, 0x32, &[0; 216]), V2Datagram),
            (v2(0x21, 0x02, &[]), V2Datagram),
            (
                v2(0x21, 0x11, &inet_block()[..11]),
                V2TooShort {
                    len: 11,
                    needed: 12,
                    family: "AF_INET",
                },
            ),
            (
                v2(0x21, 0x21, &[0; 12]),
                V2TooShort {
                    len: 12,
                    needed: 36,
                    family: "AF_INET6",
                },
            ),
            (
                v2(0x21, 0x31, &[0; 36]),
                V2TooShort {
                    len: 36,
                    needed: 216,
                    family: "AF_UNIX",
                },
            ),
            (
                v2(0x21, 0x11, &[]),
                V2TooShort {
                    len: 0,
                    needed: 12,
                    family: "AF_INET",
                },
            ),
        ];
        let mut too_big = inet_block();
        too_big.extend(tlv(0x04, &vec![0; V2_MAX_LEN - 16 - 12 - 2]));
        cases.push((v2(0x21, 0x11, &too_big), V2TooLarge { total: 4097 }));
        cases.push((
            v2(0x20, 0x00, &vec![0; 65535]),
            V2TooLarge { total: 16 + 65535 },
        ));
        for stray in [&[0x04][..], &[0x04, 0x00], &[0x04, 0x00, 0x01]] {
            let mut body = inet_block();
            body.extend_from_slice(stray);
            cases.push((v2(0x21, 0x11, &body), V2Tlv { offset: 28 }));
        }
        let mut body = inet_block();
        body.extend(tlv(0x01, b"h2"));
        body.extend(tlv(0x02, b"example.com"));
        body.pop();
        cases.push((v2(0x21, 0x11, &body), V2Tlv { offset: 33 }));
        let mut unix = vec![0; 216];
        unix.extend_from_slice(&[0x05, 0xff]);
        cases.push((v2(0x21, 0x31, &unix), V2Tlv { offset: 232 }));
        let mut body = inet_block();
        body.extend(tlv(PP2_TYPE_CRC32C, &[0; 3]));
        cases.push((v2(0x21, 0x11, &body), V2Crc32cTlv));
        cases.push((
            with_crc(with_crc(v2(0x21, 0x11, &inet_block()))),
            V2Crc32cTlv,
        ));
        let mut bad_crc = with_crc(v2(0x21, 0x11, &inet_block()));
        bad_crc[16] ^= 1;
        cases.push((bad_crc, V2Checksum));
        let mut bad_crc = with_crc(v2(0x21, 0x11, &inet_block()));
        *bad_crc.last_mut().unwrap() ^= 0x80;
        cases.push((bad_crc, V2Checksum));
        cases
    }

    #[test]
    fn crc32c_matches_the_check_value() {
        // The standard check value of CRC-32C (RFC 3720, B.4 catalogue).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0; 32]), 0x8A91_36AA);
    }

    #[test]
    fn valid_headers_decode_and_leave_what_follows() {
        for (header, want) in valid() {
            assert_eq!(
                parse(&header),
                Ok(want),
                "{:?}",
                String::from_utf8_lossy(&header)
            );
            assert_eq!(want.consumed, header.len());
            for trailer in [
                &b"GET / HTTP/1.1\r\n\r\n"[..],
                b"\x16\x03\x01",
                b"\r\n",
                b"PROXY ",
            ] {
                let mut buf = header.clone();
                buf.extend_from_slice(trailer);
                assert_eq!(parse(&buf), Ok(want));
                assert_eq!(&buf[want.consumed..], trailer);
            }
        }
    }

    #[test]
    fn every_prefix_of_a_valid_header_is_incomplete() {
        for (header, want) in valid() {
            for k in 0..header.len() {
                match parse(&header[..k]) {
                    Err(Incomplete { at_least }) => {
                        assert!(at_least >= 1);
                        assert!(k + at_least <= header.len(), "lower bound at {k}");
                        if want.version == Version::V2 && k >= 16 {
                            assert_eq!(k + at_least, header.len(), "v2 is exact at {k}");
                        }
                    }
                    other => panic!("prefix {k} of {header:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn malformed_headers_are_refused_with_their_reason() {
        for (header, want) in invalid() {
            assert_eq!(
                parse(&header),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(&header)
            );
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn a_prefix_of_a_malformed_header_is_incomplete_or_the_same_error() {
        for (header, want) in invalid() {
            let mut seen = false;
            for k in 0..=header.len() {
                match parse(&header[..k]) {
                    Err(Incomplete { at_least }) => {
                        assert!(!seen, "{header:?}: incomplete at {k} after the error");
                        assert!(at_least >= 1);
                    }
                    Err(e) => {
                        assert_eq!(e, want, "{:?} at {k}", String::from_utf8_lossy(&header));
                        seen = true;
                    }
                    Ok(h) => panic!("{header:?} prefix {k} parsed: {h:?}"),
                }
            }
        }
    }

    #[test]
    fn garbage_is_refused_from_the_first_differing_byte() {
        assert_eq!(parse(b"G"), Err(NotProxyProtocol));
        assert_eq!(parse(b"\x16"), Err(NotProxyProtocol));
        assert_eq!(parse(b"\0"), Err(NotProxyProtocol));
        assert_eq!(parse(b"PO"), Err(NotProxyProtocol));
        assert_eq!(parse(b"\r\r"), Err(NotProxyProtocol));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIT\r"), Err(NotProxyProtocol));
        assert_eq!(parse(b""), Err(Incomplete { at_least: 15 }));
        assert_eq!(parse(b"P"), Err(Incomplete { at_least: 14 }));
        assert_eq!(parse(b"\r"), Err(Incomplete { at_least: 15 }));
        // Refused before the header's announced length has arrived.
        assert_eq!(parse(&v2(0x21, 0x12, &[])[..14]), Err(V2Datagram));
        assert_eq!(parse(&v2(0x23, 0x11, &[])[..13]), Err(V2Command(3)));
        let mut h = v2(0x21, 0x11, &[]);
        h[14..16].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(parse(&h), Err(V2TooLarge { total: 5016 }));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 x"),
            Err(V1Byte {
                byte: b'x',
                offset: 19,
                family: Family::Tcp4
            })
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 "),
            Err(V1Fields {
                family: Family::Tcp4
            })
        );
        // A complete line is judged at its CR, before the LF arrives.
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 99999\r"),
            Err(V1Port {
                which: Endpoint::Destination
            })
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\r"),
            Err(Incomplete { at_least: 1 })
        );
    }

    #[test]
    fn v1_limit_is_107_bytes_crlf_included() {
        let at_limit = format!("PROXY UNKNOWN {}\r\n", "a".repeat(92 - 1));
        assert_eq!(at_limit.len(), 107);
        assert_eq!(parse(at_limit.as_bytes()), Ok(local(107, Version::V1)));
        let over = format!("PROXY UNKNOWN {}\r\n", "a".repeat(92));
        assert_eq!(parse(over.as_bytes()), Err(V1TooLong));
        // No more than 107 bytes are ever needed to decide.
        let endless = format!("PROXY UNKNOWN {}", "a".repeat(92));
        assert_eq!(endless.len(), 106);
        assert!(matches!(parse(endless.as_bytes()), Err(Incomplete { .. })));
        assert_eq!(parse(format!("{endless}a").as_bytes()), Err(V1TooLong));
    }

    #[test]
    fn encode_v2_is_the_expected_bytes() {
        let h = encode_v2(sa("192.0.2.1:56324"), sa("198.51.100.7:443"));
        assert_eq!(h, v2(0x21, 0x11, &inet_block()));
        let h = encode_v2(sa("[2001:db8::1]:1"), sa("[::1]:2"));
        assert_eq!(h.len(), 52);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
    }

    #[test]
    fn encode_v2_round_trips() {
        for (s, d, ws, wd) in [
            ("1.2.3.4:5", "6.7.8.9:10", "1.2.3.4:5", "6.7.8.9:10"),
            (
                "[2001:db8::1]:0",
                "[::]:65535",
                "[2001:db8::1]:0",
                "[::]:65535",
            ),
            ("1.2.3.4:5", "[::1]:443", "[::ffff:1.2.3.4]:5", "[::1]:443"),
            (
                "[::1]:5",
                "10.0.0.1:443",
                "[::1]:5",
                "[::ffff:10.0.0.1]:443",
            ),
        ] {
            let h = encode_v2(sa(s), sa(d));
            assert_eq!(parse(&h), Ok(proxied(h.len(), ws, wd, Version::V2)));
        }
    }

    #[test]
    fn errors_say_what_was_wrong() {
        let e = V1Address {
            which: Endpoint::Destination,
            family: Family::Tcp4,
        };
        assert!(e.to_string().contains("destination address"), "{e}");
        assert!(e.to_string().contains("TCP4"), "{e}");
        assert!(V2TooLarge { total: 5000 }.to_string().contains("4096"));
        assert!(V1TooLong.to_string().contains("107"));
        assert!(Incomplete { at_least: 3 }.to_string().contains('3'));
    }

    fn socket_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ]
    }

    /// Prefixes that lead the parser past its first checks.
    fn lead() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(Vec::new()),
            Just(b"PROXY ".to_vec()),
            Just(b"PROXY TCP4 ".to_vec()),
            Just(b"PROXY TCP6 ".to_vec()),
            Just(b"PROXY UNKNOWN".to_vec()),
            Just(V2_SIGNATURE.to_vec()),
            Just([&V2_SIGNATURE[..], &[0x21, 0x11]].concat()),
            Just([&V2_SIGNATURE[..], &[0x21, 0x21]].concat()),
            Just([&V2_SIGNATURE[..], &[0x21, 0x31, 0x00]].concat()),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_never_reads_past_the_header(
            lead in lead(),
            tail in prop::collection::vec(any::<u8>(), 0..512),
            v1_text in "[0-9a-fA-F:. ]{0,100}\r\n",
        ) {
            for buf in [[&lead[..], &tail[..]].concat(), [&lead[..], v1_text.as_bytes(), &tail[..]].concat()] {
                match parse(&buf) {
                    Ok(h) => {
                        prop_assert!(h.consumed <= buf.len());
                        prop_assert!(h.consumed >= MIN_LEN);
                        prop_assert_eq!(h.source.is_none(), h.destination.is_none());
                        prop_assert_eq!(parse(&buf[..h.consumed]), Ok(h));
                    }
                    Err(Incomplete { at_least }) => prop_assert!(at_least >= 1),
                    Err(_) => {}
                }
            }
        }

        #[test]
        fn encode_v2_parses_back(src in socket_addr(), dst in socket_addr(), tail in prop::collection::vec(any::<u8>(), 0..64)) {
            let header = encode_v2(src, dst);
            let mut buf = header.clone();
            buf.extend_from_slice(&tail);
            let h = parse(&buf).unwrap();
            prop_assert_eq!(h.consumed, header.len());
            prop_assert_eq!(h.version, Version::V2);
            let same_family = src.is_ipv4() == dst.is_ipv4();
            let want = |a: SocketAddr| if same_family { a } else { SocketAddr::new(IpAddr::V6(as_v6(a.ip())), a.port()) };
            prop_assert_eq!(h.source, Some(want(src)));
            prop_assert_eq!(h.destination, Some(want(dst)));
        }

        #[test]
        fn v1_lines_std_formats_parse_back(src in socket_addr(), dst in socket_addr(), tail in prop::collection::vec(any::<u8>(), 0..64)) {
            let (src, dst) = if src.is_ipv4() == dst.is_ipv4() { (src, dst) } else { (src, SocketAddr::new(src.ip(), dst.port())) };
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            let line = format!("PROXY {family} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port());
            let mut buf = line.clone().into_bytes();
            buf.extend_from_slice(&tail);
            prop_assert_eq!(parse(&buf), Ok(proxied(line.len(), &src.to_string(), &dst.to_string(), Version::V1)));
        }
    }
}
