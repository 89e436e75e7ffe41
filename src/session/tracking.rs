//! Client-side caching (`CLIENT TRACKING`): a tracking client has a dedicated connection for as
//! long as tracking is on, and every command of that client runs there, so Redis tracks the keys
//! that connection reads and sends its invalidations there. The connection's driver hands each
//! RESP3 invalidation push to its lessee, in order with the replies (carried along with the reply
//! it precedes, or alone when nothing is in flight); the session writes it at once, between
//! replies. RESP2 clients redirect invalidations to a subscribed client: `REDIRECT` names a
//! respipe client, which Redis knows by its subscribed lease's id (learned when the client starts
//! a subscription naming `__redis__:invalidate`), so the id is translated there and back
//! (`CLIENT GETREDIR`, `CLIENT TRACKINGINFO`).
//!
//! The cost: one upstream connection (a lease, counted against `max_leases`) per tracking client,
//! and no coalescing of its commands with other clients'.

use bytes::Bytes;
use tracing::debug;

use super::identity::{Op, NO_SUCH_ID};
use super::{Close, Route, Session};
use crate::clients;
use crate::command::Args;
use crate::follow::{Change, Follow};
use crate::resp;

impl Session {
    /// `CLIENT TRACKING ON|OFF [options]` (`on`: ON). Redis's answer decides whether the session
    /// tracks, at once or at `EXEC` (an ON takes the lease at once; the lease stays while the
    /// reply is awaited, and after it only if Redis accepted). Sent into a stream (nothing there
    /// follows replies), an ON keeps the lease until `RESET` or the client leaves, and an OFF
    /// changes nothing respipe keeps.
    pub(super) async fn tracking(&mut self, on: bool, args: Args<'_>) -> Result<(), Close> {
        let (ask, redirect) = self.redirected(args);
        if self.state.streaming.is_some() {
            self.state.tracking |= on;
            self.state.unsubscribing = false;
            return self.forward(ask, Route::Lease, true).await;
        }
        let change = Change::Tracking { on, redirect };
        if self.state.in_multi {
            self.state.changes.push((self.state.queued, change));
            return self.forward(ask, Route::Current, false).await;
        }
        if self.undecided > 0 {
            // The lease is taken in the state earlier replies decide.
            self.drain().await?;
        }
        self.follow = Some(Box::new(Follow::Reply(vec![change])));
        // An OFF needs no connection of its own: on a shared one Redis turns off nothing.
        let route = if on { Route::Lease } else { Route::Current };
        let sent = self.forward(ask, route, false).await;
        self.follow = None;
        sent
    }

    /// `CLIENT TRACKING` with each `REDIRECT <client id>` naming, instead of a respipe client,
    /// the Redis id of that client's subscribed lease (or an id that matches nothing, so Redis
    /// answers its own error), and the respipe client it names last.
    fn redirected(&self, args: Args<'_>) -> (Bytes, Option<u64>) {
        let mut all: Vec<&[u8]> = args.iter().collect();
        let mut ids = Vec::new();
        let mut redirect = None;
        let mut i = 3;
        while i < all.len() {
            let option = all[i];
            if option.eq_ignore_ascii_case(b"REDIRECT") && i + 1 < all.len() {
                if let Some(id) = resp::parse_int(all[i + 1]) {
                    let target = u64::try_from(id).ok();
                    let lease = target
                        .and_then(|id| self.shared.clients.get(id))
                        .and_then(|c| {
                            let snapshot = c.snapshot();
                            snapshot.subscriber.filter(|_| snapshot.pubsub)
                        });
                    ids.push((i + 1, lease.map(|id| id.to_string())));
                    redirect = target;
                }
                i += 2;
            } else if option.eq_ignore_ascii_case(b"PREFIX") {
                i += 2;
            } else {
                i += 1;
            }
        }
        for (at, lease) in &ids {
            all[*at] = lease.as_ref().map_or(NO_SUCH_ID, |id| id.as_bytes());
        }
        (resp::encode_request(&all), redirect)
    }

    /// `CLIENT GETREDIR` (`info`: `CLIENT TRACKINGINFO`), outside a transaction: asked of Redis
    /// where the session's commands run; the redirect in the answer becomes a respipe client's id.
    pub(super) async fn redirect_info(&mut self, info: bool, bytes: Bytes) -> Result<(), Close> {
        if self.state.in_multi {
            // Queued: EXEC shows Redis's id of the redirect.
            return self.forward(bytes, Route::Current, false).await;
        }
        self.send_check(bytes, Op::Redirect { info }, Route::Current)
            .await
    }

    /// Redis's answer to `CLIENT GETREDIR|TRACKINGINFO` with the redirect (a Redis id) replaced by
    /// the respipe client the session redirects to.
    pub(super) fn with_redirect(&self, info: bool, reply: Bytes) -> Bytes {
        match self.state.redirect {
            Some(to) => redirect_shown_as(info, reply, to),
            None => reply,
        }
    }

    /// A frame of the session's lease with nothing owed from a stream: a tracking client's
    /// invalidation push (written at once, between replies), or word that the lease is gone, and
    /// with it Redis's tracking of the client's keys: the client is closed, as Redis closing its
    /// connection would, so it drops its cache. Late frames of a stream the session left, or of
    /// a lease it no longer tracks on, are dropped.
    pub(super) fn on_push(&mut self, bytes: Bytes, lost: bool) -> Result<(), Close> {
        if !self.state.tracking {
            return Ok(());
        }
        if lost {
            debug!(
                session = self.id,
                "a tracking client's dedicated connection was lost; closing it"
            );
            self.closing = true;
            return Ok(());
        }
        self.out.push(bytes);
        self.check_reply_limit()
    }
}

/// True when a `SUBSCRIBE` (or `PSUBSCRIBE`, `SSUBSCRIBE`) names the channel Redis sends
/// redirected invalidations to: only such a subscriber can be a `REDIRECT` target through respipe
/// (other subscriptions pay no `CLIENT ID`, and a user without it sees no refusal in `ACL LOG`).
pub(super) fn invalidations_in(args: Args<'_>) -> bool {
    args.iter().skip(1).any(|a| a == b"__redis__:invalidate")
}

/// `reply` (to `CLIENT GETREDIR`, or with `info` to `CLIENT TRACKINGINFO`) with a redirect's
/// Redis id replaced by `to`; as it is when it names no redirect (`-1`, `0`).
fn redirect_shown_as(info: bool, reply: Bytes, to: u64) -> Bytes {
    let at = if info {
        const FIELD: &[u8] = b"$8\r\nredirect\r\n";
        match reply.windows(FIELD.len()).position(|w| w == FIELD) {
            Some(at) => at + FIELD.len(),
            None => return reply,
        }
    } else {
        0
    };
    let Some(len) = reply[at..].windows(2).position(|w| w == b"\r\n") else {
        return reply;
    };
    let end = at + len + 2;
    if clients::integer_reply(&reply[at..end]).is_none_or(|id| id == 0) {
        return reply;
    }
    [&reply[..at], &clients::integer(to), &reply[end..]]
        .concat()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_are_shown_as_respipe_clients() {
        let shown =
            |info, reply: &'static [u8]| redirect_shown_as(info, Bytes::from_static(reply), 7);
        assert_eq!(&shown(false, b":1234\r\n")[..], b":7\r\n");
        assert_eq!(&shown(false, b":-1\r\n")[..], b":-1\r\n");
        assert_eq!(&shown(false, b":0\r\n")[..], b":0\r\n");
        assert_eq!(&shown(false, b"-NOPERM x\r\n")[..], b"-NOPERM x\r\n");
        let resp3 = b"%3\r\n$5\r\nflags\r\n~1\r\n$2\r\non\r\n$8\r\nredirect\r\n:42\r\n$8\r\nprefixes\r\n*0\r\n";
        let want = b"%3\r\n$5\r\nflags\r\n~1\r\n$2\r\non\r\n$8\r\nredirect\r\n:7\r\n$8\r\nprefixes\r\n*0\r\n";
        assert_eq!(&shown(true, resp3)[..], &want[..]);
        let off = b"*6\r\n$5\r\nflags\r\n*1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n";
        assert_eq!(&shown(true, off)[..], &off[..]);
    }
}
