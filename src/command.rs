//! A view of one client request and the table that classifies every command by what it does to
//! connection state. The only place in respipe that knows Redis command semantics; the session
//! decides from the kind and its own state where a command goes.

use crate::resp;

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
    /// Answered with this exact error line by the session itself.
    Error(&'static str),
    /// Refused: no way to give it Redis's semantics through respipe (the reason).
    Refuse(&'static str),
    /// Refused because the configuration lists it in `deny_commands`.
    Denied,
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

/// The arguments of one request, as the session has them: the raw RESP frame (arguments are
/// iterated lazily, without copies) or the already split arguments of an inline command.
#[derive(Debug, Clone, Copy)]
pub enum Args<'a> {
    /// A complete RESP array-of-bulk-strings frame.
    Resp(&'a [u8]),
    /// The arguments of an inline command.
    Inline(&'a [Vec<u8>]),
}

/// Why replication and cluster-state commands are refused: a shared or lent connection cannot give
/// them their meaning.
const REPLICATION: &str = "replication stream";
/// Why per-connection client-side caching and `NO-TOUCH` are refused for now.
const TRACKING: &str = "per-connection client tracking";
/// Why cluster connection flags are refused: the upstream is a standalone Redis.
const CLUSTER: &str = "cluster connection state";

/// Longest command name we classify; longer names are unknown commands and go to Redis.
const MAX_NAME: usize = 32;

impl<'a> Args<'a> {
    /// Iterates every argument, the command name first.
    pub fn iter(self) -> Box<dyn Iterator<Item = &'a [u8]> + 'a> {
        match self {
            Args::Resp(frame) => Box::new(resp::request_args(frame)),
            Args::Inline(args) => Box::new(args.iter().map(|a| a.as_slice())),
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
        b"SYNC" | b"PSYNC" | b"REPLCONF" => Kind::Refuse(REPLICATION),
        b"READONLY" | b"READWRITE" | b"ASKING" => Kind::Refuse(CLUSTER),
        _ => Kind::Plain,
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
            _ => Kind::Error(
                "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
            ),
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
                Kind::Error(
                    "-ERR lib-name or lib-ver cannot contain spaces, newlines or special characters.\r\n",
                )
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
                Kind::Error("-ERR syntax error\r\n")
            }
        }
        b"NO-EVICT" if argc == 3 => {
            let flag = args.get(2).unwrap_or_default();
            if flag.eq_ignore_ascii_case(b"ON") || flag.eq_ignore_ascii_case(b"OFF") {
                Kind::Accept
            } else {
                Kind::Error("-ERR syntax error\r\n")
            }
        }
        b"TRACKING" | b"CACHING" | b"NO-TOUCH" => Kind::Refuse(TRACKING),
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

/// Redis's rule for client names and lib info: printable ASCII without spaces.
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

/// A strict decimal integer, as Redis's `string2ll` reads it: an optional `-`, then `0` alone or
/// digits that do not start with `0` (so `-0`, `01` and `+1` are not integers).
pub fn parse_i64(arg: &[u8]) -> Option<i64> {
    let digits = arg.strip_prefix(b"-").unwrap_or(arg);
    let canonical = match digits {
        [b'0'] => digits.len() == arg.len(),
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(arg).ok()?.parse().ok()
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
        assert!(matches!(
            classify_words(&["psync", "?", "-1"]),
            Kind::Refuse(_)
        ));
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
        assert!(matches!(
            classify_words(&["CLIENT", "TRACKING", "on"]),
            Kind::Refuse(_)
        ));
        assert_eq!(classify_words(&["CLIENT", "NO-EVICT", "on"]), Kind::Accept);
        assert_eq!(classify_words(&["CLIENT", "ID"]), Kind::Plain);
        assert_eq!(classify_words(&["CLIENT", "LIST"]), Kind::Plain);
    }

    #[test]
    fn integers_are_strict() {
        assert_eq!(parse_i64(b"12"), Some(12));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"01"), None);
        assert_eq!(parse_i64(b"+1"), None);
        assert_eq!(parse_i64(b" 1"), None);
        assert_eq!(parse_i64(b"-0"), None);
        assert_eq!(parse_i64(b"-01"), None);
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_i64(b""), None);
        assert_eq!(parse_i64(b"1x"), None);
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
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
