//! A view of one client request and the table that classifies every command: forward, answer
//! locally, or refuse. The only place in respipe that knows Redis command semantics.

use crate::resp;

/// What the session does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send it to the session's shared upstream connection; Redis answers it.
    Forward,
    /// The session answers it itself.
    Answer(Local),
}

/// A request the session answers without Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// `QUIT`: answer `+OK`, then close once every earlier reply is written.
    Quit,
    /// `CLIENT SETNAME name`: kept in the session, answered `+OK`.
    SetName(Vec<u8>),
    /// `CLIENT GETNAME`: answered from the session.
    GetName,
    /// `CLIENT SETINFO LIB-NAME|LIB-VER value`: accepted and answered `+OK` by the session.
    SetInfo,
    /// Answered with this exact error line (a Redis error the session can give by itself).
    Error(&'static str),
    /// Refused: the command would put connection-exclusive state on a shared connection.
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

/// Why a command is refused until full connection-state support lands.
const CONNECTION_STATE: &str = "connection state";
/// Why blocking commands are refused: they would stall every client sharing the connection.
const BLOCKING: &str = "blocking command";
/// Why replication and monitoring streams are refused: their replies never end.
const STREAM: &str = "connection-exclusive reply stream";

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

/// Classifies one request. `name` is the command name as the client sent it; `db` is the database
/// the session's shared connection is in. Only commands that need their arguments pay for parsing
/// them; everything else is one table lookup.
pub fn classify(name: &[u8], args: Args<'_>, db: u32) -> Action {
    let mut upper = [0u8; MAX_NAME];
    if name.len() > MAX_NAME {
        return Action::Forward;
    }
    let upper = &mut upper[..name.len()];
    upper.copy_from_slice(name);
    upper.make_ascii_uppercase();
    match &*upper {
        b"QUIT" => Action::Answer(Local::Quit),
        b"SELECT" => select(args, db),
        b"CLIENT" => client(args),
        b"XREAD" | b"XREADGROUP" => {
            if args
                .iter()
                .skip(1)
                .any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
            {
                Action::Answer(Local::Refuse(BLOCKING))
            } else {
                Action::Forward
            }
        }
        b"MULTI" | b"EXEC" | b"DISCARD" | b"WATCH" | b"UNWATCH" | b"AUTH" | b"HELLO" | b"RESET"
        | b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE"
        | b"SUNSUBSCRIBE" | b"READONLY" | b"READWRITE" | b"ASKING" => {
            Action::Answer(Local::Refuse(CONNECTION_STATE))
        }
        b"BLPOP" | b"BRPOP" | b"BLMOVE" | b"BRPOPLPUSH" | b"BLMPOP" | b"BZPOPMIN" | b"BZPOPMAX"
        | b"BZMPOP" | b"WAIT" | b"WAITAOF" => Action::Answer(Local::Refuse(BLOCKING)),
        b"MONITOR" | b"SYNC" | b"PSYNC" | b"REPLCONF" => Action::Answer(Local::Refuse(STREAM)),
        _ => Action::Forward,
    }
}

/// `SELECT n`: forwarded when it names the shared connection's own database (a no-op there) or is
/// malformed (Redis answers the error and nothing changes); refused when it would switch databases.
fn select(args: Args<'_>, db: u32) -> Action {
    if args.len() != 2 {
        return Action::Forward;
    }
    match args.get(1).and_then(parse_i64) {
        Some(n) if n == i64::from(db) => Action::Forward,
        Some(_) => Action::Answer(Local::Refuse(CONNECTION_STATE)),
        None => Action::Forward,
    }
}

/// `CLIENT <subcommand>`: per-connection settings are kept in the session or refused; the rest are
/// server-wide (or read-only) and go to Redis.
fn client(args: Args<'_>) -> Action {
    let Some(sub) = args.get(1) else {
        return Action::Forward;
    };
    let mut upper = sub.to_ascii_uppercase();
    upper.truncate(MAX_NAME);
    match upper.as_slice() {
        b"SETNAME" => match (args.len(), args.get(2)) {
            (3, Some(name)) if valid_client_name(name) => {
                Action::Answer(Local::SetName(name.to_vec()))
            }
            (3, Some(_)) => Action::Answer(Local::Error(
                "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
            )),
            _ => Action::Forward,
        },
        b"GETNAME" if args.len() == 2 => Action::Answer(Local::GetName),
        b"SETINFO" => match (args.len(), args.get(2)) {
            (4, Some(attr))
                if attr.eq_ignore_ascii_case(b"LIB-NAME")
                    || attr.eq_ignore_ascii_case(b"LIB-VER") =>
            {
                if args.get(3).is_some_and(valid_client_name) {
                    Action::Answer(Local::SetInfo)
                } else {
                    Action::Answer(Local::Error(
                        "-ERR lib-name or lib-ver cannot contain spaces, newlines or special characters.\r\n",
                    ))
                }
            }
            _ => Action::Forward,
        },
        b"REPLY" | b"TRACKING" | b"CACHING" | b"NO-EVICT" | b"NO-TOUCH" => {
            Action::Answer(Local::Refuse(CONNECTION_STATE))
        }
        _ => Action::Forward,
    }
}

/// Redis's rule for client names and lib info: printable ASCII without spaces.
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

/// A strict decimal integer, as Redis's `string2ll` reads it.
fn parse_i64(arg: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(arg).ok()?;
    if text.starts_with('+') || text.len() > 1 && text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn classify_words(words: &[&str], db: u32) -> Action {
        let args = inline(words);
        classify(&args[0], Args::Inline(&args), db)
    }

    #[test]
    fn plain_commands_are_forwarded_in_any_case() {
        for cmd in [
            ["get", "k"],
            ["SeT", "k"],
            ["PING", "x"],
            ["nosuchcommand", "x"],
        ] {
            assert_eq!(classify_words(&cmd, 0), Action::Forward, "{cmd:?}");
        }
    }

    #[test]
    fn stateful_and_blocking_commands_are_refused() {
        for cmd in [
            "multi",
            "EXEC",
            "watch",
            "auth",
            "hello",
            "subscribe",
            "monitor",
            "blpop",
            "wait",
        ] {
            assert!(
                matches!(
                    classify_words(&[cmd, "x"], 0),
                    Action::Answer(Local::Refuse(_))
                ),
                "{cmd}"
            );
        }
    }

    #[test]
    fn xread_is_refused_only_with_block() {
        let plain = ["XREAD", "COUNT", "1", "STREAMS", "s", "0"];
        assert_eq!(classify_words(&plain, 0), Action::Forward);
        let blocking = ["xread", "block", "0", "STREAMS", "s", "$"];
        assert_eq!(
            classify_words(&blocking, 0),
            Action::Answer(Local::Refuse(BLOCKING))
        );
    }

    #[test]
    fn select_of_the_pool_db_is_forwarded_and_others_refused() {
        assert_eq!(classify_words(&["SELECT", "0"], 0), Action::Forward);
        assert_eq!(classify_words(&["select", "3"], 3), Action::Forward);
        assert_eq!(
            classify_words(&["SELECT", "1"], 0),
            Action::Answer(Local::Refuse(CONNECTION_STATE))
        );
        // Malformed: Redis gives its own error and changes nothing.
        assert_eq!(classify_words(&["SELECT", "abc"], 0), Action::Forward);
        assert_eq!(classify_words(&["SELECT"], 0), Action::Forward);
    }

    #[test]
    fn client_subcommands() {
        assert_eq!(
            classify_words(&["CLIENT", "SETNAME", "app"], 0),
            Action::Answer(Local::SetName(b"app".to_vec()))
        );
        assert!(matches!(
            classify_words(&["client", "setname", "a b"], 0),
            Action::Answer(Local::Error(_))
        ));
        assert_eq!(
            classify_words(&["client", "getname"], 0),
            Action::Answer(Local::GetName)
        );
        assert_eq!(
            classify_words(&["CLIENT", "SETINFO", "lib-name", "redis-rs"], 0),
            Action::Answer(Local::SetInfo)
        );
        assert!(matches!(
            classify_words(&["CLIENT", "REPLY", "OFF"], 0),
            Action::Answer(Local::Refuse(_))
        ));
        assert_eq!(classify_words(&["CLIENT", "ID"], 0), Action::Forward);
        assert_eq!(classify_words(&["CLIENT", "LIST"], 0), Action::Forward);
    }

    #[test]
    fn integers_are_strict() {
        assert_eq!(parse_i64(b"12"), Some(12));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"01"), None);
        assert_eq!(parse_i64(b"+1"), None);
        assert_eq!(parse_i64(b" 1"), None);
    }
}
