//! A queue of byte chunks drained by vectored writes: the write side of both client sessions and
//! upstream connections.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::AsyncWrite;

/// Chunks handed to one `write_vectored` call at most.
const MAX_IOV: usize = 64;

/// Bytes waiting to be written, as the `Bytes` they arrived in (never copied here).
#[derive(Debug, Default)]
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    bytes: usize,
}

impl Chunks {
    /// Appends a chunk (empty chunks are skipped).
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.bytes += bytes.len();
            crate::spare::push_back(&mut self.chunks, bytes);
        }
    }

    /// True when nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes left to write.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Points `iov` at the first chunks; returns how many it filled.
    fn fill_iov<'b>(&'b self, iov: &mut [IoSlice<'b>; MAX_IOV]) -> usize {
        let mut n = 0;
        for chunk in self.chunks.iter().take(MAX_IOV) {
            iov[n] = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    /// One vectored write of the first chunks; returns how many bytes the socket took (the caller
    /// then calls `advance`). Cancel-safe: a cancelled call wrote nothing.
    /// The slices are built on each poll, so the future holds no buffer of its own (it lives in
    /// every session's state).
    pub fn write_to<'a, W: AsyncWrite + Unpin>(
        &'a self,
        wr: &'a mut W,
    ) -> impl Future<Output = std::io::Result<usize>> + 'a {
        std::future::poll_fn(move |cx| self.poll_write(cx, wr))
    }

    /// One write attempt now, without waiting: `None` when the socket cannot take bytes yet.
    pub fn write_now<W: AsyncWrite + Unpin>(&self, wr: &mut W) -> Option<std::io::Result<usize>> {
        // A no-op waker is enough: on `Pending` the caller's next `write_to` registers its own.
        match self.poll_write(&mut Context::from_waker(Waker::noop()), wr) {
            Poll::Ready(result) => Some(result),
            Poll::Pending => None,
        }
    }

    /// A single chunk goes out with a plain write (cheaper in the kernel than a one-element
    /// `writev`); several with one vectored write.
    fn poll_write<W: AsyncWrite + Unpin>(
        &self,
        cx: &mut Context<'_>,
        wr: &mut W,
    ) -> Poll<std::io::Result<usize>> {
        if self.chunks.len() == 1 {
            return Pin::new(&mut *wr).poll_write(cx, &self.chunks[0]);
        }
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = self.fill_iov(&mut iov);
        Pin::new(&mut *wr).poll_write_vectored(cx, &iov[..n])
    }

    /// Drops the first `n` bytes (they were written).
    pub fn advance(&mut self, mut n: usize) {
        self.bytes -= n.min(self.bytes);
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn advance_walks_across_chunks() {
        let mut c = Chunks::default();
        c.push(Bytes::from_static(b"abc"));
        c.push(Bytes::new());
        c.push(Bytes::from_static(b"defg"));
        assert_eq!(c.bytes(), 7);
        let mut written = Vec::new();
        assert_eq!(c.write_to(&mut written).await.ok(), Some(7));
        assert_eq!(written, b"abcdefg");
        c.advance(4);
        assert_eq!(c.bytes(), 3);
        let mut rest = Vec::new();
        assert_eq!(c.write_to(&mut rest).await.ok(), Some(3));
        assert_eq!(rest, b"efg");
        c.advance(3);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }
}
