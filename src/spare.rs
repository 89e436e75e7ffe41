//! What an idle session keeps, kept small. Spare read buffers: an idle session gives its read
//! buffer back, the next readable session takes one, so a non-pipelined client costs no allocation
//! per command and an idle one holds no buffer at all. And per-session queues that start with room
//! for one entry ([`push_back`]).
//!
//! The spares are per thread (the proxy runs on one), bounded in number and in size, so the pool
//! holds at most `MAX_SPARES × MAX_SPARE_BYTES`.

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::BytesMut;

/// Spare buffers kept at most. Sized for the clients active at once in a busy proxy: each holds a
/// buffer from its request until its reply, and a pool smaller than that frees and reallocates
/// the difference on every round of replies. At most 4 MiB at the 4 KiB a buffer starts with.
const MAX_SPARES: usize = 1024;
/// Buffers larger than this are freed rather than kept (a client that sent a 1 MB value should not
/// leave 1 MB in the pool).
const MAX_SPARE_BYTES: usize = 8 * 1024;

thread_local! {
    static SPARES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `min` bytes: a spare if one is big enough, else a new one.
pub fn take(min: usize) -> BytesMut {
    let spare = SPARES.with_borrow_mut(|spares| match spares.last() {
        Some(b) if b.capacity() >= min => spares.pop(),
        _ => None,
    });
    spare.unwrap_or_else(|| BytesMut::with_capacity(min))
}

/// Takes an empty buffer back. Kept only if it has room for `min` bytes without allocating (the
/// room requests split from it took is reclaimed once no `Bytes` of them is alive) and is small;
/// otherwise dropped.
pub fn give(mut buf: BytesMut, min: usize) {
    debug_assert!(buf.is_empty());
    if buf.capacity() > MAX_SPARE_BYTES || !buf.try_reclaim(min) {
        return;
    }
    SPARES.with_borrow_mut(|spares| {
        if spares.len() < MAX_SPARES {
            spares.push(buf);
        }
    });
}

/// Appends to a per-session queue whose first allocation has room for one entry, not the four a
/// first `push_back` makes: a client that does not pipeline never needs more, and an idle client
/// keeps what its queues once took.
pub fn push_back<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.capacity() == 0 {
        queue.reserve_exact(1);
    }
    queue.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again() {
        let buf = take(4096);
        let ptr = buf.as_ptr();
        give(buf, 4096);
        let again = take(4096);
        assert_eq!(again.as_ptr(), ptr, "the spare is reused, not reallocated");
        assert!(again.is_empty() && again.capacity() >= 4096);
    }

    #[test]
    fn shared_or_large_buffers_are_not_kept() {
        let mut buf = take(4096);
        buf.extend_from_slice(b"GET k\r\n");
        let request = buf.split().freeze();
        let ptr = buf.as_ptr();
        give(buf, 4096);
        assert_ne!(
            take(1).as_ptr(),
            ptr,
            "a buffer still shared with a request is not kept"
        );
        drop(request);

        let mut buf = take(4096);
        buf.extend_from_slice(b"GET k\r\n");
        let start = buf.as_ptr();
        drop(buf.split().freeze());
        give(buf, 4096);
        let again = take(4096);
        assert_eq!(
            again.as_ptr(),
            start,
            "once the request is gone, its room is reclaimed"
        );
        assert!(again.capacity() >= 4096);

        let big = BytesMut::with_capacity(MAX_SPARE_BYTES * 2);
        let ptr = big.as_ptr();
        give(big, 4096);
        assert_ne!(take(1).as_ptr(), ptr, "a large buffer is freed, not kept");
    }

    #[test]
    fn the_pool_is_bounded() {
        let bufs: Vec<BytesMut> = (0..MAX_SPARES + 10).map(|_| take(64)).collect();
        for b in bufs {
            give(b, 64);
        }
        assert_eq!(SPARES.with_borrow(Vec::len), MAX_SPARES);
    }
}
