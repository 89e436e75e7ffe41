//! Fuzzes `parse_inline`: arbitrary lines never panic, and whatever parses re-encodes (as respipe
//! forwards it) to one RESP request that `RequestScanner` reads back with the same arguments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respipe::resp::{encode_request, parse_inline, request_args, RequestLimits, RequestScanner};

fuzz_target!(|line: &[u8]| {
    let Ok(args) = parse_inline(line) else {
        return;
    };
    if args.is_empty() {
        return;
    }
    let encoded = encode_request(&args);
    let frame = RequestScanner::new(RequestLimits::default())
        .scan(&encoded)
        .expect("re-encoded inline request is valid RESP")
        .expect("re-encoded inline request is complete");
    assert_eq!(frame.len, encoded.len());
    assert_eq!(frame.argc, args.len());
    let back: Vec<&[u8]> = request_args(&encoded).collect();
    let want: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    assert_eq!(back, want);
});
