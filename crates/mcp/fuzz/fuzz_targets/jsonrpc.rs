//! Arbitrary bytes as a client's POST body: parsing never panics, and every message it accepts
//! survives a round trip (what the gateway forwards is what it understood).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_mcp::jsonrpc::{Body, Message, parse_body};

fuzz_target!(|bytes: &[u8]| {
    let Ok(body) = parse_body(bytes) else {
        return;
    };
    let messages = match body {
        Body::Single(m) => vec![m],
        Body::Batch(ms) => ms,
    };
    for message in messages {
        let value = message.to_value();
        let again = Message::from_value(value).expect("a message we wrote parses again");
        assert_eq!(again, message);
    }
});
