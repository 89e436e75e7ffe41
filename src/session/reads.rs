//! The session's reads on replicas (`read_from`): which lane each command of an unsharded
//! upstream with replicas goes to, and read-your-writes.
//!
//! Lane 0 is the primary, lanes 1.. the replicas ([`crate::replicas`]). A command goes to a
//! replica only when respipe knows it is a read (`command::is_read`), it is a plain command on the
//! shared pool (never on a lease: a transaction, `WATCH`, a blocking command, a subscription,
//! tracking), and the session has not sent a command that may write (`command::may_write`)
//! within `read_your_writes`. Everything else goes to lane 0. Replies come back in command order through the reorder buffer (`lanes.rs`), as they do
//! for shards: per lane the session keeps one connection while commands are in flight there.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;

use crate::command::{self, Args, Kind};
use crate::replicas::Replicated;
use crate::reply::{ErrorReply, Lane};

use super::lanes::Placed;
use super::{Close, Session};

impl Session {
    /// True when reads of the session's upstream may go to replicas.
    pub(super) fn replicated(&self) -> bool {
        self.pool.layout().replicas().is_some()
    }

    /// The lane of a plain command (`name`, `args`) under `policy`: a replica for a read the
    /// session may send there, else the primary (a command that may write also restarts the
    /// read-your-writes window). `None`: a read refused, no replica being up (`replica`).
    pub(super) fn read_lane(
        &self,
        policy: &Replicated,
        name: &[u8],
        args: Args<'_>,
    ) -> Option<Lane> {
        if !command::is_read(name, args) {
            self.mark_write(policy, name, args);
            return Some(0);
        }
        if self.lease.is_some() {
            return Some(0);
        }
        if let Some(window) = policy.read_your_writes {
            let wrote = self.last_write.load(Ordering::Relaxed);
            if wrote != 0 && now() - wrote < window.as_nanos() as u64 {
                return Some(0);
            }
        }
        policy.pick(self.id, |lane| self.pool.lane_up(lane))
    }

    /// With read-your-writes on, a command that may write (`command::may_write`) sends the
    /// session's reads to the primary for a while.
    fn mark_write(&self, policy: &Replicated, name: &[u8], args: Args<'_>) {
        if policy.read_your_writes.is_some() && command::may_write(name, args) {
            self.last_write.store(now(), Ordering::Relaxed);
        }
    }

    /// The routing step of a command that is not part of a run, when reads may go to replicas:
    /// sets `self.lane` (a plain read may go to a replica, the rest to the primary), or refuses
    /// a read no replica can take.
    pub(super) async fn place_read(
        &mut self,
        kind: &Kind,
        name: &[u8],
        args: Args<'_>,
        bytes: Bytes,
    ) -> Result<Placed, Close> {
        let Some(policy) = self.pool.layout().replicas() else {
            return Ok(Placed::Forward(bytes));
        };
        let lane = match kind {
            Kind::Plain => self.read_lane(policy, name, args),
            // State changes, transactions, blocking commands, streams: on the primary (a
            // blocking command may write; the writes of a transaction counted as it queued them).
            _ => {
                self.mark_write(policy, name, args);
                Some(0)
            }
        };
        match lane {
            Some(lane) => {
                self.lane = lane;
                Ok(Placed::Forward(bytes))
            }
            None => {
                self.refuse(ErrorReply::NoReplica.line()).await?;
                Ok(Placed::Done)
            }
        }
    }
}

/// Nanoseconds since the first call, plus one (so 0 can mean never): the clock of
/// `Session::last_write`.
fn now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}
