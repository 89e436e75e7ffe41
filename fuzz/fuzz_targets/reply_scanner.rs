//! Fuzzes `ReplyScanner`: arbitrary bytes never panic, frames stay inside the buffer, and scanning
//! the bytes delivered in pieces gives the same frames and error as scanning them whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respipe::resp::{ReplyFrame, ReplyScanner};

/// A small depth limit so the fuzzer reaches it.
const MAX_DEPTH: usize = 32;

fn scan_stream(data: &[u8], step: usize) -> (Vec<ReplyFrame>, Option<String>) {
    let mut scanner = ReplyScanner::new(MAX_DEPTH);
    let mut frames = Vec::new();
    let mut start = 0;
    let mut avail = step.min(data.len());
    loop {
        match scanner.scan(&data[start..avail]) {
            Ok(Some(frame)) => {
                assert!(frame.len > 0 && start + frame.len <= avail, "frame outside the buffer");
                start += frame.len;
                frames.push(frame);
            }
            Ok(None) => {
                if avail == data.len() {
                    return (frames, None);
                }
                avail = avail.saturating_add(step).min(data.len());
            }
            Err(err) => {
                let text = err.to_string();
                assert!(!text.contains('\r') && !text.contains('\n'), "error text breaks the line");
                return (frames, Some(text));
            }
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, data)) = input.split_first() else {
        return;
    };
    let whole = scan_stream(data, usize::MAX);
    let pieces = scan_stream(data, usize::from(cut % 17) + 1);
    assert_eq!(whole, pieces, "resumed scan differs from the whole scan");
});
