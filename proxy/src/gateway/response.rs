//! A backend's response body on its way to the client, watched so that a
//! client that stops reading cannot hold a connection (and a backend
//! connection) forever.
//!
//! hyper polls the body only when it can write more to the client, so a
//! body that is not polled while the backend has data ready means the
//! client is not reading. The body records each poll in the connection's
//! [`ResponseProgress`]; the edge's write timer (`edge::server`) closes a
//! connection whose in-flight response made no progress for
//! `timeouts.write` while not waiting on the backend. A backend that is
//! slow to produce (server-sent events between events, a long-poll) is not
//! the client's fault and is not cut by this timer.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::ClientInfo;

/// The state of the response being written on one client connection.
#[derive(Debug, Default)]
pub struct ResponseProgress {
    in_flight: AtomicBool,
    /// Polls of the body that found data or the end.
    progress: AtomicU64,
    /// The last poll found the backend had nothing yet.
    waiting_on_backend: AtomicBool,
    /// Signalled when a response starts, so the write timer runs only on
    /// connections that have one (never on the way to an upgrade).
    started: tokio::sync::Notify,
}

impl ResponseProgress {
    /// A token that changes whenever the response moves; `None` when no
    /// response is being written or the backend is the one being waited on.
    pub fn stall_token(&self) -> Option<u64> {
        (self.in_flight.load(Relaxed) && !self.waiting_on_backend.load(Relaxed))
            .then(|| self.progress.load(Relaxed))
    }

    /// Resolves once the connection's first watched response has started.
    pub async fn first_response(&self) {
        self.started.notified().await;
    }
}

/// A response body that reports into its connection's [`ResponseProgress`]:
/// a backend's streamed body, or a refusal relayed whole.
pub struct WatchedBody<B = Incoming> {
    inner: B,
    client: Arc<ClientInfo>,
}

impl<B> WatchedBody<B> {
    pub fn new(inner: B, client: Arc<ClientInfo>) -> Self {
        let p = &client.response;
        p.waiting_on_backend.store(false, Relaxed);
        p.progress.fetch_add(1, Relaxed);
        p.in_flight.store(true, Relaxed);
        p.started.notify_one();
        WatchedBody { inner, client }
    }
}

impl<B> Drop for WatchedBody<B> {
    fn drop(&mut self) {
        self.client.response.in_flight.store(false, Relaxed);
    }
}

impl<B: Body<Data = bytes::Bytes> + Unpin> Body for WatchedBody<B> {
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let p = &self.client.response;
        p.waiting_on_backend.store(polled.is_pending(), Relaxed);
        match &polled {
            Poll::Pending => {}
            Poll::Ready(Some(_)) => {
                p.progress.fetch_add(1, Relaxed);
            }
            Poll::Ready(None) => p.in_flight.store(false, Relaxed),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_response_or_a_backend_wait_is_never_a_stall() {
        let p = ResponseProgress::default();
        assert_eq!(p.stall_token(), None);
        p.in_flight.store(true, Relaxed);
        let first = p.stall_token();
        assert!(first.is_some());
        p.progress.fetch_add(1, Relaxed);
        assert_ne!(p.stall_token(), first, "progress changes the token");
        p.waiting_on_backend.store(true, Relaxed);
        assert_eq!(p.stall_token(), None);
    }
}
