//! What the scanner targets share: scan bytes as a stream that arrives in pieces, resuming after
//! `Ok(None)`, and check that any piece size gives the frames and error that the whole buffer gives.

use std::fmt::{Debug, Display};

/// Scans `data` as a stream that arrives `step` bytes at a time (`usize::MAX`: all at once) with
/// `scan` (one scanner per stream), asserting each frame (its length from `len`) lies inside the
/// buffer and `check` holds for it and its bytes, and that an error's text is one line.
pub fn scan_stream<F, E: Display>(
    data: &[u8],
    step: usize,
    mut scan: impl FnMut(&[u8]) -> Result<Option<F>, E>,
    len: impl Fn(&F) -> usize,
    mut check: impl FnMut(&F, &[u8]),
) -> (Vec<F>, Option<String>) {
    let mut frames = Vec::new();
    let mut start = 0; // first byte of the frame being scanned
    let mut avail = step.min(data.len());
    loop {
        match scan(&data[start..avail]) {
            Ok(Some(frame)) => {
                let n = len(&frame);
                assert!(n > 0 && start + n <= avail, "frame outside the buffer");
                check(&frame, &data[start..start + n]);
                start += n;
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
                assert!(
                    !text.contains('\r') && !text.contains('\n'),
                    "error text breaks the line"
                );
                return (frames, Some(text));
            }
        }
    }
}

/// The first input byte picks a piece size (1 to 17 bytes); the rest, scanned in pieces by
/// `scan_stream(data, step)`, must give what it gives scanned whole.
pub fn pieces_match_whole<T: PartialEq + Debug>(
    input: &[u8],
    scan_stream: impl Fn(&[u8], usize) -> T,
) {
    let Some((&cut, data)) = input.split_first() else {
        return;
    };
    let whole = scan_stream(data, usize::MAX);
    let pieces = scan_stream(data, usize::from(cut % 17) + 1);
    assert_eq!(whole, pieces, "resumed scan differs from the whole scan");
}
