//! Closing the sessions of a user Redis no longer lets in, as soon as respipe can know.
//!
//! Redis closes every connection of a user at `ACL DELUSER` (it keeps them when the user is
//! turned `off` or its password changes). respipe's sessions have no connection of their own: the
//! closed ones are the user's shared pool connections, whose drivers reconnect at once and are
//! refused at `AUTH`. That refusal closes every session in that pool's state (db, protocol and the
//! same user *and password*: another password of the same user may still be valid), idle ones
//! included, but those holding a lease that is still up (a transaction, a subscription, a
//! blocking command): Redis kept that connection, so it has not deleted the user, and the session
//! stays as its connection would (after a password change, a lost pool connection is no reason to
//! close a client whose own connection lives).
//!
//! What respipe cannot see, it cannot act on: a user with no pool connection (its sessions only
//! authenticated, on a probe) is caught at its sessions' next command, whose new connection is
//! refused. And a refusal after a password change looks the same as a deletion, so when a
//! pool's connection is lost then (a network failure, `CLIENT KILL`), its sessions close too:
//! respipe cannot re-authenticate a user whose password it no longer knows.

use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Shared;
use crate::upstream::WeakHandle;

/// Runs until `shutdown`: each time a shared pool's user is refused or a lease is lost (`events`,
/// from `Pools::user_events`), kills the sessions in every refused pool's state but those whose
/// lease is up. Whichever of a pool's refusal and a lease's loss comes last finds both.
pub async fn close_refused(shared: Weak<Shared>, events: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = events.notified() => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let refused = shared.pools.refused();
        if refused.is_empty() {
            continue;
        }
        let closed = shared.clients.kill_where(|snapshot| {
            snapshot
                .shared
                .as_ref()
                .is_some_and(|key| refused.contains(key))
                && !snapshot.lease.as_ref().is_some_and(WeakHandle::is_up)
        });
        debug!(
            sessions = closed,
            "Redis refuses a user of a shared pool; closed its sessions"
        );
    }
}
