//! A view of one client request and the table that classifies every command by what it does to
//! connection state and how many reply frames Redis answers it with. The only place in respipe that
//! classifies commands; the session decides from the kind and its own state where a command goes.
//! The arguments of the few commands respipe acts on itself are read where it acts on them:
//! `follow` (the state `SELECT`, `AUTH`, `HELLO` ask for), `clients` (`CLIENT
//! LIST`/`KILL` filters) and the session's tracking (`CLIENT TRACKING` options).
//!
//! Every command respipe puts on a shared connection must have a reply count respipe knows exactly,
//! or the next client's reply goes to the wrong client. [`TABLE`] and [`SUBCOMMANDS`] list every
//! command and subcommand of Redis (up to 8.4) with its [`Class`]; a test walks a real server's
//! `COMMAND` reply and fails on any it does not list. A name in neither table (a module's command, a
//! future one) is forwarded as [`Class::One`]: Redis answers an unknown command with one
//! `-ERR unknown command` and a module command with one reply.
//!
//! [`KEYS`] and [`SUBCOMMAND_KEYS`] add where each one's keys are, and [`keys`] finds a request's
//! keys for a router that places them on servers (sharded mode only; see `command/keys.rs`).
//! [`is_read`] says which commands a replica may answer (`read_from`; see `command/reads.rs`).

use crate::reply::RedisError;
use crate::resp;

mod keys;
mod reads;

pub use keys::{key_spec, keys, KeySpec, Keys, NoKey, Positions, Split, KEYS, SUBCOMMAND_KEYS};
pub use reads::{
    is_read, may_write, NOT_ON_REPLICAS, READS, SCRIPT_WRITES, SUBCOMMAND_READS, SUBCOMMAND_WRITES,
    WRITES,
};

/// What a command does to connection state, which decides where it may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Stateless: runs on whatever connection the session is using.
    Plain,
    /// `QUIT`: `+OK`, then close once every earlier reply is written.
    Quit,
    /// `RESET`: the session's state back to a new connection's, `+RESET`.
    Reset,
    /// `SELECT db` (well-formed: one argument).
    Select,
    /// `AUTH [user] password` (well-formed: one or two arguments).
    Auth,
    /// `HELLO [protover [AUTH user password] [SETNAME name]]`.
    Hello,
    /// `CLIENT SETNAME name` with a valid name.
    SetName(Vec<u8>),
    /// `CLIENT GETNAME`.
    GetName,
    /// `CLIENT SETINFO LIB-NAME|LIB-VER value` with a valid value, or `CLIENT NO-EVICT ON|OFF`:
    /// accepted for the session, `+OK`.
    Accept,
    /// `CLIENT REPLY ON|OFF|SKIP`.
    Reply(ReplyMode),
    /// `CLIENT ID`, `INFO`, `LIST`, `KILL`, `UNBLOCK`, `GETREDIR` or `TRACKINGINFO`: about
    /// respipe's clients, not Redis's.
    Client(ClientOp),
    /// `CLIENT TRACKING ON ...` (true) or `OFF ...` (false): client-side caching, on a dedicated
    /// connection for as long as tracking is on (Redis tracks the keys that connection reads).
    Tracking(bool),
    /// `MULTI`: starts a transaction (needs a dedicated connection).
    Multi,
    /// `EXEC` or `DISCARD`: ends a transaction.
    EndMulti,
    /// `WATCH key...`: needs a dedicated connection until the transaction ends.
    Watch,
    /// `UNWATCH`.
    Unwatch,
    /// A command that may block (BLPOP, XREAD BLOCK...): runs on a dedicated connection.
    Blocking,
    /// `WAIT`, `WAITAOF`: count acknowledgements of this connection's writes, so they run on a
    /// dedicated connection whose write offset first covers the client's earlier writes.
    Wait,
    /// `SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`: the connection streams messages from now on.
    Subscribe,
    /// `UNSUBSCRIBE`, `PUNSUBSCRIBE`, `SUNSUBSCRIBE`.
    Unsubscribe,
    /// `MONITOR`: the connection streams every command Redis runs, for the rest of the connection.
    Monitor,
    /// `SYNC`, `PSYNC`, `REPLCONF`: the client reads the replication stream; it gets a connection of
    /// its own, spliced byte for byte, for the rest of its connection.
    Replicate,
    /// Answered with this error, in Redis's words, by the session itself.
    Error(RedisError),
    /// Refused: no way to give it Redis's semantics through respipe (the reason).
    Refuse(&'static str),
    /// Refused because the configuration lists it in `deny_commands`.
    Denied,
}

/// The `CLIENT` subcommands that describe or act on clients (see `clients.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientOp {
    /// `CLIENT ID`.
    Id,
    /// `CLIENT INFO`.
    Info,
    /// `CLIENT LIST [TYPE type] [ID id...]`.
    List,
    /// `CLIENT KILL addr` or `CLIENT KILL filter value...`.
    Kill,
    /// `CLIENT UNBLOCK id [TIMEOUT|ERROR]`.
    Unblock,
    /// `CLIENT GETREDIR`: the redirect's Redis id becomes the respipe client's.
    GetRedir,
    /// `CLIENT TRACKINGINFO`: likewise for its `redirect` field.
    TrackingInfo,
}

/// `CLIENT REPLY` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    /// Every reply is sent (the default).
    On,
    /// No reply is sent until `CLIENT REPLY ON`.
    Off,
    /// The next command's reply is not sent.
    Skip,
}

/// How Redis frames its answer to one forwarded command, outside subscribe mode and transactions.
/// The upstream connection counts frames by it to know where the next command's reply begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Exactly one reply frame. A RESP3 push that arrives before it was caused by this command (a
    /// shared connection carries no subscriptions or tracking; `DEBUG PROTOCOL push` sends a push
    /// then its reply): it goes along with the reply, uncounted.
    One,
    /// One error frame, or this many frames (RESP2 arrays or RESP3 pushes, all counted), the last
    /// of which completes the answer: `(P|S)UNSUBSCRIBE` outside subscribe mode confirms each
    /// channel argument, or once (with a null channel) without arguments.
    ErrorOr(u32),
    /// `EXEC` or `DISCARD`: one frame, and when it is the transaction's results (an array) this
    /// many more, pushes or not. Redis counts an unsubscribe queued in the transaction as one
    /// element of the array, but writes each of its confirmations as a frame of its own.
    Exec(u32),
}

/// What respipe does with a command, as [`TABLE`] and [`SUBCOMMANDS`] record it; [`classify`] gives
/// the matching [`Kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Forwarded wherever the session's commands run (its shared pool, or its lease); Redis answers
    /// with exactly one reply frame ([`Shape::One`]), or closes the connection (`SHUTDOWN`, `DEBUG
    /// RESTART`), which fails every command in flight on it explicitly.
    One,
    /// Forwarded; outside subscribe mode Redis answers with the frames [`Shape::unsubscribe`] counts.
    Frames,
    /// Runs on a connection lent to the client alone: a transaction (`EXEC`, `DISCARD` and `UNWATCH`
    /// outside one are [`Class::One`]), a command that may block (`XREAD`/`XREADGROUP` only with
    /// `BLOCK`), a stream (subscriptions, `MONITOR`), or a replication reader (`SYNC`, `PSYNC`,
    /// `REPLCONF`: a raw connection spliced to the client), or client-side caching (`CLIENT
    /// TRACKING ON`: every command of the client runs there until tracking is off).
    Lease,
    /// Answered by respipe for the session (when Redis must judge it, it asks on a connection of its
    /// own, or on the session's with a form that acts on nothing: `CLIENT ID|INFO|LIST|KILL`;
    /// `CLIENT UNBLOCK` goes to Redis naming the connection the client is blocked on;
    /// `CLIENT GETREDIR|TRACKINGINFO` go to Redis, and a redirect's id is shown as respipe's).
    Local,
    /// Refused with this reason: respipe cannot give it Redis's semantics.
    Refuse(&'static str),
}

/// The arguments of one request, as the session has them: the raw RESP frame (arguments are
/// iterated lazily, without copies) or the already split arguments of an inline command.
#[derive(Debug, Clone, Copy)]
pub enum Args<'a> {
    /// A complete RESP array-of-bulk-strings frame.
    Resp(&'a [u8]),
    /// The arguments of an inline command.
    Inline(&'a [Vec<u8>]),
}

/// The arguments of one request, in order (see [`Args::iter`]); nothing is allocated.
#[derive(Debug, Clone)]
pub enum ArgsIter<'a> {
    /// Read from a RESP frame's bulk headers as it goes.
    Resp(resp::RequestArgs<'a>),
    /// An inline command's split arguments.
    Inline(std::slice::Iter<'a, Vec<u8>>),
}

/// Why `CLIENT NO-TOUCH` is refused: the flag would reach every client of a shared connection.
const NO_TOUCH: &str = "a per-connection flag on shared connections";
/// Why cluster connection flags are refused: the upstream is a standalone Redis.
const CLUSTER: &str = "cluster connection state";
/// Why `SCRIPT DEBUG YES|SYNC` is refused: the next `EVAL` on that connection becomes a Lua
/// debugger session that takes the connection over (forked with `YES`).
const LUA_DEBUGGER: &str = "Lua debugger sessions";

/// Every Redis command by lower-case name, sorted (binary search), with its class. Containers
/// (`CLIENT`, `CONFIG`...) have their subcommands in [`SUBCOMMANDS`]. Up to Redis 8.4, so a newer
/// server works too; `DEBUG`'s subcommands (which `COMMAND` does not list) all answer one frame,
/// `DEBUG PROTOCOL push` a push before it.
#[rustfmt::skip]
pub const TABLE: &[(&str, Class)] = {
    use Class::*;
    &[
    ("acl", One), ("append", One), ("asking", Refuse(CLUSTER)), ("auth", Local),
    ("bgrewriteaof", One), ("bgsave", One), ("bitcount", One), ("bitfield", One),
    ("bitfield_ro", One), ("bitop", One), ("bitpos", One), ("blmove", Lease), ("blmpop", Lease),
    ("blpop", Lease), ("brpop", Lease), ("brpoplpush", Lease), ("bzmpop", Lease),
    ("bzpopmax", Lease), ("bzpopmin", Lease), ("client", One), ("cluster", One), ("command", One),
    ("config", One), ("copy", One), ("dbsize", One), ("debug", One), ("decr", One), ("decrby", One),
    ("del", One), ("delex", One), ("digest", One), ("discard", Lease), ("dump", One), ("echo", One),
    ("eval", One), ("eval_ro", One), ("evalsha", One), ("evalsha_ro", One), ("exec", Lease),
    ("exists", One), ("expire", One), ("expireat", One), ("expiretime", One), ("failover", One),
    ("fcall", One),
    ("fcall_ro", One), ("flushall", One), ("flushdb", One), ("function", One), ("geoadd", One),
    ("geodist", One), ("geohash", One), ("geopos", One), ("georadius", One), ("georadius_ro", One),
    ("georadiusbymember", One), ("georadiusbymember_ro", One), ("geosearch", One),
    ("geosearchstore", One), ("get", One), ("getbit", One), ("getdel", One), ("getex", One),
    ("getrange", One), ("getset", One), ("hdel", One), ("hello", Local), ("hexists", One),
    ("hexpire", One), ("hexpireat", One), ("hexpiretime", One), ("hget", One), ("hgetall", One),
    ("hgetdel", One), ("hgetex", One), ("hincrby", One), ("hincrbyfloat", One), ("hkeys", One),
    ("hlen", One), ("hmget", One), ("hmset", One), ("hpersist", One), ("hpexpire", One),
    ("hpexpireat", One), ("hpexpiretime", One), ("hpttl", One), ("hrandfield", One), ("hscan", One),
    ("hset", One), ("hsetex", One), ("hsetnx", One), ("hstrlen", One), ("httl", One),
    ("hvals", One), ("incr", One), ("incrby", One), ("incrbyfloat", One), ("info", One),
    ("keys", One), ("lastsave", One), ("latency", One), ("lcs", One), ("lindex", One),
    ("linsert", One), ("llen", One), ("lmove", One), ("lmpop", One), ("lolwut", One), ("lpop", One),
    ("lpos", One), ("lpush", One), ("lpushx", One), ("lrange", One), ("lrem", One), ("lset", One),
    ("ltrim", One), ("memory", One), ("mget", One), ("migrate", One), ("module", One),
    ("monitor", Lease), ("move", One), ("mset", One), ("msetex", One), ("msetnx", One),
    ("multi", Lease), ("object", One), ("persist", One), ("pexpire", One), ("pexpireat", One),
    ("pexpiretime", One), ("pfadd", One), ("pfcount", One), ("pfdebug", One), ("pfmerge", One),
    ("pfselftest", One), ("ping", One), ("psetex", One), ("psubscribe", Lease),
    ("psync", Lease), ("pttl", One), ("publish", One), ("pubsub", One),
    ("punsubscribe", Frames), ("quit", Local), ("randomkey", One), ("readonly", Refuse(CLUSTER)),
    ("readwrite", Refuse(CLUSTER)), ("rename", One), ("renamenx", One),
    ("replconf", Lease), ("replicaof", One), ("reset", Local), ("restore", One),
    ("restore-asking", One), ("role", One), ("rpop", One), ("rpoplpush", One), ("rpush", One),
    ("rpushx", One), ("sadd", One), ("save", One), ("scan", One), ("scard", One), ("script", One),
    ("sdiff", One), ("sdiffstore", One), ("select", Local), ("set", One), ("setbit", One),
    ("setex", One), ("setnx", One), ("setrange", One), ("shutdown", One), ("sinter", One),
    ("sintercard", One), ("sinterstore", One), ("sismember", One), ("slaveof", One),
    ("slowlog", One), ("smembers", One), ("smismember", One), ("smove", One), ("sort", One),
    ("sort_ro", One), ("spop", One), ("spublish", One), ("srandmember", One), ("srem", One),
    ("sscan", One), ("ssubscribe", Lease), ("strlen", One), ("subscribe", Lease), ("substr", One),
    ("sunion", One), ("sunionstore", One), ("sunsubscribe", Frames), ("swapdb", One),
    ("sync", Lease), ("time", One), ("touch", One), ("ttl", One), ("type", One),
    ("unlink", One), ("unsubscribe", Frames), ("unwatch", Lease), ("vadd", One), ("vcard", One),
    ("vdim", One), ("vemb", One), ("vgetattr", One), ("vinfo", One), ("vlinks", One),
    ("vrandmember", One), ("vrem", One), ("vsetattr", One), ("vsim", One), ("wait", Lease),
    ("waitaof", Lease), ("watch", Lease), ("xack", One), ("xackdel", One), ("xadd", One),
    ("xautoclaim", One), ("xclaim", One), ("xdel", One), ("xdelex", One), ("xgroup", One),
    ("xinfo", One), ("xlen", One), ("xpending", One), ("xrange", One), ("xread", Lease),
    ("xreadgroup", Lease), ("xrevrange", One), ("xsetid", One), ("xtrim", One), ("zadd", One),
    ("zcard", One), ("zcount", One), ("zdiff", One), ("zdiffstore", One), ("zincrby", One),
    ("zinter", One), ("zintercard", One), ("zinterstore", One), ("zlexcount", One), ("zmpop", One),
    ("zmscore", One), ("zpopmax", One), ("zpopmin", One), ("zrandmember", One), ("zrange", One),
    ("zrangebylex", One), ("zrangebyscore", One), ("zrangestore", One), ("zrank", One),
    ("zrem", One), ("zremrangebylex", One), ("zremrangebyrank", One), ("zremrangebyscore", One),
    ("zrevrange", One), ("zrevrangebylex", One), ("zrevrangebyscore", One), ("zrevrank", One),
    ("zscan", One), ("zscore", One), ("zunion", One), ("zunionstore", One),
    ]
};

/// Every subcommand by lower-case container and name, sorted, with its class (`CLIENT`'s differ;
/// `SCRIPT DEBUG NO` is forwarded, only `YES` and `SYNC` are refused).
#[rustfmt::skip]
pub const SUBCOMMANDS: &[(&str, &str, Class)] = {
    use Class::*;
    &[
    ("acl", "cat", One), ("acl", "deluser", One), ("acl", "dryrun", One), ("acl", "genpass", One),
    ("acl", "getuser", One), ("acl", "help", One), ("acl", "list", One), ("acl", "load", One),
    ("acl", "log", One), ("acl", "save", One), ("acl", "setuser", One), ("acl", "users", One),
    ("acl", "whoami", One), ("client", "caching", One), ("client", "getname", Local),
    ("client", "getredir", Local), ("client", "help", One), ("client", "id", Local),
    ("client", "info", Local), ("client", "kill", Local), ("client", "list", Local),
    ("client", "no-evict", Local), ("client", "no-touch", Refuse(NO_TOUCH)),
    ("client", "pause", One), ("client", "reply", Local), ("client", "setinfo", Local),
    ("client", "setname", Local), ("client", "tracking", Lease),
    ("client", "trackinginfo", Local), ("client", "unblock", Local), ("client", "unpause", One),
    ("cluster", "addslots", One), ("cluster", "addslotsrange", One), ("cluster", "bumpepoch", One),
    ("cluster", "count-failure-reports", One), ("cluster", "countkeysinslot", One),
    ("cluster", "delslots", One), ("cluster", "delslotsrange", One), ("cluster", "failover", One),
    ("cluster", "flushslots", One), ("cluster", "forget", One), ("cluster", "getkeysinslot", One),
    ("cluster", "help", One), ("cluster", "info", One), ("cluster", "keyslot", One),
    ("cluster", "links", One), ("cluster", "meet", One), ("cluster", "migration", One),
    ("cluster", "myid", One), ("cluster", "myshardid", One), ("cluster", "nodes", One),
    ("cluster", "replicas", One), ("cluster", "replicate", One), ("cluster", "reset", One),
    ("cluster", "saveconfig", One), ("cluster", "set-config-epoch", One),
    ("cluster", "setslot", One), ("cluster", "shards", One), ("cluster", "slaves", One),
    ("cluster", "slot-stats", One), ("cluster", "slots", One), ("command", "count", One),
    ("command", "docs", One), ("command", "getkeys", One), ("command", "getkeysandflags", One),
    ("command", "help", One), ("command", "info", One), ("command", "list", One),
    ("config", "get", One), ("config", "help", One), ("config", "resetstat", One),
    ("config", "rewrite", One), ("config", "set", One), ("function", "delete", One),
    ("function", "dump", One), ("function", "flush", One), ("function", "help", One),
    ("function", "kill", One), ("function", "list", One), ("function", "load", One),
    ("function", "restore", One), ("function", "stats", One), ("latency", "doctor", One),
    ("latency", "graph", One), ("latency", "help", One), ("latency", "histogram", One),
    ("latency", "history", One), ("latency", "latest", One), ("latency", "reset", One),
    ("memory", "doctor", One), ("memory", "help", One), ("memory", "malloc-stats", One),
    ("memory", "purge", One), ("memory", "stats", One), ("memory", "usage", One),
    ("module", "help", One), ("module", "list", One), ("module", "load", One),
    ("module", "loadex", One), ("module", "unload", One), ("object", "encoding", One),
    ("object", "freq", One), ("object", "help", One), ("object", "idletime", One),
    ("object", "refcount", One), ("pubsub", "channels", One), ("pubsub", "help", One),
    ("pubsub", "numpat", One), ("pubsub", "numsub", One), ("pubsub", "shardchannels", One),
    ("pubsub", "shardnumsub", One), ("script", "debug", Refuse(LUA_DEBUGGER)),
    ("script", "exists", One), ("script", "flush", One), ("script", "help", One),
    ("script", "kill", One), ("script", "load", One), ("slowlog", "get", One),
    ("slowlog", "help", One), ("slowlog", "len", One), ("slowlog", "reset", One),
    ("xgroup", "create", One), ("xgroup", "createconsumer", One), ("xgroup", "delconsumer", One),
    ("xgroup", "destroy", One), ("xgroup", "help", One), ("xgroup", "setid", One),
    ("xinfo", "consumers", One), ("xinfo", "groups", One), ("xinfo", "help", One),
    ("xinfo", "stream", One),
    ]
};

/// Longest command name we classify; longer names are unknown commands and go to Redis.
const MAX_NAME: usize = 32;

impl<'a> Args<'a> {
    /// Iterates every argument, the command name first.
    pub fn iter(self) -> ArgsIter<'a> {
        match self {
            Args::Resp(frame) => ArgsIter::Resp(resp::request_args(frame)),
            Args::Inline(args) => ArgsIter::Inline(args.iter()),
        }
    }

    /// The argument at `index` (0 is the command name).
    pub fn get(self, index: usize) -> Option<&'a [u8]> {
        self.iter().nth(index)
    }

    /// How many arguments, the command name included.
    pub fn len(self) -> usize {
        self.iter().count()
    }

    /// True when there are no arguments at all.
    pub fn is_empty(self) -> bool {
        self.iter().next().is_none()
    }
}

/// Classifies one request. `name` is the command name as the client sent it; `deny` lists upper-case
/// names the configuration refuses. Only commands that need their arguments pay for parsing them;
/// everything else is one table lookup.
pub fn classify(name: &[u8], args: Args<'_>, deny: &[String]) -> Kind {
    if !deny.is_empty() && deny.iter().any(|d| d.as_bytes().eq_ignore_ascii_case(name)) {
        return Kind::Denied;
    }
    let mut upper = [0u8; MAX_NAME];
    if name.len() > MAX_NAME {
        return Kind::Plain;
    }
    let upper = &mut upper[..name.len()];
    upper.copy_from_slice(name);
    upper.make_ascii_uppercase();
    match &*upper {
        b"QUIT" => Kind::Quit,
        // `RESET now` goes to Redis, which answers its arity error and resets nothing.
        b"RESET" if args.len() == 1 => Kind::Reset,
        // Malformed forms go to Redis, which answers its own arity error and changes nothing.
        b"SELECT" if args.len() == 2 => Kind::Select,
        b"AUTH" if matches!(args.len(), 2 | 3) => Kind::Auth,
        b"HELLO" => Kind::Hello,
        b"CLIENT" => client(args),
        b"MULTI" => Kind::Multi,
        b"EXEC" | b"DISCARD" => Kind::EndMulti,
        b"WATCH" => Kind::Watch,
        b"UNWATCH" => Kind::Unwatch,
        b"XREAD" | b"XREADGROUP" => {
            if args
                .iter()
                .skip(1)
                .any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
            {
                Kind::Blocking
            } else {
                Kind::Plain
            }
        }
        b"BLPOP" | b"BRPOP" | b"BLMOVE" | b"BRPOPLPUSH" | b"BLMPOP" | b"BZPOPMIN" | b"BZPOPMAX"
        | b"BZMPOP" => Kind::Blocking,
        b"WAIT" | b"WAITAOF" => Kind::Wait,
        b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" => Kind::Subscribe,
        b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"SUNSUBSCRIBE" => Kind::Unsubscribe,
        b"MONITOR" => Kind::Monitor,
        b"SYNC" | b"PSYNC" | b"REPLCONF" => Kind::Replicate,
        b"READONLY" | b"READWRITE" | b"ASKING" => Kind::Refuse(CLUSTER),
        b"SCRIPT" => script(args),
        // Every other name in the table answers one frame; so does any name not in it (Redis's
        // `-ERR unknown command`, or a module command's reply).
        _ => Kind::Plain,
    }
}

/// The table's class of `name` (with `sub`, of that subcommand), in any case; `None` when the
/// table does not list it.
pub fn class(name: &[u8], sub: Option<&[u8]>) -> Option<Class> {
    lookup(TABLE, SUBCOMMANDS, name, sub)
}

/// The entry for `name` (with `sub`, for that subcommand) in a table of commands and its table of
/// subcommands, both sorted by lower-case names; looked up in any case.
fn lookup<T: Copy>(
    commands: &[(&str, T)],
    subcommands: &[(&str, &str, T)],
    name: &[u8],
    sub: Option<&[u8]>,
) -> Option<T> {
    match sub {
        None => commands
            .binary_search_by(|(n, _)| cmp_lower(n.as_bytes(), name))
            .ok()
            .map(|i| commands[i].1),
        Some(sub) => subcommands
            .binary_search_by(|(n, s, _)| {
                cmp_lower(n.as_bytes(), name).then_with(|| cmp_lower(s.as_bytes(), sub))
            })
            .ok()
            .map(|i| subcommands[i].2),
    }
}

impl<'a> Iterator for ArgsIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            ArgsIter::Resp(args) => args.next(),
            ArgsIter::Inline(args) => args.next().map(Vec::as_slice),
        }
    }
}

impl Shape {
    /// How an unsubscribe (`args`: the whole request) is answered outside subscribe mode: one
    /// frame per channel argument, or one without arguments, unless Redis refuses it with one error.
    pub fn unsubscribe(args: Args<'_>) -> Shape {
        let channels = args.len().saturating_sub(1).max(1);
        Shape::ErrorOr(u32::try_from(channels).unwrap_or(u32::MAX))
    }

    /// The frames beyond its first that an unsubscribe queued in a transaction adds to `EXEC`'s
    /// answer.
    pub fn spilled(self) -> u32 {
        match self {
            Shape::ErrorOr(frames) => frames.saturating_sub(1),
            Shape::One | Shape::Exec(_) => 0,
        }
    }

    /// Takes the next frame of the answer (`push`: a RESP3 push); true when it completes the answer,
    /// false when it is carried along with the frame that will.
    #[inline]
    pub fn completes(&mut self, push: bool, frame: &[u8]) -> bool {
        match self {
            Shape::One => !push,
            // A tracking client's invalidation can arrive between the confirmations.
            Shape::ErrorOr(_) if push && is_invalidation(frame) => false,
            Shape::ErrorOr(left) => {
                *left = left.saturating_sub(1);
                matches!(frame.first(), Some(b'-' | b'!')) || *left == 0
            }
            Shape::Exec(more) => {
                if push {
                    return false;
                }
                let ran = frame.first() == Some(&b'*') && !frame.starts_with(b"*-1");
                if !ran || *more == 0 {
                    return true;
                }
                *self = Shape::ErrorOr(*more);
                false
            }
        }
    }
}

/// `CLIENT <subcommand>`: per-connection settings are kept in the session (or refused); the rest
/// are server-wide or read-only and go to Redis.
fn client(args: Args<'_>) -> Kind {
    let Some(sub) = args.get(1) else {
        return Kind::Plain;
    };
    let mut upper = sub.to_ascii_uppercase();
    upper.truncate(MAX_NAME);
    let argc = args.len();
    match upper.as_slice() {
        b"SETNAME" if argc == 3 => match args.get(2) {
            Some(name) if valid_client_name(name) => Kind::SetName(name.to_vec()),
            _ => Kind::Error(RedisError::ClientName),
        },
        b"GETNAME" if argc == 2 => Kind::GetName,
        b"SETINFO" if argc == 4 => {
            let attr = args.get(2).unwrap_or_default();
            if !attr.eq_ignore_ascii_case(b"LIB-NAME") && !attr.eq_ignore_ascii_case(b"LIB-VER") {
                return Kind::Plain;
            }
            if args.get(3).is_some_and(valid_client_name) {
                Kind::Accept
            } else {
                Kind::Error(RedisError::LibName)
            }
        }
        b"REPLY" if argc == 3 => {
            let mode = args.get(2).unwrap_or_default();
            if mode.eq_ignore_ascii_case(b"ON") {
                Kind::Reply(ReplyMode::On)
            } else if mode.eq_ignore_ascii_case(b"OFF") {
                Kind::Reply(ReplyMode::Off)
            } else if mode.eq_ignore_ascii_case(b"SKIP") {
                Kind::Reply(ReplyMode::Skip)
            } else {
                Kind::Error(RedisError::Syntax)
            }
        }
        b"NO-EVICT" if argc == 3 => {
            let flag = args.get(2).unwrap_or_default();
            if flag.eq_ignore_ascii_case(b"ON") || flag.eq_ignore_ascii_case(b"OFF") {
                Kind::Accept
            } else {
                Kind::Error(RedisError::Syntax)
            }
        }
        // Malformed forms go to Redis (its syntax error; nothing is tracked).
        b"TRACKING" if argc > 2 => match args.get(2).unwrap_or_default() {
            on if on.eq_ignore_ascii_case(b"ON") => Kind::Tracking(true),
            off if off.eq_ignore_ascii_case(b"OFF") => Kind::Tracking(false),
            _ => Kind::Plain,
        },
        b"GETREDIR" if argc == 2 => Kind::Client(ClientOp::GetRedir),
        b"TRACKINGINFO" if argc == 2 => Kind::Client(ClientOp::TrackingInfo),
        b"NO-TOUCH" => Kind::Refuse(NO_TOUCH),
        // Malformed forms go to Redis, which answers its own error and acts on nothing.
        b"ID" if argc == 2 => Kind::Client(ClientOp::Id),
        b"INFO" if argc == 2 => Kind::Client(ClientOp::Info),
        b"LIST" => Kind::Client(ClientOp::List),
        b"KILL" if argc > 2 => Kind::Client(ClientOp::Kill),
        b"UNBLOCK" if matches!(argc, 3 | 4) => Kind::Client(ClientOp::Unblock),
        _ => Kind::Plain,
    }
}

/// A harmless form of a `CLIENT` subcommand respipe answers itself, to ask Redis whether a user
/// may run it (Redis checks the subcommand's existence, arity and ACLs before its arguments):
/// the subcommand as the client spelled it (Redis's errors quote it), arguments that change
/// nothing that matters on a short-lived connection. `None` for other commands.
pub fn client_probe(args: Args<'_>) -> Option<bytes::Bytes> {
    let sub = args.get(1)?;
    let mut upper = sub.to_ascii_uppercase();
    upper.truncate(MAX_NAME);
    let rest: &[&[u8]] = match upper.as_slice() {
        b"SETNAME" => &[b"respipe"],
        b"GETNAME" => &[],
        b"REPLY" => &[b"ON"],
        b"NO-EVICT" => &[b"OFF"],
        b"SETINFO" => &[b"LIB-NAME", b"respipe"],
        _ => return None,
    };
    let mut question: Vec<&[u8]> = vec![b"CLIENT", sub];
    question.extend_from_slice(rest);
    Some(resp::encode_request(&question))
}

/// `SCRIPT <subcommand>`: `DEBUG YES|SYNC` would turn the connection's next `EVAL` into a debugger
/// session; everything else is one reply.
fn script(args: Args<'_>) -> Kind {
    let debug = args
        .get(1)
        .is_some_and(|s| s.eq_ignore_ascii_case(b"DEBUG"));
    let mode = args.get(2).unwrap_or_default();
    if debug && (mode.eq_ignore_ascii_case(b"YES") || mode.eq_ignore_ascii_case(b"SYNC")) {
        Kind::Refuse(LUA_DEBUGGER)
    } else {
        Kind::Plain
    }
}

/// True for a RESP3 invalidation push of client-side caching (`>2 invalidate keys|null`).
fn is_invalidation(frame: &[u8]) -> bool {
    frame.starts_with(b">2\r\n$10\r\ninvalidate\r\n")
}

/// The name a refusal gives a command: `container|subcommand` for a subcommand the tables list
/// (`client|no-touch`), else the command's own name.
pub fn refusal_name(name: &[u8], args: Args<'_>) -> Vec<u8> {
    match args.get(1) {
        Some(sub) if class(name, Some(sub)).is_some() => [name, b"|", sub].concat(),
        _ => name.to_vec(),
    }
}

/// Compares a table name (lower case) with a name in any case, as the tables are sorted.
fn cmp_lower(table: &[u8], name: &[u8]) -> std::cmp::Ordering {
    table
        .iter()
        .copied()
        .cmp(name.iter().map(u8::to_ascii_lowercase))
}

/// Redis's rule for client names and lib info: printable ASCII without spaces.
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn classify_words(words: &[&str]) -> Kind {
        let args = inline(words);
        classify(&args[0], Args::Inline(&args), &[])
    }

    #[test]
    fn denied_commands_in_any_case() {
        let deny = vec!["FLUSHALL".to_owned(), "KEYS".to_owned()];
        let args = inline(&["flushall"]);
        assert_eq!(classify(&args[0], Args::Inline(&args), &deny), Kind::Denied);
        let args = inline(&["GET", "k"]);
        assert_eq!(classify(&args[0], Args::Inline(&args), &deny), Kind::Plain);
    }

    #[test]
    fn plain_commands_in_any_case() {
        for cmd in [
            ["get", "k"],
            ["SeT", "k"],
            ["PING", "x"],
            ["nosuchcommand", "x"],
        ] {
            assert_eq!(classify_words(&cmd), Kind::Plain, "{cmd:?}");
        }
    }

    #[test]
    fn connection_state_commands_have_their_kinds() {
        assert_eq!(classify_words(&["multi"]), Kind::Multi);
        assert_eq!(classify_words(&["EXEC"]), Kind::EndMulti);
        assert_eq!(classify_words(&["discard"]), Kind::EndMulti);
        assert_eq!(classify_words(&["watch", "k"]), Kind::Watch);
        assert_eq!(classify_words(&["unwatch"]), Kind::Unwatch);
        assert_eq!(classify_words(&["blpop", "l", "0"]), Kind::Blocking);
        assert_eq!(classify_words(&["WAIT", "1", "0"]), Kind::Wait);
        assert_eq!(classify_words(&["waitaof", "1", "0", "0"]), Kind::Wait);
        assert_eq!(classify_words(&["subscribe", "c"]), Kind::Subscribe);
        assert_eq!(classify_words(&["PUNSUBSCRIBE"]), Kind::Unsubscribe);
        assert_eq!(classify_words(&["monitor"]), Kind::Monitor);
        assert_eq!(classify_words(&["reset"]), Kind::Reset);
        assert_eq!(classify_words(&["quit"]), Kind::Quit);
        assert_eq!(classify_words(&["psync", "?", "-1"]), Kind::Replicate);
        assert_eq!(classify_words(&["SYNC"]), Kind::Replicate);
        assert_eq!(
            classify_words(&["replconf", "capa", "eof"]),
            Kind::Replicate
        );
    }

    #[test]
    fn select_auth_and_hello_only_when_well_formed() {
        assert_eq!(classify_words(&["SELECT", "1"]), Kind::Select);
        assert_eq!(classify_words(&["SELECT"]), Kind::Plain);
        assert_eq!(classify_words(&["SELECT", "1", "2"]), Kind::Plain);
        assert_eq!(classify_words(&["AUTH", "pw"]), Kind::Auth);
        assert_eq!(classify_words(&["auth", "user", "pw"]), Kind::Auth);
        assert_eq!(classify_words(&["AUTH"]), Kind::Plain);
        assert_eq!(classify_words(&["HELLO", "3"]), Kind::Hello);
    }

    #[test]
    fn xread_blocks_only_with_block() {
        let plain = ["XREAD", "COUNT", "1", "STREAMS", "s", "0"];
        assert_eq!(classify_words(&plain), Kind::Plain);
        let blocking = ["xread", "block", "0", "STREAMS", "s", "$"];
        assert_eq!(classify_words(&blocking), Kind::Blocking);
    }

    #[test]
    fn client_subcommands() {
        assert_eq!(
            classify_words(&["CLIENT", "SETNAME", "app"]),
            Kind::SetName(b"app".to_vec())
        );
        assert!(matches!(
            classify_words(&["client", "setname", "a b"]),
            Kind::Error(_)
        ));
        assert_eq!(classify_words(&["client", "getname"]), Kind::GetName);
        assert_eq!(
            classify_words(&["CLIENT", "SETINFO", "lib-name", "redis-rs"]),
            Kind::Accept
        );
        assert_eq!(
            classify_words(&["CLIENT", "REPLY", "off"]),
            Kind::Reply(ReplyMode::Off)
        );
        assert_eq!(
            classify_words(&["CLIENT", "REPLY", "SKIP"]),
            Kind::Reply(ReplyMode::Skip)
        );
        assert!(matches!(
            classify_words(&["CLIENT", "REPLY", "maybe"]),
            Kind::Error(_)
        ));
        assert_eq!(
            classify_words(&["CLIENT", "TRACKING", "on", "OPTIN"]),
            Kind::Tracking(true)
        );
        assert_eq!(
            classify_words(&["client", "tracking", "OFF"]),
            Kind::Tracking(false)
        );
        assert_eq!(classify_words(&["CLIENT", "TRACKING", "x"]), Kind::Plain);
        assert_eq!(classify_words(&["CLIENT", "CACHING", "yes"]), Kind::Plain);
        assert_eq!(
            classify_words(&["CLIENT", "GETREDIR"]),
            Kind::Client(ClientOp::GetRedir)
        );
        assert!(matches!(
            classify_words(&["CLIENT", "NO-TOUCH", "on"]),
            Kind::Refuse(_)
        ));
        assert_eq!(classify_words(&["CLIENT", "NO-EVICT", "on"]), Kind::Accept);
        assert_eq!(
            classify_words(&["CLIENT", "ID"]),
            Kind::Client(ClientOp::Id)
        );
        assert_eq!(
            classify_words(&["client", "list", "type", "normal"]),
            Kind::Client(ClientOp::List)
        );
        assert_eq!(
            classify_words(&["CLIENT", "KILL", "1.2.3.4:5"]),
            Kind::Client(ClientOp::Kill)
        );
        assert_eq!(classify_words(&["CLIENT", "KILL"]), Kind::Plain);
        assert_eq!(
            classify_words(&["CLIENT", "UNBLOCK", "3", "ERROR"]),
            Kind::Client(ClientOp::Unblock)
        );
        assert_eq!(classify_words(&["CLIENT", "ID", "x"]), Kind::Plain);
        assert_eq!(classify_words(&["CLIENT", "PAUSE", "10"]), Kind::Plain);
    }

    #[test]
    fn tables_are_sorted_and_looked_up_in_any_case() {
        assert!(TABLE.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(SUBCOMMANDS
            .windows(2)
            .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
        assert_eq!(class(b"GET", None), Some(Class::One));
        assert_eq!(class(b"unSubscribe", None), Some(Class::Frames));
        assert_eq!(class(b"client", Some(b"SETNAME")), Some(Class::Local));
        assert_eq!(
            class(b"Script", Some(b"debug")),
            Some(Class::Refuse(LUA_DEBUGGER))
        );
        assert_eq!(class(b"nosuchcommand", None), None);
        assert_eq!(class(b"client", Some(b"nosuch")), None);
        // Every container with subcommands is itself in the table.
        for (container, _, _) in SUBCOMMANDS {
            assert!(class(container.as_bytes(), None).is_some(), "{container}");
        }
    }

    /// The class `classify` gives a request, in the table's terms.
    fn class_of(words: &[&str]) -> Class {
        match classify_words(words) {
            Kind::Plain => Class::One,
            Kind::Unsubscribe => Class::Frames,
            Kind::Multi
            | Kind::EndMulti
            | Kind::Watch
            | Kind::Unwatch
            | Kind::Blocking
            | Kind::Wait
            | Kind::Subscribe
            | Kind::Monitor
            | Kind::Replicate
            | Kind::Tracking(_) => Class::Lease,
            Kind::Refuse(why) => Class::Refuse(why),
            Kind::Quit
            | Kind::Reset
            | Kind::Select
            | Kind::Auth
            | Kind::Hello
            | Kind::SetName(_)
            | Kind::GetName
            | Kind::Accept
            | Kind::Reply(_)
            | Kind::Client(_)
            | Kind::Error(_)
            | Kind::Denied => Class::Local,
        }
    }

    /// The table and `classify` agree: a `One` command is plain whatever its arguments, any other
    /// class is what `classify` gives for some well-formed form of it.
    #[test]
    fn classify_agrees_with_the_table() {
        let forms: &[&[&str]] = &[
            &[],
            &["x"],
            &["on"],
            &["x", "y"],
            &["lib-name", "x"],
            &["BLOCK", "0", "STREAMS", "s", "$"],
        ];
        let check = |words: &[&str], want: Class| {
            let got: Vec<Class> = forms
                .iter()
                .map(|extra| {
                    let all: Vec<&str> = words.iter().chain(extra.iter()).copied().collect();
                    class_of(&all)
                })
                .collect();
            if want == Class::One {
                assert!(got.iter().all(|c| *c == Class::One), "{words:?}: {got:?}");
            } else {
                assert!(got.contains(&want), "{words:?}: {want:?} not in {got:?}");
            }
        };
        for (name, want) in TABLE {
            check(&[name], *want);
        }
        for (name, sub, want) in SUBCOMMANDS {
            let mut want = *want;
            if (*name, *sub) == ("script", "debug") {
                // Only `YES` and `SYNC` are refused.
                assert_eq!(class_of(&[name, sub, "yes"]), want);
                assert_eq!(class_of(&[name, sub, "SYNC"]), want);
                want = Class::One;
            }
            check(&[name, sub], want);
        }
    }

    #[test]
    fn shapes_count_frames() {
        const CONFIRM: &[u8] = b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n";
        const PUSH: &[u8] = b">3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n";
        const NOPERM: &[u8] = b"-NOPERM no\r\n";
        let mut one = Shape::One;
        assert!(!one.completes(true, PUSH), "a push is carried along");
        assert!(one.completes(false, b"+OK\r\n"));
        assert!(one.completes(false, NOPERM));

        let unsubscribe = |words: &[&str]| {
            let args = inline(words);
            Shape::unsubscribe(Args::Inline(&args))
        };
        assert_eq!(unsubscribe(&["UNSUBSCRIBE"]), Shape::ErrorOr(1));
        assert_eq!(unsubscribe(&["punsubscribe", "a"]), Shape::ErrorOr(1));
        let mut three = unsubscribe(&["SUNSUBSCRIBE", "a", "b", "c"]);
        assert_eq!(three, Shape::ErrorOr(3));
        assert_eq!(three.spilled(), 2);
        assert!(!three.completes(true, PUSH));
        assert!(!three.completes(false, CONFIRM));
        assert!(three.completes(true, PUSH));
        let mut denied = unsubscribe(&["UNSUBSCRIBE", "a", "b", "c"]);
        assert!(
            denied.completes(false, NOPERM),
            "an error is the whole answer"
        );

        let mut exec = Shape::Exec(2);
        assert!(
            !exec.completes(false, b"*1\r\n*3\r\n"),
            "the results, then 2 more"
        );
        assert!(!exec.completes(false, CONFIRM));
        assert!(exec.completes(true, PUSH));
        for first in [&b"*-1\r\n"[..], b"_\r\n", b"-EXECABORT x\r\n", b"+OK\r\n"] {
            assert!(
                Shape::Exec(2).completes(false, first),
                "{first:?} is the whole answer"
            );
        }
        assert!(Shape::Exec(0).completes(false, b"*0\r\n"));
    }

    #[test]
    fn invalidations_never_count_as_confirmations() {
        const INVALIDATE: &[u8] = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n";
        const PUSH: &[u8] = b">3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n";
        let mut two = Shape::ErrorOr(2);
        assert!(!two.completes(true, INVALIDATE));
        assert!(!two.completes(true, PUSH));
        assert!(!two.completes(true, INVALIDATE));
        assert!(two.completes(true, PUSH));
    }

    #[test]
    fn refusals_name_the_subcommand() {
        let args = inline(&["client", "NO-TOUCH", "on"]);
        assert_eq!(
            refusal_name(&args[0], Args::Inline(&args)),
            b"client|NO-TOUCH"
        );
        let args = inline(&["READONLY", "x"]);
        assert_eq!(refusal_name(&args[0], Args::Inline(&args)), b"READONLY");
    }

    #[test]
    fn script_debug_is_refused_but_no() {
        assert!(matches!(
            classify_words(&["SCRIPT", "DEBUG", "yes"]),
            Kind::Refuse(_)
        ));
        assert_eq!(classify_words(&["script", "debug", "no"]), Kind::Plain);
        assert_eq!(classify_words(&["SCRIPT", "FLUSH"]), Kind::Plain);
        assert_eq!(classify_words(&["SCRIPT"]), Kind::Plain);
    }

    #[test]
    fn client_probes_are_harmless_and_keep_the_spelling() {
        let probe = |words: &[&str]| client_probe(Args::Inline(&inline(words)));
        assert_eq!(
            probe(&["CLIENT", "reply", "OFF"]).as_deref(),
            Some(&b"*3\r\n$6\r\nCLIENT\r\n$5\r\nreply\r\n$2\r\nON\r\n"[..])
        );
        assert_eq!(
            probe(&["client", "SETNAME", "a b"]),
            probe(&["client", "SETNAME", "app"])
        );
        assert_eq!(probe(&["CLIENT", "LIST"]), None);
    }

    #[test]
    fn reset_with_arguments_goes_to_redis() {
        assert_eq!(classify_words(&["RESET", "now"]), Kind::Plain);
    }
}
