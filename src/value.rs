//! A small reader of whole RESP2/RESP3 replies into values, for the few replies respipe reads
//! itself rather than forwarding: `CLUSTER SLOTS`, and Sentinel's and `ROLE`'s answers.

use crate::resp;

/// A RESP value, as far as the replies respipe reads need one. Simple and bulk strings are
/// `Text`; maps (RESP3) are read as arrays of their keys and values in turn, as RESP2 sends them;
/// nulls, doubles and the rest are `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Text(Vec<u8>),
    Array(Vec<Value>),
    /// An error reply, without its `-`.
    Error(Vec<u8>),
    Other,
}

impl Value {
    /// The text of a simple or bulk string.
    pub fn text(&self) -> Option<&[u8]> {
        match self {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }

    /// The text of a string, as UTF-8 (lossy).
    pub fn string(&self) -> Option<String> {
        self.text().map(|t| String::from_utf8_lossy(t).into_owned())
    }

    /// The elements of an array (or map, or set).
    pub fn items(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// In a flat list of keys and values (a map, or `SENTINEL REPLICAS`'s entries in RESP2), the
    /// value of `key`.
    pub fn field(&self, key: &[u8]) -> Option<&Value> {
        self.items()?
            .chunks(2)
            .find(|kv| kv[0].text() == Some(key))
            .and_then(|kv| kv.get(1))
    }
}

/// Parses the one value `reply` holds, refusing arrays nested deeper than `max_depth` (a reply
/// of a known shape has a known depth).
pub fn parse(reply: &[u8], max_depth: usize) -> Option<Value> {
    value(reply, 0, max_depth).map(|(v, _)| v)
}

/// Parses one value at the front of `buf`, inside `depth` arrays; returns it and the bytes it
/// took.
fn value(buf: &[u8], depth: usize, max_depth: usize) -> Option<(Value, usize)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = &buf[1..line_end];
    let after = line_end + 2;
    match buf.first()? {
        b':' => Some((Value::Int(resp::parse_int(line)?), after)),
        b'+' => Some((Value::Text(line.to_vec()), after)),
        b'-' => Some((Value::Error(line.to_vec()), after)),
        b'$' => {
            let len = resp::parse_int(line)?;
            if len < 0 {
                return Some((Value::Other, after));
            }
            let len = usize::try_from(len).ok()?;
            let text = buf.get(after..after + len)?.to_vec();
            Some((Value::Text(text), after + len + 2))
        }
        b'*' | b'>' | b'~' | b'%' if depth < max_depth => {
            let count = resp::parse_int(line)?;
            if count < 0 {
                return Some((Value::Other, after));
            }
            let n = count * if buf[0] == b'%' { 2 } else { 1 };
            let mut at = after;
            let mut items = Vec::new();
            for _ in 0..n {
                let (item, used) = value(&buf[at..], depth + 1, max_depth)?;
                items.push(item);
                at += used;
            }
            Some((Value::Array(items), at))
        }
        b'_' | b',' | b'#' => Some((Value::Other, after)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_arrays_maps_and_scalars() {
        let reply = b"*3\r\n$6\r\nmaster\r\n:42\r\n%1\r\n+ip\r\n$9\r\n127.0.0.1\r\n";
        let v = parse(reply, 2).unwrap();
        let items = v.items().unwrap();
        assert_eq!(items[0].text(), Some(&b"master"[..]));
        assert_eq!(items[1], Value::Int(42));
        assert_eq!(
            items[2].field(b"ip").and_then(Value::string).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            parse(b"-ERR no\r\n", 1),
            Some(Value::Error(b"ERR no".to_vec()))
        );
        assert_eq!(parse(b"*-1\r\n", 1), Some(Value::Other));
    }

    #[test]
    fn refuses_truncated_and_too_deep_replies() {
        assert_eq!(parse(b"*2\r\n:1\r\n", 1), None);
        assert_eq!(parse(b"$5\r\nab\r\n", 1), None);
        assert_eq!(parse(b"*1\r\n*1\r\n:1\r\n", 1), None);
        assert!(parse(b"*1\r\n*1\r\n:1\r\n", 2).is_some());
    }
}
