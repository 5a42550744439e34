//! Server-Sent Events: an incremental decoder with a bound on one event's size, and an encoder.
//!
//! Decoding follows the WHATWG HTML "event stream interpretation" rules: lines end with CRLF,
//! LF or CR; a leading UTF-8 BOM is dropped; `:` lines are comments; a line without a colon is
//! a field name with an empty value; one space after the colon is dropped; `data` lines are
//! joined with `\n`; an `id` containing NUL is ignored; `retry` must be all ASCII digits; a blank
//! line dispatches the event, unless no `data` line was seen; an unterminated event at the end of
//! the stream is discarded. Bytes that are not UTF-8 become U+FFFD.
//!
//! Written here rather than taken from a crate because the gateway needs a hard bound on what
//! one event may buffer (an upstream must not make it hold an unbounded line), and the decoder
//! is small.

use std::collections::VecDeque;

/// The default bound on one event: 4 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id` field, when this event carried one. (The id that applies for resumption, which
    /// persists across events, is [`SseDecoder::last_event_id`].)
    pub id: Option<String>,
    /// The `event` field; `None` means the default type, `message`.
    pub event: Option<String>,
    /// The `data` lines joined with `\n`.
    pub data: String,
    /// The `retry` field (milliseconds), when this event carried one.
    pub retry: Option<u64>,
}

impl SseEvent {
    /// A `message` event with this data.
    pub fn message(data: impl Into<String>) -> Self {
        SseEvent {
            data: data.into(),
            ..SseEvent::default()
        }
    }
}

/// Why a stream cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One event (or one line) grew beyond the configured bound.
    #[error("an SSE event exceeds the {limit}-byte limit")]
    TooLarge { limit: usize },
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// An incremental decoder: [`push`](Self::push) bytes as they arrive, then
/// [`pop`](Self::pop) the events they completed.
#[derive(Debug)]
pub struct SseDecoder {
    max_event_bytes: usize,
    /// Bytes of the current, unterminated line.
    line: Vec<u8>,
    /// The previous byte was a CR, so an LF right after it ends nothing.
    after_cr: bool,
    /// How many bytes of the stream start have matched the BOM; `None` once decided.
    bom_matched: Option<usize>,
    data: String,
    data_seen: bool,
    event_type: Option<String>,
    event_id: Option<String>,
    event_retry: Option<u64>,
    last_event_id: Option<String>,
    retry: Option<u64>,
    ready: VecDeque<SseEvent>,
    failed: Option<SseError>,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseDecoder {
    /// A decoder that fails once one event grows beyond `max_event_bytes`, counting the
    /// values of its `data`, `event` and `id` fields so far plus the raw bytes of the line
    /// being read (so an endless line, even a comment, is bounded too).
    pub fn new(max_event_bytes: usize) -> Self {
        SseDecoder {
            max_event_bytes,
            line: Vec::new(),
            after_cr: false,
            bom_matched: Some(0),
            data: String::new(),
            data_seen: false,
            event_type: None,
            event_id: None,
            event_retry: None,
            last_event_id: None,
            retry: None,
            ready: VecDeque::new(),
            failed: None,
        }
    }

    /// Feeds the next bytes of the stream. Events they complete are queued for
    /// [`pop`](Self::pop); events completed before an error stay queued. After an error the
    /// decoder refuses further input.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<(), SseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if let Some(matched) = self.bom_matched {
            // The BOM may arrive split across chunks; hold matching bytes back until decided.
            let mut m = matched;
            while m < BOM.len() {
                match bytes.first() {
                    None => {
                        self.bom_matched = Some(m);
                        return Ok(());
                    }
                    Some(&b) if b == BOM[m] => {
                        m += 1;
                        bytes = &bytes[1..];
                    }
                    Some(_) => break,
                }
            }
            self.bom_matched = None;
            if m < BOM.len() {
                // Not a BOM after all: the held-back bytes are content.
                self.consume(&BOM[..m])?;
            }
        }
        self.consume(bytes)
    }

    /// The next completed event, oldest first.
    pub fn pop(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// The id a reconnection sends as `Last-Event-ID`: the last `id` field seen, which persists
    /// across events (an empty `id` field clears it).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref().filter(|id| !id.is_empty())
    }

    /// The last `retry` value seen, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    fn consume(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match memchr::memchr2(b'\n', b'\r', rest) {
                Some(end) if self.line.is_empty() => {
                    // A whole line in this chunk: read in place, not copied.
                    self.bound(end)?;
                    self.after_cr = rest[end] == b'\r';
                    self.process_line(&rest[..end]);
                    rest = &rest[end + 1..];
                }
                Some(end) => {
                    self.append_line(&rest[..end])?;
                    self.after_cr = rest[end] == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line);
                    self.line = line;
                    self.line.clear();
                    rest = &rest[end + 1..];
                }
                None => {
                    self.append_line(rest)?;
                    rest = &[];
                }
            }
        }
        Ok(())
    }

    fn append_line(&mut self, part: &[u8]) -> Result<(), SseError> {
        self.bound(part.len())?;
        self.line.extend_from_slice(part);
        Ok(())
    }

    /// An error once the current event, with the line being read and `more` bytes of it,
    /// would be over the limit.
    fn bound(&mut self, more: usize) -> Result<(), SseError> {
        if self.pending_bytes() + self.line.len() + more > self.max_event_bytes {
            return Err(self.fail());
        }
        Ok(())
    }

    /// Bytes the current event holds, not counting the line being read.
    fn pending_bytes(&self) -> usize {
        self.data.len()
            + self.event_type.as_ref().map_or(0, String::len)
            + self.event_id.as_ref().map_or(0, String::len)
    }

    fn fail(&mut self) -> SseError {
        let e = SseError::TooLarge {
            limit: self.max_event_bytes,
        };
        self.failed = Some(e.clone());
        e
    }

    fn process_line(&mut self, line: &[u8]) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                if self.data_seen {
                    self.data.push('\n');
                }
                self.data_seen = true;
                self.data.push_str(&String::from_utf8_lossy(value));
            }
            b"event" => self.event_type = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => {
                let id = String::from_utf8_lossy(value).into_owned();
                self.last_event_id = Some(id.clone());
                self.event_id = Some(id);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // Digits only, so the only failure is overflow: saturate.
                let ms = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u64::MAX);
                self.event_retry = Some(ms);
                self.retry = Some(ms);
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let data = std::mem::take(&mut self.data);
        let event = self.event_type.take().filter(|e| !e.is_empty());
        let id = self.event_id.take();
        let retry = self.event_retry.take();
        if std::mem::take(&mut self.data_seen) {
            self.ready.push_back(SseEvent {
                id,
                event,
                data,
                retry,
            });
        }
    }
}

/// Encodes one event, ending with the blank line that dispatches it. Multi-line data becomes
/// several `data:` lines (CRLF, CR and LF all split lines, as a decoder would read them); line
/// breaks in `id` and `event`, which the format cannot carry, are dropped.
pub fn encode_event(event: &SseEvent) -> String {
    let mut out = String::with_capacity(event.data.len() + 32);
    if let Some(id) = &event.id {
        out.push_str("id: ");
        push_single_line(&mut out, id);
        out.push('\n');
    }
    if let Some(name) = &event.event {
        out.push_str("event: ");
        push_single_line(&mut out, name);
        out.push('\n');
    }
    if let Some(retry) = event.retry {
        out.push_str(&format!("retry: {retry}\n"));
    }
    let mut rest = event.data.as_str();
    loop {
        out.push_str("data: ");
        match rest.find(['\r', '\n']) {
            Some(end) => {
                out.push_str(&rest[..end]);
                out.push('\n');
                let skip = if rest[end..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                rest = &rest[end + skip..];
            }
            None => {
                out.push_str(rest);
                out.push('\n');
                break;
            }
        }
    }
    out.push('\n');
    out
}

/// Encodes a comment line (a keep-alive): `: text` and a line break. Line breaks in `text`
/// are dropped.
pub fn encode_comment(text: &str) -> String {
    let mut out = String::from(": ");
    push_single_line(&mut out, text);
    out.push('\n');
    out
}

fn push_single_line(out: &mut String, s: &str) {
    out.extend(s.chars().filter(|&c| c != '\r' && c != '\n'));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_whole(input: &[u8]) -> Vec<SseEvent> {
        let mut d = SseDecoder::default();
        d.push(input).unwrap();
        std::iter::from_fn(|| d.pop()).collect()
    }

    fn decode_bytewise(input: &[u8]) -> Vec<SseEvent> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for b in input {
            d.push(std::slice::from_ref(b)).unwrap();
            out.extend(std::iter::from_fn(|| d.pop()));
        }
        out
    }

    /// Every split of `input` into two chunks, and one byte at a time, decodes alike.
    fn assert_chunking_invariant(input: &[u8]) -> Vec<SseEvent> {
        let whole = decode_whole(input);
        assert_eq!(decode_bytewise(input), whole, "byte by byte");
        for cut in 0..=input.len() {
            let mut d = SseDecoder::default();
            d.push(&input[..cut]).unwrap();
            d.push(&input[cut..]).unwrap();
            let got: Vec<_> = std::iter::from_fn(|| d.pop()).collect();
            assert_eq!(got, whole, "cut at {cut}");
        }
        whole
    }

    #[test]
    fn multi_line_data_ids_and_types() {
        let input = b"id: 1\nevent: message\ndata: {\"a\":\ndata: 1}\n\ndata:second\n\n";
        let events = assert_chunking_invariant(input);
        assert_eq!(
            events,
            vec![
                SseEvent {
                    id: Some("1".into()),
                    event: Some("message".into()),
                    data: "{\"a\":\n1}".into(),
                    retry: None,
                },
                SseEvent::message("second"),
            ]
        );
    }

    #[test]
    fn crlf_cr_and_lf_line_endings() {
        let lf = assert_chunking_invariant(b"data: a\ndata: b\n\n");
        let crlf = assert_chunking_invariant(b"data: a\r\ndata: b\r\n\r\n");
        let cr = assert_chunking_invariant(b"data: a\rdata: b\r\r");
        let mixed = assert_chunking_invariant(b"data: a\r\ndata: b\r\n\n");
        for events in [&lf, &crlf, &cr, &mixed] {
            assert_eq!(events, &vec![SseEvent::message("a\nb")]);
        }
    }

    #[test]
    fn comments_bom_and_fields_without_colon() {
        let input = "\u{FEFF}: keep-alive\n:\ndata\n\ndata:  two spaces\nunknown: x\n\n";
        let events = assert_chunking_invariant(input.as_bytes());
        assert_eq!(
            events,
            vec![SseEvent::message(""), SseEvent::message(" two spaces")]
        );
        // Only a leading BOM is dropped; a near-BOM is content (here an unknown field name).
        assert_eq!(
            decode_whole(b"\xEF\xBBdata: x\n\ndata: y\n\n"),
            vec![SseEvent::message("y")]
        );
    }

    #[test]
    fn retry_and_id_rules() {
        let input = b"retry: 1500\nid: 7\ndata: a\n\nretry: 1.5\nid: x\0y\ndata: b\n\nid: 9\n\n";
        let mut d = SseDecoder::default();
        for b in input {
            d.push(std::slice::from_ref(b)).unwrap();
        }
        let a = d.pop().unwrap();
        assert_eq!((a.id.as_deref(), a.retry), (Some("7"), Some(1500)));
        let b = d.pop().unwrap();
        assert_eq!((b.id, b.retry, b.data.as_str()), (None, None, "b"));
        // An event without data is not dispatched, but its id still counts for resumption.
        assert_eq!(d.pop(), None);
        assert_eq!(d.last_event_id(), Some("9"));
        assert_eq!(d.retry(), Some(1500));
        d.push(b"id\n\n").unwrap();
        assert_eq!(d.last_event_id(), None);
    }

    #[test]
    fn priming_event_with_empty_data_is_dispatched() {
        let events = assert_chunking_invariant(b"id: p-0\nretry: 3000\ndata:\n\n");
        assert_eq!(
            events,
            vec![SseEvent {
                id: Some("p-0".into()),
                event: None,
                data: String::new(),
                retry: Some(3000),
            }]
        );
    }

    #[test]
    fn unterminated_event_is_discarded_and_invalid_utf8_is_replaced() {
        assert_eq!(
            decode_whole(b"data: a\n\ndata: b\n"),
            vec![SseEvent::message("a")]
        );
        assert_eq!(
            decode_whole(b"data: \xFFok\n\n"),
            vec![SseEvent::message("\u{FFFD}ok")]
        );
    }

    #[test]
    fn oversize_event_is_an_error_after_the_events_before_it() {
        let mut d = SseDecoder::new(16);
        d.push(b"data: small\n\n").unwrap();
        let err = d
            .push(b"data: 0123456789\ndata: 0123456789\n\n")
            .unwrap_err();
        assert_eq!(err, SseError::TooLarge { limit: 16 });
        assert_eq!(d.pop(), Some(SseEvent::message("small")));
        assert_eq!(d.pop(), None);
        // Poisoned: no further input is taken.
        assert_eq!(
            d.push(b"data: x\n\n"),
            Err(SseError::TooLarge { limit: 16 })
        );
    }

    #[test]
    fn the_size_limit_falls_at_the_same_byte_however_the_stream_is_cut() {
        // A line read in place (whole in its chunk) and one gathered across chunks are held
        // to the same bound.
        let input = b"data: 0123456789\ndata: 01234\n\ndata: x\n\n";
        for limit in 10..40 {
            let whole = {
                let mut d = SseDecoder::new(limit);
                let result = d.push(input);
                (result, std::iter::from_fn(|| d.pop()).collect::<Vec<_>>())
            };
            for cut in 0..=input.len() {
                let mut d = SseDecoder::new(limit);
                let result = d.push(&input[..cut]).and_then(|()| d.push(&input[cut..]));
                let events: Vec<_> = std::iter::from_fn(|| d.pop()).collect();
                assert_eq!((result, events), whole, "limit {limit}, cut at {cut}");
            }
        }
    }

    #[test]
    fn one_endless_line_is_an_error_even_byte_by_byte() {
        let mut d = SseDecoder::new(64);
        let mut result = Ok(());
        for _ in 0..100 {
            result = d.push(b"x");
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::TooLarge { limit: 64 }));
        // A comment line counts too: it is buffered until its end is seen.
        let mut d = SseDecoder::new(8);
        assert!(d.push(b": a very long keep-alive comment").is_err());
    }

    #[test]
    fn the_bound_counts_field_values_plus_the_line_being_read() {
        // "data: 0123456789" is 16 bytes on the wire: exactly at the limit.
        let mut d = SseDecoder::new(16);
        d.push(b"data: 0123456789\n\n").unwrap();
        assert_eq!(d.pop(), Some(SseEvent::message("0123456789")));
        // 10 bytes of data held plus a 7-byte line: over.
        let mut d = SseDecoder::new(16);
        d.push(b"data: 0123456789\n").unwrap();
        assert!(d.push(b"data: x").is_err());
    }

    #[test]
    fn encoder_round_trips() {
        let events = [
            SseEvent {
                id: Some("42".into()),
                event: Some("message".into()),
                data: "{\"jsonrpc\":\"2.0\"}".into(),
                retry: Some(500),
            },
            SseEvent::message("line one\nline two\r\nline three\rend"),
            SseEvent::message(""),
            SseEvent::message("trailing\n"),
        ];
        let wire: String = events.iter().map(encode_event).collect();
        let decoded = assert_chunking_invariant(wire.as_bytes());
        assert_eq!(decoded[0], events[0]);
        assert_eq!(decoded[1].data, "line one\nline two\nline three\nend");
        assert_eq!(decoded[2], events[2]);
        assert_eq!(decoded[3], events[3]);
        assert_eq!(
            encode_event(&SseEvent::message("a\nb")),
            "data: a\ndata: b\n\n"
        );
        assert_eq!(
            encode_event(&SseEvent {
                id: Some("1\n2".into()),
                ..SseEvent::message("x")
            }),
            "id: 12\ndata: x\n\n"
        );
        assert_eq!(encode_comment("ping"), ": ping\n");
    }
}
