//! The stateless revision (2026-07-28) on the wire: the per-request `_meta` envelope and the
//! headers that mirror the body, shared by the gateway's client side (checking them) and its
//! upstream side (stamping them).

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// The stateless revision.
pub const VERSION: &str = "2026-07-28";
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
pub const META_SUBSCRIPTION: &str = "io.modelcontextprotocol/subscriptionId";
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
/// The prefix of the revision's own `_meta` keys.
pub const META_PREFIX: &str = "io.modelcontextprotocol/";

const BASE64_PREFIX: &str = "=?base64?";
const BASE64_SUFFIX: &str = "?=";

/// The body field `Mcp-Name` mirrors for `method`.
pub fn name_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        _ => None,
    }
}

/// A header value with the `=?base64?…?=` encoding undone (`None` when it is not Base64 of
/// UTF-8).
pub fn decode_header_value(raw: &str) -> Option<String> {
    match raw
        .strip_prefix(BASE64_PREFIX)
        .and_then(|r| r.strip_suffix(BASE64_SUFFIX))
    {
        Some(inner) => base64::engine::general_purpose::STANDARD
            .decode(inner)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(raw.to_owned()),
    }
}

/// `value` as a header value: as it is when it is plain visible ASCII, else Base64-wrapped.
pub fn encode_header_value(value: &str) -> String {
    let visible = value.bytes().all(|b| (0x20..0x7f).contains(&b));
    let padded = value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']);
    let looks_encoded = value.starts_with(BASE64_PREFIX) && value.ends_with(BASE64_SUFFIX);
    if value.is_empty() || (visible && !padded && !looks_encoded) {
        value.to_owned()
    } else {
        format!(
            "{BASE64_PREFIX}{}{BASE64_SUFFIX}",
            base64::engine::general_purpose::STANDARD.encode(value)
        )
    }
}

/// An argument's value as a header carries it (strings, numbers, booleans; nothing else).
pub fn primitive_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The value at `path` (property names) in `arguments`.
pub fn argument_at<'a>(arguments: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut value = Some(arguments);
    for key in path {
        value = value.and_then(|v| v.get(key));
    }
    value.filter(|v| !v.is_null())
}

/// Puts the envelope into `request.params._meta` (creating `params` if needed), keeping any
/// key the request already has (a stateless client's own envelope wins).
pub fn stamp_envelope(request: &mut Value, capabilities: &Value, client_info: &Value) {
    let Some(object) = request.as_object_mut() else {
        return;
    };
    let params = object
        .entry("params")
        .or_insert_with(|| Value::Object(Map::new()));
    if !params.is_object() {
        *params = Value::Object(Map::new());
    }
    let Some(meta) = params
        .as_object_mut()
        .map(|p| p.entry("_meta").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    meta.entry(META_VERSION)
        .or_insert_with(|| Value::from(VERSION));
    meta.entry(META_CAPABILITIES)
        .or_insert_with(|| capabilities.clone());
    meta.entry(META_CLIENT_INFO)
        .or_insert_with(|| client_info.clone());
}

/// The headers mirroring `request` (besides `MCP-Protocol-Version`, which the transport sets):
/// `Mcp-Method`, `Mcp-Name` where the method has one, and `Mcp-Param-{Name}` for each argument
/// of `tools/call` that `param_headers` (the tool's `x-mcp-header` annotations) names.
pub fn mirror_headers(
    request: &Value,
    param_headers: &[(Vec<String>, String)],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return out;
    };
    out.push(("Mcp-Method".to_owned(), encode_header_value(method)));
    let params = request.get("params");
    if let Some(field) = name_field(method)
        && let Some(name) = params.and_then(|p| p.get(field)).and_then(Value::as_str)
    {
        out.push(("Mcp-Name".to_owned(), encode_header_value(name)));
    }
    if method == "tools/call"
        && let Some(arguments) = params.and_then(|p| p.get("arguments"))
    {
        for (path, header) in param_headers {
            if let Some(text) = argument_at(arguments, path).and_then(primitive_text) {
                out.push((format!("Mcp-Param-{header}"), encode_header_value(&text)));
            }
        }
    }
    out
}

/// A handshake-era `InitializeResult` built from a `DiscoverResult` (for `protocol_version`).
pub fn initialize_result_from_discover(discover: &Value, protocol_version: &str) -> Value {
    let mut result = json!({
        "protocolVersion": protocol_version,
        "capabilities": discover.get("capabilities").cloned().unwrap_or_else(|| json!({})),
        "serverInfo": discover
            .pointer(&format!("/_meta/{}", META_SERVER_INFO.replace('/', "~1")))
            .cloned()
            .unwrap_or_else(|| json!({"name": "unknown", "version": "0"})),
    });
    if let Some(instructions) = discover.get("instructions") {
        result["instructions"] = instructions.clone();
    }
    result
}

/// Removes what a handshake-era client does not know from a result: `resultType`, `ttlMs`,
/// `cacheScope`.
pub fn strip_for_handshake(message: &mut Value) {
    if let Some(result) = message.get_mut("result").and_then(Value::as_object_mut) {
        result.remove("resultType");
        result.remove("ttlMs");
        result.remove("cacheScope");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_round_trip() {
        for value in [
            "plain",
            "with space",
            " leading",
            "trailing\t",
            "ünïcode",
            "=?base64?x?=",
        ] {
            let encoded = encode_header_value(value);
            assert!(encoded.is_ascii(), "{encoded}");
            assert_eq!(decode_header_value(&encoded).as_deref(), Some(value));
        }
        assert_eq!(encode_header_value("eu-west"), "eu-west");
    }

    #[test]
    fn stamps_the_envelope_and_mirrors_the_body() {
        let mut request = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "deploy", "arguments": {"region": "eu", "n": 3, "o": {"x": true}}}});
        stamp_envelope(
            &mut request,
            &json!({"sampling": {}}),
            &json!({"name": "c", "version": "1"}),
        );
        assert_eq!(request["params"]["_meta"][META_VERSION], VERSION);
        assert_eq!(
            request["params"]["_meta"][META_CAPABILITIES],
            json!({"sampling": {}})
        );
        let annotated = vec![
            (vec!["region".to_owned()], "Region".to_owned()),
            (vec!["o".to_owned(), "x".to_owned()], "X".to_owned()),
            (vec!["missing".to_owned()], "Missing".to_owned()),
        ];
        let headers = mirror_headers(&request, &annotated);
        assert_eq!(
            headers,
            vec![
                ("Mcp-Method".to_owned(), "tools/call".to_owned()),
                ("Mcp-Name".to_owned(), "deploy".to_owned()),
                ("Mcp-Param-Region".to_owned(), "eu".to_owned()),
                ("Mcp-Param-X".to_owned(), "true".to_owned()),
            ]
        );
    }

    #[test]
    fn discover_becomes_an_initialize_result() {
        let discover = json!({"resultType": "complete", "supportedVersions": [VERSION],
            "capabilities": {"tools": {}}, "instructions": "be nice",
            "_meta": {META_SERVER_INFO: {"name": "s", "version": "2"}}});
        assert_eq!(
            initialize_result_from_discover(&discover, "2025-11-25"),
            json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                   "serverInfo": {"name": "s", "version": "2"}, "instructions": "be nice"})
        );
    }
}
