//! JSON-RPC 2.0 envelopes as MCP uses them.
//!
//! A proxy must pass messages through faithfully, so parsing keeps the original `id` and
//! `params` as JSON values (an id may be a string or a number and must come back unchanged) and
//! only checks the envelope. Codes follow JSON-RPC 2.0 and the MCP specification.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Standard JSON-RPC error codes.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Implementation-defined server error (used by SDKs for "server not initialized" and
    /// "no valid session").
    pub const SERVER_ERROR: i64 = -32000;
}

/// A request id: a string or an integer (MCP forbids null ids).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Number(i64),
    String(String),
}

/// One JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request(Request),
    Notification(Notification),
    Response(Response),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: RequestId,
    pub method: String,
    pub params: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub method: String,
    pub params: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: Option<RequestId>,
    pub outcome: Result<Value, ErrorObject>,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ErrorObject {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        ErrorObject {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// Why a body is not a JSON-RPC message, with the error to answer it with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("parse error: {0}")]
    NotJson(String),
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl ParseError {
    /// The JSON-RPC error object that answers this.
    pub fn to_error_object(&self) -> ErrorObject {
        match self {
            ParseError::NotJson(m) => {
                ErrorObject::new(code::PARSE_ERROR, format!("Parse error: {m}"))
            }
            ParseError::Invalid(m) => {
                ErrorObject::new(code::INVALID_REQUEST, format!("Invalid Request: {m}"))
            }
        }
    }
}

/// A body: one message, or a batch (an array, only allowed in 2025-03-26).
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Single(Message),
    Batch(Vec<Message>),
}

/// Parses a body of bytes.
pub fn parse_body(bytes: &[u8]) -> Result<Body, ParseError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ParseError::NotJson(e.to_string()))?;
    match value {
        Value::Array(items) if items.is_empty() => Err(ParseError::Invalid("empty batch".into())),
        Value::Array(items) => items
            .into_iter()
            .map(Message::from_value)
            .collect::<Result<_, _>>()
            .map(Body::Batch),
        other => Message::from_value(other).map(Body::Single),
    }
}

impl Message {
    /// Checks the envelope of one message.
    pub fn from_value(value: Value) -> Result<Message, ParseError> {
        let Value::Object(mut obj) = value else {
            return Err(ParseError::Invalid(
                "a message must be a JSON object".into(),
            ));
        };
        match obj.remove("jsonrpc") {
            Some(Value::String(v)) if v == "2.0" => {}
            _ => return Err(ParseError::Invalid("\"jsonrpc\" must be \"2.0\"".into())),
        }
        let id = match obj.remove("id") {
            None => None,
            Some(v) => Some(parse_id(v)?),
        };
        let params = obj.remove("params");
        if let Some(p) = &params
            && !(p.is_object() || p.is_array())
        {
            return Err(ParseError::Invalid(
                "\"params\" must be an object or an array".into(),
            ));
        }
        match obj.remove("method") {
            Some(Value::String(method)) => match id {
                Some(Some(id)) => Ok(Message::Request(Request { id, method, params })),
                Some(None) => Err(ParseError::Invalid("a request id must not be null".into())),
                None => Ok(Message::Notification(Notification { method, params })),
            },
            Some(_) => Err(ParseError::Invalid("\"method\" must be a string".into())),
            None => {
                let id =
                    id.ok_or_else(|| ParseError::Invalid("a response needs an \"id\"".into()))?;
                let outcome = match (obj.remove("result"), obj.remove("error")) {
                    (Some(result), None) => Ok(result),
                    (None, Some(error)) => Err(serde_json::from_value::<ErrorObject>(error)
                        .map_err(|e| ParseError::Invalid(format!("bad error object: {e}")))?),
                    _ => {
                        return Err(ParseError::Invalid(
                            "a response needs exactly one of \"result\" and \"error\"".into(),
                        ));
                    }
                };
                Ok(Message::Response(Response { id, outcome }))
            }
        }
    }

    /// The message as JSON.
    pub fn to_value(&self) -> Value {
        match self {
            Message::Request(r) => r.to_value(),
            Message::Notification(n) => {
                let mut obj = envelope();
                obj.insert("method".into(), Value::from(n.method.clone()));
                if let Some(p) = &n.params {
                    obj.insert("params".into(), p.clone());
                }
                Value::Object(obj)
            }
            Message::Response(r) => {
                let mut obj = envelope();
                obj.insert("id".into(), r.id.as_ref().map_or(Value::Null, id_value));
                match &r.outcome {
                    Ok(result) => obj.insert("result".into(), result.clone()),
                    Err(error) => obj.insert(
                        "error".into(),
                        serde_json::to_value(error).unwrap_or(Value::Null),
                    ),
                };
                Value::Object(obj)
            }
        }
    }

    /// An error response to `id` (None when the request's id could not be read).
    pub fn error(id: Option<RequestId>, error: ErrorObject) -> Message {
        Message::Response(Response {
            id,
            outcome: Err(error),
        })
    }

    /// A result response to `id`.
    pub fn result(id: RequestId, result: Value) -> Message {
        Message::Response(Response {
            id: Some(id),
            outcome: Ok(result),
        })
    }
}

/// A message object with its `"jsonrpc": "2.0"`.
fn envelope() -> Map<String, Value> {
    let mut obj = Map::new();
    obj.insert("jsonrpc".into(), Value::from("2.0"));
    obj
}

fn id_value(id: &RequestId) -> Value {
    match id {
        RequestId::Number(n) => Value::from(*n),
        RequestId::String(s) => Value::from(s.clone()),
    }
}

impl Request {
    /// The request as JSON (what [`Message::to_value`] gives for it, without copying the
    /// request first).
    pub fn to_value(&self) -> Value {
        self.clone().into_value()
    }

    /// [`to_value`](Self::to_value), moving the params instead of copying them.
    pub fn into_value(self) -> Value {
        let mut obj = envelope();
        obj.insert("id".into(), id_value(&self.id));
        obj.insert("method".into(), Value::from(self.method));
        if let Some(p) = self.params {
            obj.insert("params".into(), p);
        }
        Value::Object(obj)
    }
}

/// `Some(None)` for a null id (legal only on error responses).
fn parse_id(v: Value) -> Result<Option<RequestId>, ParseError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(RequestId::String(s))),
        Value::Number(n) => n
            .as_i64()
            .map(|n| Some(RequestId::Number(n)))
            .ok_or_else(|| ParseError::Invalid("a numeric id must be an integer".into())),
        _ => Err(ParseError::Invalid(
            "\"id\" must be a string or an integer".into(),
        )),
    }
}

/// How a message answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Result,
    Error,
}

/// Whether the JSON text `data` is an object whose `id` equals `id` and that has a `result` or
/// an `error` member (an `error` wins), as `serde_json::from_str::<Value>` followed by `get`
/// would say (the last of duplicate members counts), without building the message: a relay
/// asks this of every event it passes on, and an answer's result can be large.
///
/// One difference: the values of other members (`result` and `error` included) are checked for
/// JSON syntax but not built, so an answer holding what serde_json refuses to build (a lone
/// UTF-16 surrogate escape, a number beyond `f64`, nesting deeper than 128) still counts as the
/// answer. A relay passes it on as the upstream sent it and ends the client's stream, where
/// failing to read it would leave the request unanswered.
pub fn answers(data: &str, id: &Value) -> Option<Answered> {
    use serde::de::{self, IgnoredAny, MapAccess, Visitor};

    #[derive(Deserialize)]
    #[serde(field_identifier, rename_all = "lowercase")]
    enum Member {
        Id,
        Result,
        Error,
        #[serde(other)]
        Other,
    }
    /// The members that matter; anything but an object is not a message.
    struct Shape {
        id: Option<Value>,
        result: bool,
        error: bool,
    }
    impl<'de> Deserialize<'de> for Shape {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Members;
            impl<'de> Visitor<'de> for Members {
                type Value = Shape;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON-RPC message")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                    let mut shape = Shape {
                        id: None,
                        result: false,
                        error: false,
                    };
                    while let Some(member) = map.next_key::<Member>()? {
                        match member {
                            Member::Id => shape.id = Some(map.next_value()?),
                            other => {
                                map.next_value::<IgnoredAny>()?;
                                shape.result |= matches!(other, Member::Result);
                                shape.error |= matches!(other, Member::Error);
                            }
                        }
                    }
                    Ok(shape)
                }
            }
            d.deserialize_map(Members)
        }
    }
    let shape = serde_json::from_str::<Shape>(data).ok()?;
    if shape.id.as_ref() != Some(id) {
        return None;
    }
    match (shape.result, shape.error) {
        (_, true) => Some(Answered::Error),
        (true, false) => Some(Answered::Result),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Body, ParseError> {
        parse_body(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn request_notification_response() {
        let Body::Single(Message::Request(r)) =
            parse(json!({"jsonrpc":"2.0","id":"a-1","method":"tools/list","params":{}})).unwrap()
        else {
            panic!("not a request")
        };
        assert_eq!(r.id, RequestId::String("a-1".into()));
        assert_eq!(r.method, "tools/list");

        assert!(matches!(
            parse(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).unwrap(),
            Body::Single(Message::Notification(_))
        ));
        let Body::Single(Message::Response(r)) =
            parse(json!({"jsonrpc":"2.0","id":7,"error":{"code":-32601,"message":"nope"}}))
                .unwrap()
        else {
            panic!("not a response")
        };
        assert_eq!(r.outcome.unwrap_err().code, code::METHOD_NOT_FOUND);
    }

    #[test]
    fn ids_survive_a_round_trip() {
        for id in [
            json!(0),
            json!(-5),
            json!(9007199254740993_i64),
            json!("x"),
            json!(""),
        ] {
            let v = json!({"jsonrpc":"2.0","id":id,"method":"ping"});
            let Body::Single(m) = parse(v.clone()).unwrap() else {
                panic!()
            };
            assert_eq!(m.to_value(), v);
            let Message::Request(r) = m else { panic!() };
            assert_eq!(r.into_value(), v);
        }
        let v = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}});
        let Body::Single(Message::Request(r)) = parse(v.clone()).unwrap() else {
            panic!()
        };
        assert_eq!(r.to_value(), v);
        assert_eq!(r.into_value(), v);
    }

    #[test]
    fn rejects_what_is_not_json_rpc() {
        assert!(matches!(
            parse_body(b"not json"),
            Err(ParseError::NotJson(_))
        ));
        for bad in [
            json!(42),
            json!({"id":1,"method":"x"}),
            json!({"jsonrpc":"1.0","id":1,"method":"x"}),
            json!({"jsonrpc":"2.0","id":null,"method":"x"}),
            json!({"jsonrpc":"2.0","id":1.5,"method":"x"}),
            json!({"jsonrpc":"2.0","id":{},"method":"x"}),
            json!({"jsonrpc":"2.0","id":1,"method":3}),
            json!({"jsonrpc":"2.0","id":1,"method":"x","params":"s"}),
            json!({"jsonrpc":"2.0","id":1}),
            json!({"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":""}}),
            json!([]),
        ] {
            let err = parse(bad.clone()).expect_err(&bad.to_string());
            assert_eq!(err.to_error_object().code, code::INVALID_REQUEST, "{bad}");
        }
        assert_eq!(
            parse_body(b"{").unwrap_err().to_error_object().code,
            code::PARSE_ERROR
        );
    }

    #[test]
    fn answers_reads_what_a_parsed_message_would_say() {
        let id = json!(7);
        for (data, want) in [
            (
                r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#,
                Some(Answered::Result),
            ),
            (
                r#"{"jsonrpc":"2.0","id":7,"result":null}"#,
                Some(Answered::Result),
            ),
            (
                r#"{"id":7,"error":{"code":1,"message":"no"}}"#,
                Some(Answered::Error),
            ),
            (r#"{"id":7,"result":1,"error":{}}"#, Some(Answered::Error)),
            // Another request's answer, a string id, a null id, no id.
            (r#"{"jsonrpc":"2.0","id":8,"result":{}}"#, None),
            (r#"{"jsonrpc":"2.0","id":"7","result":{}}"#, None),
            (r#"{"jsonrpc":"2.0","id":null,"result":{}}"#, None),
            (r#"{"jsonrpc":"2.0","result":{}}"#, None),
            // A notification, not JSON, not an object, trailing bytes.
            (
                r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"id":7}}"#,
                None,
            ),
            ("not json", None),
            (r#"[7, {}, {}]"#, None),
            (r#"{"id":7,"result":{}} x"#, None),
            // The last of duplicate members counts, as in a parsed object.
            (r#"{"id":8,"id":7,"result":{}}"#, Some(Answered::Result)),
            (r#"{"id":7,"id":8,"result":{}}"#, None),
            // Escaped member names are still names.
            (r#"{"\u0069d":7,"r\u0065sult":"x"}"#, Some(Answered::Result)),
        ] {
            assert_eq!(answers(data, &id), want, "{data}");
            let parsed = serde_json::from_str::<Value>(data).ok().filter(|m| {
                m.get("id") == Some(&id) && (m.get("result").is_some() || m.get("error").is_some())
            });
            assert_eq!(parsed.is_some(), want.is_some(), "{data}");
        }
        assert_eq!(
            answers(r#"{"id":"a-1","result":{}}"#, &json!("a-1")),
            Some(Answered::Result)
        );
        // What serde_json would not build, inside an answer, still makes it the answer (see the
        // doc comment); broken syntax does not.
        let deep = format!(
            r#"{{"id":7,"result":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for data in [
            r#"{"id":7,"result":"\ud800"}"#,
            r#"{"id":7,"result":1e400}"#,
            deep.as_str(),
        ] {
            assert!(serde_json::from_str::<Value>(data).is_err(), "{data}");
            assert_eq!(answers(data, &id), Some(Answered::Result), "{data}");
        }
        assert_eq!(
            answers(r#"{"id":7,"error":{"message":"\udc00"}}"#, &id),
            Some(Answered::Error)
        );
        assert_eq!(answers(r#"{"id":7,"result":[1,}"#, &id), None);
    }

    #[test]
    fn batches_parse_as_batches() {
        let body = parse(json!([
            {"jsonrpc":"2.0","id":1,"method":"ping"},
            {"jsonrpc":"2.0","method":"notifications/initialized"}
        ]))
        .unwrap();
        assert!(matches!(body, Body::Batch(ref items) if items.len() == 2));
    }
}
