//! respipe's clients as Redis shows and acts on them: every session's id (from 1, increasing, as
//! Redis numbers connections), what `CLIENT LIST` and `CLIENT INFO` print for it, the filters of
//! `CLIENT LIST` and `CLIENT KILL`, and the signal that closes a killed session.
//!
//! A session publishes its state here when it changes (after a command that is not plain, and when
//! a lease goes), and notes its last command once per read; nothing else on the data path touches
//! the registry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::command::Args;
use crate::pool::PoolKey;
use crate::reply::Lane;
use crate::resp::{self, ReplyScanner};
use crate::upstream::WeakHandle;

/// The `CLIENT LIST` fields of Redis 7.0, used until the upstream's own list has shown its fields.
const FIELDS_7_0: &[&str] = &[
    "id",
    "addr",
    "laddr",
    "fd",
    "name",
    "age",
    "idle",
    "flags",
    "db",
    "sub",
    "psub",
    "ssub",
    "multi",
    "qbuf",
    "qbuf-free",
    "argv-mem",
    "multi-mem",
    "rbs",
    "rbp",
    "obl",
    "oll",
    "omem",
    "tot-mem",
    "events",
    "cmd",
    "user",
    "redir",
    "resp",
];

/// Commands Redis names with their subcommand in `cmd=` (`client|list`, `config|get`).
const CONTAINERS: &[&[u8]] = &[
    b"acl",
    b"client",
    b"cluster",
    b"command",
    b"config",
    b"function",
    b"latency",
    b"memory",
    b"module",
    b"object",
    b"pubsub",
    b"script",
    b"slowlog",
    b"xgroup",
    b"xinfo",
];

/// Longest command name kept for `cmd=`; longer ones are cut (Redis knows no longer command).
const MAX_CMD: usize = 48;

/// Every live session, by id.
#[derive(Debug)]
pub struct Registry {
    /// The next session id; Redis's first connection is 1.
    next_id: AtomicU64,
    clients: Mutex<BTreeMap<u64, Arc<Client>>>,
    /// The `CLIENT LIST` field names of the upstream's Redis version, learned from the first
    /// `CLIENT LIST` or `CLIENT INFO` line Redis sends.
    fields: OnceLock<Box<[Box<str>]>>,
}

/// Where a client connection comes from, as `CLIENT LIST` shows it. Addresses are kept as they
/// are (no text per client) and formatted when listed.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A TCP client: its address, the address respipe accepted it on, the socket's descriptor.
    Tcp {
        /// `addr=`.
        addr: SocketAddr,
        /// `laddr=`.
        laddr: SocketAddr,
        /// `fd=`.
        fd: i32,
    },
    /// A unix socket client (flag `U`): Redis shows `path:0` as both addresses.
    Unix {
        /// The listening socket's path.
        path: Arc<str>,
        /// `fd=`.
        fd: i32,
    },
}

/// One session as the registry knows it.
#[derive(Debug)]
pub struct Client {
    id: u64,
    peer: Peer,
    /// When it connected, in [`coarse_ms`].
    created: u64,
    /// When it last ran a command, in [`coarse_ms`] (`idle=`).
    last_command: AtomicU64,
    /// A hash of the last command's name as `state.cmd` has it: the same command again (the
    /// common case) changes nothing there and takes no lock.
    cmd_key: AtomicU64,
    state: Mutex<Snapshot>,
    /// Set by `CLIENT KILL`; the session's loop checks it every pass and closes.
    killed: AtomicBool,
    /// Wakes an idle session that was killed (a notification sent before the wait starts is kept).
    kill: Notify,
}

/// What a session last published about itself.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Selected database.
    pub db: u32,
    /// Speaks RESP3.
    pub resp3: bool,
    /// The Redis user it authenticated as; `None`: the upstream's configured user.
    pub user: Option<String>,
    /// `CLIENT SETNAME`.
    pub name: Option<Vec<u8>>,
    /// Inside `MULTI` (flag `x`): the commands queued so far (`multi=`, -1 outside).
    pub multi: Option<usize>,
    /// Subscribed (flag `P`, type `pubsub`).
    pub pubsub: bool,
    /// Channels, patterns and shard channels subscribed to (`sub=`, `psub=`, `ssub=`), as
    /// Redis's confirmations count them.
    pub subscriptions: [u64; 3],
    /// In `MONITOR` (flag `O`).
    pub monitor: bool,
    /// `CLIENT SETINFO LIB-NAME` and `LIB-VER` (boxed: most clients never set them).
    pub lib: Option<Box<[String; 2]>>,
    /// The lease a blocking command waits on (flag `b` while it lives) and, once Redis said, that
    /// connection's Redis client id (the target of `CLIENT UNBLOCK`), and the upstream server it
    /// is on.
    pub blocked: Option<(WeakHandle, Option<u64>, Lane)>,
    /// The state of the shared pool its commands go to (when it holds no lease), while it runs
    /// as a client's Redis user: Redis refusing that pool's user closes the session unless its
    /// lease is up (see `session::close_refused`). `None` for the configured user.
    pub shared: Option<PoolKey>,
    /// The lease it holds, if any.
    pub lease: Option<WeakHandle>,
    /// While subscribed to `__redis__:invalidate`: the Redis client id of the subscribed lease,
    /// once Redis said (the connection a tracking client's `REDIRECT <this client>` names).
    pub subscriber: Option<u64>,
    /// `CLIENT TRACKING` is on (flag `t`).
    pub tracking: bool,
    /// Last command, lower case, with the subcommand of container commands.
    cmd: String,
}

/// Client types of `TYPE` filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    /// Not subscribed (MONITOR clients included).
    Normal,
    /// Subscribed.
    Pubsub,
    /// Replicas and masters: respipe has none.
    Replication,
}

/// The clients a `CLIENT LIST` or `CLIENT KILL` names. Every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Any of these ids (empty: any id).
    pub ids: Vec<u64>,
    /// `ADDR`.
    pub addr: Option<String>,
    /// `LADDR`.
    pub laddr: Option<String>,
    /// `USER`.
    pub user: Option<String>,
    /// `TYPE`.
    pub kind: Option<ClientType>,
    /// `MAXAGE`: connected at least this many seconds.
    pub max_age: Option<u64>,
    /// `SKIPME yes` (the default of the filter form): not the caller.
    pub skip_me: bool,
}

/// Why a `CLIENT LIST` or `CLIENT KILL` filter cannot be read or applied; `Display` is the text
/// after `ERR ` (Redis's wording where Redis has one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// An option without its value, or an unknown option.
    #[error("syntax error")]
    Syntax,
    /// An id or age that is not a number.
    #[error("value is not an integer or out of range")]
    NotInteger,
    /// A `TYPE` Redis does not know.
    #[error("Unknown client type '{0}'")]
    UnknownType(String),
    /// A `CLIENT KILL` option respipe cannot apply.
    #[error("CLIENT KILL filter '{0}' is not supported")]
    Unsupported(String),
}

impl Registry {
    /// An empty registry; the first session gets id 1.
    pub fn new() -> Self {
        Registry {
            next_id: AtomicU64::new(1),
            clients: Mutex::new(BTreeMap::new()),
            fields: OnceLock::new(),
        }
    }

    /// A fresh session id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a session; it stays listed until [`Registry::remove`].
    pub fn register(&self, id: u64, peer: Peer) -> Arc<Client> {
        let client = Arc::new(Client {
            id,
            peer,
            created: coarse_ms(),
            last_command: AtomicU64::new(coarse_ms()),
            cmd_key: AtomicU64::new(0),
            state: Mutex::new(Snapshot::default()),
            killed: AtomicBool::new(false),
            kill: Notify::new(),
        });
        lock(&self.clients).insert(id, client.clone());
        client
    }

    /// The session has ended.
    pub fn remove(&self, id: u64) {
        lock(&self.clients).remove(&id);
    }

    /// The session with this id, if it is connected.
    pub fn get(&self, id: u64) -> Option<Arc<Client>> {
        lock(&self.clients).get(&id).cloned()
    }

    /// Every session `filter` names, in id order, but those killed already; `me` is the caller
    /// (for `SKIPME`).
    pub fn matching(&self, filter: &Filter, me: u64, default_user: &str) -> Vec<Arc<Client>> {
        let now = coarse_ms();
        lock(&self.clients)
            .values()
            .filter(|c| !c.is_killed())
            .filter(|c| !(filter.skip_me && c.id == me))
            .filter(|c| c.matches(filter, now, default_user))
            .cloned()
            .collect()
    }

    /// Kills every session, but those killed already, whose published state `doomed` picks (each
    /// snapshot locked in turn); returns how many.
    pub fn kill_where(&self, doomed: impl Fn(&Snapshot) -> bool) -> usize {
        let chosen: Vec<Arc<Client>> = lock(&self.clients)
            .values()
            .filter(|c| !c.is_killed() && doomed(&c.snapshot()))
            .cloned()
            .collect();
        for client in &chosen {
            client.kill();
        }
        chosen.len()
    }

    /// Learns the field names from a line of Redis's own `CLIENT LIST` or `CLIENT INFO` reply
    /// (`bytes` as Redis sent it); the first one learned stays.
    pub fn learn_fields(&self, reply: &[u8]) {
        if self.fields.get().is_some() {
            return;
        }
        let Some(text) = reply_text(reply) else {
            return;
        };
        let Some(line) = text.split(|&b| b == b'\n').next().filter(|l| !l.is_empty()) else {
            return;
        };
        let fields: Option<Vec<Box<str>>> = line
            .split(|&b| b == b' ')
            .map(|pair| {
                let key = &pair[..pair.iter().position(|&b| b == b'=')?];
                std::str::from_utf8(key).ok().map(Into::into)
            })
            .collect();
        if let Some(fields) = fields.filter(|f| f.first().is_some_and(|k| &**k == "id")) {
            let _ = self.fields.set(fields.into_boxed_slice());
        }
    }

    /// True once Redis's field names are known.
    pub fn knows_fields(&self) -> bool {
        self.fields.get().is_some()
    }

    /// `CLIENT LIST` of `clients`, each line ending in `\n`, in the reply type Redis used in
    /// `like` (a RESP3 verbatim string or a bulk string).
    pub fn list(&self, clients: &[Arc<Client>], default_user: &str, like: &[u8]) -> Bytes {
        let now = coarse_ms();
        let mut text = String::new();
        for client in clients {
            client.line(
                self.field_names(),
                &client.snapshot(),
                now,
                default_user,
                &mut text,
            );
        }
        text_reply(&text, like)
    }

    fn field_names(&self) -> Fields<'_> {
        match self.fields.get() {
            Some(learned) => Fields::Learned(learned),
            None => Fields::Builtin(FIELDS_7_0),
        }
    }
}

impl Peer {
    /// `addr=`: `ip:port`, or `path:0` for a unix socket.
    pub fn addr(&self) -> String {
        match self {
            Peer::Tcp { addr, .. } => addr.to_string(),
            Peer::Unix { path, .. } => format!("{path}:0"),
        }
    }

    /// `laddr=`: the address respipe accepted the client on.
    pub fn laddr(&self) -> String {
        match self {
            Peer::Tcp { laddr, .. } => laddr.to_string(),
            Peer::Unix { path, .. } => format!("{path}:0"),
        }
    }

    fn fd(&self) -> i32 {
        match self {
            Peer::Tcp { fd, .. } | Peer::Unix { fd, .. } => *fd,
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

/// Field names: learned from Redis, or the built-in list.
enum Fields<'a> {
    Learned(&'a [Box<str>]),
    Builtin(&'static [&'static str]),
}

impl Fields<'_> {
    fn iter(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Fields::Learned(f) => Box::new(f.iter().map(|s| &**s)),
            Fields::Builtin(f) => Box::new(f.iter().copied()),
        }
    }
}

impl Client {
    /// The session's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Where it connects from (`addr=`).
    pub fn addr(&self) -> String {
        self.peer.addr()
    }

    /// Closes the session as Redis closes a killed connection.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.kill.notify_one();
    }

    /// True once the session has been killed (one relaxed load: checked every pass of its loop).
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Resolves once the session has been killed (wakes it when it waits for nothing else).
    pub fn killed(&self) -> Notified<'_> {
        self.kill.notified()
    }

    /// The published state, for the session to update.
    pub fn snapshot(&self) -> MutexGuard<'_, Snapshot> {
        lock(&self.state)
    }

    /// Notes the command the session is running (`cmd=`, and `idle=` restarts). Called once per
    /// read of the client's requests: a coarse clock read and, unless the command differs from the
    /// last one, no lock.
    pub fn ran(&self, name: &[u8], args: Args<'_>) {
        self.last_command.store(coarse_ms(), Ordering::Relaxed);
        let sub = if CONTAINERS.iter().any(|c| c.eq_ignore_ascii_case(name)) {
            args.get(1)
        } else {
            None
        };
        let key = fold_hash(name, sub.unwrap_or_default());
        if self.cmd_key.swap(key, Ordering::Relaxed) == key {
            return;
        }
        let mut state = self.snapshot();
        let cmd = &mut state.cmd;
        cmd.clear();
        push_lower(cmd, name);
        if let Some(sub) = sub {
            cmd.push('|');
            push_lower(cmd, sub);
        }
    }

    /// Follows a frame of the session's subscription stream: a (un)subscribe confirmation
    /// updates the counts; messages and anything else are left alone.
    pub fn count_subscriptions(&self, frame: &[u8]) {
        if let Some((kind, count)) = confirmation(frame) {
            let mut state = self.snapshot();
            let counts = &mut state.subscriptions;
            // Redis counts channels and patterns together, shard channels apart: each
            // confirmation changes only its own kind.
            counts[kind] = match kind {
                0 => count.saturating_sub(counts[1]),
                1 => count.saturating_sub(counts[0]),
                _ => count,
            };
        }
    }

    fn age(&self, now: u64) -> u64 {
        now.saturating_sub(self.created) / 1000
    }

    fn matches(&self, filter: &Filter, now: u64, default_user: &str) -> bool {
        if !filter.ids.is_empty() && !filter.ids.contains(&self.id) {
            return false;
        }
        if filter.addr.as_ref().is_some_and(|a| *a != self.peer.addr())
            || filter
                .laddr
                .as_ref()
                .is_some_and(|a| *a != self.peer.laddr())
            || filter.max_age.is_some_and(|max| self.age(now) < max)
        {
            return false;
        }
        if filter.user.is_none() && filter.kind.is_none() {
            return true;
        }
        let state = self.snapshot();
        let user = state.user.as_deref().unwrap_or(default_user);
        filter.user.as_ref().is_none_or(|u| u == user)
            && filter.kind.is_none_or(|k| k == state.kind())
    }

    /// Appends this client's `CLIENT LIST` line (with its `\n`).
    fn line(
        &self,
        fields: Fields<'_>,
        state: &Snapshot,
        now: u64,
        default_user: &str,
        out: &mut String,
    ) {
        let idle_ms = now.saturating_sub(self.last_command.load(Ordering::Relaxed));
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(field);
            out.push('=');
            let _ = match field {
                "id" => write!(out, "{}", self.id),
                "addr" => write!(out, "{}", self.peer.addr()),
                "laddr" => write!(out, "{}", self.peer.laddr()),
                "fd" => write!(out, "{}", self.peer.fd()),
                "name" => write!(
                    out,
                    "{}",
                    String::from_utf8_lossy(state.name.as_deref().unwrap_or_default())
                ),
                "age" => write!(out, "{}", self.age(now)),
                "idle" => write!(out, "{}", idle_ms / 1000),
                "flags" => write!(
                    out,
                    "{}",
                    state.flags(matches!(self.peer, Peer::Unix { .. }))
                ),
                "db" => write!(out, "{}", state.db),
                "multi" => match state.multi {
                    Some(queued) => write!(out, "{queued}"),
                    None => write!(out, "-1"),
                },
                "sub" => write!(out, "{}", state.subscriptions[0]),
                "psub" => write!(out, "{}", state.subscriptions[1]),
                "ssub" => write!(out, "{}", state.subscriptions[2]),
                "events" => write!(out, "r"),
                "cmd" if state.cmd.is_empty() => write!(out, "NULL"),
                "cmd" => write!(out, "{}", state.cmd),
                "user" => write!(out, "{}", state.user.as_deref().unwrap_or(default_user)),
                "redir" => write!(out, "-1"),
                "resp" => write!(out, "{}", if state.resp3 { 3 } else { 2 }),
                "lib-name" => write!(out, "{}", state.lib.as_ref().map_or("", |l| &l[0])),
                "lib-ver" => write!(out, "{}", state.lib.as_ref().map_or("", |l| &l[1])),
                // Buffer sizes and anything newer: respipe reports 0.
                _ => write!(out, "0"),
            };
        }
        out.push('\n');
    }
}

impl Snapshot {
    fn kind(&self) -> ClientType {
        if self.pubsub {
            ClientType::Pubsub
        } else {
            ClientType::Normal
        }
    }

    /// Redis's flag letters, in its order.
    fn flags(&self, unix: bool) -> String {
        let blocked = self
            .blocked
            .as_ref()
            .is_some_and(|(lease, _, _)| lease.is_alive());
        let mut flags: String = [
            (self.monitor, 'O'),
            (self.pubsub, 'P'),
            (self.multi.is_some(), 'x'),
            (blocked, 'b'),
            (self.tracking, 't'),
            (unix, 'U'),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| *c)
        .collect();
        if flags.is_empty() {
            flags.push('N');
        }
        flags
    }

    /// The Redis client id of the lease a blocking command waits on while it lives, and the
    /// upstream server that id belongs to.
    pub fn blocked_on(&self) -> Option<(u64, Lane)> {
        let (lease, id, lane) = self.blocked.as_ref()?;
        lease.is_alive().then_some(((*id)?, *lane))
    }
}

impl Filter {
    /// The filter of a `CLIENT KILL` Redis has accepted: `args` from the subcommand on.
    /// `Err` names an option respipe cannot apply.
    pub fn kill(args: &[&[u8]]) -> Result<Filter, FilterError> {
        if let [_, addr] = args {
            // The old form: exactly that address, the caller included.
            return Ok(Filter {
                addr: Some(String::from_utf8_lossy(addr).into_owned()),
                ..Filter::default()
            });
        }
        let mut filter = Filter {
            skip_me: true,
            ..Filter::default()
        };
        for pair in args[1..].chunks(2) {
            let [option, value] = pair else {
                return Err(FilterError::Syntax);
            };
            let text = || String::from_utf8_lossy(value).into_owned();
            match option.to_ascii_lowercase().as_slice() {
                b"id" => filter.ids = vec![number(value)?],
                b"type" => filter.kind = Some(client_type(value)?),
                b"addr" => filter.addr = Some(text()),
                b"laddr" => filter.laddr = Some(text()),
                b"user" => filter.user = Some(text()),
                b"skipme" => filter.skip_me = !value.eq_ignore_ascii_case(b"no"),
                b"maxage" => filter.max_age = Some(number(value)?),
                other => {
                    return Err(FilterError::Unsupported(
                        String::from_utf8_lossy(other).into_owned(),
                    ))
                }
            }
        }
        Ok(filter)
    }

    /// The filter of a `CLIENT LIST [TYPE type] [ID id...]` Redis has accepted.
    pub fn list(args: &[&[u8]]) -> Result<Filter, FilterError> {
        let mut filter = Filter::default();
        let mut i = 1;
        while i < args.len() {
            let option = args[i].to_ascii_lowercase();
            match (option.as_slice(), args.get(i + 1)) {
                (b"type", Some(value)) => {
                    filter.kind = Some(client_type(value)?);
                    i += 2;
                }
                (b"id", Some(_)) => {
                    filter.ids = args[i + 1..]
                        .iter()
                        .map(|id| number(id))
                        .collect::<Result<_, _>>()?;
                    break;
                }
                _ => return Err(FilterError::Syntax),
            }
        }
        Ok(filter)
    }
}

/// The `id` of a `HELLO` reply (RESP2 array or RESP3 map) replaced by `id`; `None` when the
/// reply has no `id` field (an error).
pub fn hello_with_id(reply: &[u8], id: u64) -> Option<Bytes> {
    const KEY: &[u8] = b"\r\n$2\r\nid\r\n:";
    let at = reply.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let end = at + reply[at..].windows(2).position(|w| w == b"\r\n")?;
    let mut out = BytesMut::with_capacity(reply.len() + 20);
    out.put_slice(&reply[..at]);
    out.put_slice(id.to_string().as_bytes());
    out.put_slice(&reply[end..]);
    Some(out.freeze())
}

/// A subscription confirmation (`subscribe`, `psubscribe`, `ssubscribe` or their `un` forms, as a
/// RESP2 array or a RESP3 push): the kind (0 channels, 1 patterns, 2 shard channels) and the count
/// Redis reports.
fn confirmation(frame: &[u8]) -> Option<(usize, u64)> {
    const KINDS: [(&[u8], usize); 6] = [
        (b"$9\r\nsubscribe\r\n", 0),
        (b"$11\r\nunsubscribe\r\n", 0),
        (b"$10\r\npsubscribe\r\n", 1),
        (b"$12\r\npunsubscribe\r\n", 1),
        (b"$10\r\nssubscribe\r\n", 2),
        (b"$12\r\nsunsubscribe\r\n", 2),
    ];
    let rest = frame
        .strip_prefix(b"*3\r\n")
        .or_else(|| frame.strip_prefix(b">3\r\n"))?;
    let (name, kind) = KINDS.iter().find(|(name, _)| rest.starts_with(name))?;
    let rest = &rest[name.len()..];
    let channel = ReplyScanner::default().scan(rest).ok()??;
    integer_reply(&rest[channel.len..]).map(|count| (*kind, count))
}

/// A non-negative integer reply (`:n`), as Redis's `CLIENT ID` sends it.
pub fn integer_reply(reply: &[u8]) -> Option<u64> {
    let text = reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    u64::try_from(resp::parse_int(text)?).ok()
}

/// `:n`.
pub fn integer(n: u64) -> Bytes {
    Bytes::from(format!(":{n}\r\n"))
}

/// `text` in the reply type of `like`: a RESP3 verbatim string (`=`, format `txt`) when Redis sent
/// one, else a bulk string.
fn text_reply(text: &str, like: &[u8]) -> Bytes {
    if like.first() == Some(&b'=') {
        Bytes::from(format!("={}\r\ntxt:{text}\r\n", text.len() + 4))
    } else {
        Bytes::from(format!("${}\r\n{text}\r\n", text.len()))
    }
}

/// The text of a bulk or verbatim string reply.
fn reply_text(reply: &[u8]) -> Option<&[u8]> {
    let body = match reply.first()? {
        b'$' | b'=' => &reply[reply.windows(2).position(|w| w == b"\r\n")? + 2..],
        _ => return None,
    };
    let body = body.strip_suffix(b"\r\n")?;
    Some(if reply[0] == b'=' {
        body.get(4..)?
    } else {
        body
    })
}

/// A client id or age, read as Redis reads it (`string2ll`). Redis accepts a negative id in
/// `CLIENT LIST ID`; it is 0 here, an id no client has.
fn number(value: &[u8]) -> Result<u64, FilterError> {
    let n = resp::parse_int(value).ok_or(FilterError::NotInteger)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn client_type(value: &[u8]) -> Result<ClientType, FilterError> {
    match value.to_ascii_lowercase().as_slice() {
        b"normal" => Ok(ClientType::Normal),
        b"pubsub" => Ok(ClientType::Pubsub),
        b"master" | b"slave" | b"replica" => Ok(ClientType::Replication),
        _ => Err(FilterError::UnknownType(
            String::from_utf8_lossy(value).into_owned(),
        )),
    }
}

/// Milliseconds of the coarse monotonic clock: a few milliseconds' resolution for a fraction of
/// `Instant::now`'s cost (`age=` and `idle=` are whole seconds).
#[cfg(target_os = "linux")]
pub(crate) fn coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid `timespec` for the call to fill; the clock exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or_default();
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or_default();
    secs * 1000 + nanos / 1_000_000
}

/// Milliseconds since the first call (no coarse clock here).
#[cfg(not(target_os = "linux"))]
pub(crate) fn coarse_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let elapsed = START.get_or_init(std::time::Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// FNV-1a of a command name and subcommand, case folded (never 0, the "nothing yet" key).
fn fold_hash(name: &[u8], sub: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.iter().chain(b"|").chain(sub) {
        hash = (hash ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0000_01b3);
    }
    hash | 1
}

fn push_lower(out: &mut String, bytes: &[u8]) {
    for &b in bytes.iter().take(MAX_CMD.saturating_sub(out.len())) {
        out.push(char::from(b.to_ascii_lowercase()));
    }
}

/// Locks a mutex held only for short field updates; poisoning is ignored (nothing is left
/// half-updated by a panic there).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(addr: &str) -> Peer {
        Peer::Tcp {
            addr: addr.parse().unwrap(),
            laddr: "127.0.0.1:6380".parse().unwrap(),
            fd: 9,
        }
    }

    #[test]
    fn kill_where_picks_by_snapshot_and_skips_the_killed() {
        use crate::pool::Credentials;
        let key = |password: &str| PoolKey {
            db: 0,
            resp3: false,
            auth: Some(Arc::new(Credentials {
                user: Some("bob".into()),
                password: password.into(),
            })),
        };
        let r = Registry::new();
        let old = r.register(1, peer("127.0.0.1:5001"));
        old.snapshot().shared = Some(key("old"));
        let other = r.register(2, peer("127.0.0.1:5002"));
        other.snapshot().shared = Some(key("other"));
        let configured = r.register(3, peer("127.0.0.1:5003"));
        // The same user with another password is another pool's state: it stays.
        let doomed = |s: &Snapshot| s.shared == Some(key("old"));
        assert_eq!(r.kill_where(doomed), 1);
        assert!(old.is_killed());
        assert!(!other.is_killed() && !configured.is_killed());
        // Killed already: not counted again.
        assert_eq!(r.kill_where(doomed), 0);
    }

    #[test]
    fn ids_start_at_one_and_increase() {
        let r = Registry::new();
        assert_eq!(r.next_id(), 1);
        assert_eq!(r.next_id(), 2);
    }

    #[test]
    fn lines_follow_the_learned_fields() {
        let r = Registry::new();
        let c = r.register(7, peer("127.0.0.1:5000"));
        c.snapshot().name = Some(b"app".to_vec());
        let args: Vec<Vec<u8>> = vec![b"CLIENT".to_vec(), b"List".to_vec()];
        c.ran(b"CLIENT", Args::Inline(&args));
        let list = r.list(std::slice::from_ref(&c), "default", b"$");
        let text = String::from_utf8(list.to_vec()).unwrap();
        assert!(text.starts_with("$"), "{text}");
        assert!(text.contains("\r\nid=7 addr=127.0.0.1:5000 laddr=127.0.0.1:6380 fd=9 name=app age=0 idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0"), "{text}");
        assert!(
            text.ends_with("cmd=client|list user=default redir=-1 resp=2\n\r\n"),
            "{text}"
        );

        r.learn_fields(b"$29\r\nid=3 addr=x lib-name=redis-py\n\r\n");
        c.snapshot().lib = Some(Box::new(["redis-rs".into(), String::new()]));
        let list = r.list(&[c], "bob", b"=");
        assert_eq!(
            &list[..],
            b"=47\r\ntxt:id=7 addr=127.0.0.1:5000 lib-name=redis-rs\n\r\n"
        );
    }

    #[test]
    fn kill_filters() {
        let a: Vec<&[u8]> = vec![b"KILL", b"1.2.3.4:5"];
        let f = Filter::kill(&a).unwrap();
        assert_eq!(f.addr.as_deref(), Some("1.2.3.4:5"));
        assert!(!f.skip_me, "the old form can kill the caller");
        let a: Vec<&[u8]> = vec![b"kill", b"ID", b"4", b"skipme", b"NO", b"type", b"pubsub"];
        let f = Filter::kill(&a).unwrap();
        assert_eq!(f.ids, [4]);
        assert!(!f.skip_me);
        assert_eq!(f.kind, Some(ClientType::Pubsub));
        let a: Vec<&[u8]> = vec![b"kill", b"user", b"bob"];
        assert!(Filter::kill(&a).unwrap().skip_me);
        let a: Vec<&[u8]> = vec![b"kill", b"future", b"x"];
        assert!(Filter::kill(&a).is_err());
    }

    #[test]
    fn matching_applies_every_condition() {
        let r = Registry::new();
        let a = r.register(1, peer("127.0.0.1:1"));
        let b = r.register(2, peer("127.0.0.1:2"));
        b.snapshot().user = Some("bob".into());
        b.snapshot().pubsub = true;
        let ids = |f: &Filter, me| -> Vec<u64> {
            r.matching(f, me, "default")
                .iter()
                .map(|c| c.id())
                .collect()
        };
        let mut f = Filter::default();
        assert_eq!(ids(&f, 1), [1, 2]);
        f.skip_me = true;
        assert_eq!(ids(&f, 1), [2]);
        let f = Filter {
            user: Some("default".into()),
            ..Filter::default()
        };
        assert_eq!(ids(&f, 9), [1]);
        let f = Filter {
            kind: Some(ClientType::Pubsub),
            ..Filter::default()
        };
        assert_eq!(ids(&f, 9), [2]);
        let list: Vec<&[u8]> = vec![b"LIST", b"ID", b"2", b"5"];
        assert_eq!(ids(&Filter::list(&list).unwrap(), 9), [2]);
        let list: Vec<&[u8]> = vec![b"LIST", b"TYPE", b"master"];
        assert!(ids(&Filter::list(&list).unwrap(), 9).is_empty());
        drop(a);
        r.remove(1);
        assert_eq!(ids(&Filter::default(), 9), [2]);
    }

    #[test]
    fn filter_ids_are_read_as_redis_reads_them() {
        let list = |id: &'static [u8]| Filter::list(&[b"LIST", b"ID", id]);
        // Redis 7 accepts `CLIENT LIST ID -1` (and lists nobody), refuses `01` and `+1`.
        assert_eq!(list(b"-1").unwrap().ids, [0]);
        assert_eq!(list(b"01"), Err(FilterError::NotInteger));
        assert_eq!(list(b"+1"), Err(FilterError::NotInteger));
        assert_eq!(list(b"12").unwrap().ids, [12]);
    }

    #[test]
    fn hello_id_is_replaced() {
        let resp2 = b"*6\r\n$6\r\nserver\r\n$5\r\nredis\r\n$2\r\nid\r\n:12345\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n";
        let out = hello_with_id(resp2, 7).unwrap();
        assert_eq!(
            &out[..],
            b"*6\r\n$6\r\nserver\r\n$5\r\nredis\r\n$2\r\nid\r\n:7\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n"
        );
        let resp3 = b"%3\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:9\r\n$4\r\nrole\r\n$6\r\nmaster\r\n";
        assert_eq!(
            &hello_with_id(resp3, 1234).unwrap()[..],
            b"%3\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:1234\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
        );
        assert!(hello_with_id(b"-NOPROTO x\r\n", 7).is_none());
    }

    #[test]
    fn subscriptions_are_counted_from_confirmations() {
        let r = Registry::new();
        let c = r.register(1, peer("127.0.0.1:1"));
        c.count_subscriptions(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        c.count_subscriptions(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n");
        c.count_subscriptions(b">3\r\n$10\r\npsubscribe\r\n$2\r\np*\r\n:3\r\n");
        c.count_subscriptions(b">3\r\n$10\r\nssubscribe\r\n$1\r\ns\r\n:1\r\n");
        c.count_subscriptions(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n");
        assert_eq!(c.snapshot().subscriptions, [2, 1, 1]);
        c.count_subscriptions(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:2\r\n");
        c.count_subscriptions(b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:1\r\n");
        assert_eq!(c.snapshot().subscriptions, [1, 0, 1]);
    }

    #[test]
    fn integer_replies() {
        assert_eq!(integer_reply(b":42\r\n"), Some(42));
        assert_eq!(integer_reply(b"-NOPERM x\r\n"), None);
        assert_eq!(&integer(3)[..], b":3\r\n");
    }
}
