//! Fuzzes `RequestScanner`: arbitrary bytes never panic, frames stay inside the buffer, and scanning
//! the same bytes delivered in pieces (resuming after `Ok(None)`) gives exactly the frames and the
//! error that scanning them whole gives.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use respipe::resp::{request_args, RequestFrame, RequestKind, RequestLimits, RequestScanner};

/// Small limits so the fuzzer reaches the limit paths; the first input byte picks the cut size.
const LIMITS: RequestLimits = RequestLimits {
    max_request_bytes: 4096,
    max_args: 64,
};

/// Scans `data` as a stream that arrives `step` bytes at a time (`usize::MAX`: all at once).
fn scan_stream(data: &[u8], step: usize) -> (Vec<RequestFrame>, Option<String>) {
    let mut scanner = RequestScanner::new(LIMITS);
    common::scan_stream(data, step, |b| scanner.scan(b), |f| f.len, check_frame)
}

/// A frame's name lies inside it; a complete RESP frame yields exactly `argc` arguments, the first
/// being the name, and respects the size limit.
fn check_frame(frame: &RequestFrame, bytes: &[u8]) {
    assert!(frame.name.end <= frame.len && frame.name.start <= frame.name.end);
    if frame.kind == RequestKind::Resp && frame.argc > 0 {
        let args: Vec<&[u8]> = request_args(bytes).collect();
        assert_eq!(args.len(), frame.argc, "argc and the arguments disagree");
        assert_eq!(args[0], &bytes[frame.name.clone()]);
        assert!(frame.len <= LIMITS.max_request_bytes);
    }
}

fuzz_target!(|input: &[u8]| common::pieces_match_whole(input, scan_stream));
