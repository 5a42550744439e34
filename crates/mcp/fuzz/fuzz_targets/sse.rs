//! Arbitrary bytes as an upstream's event stream, cut into chunks at arbitrary points: decoding
//! never panics, no event exceeds the bound, and cutting differently never changes the events.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_mcp::sse::{SseDecoder, SseEvent};

const MAX: usize = 512;

fn decode(chunks: &[&[u8]]) -> (Vec<SseEvent>, bool) {
    let mut decoder = SseDecoder::new(MAX);
    let mut events = Vec::new();
    for chunk in chunks {
        if decoder.push(chunk).is_err() {
            return (events, false);
        }
        while let Some(event) = decoder.pop() {
            assert!(event.data.len() <= MAX, "an event beyond the bound");
            events.push(event);
        }
    }
    (events, true)
}

fuzz_target!(|input: &[u8]| {
    let Some((&seed, stream)) = input.split_first() else {
        return;
    };
    let whole = decode(&[stream]);
    // The same bytes in pieces of `seed % 7 + 1` bytes.
    let size = usize::from(seed % 7) + 1;
    let pieces: Vec<&[u8]> = stream.chunks(size).collect();
    let cut = decode(&pieces);
    if whole.1 && cut.1 {
        assert_eq!(whole.0, cut.0, "chunking changed the events");
    }
});
