//! The tests' one RESP reader: replies decoded into [`Reply`] (every RESP2 and RESP3 type) with
//! their exact bytes, read from any byte stream; and [`encode`] for requests. Written apart from
//! respipe's own scanner on purpose, so the tests judge respipe's framing with an independent
//! reader. Self-contained (bytes and tokio only): `drill.rs`, which the drill example includes too,
//! uses it as well.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A reply as it came over the wire: every RESP2 and RESP3 type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
    /// RESP3 `_`.
    Null,
    /// RESP3 `#t` / `#f`.
    Bool(bool),
    /// RESP3 `,`, as Redis wrote it.
    Double(String),
    /// RESP3 `(`, as Redis wrote it.
    BigNumber(String),
    /// RESP3 `=`: the format, a colon and the text (`txt:...`).
    Verbatim(Vec<u8>),
    /// RESP3 `!`.
    BlobError(Vec<u8>),
    /// RESP3 `%`: keys and values in order.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `~`.
    Set(Vec<Reply>),
    /// RESP3 `>`: out-of-band data (pub/sub messages, invalidations).
    Push(Vec<Reply>),
    /// RESP3 `|`: attributes and the value they annotate, one reply on the wire.
    Attributed(Vec<(Reply, Reply)>, Box<Reply>),
}

impl Reply {
    pub fn bulk(v: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(Some(v.as_ref().to_vec()))
    }
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }
    pub fn nil() -> Reply {
        Reply::Bulk(None)
    }
    /// The error text without the leading `-`, or None.
    pub fn error_text(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e),
            _ => None,
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the front of `buf`: `Ok(Some((reply, len)))`, `Ok(None)` if incomplete.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
        let pos = buf.windows(2).position(|w| w == b"\r\n")?;
        Some((&buf[..pos], pos + 2))
    }
    fn int(b: &[u8]) -> Result<i64, String> {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad integer {:?}", String::from_utf8_lossy(b)))
    }
    /// `count` replies one after another from `buf[at..]`, and where they end.
    fn items(buf: &[u8], mut at: usize, count: i64) -> Result<Option<(Vec<Reply>, usize)>, String> {
        let mut items = Vec::new();
        for _ in 0..count {
            match parse_reply(&buf[at..])? {
                Some((r, len)) => {
                    items.push(r);
                    at += len;
                }
                None => return Ok(None),
            }
        }
        Ok(Some((items, at)))
    }
    /// Flat key, value, key, value... as pairs.
    fn pairs(flat: Vec<Reply>) -> Vec<(Reply, Reply)> {
        let mut it = flat.into_iter();
        std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
    }
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    let Some((head, head_len)) = line(&buf[1..]) else {
        return Ok(None);
    };
    let head_len = head_len + 1;
    let text = || String::from_utf8_lossy(head).into_owned();
    let simple = match tag {
        b'+' => Some(Reply::Simple(text())),
        b'-' => Some(Reply::Error(text())),
        b':' => Some(Reply::Int(int(head)?)),
        b'_' => Some(Reply::Null),
        b'#' => Some(Reply::Bool(head == b"t")),
        b',' => Some(Reply::Double(text())),
        b'(' => Some(Reply::BigNumber(text())),
        _ => None,
    };
    if let Some(r) = simple {
        return Ok(Some((r, head_len)));
    }
    match tag {
        b'$' | b'=' | b'!' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), head_len)));
            }
            let n = n as usize;
            if buf.len() < head_len + n + 2 {
                return Ok(None);
            }
            if &buf[head_len + n..head_len + n + 2] != b"\r\n" {
                return Err("bulk string not terminated by CRLF".into());
            }
            let body = buf[head_len..head_len + n].to_vec();
            let reply = match tag {
                b'=' => Reply::Verbatim(body),
                b'!' => Reply::BlobError(body),
                _ => Reply::Bulk(Some(body)),
            };
            Ok(Some((reply, head_len + n + 2)))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), head_len)));
            }
            let count = if matches!(tag, b'%' | b'|') { 2 * n } else { n };
            let Some((items, at)) = items(buf, head_len, count)? else {
                return Ok(None);
            };
            let reply = match tag {
                b'~' => Reply::Set(items),
                b'>' => Reply::Push(items),
                b'%' => Reply::Map(pairs(items)),
                b'|' => {
                    // An attribute annotates the value after it: both are one reply.
                    let Some((value, len)) = parse_reply(&buf[at..])? else {
                        return Ok(None);
                    };
                    return Ok(Some((
                        Reply::Attributed(pairs(items), Box::new(value)),
                        at + len,
                    )));
                }
                _ => Reply::Array(Some(items)),
            };
            Ok(Some((reply, at)))
        }
        other => Err(format!("unexpected reply type byte {:?}", other as char)),
    }
}

/// Reads replies from a byte stream, keeping what is left over between calls.
#[derive(Default)]
pub struct ReplyReader {
    buf: BytesMut,
}

impl ReplyReader {
    /// Reads the next reply from `io` with its exact bytes; `Ok(None)` on a clean EOF with nothing
    /// buffered, `Err` on a read error (starting with `read:`), an EOF inside a reply, or garbage.
    /// Cancel-safe: a reply cut short by a timeout stays buffered for the next call.
    pub async fn read_frame(
        &mut self,
        io: &mut (impl AsyncRead + Unpin),
    ) -> Result<Option<(Reply, Bytes)>, String> {
        loop {
            if let Some((reply, len)) = parse_reply(&self.buf)? {
                return Ok(Some((reply, self.buf.split_to(len).freeze())));
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            let n = io
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(format!(
                    "EOF inside a reply; {} bytes buffered: {:?}",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)])
                ));
            }
        }
    }

    /// Reads the next reply from `io`; `None` on EOF, a read error or garbage.
    pub async fn read(&mut self, io: &mut (impl AsyncRead + Unpin)) -> Option<Reply> {
        Some(self.read_frame(io).await.ok()??.0)
    }
}
