//! Connection state that follows Redis's answers: `SELECT`, `AUTH`, `HELLO`, `CLIENT SETNAME` and
//! `CLIENT TRACKING` change a session's state only when Redis accepts them, whether it answers at
//! once (on a probe, or on a lease after `WATCH`) or at `EXEC` (queued inside `MULTI`, one element
//! of its array).

use std::sync::Arc;

use crate::command::{Args, Kind};
use crate::pool::Credentials;
use crate::resp::{self, ReplyScanner};

/// One change of connection state a command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `SELECT db`.
    Db(u32),
    /// `AUTH [user] password`, `HELLO ... AUTH user password`: the Redis user.
    User(Arc<Credentials>),
    /// `HELLO 2|3`: RESP3 or not.
    Resp3(bool),
    /// `CLIENT SETNAME`, `HELLO ... SETNAME` (an empty name clears it).
    Name(Option<Vec<u8>>),
    /// `CLIENT TRACKING ON|OFF`, with the respipe client an ON redirects to.
    Tracking { on: bool, redirect: Option<u64> },
}

/// Which reply of a request decides which changes.
#[derive(Debug, PartialEq, Eq)]
pub enum Follow {
    /// The request's one reply: every change, unless it is an error.
    Reply(Vec<Change>),
    /// `EXEC`: for each change, the element of its array at that index (the queued command's
    /// position in the transaction). A nil (`WATCH` conflict) or error (`EXECABORT`) accepts none.
    Exec(Vec<(usize, Change)>),
}

/// The options of `HELLO [protover [AUTH user password] [SETNAME name]]`, as Redis reads them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The protocol version argument as sent.
    pub proto: Option<&'a [u8]>,
    /// `AUTH user password`.
    pub auth: Option<(&'a [u8], &'a [u8])>,
    /// `SETNAME name`.
    pub setname: Option<&'a [u8]>,
}

impl Follow {
    /// The changes `reply` accepts.
    pub fn accepted(self, reply: &[u8]) -> Vec<Change> {
        match self {
            Follow::Reply(changes) if !is_error(reply) => changes,
            Follow::Reply(_) => Vec::new(),
            Follow::Exec(changes) => {
                let elements = array_elements(reply);
                changes
                    .into_iter()
                    .filter(|(i, _)| elements.get(*i).is_some_and(|e| !is_error(e)))
                    .map(|(_, change)| change)
                    .collect()
            }
        }
    }
}

impl<'a> Hello<'a> {
    /// Reads the options from the command's arguments (the name first); stops at the first it
    /// does not know (Redis then answers a syntax error).
    pub fn parse(all: &[&'a [u8]]) -> Self {
        let mut hello = Hello {
            proto: all.get(1).copied(),
            ..Hello::default()
        };
        let mut i = 2;
        while i < all.len() {
            if all[i].eq_ignore_ascii_case(b"AUTH") && i + 2 < all.len() {
                hello.auth = Some((all[i + 1], all[i + 2]));
                i += 3;
            } else if all[i].eq_ignore_ascii_case(b"SETNAME") && i + 1 < all.len() {
                hello.setname = Some(all[i + 1]);
                i += 2;
            } else {
                break;
            }
        }
        hello
    }

    /// What the command changes when Redis accepts it.
    pub fn changes(&self) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Some(proto) = self.proto.and_then(resp::parse_int) {
            changes.push(Change::Resp3(proto == 3));
        }
        if let Some((user, password)) = self.auth {
            changes.push(Change::User(credentials(Some(user), password)));
        }
        if let Some(name) = self.setname {
            changes.push(Change::Name((!name.is_empty()).then(|| name.to_vec())));
        }
        changes
    }
}

/// What a command of `kind` with `args` changes when Redis accepts it (nothing for commands that
/// change no state respipe keeps).
pub fn requested(kind: &Kind, args: Args<'_>) -> Vec<Change> {
    match kind {
        Kind::Select => args
            .get(1)
            .and_then(resp::parse_int)
            .and_then(|n| u32::try_from(n).ok())
            .map(Change::Db)
            .into_iter()
            .collect(),
        Kind::Auth => match (args.get(1), args.get(2)) {
            (Some(user), Some(password)) => vec![Change::User(credentials(Some(user), password))],
            (Some(password), None) => vec![Change::User(credentials(None, password))],
            _ => Vec::new(),
        },
        Kind::Hello => Hello::parse(&args.iter().collect::<Vec<_>>()).changes(),
        Kind::SetName(name) => vec![Change::Name((!name.is_empty()).then(|| name.clone()))],
        _ => Vec::new(),
    }
}

/// The credentials of `AUTH [user] password`.
pub fn credentials(user: Option<&[u8]>, password: &[u8]) -> Arc<Credentials> {
    Arc::new(Credentials {
        user: user.map(|u| String::from_utf8_lossy(u).into_owned()),
        password: String::from_utf8_lossy(password).into_owned(),
    })
}

/// True for an error reply (RESP2 `-`, RESP3 blob error `!`).
pub fn is_error(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(b'-' | b'!'))
}

/// The elements of an array reply (`*n`), each a raw frame, then the frames that follow it (an
/// unsubscribe queued in a transaction writes its confirmations after the first as frames of
/// their own, after `EXEC`'s array; queued positions count them); empty for anything else.
fn array_elements(reply: &[u8]) -> Vec<&[u8]> {
    let Some(rest) = reply.strip_prefix(b"*") else {
        return Vec::new();
    };
    let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
        return Vec::new();
    };
    let Some(n) = resp::parse_int(&rest[..eol]).and_then(|n| usize::try_from(n).ok()) else {
        return Vec::new();
    };
    let mut at = &rest[eol + 2..];
    let mut elements = Vec::with_capacity(n.min(64));
    while let Ok(Some(frame)) = ReplyScanner::default().scan(at) {
        elements.push(&at[..frame.len]);
        at = &at[frame.len..];
    }
    elements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_accepts_unless_it_is_an_error() {
        let follow = || Follow::Reply(vec![Change::Db(1)]);
        assert_eq!(follow().accepted(b"+OK\r\n"), vec![Change::Db(1)]);
        assert!(follow()
            .accepted(b"-ERR DB index is out of range\r\n")
            .is_empty());
        assert!(follow().accepted(b"!3\r\nERR\r\n").is_empty());
    }

    #[test]
    fn exec_accepts_the_elements_that_succeeded() {
        let follow = || {
            Follow::Exec(vec![
                (0, Change::Db(1)),
                (2, Change::Resp3(true)),
                (3, Change::Db(5)),
            ])
        };
        let exec =
            b"*4\r\n+OK\r\n:1\r\n%1\r\n$5\r\nproto\r\n:3\r\n-ERR DB index is out of range\r\n";
        assert_eq!(
            follow().accepted(exec),
            vec![Change::Db(1), Change::Resp3(true)]
        );
        assert!(follow().accepted(b"*-1\r\n").is_empty());
        assert!(follow()
            .accepted(b"-EXECABORT Transaction discarded because of previous errors.\r\n")
            .is_empty());
    }

    #[test]
    fn hello_options() {
        let all: Vec<&[u8]> = vec![b"HELLO", b"3", b"AUTH", b"u", b"p", b"SETNAME", b"n"];
        let hello = Hello::parse(&all);
        assert_eq!(
            hello.changes(),
            vec![
                Change::Resp3(true),
                Change::User(credentials(Some(b"u"), b"p")),
                Change::Name(Some(b"n".to_vec())),
            ]
        );
        let all: Vec<&[u8]> = vec![b"HELLO", b"2", b"SETNAME", b""];
        assert_eq!(
            Hello::parse(&all).changes(),
            vec![Change::Resp3(false), Change::Name(None)]
        );
    }

    #[test]
    fn requested_changes() {
        let select: Vec<Vec<u8>> = vec![b"SELECT".to_vec(), b"4".to_vec()];
        assert_eq!(
            requested(&Kind::Select, Args::Inline(&select)),
            vec![Change::Db(4)]
        );
        let bad: Vec<Vec<u8>> = vec![b"SELECT".to_vec(), b"-0".to_vec()];
        assert!(requested(&Kind::Select, Args::Inline(&bad)).is_empty());
        let auth: Vec<Vec<u8>> = vec![b"AUTH".to_vec(), b"pw".to_vec()];
        assert_eq!(
            requested(&Kind::Auth, Args::Inline(&auth)),
            vec![Change::User(credentials(None, b"pw"))]
        );
    }
}
