//! The virtual connection's state and how it changes: `SELECT`, `AUTH`, `HELLO` checked on a probe
//! connection and accepted, changes made on the lease, `CLIENT` subcommands answered from the
//! state, and `RESET`.

use std::sync::Arc;

use bytes::Bytes;

use crate::clients;
use crate::command::{self, Args, Kind, ReplyMode};
use crate::error::UpstreamError;
use crate::follow::{self, Change, Follow};
use crate::pool::PoolKey;
use crate::reply::{self, ErrorReply, RedisError};
use crate::resp;
use crate::route;

use super::{Close, Route, Session, Shared, State};

impl State {
    pub(super) fn new(shared: &Shared) -> Self {
        State {
            db: shared.pools.default_pool().key().db,
            resp3: false,
            auth: None,
            name: None,
            reply: ReplyMode::On,
            authenticated: shared.limits.load().requirepass.is_none(),
            in_multi: false,
            watching: false,
            streaming: None,
            unsubscribing: false,
            queued: 0,
            changes: Vec::new(),
            exec_frames: 0,
            tracking: false,
            redirect: None,
            shards: Default::default(),
        }
    }

    /// Takes a change Redis accepted.
    pub(super) fn apply(&mut self, change: Change) {
        match change {
            Change::Db(db) => self.db = db,
            Change::User(user) => self.auth = Some(user),
            Change::Resp3(resp3) => self.resp3 = resp3,
            Change::Name(name) => self.name = name,
            Change::Tracking { on, redirect } => {
                self.tracking = on;
                self.redirect = redirect.filter(|_| on);
            }
        }
    }

    pub(super) fn key(&self) -> PoolKey {
        PoolKey {
            db: self.db,
            resp3: self.resp3,
            auth: self.auth.clone(),
        }
    }

    /// True when connections in `key`'s state can serve this session. Checked for every command, so
    /// it builds nothing and compares credentials by pointer first (they are the session's own `Arc`).
    pub(super) fn is_in(&self, key: &PoolKey) -> bool {
        key.db == self.db
            && key.resp3 == self.resp3
            && match (&key.auth, &self.auth) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                _ => false,
            }
    }

    /// Whether this command's answer reaches the client (`CLIENT REPLY`); SKIP lasts one command.
    pub(super) fn take_shown(&mut self) -> bool {
        match self.reply {
            ReplyMode::On => true,
            ReplyMode::Off => false,
            ReplyMode::Skip => {
                self.reply = ReplyMode::On;
                false
            }
        }
    }
}

impl Session {
    /// `SELECT`, `AUTH`, `HELLO` or `CLIENT SETNAME` while the session needs its lease (inside
    /// `MULTI`, after `WATCH`): the lease runs (or queues) it, as the client's own connection would,
    /// and the session takes the change once Redis accepts it: from its reply, or from `EXEC`'s.
    pub(super) async fn change_on_lease(
        &mut self,
        kind: &Kind,
        args: Args<'_>,
        bytes: Bytes,
    ) -> Result<(), Close> {
        let changes = follow::requested(kind, args);
        if self.state.in_multi {
            let at = self.state.queued;
            self.state
                .changes
                .extend(changes.into_iter().map(|c| (at, c)));
        } else {
            self.follow = Some(Box::new(Follow::Reply(changes)));
        }
        let sent = self.forward(bytes, Route::Current, false).await;
        self.follow = None;
        sent
    }

    /// Redis's refusal of a `CLIENT` subcommand respipe answers from the session's state, for the
    /// session's user (`NOPERM`, an unknown subcommand on an older server); `None` when Redis
    /// allows it. Redis is asked once per user and subcommand, with harmless arguments; while it
    /// cannot be reached the session answers (the setting is the session's own either way).
    pub(super) async fn client_refusal(&mut self, args: Args<'_>) -> Result<Option<Bytes>, Close> {
        let Some(question) = command::client_probe(args) else {
            return Ok(None);
        };
        let user = self.state.auth.clone();
        let verdict = match self.shared.pools.verdict(user.as_ref(), &question) {
            Some(verdict) => verdict,
            None => {
                // After earlier commands' replies: an ACL SETUSER just before must count.
                self.drain().await?;
                let Some(verdict) = self.ask(&question).await.ok().and_then(|mut r| r.pop()) else {
                    return Ok(None);
                };
                self.shared
                    .pools
                    .remember_verdict(user.as_ref(), question, verdict.clone());
                verdict
            }
        };
        Ok(follow::is_error(&verdict).then_some(verdict))
    }

    /// `SELECT db`: checked on a probe connection (Redis's exact answer, nothing shared touched);
    /// on success later commands run in that db's pool.
    pub(super) async fn select(&mut self, args: Args<'_>, bytes: Bytes) -> Result<(), Close> {
        let db = args
            .get(1)
            .and_then(resp::parse_int)
            .and_then(|n| u32::try_from(n).ok());
        let known = db.filter(|n| self.shared.pools.known_db(self.state.auth.as_ref(), *n));
        let ok = match known {
            Some(_) => Some(reply::OK),
            None => self.probe(&bytes).await?,
        };
        let Some(line) = ok else { return Ok(()) };
        if line.first() == Some(&b'+') {
            if let Some(db) = db {
                self.shared.pools.learn_db(self.state.auth.as_ref(), db);
                return self.accept(args, vec![Change::Db(db)], line).await;
            }
        }
        self.answer(line)
    }

    /// `AUTH [user] password`: respipe's own password when `requirepass` is set, else checked by
    /// Redis on a probe connection; on success later commands run as that Redis user.
    pub(super) async fn auth(&mut self, args: Args<'_>, bytes: Bytes) -> Result<(), Close> {
        let (user, password) = match (args.get(1), args.get(2)) {
            (Some(user), Some(password)) => (Some(user), password),
            (Some(password), None) => (None, password),
            _ => return self.forward(bytes, Route::Current, false).await,
        };
        if let Some(required) = &self.limits.requirepass {
            let ok = user.is_none_or(|u| u == b"default") && password == required.0.as_bytes();
            self.state.authenticated |= ok;
            return self.answer(if ok {
                reply::OK
            } else {
                RedisError::WrongPass.line()
            });
        }
        let Some(line) = self.probe(&bytes).await? else {
            return Ok(());
        };
        if line.first() == Some(&b'+') {
            let user = follow::credentials(user, password);
            return self.accept(args, vec![Change::User(user)], line).await;
        }
        self.answer(line)
    }

    /// `HELLO [protover [AUTH user password] [SETNAME name]]`: Redis answers it on a probe
    /// connection (its exact map or error); on success the session takes the protocol (RESP3 pools),
    /// the user and the name.
    pub(super) async fn hello(&mut self, args: Args<'_>) -> Result<(), Close> {
        let all: Vec<&[u8]> = args.iter().collect();
        let hello = follow::Hello::parse(&all);
        // The probe gets the command as sent, except the AUTH part when respipe checks it itself.
        let mut probe_args: Vec<&[u8]> = all.clone();
        if let Some(required) = &self.limits.requirepass {
            match hello.auth {
                Some((user, password)) => {
                    if user != b"default" || password != required.0.as_bytes() {
                        return self.answer(RedisError::WrongPass.line());
                    }
                    probe_args = without_auth(&all);
                }
                None if !self.state.authenticated => {
                    return self.answer(RedisError::HelloNoAuth.line());
                }
                None => {}
            }
        }
        let Some(line) = self.probe(&resp::encode_request(&probe_args)).await? else {
            return Ok(());
        };
        let line = route::hello_reply(self.pool.layout(), line);
        if !follow::is_error(&line) {
            let mut changes = hello.changes();
            if self.limits.requirepass.is_some() && hello.auth.is_some() {
                // respipe's own password: the session is past `requirepass`, same Redis user.
                changes.retain(|change| !matches!(change, Change::User(_)));
                self.state.authenticated = true;
            }
            return self.accept(args, changes, line).await;
        }
        self.answer(line)
    }

    /// Takes the changes Redis accepted (its answer `line`, which the client gets), unless Redis
    /// will not set up a connection in the state they lead to: then the client gets respipe's
    /// error quoting Redis's refusal and keeps its state, with a working session.
    async fn accept(
        &mut self,
        args: Args<'_>,
        changes: Vec<Change>,
        line: Bytes,
    ) -> Result<(), Close> {
        let mut next = self.state.key();
        for change in &changes {
            match change {
                Change::Db(db) => next.db = *db,
                Change::User(user) => next.auth = Some(user.clone()),
                Change::Resp3(resp3) => next.resp3 = *resp3,
                Change::Name(_) | Change::Tracking { .. } => {}
            }
        }
        // No check for a state some pool is in (its handshake went through), nor as the
        // configured user (the handshake replays what the probes just saw Redis accept).
        if next.auth.is_some() && !self.state.is_in(&next) && !self.shared.pools.serves(&next) {
            let handshake = Box::pin(self.shared.pools.probe(&next, &[])).await;
            if let Err(UpstreamError::Handshake { reply, .. }) = handshake {
                let name = args.get(0).unwrap_or_default();
                return self.answer(
                    ErrorReply::UnreachableState {
                        name,
                        reply: &reply,
                    }
                    .line(),
                );
            }
        }
        for change in changes {
            self.state.apply(change);
        }
        let line = clients::hello_with_id(&line, self.id).unwrap_or(line);
        self.answer(line)
    }

    /// Runs one command on a probe connection in the session's current state; `None` when the
    /// upstream could not be reached (the client has been answered with that error).
    async fn probe(&mut self, command: &Bytes) -> Result<Option<Bytes>, Close> {
        // After the replies of earlier commands: Redis must see what they did first (an ACL
        // SETUSER, a FLUSHALL, a MULTI's changes), as the client's own connection would.
        self.drain().await?;
        Ok(match self.ask(command).await {
            Ok(mut replies) => replies.pop(),
            Err(err) => {
                let _ = self.answer(ErrorReply::UpstreamUnavailable(&err).line());
                None
            }
        })
    }

    /// Runs one command on a probe connection in the session's current state.
    pub(super) async fn ask(&self, command: &Bytes) -> Result<Vec<Bytes>, UpstreamError> {
        // Boxed: a probe (connect, TLS handshake, exchange) is a large future, and every session's
        // future would otherwise be sized for it, idle ones included.
        let key = self.state.key();
        Box::pin(self.shared.pools.probe(&key, std::slice::from_ref(command))).await
    }

    /// `RESET` (not streaming, see `reset_stream`): waits for what is in flight, gives back any
    /// lease (closing its connection), and starts over as a new connection would.
    pub(super) async fn reset(&mut self) -> Result<(), Close> {
        self.drain().await?;
        self.lease = None;
        self.forget_conns();
        self.state = State::new(&self.shared);
        self.local_counted(reply::RESET);
        Ok(())
    }
}

/// `HELLO` arguments without their `AUTH user password` option (respipe checked it itself).
fn without_auth<'a>(args: &[&'a [u8]]) -> Vec<&'a [u8]> {
    let mut kept = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        if i >= 2 && args[i].eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
            i += 3;
        } else {
            kept.push(args[i]);
            i += 1;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_auth_option_is_removed() {
        let args: Vec<&[u8]> = vec![b"HELLO", b"3", b"AUTH", b"default", b"pw", b"SETNAME", b"n"];
        let kept: Vec<&[u8]> = vec![b"HELLO", b"3", b"SETNAME", b"n"];
        assert_eq!(without_auth(&args), kept);
        let args: Vec<&[u8]> = vec![b"HELLO", b"3", b"SETNAME", b"auth"];
        assert_eq!(without_auth(&args), args);
    }
}
