//! Warm leases: dedicated connections kept handshaken in advance for each pool state, so a client
//! that starts a transaction (or blocks, or subscribes) takes one without a connect or a handshake.
//!
//! A lease enters the warm set only after a check round trip on its own connection succeeded: `PING`
//! for a fresh one (its driver handshook it on connect), `RESET` plus the state's handshake for a
//! given-back one, which leaves it exactly as a fresh connection in that state (db, user, protocol,
//! no name, no WATCH, MULTI, subscriptions or reply mode). A check that fails or does not finish
//! within its limit closes the connection. The set is bounded per state (`warm_leases`), and every
//! lease in it or on its way counts against `max_leases`: a ready one holds its permit, and the
//! permits of those being checked are held here, so a client that needs a lease when none is free
//! takes a warm lease's permit at once (that lease closes; one being checked closes when its check
//! ends, so Redis may briefly see it beside the client's).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::OwnedSemaphorePermit;

use crate::command::Shape;
use crate::pool::{Lease, PoolKey};
use crate::reply::Lane;

/// Where a warm lease is kept: the state it was handshaken in and its server.
pub type Place = (PoolKey, Lane);
use crate::reply::{self, Response};
use crate::resp::{self, ReplyScanner};
use crate::upstream::Request;

/// The warm leases of every state, and how many are on their way.
#[derive(Debug)]
pub struct Warm {
    /// Most warm leases per state (`warm_leases`); 0 disables the set.
    per_key: usize,
    /// How long a check round trip may take (a fresh lease connects first).
    limit: Duration,
    state: Mutex<WarmState>,
}

#[derive(Debug, Default)]
struct WarmState {
    /// Checked leases, ready to lend, per state.
    ready: HashMap<Place, Vec<Lease>>,
    /// Leases being checked, per state (counted so a burst does not start too many).
    preparing: HashMap<Place, usize>,
    /// The permits of the leases being checked; one goes back to each that passes, while any are
    /// left. A client that needs a lease may take one.
    held: Vec<OwnedSemaphorePermit>,
    /// Bumped when the upstream is replaced: leases made before are never kept.
    generation: u64,
}

impl Warm {
    /// An empty set keeping at most `per_key` leases per state, whose checks may take `limit`.
    pub fn new(per_key: usize, limit: Duration) -> Self {
        Warm {
            per_key,
            limit,
            state: Mutex::new(WarmState::default()),
        }
    }

    /// The current generation (a lease records it when made).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// A ready lease in `key`'s state whose connection is still up; those found down are closed.
    pub fn take(&self, key: &Place) -> Option<Lease> {
        let mut state = self.lock();
        let ready = state.ready.get_mut(key)?;
        while let Some(lease) = ready.pop() {
            if lease.handle().is_up() {
                return Some(lease);
            }
        }
        None
    }

    /// A permit for a client that needs a lease now: a ready lease's (of any state; it closes),
    /// else that of one being checked. `None` when the set holds none.
    pub fn evict_one(&self) -> Option<OwnedSemaphorePermit> {
        let mut state = self.lock();
        let ready = state.ready.values_mut().find_map(|leases| leases.pop());
        match ready {
            Some(mut lease) => lease.take_permit(),
            None => state.held.pop(),
        }
    }

    /// Room for one more lease in `key`'s state, counting those being checked: when there is, it
    /// is reserved (the caller must then [`Warm::prepare`] one).
    pub fn reserve(&self, key: &Place) -> bool {
        let mut state = self.lock();
        let have = state.ready.get(key).map_or(0, Vec::len)
            + state.preparing.get(key).copied().unwrap_or(0);
        if have >= self.per_key {
            return false;
        }
        *state.preparing.entry(key.clone()).or_default() += 1;
        true
    }

    /// Runs `commands` on the lease's connection in the background and keeps the lease when every
    /// reply is a success, it is still current and there is room; otherwise closes it. Needs a
    /// [`Warm::reserve`] first.
    pub fn prepare(self: &Arc<Self>, mut lease: Lease, commands: Vec<Bytes>) {
        if let Some(permit) = lease.take_permit() {
            self.lock().held.push(permit);
        }
        let warm = self.clone();
        tokio::spawn(async move {
            let checked = tokio::time::timeout(warm.limit, check(&lease, &commands)).await;
            let mut state = warm.lock();
            let key = (lease.key().clone(), lease.lane());
            if let Some(n) = state.preparing.get_mut(&key) {
                *n = n.saturating_sub(1);
            }
            let current = lease.generation() == state.generation;
            let Some(permit) = state.held.pop() else {
                return;
            };
            lease.set_permit(permit);
            let ready = state.ready.entry(key).or_default();
            if matches!(checked, Ok(true)) && current && ready.len() < warm.per_key {
                ready.push(lease);
            }
        });
    }

    /// Closes every ready lease and makes those on their way stale (the upstream changed).
    pub fn clear(&self) {
        let mut state = self.lock();
        state.generation += 1;
        state.ready.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WarmState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sends `commands` on the lease's connection and waits for their replies: true when none is an
/// error and the connection answered them all.
async fn check(lease: &Lease, commands: &[Bytes]) -> bool {
    let Ok(count) = u32::try_from(commands.len()) else {
        return false;
    };
    let mut bytes = BytesMut::new();
    for c in commands {
        bytes.extend_from_slice(c);
    }
    let (tx, mut rx) = reply::mailbox();
    let request = Request {
        bytes: bytes.freeze(),
        count,
        shape: Shape::One,
        reply: tx,
        stream: false,
    };
    if lease.handle().send(request).await.is_err() {
        return false;
    }
    let mut answered = 0;
    while answered < count {
        match rx.recv().await.1 {
            Response::Replies { bytes, count } if all_succeeded(&bytes) => answered += count,
            _ => return false,
        }
    }
    true
}

/// True when no reply frame in `bytes` is an error (`-` or RESP3 `!`).
fn all_succeeded(mut bytes: &[u8]) -> bool {
    let mut scanner = ReplyScanner::new(resp::DEFAULT_MAX_REPLY_DEPTH);
    while !bytes.is_empty() {
        match scanner.scan(bytes) {
            Ok(Some(frame)) if !matches!(bytes[0], b'-' | b'!') => bytes = &bytes[frame.len..],
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_anywhere_fail_the_check() {
        assert!(all_succeeded(b"+RESET\r\n+OK\r\n%1\r\n+proto\r\n:3\r\n"));
        assert!(!all_succeeded(b"+RESET\r\n-WRONGPASS nope\r\n"));
        assert!(!all_succeeded(b"+RESET\r\n!5\r\nERR x\r\n"));
        assert!(!all_succeeded(b"+RESET\r\n+O"));
    }
}
