//! Parsing and validation: JSON text → [`Policy`], collecting every problem with its pointer.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::condition::{Condition, Operator, Path, Regexes};
use crate::eval::Scope;
use crate::glob::{self, Glob, GlobIndex};
use crate::policy::{
    Action, ChangedTools, DefaultAction, Entry, HideList, Limit, Policy, Rule, RuleTable,
};
use crate::window::{self, DEFAULT_APPROVAL_TIMEOUT, MAX_APPROVAL_TIMEOUT, MAX_WINDOW, MIN_WINDOW};
use crate::{Problem, ValidationErrors, describe};

const TOP_FIELDS: &[&str] = &[
    "version",
    "default",
    "hide",
    "changed_tools",
    "all_tools",
    "tools",
];
const ALL_TOOLS_FIELDS: &[&str] = &["limits"];
const RULE_FIELDS: &[&str] = &[
    "action",
    "reason",
    "on_deny",
    "rate_limit",
    "limits",
    "require",
    "deny_if",
    "approve_if",
    "approval",
];
const RATE_LIMIT_FIELDS: &[&str] = &["max", "window", "scope"];
const LIMIT_FIELDS: &[&str] = &["counter", "max", "window", "scope", "increment_from"];
const CONDITION_FIELDS: &[&str] = &["path", "op", "value"];
const DENY_IF_FIELDS: &[&str] = &["conditions", "on_deny", "reason"];
const APPROVE_IF_FIELDS: &[&str] = &["conditions", "reason"];
const APPROVAL_FIELDS: &[&str] = &["timeout"];

/// The counter of an `all_tools` limit without `counter`.
pub const DEFAULT_ALL_TOOLS_COUNTER: &str = "calls";

/// Parses JSON text, rejecting a key repeated within one object (serde_json would silently keep
/// the last one, which makes a policy mean something other than what a reviewer read).
pub(crate) fn parse_json(json: &str) -> Result<Value, ValidationErrors> {
    serde_json::from_str::<Strict>(json)
        .map(|Strict(value)| value)
        .map_err(|e| ValidationErrors {
            problems: vec![Problem::new("", e.to_string())],
        })
}

/// Validates and compiles a document.
pub(crate) fn compile(document: Value) -> Result<Policy, ValidationErrors> {
    let mut v = Validator::default();
    let parts = v.document(&document);
    if let Some(parts) = parts
        && v.problems.is_empty()
    {
        return Ok(Policy {
            document,
            default: parts.default,
            changed_tools: parts.changed_tools,
            hide: parts.hide,
            all_tools_limits: parts.all_tools_limits,
            rules: parts.rules,
        });
    }
    // Every path that yields no parts reports why; never return an empty list regardless.
    debug_assert!(!v.problems.is_empty());
    if v.problems.is_empty() {
        v.problems.push(Problem::new("", "invalid policy"));
    }
    Err(ValidationErrors {
        problems: sort_in_document_order(&document, v.problems),
    })
}

/// Escapes one reference token (RFC 6901): `~` → `~0`, `/` → `~1`.
pub(crate) fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Sorts problems into document order: by the position of what each points at, as member and
/// item indexes from the root. A member that is absent (a missing required field) sorts after
/// the members of its object. Member positions are indexed once per object involved, so this is
/// linear in the size of those objects plus the problems' pointers.
fn sort_in_document_order(document: &Value, problems: Vec<Problem>) -> Vec<Problem> {
    let mut positions: HashMap<*const Map<String, Value>, HashMap<&str, usize>> = HashMap::new();
    let mut keyed: Vec<(Vec<usize>, Problem)> = problems
        .into_iter()
        .map(|problem| {
            let mut order = Vec::new();
            let mut current = Some(document);
            for token in problem.path.split('/').skip(1) {
                let token = token.replace("~1", "/").replace("~0", "~");
                let (position, next) = match current {
                    Some(Value::Object(map)) => {
                        let index = positions.entry(std::ptr::from_ref(map)).or_insert_with(|| {
                            map.keys()
                                .enumerate()
                                .map(|(i, k)| (k.as_str(), i))
                                .collect()
                        });
                        match index.get(token.as_str()) {
                            Some(&i) => (i, map.get(&token)),
                            None => (map.len(), None),
                        }
                    }
                    Some(Value::Array(items)) => match token.parse::<usize>() {
                        Ok(i) => (i, items.get(i)),
                        Err(_) => (items.len(), None),
                    },
                    _ => (usize::MAX, None),
                };
                order.push(position);
                current = next;
            }
            (order, problem)
        })
        .collect();
    // Stable: problems at one place keep the order they were found in.
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().map(|(_, problem)| problem).collect()
}

fn child(parent: &str, token: &str) -> String {
    format!("{parent}/{}", escape(token))
}

fn item(parent: &str, index: usize) -> String {
    format!("{parent}/{index}")
}

/// Everything of a [`Policy`] but the document.
struct Parts {
    default: DefaultAction,
    changed_tools: ChangedTools,
    hide: HideList,
    all_tools_limits: Vec<Limit>,
    rules: RuleTable,
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    regexes: Regexes,
}

impl Validator {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    /// Runs `f` and returns its value only if it reported no problem.
    fn checked<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        let before = self.problems.len();
        let value = f(self);
        value.filter(|_| self.problems.len() == before)
    }

    /// An object with only `allowed` members; reports wrong type and unknown fields.
    fn object<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        what: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = value else {
            self.problem(
                path,
                format!("{what} must be an object, got {}", describe(value)),
            );
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                self.problem(
                    child(path, key),
                    format!(
                        "unknown field {}; allowed fields are {}",
                        crate::describe_str(key),
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(map)
    }

    fn required<'v>(
        &mut self,
        map: &'v Map<String, Value>,
        path: &str,
        field: &str,
    ) -> Option<&'v Value> {
        let value = map.get(field);
        if value.is_none() {
            self.problem(child(path, field), format!("`{field}` is required"));
        }
        value
    }

    fn string<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v str> {
        match value {
            Value::String(s) => Some(s),
            other => {
                self.problem(path, format!("must be a string, got {}", describe(other)));
                None
            }
        }
    }

    fn array<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v [Value]> {
        match value {
            Value::Array(items) => Some(items),
            other => {
                self.problem(path, format!("must be an array, got {}", describe(other)));
                None
            }
        }
    }

    /// A string that is one of `choices`.
    fn choice<'c>(&mut self, value: &Value, path: &str, choices: &[&'c str]) -> Option<&'c str> {
        if let Value::String(s) = value
            && let Some(found) = choices.iter().copied().find(|c| c == s)
        {
            return Some(found);
        }
        let expected = choices
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        self.problem(
            path,
            format!("must be one of {expected}, got {}", describe(value)),
        );
        None
    }

    /// Human text shown to agents or approvers: a non-blank string.
    fn text(&mut self, value: &Value, path: &str) -> Option<String> {
        let s = self.string(value, path)?;
        if s.trim().is_empty() {
            self.problem(path, "must not be empty");
            return None;
        }
        Some(s.to_owned())
    }

    /// `reason`, or its synonym `on_deny` (not both).
    fn reason(&mut self, map: &Map<String, Value>, pointer: &str) -> Option<String> {
        match (map.get("reason"), map.get("on_deny")) {
            (Some(_), Some(_)) => {
                self.problem(
                    child(pointer, "on_deny"),
                    "`on_deny` is a synonym of `reason`; give only one of them",
                );
                None
            }
            (Some(value), None) => self.text(value, &child(pointer, "reason")),
            (None, Some(value)) => self.text(value, &child(pointer, "on_deny")),
            (None, None) => None,
        }
    }

    fn document(&mut self, document: &Value) -> Option<Parts> {
        let map = self.object(document, "", "a policy", TOP_FIELDS)?;

        if let Some(version) = self.required(map, "", "version")
            && version != "1"
        {
            self.problem(
                "/version",
                format!("must be the string \"1\", got {}", describe(version)),
            );
        }
        let default = self.required(map, "", "default").and_then(|value| {
            match self.choice(value, "/default", &["allow", "deny"])? {
                "allow" => Some(DefaultAction::Allow),
                _ => Some(DefaultAction::Deny),
            }
        });
        let hide = map.get("hide").map(|value| self.hide(value));
        let changed_tools = map.get("changed_tools").and_then(|value| {
            match self.choice(value, "/changed_tools", &["hide", "deny", "allow"])? {
                "hide" => Some(ChangedTools::Hide),
                "deny" => Some(ChangedTools::Deny),
                _ => Some(ChangedTools::Allow),
            }
        });
        let all_tools_limits = map
            .get("all_tools")
            .and_then(|value| self.all_tools(value))
            .unwrap_or_default();
        let rules = map
            .get("tools")
            .and_then(|value| self.tools(value))
            .unwrap_or_default();

        Some(Parts {
            default: default?,
            changed_tools: changed_tools.unwrap_or_default(),
            hide: hide.unwrap_or_default(),
            all_tools_limits,
            rules,
        })
    }

    fn hide(&mut self, value: &Value) -> HideList {
        let mut hide = HideList::default();
        let Some(items) = self.array(value, "/hide") else {
            return hide;
        };
        let mut globs = Vec::new();
        for (index, entry) in items.iter().enumerate() {
            let path = item("/hide", index);
            hide.pointers.push(path.clone());
            let Some(name) = self.string(entry, &path) else {
                continue;
            };
            if let Err(message) = glob::validate(name) {
                self.problem(path, message);
            } else if glob::is_glob(name) {
                globs.push(Glob::new(name));
                hide.glob_entries.push(index);
            } else {
                hide.exact.entry(name.into()).or_insert(index);
            }
        }
        hide.globs = GlobIndex::new(globs);
        hide
    }

    fn all_tools(&mut self, value: &Value) -> Option<Vec<Limit>> {
        let map = self.object(value, "/all_tools", "`all_tools`", ALL_TOOLS_FIELDS)?;
        let limits = map.get("limits")?;
        Some(self.limits(limits, "/all_tools/limits", DEFAULT_ALL_TOOLS_COUNTER))
    }

    fn tools(&mut self, value: &Value) -> Option<RuleTable> {
        let Value::Object(map) = value else {
            self.problem(
                "/tools",
                format!(
                    "`tools` must be an object of tool names to rules, got {}",
                    describe(value)
                ),
            );
            return None;
        };
        let mut table = RuleTable::default();
        let mut globs = Vec::new();
        for (key, rule) in map {
            let path = child("/tools", key);
            if let Err(message) = glob::validate(key) {
                self.problem(path.clone(), message);
            }
            let Some(rule) = self.rule(key, rule, path) else {
                continue;
            };
            let index = table.rules.len();
            table.rules.push(rule);
            if glob::is_glob(key) {
                globs.push((Glob::new(key), index));
            } else {
                table.exact.insert(key.as_str().into(), index);
            }
        }
        // Stable: ties keep document order.
        globs.sort_by_key(|(glob, _): &(Glob, usize)| std::cmp::Reverse(glob.literal_chars()));
        let (globs, rules) = globs.into_iter().unzip();
        table.globs = GlobIndex::new(globs);
        table.glob_rules = rules;
        Some(table)
    }

    fn rule(&mut self, key: &str, value: &Value, pointer: String) -> Option<Rule> {
        let map = self.object(value, &pointer, "a tool rule", RULE_FIELDS)?;
        let action = match map.get("action") {
            None => Some(Action::Allow),
            Some(value) => match self.choice(
                value,
                &child(&pointer, "action"),
                &["allow", "deny", "require_approval"],
            ) {
                Some("allow") => Some(Action::Allow),
                Some("deny") => Some(Action::Deny),
                Some(_) => Some(Action::RequireApproval),
                None => None,
            },
        };
        let reason = self.reason(map, &pointer);
        let mut limits = Vec::new();
        if let Some(value) = map.get("rate_limit") {
            let path = child(&pointer, "rate_limit");
            if let Some(limit) = self.limit(value, path, RATE_LIMIT_FIELDS, key) {
                limits.push(limit);
            }
        }
        if let Some(value) = map.get("limits") {
            limits.extend(self.limits(value, &child(&pointer, "limits"), key));
        }
        let require = map
            .get("require")
            .map(|value| {
                let path = child(&pointer, "require");
                let items = self.array(value, &path).unwrap_or_default();
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| {
                        let path = item(&path, i);
                        self.condition(c, &path).map(|c| (c, path))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let deny_if = map
            .get("deny_if")
            .map(|value| self.entries(value, &child(&pointer, "deny_if"), DENY_IF_FIELDS))
            .unwrap_or_default();
        let approve_if = map
            .get("approve_if")
            .map(|value| self.entries(value, &child(&pointer, "approve_if"), APPROVE_IF_FIELDS))
            .unwrap_or_default();
        let approval_timeout = match map.get("approval") {
            None => Some(DEFAULT_APPROVAL_TIMEOUT),
            Some(value) => self.approval(value, &child(&pointer, "approval")),
        };
        Some(Rule {
            pointer,
            action: action?,
            reason,
            require,
            deny_if,
            approve_if,
            limits,
            approval_timeout: approval_timeout?,
        })
    }

    fn approval(&mut self, value: &Value, path: &str) -> Option<Duration> {
        let map = self.object(value, path, "`approval`", APPROVAL_FIELDS)?;
        match map.get("timeout") {
            None => Some(DEFAULT_APPROVAL_TIMEOUT),
            Some(timeout) => match window::parse(timeout, MIN_WINDOW, MAX_APPROVAL_TIMEOUT) {
                Ok(timeout) => Some(timeout),
                Err(message) => {
                    self.problem(child(path, "timeout"), message);
                    None
                }
            },
        }
    }

    fn limits(&mut self, value: &Value, path: &str, default_counter: &str) -> Vec<Limit> {
        let Some(items) = self.array(value, path) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, limit)| {
                self.limit(limit, item(path, i), LIMIT_FIELDS, default_counter)
            })
            .collect()
    }

    /// A limit (`allowed` = every field) or a `rate_limit` shorthand (`allowed` = max, window,
    /// scope). Either way the counter defaults to `default_counter`.
    fn limit(
        &mut self,
        value: &Value,
        pointer: String,
        allowed: &[&str],
        default_counter: &str,
    ) -> Option<Limit> {
        self.checked(|v| {
            let map = v.object(value, &pointer, "a limit", allowed)?;
            let counter = match map.get("counter") {
                None => Some(default_counter.to_owned()),
                Some(value) => v.text(value, &child(&pointer, "counter")),
            };
            let max = v
                .required(map, &pointer, "max")
                .and_then(|value| match value {
                    Value::Number(n) if n.as_u64().is_some_and(|max| max > 0) => n.as_u64(),
                    other => {
                        v.problem(
                            child(&pointer, "max"),
                            format!("must be a positive integer, got {}", describe(other)),
                        );
                        None
                    }
                });
            let window = v.required(map, &pointer, "window").and_then(|value| {
                window::parse(value, MIN_WINDOW, MAX_WINDOW)
                    .map_err(|message| v.problem(child(&pointer, "window"), message))
                    .ok()
            });
            let scope = match map.get("scope") {
                None => Some(Scope::Agent),
                Some(value) => match v.choice(
                    value,
                    &child(&pointer, "scope"),
                    &["session", "agent", "server"],
                )? {
                    "session" => Some(Scope::Session),
                    "agent" => Some(Scope::Agent),
                    _ => Some(Scope::Server),
                },
            };
            let increment_from = match map.get("increment_from") {
                None => Some(None),
                Some(value) => v.path(value, &child(&pointer, "increment_from")).map(Some),
            };
            Some(Limit {
                counter: counter?,
                max: max?,
                window: window?,
                scope: scope?,
                increment_from: increment_from?,
                pointer: pointer.clone(),
            })
        })
    }

    fn path(&mut self, value: &Value, path: &str) -> Option<Path> {
        let text = self.string(value, path)?;
        Path::parse(text)
            .map_err(|message| self.problem(path, message))
            .ok()
    }

    /// `deny_if[]` or `approve_if[]`.
    fn entries(&mut self, value: &Value, path: &str, allowed: &[&str]) -> Vec<Entry> {
        let Some(items) = self.array(value, path) else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        for (i, entry) in items.iter().enumerate() {
            let pointer = item(path, i);
            let entry = self.checked(|v| {
                let map = v.object(entry, &pointer, "an entry", allowed)?;
                let conditions_path = child(&pointer, "conditions");
                let conditions = v.required(map, &pointer, "conditions").and_then(|value| {
                    let items = v.array(value, &conditions_path)?;
                    if items.is_empty() {
                        v.problem(
                            &*conditions_path,
                            "must contain at least one condition (an entry without conditions \
                             would match every call)",
                        );
                    }
                    Some(
                        items
                            .iter()
                            .enumerate()
                            .filter_map(|(j, c)| v.condition(c, &item(&conditions_path, j)))
                            .collect::<Vec<_>>(),
                    )
                });
                let reason = v.reason(map, &pointer);
                Some(Entry {
                    conditions: conditions?,
                    reason,
                    pointer: pointer.clone(),
                })
            });
            entries.extend(entry);
        }
        entries
    }

    fn condition(&mut self, value: &Value, pointer: &str) -> Option<Condition> {
        self.checked(|v| {
            let map = v.object(value, pointer, "a condition", CONDITION_FIELDS)?;
            let path = v
                .required(map, pointer, "path")
                .and_then(|value| v.path(value, &child(pointer, "path")));
            let operator = v
                .required(map, pointer, "op")
                .and_then(|value| v.string(value, &child(pointer, "op")))
                .and_then(|op| {
                    Operator::new(op, map.get("value"), &mut v.regexes)
                        .map_err(|(field, message)| v.problem(child(pointer, field), message))
                        .ok()
                });
            Some(Condition::new(path?, operator?))
        })
    }
}

/// A [`Value`] deserialized with duplicate object keys rejected.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Strict(value)) = seq.next_element()? {
            items.push(value);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {}",
                    crate::describe_str(&key)
                )));
            }
            let Strict(value) = access.next_value()?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}
