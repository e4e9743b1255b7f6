//! Which I/O errors are this host's fault rather than a peer's. Pure.
//!
//! A connect that fails because wsgate ran out of descriptors, buffers or
//! memory says nothing about the backend, and counting it as a failure
//! would let one flood of clients (which is what exhausts descriptors) mark
//! every backend down. Health checks and the data path both ask here
//! before they blame a backend.

use std::io;

/// EMFILE, ENFILE, ENOBUFS or ENOMEM: the process or the host is out of a
/// resource; the peer was never reached.
pub fn is_local_resource_error(e: &io::Error) -> bool {
    // Linux values; wsgate is Linux-only (pingora, the descriptor handoff).
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS: i32 = 105;
    matches!(e.raw_os_error(), Some(ENOMEM | ENFILE | EMFILE | ENOBUFS))
        || e.kind() == io::ErrorKind::OutOfMemory
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_exhaustion_is_told_from_a_peer_fault() {
        for local in [12, 23, 24, 105] {
            assert!(is_local_resource_error(&io::Error::from_raw_os_error(
                local
            )));
        }
        for peer in [
            111, /* ECONNREFUSED */
            104, /* ECONNRESET */
            113, 110,
        ] {
            assert!(!is_local_resource_error(&io::Error::from_raw_os_error(
                peer
            )));
        }
    }
}
