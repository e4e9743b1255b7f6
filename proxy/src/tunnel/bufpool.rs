//! Read buffers that exist only while bytes are in flight.
//!
//! An idle WebSocket spends its life waiting in `poll_read`. If each
//! direction owned a 16 KiB buffer, 100k idle connections would pin 3 GiB.
//! Instead a read borrows a buffer from a small per-thread free list for
//! the duration of one `poll_read`: on `Pending` the buffer goes straight
//! back (nothing was read into it), on `Ready` the bytes are forwarded and
//! the buffer is returned when dropped. Idle connections hold none.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::ops::Deref;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};

/// One TLS record's worth: a full record decrypts into one read.
pub const BUF_SIZE: usize = 16 * 1024;
/// Buffers kept per thread; only as many as are in flight at once are used,
/// so a small number bounds the pool's own footprint.
const MAX_FREE_PER_THREAD: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// Bytes read by [`read`]; the buffer returns to the pool on drop.
pub struct Filled {
    buf: Option<Box<[u8]>>,
    len: usize,
}

impl Deref for Filled {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[..self.len],
            None => &[],
        }
    }
}

impl Drop for Filled {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            give_back(b);
        }
    }
}

fn take() -> Box<[u8]> {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

fn give_back(b: Box<[u8]>) {
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < MAX_FREE_PER_THREAD {
            f.push(b);
        }
    });
}

/// Reads once. An empty result means end of stream. Cancel-safe: dropping
/// the future before it completes loses no data.
pub async fn read<R: AsyncRead + Unpin + ?Sized>(reader: &mut R) -> io::Result<Filled> {
    poll_fn(|cx| {
        let mut buf = take();
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let len = rb.filled().len();
                Poll::Ready(Ok(Filled {
                    buf: Some(buf),
                    len,
                }))
            }
            Poll::Ready(Err(e)) => {
                give_back(buf);
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                give_back(buf);
                Poll::Pending
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(flavor = "current_thread")]
    async fn reads_and_recycles() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(b"hello").await.unwrap();
        let got = read(&mut b).await.unwrap();
        assert_eq!(&*got, b"hello");
        drop(got);
        let free_before = FREE.with(|f| f.borrow().len());
        assert!(free_before >= 1, "buffer returned to the pool");
        drop(a);
        let eof = read(&mut b).await.unwrap();
        assert!(eof.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pending_read_holds_no_buffer() {
        let (_a, mut b) = tokio::io::duplex(64);
        let free_before = FREE.with(|f| f.borrow().len());
        let r = tokio::time::timeout(std::time::Duration::from_millis(20), read(&mut b)).await;
        assert!(r.is_err(), "nothing to read yet");
        let free_after = FREE.with(|f| f.borrow().len());
        assert_eq!(
            free_after,
            free_before.max(1),
            "the buffer went back while waiting"
        );
    }
}
