//! Argument conditions: `{path, op, value}`, compiled once at parse time.
//!
//! Semantics (see the crate README):
//! - `path` is `args.` then dot-separated keys or array indexes, resolved against the call's
//!   arguments. A segment of digits indexes an array, or names a key of an object.
//! - No coercion: `1` never equals `"1"`; numbers compare numerically (`1 == 1.0`), also inside
//!   arrays and objects.
//! - `lt`/`lte`/`gt`/`gte` compare numbers only; `regex` (an unanchored search) and
//!   `starts_with` need a string; `contains` is substring search on a string, or element
//!   membership (by `eq`) on an array.
//! - `exists` holds when the path resolves to a value other than `null`; `not_exists` is its
//!   negation. Since `null` counts as absent, `eq`/`neq`/`contains` reject a `null` operand.
//! - A value of the wrong type, or a missing value for any op but `exists`/`not_exists`, makes the
//!   condition [`Outcome::Indeterminate`]: matched in `deny_if`/`approve_if`, not satisfied in
//!   `require` (fail closed).

use std::cmp::Ordering;
use std::collections::HashMap;

use regex::{Regex, RegexBuilder};
use serde_json::{Number, Value};

/// The longest regex source accepted, in bytes.
pub const MAX_REGEX_LEN: usize = 4096;
/// The most distinct regexes one policy may hold.
pub const MAX_REGEXES: usize = 1000;
/// Compiled-size limit of one regex, in bytes (regex's `size_limit`).
const REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// Lazy-DFA cache limit of one regex, in bytes (regex's `dfa_size_limit`): bounds the memory
/// that matching agent-supplied strings can grow.
const REGEX_DFA_LIMIT: usize = 128 * 1024;

/// A condition path, split into segments at parse time.
#[derive(Debug, Clone)]
pub(crate) struct Path {
    text: Box<str>,
    segments: Box<[Segment]>,
}

#[derive(Debug, Clone)]
struct Segment {
    key: Box<str>,
    index: Option<usize>,
}

impl Path {
    /// Parses `args.a.b.0`. The error is the problem's message.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix("args.") else {
            return Err(format!(
                "must start with `args.` (like `args.amount` or `args.items.0.price`), got {}",
                crate::describe_str(text)
            ));
        };
        let mut segments = Vec::new();
        for key in rest.split('.') {
            if key.is_empty() {
                return Err(format!(
                    "has an empty segment: {}; use `args.` then keys or indexes separated by single dots",
                    crate::describe_str(text)
                ));
            }
            let index = if key.bytes().all(|b| b.is_ascii_digit()) {
                key.parse().ok()
            } else {
                None
            };
            segments.push(Segment {
                key: key.into(),
                index,
            });
        }
        Ok(Self {
            text: text.into(),
            segments: segments.into(),
        })
    }

    /// The path as written in the document.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path in `arguments`, if there is one.
    pub(crate) fn resolve<'v>(&self, arguments: &'v Value) -> Option<&'v Value> {
        let mut current = arguments;
        for segment in &*self.segments {
            current = match current {
                Value::Object(map) => map.get(&*segment.key)?,
                Value::Array(items) => items.get(segment.index?)?,
                _ => return None,
            };
        }
        Some(current)
    }
}

/// The operators of POLICY.md, in its order.
pub(crate) const OPS: &[&str] = &[
    "eq",
    "neq",
    "in",
    "not_in",
    "lt",
    "lte",
    "gt",
    "gte",
    "regex",
    "contains",
    "starts_with",
    "exists",
    "not_exists",
];

/// A compiled operator with its operand.
#[derive(Debug, Clone)]
enum Test {
    Eq(Value),
    Neq(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Compare(Ordering, bool, Number),
    Regex(Regex),
    Contains(Value),
    StartsWith(String),
    Exists,
    NotExists,
}

/// The result of testing one condition against a call's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Holds,
    Fails,
    /// The value is missing or has the wrong type for the op: fail closed.
    Indeterminate,
}

/// An op with its operand, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Operator {
    name: &'static str,
    test: Test,
    /// The `value` as written, for explanations.
    value: Option<Value>,
}

impl Operator {
    /// Compiles `op` with its `value`. On error: `(field, message)` where field is `"op"` or
    /// `"value"`, the member the problem points at.
    pub(crate) fn new(
        op: &str,
        value: Option<&Value>,
        regexes: &mut Regexes,
    ) -> Result<Self, (&'static str, String)> {
        let Some(op) = OPS.iter().copied().find(|known| *known == op) else {
            return Err((
                "op",
                format!(
                    "unknown op {}; expected one of {}",
                    crate::describe_str(op),
                    OPS.join(", ")
                ),
            ));
        };
        let test = match (op, value) {
            ("exists", None) => Test::Exists,
            ("not_exists", None) => Test::NotExists,
            ("exists" | "not_exists", Some(_)) => {
                return Err(("value", format!("must be absent for op `{op}`")));
            }
            (_, None) => {
                return Err(("value", format!("is required for op `{op}`")));
            }
            ("eq" | "neq" | "contains", Some(Value::Null)) => {
                return Err((
                    "value",
                    format!(
                        "must not be null for op `{op}`: null counts as absent, test it with \
                         `exists` or `not_exists`"
                    ),
                ));
            }
            ("eq", Some(v)) => Test::Eq(v.clone()),
            ("neq", Some(v)) => Test::Neq(v.clone()),
            ("contains", Some(v)) => Test::Contains(v.clone()),
            ("in" | "not_in", Some(v)) => {
                let Value::Array(items) = v else {
                    return Err((
                        "value",
                        format!("must be an array for op `{op}`, got {}", crate::describe(v)),
                    ));
                };
                if op == "in" {
                    Test::In(items.clone())
                } else {
                    Test::NotIn(items.clone())
                }
            }
            ("lt" | "lte" | "gt" | "gte", Some(v)) => {
                let Value::Number(n) = v else {
                    return Err((
                        "value",
                        format!("must be a number for op `{op}`, got {}", crate::describe(v)),
                    ));
                };
                let (ordering, or_equal) = match op {
                    "lt" => (Ordering::Less, false),
                    "lte" => (Ordering::Less, true),
                    "gt" => (Ordering::Greater, false),
                    _ => (Ordering::Greater, true),
                };
                Test::Compare(ordering, or_equal, n.clone())
            }
            ("regex", Some(v)) => {
                let Value::String(pattern) = v else {
                    return Err((
                        "value",
                        format!(
                            "must be a string for op `regex`, got {}",
                            crate::describe(v)
                        ),
                    ));
                };
                Test::Regex(regexes.compile(pattern).map_err(|m| ("value", m))?)
            }
            ("starts_with", Some(v)) => {
                let Value::String(prefix) = v else {
                    return Err((
                        "value",
                        format!(
                            "must be a string for op `starts_with`, got {}",
                            crate::describe(v)
                        ),
                    ));
                };
                Test::StartsWith(prefix.clone())
            }
            _ => unreachable!("every op of OPS is handled"),
        };
        Ok(Self {
            name: op,
            test,
            value: value.cloned(),
        })
    }
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    path: Path,
    operator: Operator,
}

impl Condition {
    pub(crate) fn new(path: Path, operator: Operator) -> Self {
        Self { path, operator }
    }

    /// Tests this condition against a call's arguments.
    pub(crate) fn test(&self, arguments: &Value) -> Outcome {
        let actual = self.path.resolve(arguments).filter(|v| !v.is_null());
        let holds = |b: bool| if b { Outcome::Holds } else { Outcome::Fails };
        match (&self.operator.test, actual) {
            (Test::Exists, actual) => holds(actual.is_some()),
            (Test::NotExists, actual) => holds(actual.is_none()),
            (_, None) => Outcome::Indeterminate,
            (Test::Eq(expected), Some(actual)) => holds(json_eq(actual, expected)),
            (Test::Neq(expected), Some(actual)) => holds(!json_eq(actual, expected)),
            (Test::In(set), Some(actual)) => holds(set.iter().any(|v| json_eq(actual, v))),
            (Test::NotIn(set), Some(actual)) => holds(!set.iter().any(|v| json_eq(actual, v))),
            (Test::Compare(ordering, or_equal, bound), Some(Value::Number(n))) => {
                match number_cmp(n, bound) {
                    Some(Ordering::Equal) => holds(*or_equal),
                    Some(o) => holds(o == *ordering),
                    None => Outcome::Indeterminate,
                }
            }
            (Test::Regex(re), Some(Value::String(s))) => holds(re.is_match(s)),
            (Test::StartsWith(prefix), Some(Value::String(s))) => holds(s.starts_with(&**prefix)),
            (Test::Contains(Value::String(needle)), Some(Value::String(s))) => {
                holds(s.contains(&**needle))
            }
            (Test::Contains(needle), Some(Value::Array(items))) => {
                holds(items.iter().any(|v| json_eq(v, needle)))
            }
            // Wrong type for the op.
            (
                Test::Compare(..) | Test::Regex(_) | Test::StartsWith(_) | Test::Contains(_),
                Some(_),
            ) => Outcome::Indeterminate,
        }
    }

    /// The condition as the agent may read it: `args.amount lte 100`.
    pub(crate) fn explain(&self) -> String {
        let op = self.operator.name;
        match &self.operator.value {
            None => format!("{} {op}", self.path.as_str()),
            Some(v) => {
                let mut value = v.to_string();
                if value.len() > 200 {
                    let mut end = 200;
                    while !value.is_char_boundary(end) {
                        end -= 1;
                    }
                    value.truncate(end);
                    value.push('…');
                }
                format!("{} {op} {value}", self.path.as_str())
            }
        }
    }
}

/// Regexes compiled during one validation, by source: a pattern repeated across rules (common in
/// generated policies) is compiled once. Clones share the compiled program.
#[derive(Debug, Default)]
pub(crate) struct Regexes(HashMap<String, Result<Regex, String>>);

impl Regexes {
    fn compile(&mut self, pattern: &str) -> Result<Regex, String> {
        if let Some(compiled) = self.0.get(pattern) {
            return compiled.clone();
        }
        if self.0.len() >= MAX_REGEXES {
            return Err(format!(
                "too many distinct regexes in one policy: at most {MAX_REGEXES}"
            ));
        }
        let compiled = compile_regex(pattern);
        self.0.insert(pattern.to_owned(), compiled.clone());
        compiled
    }
}

/// Compiles a `regex` operand with size limits, so a hostile document cannot exhaust memory.
fn compile_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(format!(
            "regex is too long: {} bytes, at most {MAX_REGEX_LEN}",
            pattern.len()
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => {
                format!("regex is too large once compiled (limit {limit} bytes)")
            }
            other => format!("invalid regex: {}", one_line(&other.to_string())),
        })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// JSON equality without coercion, numbers compared numerically (`1 == 1.0`), recursively.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_cmp(x, y) == Some(Ordering::Equal),
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(k, x)| ys.get(k).is_some_and(|y| json_eq(x, y)))
        }
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        _ => false,
    }
}

/// Numeric order: exact for integers, IEEE for anything with a fraction or exponent.
fn number_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    if let (Some(x), Some(y)) = (int(a), int(b)) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cond(path: &str, op: &str, value: Option<Value>) -> Condition {
        let operator = Operator::new(op, value.as_ref(), &mut Regexes::default()).unwrap();
        Condition::new(Path::parse(path).unwrap(), operator)
    }

    fn t(path: &str, op: &str, value: Value, args: Value) -> Outcome {
        cond(path, op, Some(value)).test(&args)
    }

    use Outcome::{Fails, Holds, Indeterminate};

    #[test]
    fn paths_resolve_keys_and_indexes() {
        let args = json!({"a": {"b": [{"c": 1}, {"c": 2}]}, "0": "zero", "x.y": 1});
        let p = |s| Path::parse(s).unwrap();
        assert_eq!(p("args.a.b.1.c").resolve(&args), Some(&json!(2)));
        assert_eq!(p("args.a.b.0").resolve(&args), Some(&json!({"c": 1})));
        assert_eq!(p("args.0").resolve(&args), Some(&json!("zero")));
        assert_eq!(p("args.a.b.2.c").resolve(&args), None);
        assert_eq!(p("args.a.b.c").resolve(&args), None);
        assert_eq!(p("args.a.b.1.c.d").resolve(&args), None);
        assert_eq!(p("args.x.y").resolve(&args), None, "dots always separate");
        assert_eq!(p("args.a").resolve(&json!(null)), None);
        assert_eq!(p("args.a").resolve(&json!([1])), None);
    }

    #[test]
    fn invalid_paths() {
        for bad in [
            "",
            "args",
            "args.",
            "amount",
            "arg.amount",
            "args..a",
            "args.a.",
            ".args.a",
        ] {
            assert!(Path::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            Path::parse("amount").unwrap_err(),
            "must start with `args.` (like `args.amount` or `args.items.0.price`), got \"amount\""
        );
    }

    #[test]
    fn eq_and_neq_never_coerce_but_compare_numbers_numerically() {
        assert_eq!(t("args.a", "eq", json!(1), json!({"a": 1})), Holds);
        assert_eq!(t("args.a", "eq", json!(1), json!({"a": 1.0})), Holds);
        assert_eq!(t("args.a", "eq", json!(1), json!({"a": "1"})), Fails);
        assert_eq!(t("args.a", "eq", json!("1"), json!({"a": 1})), Fails);
        assert_eq!(t("args.a", "eq", json!(true), json!({"a": 1})), Fails);
        assert_eq!(
            t("args.a", "eq", json!([1, 2]), json!({"a": [1.0, 2]})),
            Holds
        );
        assert_eq!(
            t("args.a", "eq", json!({"k": 1}), json!({"a": {"k": 1.0}})),
            Holds
        );
        assert_eq!(
            t(
                "args.a",
                "eq",
                json!({"k": 1}),
                json!({"a": {"k": 1, "j": 2}})
            ),
            Fails
        );
        assert_eq!(t("args.a", "eq", json!(-1), json!({"a": u64::MAX})), Fails);
        assert_eq!(t("args.a", "neq", json!(1), json!({"a": "1"})), Holds);
        assert_eq!(t("args.a", "neq", json!(1), json!({"a": 1})), Fails);
    }

    #[test]
    fn in_and_not_in() {
        let set = json!(["prod", "staging", 3]);
        assert_eq!(
            t("args.env", "in", set.clone(), json!({"env": "prod"})),
            Holds
        );
        assert_eq!(t("args.env", "in", set.clone(), json!({"env": 3.0})), Holds);
        assert_eq!(
            t("args.env", "in", set.clone(), json!({"env": "dev"})),
            Fails
        );
        assert_eq!(
            t("args.env", "not_in", set.clone(), json!({"env": "dev"})),
            Holds
        );
        assert_eq!(t("args.env", "not_in", set, json!({"env": "prod"})), Fails);
    }

    #[test]
    fn ordering_ops_compare_numbers_only() {
        let a = |v: Value| json!({ "a": v });
        assert_eq!(t("args.a", "gt", json!(500), a(json!(501))), Holds);
        assert_eq!(t("args.a", "gt", json!(500), a(json!(500))), Fails);
        assert_eq!(t("args.a", "gte", json!(500), a(json!(500.0))), Holds);
        assert_eq!(t("args.a", "lt", json!(500), a(json!(499.5))), Holds);
        assert_eq!(t("args.a", "lt", json!(500), a(json!(500))), Fails);
        assert_eq!(t("args.a", "lte", json!(500), a(json!(500))), Holds);
        assert_eq!(t("args.a", "lte", json!(-1), a(json!(-2))), Holds);
        assert_eq!(t("args.a", "gt", json!(0), a(json!(u64::MAX))), Holds);
        assert_eq!(
            t("args.a", "gt", json!(500), a(json!("501"))),
            Indeterminate
        );
        assert_eq!(t("args.a", "lt", json!(500), a(json!([1]))), Indeterminate);
    }

    #[test]
    fn regex_is_an_unanchored_search_on_strings() {
        let a = |v: Value| json!({ "a": v });
        assert_eq!(
            t("args.a", "regex", json!("^prod-"), a(json!("prod-1"))),
            Holds
        );
        assert_eq!(
            t("args.a", "regex", json!("^prod-"), a(json!("my-prod-1"))),
            Fails
        );
        assert_eq!(
            t("args.a", "regex", json!("drop"), a(json!("x; DROP table"))),
            Fails
        );
        assert_eq!(
            t(
                "args.a",
                "regex",
                json!("(?i)drop"),
                a(json!("x; DROP table"))
            ),
            Holds
        );
        assert_eq!(t("args.a", "regex", json!("1"), a(json!(1))), Indeterminate);
    }

    #[test]
    fn contains_is_substring_or_membership() {
        let a = |v: Value| json!({ "a": v });
        assert_eq!(
            t(
                "args.a",
                "contains",
                json!("rm -rf"),
                a(json!("sudo rm -rf /"))
            ),
            Holds
        );
        assert_eq!(
            t("args.a", "contains", json!("rm -rf"), a(json!("ls"))),
            Fails
        );
        assert_eq!(
            t(
                "args.a",
                "contains",
                json!("admin"),
                a(json!(["x", "admin"]))
            ),
            Holds
        );
        assert_eq!(t("args.a", "contains", json!(2), a(json!([1, 2.0]))), Holds);
        assert_eq!(
            t("args.a", "contains", json!("ad"), a(json!(["admin"]))),
            Fails
        );
        assert_eq!(
            t("args.a", "contains", json!(1), a(json!("1"))),
            Indeterminate
        );
        assert_eq!(
            t("args.a", "contains", json!("a"), a(json!({"a": 1}))),
            Indeterminate
        );
    }

    #[test]
    fn starts_with_needs_a_string() {
        let a = |v: Value| json!({ "a": v });
        assert_eq!(
            t("args.a", "starts_with", json!("/tmp/"), a(json!("/tmp/x"))),
            Holds
        );
        assert_eq!(
            t("args.a", "starts_with", json!("/tmp/"), a(json!("/etc"))),
            Fails
        );
        assert_eq!(
            t("args.a", "starts_with", json!("1"), a(json!(12))),
            Indeterminate
        );
    }

    #[test]
    fn exists_treats_null_as_absent() {
        let exists = cond("args.reason", "exists", None);
        let not_exists = cond("args.reason", "not_exists", None);
        assert_eq!(exists.test(&json!({"reason": "dup"})), Holds);
        assert_eq!(exists.test(&json!({"reason": ""})), Holds);
        assert_eq!(exists.test(&json!({"reason": null})), Fails);
        assert_eq!(exists.test(&json!({})), Fails);
        assert_eq!(not_exists.test(&json!({})), Holds);
        assert_eq!(not_exists.test(&json!({"reason": null})), Holds);
        assert_eq!(not_exists.test(&json!({"reason": 0})), Fails);
    }

    #[test]
    fn missing_values_are_indeterminate_for_every_value_op() {
        for (op, value) in [
            ("eq", json!(1)),
            ("neq", json!(1)),
            ("in", json!([1])),
            ("not_in", json!([1])),
            ("lt", json!(1)),
            ("lte", json!(1)),
            ("gt", json!(1)),
            ("gte", json!(1)),
            ("regex", json!("x")),
            ("contains", json!("x")),
            ("starts_with", json!("x")),
        ] {
            assert_eq!(
                t("args.a", op, value.clone(), json!({})),
                Indeterminate,
                "{op}"
            );
            assert_eq!(
                t("args.a", op, value, json!({"a": null})),
                Indeterminate,
                "{op}"
            );
        }
    }

    #[test]
    fn operand_validation() {
        let err = |op: &str, value: Option<Value>| {
            Operator::new(op, value.as_ref(), &mut Regexes::default()).unwrap_err()
        };
        assert_eq!(err("like", Some(json!(1))).0, "op");
        assert_eq!(err("eq", None), ("value", "is required for op `eq`".into()));
        assert_eq!(
            err("exists", Some(json!(true))),
            ("value", "must be absent for op `exists`".into())
        );
        assert_eq!(err("eq", Some(json!(null))).0, "value");
        assert_eq!(err("neq", Some(json!(null))).0, "value");
        assert_eq!(err("contains", Some(json!(null))).0, "value");
        assert_eq!(err("in", Some(json!("a"))).0, "value");
        assert_eq!(err("not_in", Some(json!({}))).0, "value");
        assert_eq!(err("gt", Some(json!("5"))).0, "value");
        assert_eq!(err("regex", Some(json!(5))).0, "value");
        assert_eq!(err("starts_with", Some(json!(5))).0, "value");
        assert!(
            err("regex", Some(json!("(")))
                .1
                .starts_with("invalid regex: ")
        );
        assert!(
            err("regex", Some(json!("x".repeat(MAX_REGEX_LEN + 1))))
                .1
                .contains("too long")
        );
        assert!(
            err("regex", Some(json!("\\w{1000}\\w{1000}")))
                .1
                .contains("too large")
        );
    }

    #[test]
    fn explain_names_path_op_and_value() {
        assert_eq!(
            cond("args.amount", "lte", Some(json!(100))).explain(),
            "args.amount lte 100"
        );
        assert_eq!(
            cond("args.reason", "exists", None).explain(),
            "args.reason exists"
        );
    }
}
