//! Replies travelling back to a session, and the one place respipe's own `-ERR` texts are written.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::error::UpstreamError;

/// What an upstream connection hands back for one request (a run of `count` commands from one session).
///
/// A request may be answered in several pieces (a long pipeline streams back as replies arrive), but
/// the pieces of one request arrive in order and their counts add up to the request's count exactly.
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
/// Redis's answer to a connection past `maxclients`.
pub const MAX_CLIENTS: Bytes = Bytes::from_static(b"-ERR max number of clients reached\r\n");

/// Builds an error reply `-<text>\r\n` with any CR/LF in `text` replaced by spaces (a reply line must
/// stay one line).
pub fn error(text: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(text.len() + 3);
    buf.put_u8(b'-');
    for b in text.bytes() {
        buf.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    buf.put_slice(b"\r\n");
    buf.freeze()
}

/// A sharded upstream with every server ejected.
pub fn no_live_shard() -> Bytes {
    error("ERR respipe: no live server in the sharded upstream (every server is ejected)")
}

/// A server of a sharded upstream answered a split or fanned-out command with a reply respipe
/// cannot merge.
pub fn unexpected_shard_reply() -> Bytes {
    error("ERR respipe: a server answered a split command with an unexpected reply")
}

/// Redis Cluster's wording for a command whose keys are on several servers; the reason names
/// respipe's sharding.
pub fn cross_shard() -> Bytes {
    error("CROSSSLOT Keys in request don't hash to the same shard (respipe sharding: use hash tags to keep them together)")
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

/// The request stream was not valid RESP; Redis's wording (`-ERR Protocol error: ...`).
pub fn protocol_error(err: &crate::resp::ProtocolError) -> Bytes {
    error(&format!("ERR {err}"))
}

/// A command respipe refuses because it would leak connection state into a shared connection.
pub fn refused(name: &[u8], why: &str) -> Bytes {
    error(&format!(
        "ERR respipe: '{}' is not supported yet ({why})",
        String::from_utf8_lossy(name).to_lowercase()
    ))
}

/// `WAIT`/`WAITAOF` when Redis refused the no-op that makes them count this client's writes
/// (`redis_error`: its error line): counting nothing would be a false acknowledgement.
pub fn wait_refused(name: &[u8], redis_error: &[u8]) -> Bytes {
    let why = String::from_utf8_lossy(redis_error.strip_prefix(b"-").unwrap_or(redis_error));
    error(&format!(
        "ERR respipe: '{}' needs SPUBLISH to the channel __respipe__wait to count this client's writes, and Redis refused it: {}",
        String::from_utf8_lossy(name).to_lowercase(),
        why.trim_end()
    ))
}

/// A state change Redis accepted, but whose state Redis refuses to set a new connection up in
/// (`reply` is its refusal of the handshake): the client keeps its state.
pub fn unreachable_state(name: &[u8], reply: &str) -> Bytes {
    error(&format!(
        "ERR respipe: Redis accepts '{}' but refuses to set up a connection in the state it leads to ({reply}); the state is unchanged",
        String::from_utf8_lossy(name).to_lowercase()
    ))
}

/// A command the configuration refuses (`deny_commands`).
pub fn denied(name: &[u8]) -> Bytes {
    error(&format!(
        "ERR respipe: '{}' is disabled by configuration (deny_commands)",
        String::from_utf8_lossy(name).to_lowercase()
    ))
}

/// In-flight commands on an upstream connection that was lost.
pub fn upstream_lost(err: &UpstreamError) -> Bytes {
    error(&format!(
        "ERR respipe: upstream connection lost ({err}); the command may or may not have run"
    ))
}

/// New commands while the upstream cannot be reached: failed fast, not sent.
pub fn upstream_unavailable(err: &UpstreamError) -> Bytes {
    error(&format!(
        "ERR respipe: upstream unavailable ({err}); the command was not sent"
    ))
}

/// A command that got no reply within the command timeout; its late reply will be dropped.
pub fn timed_out(addr: &str, timeout: Duration) -> Bytes {
    error(&format!(
        "ERR respipe: upstream {addr} did not answer within {timeout:?}; the command may or may not have run"
    ))
}

/// A request that could not even be queued to the upstream within the command timeout (backpressure).
pub fn queue_timeout(addr: &str, timeout: Duration) -> Bytes {
    error(&format!(
        "ERR respipe: upstream {addr} busy, the command could not be queued within {timeout:?}; it was not sent"
    ))
}

/// The proxy is shutting down and no upstream connection is left to take the command.
pub fn shutting_down() -> Bytes {
    error("ERR respipe: shutting down; the command was not sent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_stay_one_line() {
        assert_eq!(&error("ERR a\r\nb")[..], b"-ERR a  b\r\n");
    }

    #[test]
    fn refused_names_the_command_in_lowercase() {
        assert_eq!(
            &refused(b"MULTI", "connection state")[..],
            &b"-ERR respipe: 'multi' is not supported yet (connection state)\r\n"[..]
        );
    }

    #[test]
    fn bulk_encodes_length_and_value() {
        assert_eq!(&bulk(b"abc")[..], b"$3\r\nabc\r\n");
        assert_eq!(&bulk(b"")[..], b"$0\r\n\r\n");
    }
}
