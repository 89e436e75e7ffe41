//! The session's side of client identity: `CLIENT ID`, `INFO`, `LIST`, `KILL` and `UNBLOCK` about
//! respipe's clients, and what the session publishes about itself for them.
//!
//! Each of these asks Redis first, in order on the session's own connection, with a form that acts
//! on nothing of Redis's (`CLIENT KILL ... ID <no such id>`): Redis's answer carries its ACL
//! verdict (`-NOPERM`), its argument errors and its version's options, exactly as for the client's
//! own connection and at no cost beyond the round trip any command pays. Only when Redis accepts
//! does respipe answer for its own clients. `CLIENT UNBLOCK` goes to Redis with the id of the
//! connection the named client is blocked on.

use super::{Close, Pending, Route, Session, Streaming};
use crate::clients::{self, Filter};
use crate::command::{Args, ClientOp, Kind, Shape};
use crate::reply::{self, ErrorReply, RedisError, Response};
use crate::resp;
use bytes::Bytes;

/// A client id Redis never gives (its ids count up from 1): a filter with it matches nothing.
pub(super) const NO_SUCH_ID: &[u8] = b"9223372036854775807";

/// A command whose Redis reply the session turns into its own answer.
pub(super) struct Check {
    pub(super) op: Op,
    /// `CLIENT REPLY` let the answer through.
    pub(super) shown: bool,
}

/// What the session answers once Redis has accepted the command.
pub(super) enum Op {
    /// `CLIENT ID`: the session's id.
    Id,
    /// `CLIENT INFO`: the session's line.
    Info,
    /// `CLIENT LIST` with these arguments (from the subcommand on).
    List(Vec<Vec<u8>>),
    /// `CLIENT KILL` with these arguments; `odd`: a lone last argument Redis did not see, which
    /// makes its answer a syntax error.
    Kill { args: Vec<Vec<u8>>, odd: bool },
    /// The `CLIENT ID` of a fresh lease for a blocking command (not shown to the client).
    LeaseId,
    /// The `CLIENT ID` of the lease a subscription starts on (not shown to the client).
    SubscriberId,
    /// `CLIENT GETREDIR` or (`info`) `CLIENT TRACKINGINFO`: the redirect shown as respipe's.
    Redirect { info: bool },
}

impl Session {
    /// `CLIENT ID|INFO|LIST|KILL|UNBLOCK`.
    pub(super) async fn client_op(
        &mut self,
        op: ClientOp,
        args: Args<'_>,
        bytes: Bytes,
    ) -> Result<(), Close> {
        if self.state.in_multi && matches!(op, ClientOp::Id | ClientOp::Info | ClientOp::List) {
            // Queued by Redis on the transaction's connection: EXEC shows that connection's values.
            return self.forward(bytes, Route::Current, false).await;
        }
        let all: Vec<&[u8]> = args.iter().collect();
        let owned = || all[1..].iter().map(|a| a.to_vec()).collect::<Vec<_>>();
        let (ask, op) = match op {
            ClientOp::Id => (bytes, Op::Id),
            ClientOp::Info => (bytes, Op::Info),
            // Redis's own list shows its fields once; after that the check lists nothing.
            ClientOp::List if all.len() == 2 && self.shared.clients.knows_fields() => (
                resp::encode_request(&[&b"CLIENT"[..], b"LIST", b"ID", NO_SUCH_ID]),
                Op::List(owned()),
            ),
            ClientOp::List => (bytes, Op::List(owned())),
            ClientOp::Kill => {
                // The old form (`CLIENT KILL addr`) has nothing for Redis to check but the ACL.
                let old = all.len() == 3;
                let odd = !old && all.len() % 2 == 1;
                let mut ask: Vec<&[u8]> = if old {
                    all[..2].to_vec()
                } else {
                    all[..all.len() - usize::from(odd)].to_vec()
                };
                ask.extend([&b"ID"[..], NO_SUCH_ID]);
                (resp::encode_request(&ask), Op::Kill { args: owned(), odd })
            }
            ClientOp::Unblock => return self.unblock(&all).await,
            ClientOp::GetRedir => return self.redirect_info(false, bytes).await,
            ClientOp::TrackingInfo => return self.redirect_info(true, bytes).await,
        };
        if self.state.in_multi {
            // A KILL queued in a transaction acts on nothing (Redis would kill its own clients).
            return self.forward(ask, Route::Current, false).await;
        }
        self.send_check(ask, op, Route::Current).await
    }

    /// Sends `ask` (one command) by `route`, subject to `CLIENT REPLY`; Redis's reply becomes
    /// the answer `op` makes of it.
    pub(super) async fn send_check(
        &mut self,
        ask: Bytes,
        op: Op,
        route: Route,
    ) -> Result<(), Close> {
        let shown = self.state.take_shown();
        let check = Box::new(Check { op, shown });
        self.send(ask, 1, route, false, Shape::One, shown, Some(check))
            .await
    }

    /// `CLIENT UNBLOCK id [TIMEOUT|ERROR]`: sent to Redis with the id of the connection that
    /// client is blocked on (or one that matches nothing), so Redis unblocks it and answers.
    async fn unblock(&mut self, all: &[&[u8]]) -> Result<(), Close> {
        let Some(target) = all.get(2).and_then(|id| resp::parse_int(id)) else {
            // Not an id: Redis says so.
            return self
                .forward(resp::encode_request(all), Route::Current, false)
                .await;
        };
        let blocked = u64::try_from(target)
            .ok()
            .and_then(|id| self.shared.clients.get(id))
            .and_then(|c| c.snapshot().blocked_on());
        if let Some((_, lane)) = blocked {
            // Connection ids are per server: ask the one the client is blocked on.
            self.lane = lane;
        }
        let lease = blocked.map(|(id, _)| id.to_string());
        let mut ask = all.to_vec();
        ask[2] = lease.as_ref().map_or(NO_SUCH_ID, |id| id.as_bytes());
        self.forward(resp::encode_request(&ask), Route::Current, false)
            .await
    }

    /// A blocking command outside a transaction. On a fresh lease it follows a `CLIENT ID` in the
    /// same write (no extra round trip), so `CLIENT UNBLOCK` can name that connection to Redis.
    pub(super) async fn blocking(&mut self, bytes: Bytes) -> Result<(), Close> {
        if self.lease.is_none() {
            let ask = resp::encode_request(&[&b"CLIENT"[..], b"ID"]);
            let check = Box::new(Check {
                op: Op::LeaseId,
                shown: false,
            });
            self.send(ask, 1, Route::Lease, false, Shape::One, false, Some(check))
                .await?;
            if let Some(lease) = &self.lease {
                self.client.snapshot().blocked =
                    Some((lease.handle().downgrade(), None, lease.lane()));
            }
        }
        self.forward(bytes.clone(), Route::Lease, false).await?;
        self.note_blocked(bytes);
        Ok(())
    }

    /// Before a subscription to `__redis__:invalidate` starts: a `CLIENT ID` in the same write,
    /// so a tracking client's `REDIRECT` to this client can name its connection.
    pub(super) async fn ask_subscriber_id(&mut self) -> Result<(), Close> {
        let ask = resp::encode_request(&[&b"CLIENT"[..], b"ID"]);
        let check = Box::new(Check {
            op: Op::SubscriberId,
            shown: false,
        });
        self.send(ask, 1, Route::Lease, false, Shape::One, false, Some(check))
            .await
    }

    /// Turns Redis's reply to a check at the head of `pending` into the session's answer; any
    /// other response passes unchanged.
    pub(super) fn checked(&mut self, response: Response) -> Response {
        if !matches!(self.pending.front(), Some(Pending::Check(..))) {
            return response;
        }
        let Some(Pending::Check(check, lane)) = self.pending.pop_front() else {
            return response;
        };
        let shown = check.shown;
        self.pending.push_front(Pending::Upstream {
            count: 1,
            shown,
            follow: None,
            lane,
            again: None,
        });
        match response {
            Response::Replies { bytes, count: 1 } => Response::Replies {
                bytes: self.answer_check(check.op, bytes),
                count: 1,
            },
            other => other,
        }
    }

    /// The answer to a check, from Redis's `reply`: Redis's error as it is, else respipe's own.
    fn answer_check(&mut self, op: Op, reply: Bytes) -> Bytes {
        if matches!(reply.first(), Some(b'-' | b'!')) {
            return reply;
        }
        let me = self.client.id();
        let clients = &self.shared.clients;
        let default_user = || self.shared.pools.configured_user();
        match op {
            Op::Id => clients::integer(me),
            Op::Info => {
                clients.learn_fields(&reply);
                self.publish();
                clients.list(std::slice::from_ref(&self.client), &default_user(), &reply)
            }
            Op::List(args) => {
                clients.learn_fields(&reply);
                self.publish();
                let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                match Filter::list(&args) {
                    Ok(filter) => {
                        let user = default_user();
                        clients.list(&clients.matching(&filter, me, &user), &user, &reply)
                    }
                    Err(why) => ErrorReply::ClientList(why).line(),
                }
            }
            Op::Kill { odd: true, .. } => RedisError::Syntax.line(),
            Op::Kill { args, .. } => {
                let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                let filter = match Filter::kill(&args) {
                    Ok(filter) => filter,
                    Err(why) => return ErrorReply::ClientKill(why).line(),
                };
                self.publish();
                let killed = clients.matching(&filter, me, &default_user());
                for client in &killed {
                    if client.id() == me {
                        // Like Redis: this reply first, then the connection closes.
                        self.closing = true;
                    } else {
                        client.kill();
                    }
                }
                match (args.len(), killed.len()) {
                    (2, 0) => RedisError::NoSuchClient.line(),
                    (2, _) => reply::OK,
                    (_, n) => clients::integer(n as u64),
                }
            }
            Op::LeaseId => {
                if let Some((_, id, _)) = &mut self.client.snapshot().blocked {
                    *id = clients::integer_reply(&reply);
                }
                reply
            }
            Op::SubscriberId => {
                self.client.snapshot().subscriber = clients::integer_reply(&reply);
                reply
            }
            Op::Redirect { info } => self.with_redirect(info, reply),
        }
    }

    /// Notes the command for `CLIENT LIST` (`cmd=`, `idle=`, and the `CLIENT SETINFO` values).
    pub(super) fn note(&self, kind: &Kind, name: &[u8], args: Args<'_>) {
        self.client.ran(name, args);
        if *kind == Kind::Accept
            && args
                .get(1)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"SETINFO"))
        {
            let (Some(attr), Some(value)) = (args.get(2), args.get(3)) else {
                return;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            let mut state = self.client.snapshot();
            let lib = state.lib.get_or_insert_with(Box::default);
            lib[usize::from(!attr.eq_ignore_ascii_case(b"LIB-NAME"))] = value;
        }
    }

    /// Publishes the session's state to the registry (after commands that may change it).
    pub(super) fn publish(&self) {
        let mut snapshot = self.client.snapshot();
        snapshot.db = self.state.db;
        snapshot.resp3 = self.state.resp3;
        let user = self
            .state
            .auth
            .as_ref()
            .map(|a| a.user.as_deref().unwrap_or("default"));
        if snapshot.user.as_deref() != user {
            snapshot.user = user.map(str::to_owned);
        }
        if snapshot.name != self.state.name {
            snapshot.name.clone_from(&self.state.name);
        }
        snapshot.multi = self.state.in_multi.then_some(self.state.queued);
        snapshot.pubsub = self.state.streaming == Some(Streaming::Subscribe);
        if !snapshot.pubsub {
            snapshot.subscriptions = [0; 3];
            snapshot.subscriber = None;
        }
        snapshot.monitor = self.state.streaming == Some(Streaming::Monitor);
        snapshot.tracking = self.state.tracking;
        if self.lease.is_none() {
            snapshot.blocked = None;
        }
        snapshot.shared = self.state.auth.is_some().then(|| self.state.key());
        snapshot.lease = self.lease.as_ref().map(|l| l.handle().downgrade());
    }
}
