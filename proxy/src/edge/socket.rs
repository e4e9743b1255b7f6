//! Taking an accepted connection out of pingora's stream wrapper.
//!
//! pingora owns the listening sockets (so a zero-downtime upgrade can hand
//! them to the next process) and accepts connections. Its per-connection
//! `Stream` wraps the socket in timing digests, tracing hooks and a
//! read/write buffer layer that every byte of every message would cross,
//! and it offers no way to get the socket back. An idle tunnel should be
//! nothing but its sockets, its frame trackers and its task, so wsgate
//! duplicates the descriptor into a plain tokio `TcpStream` and drops the
//! wrapper: one `fcntl(F_DUPFD_CLOEXEC)` per connection, after which TLS,
//! HTTP and the tunnel run on the bare socket with concrete types (no
//! dynamic dispatch, no lock to split it in two).
//!
//! This is the crate's only `unsafe`: borrowing a raw descriptor is unsafe
//! because the compiler cannot see that it stays open; here it is borrowed
//! from a stream that is alive for the whole call.

use std::os::fd::{AsRawFd, BorrowedFd};

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot duplicate the accepted socket: {0}")]
    Dup(std::io::Error),
    #[error("the accepted connection is not a TCP socket")]
    NotTcp,
    #[error("cannot register the accepted socket with the runtime: {0}")]
    Register(std::io::Error),
}

/// A tokio `TcpStream` for the connection `stream` carries. The caller
/// drops `stream` afterwards; the connection stays open through the
/// duplicate, and closing the original descriptor sends nothing to the peer.
pub fn take_over(stream: &Stream) -> Result<TcpStream, SocketError> {
    let l4 = stream
        .as_any()
        .downcast_ref::<L4Stream>()
        .ok_or(SocketError::NotTcp)?;
    let fd = l4.as_raw_fd();
    // SAFETY: `fd` belongs to `stream`, which outlives this borrow; the
    // borrow is only used to duplicate it.
    #[allow(unsafe_code)]
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().map_err(SocketError::Dup)?;
    // A duplicate shares the open file description (so O_NONBLOCK, which
    // tokio needs) and the socket (so TCP_NODELAY, which pingora set at
    // accept): nothing to set again, no system call spent.
    let std_stream = std::net::TcpStream::from(owned);
    TcpStream::from_std(std_stream).map_err(SocketError::Register)
}
