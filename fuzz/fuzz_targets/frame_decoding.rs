//! The signer's frame reader (`keyward::testing::split_frames`) on any byte stream: it never
//! panics, never loops, and splits exactly as the framing rule says (a little-endian u32 length
//! of at most the cap, then that many bytes).
#![no_main]

use keyward::testing::{FRAME_CAP, split_frames};
use libfuzzer_sys::fuzz_target;

/// The framing rule, written out independently of the reader.
fn model(stream: &[u8]) -> (Vec<usize>, Option<&'static str>) {
    let mut lengths = Vec::new();
    let mut rest = stream;
    loop {
        if rest.is_empty() {
            return (lengths, None);
        }
        let Some(header) = rest.first_chunk::<4>() else {
            return (lengths, Some("truncated frame"));
        };
        let length = u32::from_le_bytes(*header) as usize;
        if length > FRAME_CAP {
            return (lengths, Some("TooLong"));
        }
        if rest.len() - 4 < length {
            return (lengths, Some("truncated frame"));
        }
        lengths.push(length);
        rest = &rest[4 + length..];
    }
}

fuzz_target!(|data: &[u8]| {
    let (lengths, stop) = split_frames(data);
    let (expected_lengths, expected_stop) = model(data);
    assert_eq!(lengths, expected_lengths);
    assert_eq!(stop.as_deref(), expected_stop);
});
