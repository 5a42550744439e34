//! The compiled policy: the original document plus everything evaluation needs, precomputed.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::ValidationErrors;
use crate::condition::{Condition, Path};
use crate::eval::Scope;
use crate::glob::GlobIndex;

/// `default`: the decision for a tool that has no entry in `tools` and is not hidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DefaultAction {
    /// `"allow"`.
    Allow,
    /// `"deny"`, with the reason "denied by default policy".
    Deny,
}

/// `changed_tools`: what happens to a tool whose definition differs from the reviewed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChangedTools {
    /// `"hide"` (the default): not listed, calls denied as "tool not available".
    #[default]
    Hide,
    /// `"deny"`: listed, but every call is denied.
    Deny,
    /// `"allow"`: treated like any other tool.
    Allow,
}

/// A validated, compiled policy document. Cheap to share (`Send + Sync`); evaluation does not
/// allocate except for the [`Decision`](crate::Decision) it returns.
///
/// ```
/// use portcullis_policy::{Call, Decision, Policy};
///
/// let policy = Policy::parse(r#"{"version":"1","default":"deny","hide":["delete_image_set"]}"#)?;
/// let arguments = serde_json::json!({});
/// let decision = policy.evaluate(&Call { tool: "delete_image_set", arguments: &arguments, changed: false });
/// assert_eq!(decision, Decision::Hidden { rule: "/hide/0".into() });
/// assert_eq!(decision.agent_text().as_deref(), Some("[POLICY DENIED] tool not available"));
/// # Ok::<(), portcullis_policy::ValidationErrors>(())
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) document: Value,
    pub(crate) default: DefaultAction,
    pub(crate) changed_tools: ChangedTools,
    pub(crate) hide: HideList,
    pub(crate) all_tools_limits: Vec<Limit>,
    pub(crate) rules: RuleTable,
}

impl Policy {
    /// Parses and validates a policy document. Malformed JSON (including a key repeated in one
    /// object) is one problem at path `""`; otherwise every problem of the document is returned.
    pub fn parse(json: &str) -> Result<Self, ValidationErrors> {
        let document = crate::document::parse_json(json)?;
        crate::document::compile(document)
    }

    /// Validates an already-parsed document (which is copied into the policy).
    pub fn from_value(document: &Value) -> Result<Self, ValidationErrors> {
        crate::document::compile(document.clone())
    }

    /// The document exactly as given.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// `default`.
    pub fn default(&self) -> DefaultAction {
        self.default
    }

    /// `changed_tools` (`Hide` when absent).
    pub fn changed_tools(&self) -> ChangedTools {
        self.changed_tools
    }

    /// The pointer of the `tools` entry that governs `tool` (`/tools/admin_*`), if any: the exact
    /// name, else the glob with most literal characters, else the first such glob in the document.
    /// Ignores `hide` and `changed_tools`.
    pub fn rule_for(&self, tool: &str) -> Option<&str> {
        self.rules.find(tool).map(|rule| rule.pointer.as_str())
    }
}

impl FromStr for Policy {
    type Err = ValidationErrors;

    fn from_str(json: &str) -> Result<Self, Self::Err> {
        Self::parse(json)
    }
}

impl TryFrom<Value> for Policy {
    type Error = ValidationErrors;

    fn try_from(document: Value) -> Result<Self, Self::Error> {
        crate::document::compile(document)
    }
}

/// Serializes as the original document.
impl Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.document.serialize(serializer)
    }
}

/// `hide`: exact names by hash, globs ranked in document order.
#[derive(Debug, Clone, Default)]
pub(crate) struct HideList {
    /// Name → index of its first occurrence in `hide`.
    pub(crate) exact: HashMap<Box<str>, usize>,
    /// The globs, ranked in document order.
    pub(crate) globs: GlobIndex,
    /// Rank in `globs` → index in `hide`.
    pub(crate) glob_entries: Vec<usize>,
    /// `/hide/{i}` for every entry.
    pub(crate) pointers: Vec<String>,
}

impl HideList {
    /// The index of the first `hide` entry matching `tool`.
    pub(crate) fn find(&self, tool: &str) -> Option<usize> {
        let exact = self.exact.get(tool).copied();
        let glob = self
            .globs
            .find(tool)
            .and_then(|rank| self.glob_entries.get(rank).copied());
        match (exact, glob) {
            (Some(e), Some(g)) => Some(e.min(g)),
            (e, g) => e.or(g),
        }
    }
}

/// `tools`: exact names by hash, globs ranked by precedence.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleTable {
    pub(crate) rules: Vec<Rule>,
    /// Exact name → index into `rules`.
    pub(crate) exact: HashMap<Box<str>, usize>,
    /// The glob rules, most literal characters first, then in document order.
    pub(crate) globs: GlobIndex,
    /// Rank in `globs` → index into `rules`.
    pub(crate) glob_rules: Vec<usize>,
}

impl RuleTable {
    pub(crate) fn find(&self, tool: &str) -> Option<&Rule> {
        let index = match self.exact.get(tool) {
            Some(index) => *index,
            None => *self.glob_rules.get(self.globs.find(tool)?)?,
        };
        self.rules.get(index)
    }
}

/// `action` of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Allow,
    Deny,
    RequireApproval,
}

/// One entry of `tools`, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    /// `/tools/{key}`.
    pub(crate) pointer: String,
    pub(crate) action: Action,
    /// `reason` or `on_deny`.
    pub(crate) reason: Option<String>,
    /// `require[]`, each with its pointer.
    pub(crate) require: Vec<(Condition, String)>,
    pub(crate) deny_if: Vec<Entry>,
    pub(crate) approve_if: Vec<Entry>,
    /// `rate_limit` then `limits[]`.
    pub(crate) limits: Vec<Limit>,
    /// `approval.timeout`, or the default.
    pub(crate) approval_timeout: Duration,
}

impl Rule {
    /// `/tools/{key}/action`.
    pub(crate) fn action_pointer(&self) -> String {
        format!("{}/action", self.pointer)
    }
}

/// A `deny_if` or `approve_if` entry: all conditions must hold.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) pointer: String,
    pub(crate) conditions: Vec<Condition>,
    /// `on_deny` (deny_if) or `reason` (approve_if).
    pub(crate) reason: Option<String>,
}

/// A limit, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Limit {
    pub(crate) pointer: String,
    pub(crate) counter: String,
    pub(crate) max: u64,
    pub(crate) window: Duration,
    pub(crate) scope: Scope,
    pub(crate) increment_from: Option<Path>,
}
