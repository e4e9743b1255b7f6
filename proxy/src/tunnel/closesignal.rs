//! Why a tunnel closes ([`CloseCause`], and the code each side then gets),
//! and the one-word mailbox through which the tunnel learns it.
//!
//! Every live tunnel has one [`CloseSignal`], shared by the tunnel (whose
//! pumps decide causes themselves: a peer vanished, bad framing, idle) and
//! the registry (through which the control plane asks: drain, rebalance,
//! shutdown). The first cause set wins and later ones are ignored, so a
//! connection already closing keeps the code it was given.
//!
//! It is an atomic word and a waker slot, about 40 bytes: an idle tunnel
//! costs what it holds, and a `tokio::sync::watch` channel here (as before)
//! cost several hundred bytes per connection.

use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use super::frame::close_code;

/// Why wsgate itself ends a session. Decides the code each side receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The backend connection died without a Close: the client gets 1014.
    BackendGone,
    /// The client vanished without a Close: the backend gets 1001.
    ClientGone,
    /// The client answered nothing, not even wsgate's heartbeat Ping, for
    /// the route's `heartbeat.interval + timeout`: as `ClientGone`.
    Heartbeat,
    /// No bytes either way for the idle timeout: both get 1001.
    Idle,
    /// wsgate is shutting down or upgrading: both get 1001.
    Shutdown,
    /// A reload removed the listener the client came in on: both get 1001.
    ListenerRemoved,
    /// The backend is drained, removed or rebalanced away: the client gets
    /// this code (1012 by default), the backend 1001.
    Drain(u16),
    /// The client broke the framing rules (1002) or a limit (1009).
    ClientProtocol(u16),
    /// The backend broke the framing rules (1002) or sent a message over
    /// the limit (1009). The backend gets that code; the client gets 1009
    /// for a message too big (as it would for its own), else 1014.
    BackendProtocol(u16),
}

impl CloseCause {
    /// Code and reason for the client, or None when the client is gone.
    pub(crate) fn to_client(self) -> Option<(u16, &'static str)> {
        match self {
            CloseCause::BackendGone => Some((close_code::BAD_GATEWAY, "backend connection lost")),
            CloseCause::ClientGone | CloseCause::Heartbeat => None,
            CloseCause::Idle => Some((close_code::GOING_AWAY, "idle timeout")),
            CloseCause::Shutdown => Some((close_code::GOING_AWAY, "proxy shutting down")),
            CloseCause::ListenerRemoved => Some((close_code::GOING_AWAY, "listener removed")),
            CloseCause::Drain(code) => Some((code, "backend draining, please reconnect")),
            CloseCause::ClientProtocol(code) => Some((code, "invalid frame")),
            CloseCause::BackendProtocol(close_code::TOO_BIG) => {
                Some((close_code::TOO_BIG, "backend message too big"))
            }
            CloseCause::BackendProtocol(_) => {
                Some((close_code::BAD_GATEWAY, "backend sent an invalid frame"))
            }
        }
    }

    /// Code and reason for the backend, or None when the backend is gone.
    pub(crate) fn to_backend(self) -> Option<(u16, &'static str)> {
        match self {
            CloseCause::BackendGone => None,
            CloseCause::BackendProtocol(close_code::TOO_BIG) => {
                Some((close_code::TOO_BIG, "message too big"))
            }
            CloseCause::BackendProtocol(_) => Some((close_code::PROTOCOL_ERROR, "invalid frame")),
            _ => Some((close_code::GOING_AWAY, "client gone")),
        }
    }
}

#[derive(Debug, Default)]
pub struct CloseSignal {
    /// [`encode`]d cause; 0 while none is set.
    cause: AtomicU32,
    waiter: AtomicWaker,
}

impl CloseSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the cause unless one is already set, and wakes the tunnel.
    /// Returns whether this call set it.
    pub fn request(&self, cause: CloseCause) -> bool {
        let set = self.set(cause);
        if set {
            self.waiter.wake();
        }
        set
    }

    /// Sets the cause unless one is already set, without waking anyone: for
    /// the tunnel's own task, which rechecks after every poll.
    pub fn set(&self, cause: CloseCause) -> bool {
        self.cause
            .compare_exchange(0, encode(cause), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn cause(&self) -> Option<CloseCause> {
        decode(self.cause.load(Ordering::Acquire))
    }

    /// Ready with the cause once one is set; wakes the polling task when
    /// [`request`](Self::request) sets it later.
    pub fn poll_cause(&self, cx: &mut Context<'_>) -> Poll<CloseCause> {
        self.waiter.register(cx.waker());
        match self.cause() {
            Some(cause) => Poll::Ready(cause),
            None => Poll::Pending,
        }
    }
}

/// Kind in the high half, close code (where the kind has one) in the low.
fn encode(cause: CloseCause) -> u32 {
    let (kind, code) = match cause {
        CloseCause::BackendGone => (1, 0),
        CloseCause::ClientGone => (2, 0),
        CloseCause::Heartbeat => (8, 0),
        CloseCause::Idle => (3, 0),
        CloseCause::Shutdown => (4, 0),
        CloseCause::Drain(code) => (5, code),
        CloseCause::ClientProtocol(code) => (6, code),
        CloseCause::BackendProtocol(code) => (7, code),
        CloseCause::ListenerRemoved => (9, 0),
    };
    (kind << 16) | u32::from(code)
}

fn decode(word: u32) -> Option<CloseCause> {
    let code = (word & 0xffff) as u16;
    Some(match word >> 16 {
        1 => CloseCause::BackendGone,
        2 => CloseCause::ClientGone,
        3 => CloseCause::Idle,
        4 => CloseCause::Shutdown,
        5 => CloseCause::Drain(code),
        6 => CloseCause::ClientProtocol(code),
        7 => CloseCause::BackendProtocol(code),
        8 => CloseCause::Heartbeat,
        9 => CloseCause::ListenerRemoved,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_cause_round_trips() {
        for cause in [
            CloseCause::BackendGone,
            CloseCause::ClientGone,
            CloseCause::Heartbeat,
            CloseCause::ListenerRemoved,
            CloseCause::Idle,
            CloseCause::Shutdown,
            CloseCause::Drain(1012),
            CloseCause::Drain(4000),
            CloseCause::ClientProtocol(1002),
            CloseCause::ClientProtocol(1009),
            CloseCause::BackendProtocol(1002),
            CloseCause::BackendProtocol(1009),
        ] {
            assert_eq!(decode(encode(cause)), Some(cause));
        }
        assert_eq!(decode(0), None);
    }

    #[test]
    fn an_oversize_backend_message_is_1009_to_both_sides() {
        let too_big = CloseCause::BackendProtocol(close_code::TOO_BIG);
        assert_eq!(too_big.to_client().map(|c| c.0), Some(1009));
        assert_eq!(too_big.to_backend().map(|c| c.0), Some(1009));
        let bad = CloseCause::BackendProtocol(close_code::PROTOCOL_ERROR);
        assert_eq!(bad.to_client().map(|c| c.0), Some(1014));
        assert_eq!(bad.to_backend().map(|c| c.0), Some(1002));
    }

    #[test]
    fn first_cause_wins() {
        let s = CloseSignal::new();
        assert_eq!(s.cause(), None);
        assert!(s.request(CloseCause::Drain(1012)));
        assert!(!s.set(CloseCause::Idle));
        assert!(!s.request(CloseCause::Shutdown));
        assert_eq!(s.cause(), Some(CloseCause::Drain(1012)));
    }

    #[tokio::test]
    async fn request_wakes_a_waiting_task() {
        let s = Arc::new(CloseSignal::new());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { std::future::poll_fn(|cx| s.poll_cause(cx)).await }
        });
        tokio::task::yield_now().await;
        s.request(CloseCause::Shutdown);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await;
        assert_eq!(got.ok().and_then(Result::ok), Some(CloseCause::Shutdown));
    }
}
