//! Fuzzes `RequestScanner`: arbitrary bytes never panic, frames stay inside the buffer, and scanning
//! the same bytes delivered in pieces (resuming after `Ok(None)`) gives exactly the frames and the
//! error that scanning them whole gives.
#![no_main]

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
    let mut frames = Vec::new();
    let mut start = 0; // first byte of the frame being scanned
    let mut avail = step.min(data.len());
    loop {
        match scanner.scan(&data[start..avail]) {
            Ok(Some(frame)) => {
                assert!(frame.len > 0 && start + frame.len <= avail, "frame outside the buffer");
                assert!(frame.name.end <= frame.len && frame.name.start <= frame.name.end);
                let bytes = &data[start..start + frame.len];
                if frame.kind == RequestKind::Resp && frame.argc > 0 {
                    // A complete RESP frame yields exactly argc arguments, the first being the name.
                    let args: Vec<&[u8]> = request_args(bytes).collect();
                    assert_eq!(args.len(), frame.argc, "argc and the arguments disagree");
                    assert_eq!(args[0], &bytes[frame.name.clone()]);
                    assert!(frame.len <= LIMITS.max_request_bytes);
                }
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
