//! Fuzzes `ReplyScanner`: arbitrary bytes never panic, frames stay inside the buffer, and scanning
//! the bytes delivered in pieces gives the same frames and error as scanning them whole.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use respipe::resp::{ReplyFrame, ReplyScanner};

/// A small depth limit so the fuzzer reaches it.
const MAX_DEPTH: usize = 32;

fn scan_stream(data: &[u8], step: usize) -> (Vec<ReplyFrame>, Option<String>) {
    let mut scanner = ReplyScanner::new(MAX_DEPTH);
    common::scan_stream(data, step, |b| scanner.scan(b), |f| f.len, |_, _| {})
}

fuzz_target!(|input: &[u8]| common::pieces_match_whole(input, scan_stream));
