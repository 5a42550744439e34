//! The Portcullis policy language (see `../shared/design/POLICY.md`): parse and validate a
//! document, evaluate a call to a decision, and classify MCP tools by risk.
//!
//! Pure: no IO, no async. The gateway, the console and the CLI all call into this crate.
//!
//! - [`Policy::parse`] / [`Policy::from_value`] validate a document and report every problem
//!   with a JSON pointer ([`ValidationErrors`]).
//! - [`Policy::is_hidden`] filters `tools/list`; [`Policy::evaluate`] decides a `tools/call`.
//!   The decision carries the limits to reserve and the approval to wait for; the caller owns
//!   counters and people.
//!
//! The crate README records the decisions the spec leaves open.

pub mod classify;
mod condition;
mod document;
mod error;
mod eval;
mod glob;
mod policy;
mod window;

pub use condition::{MAX_REGEX_LEN, MAX_REGEXES};
pub use document::DEFAULT_ALL_TOOLS_COUNTER;
pub use error::{Problem, ValidationErrors};
pub use eval::{
    ACTION_DENY_REASON, ApprovalRequest, CHANGED_REASON, Call, DEFAULT_DENY_REASON, DENY_IF_REASON,
    Decision, DecisionKind, HIDDEN_REASON, LimitRequest, Scope,
};
pub use policy::{ChangedTools, DefaultAction, Policy};
pub use window::{
    DEFAULT_APPROVAL_TIMEOUT, MAX_APPROVAL_TIMEOUT, MAX_WINDOW, MIN_WINDOW, format_duration,
    format_window,
};

use serde_json::Value;

/// A JSON value for a problem message: numbers and booleans as written, strings quoted and
/// shortened, other values by their type.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => describe_str(s),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// A string for a message: quoted, escaped, at most 64 characters.
pub(crate) fn describe_str(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        None => format!("{s:?}"),
        Some((end, _)) => format!("{:?}…", &s[..end]),
    }
}
