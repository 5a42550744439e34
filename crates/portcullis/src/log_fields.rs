//! Span fields for JSON log lines, written straight into the span's JSON object as recorded.

use std::fmt::Write as _;

use serde_json::Value;

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::{FormatFields, Writer};

/// The span fields of JSON log lines, as tracing-subscriber's `JsonFields` writes them (a JSON
/// object; a `Debug` value as its text), but a field recorded after the span's creation is
/// appended to the object instead of the whole object being parsed and written again.
///
/// The gateway opens one span per MCP request and records its fields as they become known
/// (organization, server and agent once admitted, then the method, the tool and the decision).
/// `JsonFields` re-parsed the span's fields into a map for each record and wrote them out
/// again: about 10 % of the instructions of a proxied call (callgrind, on the gateway
/// benchmark). A field recorded twice appears twice in the object; the JSON event formatter
/// reads it with serde_json, which keeps the last, as `JsonFields` did.
#[derive(Debug, Default)]
pub struct AppendJsonFields;

/// The capacity a span's object has once a field is recorded after its creation.
const OBJECT_CAPACITY: usize = 256;

impl<'writer> FormatFields<'writer> for AppendJsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut object = String::from("{");
        fields.record(&mut Members(&mut object));
        object.push('}');
        writer.write_str(&object)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> std::fmt::Result {
        let object = &mut current.fields;
        // Room for a request span's fields (three ids, the method, the tool, the decision) in
        // one allocation: growing the string field by field was ~1.5 % of a proxied call.
        object.reserve(OBJECT_CAPACITY.saturating_sub(object.len()));
        if object.is_empty() {
            object.push('{');
        } else if object.ends_with('}') {
            object.pop();
        } else {
            // Not an object this formatter wrote: leave it.
            return Ok(());
        }
        fields.record(&mut Members(object));
        object.push('}');
        Ok(())
    }
}

/// Appends `"name":value` members to an object being written (after its `{` and any members).
struct Members<'a>(&'a mut String);

impl Members<'_> {
    /// Writes `,"name":` (no comma after the `{`).
    fn name(&mut self, field: &Field) {
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        if !self.0.ends_with('{') {
            self.0.push(',');
        }
        quoted(self.0, |out| out.write_str(name));
        self.0.push(':');
    }

    fn json(&mut self, field: &Field, value: impl Into<Value>) {
        self.name(field);
        // `Value`'s `Display` is its JSON text.
        let _ = write!(self.0, "{}", value.into());
    }
}

/// Writes a JSON string whose text `write` produces, escaped as it is written (no copy).
fn quoted(out: &mut String, write: impl FnOnce(&mut Escaped<'_>) -> std::fmt::Result) {
    out.push('"');
    let _ = write(&mut Escaped(out));
    out.push('"');
}

/// Escapes what is written to it for the inside of a JSON string.
struct Escaped<'a>(&'a mut String);

impl std::fmt::Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        // Most text (ids, names) needs no escape: one pass without branches tells.
        let plain = !text.bytes().fold(false, |any, b| {
            any | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if plain {
            self.0.push_str(text);
            return Ok(());
        }
        // Runs that need no escape are copied whole.
        let mut start = 0;
        for (i, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..0x20 => "",
                _ => continue,
            };
            self.0.push_str(&text[start..i]);
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.push_str(escape);
            }
            start = i + 1;
        }
        self.0.push_str(&text[start..]);
        Ok(())
    }
}

impl Visit for Members<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.json(field, value)
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.json(field, value)
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.json(field, value)
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.json(field, value)
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.name(field);
        quoted(self.0, |out| out.write_str(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.name(field);
        quoted(self.0, |out| write!(out, "{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn fields_recorded_later_reach_the_log_line_and_the_last_value_wins() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .fmt_fields(AppendJsonFields)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let empty = tracing::info_span!(
                "mcp",
                org = tracing::field::Empty,
                decision = tracing::field::Empty
            );
            empty.in_scope(|| tracing::info!("nothing recorded"));
            let span = tracing::info_span!(
                "mcp",
                server = "s1",
                n = 7,
                ok = true,
                org = tracing::field::Empty,
                tool = tracing::field::Empty,
                decision = tracing::field::Empty
            );
            span.record("org", "o1 \"q\" \\ \n\u{1}é");
            span.record("tool", tracing::field::debug("say \"hi\""));
            span.record("decision", "allow");
            span.record("decision", "deny");
            span.in_scope(|| tracing::info!("decided"));
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let spans: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap()["span"].clone())
            .collect();
        assert_eq!(spans[0], json!({"name": "mcp"}));
        assert_eq!(
            spans[1],
            json!({"name": "mcp", "server": "s1", "n": 7, "ok": true, "org": "o1 \"q\" \\ \n\u{1}é", "tool": "\"say \\\"hi\\\"\"", "decision": "deny"})
        );
    }
}
