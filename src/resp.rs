//! RESP scanner: finds request and reply frame boundaries in a byte buffer without decoding values, so
//! the proxy can forward raw `Bytes` slices; bounded, resumable, and it never panics on input bytes.
//!
//! Requests are framed exactly as Redis 7 frames them (`processMultibulkBuffer` and
//! `processInlineBuffer` in `networking.c`), only stricter: whatever Redis would split differently, or
//! would not accept at all, is a [`ProtocolError`]. That agreement is what keeps replies routed to the
//! right client, so every accepted request is one Redis reads as exactly one command:
//!
//! * `*<n>\r\n` followed by `n` times `$<len>\r\n<len bytes>\r\n`, numbers in Redis's `string2ll`
//!   syntax (optional `-`, no `+`, no spaces, no leading zeros). `n <= 0` is an empty request that Redis
//!   skips without a reply.
//! * Anything else is an inline request: one line ended by `\n` (one `\r` before it is dropped) and split
//!   with `sdssplitargs` rules ([`parse_inline`]).
//!
//! Replies ([`ReplyScanner`]) cover every RESP2 and RESP3 type except the streamed forms, with an
//! explicit stack bounded by a nesting depth.
//!
//! Both scanners are resumable: on `Ok(None)` they remember how far they got, so a frame that arrives in
//! pieces is scanned once in total, and bulk payloads are skipped by their declared length without
//! looking at (or allocating for) their content.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

/// Redis's limit on an inline request line and on a `*`/`$` header line (`PROTO_INLINE_MAX_SIZE`).
///
/// A line that grows past it without its line ending is a [`ProtocolError`] (`too big inline request`,
/// `too big mbulk count string`, `too big bulk count string`).
pub const MAX_INLINE_BYTES: usize = 64 * 1024;

/// Default nesting bound for reply aggregates, see [`ReplyScanner::new`]. Redis legitimately returns
/// replies nested thousands deep (a Lua script's nested tables; Redis itself stops near 100,000),
/// and a reply the scanner refuses costs the whole shared connection, so the bound sits far above
/// that. The scanner keeps one small counter per open level: about 16 MiB at this depth, only while
/// such a reply is being read.
pub const DEFAULT_MAX_REPLY_DEPTH: usize = 1 << 20;

/// Bounds on one client request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest frame, headers and line endings included, and largest single bulk argument (Redis's
    /// `proto-max-bulk-len`). A bulk declared longer is `invalid bulk length`; a frame that would grow
    /// past it is `request too large (max <N> bytes)`. Both close the client. Default 512 MiB.
    pub max_request_bytes: usize,
    /// Largest multibulk length (number of arguments) of a RESP request. A larger `*<n>` header is
    /// `invalid multibulk length` and closes the client. Default 16 Mi (16,777,216).
    pub max_args: usize,
}

/// A stream that is not valid RESP (or not framed the way Redis frames it).
///
/// `Display` is the exact text to send after `-ERR `, e.g. `Protocol error: invalid multibulk length`;
/// the wrapped `String` is the part after `Protocol error: `. It never contains `\r` or `\n`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

/// How a request was written by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A RESP array of bulk strings, forwardable as is.
    Resp,
    /// An inline (telnet-style) line; re-parse it with [`parse_inline`] and forward
    /// [`encode_request`] of the arguments.
    Inline,
}

/// One complete request at the start of the scanned buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFrame {
    /// Bytes the frame occupies, including its trailing CRLF (or LF for an inline line).
    pub len: usize,
    /// RESP array or inline line.
    pub kind: RequestKind,
    /// Number of arguments. 0 for an empty request (`*0\r\n`, `*-1\r\n`, a blank inline line): Redis
    /// skips those without a reply, so the caller drops them.
    pub argc: usize,
    /// Range of the first argument (the command name) within the frame; empty when `argc == 0`. For
    /// inline frames it is the raw bytes of the first token if that token has no quotes, else empty.
    pub name: Range<usize>,
}

/// Resumable scanner for client requests; one per client connection.
#[derive(Debug)]
pub struct RequestScanner {
    /// Bounds applied to every request.
    limits: RequestLimits,
    /// Progress through the frame at the start of the buffer.
    state: RequestState,
    /// Work done so far (bytes examined plus loop turns), to prove scans are linear.
    #[cfg(test)]
    steps: u64,
}

/// Iterator over the arguments of a complete RESP request frame, see [`request_args`].
#[derive(Debug, Clone)]
pub struct RequestArgs<'a> {
    /// The frame being read.
    frame: &'a [u8],
    /// Offset of the next bulk header.
    pos: usize,
    /// Arguments not yet returned; 0 once the frame is exhausted or malformed.
    remaining: usize,
}

/// One complete reply at the start of the scanned buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyFrame {
    /// Bytes the frame occupies, including a leading attribute (`|`) if any.
    pub len: usize,
    /// The frame is a RESP3 `>` out-of-band push, not the reply to a request.
    pub push: bool,
}

/// Resumable scanner for upstream replies (every RESP2 and RESP3 type); one per upstream connection.
#[derive(Debug)]
pub struct ReplyScanner {
    /// Most aggregates that may be open at once; deeper is a [`ProtocolError`].
    max_depth: usize,
    /// Offset of the next element to scan.
    pos: usize,
    /// Resume offset inside the line that starts at `pos`.
    searched: usize,
    /// When waiting for a bulk payload: offset of the CRLF that ends it.
    body_end: Option<usize>,
    /// Open aggregates, innermost last (an explicit stack: no recursion).
    open: Vec<Aggregate>,
    /// The top-level value (after any attribute) is a push.
    push: bool,
    /// Work done so far (bytes examined plus loop turns), to prove scans are linear.
    #[cfg(test)]
    steps: u64,
}

/// Where a [`RequestScanner`] stopped inside the frame at `buf[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RequestState {
    /// Nothing of the current frame seen yet.
    Idle,
    /// Inline line: `buf[..searched]` holds no `\n`.
    Inline { searched: usize },
    /// `*<n>` header: resume the line scan at `searched`.
    Count { searched: usize },
    /// Inside the arguments of a multibulk.
    Args(ArgsProgress),
}

/// Progress through the arguments of a multibulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ArgsProgress {
    /// Declared number of arguments.
    argc: usize,
    /// Arguments not yet complete, including the current one.
    remaining: usize,
    /// Range of the first argument once known.
    name: Range<usize>,
    /// Offset of the current bulk header.
    pos: usize,
    /// Resume offset inside that header line.
    searched: usize,
    /// Once the header is read: offset of the CRLF after the payload.
    body_end: Option<usize>,
}

/// One open reply aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Aggregate {
    /// Elements still to come.
    remaining: usize,
    /// A `|` attribute: it annotates the next value rather than being one.
    attribute: bool,
}

/// Result of scanning a `<type><integer>\r\n` header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntLine {
    /// No complete line yet; resume at this offset.
    Pending(usize),
    /// The integer and the offset just past its CRLF.
    Done { value: i64, next: usize },
}

impl IntLine {
    /// The same line with its offsets moved `by` bytes on.
    fn after(self, by: usize) -> IntLine {
        match self {
            IntLine::Pending(at) => IntLine::Pending(at + by),
            IntLine::Done { value, next } => IntLine::Done {
                value,
                next: next + by,
            },
        }
    }
}

/// Why a header line is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineError {
    /// Not a `string2ll` integer, or not ended by CRLF.
    Invalid,
    /// Longer than [`MAX_INLINE_BYTES`] without a line ending.
    TooBig,
}

/// What the integer of a `<type><integer>\r\n` header counts; it decides how a bad header is worded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    /// Elements: a request's `*` and the reply aggregates (`multibulk` in Redis's errors).
    Count,
    /// Payload bytes: a request's `$` and the reply blobs `$`, `!`, `=` (`bulk` in Redis's errors).
    Length,
}

/// How far one step of a [`ReplyScanner`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// The buffer ran out; the scanner has saved where to resume.
    Pending,
    /// A value ended at `pos`: a line, a bulk with its CRLF, a null, an empty aggregate.
    Value,
    /// A header was read whose content is still to come: a bulk payload, an aggregate's elements,
    /// or an attribute (even an empty one, which annotates the value after it).
    Opened,
}

/// Result of scanning a reply's simple `<type><text>\r\n` line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TextLine {
    /// No complete line yet; resume at this offset.
    Pending(usize),
    /// The text and the offset just past its CRLF.
    Done { text: Range<usize>, next: usize },
}

/// What a request scan needs to know about an inline line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InlineSummary {
    /// Number of tokens.
    argc: usize,
    /// Raw range of the first token when it is unquoted, else empty.
    name: Range<usize>,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_request_bytes: 512 * 1024 * 1024,
            max_args: 16_777_216,
        }
    }
}

impl RequestScanner {
    /// A scanner that enforces `limits`, ready for the first frame.
    pub fn new(limits: RequestLimits) -> Self {
        RequestScanner {
            limits,
            state: RequestState::Idle,
            #[cfg(test)]
            steps: 0,
        }
    }

    /// The limits this scanner enforces.
    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    /// Scans the request that starts at `buf[0]`.
    ///
    /// `Ok(None)`: incomplete; the scanner remembers how far it got, and the next call must pass the
    /// same bytes (possibly followed by more). After `Ok(Some(frame))` the caller removes or skips
    /// `frame.len` bytes and the next call scans the next frame from the new `buf[0]`. `Err`: the
    /// stream is corrupt; the caller answers `-ERR <error>` and closes the connection (the scanner is
    /// reset, but the stream has no usable frame boundary any more).
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<RequestFrame>, ProtocolError> {
        match std::mem::replace(&mut self.state, RequestState::Idle) {
            RequestState::Idle => match buf.first() {
                None => Ok(None),
                Some(b'*') => self.scan_count(buf, 1),
                Some(_) => self.scan_inline(buf, 0),
            },
            RequestState::Inline { searched } => self.scan_inline(buf, searched),
            RequestState::Count { searched } => self.scan_count(buf, searched),
            RequestState::Args(progress) => self.scan_args(buf, progress),
        }
    }

    /// After `Ok(None)`: total frame bytes known to be needed so far (a hint for `reserve`; callers
    /// cap it), or `None` when the scanner is inside a header or inline line.
    pub fn needed(&self) -> Option<usize> {
        match &self.state {
            RequestState::Args(ArgsProgress {
                body_end: Some(end),
                ..
            }) => Some(end.saturating_add(2)),
            _ => None,
        }
    }

    /// Scans an inline line, resuming the search for `\n` at `searched`.
    fn scan_inline(
        &mut self,
        buf: &[u8],
        searched: usize,
    ) -> Result<Option<RequestFrame>, ProtocolError> {
        let mut i = searched;
        while let Some(&byte) = buf.get(i) {
            match byte {
                b'\n' => {
                    self.tick(i.saturating_sub(searched));
                    let len = i + 1;
                    if len > self.limits.max_request_bytes {
                        return Err(too_large(self.limits));
                    }
                    let end = if i > 0 && buf.get(i - 1) == Some(&b'\r') {
                        i - 1
                    } else {
                        i
                    };
                    let summary = split_inline(buf.get(..end).unwrap_or_default(), None)?;
                    self.tick(end);
                    return Ok(Some(RequestFrame {
                        len,
                        kind: RequestKind::Inline,
                        argc: summary.argc,
                        name: summary.name,
                    }));
                }
                // Redis looks for the line end with strchr, which stops at a NUL: it would wait forever.
                0 => return Err(protocol_error("null byte in inline request")),
                _ if i >= MAX_INLINE_BYTES => return Err(protocol_error("too big inline request")),
                _ => i += 1,
            }
        }
        self.tick(i.saturating_sub(searched));
        self.state = RequestState::Inline { searched: i };
        Ok(None)
    }

    /// Scans the `*<n>\r\n` header, then the arguments.
    fn scan_count(
        &mut self,
        buf: &[u8],
        searched: usize,
    ) -> Result<Option<RequestFrame>, ProtocolError> {
        let (value, next) = match scan_header_line(buf, 0, searched, Header::Count)? {
            IntLine::Pending(at) => {
                self.tick(at.saturating_sub(searched));
                self.state = RequestState::Count { searched: at };
                return Ok(None);
            }
            IntLine::Done { value, next } => (value, next),
        };
        self.tick(next.saturating_sub(searched));
        if next > self.limits.max_request_bytes {
            return Err(too_large(self.limits));
        }
        if value <= 0 {
            return Ok(Some(RequestFrame {
                len: next,
                kind: RequestKind::Resp,
                argc: 0,
                name: 0..0,
            }));
        }
        let argc = usize::try_from(value)
            .ok()
            .filter(|&n| n <= self.limits.max_args && value <= i64::from(i32::MAX))
            .ok_or_else(|| protocol_error("invalid multibulk length"))?;
        let progress = ArgsProgress {
            argc,
            remaining: argc,
            name: 0..0,
            pos: next,
            searched: next,
            body_end: None,
        };
        self.scan_args(buf, progress)
    }

    /// Scans `$<len>\r\n<payload>\r\n` arguments until `p.remaining` reaches 0.
    fn scan_args(
        &mut self,
        buf: &[u8],
        mut p: ArgsProgress,
    ) -> Result<Option<RequestFrame>, ProtocolError> {
        loop {
            self.tick(1);
            if let Some(end) = p.body_end {
                let Some(after) = bulk_crlf(buf, end)? else {
                    self.state = RequestState::Args(p);
                    return Ok(None);
                };
                p.body_end = None;
                p.pos = after;
                p.searched = after;
                p.remaining = p.remaining.saturating_sub(1);
                if p.remaining == 0 {
                    return Ok(Some(RequestFrame {
                        len: after,
                        kind: RequestKind::Resp,
                        argc: p.argc,
                        name: p.name,
                    }));
                }
            }
            match buf.get(p.pos) {
                None => {
                    self.state = RequestState::Args(p);
                    return Ok(None);
                }
                Some(b'$') => {}
                Some(&other) => {
                    return Err(ProtocolError(format!(
                        "expected '$', got '{}'",
                        printable(other)
                    )))
                }
            }
            let (value, next) = match scan_header_line(buf, p.pos, p.searched, Header::Length)? {
                IntLine::Pending(at) => {
                    self.tick(at.saturating_sub(p.searched));
                    p.searched = at;
                    self.state = RequestState::Args(p);
                    return Ok(None);
                }
                IntLine::Done { value, next } => (value, next),
            };
            self.tick(next.saturating_sub(p.searched));
            let max = self.limits.max_request_bytes;
            let len = usize::try_from(value)
                .ok()
                .filter(|&len| len <= max)
                .ok_or_else(|| protocol_error("invalid bulk length"))?;
            let end = next.saturating_add(len);
            if end.saturating_add(2) > max {
                return Err(too_large(self.limits));
            }
            if p.remaining == p.argc {
                p.name = next..end;
            }
            p.body_end = Some(end);
        }
    }

    /// Counts `n` units of work (test builds only).
    #[inline]
    fn tick(&mut self, _n: usize) {
        #[cfg(test)]
        {
            self.steps += _n as u64;
        }
    }
}

impl<'a> Iterator for RequestArgs<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.remaining == 0 {
            return None;
        }
        let arg = self.read_bulk();
        if arg.is_none() {
            self.remaining = 0;
        }
        arg
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

impl<'a> RequestArgs<'a> {
    /// Reads the bulk at `pos`, advancing past it; `None` if it is malformed or cut short.
    fn read_bulk(&mut self) -> Option<&'a [u8]> {
        if self.frame.get(self.pos) != Some(&b'$') {
            return None;
        }
        let IntLine::Done { value, next } = scan_int_line(self.frame, self.pos, self.pos).ok()?
        else {
            return None;
        };
        let end = next.checked_add(usize::try_from(value).ok()?)?;
        let arg = self.frame.get(next..end)?;
        if self.frame.get(end..end.checked_add(2)?)? != b"\r\n" {
            return None;
        }
        self.pos = end + 2;
        self.remaining -= 1;
        Some(arg)
    }
}

impl ReplyScanner {
    /// A scanner that allows at most `max_depth` nested aggregates (arrays, maps, sets, pushes,
    /// attributes); a deeper reply is a [`ProtocolError`].
    pub fn new(max_depth: usize) -> Self {
        ReplyScanner {
            max_depth,
            pos: 0,
            searched: 0,
            body_end: None,
            open: Vec::new(),
            push: false,
            #[cfg(test)]
            steps: 0,
        }
    }

    /// Scans the reply that starts at `buf[0]`, with the same contract as [`RequestScanner::scan`]:
    /// `Ok(None)` means incomplete (pass the same bytes plus more next time), `Ok(Some(frame))` means
    /// `frame.len` bytes are one complete reply, `Err` means the upstream stream is corrupt.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<ReplyFrame>, ProtocolError> {
        let result = self.scan_values(buf);
        if !matches!(result, Ok(None)) {
            self.pos = 0;
            self.searched = 0;
            self.body_end = None;
            self.open.clear();
            self.push = false;
        }
        result
    }

    /// Scans elements from `pos` until the top-level value completes or the buffer runs out.
    fn scan_values(&mut self, buf: &[u8]) -> Result<Option<ReplyFrame>, ProtocolError> {
        loop {
            self.tick(1);
            match self.scan_step(buf)? {
                Progress::Pending => return Ok(None),
                Progress::Value => {
                    if let Some(frame) = self.finish_value() {
                        return Ok(Some(frame));
                    }
                }
                Progress::Opened => {}
            }
        }
    }

    /// Scans one line, header or bulk ending at `pos`, moving `pos` past it when it is complete.
    fn scan_step(&mut self, buf: &[u8]) -> Result<Progress, ProtocolError> {
        if let Some(end) = self.body_end {
            let Some(after) = bulk_crlf(buf, end)? else {
                return Ok(Progress::Pending);
            };
            self.body_end = None;
            self.pos = after;
            self.searched = after;
            return Ok(Progress::Value);
        }
        let Some(&kind) = buf.get(self.pos) else {
            return Ok(Progress::Pending);
        };
        if self.open.is_empty() && kind != b'|' {
            self.push = kind == b'>';
        }
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                let (text, next) = match scan_text_line(buf, self.pos, self.searched)? {
                    TextLine::Pending(at) => {
                        self.tick(at.saturating_sub(self.searched));
                        self.searched = at;
                        return Ok(Progress::Pending);
                    }
                    TextLine::Done { text, next } => (text, next),
                };
                self.tick(next.saturating_sub(self.searched));
                let text = buf.get(text).unwrap_or_default();
                match kind {
                    b'_' if !text.is_empty() => return Err(protocol_error("invalid null reply")),
                    b'#' if text != b"t" && text != b"f" => {
                        return Err(protocol_error("invalid boolean reply"))
                    }
                    _ => {}
                }
                self.pos = next;
                self.searched = next;
                Ok(Progress::Value)
            }
            b'$' | b'!' | b'=' | b'*' | b'%' | b'~' | b'>' | b'|' => {
                let Some(value) = self.scan_header(buf, kind)? else {
                    return Ok(Progress::Pending);
                };
                if value == -1 && matches!(kind, b'$' | b'*') {
                    // RESP2's null bulk string and null array.
                    return Ok(Progress::Value);
                }
                if header_of(kind) == Header::Length {
                    let end = usize::try_from(value)
                        .ok()
                        .and_then(|len| self.pos.checked_add(len))
                        .filter(|end| end.checked_add(2).is_some())
                        .ok_or_else(|| protocol_error("invalid bulk length"))?;
                    self.body_end = Some(end);
                    return Ok(Progress::Opened);
                }
                self.open_aggregate(kind, value)
            }
            other => Err(ProtocolError(format!(
                "unexpected reply type byte '{}'",
                printable(other)
            ))),
        }
    }

    /// Scans the `<kind><integer>\r\n` header at `pos` and moves `pos` past it; `Ok(None)` when
    /// incomplete.
    fn scan_header(&mut self, buf: &[u8], kind: u8) -> Result<Option<i64>, ProtocolError> {
        if buf.get(self.pos + 1) == Some(&b'?') {
            return Err(protocol_error("streamed replies are not supported"));
        }
        match scan_header_line(buf, self.pos, self.searched, header_of(kind))? {
            IntLine::Pending(at) => {
                self.tick(at.saturating_sub(self.searched));
                self.searched = at;
                Ok(None)
            }
            IntLine::Done { value, next } => {
                self.tick(next.saturating_sub(self.searched));
                self.pos = next;
                self.searched = next;
                Ok(Some(value))
            }
        }
    }

    /// Opens the aggregate whose `<kind><count>` header was just read (`%` and `|` count pairs).
    fn open_aggregate(&mut self, kind: u8, count: i64) -> Result<Progress, ProtocolError> {
        let pairs = kind == b'%' || kind == b'|';
        let count = usize::try_from(count)
            .ok()
            .and_then(|n| if pairs { n.checked_mul(2) } else { Some(n) })
            .ok_or_else(|| protocol_error("invalid multibulk length"))?;
        if self.open.len() >= self.max_depth {
            return Err(ProtocolError(format!(
                "reply nested deeper than {} levels",
                self.max_depth
            )));
        }
        if count > 0 {
            self.open.push(Aggregate {
                remaining: count,
                attribute: kind == b'|',
            });
            Ok(Progress::Opened)
        } else if kind == b'|' {
            Ok(Progress::Opened)
        } else {
            Ok(Progress::Value)
        }
    }

    /// Records that a value ending at `pos` is complete, closing every aggregate it completes.
    /// Returns the frame when the top-level value is done.
    fn finish_value(&mut self) -> Option<ReplyFrame> {
        loop {
            let Some(top) = self.open.last_mut() else {
                return Some(ReplyFrame {
                    len: self.pos,
                    push: self.push,
                });
            };
            top.remaining -= 1;
            if top.remaining > 0 {
                return None;
            }
            let closed = self.open.pop();
            if closed.is_some_and(|aggregate| aggregate.attribute) {
                // An attribute annotates the value that follows; it is not a value itself.
                return None;
            }
        }
    }

    /// Counts `n` units of work (test builds only).
    #[inline]
    fn tick(&mut self, _n: usize) {
        #[cfg(test)]
        {
            self.steps += _n as u64;
        }
    }
}

impl Default for ReplyScanner {
    fn default() -> Self {
        ReplyScanner::new(DEFAULT_MAX_REPLY_DEPTH)
    }
}

/// Iterates the arguments of a complete RESP (kind [`RequestKind::Resp`]) request frame as byte slices.
///
/// Meant for rare paths that read subcommands or options. Given anything else (garbage, a truncated
/// frame, an inline line) it never panics: it just stops early.
pub fn request_args(frame: &[u8]) -> RequestArgs<'_> {
    let (pos, remaining) = match frame.first() {
        Some(b'*') => match scan_int_line(frame, 0, 1) {
            Ok(IntLine::Done { value, next }) => (next, usize::try_from(value).unwrap_or(0)),
            _ => (0, 0),
        },
        _ => (0, 0),
    };
    RequestArgs {
        frame,
        pos,
        remaining,
    }
}

/// Splits an inline request line (without its line ending) into arguments with Redis's
/// `sdssplitargs` rules.
///
/// Arguments are separated by whitespace; `"double quotes"` understand `\n \r \t \b \a \\ \"` and
/// `\xHH` (any other escaped byte stands for itself); `'single quotes'` understand only `\'`; a quote
/// may also start in the middle of a token (`a"b c"` is `ab c`), and a closing quote must be followed
/// by whitespace or the end of the line. Anything else is `unbalanced quotes in request`. A NUL byte
/// is rejected (`null byte in inline request`): Redis never reads such a line.
pub fn parse_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut args = Vec::new();
    split_inline(line, Some(&mut args))?;
    Ok(args)
}

/// Encodes arguments as a RESP array of bulk strings (used to forward inline requests).
pub fn encode_request<A: AsRef<[u8]>>(args: &[A]) -> Bytes {
    // `*`/`$`, up to 20 digits and CRLF per header, CRLF after each payload.
    let capacity = args.iter().fold(23, |total: usize, arg| {
        total.saturating_add(arg.as_ref().len().saturating_add(25))
    });
    let mut out = BytesMut::with_capacity(capacity);
    out.put_u8(b'*');
    put_decimal(&mut out, args.len());
    out.put_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        out.put_u8(b'$');
        put_decimal(&mut out, arg.len());
        out.put_slice(b"\r\n");
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
    out.freeze()
}

/// Scans a `<type><integer>\r\n` line whose type byte is at `start`, resuming at `from`.
///
/// Decides at the first byte that settles the outcome, so the result does not depend on how the bytes
/// arrived: a byte other than a digit, `-` or `\r` is invalid at once, `\r` must be followed by `\n`,
/// and the number must be a `string2ll` integer.
fn scan_int_line(buf: &[u8], start: usize, from: usize) -> Result<IntLine, LineError> {
    if from <= start.saturating_add(1) {
        if let Some(line) = short_int_line(buf.get(start.saturating_add(1)..).unwrap_or_default()) {
            return Ok(line.after(start + 1));
        }
    }
    scan_int_line_slow(buf, start, from)
}

/// The common header in one pass: a whole line holding a canonical non-negative number of at most
/// 18 digits (so it cannot overflow), which `parse_int` would read the same. `None` for anything
/// else, which [`scan_int_line_slow`] then settles. Offsets are relative to `text`.
#[inline]
fn short_int_line(text: &[u8]) -> Option<IntLine> {
    let digits = text
        .iter()
        .take(18)
        .take_while(|d| d.is_ascii_digit())
        .count();
    let canonical = digits == 1 || text.first().is_some_and(|&d| d != b'0');
    if digits == 0 || !canonical || text.get(digits..digits + 2) != Some(b"\r\n") {
        return None;
    }
    let value = text[..digits]
        .iter()
        .fold(0i64, |value, &d| value * 10 + i64::from(d - b'0'));
    Some(IntLine::Done {
        value,
        next: digits + 2,
    })
}

/// [`scan_int_line`] byte by byte: resumable, and every invalid or partial line.
fn scan_int_line_slow(buf: &[u8], start: usize, from: usize) -> Result<IntLine, LineError> {
    let mut i = from.max(start.saturating_add(1));
    loop {
        let Some(&byte) = buf.get(i) else {
            return Ok(IntLine::Pending(i));
        };
        match byte {
            b'0'..=b'9' | b'-' => {
                if i - start >= MAX_INLINE_BYTES {
                    return Err(LineError::TooBig);
                }
                i += 1;
            }
            b'\r' => {
                return match buf.get(i + 1) {
                    None => Ok(IntLine::Pending(i)),
                    Some(b'\n') => buf
                        .get(start + 1..i)
                        .and_then(parse_int)
                        .map(|value| IntLine::Done { value, next: i + 2 })
                        .ok_or(LineError::Invalid),
                    Some(_) => Err(LineError::Invalid),
                }
            }
            _ => return Err(LineError::Invalid),
        }
    }
}

/// [`scan_int_line`] with Redis's wording for a bad header of that kind.
fn scan_header_line(
    buf: &[u8],
    start: usize,
    from: usize,
    header: Header,
) -> Result<IntLine, ProtocolError> {
    scan_int_line(buf, start, from).map_err(|error| {
        protocol_error(match (error, header) {
            (LineError::TooBig, Header::Count) => "too big mbulk count string",
            (LineError::TooBig, Header::Length) => "too big bulk count string",
            (LineError::Invalid, Header::Count) => "invalid multibulk length",
            (LineError::Invalid, Header::Length) => "invalid bulk length",
        })
    })
}

/// Which header a reply type byte that carries an integer starts.
fn header_of(kind: u8) -> Header {
    match kind {
        b'$' | b'!' | b'=' => Header::Length,
        _ => Header::Count,
    }
}

/// Checks the CRLF that must follow a bulk payload ending at `end`: the offset just past it, or
/// `Ok(None)` while it has not all arrived.
fn bulk_crlf(buf: &[u8], end: usize) -> Result<Option<usize>, ProtocolError> {
    let after = end.saturating_add(2);
    match buf.get(end..after) {
        None => Ok(None),
        Some(b"\r\n") => Ok(Some(after)),
        Some(_) => Err(protocol_error("expected CRLF after bulk")),
    }
}

/// Scans a reply's `<type><text>\r\n` line whose type byte is at `start`, resuming at `from`. A `\r`
/// or `\n` anywhere but in the final CRLF is an error.
fn scan_text_line(buf: &[u8], start: usize, from: usize) -> Result<TextLine, ProtocolError> {
    let from = from.max(start.saturating_add(1));
    let rest = buf.get(from..).unwrap_or_default();
    let Some(offset) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return Ok(TextLine::Pending(from.max(buf.len())));
    };
    let i = from + offset;
    match (buf.get(i), buf.get(i + 1)) {
        (Some(b'\r'), None) => Ok(TextLine::Pending(i)),
        (Some(b'\r'), Some(b'\n')) => Ok(TextLine::Done {
            text: start + 1..i,
            next: i + 2,
        }),
        _ => Err(protocol_error("invalid line ending in reply")),
    }
}

/// Parses an integer exactly as Redis's `string2ll` does: optional `-`, then `0` alone or a digit
/// 1-9 followed by digits, at most 20 characters, within `i64` (so `-0`, `01`, `+1` and ` 1` are
/// not integers). respipe's one integer parser: RESP lengths and integer replies, and the numeric
/// arguments Redis reads with `string2ll` (`SELECT`'s db, `HELLO`'s protover, client ids).
pub fn parse_int(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    if text == b"0" {
        return Some(0);
    }
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) {
        return None;
    }
    let mut magnitude: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    if negative {
        if magnitude > i64::MIN.unsigned_abs() {
            return None;
        }
        Some(0u64.wrapping_sub(magnitude) as i64)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Tokenizes an inline line with `sdssplitargs` rules, collecting the arguments into `out` if given.
fn split_inline(
    line: &[u8],
    mut out: Option<&mut Vec<Vec<u8>>>,
) -> Result<InlineSummary, ProtocolError> {
    if line.contains(&0) {
        return Err(protocol_error("null byte in inline request"));
    }
    let unbalanced = || protocol_error("unbalanced quotes in request");
    // sdssplitargs walks a C string: reading past the end yields NUL.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut summary = InlineSummary {
        argc: 0,
        name: 0..0,
    };
    let mut p = 0;
    loop {
        while at(p) != 0 && is_c_space(at(p)) {
            p += 1;
        }
        if at(p) == 0 {
            return Ok(summary);
        }
        let start = p;
        let mut end = p;
        // The quote the token is inside (`"` or `'`); a token ends at its closing quote.
        let mut open: Option<u8> = None;
        let mut done = false;
        let mut current = Vec::new();
        let collect = out.is_some();
        let mut push = |byte: u8| {
            if collect {
                current.push(byte);
            }
        };
        while !done {
            let c = at(p);
            if let Some(quote) = open {
                let double = quote == b'"';
                if double
                    && c == b'\\'
                    && at(p + 1) == b'x'
                    && is_hex(at(p + 2))
                    && is_hex(at(p + 3))
                {
                    push(hex_value(at(p + 2)) * 16 + hex_value(at(p + 3)));
                    p += 3;
                } else if double && c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if !double && c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    push(b'\'');
                } else if c == quote {
                    // A closing quote must be followed by whitespace or the end of the line.
                    if at(p + 1) != 0 && !is_c_space(at(p + 1)) {
                        return Err(unbalanced());
                    }
                    done = true;
                } else if c == 0 {
                    return Err(unbalanced());
                } else {
                    push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => {
                        end = p;
                        done = true;
                    }
                    b'"' | b'\'' => open = Some(c),
                    _ => push(c),
                }
            }
            if at(p) != 0 {
                p += 1;
            }
        }
        if summary.argc == 0 && open.is_none() {
            summary.name = start..end;
        }
        summary.argc += 1;
        if let Some(out) = out.as_deref_mut() {
            out.push(current);
        }
    }
}

/// C `isspace` in the C locale.
fn is_c_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// An ASCII hex digit.
fn is_hex(byte: u8) -> bool {
    byte.is_ascii_hexdigit()
}

/// Value of an ASCII hex digit (0 for anything else).
fn hex_value(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        b'A'..=b'F' => byte - b'A' + 10,
        _ => 0,
    }
}

/// A byte as Redis prints it with `%c` in an error reply, where CR and LF become spaces.
fn printable(byte: u8) -> char {
    match byte {
        b'\r' | b'\n' => ' ',
        _ => char::from(byte),
    }
}

/// A [`ProtocolError`] with a fixed message.
fn protocol_error(message: &str) -> ProtocolError {
    ProtocolError(message.to_owned())
}

/// The error for a frame larger than `limits.max_request_bytes`.
fn too_large(limits: RequestLimits) -> ProtocolError {
    ProtocolError(format!(
        "request too large (max {} bytes)",
        limits.max_request_bytes
    ))
}

/// Appends `n` in decimal.
fn put_decimal(out: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

/// True when `frame` is a `(P|S)UNSUBSCRIBE` confirmation (a RESP2 array or RESP3 push of three
/// elements) that reports no subscriptions left: the connection has left subscribe mode.
pub fn is_last_unsubscribe(frame: &[u8]) -> bool {
    let Some(mut rest) = frame
        .strip_prefix(b"*3\r\n")
        .or_else(|| frame.strip_prefix(b">3\r\n"))
    else {
        return false;
    };
    let mut elements = [&b""[..]; 3];
    for element in &mut elements {
        match ReplyScanner::default().scan(rest) {
            Ok(Some(f)) => {
                *element = &rest[..f.len];
                rest = &rest[f.len..];
            }
            _ => return false,
        }
    }
    let kind = elements[0];
    let unsubscribe = [
        &b"$11\r\nunsubscribe\r\n"[..],
        b"$12\r\npunsubscribe\r\n",
        b"$12\r\nsunsubscribe\r\n",
    ];
    rest.is_empty() && unsubscribe.contains(&kind) && elements[2] == b":0\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    // ---------- helpers ----------

    /// The two scanners behind one face, so the chunking harness serves both.
    trait Scanner {
        type Frame: Clone + std::fmt::Debug + PartialEq;
        fn scan_buf(&mut self, buf: &[u8]) -> Result<Option<Self::Frame>, ProtocolError>;
        fn frame_len(frame: &Self::Frame) -> usize;
    }

    impl Scanner for RequestScanner {
        type Frame = RequestFrame;
        fn scan_buf(&mut self, buf: &[u8]) -> Result<Option<RequestFrame>, ProtocolError> {
            self.scan(buf)
        }
        fn frame_len(frame: &RequestFrame) -> usize {
            frame.len
        }
    }

    impl Scanner for ReplyScanner {
        type Frame = ReplyFrame;
        fn scan_buf(&mut self, buf: &[u8]) -> Result<Option<ReplyFrame>, ProtocolError> {
            self.scan(buf)
        }
        fn frame_len(frame: &ReplyFrame) -> usize {
            frame.len
        }
    }

    type Outcome<F> = Vec<Result<F, ProtocolError>>;

    /// Scans `data` arriving in pieces of the given sizes (then the rest), removing each frame from
    /// the front of the buffer as the caller would.
    fn scan_chunked<S: Scanner>(scanner: &mut S, data: &[u8], cuts: &[usize]) -> Outcome<S::Frame> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut fed = 0;
        let mut cuts = cuts.iter();
        while fed < data.len() {
            let n = cuts
                .next()
                .map_or(data.len(), |&n| n.max(1))
                .min(data.len() - fed);
            buf.extend_from_slice(&data[fed..fed + n]);
            fed += n;
            loop {
                match scanner.scan_buf(&buf) {
                    Ok(Some(frame)) => {
                        let len = S::frame_len(&frame);
                        assert!(
                            len > 0 && len <= buf.len(),
                            "frame {frame:?} outside buffer"
                        );
                        buf.drain(..len);
                        out.push(Ok(frame));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    }

    /// Scans `data` as the caller would when it arrives all at once; stops at the first error.
    fn scan_whole<S: Scanner>(scanner: &mut S, data: &[u8]) -> Outcome<S::Frame> {
        scan_chunked(scanner, data, &[])
    }

    /// Feeds `data` to `scanner` 4 KiB more at a time, as a slow socket would, until a frame
    /// completes; returns the frame and the number of calls.
    fn scan_growing<S: Scanner>(scanner: &mut S, data: &[u8]) -> (S::Frame, usize) {
        let (mut end, mut calls) = (0, 0);
        loop {
            assert!(end < data.len(), "no frame in {} bytes", data.len());
            end = (end + 4096).min(data.len());
            calls += 1;
            if let Some(frame) = scanner.scan_buf(&data[..end]).unwrap() {
                return (frame, calls);
            }
        }
    }

    /// The frame `scanner` finds at the start of `input`; anything else fails the test.
    fn first_frame<S: Scanner>(mut scanner: S, input: &[u8]) -> S::Frame {
        match scanner.scan_buf(input) {
            Ok(Some(frame)) => frame,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    /// The error message `scanner` gives for `input`; anything else fails the test.
    fn first_error<S: Scanner>(mut scanner: S, input: &[u8]) -> String {
        match scanner.scan_buf(input) {
            Err(ProtocolError(message)) => message,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    fn requests() -> RequestScanner {
        RequestScanner::new(RequestLimits::default())
    }

    fn request(input: &[u8]) -> RequestFrame {
        first_frame(requests(), input)
    }

    fn request_error_with(limits: RequestLimits, input: &[u8]) -> String {
        first_error(RequestScanner::new(limits), input)
    }

    fn request_error(input: &[u8]) -> String {
        request_error_with(RequestLimits::default(), input)
    }

    fn reply(input: &[u8]) -> ReplyFrame {
        first_frame(ReplyScanner::default(), input)
    }

    fn reply_error(input: &[u8]) -> String {
        first_error(ReplyScanner::default(), input)
    }

    fn args(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    // ---------- requests: framing ----------

    #[test]
    fn error_display_is_the_text_after_err() {
        assert_eq!(
            ProtocolError("invalid multibulk length".into()).to_string(),
            "Protocol error: invalid multibulk length"
        );
    }

    #[test]
    fn multibulk_frame() {
        let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n";
        let frame = request(input);
        assert_eq!(frame.len, 20);
        assert_eq!(frame.kind, RequestKind::Resp);
        assert_eq!(frame.argc, 2);
        assert_eq!(&input[frame.name.clone()], b"GET");
        let collected: Vec<&[u8]> = request_args(&input[..frame.len]).collect();
        assert_eq!(collected, vec![&b"GET"[..], b"k"]);
    }

    #[test]
    fn binary_and_empty_arguments() {
        let input = b"*3\r\n$0\r\n\r\n$4\r\n\r\n\0\n\r\n$1\r\n*\r\n";
        let frame = request(input);
        assert_eq!((frame.len, frame.argc), (input.len(), 3));
        assert_eq!(frame.name, 8..8);
        let collected: Vec<&[u8]> = request_args(input).collect();
        assert_eq!(collected, vec![&b""[..], b"\r\n\0\n", b"*"]);
    }

    #[test]
    fn empty_requests_have_no_arguments() {
        for input in [
            &b"*0\r\n"[..],
            b"*-1\r\n",
            b"*-5\r\n",
            b"\r\n",
            b"\n",
            b" \t \r\n",
        ] {
            let frame = request(input);
            assert_eq!(
                (frame.len, frame.argc, frame.name),
                (input.len(), 0, 0..0),
                "{input:?}"
            );
        }
        assert_eq!(request(b"*0\r\n").kind, RequestKind::Resp);
        assert_eq!(request(b"\n").kind, RequestKind::Inline);
    }

    #[test]
    fn inline_frames() {
        let input = b"  set \"a b\" 'c d'\r\nGET x\n";
        let frame = request(input);
        assert_eq!(
            (frame.len, frame.kind, frame.argc),
            (19, RequestKind::Inline, 3)
        );
        assert_eq!(&input[frame.name.clone()], b"set");
        let frame = request(b"PING\n");
        assert_eq!((frame.len, frame.argc, frame.name), (5, 1, 0..4));
        // Only `\n` ends a line; a lone `\r` is whitespace inside it.
        let frame = request(b"GET a\rb\r\r\n");
        assert_eq!((frame.len, frame.argc), (10, 3));
        // A quoted command name has no raw range.
        let frame = request(b"\"GET\" k\r\n");
        assert_eq!((frame.argc, frame.name), (2, 0..0));
        let frame = request(b"GE\"T\" k\r\n");
        assert_eq!((frame.argc, frame.name), (2, 0..0));
        // `$` or anything but `*` first is inline.
        assert_eq!(request(b"$3\r\n").kind, RequestKind::Inline);
    }

    #[test]
    fn multibulk_count_errors() {
        for input in [
            &b"*abc\r\n"[..],
            b"*\r\n",
            b"*+1\r\n",
            b"* 1\r\n",
            b"*1 \r\n",
            b"*01\r\n",
            b"*-0\r\n",
            b"*1-\r\n",
            b"*1\n",
            b"*1\rX",
            b"*1\n$3\r\nGET\r\n",
            b"*99999999999999999999\r\n",
            b"*2147483648\r\n",
            b"*16777217\r\n",
        ] {
            assert_eq!(
                request_error(input),
                "invalid multibulk length",
                "{input:?}"
            );
        }
        let limits = RequestLimits {
            max_args: 2,
            ..RequestLimits::default()
        };
        assert_eq!(
            request_error_with(limits, b"*3\r\n"),
            "invalid multibulk length"
        );
        assert_eq!(requests().scan(b"*16777216\r\n"), Ok(None));

        let mut long = vec![b'*'];
        long.resize(MAX_INLINE_BYTES, b'1');
        assert_eq!(requests().scan(&long), Ok(None));
        long.push(b'1');
        assert_eq!(request_error(&long), "too big mbulk count string");
    }

    #[test]
    fn bulk_errors() {
        assert_eq!(request_error(b"*1\r\nX"), "expected '$', got 'X'");
        assert_eq!(request_error(b"*1\r\n\r\n"), "expected '$', got ' '");
        assert_eq!(
            request_error(b"*2\r\n$1\r\na\r\n:1\r\n"),
            "expected '$', got ':'"
        );
        for input in [
            &b"*1\r\n$abc\r\n"[..],
            b"*1\r\n$\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$+1\r\n",
            b"*1\r\n$01\r\n",
            b"*1\r\n$1 \r\n",
            b"*1\r\n$1\n",
            b"*1\r\n$1\rx",
            b"*1\r\n$536870913\r\n",
        ] {
            assert_eq!(request_error(input), "invalid bulk length", "{input:?}");
        }
        let mut long = b"*1\r\n$".to_vec();
        long.resize(4 + MAX_INLINE_BYTES, b'1');
        assert_eq!(requests().scan(&long), Ok(None));
        long.push(b'1');
        assert_eq!(request_error(&long), "too big bulk count string");

        assert_eq!(
            request_error(b"*1\r\n$3\r\nfooXY"),
            "expected CRLF after bulk"
        );
        assert_eq!(
            request_error(b"*1\r\n$3\r\nfoo\n\r"),
            "expected CRLF after bulk"
        );
        assert_eq!(requests().scan(b"*1\r\n$3\r\nfoo\r"), Ok(None));
    }

    #[test]
    fn request_size_limit() {
        let limits = RequestLimits {
            max_request_bytes: 20,
            ..RequestLimits::default()
        };
        // 4 + 4 + 3 + 2 = 13 bytes: fine.
        assert_eq!(
            RequestScanner::new(limits)
                .scan(b"*1\r\n$3\r\nfoo\r\n")
                .map(|f| f.map(|f| f.len)),
            Ok(Some(13))
        );
        // A single bulk longer than the limit is an invalid bulk length, as in Redis.
        assert_eq!(
            request_error_with(limits, b"*1\r\n$21\r\n"),
            "invalid bulk length"
        );
        // Fits alone, but the frame outgrows the limit.
        assert_eq!(
            request_error_with(limits, b"*2\r\n$3\r\nfoo\r\n$3\r\n"),
            "request too large (max 20 bytes)"
        );
        assert_eq!(
            request_error_with(limits, b"0123456789 0123456789\r\n"),
            "request too large (max 20 bytes)"
        );
        assert_eq!(ProtocolError("x".into()).0, "x");
    }

    #[test]
    fn inline_errors() {
        let mut long = vec![b'a'; MAX_INLINE_BYTES];
        assert_eq!(requests().scan(&long), Ok(None));
        long.push(b'a');
        assert_eq!(request_error(&long), "too big inline request");
        let mut exact = vec![b'a'; MAX_INLINE_BYTES];
        exact.push(b'\n');
        assert_eq!(request(&exact).len, MAX_INLINE_BYTES + 1);

        assert_eq!(
            request_error(b"set \"a\r\n"),
            "unbalanced quotes in request"
        );
        assert_eq!(
            request_error(b"GET a\0b\r\n"),
            "null byte in inline request"
        );
        assert_eq!(request_error(b"GET a\0"), "null byte in inline request");
    }

    #[test]
    fn scanning_resumes_byte_by_byte() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\nGET \"k\"\r\n*0\r\n";
        let whole = scan_whole(&mut requests(), input);
        assert_eq!(whole.len(), 3);
        let ones = vec![1; input.len()];
        assert_eq!(scan_chunked(&mut requests(), input, &ones), whole);
    }

    #[test]
    fn large_array_in_chunks_is_linear() {
        let n = 200_000;
        let mut data = format!("*{n}\r\n").into_bytes();
        for i in 0..n {
            let arg = (i % 1000).to_string();
            data.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        let mut scanner = requests();
        let (frame, calls) = scan_growing(&mut scanner, &data);
        assert_eq!((frame.len, frame.argc), (data.len(), n));
        assert!(calls > 400);
        // Rescanning from the start on every call would cost about calls * len / 2 steps.
        assert!(
            scanner.steps <= data.len() as u64,
            "{} steps for {} bytes",
            scanner.steps,
            data.len()
        );
    }

    #[test]
    fn large_bulk_is_skipped_by_length() {
        let size = 8 * 1024 * 1024;
        let header = format!("*2\r\n${size}\r\n").into_bytes();
        let mut data = header.clone();
        data.resize(header.len() + size / 2, b'\n');
        let mut scanner = requests();
        assert_eq!(scanner.scan(&data), Ok(None));
        assert_eq!(scanner.needed(), Some(header.len() + size + 2));
        data.resize(header.len() + size, b'\r');
        assert_eq!(scanner.scan(&data), Ok(None));
        data.extend_from_slice(b"\r\n$1");
        assert_eq!(scanner.scan(&data), Ok(None));
        assert_eq!(scanner.needed(), None);
        data.extend_from_slice(b"\r\nx\r\n");
        let frame = scanner.scan(&data).unwrap().unwrap();
        assert_eq!((frame.len, frame.argc), (data.len(), 2));
        assert_eq!(frame.name, header.len()..header.len() + size);
        assert!(scanner.steps < 64, "{} steps", scanner.steps);
    }

    #[test]
    fn long_inline_line_in_chunks_is_linear() {
        let mut data = b"SET k ".to_vec();
        data.resize(60_000, b'v');
        data.extend_from_slice(b"\r\n");
        let mut scanner = requests();
        for end in (1..data.len()).step_by(100) {
            assert_eq!(scanner.scan(&data[..end]), Ok(None));
        }
        let frame = scanner.scan(&data).unwrap().unwrap();
        assert_eq!((frame.len, frame.argc, frame.name), (data.len(), 3, 0..3));
        assert!(
            scanner.steps <= 3 * data.len() as u64,
            "{} steps",
            scanner.steps
        );
    }

    #[test]
    fn scanner_is_reset_after_each_frame() {
        let mut scanner = requests();
        assert_eq!(scanner.scan(b"*1\r\n$4\r\nPI"), Ok(None));
        let frame = scanner
            .scan(b"*1\r\n$4\r\nPING\r\nPING\n")
            .unwrap()
            .unwrap();
        assert_eq!((frame.len, frame.argc, frame.name), (14, 1, 8..12));
        let frame = scanner.scan(b"PING\n").unwrap().unwrap();
        assert_eq!((frame.len, frame.kind), (5, RequestKind::Inline));
        assert_eq!(scanner.limits(), RequestLimits::default());
    }

    #[test]
    fn request_args_stops_on_garbage() {
        for input in [
            &b""[..],
            b"PING\r\n",
            b"*2\r\n$3\r\nGET",
            b"*2\r\n$-1\r\n",
            b"*x\r\n",
            b"*9\r\n$1\r\na\r\n$9",
            b"*2\r\n$1\r\nab\r\n",
        ] {
            assert!(request_args(input).count() <= 1, "{input:?}");
        }
        assert_eq!(request_args(b"*9\r\n$1\r\na\r\n").count(), 1);
    }

    #[test]
    fn encode_request_bytes() {
        assert_eq!(
            encode_request(&["SET", "k", ""]),
            Bytes::from_static(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n")
        );
        assert_eq!(encode_request::<&[u8]>(&[]), Bytes::from_static(b"*0\r\n"));
        let long = vec![b'x'; 1234];
        assert!(encode_request(&[&long]).starts_with(b"*1\r\n$1234\r\nxx"));
    }

    #[test]
    fn parse_int_matches_string2ll() {
        for (text, value) in [
            (&b"0"[..], Some(0)),
            (b"7", Some(7)),
            (b"-7", Some(-7)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775808", None),
            (b"-9223372036854775809", None),
            (b"", None),
            (b"-", None),
            (b"-0", None),
            (b"00", None),
            (b"01", None),
            (b"-01", None),
            (b" 1", None),
            (b"+1", None),
            (b"1a", None),
            (b"000000000000000000001", None),
        ] {
            assert_eq!(parse_int(text), value, "{text:?}");
        }
    }

    // ---------- inline quoting ----------

    #[test]
    fn inline_quoting_like_sdssplitargs() {
        let ok: &[(&[u8], &[&str])] = &[
            (b"set \"a b\" 'c d'", &["set", "a b", "c d"]),
            (b"\"\\x41\"", &["A"]),
            (b"\"\\x4\"", &["x4"]),
            (b"\"\\xZZ\"", &["xZZ"]),
            (
                b"\"\\n\\r\\t\\b\\a\\\\\\\"\\q\"",
                &["\n\r\t\u{8}\u{7}\\\"q"],
            ),
            (b"'it\\'s' 'a\\b'", &["it's", "a\\b"]),
            (b"a\"b c\"", &["ab c"]),
            (b"a'b c' d", &["ab c", "d"]),
            (b"\"\" ''", &["", ""]),
            (b"  x   y  ", &["x", "y"]),
            (b"\x0b\x0cx\x0by", &["x\x0by"]),
            (b"\"a\"\x0b'b'", &["a", "b"]),
            (b"", &[]),
            (b" \t\r ", &[]),
        ];
        for (line, expected) in ok {
            assert_eq!(parse_inline(line), Ok(args(expected)), "{line:?}");
        }
        let hex = parse_inline(b"\"\\xff\\x00\\xAb\"").unwrap();
        assert_eq!(hex, vec![vec![0xff, 0x00, 0xab]]);
        for line in [
            &b"\"unterminated"[..],
            b"'unterminated",
            b"\"a\"b",
            b"'a'b",
            b"x \"a\\\"",
            b"\"a\\",
        ] {
            assert_eq!(
                parse_inline(line),
                Err(ProtocolError("unbalanced quotes in request".into())),
                "{line:?}"
            );
        }
        assert_eq!(
            parse_inline(b"a\0b").map_err(|e| e.to_string()),
            Err("Protocol error: null byte in inline request".into())
        );
    }

    // ---------- replies ----------

    #[test]
    fn every_reply_type() {
        let cases: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR unknown command\r\n",
            b":-12\r\n",
            b"$5\r\nhello\r\n",
            b"$0\r\n\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$1\r\na\r\n*-1\r\n",
            b"_\r\n",
            b",3.14\r\n",
            b",-inf\r\n",
            b"#t\r\n",
            b"#f\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
            b"!21\r\nSYNTAX invalid syntax\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"%2\r\n+first\r\n:1\r\n+second\r\n%1\r\n$1\r\nk\r\n~2\r\n#t\r\n_\r\n",
            b"~3\r\n+a\r\n+b\r\n*1\r\n:1\r\n",
            b"%0\r\n",
            b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n",
            b"|0\r\n:1\r\n",
            b"*2\r\n|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n:2\r\n",
            b"|1\r\n+a\r\n+b\r\n|1\r\n+c\r\n+d\r\n+e\r\n",
            // An attribute on an attribute value.
            b"|1\r\n+a\r\n|1\r\n+b\r\n+c\r\n+d\r\n:1\r\n",
        ];
        for input in cases {
            let mut with_next = input.to_vec();
            with_next.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(
                reply(&with_next),
                ReplyFrame {
                    len: input.len(),
                    push: false
                },
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn push_frames() {
        let push = b">3\r\n$7\r\nmessage\r\n$3\r\nfoo\r\n$3\r\nbar\r\n";
        assert_eq!(
            reply(push),
            ReplyFrame {
                len: push.len(),
                push: true
            }
        );
        let annotated = b"|1\r\n+a\r\n+b\r\n>1\r\n+x\r\n";
        assert_eq!(
            reply(annotated),
            ReplyFrame {
                len: annotated.len(),
                push: true
            }
        );
        let nested = b"*1\r\n>1\r\n+x\r\n";
        assert_eq!(
            reply(nested),
            ReplyFrame {
                len: nested.len(),
                push: false
            }
        );
        let push_then_reply = b">0\r\n+OK\r\n";
        let mut scanner = ReplyScanner::default();
        assert_eq!(
            scanner.scan(push_then_reply),
            Ok(Some(ReplyFrame { len: 4, push: true }))
        );
        assert_eq!(
            scanner.scan(&push_then_reply[4..]),
            Ok(Some(ReplyFrame {
                len: 5,
                push: false
            }))
        );
    }

    #[test]
    fn reply_errors() {
        assert_eq!(reply_error(b"?"), "unexpected reply type byte '?'");
        assert_eq!(
            reply_error(b";4\r\nabcd\r\n"),
            "unexpected reply type byte ';'"
        );
        assert_eq!(reply_error(b".\r\n"), "unexpected reply type byte '.'");
        assert_eq!(reply_error(b"\r\n"), "unexpected reply type byte ' '");
        assert_eq!(
            reply_error(b"$?\r\n;4\r\nabcd\r\n;0\r\n"),
            "streamed replies are not supported"
        );
        assert_eq!(reply_error(b"*?\r\n"), "streamed replies are not supported");
        assert_eq!(reply_error(b"$-2\r\n"), "invalid bulk length");
        assert_eq!(reply_error(b"!-1\r\n"), "invalid bulk length");
        assert_eq!(reply_error(b"$x\r\n"), "invalid bulk length");
        assert_eq!(reply_error(b"%-1\r\n"), "invalid multibulk length");
        assert_eq!(reply_error(b"*1\n"), "invalid multibulk length");
        assert_eq!(reply_error(b"$3\r\nfoo\n\n"), "expected CRLF after bulk");
        assert_eq!(reply_error(b"+OK\n"), "invalid line ending in reply");
        assert_eq!(reply_error(b"+OK\rX\r\n"), "invalid line ending in reply");
        assert_eq!(reply_error(b"#x\r\n"), "invalid boolean reply");
        assert_eq!(reply_error(b"_x\r\n"), "invalid null reply");
        let mut long = vec![b'*'];
        long.resize(MAX_INLINE_BYTES + 1, b'1');
        assert_eq!(reply_error(&long), "too big mbulk count string");
    }

    #[test]
    fn reply_depth_is_bounded() {
        let nested = b"*1\r\n%1\r\n+k\r\n:1\r\n";
        assert_eq!(
            ReplyScanner::new(2).scan(nested),
            Ok(Some(ReplyFrame {
                len: nested.len(),
                push: false
            }))
        );
        assert_eq!(
            ReplyScanner::new(1).scan(nested),
            Err(ProtocolError("reply nested deeper than 1 levels".into()))
        );
        let deep = "*1\r\n".repeat(100_000);
        assert!(ReplyScanner::new(1024).scan(deep.as_bytes()).is_err());
        // Redis itself returns replies thousands deep (Lua tables): the default takes them.
        let lua_deep = format!("{}:7\r\n", "*1\r\n".repeat(3000));
        assert!(ReplyScanner::default()
            .scan(lua_deep.as_bytes())
            .is_ok_and(|f| f.is_some()));
    }

    #[test]
    fn huge_declared_lengths_do_not_allocate() {
        for input in [
            &b"$2147483647\r\n"[..],
            b"$9223372036854775807\r\n",
            b"*9223372036854775807\r\n",
            b"%9223372036854775807\r\n",
            b"=2147483647\r\nabc",
        ] {
            let mut scanner = ReplyScanner::default();
            assert_eq!(scanner.scan(input), Ok(None), "{input:?}");
            assert!(scanner.open.capacity() <= 16);
        }
    }

    #[test]
    fn big_reply_in_chunks_is_linear() {
        let n = 100_000;
        let mut data = format!("*{n}\r\n").into_bytes();
        for i in 0..n {
            data.extend_from_slice(format!("%1\r\n+k{i}\r\n$3\r\nabc\r\n").as_bytes());
        }
        let mut scanner = ReplyScanner::default();
        let (frame, _) = scan_growing(&mut scanner, &data);
        assert_eq!(frame.len, data.len());
        assert!(
            scanner.steps <= data.len() as u64,
            "{} steps",
            scanner.steps
        );
    }

    // ---------- property tests ----------

    /// A valid request as a client might write it.
    #[derive(Debug, Clone)]
    enum Req {
        Resp(Vec<Vec<u8>>),
        Empty(i8),
        Inline {
            tokens: Vec<String>,
            gap: String,
            crlf: bool,
        },
        Blank {
            spaces: String,
            crlf: bool,
        },
    }

    impl Req {
        fn encode(&self) -> Vec<u8> {
            match self {
                Req::Resp(args) => encode_request(args).to_vec(),
                Req::Empty(n) => format!("*{n}\r\n").into_bytes(),
                Req::Inline { tokens, gap, crlf } => {
                    let ending = if *crlf { "\r\n" } else { "\n" };
                    format!("{}{ending}", tokens.join(gap)).into_bytes()
                }
                Req::Blank { spaces, crlf } => {
                    format!("{spaces}{}", if *crlf { "\r\n" } else { "\n" }).into_bytes()
                }
            }
        }

        /// (len, kind, argc, name bytes) the scanner must report.
        fn expected(&self) -> (usize, RequestKind, usize, Vec<u8>) {
            let len = self.encode().len();
            match self {
                Req::Resp(args) => (len, RequestKind::Resp, args.len(), args[0].clone()),
                Req::Empty(_) => (len, RequestKind::Resp, 0, Vec::new()),
                Req::Inline { tokens, .. } => (
                    len,
                    RequestKind::Inline,
                    tokens.len(),
                    tokens[0].clone().into_bytes(),
                ),
                Req::Blank { .. } => (len, RequestKind::Inline, 0, Vec::new()),
            }
        }
    }

    fn req_strategy() -> impl Strategy<Value = Req> {
        prop_oneof![
            4 => vec(vec(any::<u8>(), 0..12), 1..6).prop_map(Req::Resp),
            1 => (-3i8..=0).prop_map(Req::Empty),
            2 => (vec("[a-zA-Z_][a-zA-Z0-9_:.-]{0,7}", 1..5), "[ \t]{1,3}", any::<bool>())
                .prop_map(|(tokens, gap, crlf)| Req::Inline { tokens, gap, crlf }),
            1 => ("[ \t]{0,3}", any::<bool>()).prop_map(|(spaces, crlf)| Req::Blank { spaces, crlf }),
        ]
    }

    /// A valid reply tree of any RESP2/RESP3 type.
    #[derive(Debug, Clone)]
    enum Reply {
        Simple(String),
        Error(String),
        Int(i64),
        Bulk(Vec<u8>),
        NullBulk,
        Null,
        Double(String),
        Bool(bool),
        Big(String),
        BlobError(Vec<u8>),
        Verbatim(Vec<u8>),
        NullArray,
        Array(Vec<Reply>),
        Map(Vec<(Reply, Reply)>),
        Set(Vec<Reply>),
        Push(Vec<Reply>),
        Attribute(Vec<(Reply, Reply)>, Box<Reply>),
    }

    impl Reply {
        fn encode(&self, out: &mut Vec<u8>) {
            fn bulk(out: &mut Vec<u8>, kind: char, data: &[u8]) {
                out.extend_from_slice(format!("{kind}{}\r\n", data.len()).as_bytes());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            fn aggregate<'a>(
                out: &mut Vec<u8>,
                kind: char,
                items: impl ExactSizeIterator<Item = &'a Reply>,
            ) {
                out.extend_from_slice(format!("{kind}{}\r\n", items.len()).as_bytes());
                items.for_each(|item| item.encode(out));
            }
            fn pairs(out: &mut Vec<u8>, kind: char, items: &[(Reply, Reply)]) {
                out.extend_from_slice(format!("{kind}{}\r\n", items.len()).as_bytes());
                for (k, v) in items {
                    k.encode(out);
                    v.encode(out);
                }
            }
            match self {
                Reply::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
                Reply::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
                Reply::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
                Reply::Bulk(data) => bulk(out, '$', data),
                Reply::NullBulk => out.extend_from_slice(b"$-1\r\n"),
                Reply::Null => out.extend_from_slice(b"_\r\n"),
                Reply::Double(s) => out.extend_from_slice(format!(",{s}\r\n").as_bytes()),
                Reply::Bool(b) => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
                Reply::Big(s) => out.extend_from_slice(format!("({s}\r\n").as_bytes()),
                Reply::BlobError(data) => bulk(out, '!', data),
                Reply::Verbatim(data) => bulk(out, '=', &[b"txt:", &data[..]].concat()),
                Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
                Reply::Array(items) => aggregate(out, '*', items.iter()),
                Reply::Set(items) => aggregate(out, '~', items.iter()),
                Reply::Push(items) => aggregate(out, '>', items.iter()),
                Reply::Map(items) => pairs(out, '%', items),
                Reply::Attribute(items, value) => {
                    pairs(out, '|', items);
                    value.encode(out);
                }
            }
        }

        fn is_push(&self) -> bool {
            match self {
                Reply::Push(_) => true,
                Reply::Attribute(_, value) => value.is_push(),
                _ => false,
            }
        }
    }

    fn reply_strategy() -> impl Strategy<Value = Reply> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,10}".prop_map(Reply::Simple),
            "[A-Z]{1,5} [a-z ]{0,10}".prop_map(Reply::Error),
            any::<i64>().prop_map(Reply::Int),
            vec(any::<u8>(), 0..16).prop_map(Reply::Bulk),
            Just(Reply::NullBulk),
            Just(Reply::Null),
            "(-?[0-9]{1,5}(\\.[0-9]{1,3})?|inf|-inf|nan)".prop_map(Reply::Double),
            any::<bool>().prop_map(Reply::Bool),
            "-?[1-9][0-9]{0,40}".prop_map(Reply::Big),
            vec(any::<u8>(), 0..16).prop_map(Reply::BlobError),
            vec(any::<u8>(), 0..16).prop_map(Reply::Verbatim),
            Just(Reply::NullArray),
        ];
        leaf.prop_recursive(4, 40, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Reply::Array),
                vec((inner.clone(), inner.clone()), 0..3).prop_map(Reply::Map),
                vec(inner.clone(), 0..4).prop_map(Reply::Set),
                vec(inner.clone(), 0..4).prop_map(Reply::Push),
                (vec((inner.clone(), inner.clone()), 0..3), inner)
                    .prop_map(|(attributes, value)| Reply::Attribute(attributes, Box::new(value))),
            ]
        })
    }

    /// Bytes that are mostly RESP punctuation, so random input reaches deep into the scanners.
    fn noise() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            any::<u8>(),
            proptest::sample::select(b"*$\r\n0123-+:_,#(!=%~>|?;. \"'\\x".to_vec()),
        ];
        vec(byte, 0..200)
    }

    fn cuts() -> impl Strategy<Value = Vec<usize>> {
        vec(1usize..40, 0..60)
    }

    /// `"..."` quoting that `sdssplitargs` reads back as `arg`.
    fn quote(arg: &[u8]) -> String {
        let mut quoted = String::from("\"");
        for &byte in arg {
            match byte {
                b'"' => quoted.push_str("\\\""),
                b'\\' => quoted.push_str("\\\\"),
                0x20..=0x7e => quoted.push(char::from(byte)),
                _ => quoted.push_str(&format!("\\x{byte:02x}")),
            }
        }
        quoted.push('"');
        quoted
    }

    proptest! {
        #[test]
        fn the_one_pass_integer_line_agrees_with_the_byte_by_byte_one(
            text in "[-0-9]{0,22}(\r\n|\r|\n|x)?",
            start in 0usize..3,
        ) {
            let mut buf = vec![b'$'; start + 1];
            buf.extend_from_slice(text.as_bytes());
            let fresh = start + 1;
            prop_assert_eq!(
                scan_int_line(&buf, start, fresh),
                scan_int_line_slow(&buf, start, fresh)
            );
            prop_assert_eq!(
                scan_int_line(&buf, start, start),
                scan_int_line_slow(&buf, start, start)
            );
        }

        #[test]
        fn requests_frame_the_same_however_they_arrive(reqs in vec(req_strategy(), 1..12), cuts in cuts()) {
            let data: Vec<u8> = reqs.iter().flat_map(Req::encode).collect();
            let whole = scan_whole(&mut requests(), &data);
            let chunked = scan_chunked(&mut requests(), &data, &cuts);
            prop_assert_eq!(&whole, &chunked);
            let mut offset = 0;
            let mut seen = Vec::new();
            for frame in &whole {
                let frame = frame.clone().unwrap();
                let name = data[offset..offset + frame.len][frame.name.clone()].to_vec();
                seen.push((frame.len, frame.kind, frame.argc, name));
                offset += frame.len;
            }
            let expected: Vec<_> = reqs.iter().map(Req::expected).collect();
            prop_assert_eq!(seen, expected);
        }

        #[test]
        fn replies_frame_the_same_however_they_arrive(replies in vec(reply_strategy(), 1..6), cuts in cuts()) {
            let mut data = Vec::new();
            let mut expected = Vec::new();
            for reply in &replies {
                let start = data.len();
                reply.encode(&mut data);
                expected.push(Ok(ReplyFrame { len: data.len() - start, push: reply.is_push() }));
            }
            prop_assert_eq!(&scan_whole(&mut ReplyScanner::default(), &data), &expected);
            prop_assert_eq!(&scan_chunked(&mut ReplyScanner::default(), &data, &cuts), &expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(noise in noise(), cuts in cuts()) {
            let whole = scan_whole(&mut requests(), &noise);
            prop_assert_eq!(whole, scan_chunked(&mut requests(), &noise, &cuts));
            let whole = scan_whole(&mut ReplyScanner::default(), &noise);
            prop_assert_eq!(whole, scan_chunked(&mut ReplyScanner::default(), &noise, &cuts));
            let _ = request_args(&noise).count();
            let _ = parse_inline(&noise);
        }

        #[test]
        fn arbitrary_bytes_after_valid_frames_never_panic(
            reqs in vec(req_strategy(), 0..4),
            replies in vec(reply_strategy(), 0..3),
            noise in noise(),
            cuts in cuts(),
        ) {
            let mut data: Vec<u8> = reqs.iter().flat_map(Req::encode).collect();
            data.extend_from_slice(&noise);
            let whole = scan_whole(&mut requests(), &data);
            prop_assert!(whole.len() >= reqs.len());
            prop_assert_eq!(whole, scan_chunked(&mut requests(), &data, &cuts));

            let mut data = Vec::new();
            replies.iter().for_each(|reply| reply.encode(&mut data));
            data.extend_from_slice(&noise);
            let whole = scan_whole(&mut ReplyScanner::default(), &data);
            prop_assert!(whole.len() >= replies.len());
            prop_assert_eq!(whole, scan_chunked(&mut ReplyScanner::default(), &data, &cuts));
        }

        #[test]
        fn encoded_requests_round_trip(args in vec(vec(any::<u8>(), 0..20), 1..8)) {
            let encoded = encode_request(&args);
            let frame = requests().scan(&encoded).unwrap().unwrap();
            prop_assert_eq!(frame.len, encoded.len());
            prop_assert_eq!(frame.argc, args.len());
            prop_assert_eq!(&encoded[frame.name.clone()], &args[0][..]);
            let back: Vec<Vec<u8>> = request_args(&encoded).map(<[u8]>::to_vec).collect();
            prop_assert_eq!(back, args);
        }

        #[test]
        fn quoted_inline_lines_round_trip(args in vec(vec(any::<u8>(), 0..12), 0..6), plain in vec("[a-z0-9]{1,6}", 0..3)) {
            let mut expected = args.clone();
            expected.extend(plain.iter().map(|p| p.clone().into_bytes()));
            let mut words: Vec<String> = args.iter().map(|a| quote(a)).collect();
            words.extend(plain.iter().cloned());
            let line = words.join(" ");
            prop_assert_eq!(parse_inline(line.as_bytes()), Ok(expected.clone()));
            let framed = format!("{line}\r\n");
            let frame = requests().scan(framed.as_bytes()).unwrap().unwrap();
            prop_assert_eq!((frame.len, frame.argc), (framed.len(), expected.len()));
        }
    }

    #[test]
    fn last_unsubscribe_is_recognised_in_resp2_and_resp3() {
        assert!(is_last_unsubscribe(
            b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:0\r\n"
        ));
        assert!(is_last_unsubscribe(
            b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:0\r\n"
        ));
        assert!(is_last_unsubscribe(
            b">3\r\n$12\r\nsunsubscribe\r\n_\r\n:0\r\n"
        ));
        assert!(!is_last_unsubscribe(
            b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:1\r\n"
        ));
        assert!(!is_last_unsubscribe(
            b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n:0\r\n"
        ));
        assert!(!is_last_unsubscribe(
            b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n"
        ));
        assert!(!is_last_unsubscribe(b"+OK\r\n"));
    }
}
