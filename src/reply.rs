//! Replies travelling back to a session, and the one place respipe's own `-ERR` texts are written.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::error::UpstreamError;

/// What an upstream connection hands back for one request (a run of `count` commands from one session).
///
/// A request may be answered in several pieces (a long pipeline streams back as replies arrive), but
/// the pieces of one request arrive in order and their counts add up to the request's count exactly.
/// So a request of one command gets exactly one response: its one reply frame, whose type is then
/// its first byte (how the parts of a split command are merged, and how a redirect will be seen),
/// or `Failed`. Runs of commands keep the coalesced, zero-copy hand-over.
#[derive(Debug)]
pub enum Response {
    /// `count` complete reply frames, contiguous raw bytes as Redis sent them.
    Replies {
        /// The reply frames, a slice of the upstream read buffer.
        bytes: Bytes,
        /// How many reply frames `bytes` holds.
        count: u32,
    },
    /// The next `count` commands of the request failed; answer each with `error` (one whole `-ERR` line).
    Failed {
        /// How many commands this covers.
        count: u32,
        /// A complete RESP error line, e.g. `-ERR respipe: ...\r\n`.
        error: Bytes,
    },
    /// One frame of a leased connection in stream mode (a message, a confirmation, a MONITOR line,
    /// or the answer to a command sent into the stream). Not counted against any request: a session
    /// that has left stream mode drops late ones.
    Stream {
        /// The raw frame, or the error line when the connection was lost.
        bytes: Bytes,
        /// The dedicated connection is gone (`bytes` says why).
        lost: bool,
    },
    /// A timer of the session ran out (a cluster command's pause before a retry): counted against
    /// no request, sent on the lane of the command it is for.
    Wake,
}

/// The sending side of a session's reply mailbox. Each reply slot in an upstream FIFO holds a clone;
/// the session holds the receiver. Unbounded in type, bounded in practice: a session never has more
/// than `max_client_inflight` commands outstanding, and each gets at most one `Response` piece per
/// reply. If the session is gone, sends fail and the replies are dropped (the slot still consumes them).
///
/// A sender also carries a *lane*: the upstream server its requests go to (always 0 with one server).
/// Each lane's responses arrive in the order its requests were sent; across lanes they arrive in any
/// order, and the session puts them back in command order (its reorder buffer).
#[derive(Debug, Clone)]
pub struct ReplyTx {
    mailbox: Arc<Mutex<Mailbox>>,
    lane: Lane,
}

/// The upstream server a response comes from: an index into the topology's servers.
pub type Lane = u16;

/// The receiving side of a session's reply mailbox, owned by the session task.
#[derive(Debug)]
pub struct ReplyRx(Arc<Mutex<Mailbox>>);

/// A session's reply mailbox: a queue and the session's waker behind one lock.
///
/// Replaces a tokio unbounded channel, whose lock-free block list costs about 1.8 KB per idle
/// client and several atomic operations per message. Senders and receiver run on the proxy's one
/// runtime thread, so the lock is never contended: one uncontended lock per send and per receive.
#[derive(Debug, Default)]
struct Mailbox {
    queue: VecDeque<(Lane, Response)>,
    waker: Option<Waker>,
    /// The receiver is gone: sends fail.
    closed: bool,
}

/// A new reply mailbox: the sender to clone into reply slots and the session's receiver.
pub fn mailbox() -> (ReplyTx, ReplyRx) {
    let shared = Arc::new(Mutex::new(Mailbox::default()));
    (
        ReplyTx {
            mailbox: shared.clone(),
            lane: 0,
        },
        ReplyRx(shared),
    )
}

/// Locks a mailbox; a panic while holding the lock cannot leave the queue half-changed, so a
/// poisoned lock is used as is.
fn lock(mailbox: &Mutex<Mailbox>) -> MutexGuard<'_, Mailbox> {
    mailbox
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ReplyTx {
    /// A sender to the same mailbox whose responses are marked as coming from `lane`.
    pub fn on_lane(&self, lane: Lane) -> ReplyTx {
        ReplyTx {
            mailbox: self.mailbox.clone(),
            lane,
        }
    }

    /// Queues a response for the session and wakes it; gives the response back if the session is gone.
    pub fn send(&self, response: Response) -> Result<(), Response> {
        let waker = {
            let mut mailbox = lock(&self.mailbox);
            if mailbox.closed {
                return Err(response);
            }
            crate::spare::push_back(&mut mailbox.queue, (self.lane, response));
            mailbox.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl ReplyRx {
    /// The next response and its lane, waiting for one. Cancel-safe: a response is taken only
    /// when returned.
    pub fn recv(&mut self) -> impl std::future::Future<Output = (Lane, Response)> + '_ {
        poll_fn(|cx| {
            let mut mailbox = lock(&self.0);
            match mailbox.queue.pop_front() {
                Some(response) => Poll::Ready(response),
                None => {
                    match &mut mailbox.waker {
                        Some(waker) => waker.clone_from(cx.waker()),
                        none => *none = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
            }
        })
    }

    /// The next response and its lane if one is queued.
    pub fn try_recv(&mut self) -> Option<(Lane, Response)> {
        lock(&self.0).queue.pop_front()
    }
}

impl Drop for ReplyRx {
    fn drop(&mut self) {
        let mut mailbox = lock(&self.0);
        mailbox.closed = true;
        mailbox.queue.clear();
        mailbox.waker = None;
    }
}

/// `+OK`.
pub const OK: Bytes = Bytes::from_static(b"+OK\r\n");
/// Redis's answer to `RESET`.
pub const RESET: Bytes = Bytes::from_static(b"+RESET\r\n");
/// A command Redis replicates and that changes nothing: a message to a shard channel of respipe's
/// own (nobody subscribes to it; no pattern can match a shard channel). Run before `WAIT` so the
/// connection's write offset covers the client's earlier writes.
pub const WAIT_NOOP: Bytes =
    Bytes::from_static(b"*3\r\n$8\r\nSPUBLISH\r\n$15\r\n__respipe__wait\r\n$0\r\n\r\n");
/// `RESET` as a request, for respipe to end a leased connection's stream in order.
pub const RESET_COMMAND: Bytes = Bytes::from_static(b"*1\r\n$5\r\nRESET\r\n");
/// RESP3 null.
pub const NULL: Bytes = Bytes::from_static(b"_\r\n");
/// RESP2 null bulk string.
pub const NULL_BULK: Bytes = Bytes::from_static(b"$-1\r\n");
/// An error reply respipe writes itself: a typed failure whose `Display` is the exact error line
/// without its `-` and CRLF. [`ErrorReply::line`] is the one place one becomes a RESP error line.
#[derive(Debug, thiserror::Error)]
pub enum ErrorReply<'a> {
    /// An error Redis itself would answer, in its words.
    #[error(transparent)]
    Redis(RedisError),
    /// The request stream was not valid RESP; Redis's wording (`-ERR Protocol error: ...`).
    #[error("ERR {0}")]
    Protocol(&'a crate::resp::ProtocolError),
    /// A command respipe refuses because it would leak connection state into a shared connection.
    #[error("ERR respipe: '{}' is not supported yet ({why})", Lower(.name))]
    Unsupported {
        /// The command's name as the client sent it.
        name: &'a [u8],
        /// Why respipe cannot give it Redis's semantics.
        why: &'a str,
    },
    /// `WAIT`/`WAITAOF` when Redis refused the no-op that makes them count this client's writes:
    /// counting nothing would be a false acknowledgement.
    #[error(
        "ERR respipe: '{}' needs SPUBLISH to the channel __respipe__wait to count this client's writes, and Redis refused it: {}",
        Lower(.name),
        Refused(.redis_error)
    )]
    WaitRefused {
        /// The command's name as the client sent it.
        name: &'a [u8],
        /// Redis's error line.
        redis_error: &'a [u8],
    },
    /// A state change Redis accepted, but whose state Redis refuses to set a new connection up in:
    /// the client keeps its state.
    #[error(
        "ERR respipe: Redis accepts '{}' but refuses to set up a connection in the state it leads to ({reply}); the state is unchanged",
        Lower(.name)
    )]
    UnreachableState {
        /// The command's name as the client sent it.
        name: &'a [u8],
        /// Redis's refusal of the handshake.
        reply: &'a str,
    },
    /// A command the configuration refuses (`deny_commands`).
    #[error("ERR respipe: '{}' is disabled by configuration (deny_commands)", Lower(.name))]
    Denied {
        /// The command's name as the client sent it.
        name: &'a [u8],
    },
    /// In-flight commands on an upstream connection that was lost.
    #[error("ERR respipe: upstream connection lost ({0}); the command may or may not have run")]
    UpstreamLost(&'a UpstreamError),
    /// New commands while the upstream cannot be reached: failed fast, not sent.
    #[error("ERR respipe: upstream unavailable ({0}); the command was not sent")]
    UpstreamUnavailable(&'a UpstreamError),
    /// A command that got no reply within the command timeout; its late reply will be dropped.
    #[error("ERR respipe: upstream {addr} did not answer within {timeout:?}; the command may or may not have run")]
    TimedOut {
        /// The upstream's address.
        addr: &'a str,
        /// The command timeout.
        timeout: Duration,
    },
    /// A request that could not even be queued to the upstream within the command timeout
    /// (backpressure).
    #[error("ERR respipe: upstream {addr} busy, the command could not be queued within {timeout:?}; it was not sent")]
    QueueTimeout {
        /// The upstream's address.
        addr: &'a str,
        /// The command timeout.
        timeout: Duration,
    },
    /// The proxy is shutting down and no upstream connection is left to take the command.
    #[error("ERR respipe: shutting down; the command was not sent")]
    ShuttingDown,
    /// A command needs another upstream pool and `max_pools` exist already.
    #[error("ERR respipe: too many upstream pools (max_pools={max_pools}); each db, protocol and user in use needs one")]
    TooManyPools {
        /// The `max_pools` setting.
        max_pools: usize,
    },
    /// A command needs a dedicated connection and all `max_leases` are lent.
    #[error(
        "ERR respipe: no dedicated upstream connection available (max_leases={max_leases} in use)"
    )]
    NoLease {
        /// The `max_leases` setting.
        max_leases: usize,
    },
    /// A sharded upstream with every server ejected.
    #[error("ERR respipe: no live server in the sharded upstream (every server is ejected)")]
    NoLiveShard,
    /// A read with `read_from = replica` while no replica's connections are up (the primary is
    /// not asked instead).
    #[error("ERR respipe: no replica available for reads (read_from = replica); the command was not sent")]
    NoReplica,
    /// A command placed on the servers of a sharded upstream just before a reload changed them.
    #[error("ERR respipe: the upstream's server list changed while the command was placed; the command was not sent")]
    ServersChanged,
    /// A server of a sharded upstream answered a split or fanned-out command with a reply respipe
    /// cannot merge.
    #[error("ERR respipe: a server answered a split command with an unexpected reply")]
    UnexpectedShardReply,
    /// Redis Cluster's wording for a command whose keys are on several servers; the reason names
    /// respipe's sharding.
    #[error("CROSSSLOT Keys in request don't hash to the same shard (respipe sharding: use hash tags to keep them together)")]
    CrossShard,
    /// A cluster's `SCAN` cursor given out before the cluster's primaries changed (a failover,
    /// a primary gaining or losing its lowest slot): where it points is no longer known.
    #[error("ERR respipe: the cluster's primaries changed since this SCAN cursor was given (failover or resharding); start the scan again from cursor 0")]
    ScanTopologyChanged,
    /// `CLUSTER <subcommand>` Redis does not know, in Redis's words (a non-cluster Redis's
    /// answer, which respipe gives for a cluster upstream).
    #[error("ERR unknown subcommand '{}'. Try CLUSTER HELP.", Truncated(.0))]
    UnknownClusterSubcommand(&'a [u8]),
    /// A cluster node redirected (`MOVED`/`ASK`) a command on a dedicated connection (a
    /// transaction, a blocking command), where respipe cannot follow: the command did not run.
    #[error("TRYAGAIN respipe: the key's hash slot moved to another cluster node while this client held a dedicated connection (transaction or blocking command); the command did not run, retry it")]
    RedirectOnLease,
    /// A cluster command redirected more often than respipe follows (a multi-key command whose
    /// keys a migration has split bounces between `ASK` and `TRYAGAIN` until the slot has moved).
    #[error("TRYAGAIN respipe: the cluster redirected the command too many times (hash slot {slot} is moving); the command did not run, retry it")]
    TooManyRedirects {
        /// The slot of the last redirect.
        slot: u16,
    },
    /// `CLIENT LIST` with a filter respipe cannot read (Redis's wording).
    #[error("ERR {0}")]
    ClientList(crate::clients::FilterError),
    /// `CLIENT KILL` with a filter respipe cannot apply.
    #[error("ERR respipe: {0}")]
    ClientKill(crate::clients::FilterError),
}

/// An error Redis itself would answer, in its words: respipe answers it for Redis (a client name
/// Redis would reject, a wrong password...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// A malformed command.
    #[error("ERR syntax error")]
    Syntax,
    /// `CLIENT KILL addr` that matched no client.
    #[error("ERR No such client")]
    NoSuchClient,
    /// `CLIENT SETNAME` with a name Redis rejects.
    #[error("ERR Client names cannot contain spaces, newlines or special characters.")]
    ClientName,
    /// `CLIENT SETINFO` with a value Redis rejects.
    #[error("ERR lib-name or lib-ver cannot contain spaces, newlines or special characters.")]
    LibName,
    /// A connection past `maxclients`.
    #[error("ERR max number of clients reached")]
    MaxClients,
    /// Any command but AUTH/HELLO/QUIT before authentication.
    #[error("NOAUTH Authentication required.")]
    NoAuth,
    /// A wrong password.
    #[error("WRONGPASS invalid username-password pair or user is disabled.")]
    WrongPass,
    /// `EXEC` of a transaction a command was refused in.
    #[error("EXECABORT Transaction discarded because of previous errors.")]
    ExecAbort,
    /// `SCAN` with a cursor that is not one.
    #[error("ERR invalid cursor")]
    InvalidCursor,
    /// Redis Cluster's answer to a command whose keys are in several hash slots.
    #[error("CROSSSLOT Keys in request don't hash to the same slot")]
    CrossSlot,
    /// Redis Cluster's answer to a command whose hash slot no node serves.
    #[error("CLUSTERDOWN Hash slot not served")]
    SlotNotServed,
    /// A non-cluster Redis's answer to `CLUSTER ...`, `READONLY`, `READWRITE` and `ASKING`
    /// (respipe gives it for a cluster upstream: its clients see one Redis).
    #[error("ERR This instance has cluster support disabled")]
    ClusterDisabled,
    /// A command (or `container|subcommand`) with the wrong number of arguments.
    #[error("ERR wrong number of arguments for '{0}' command")]
    Arity(&'static str),
    /// HELLO without AUTH on a connection that must authenticate first.
    #[error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")]
    HelloNoAuth,
}

impl ErrorReply<'_> {
    /// The error as a RESP error line `-<text>\r\n`, any CR/LF in the text replaced by spaces (a
    /// reply line must stay one line).
    pub fn line(&self) -> Bytes {
        let mut line = OneLine(BytesMut::with_capacity(128));
        line.0.put_u8(b'-');
        // Writing to memory cannot fail.
        let _ = write!(line, "{self}");
        line.0.put_slice(b"\r\n");
        line.0.freeze()
    }
}

/// True for the error line of a command that never reached the upstream because it could not be
/// reached ([`ErrorReply::UpstreamUnavailable`]): sending it again cannot run it twice.
pub fn never_sent(line: &[u8]) -> bool {
    line.starts_with(b"-ERR respipe: upstream unavailable")
}

impl RedisError {
    /// The error as a RESP error line.
    pub fn line(self) -> Bytes {
        ErrorReply::Redis(self).line()
    }
}

/// A RESP bulk string.
pub fn bulk(value: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(value.len() + 16);
    buf.put_u8(b'$');
    buf.put_slice(value.len().to_string().as_bytes());
    buf.put_slice(b"\r\n");
    buf.put_slice(value);
    buf.put_slice(b"\r\n");
    buf.freeze()
}

/// A command name in lowercase, as respipe's errors quote it.
struct Lower<'a>(&'a [u8]);

impl fmt::Display for Lower<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.0).to_lowercase())
    }
}

/// A client's argument quoted in an error as Redis quotes it (`%.128s`: at most 128 bytes).
struct Truncated<'a>(&'a [u8]);

impl fmt::Display for Truncated<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0[..self.0.len().min(128)]))
    }
}

/// Redis's error line quoted inside one of respipe's: without its `-` and line end.
struct Refused<'a>(&'a [u8]);

impl fmt::Display for Refused<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.strip_prefix(b"-").unwrap_or(self.0);
        f.write_str(String::from_utf8_lossy(text).trim_end())
    }
}

/// An error line being written: CR and LF become spaces.
struct OneLine(BytesMut);

impl fmt::Write for OneLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            self.0
                .put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_stay_one_line() {
        let reply = "x\r\ny";
        assert_eq!(
            &ErrorReply::UnreachableState { name: b"HELLO", reply }.line()[..],
            &b"-ERR respipe: Redis accepts 'hello' but refuses to set up a connection in the state it leads to (x  y); the state is unchanged\r\n"[..]
        );
    }

    #[test]
    fn refused_names_the_command_in_lowercase() {
        assert_eq!(
            &ErrorReply::Unsupported {
                name: b"MULTI",
                why: "connection state"
            }
            .line()[..],
            &b"-ERR respipe: 'multi' is not supported yet (connection state)\r\n"[..]
        );
    }

    #[test]
    fn typed_errors_keep_their_exact_text() {
        let cases: [(ErrorReply<'_>, &[u8]); 4] = [
            (
                ErrorReply::WaitRefused {
                    name: b"WAIT",
                    redis_error: b"-NOPERM no\r\n",
                },
                b"-ERR respipe: 'wait' needs SPUBLISH to the channel __respipe__wait to count this client's writes, and Redis refused it: NOPERM no\r\n",
            ),
            (
                ErrorReply::NoLease { max_leases: 2 },
                b"-ERR respipe: no dedicated upstream connection available (max_leases=2 in use)\r\n",
            ),
            (
                ErrorReply::ClientKill(crate::clients::FilterError::Unsupported("x".into())),
                b"-ERR respipe: CLIENT KILL filter 'x' is not supported\r\n",
            ),
            (
                ErrorReply::Redis(RedisError::NoAuth),
                b"-NOAUTH Authentication required.\r\n",
            ),
        ];
        for (error, line) in cases {
            assert_eq!(&error.line()[..], line);
        }
        assert_eq!(&RedisError::Syntax.line()[..], b"-ERR syntax error\r\n");
    }

    #[test]
    fn bulk_encodes_length_and_value() {
        assert_eq!(&bulk(b"abc")[..], b"$3\r\nabc\r\n");
        assert_eq!(&bulk(b"")[..], b"$0\r\n\r\n");
    }
}
