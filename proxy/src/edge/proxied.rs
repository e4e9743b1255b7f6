//! The client address of a connection on a listener behind an L4 load
//! balancer (`listeners[].proxy_protocol`): the PROXY protocol header
//! (`proxyproto`) that the balancer sends first, read off the socket
//! before TLS or HTTP sees a byte.
//!
//! Only peers in `accept_from` may send one, and they must: a connection
//! from anyone else is refused at once (a client that could set its own
//! address could walk `client_ip` hashing and per-IP limits), and one from
//! an allowed peer without a valid header within the handshake timeout is
//! closed. The header is peeked, then exactly its bytes are consumed, so
//! whatever follows (a ClientHello, a request head) is left for the next
//! layer untouched.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::proxyproto::{self, ProxyError, V2_MAX_LEN};

#[derive(Debug, thiserror::Error)]
pub enum ProxiedError {
    #[error("{0} is not allowed to send a PROXY protocol header")]
    NotAllowed(SocketAddr),
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before its PROXY protocol header ended")]
    Closed,
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(ProxyError),
    #[error("cannot read the PROXY protocol header: {0}")]
    Io(std::io::Error),
}

/// Reads the PROXY header a trusted balancer at `peer` sent on `tcp`, and
/// returns the client address it carries (or `peer` itself for a LOCAL
/// header, as balancers send for their own health checks).
pub async fn client_address(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    accept_from: &[ipnet::IpNet],
    timeout: Duration,
) -> Result<SocketAddr, ProxiedError> {
    let ip = peer.ip().to_canonical();
    if !accept_from.iter().any(|net| net.contains(&ip)) {
        return Err(ProxiedError::NotAllowed(peer));
    }
    match tokio::time::timeout(timeout, read_header(tcp)).await {
        Err(_) => Err(ProxiedError::Timeout(timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(source)) => Ok(source.unwrap_or(peer)),
    }
}

async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, ProxiedError> {
    // v1 fits in 107 bytes and a v2 header from a real balancer in a few
    // hundred; grow to the cap only for a header that says it needs it.
    let mut buf = vec![0u8; 512];
    loop {
        let n = tcp.peek(&mut buf).await.map_err(ProxiedError::Io)?;
        if n == 0 {
            return Err(ProxiedError::Closed);
        }
        match proxyproto::parse(&buf[..n]) {
            Ok(header) => {
                let mut consumed = vec![0u8; header.consumed];
                tcp.read_exact(&mut consumed)
                    .await
                    .map_err(ProxiedError::Io)?;
                return Ok(header.source);
            }
            Err(ProxyError::Incomplete { at_least }) => {
                let wanted = (n + at_least).min(V2_MAX_LEN);
                if wanted > buf.len() {
                    buf.resize(wanted, 0);
                } else {
                    // Peeking again at once would return the same bytes: the
                    // socket stays readable while they sit unread. Headers
                    // arrive in one segment in practice, so this wait is rare.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Err(e) => return Err(ProxiedError::Invalid(e)),
        }
    }
}
