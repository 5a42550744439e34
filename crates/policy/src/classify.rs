//! Risk classification of MCP tool definitions (POLICY.md, "Risk classification of tools").
//!
//! [`classify`] takes one tool definition as it appears in an MCP `tools/list` answer (`name`,
//! `title`, `description`, `inputSchema`, `annotations`) and returns a [`Category`], the
//! [`Risk`] that follows from it, the evidence, and the rule the policy builder should propose.
//! The classifier is a pure, deterministic function: no IO, no randomness, no dependence on
//! map order beyond the order of the document itself.
//!
//! # Categories and their order
//!
//! `read < write < execute < financial < destructive` ([`Category`] derives `Ord` in that
//! order). Every signal proposes a category and the result is the highest one proposed: signals
//! can only ever *raise*. Financial and destructive are both critical; when both are present
//! destructive wins, because its recommendation (hide the tool) is the stricter one and a tool
//! that can delete things should not be reachable by default, however it bills.
//!
//! # Signals, strongest first
//!
//! 1. **Verbs in the tool name.** The name is split on `_`, `-`, `.`, `/`, spaces and camelCase
//!    boundaries and each word is looked up in fixed verb lists. The *primary* verb is the first
//!    word if it is a verb (`delete_file`), else the last word (`issue_read`, `label_write`),
//!    else the first verb found. Verbs joined to a primary one by `and`/`or`/`then`
//!    (`create_or_update_file`, `get_or_create_user`) are primary too. Every primary verb counts.
//!    Other verbs in the name are usually nouns (`get_workflow_run`, `list_shell_sessions`,
//!    `get_pull_request_comments`), so they count only when they are dangerous *and* plausible:
//!    a destructive verb always counts (`bulk_delete_items`); an execute or financial verb counts
//!    unless the primary verb is a read verb (`create_refund` is financial, `get_refund` is
//!    read); read and write verbs outside the primary position never count.
//! 2. **Operation selectors in the input schema.** Multi-operation tools (`issue_write`,
//!    `label_write`, `actions_run_trigger`) take a property named `method`, `action`, `operation`
//!    or `op` whose `enum` lists the operations (or, lacking an enum, whose description quotes
//!    them: `'add'`, `'remove'`). Each operation is classified like a name, and the tool is as
//!    risky as its riskiest operation: an agent may pick any value of the enum. So a tool whose
//!    method can be `delete` is destructive, even if it can also `create`; the admin who wants to
//!    keep its harmless operations can replace the recommended `hide` with a `deny_if` on
//!    `args.method`.
//! 3. **The description.** Tool descriptions of read tools mention deletion, execution and money
//!    all the time ("does not close, link, comment on, or otherwise modify any issue"), so only
//!    two kinds of description evidence are used: its first word, when it is a verb ("Deletes a
//!    file", "List workflows"), which decides when the name has no verb and otherwise can only
//!    raise to execute, financial or destructive; and a few strong phrases ("permanently
//!    deletes", "cannot be undone", "executes a shell command", "transfers money", "issues a
//!    refund").
//! 4. **Input-schema field names**, at any depth: `command`, `cmd`, `script`, `shell`, `sql`,
//!    `code` make a tool execute whatever its name says (the caller supplies what is run);
//!    `amount`, `currency`, `price`, `payment`, `refund`… make a tool financial unless the tool
//!    is a read tool (searching products by `max_price` moves no money).
//! 5. **Nothing recognised**: a tool that shows no sign of being read-only is assumed to change
//!    state and is classified write. Unknown does not mean harmless.
//!
//! Financial evidence other than a primary verb (name nouns, description phrases, field names,
//! titles) is ignored for tools whose name or description makes them read tools, for the same
//! reason as the `max_price` example above.
//!
//! # Annotations are untrusted
//!
//! Annotations (and the tool `title`) come from the server, so they can raise the category but
//! never lower it below what the name, description and schema indicate:
//!
//! - explicit `readOnlyHint: false` raises to at least write;
//! - explicit `destructiveHint: true` raises to destructive, unless `readOnlyHint` is `true`:
//!   the MCP specification gives `destructiveHint` meaning only for tools that are not
//!   read-only, and some servers serialise every hint, defaults included;
//! - the first word of `annotations.title` / `title`, when it is a write, execute, financial or
//!   destructive verb, raises to that category (financial: not for read tools, as above);
//! - `readOnlyHint: true` and `destructiveHint: false` never lower anything; when they
//!   contradict the result the evidence says so, which is worth an admin's look;
//! - *absent* hints count for nothing. The specification's defaults (`destructiveHint: true`,
//!   `readOnlyHint: false`) describe what a client must assume about an unannotated tool, not
//!   evidence about it; honouring them would make every unannotated tool destructive;
//! - `idempotentHint` and `openWorldHint` say whether a call can be retried and whether it
//!   reaches outside systems, not how much harm it does, so they do not move the category.
//!
//! # Risk and recommendation
//!
//! Both follow from the category alone, as in POLICY.md: see [`Category::risk`] and
//! [`Category::recommended`].
//!
//! # Evidence
//!
//! Short quotes for the signals that produced the final category, in the order above (name,
//! operations, description, fields, annotations), followed by notes on annotations that were
//! ignored because they would have lowered the risk.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value, json};

/// What a tool does, in increasing order of severity (the derived `Ord` is that order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Reads data and changes nothing.
    Read,
    /// Creates or changes state.
    Write,
    /// Runs code, commands or deployments.
    Execute,
    /// Moves money.
    Financial,
    /// Deletes or irreversibly destroys state.
    Destructive,
}

impl Category {
    /// Every category, in order of severity.
    pub const ALL: [Category; 5] = [
        Category::Read,
        Category::Write,
        Category::Execute,
        Category::Financial,
        Category::Destructive,
    ];

    /// The lowercase name used in JSON and in the console.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Read => "read",
            Category::Write => "write",
            Category::Execute => "execute",
            Category::Financial => "financial",
            Category::Destructive => "destructive",
        }
    }

    /// The risk level of tools in this category.
    pub fn risk(self) -> Risk {
        match self {
            Category::Read => Risk::Low,
            Category::Write => Risk::Medium,
            Category::Execute => Risk::High,
            Category::Financial | Category::Destructive => Risk::Critical,
        }
    }

    /// The rule the policy builder proposes for tools in this category.
    pub fn recommended(self) -> Recommended {
        match self {
            Category::Read => Recommended::Rule(json!({})),
            Category::Write => {
                Recommended::Rule(json!({"rate_limit": {"max": 30, "window": "minute"}}))
            }
            Category::Execute => {
                Recommended::Rule(json!({"rate_limit": {"max": 10, "window": "minute"}}))
            }
            Category::Financial => Recommended::Rule(json!({"action": "require_approval"})),
            Category::Destructive => Recommended::Hide,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much harm a call can do, ordered `low < medium < high < critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    Medium,
    High,
    Critical,
}

impl Risk {
    /// The lowercase name used in JSON and in the console.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the policy builder proposes for a tool: a rule for `tools.NAME`, or putting the tool
/// in `hide`. Serialised as `{"rule": {...}}` or `{"hide": true}`.
#[derive(Debug, Clone, PartialEq)]
pub enum Recommended {
    /// The rule to put under `tools.NAME` (`{}` allows the tool).
    Rule(Value),
    /// List the tool in `hide`.
    Hide,
}

impl Serialize for Recommended {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            Recommended::Rule(rule) => map.serialize_entry("rule", rule)?,
            Recommended::Hide => map.serialize_entry("hide", &true)?,
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Recommended {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            rule: Option<Value>,
            hide: Option<bool>,
        }
        match Raw::deserialize(deserializer)? {
            Raw {
                rule: Some(rule),
                hide: None,
            } => Ok(Recommended::Rule(rule)),
            Raw {
                rule: None,
                hide: Some(true),
            } => Ok(Recommended::Hide),
            _ => Err(serde::de::Error::custom(
                "expected exactly one of {\"rule\": {...}} or {\"hide\": true}",
            )),
        }
    }
}

/// The result of [`classify`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub category: Category,
    /// Always `category.risk()`.
    pub risk: Risk,
    /// Short quotes of the signals behind `category`, never empty.
    pub evidence: Vec<String>,
    /// Always `category.recommended()`.
    pub recommended: Recommended,
}

/// Classifies one MCP tool definition (an element of `tools/list`'s `tools`).
///
/// Never panics: missing or ill-typed fields count as absent. See the module documentation for
/// the rules.
pub fn classify(tool: &Value) -> Classification {
    let name = str_field(tool, "name");
    let description = str_field(tool, "description");
    let schema = tool.get("inputSchema");
    let annotations = tool.get("annotations").and_then(Value::as_object);

    let mut found = Findings::default();

    // 1. The name.
    let name_verbs = analyse_words(name);
    let name_primary = name_verbs.primary();
    for verb in &name_verbs.verbs {
        found.push(
            verb.category,
            verb.describe(name),
            verb.role != Role::Primary,
        );
    }

    // 2. Operation selectors.
    // One finding per property and category: "input `method` can be `delete`, `remove`".
    let mut groups: Vec<(String, Category, Vec<String>)> = Vec::new();
    for (property, operation) in operations(schema) {
        let Some(category) = analyse_words(&operation).effective() else {
            continue;
        };
        let value = format!("`{}`", clip(&operation));
        match groups
            .iter_mut()
            .find(|(p, c, _)| *p == property && *c == category)
        {
            Some((_, _, values)) => values.push(value),
            None => groups.push((property, category, vec![value])),
        }
    }
    let operations_max = groups.iter().map(|(_, category, _)| *category).max();
    for (property, category, values) in groups {
        let shown = values.len().min(3);
        let more = if values.len() > shown { ", …" } else { "" };
        let listed = values[..shown].join(", ");
        found.push(
            category,
            format!("input `{}` can be {listed}{more}", clip(&property)),
            false,
        );
    }

    // 3. The description's first word: decides when nothing above did, else can only raise.
    let description_verb = leading_verb(description);
    let decided = name_primary.is_some() || operations_max.is_some();
    if let Some((word, category)) = description_verb
        && (!decided || category >= Category::Execute)
    {
        found.push(
            category,
            format!("description starts with \"{word}\""),
            decided,
        );
    }

    // The base: what the tool mainly does according to its name, operations or description.
    // Secondary financial evidence is ignored for read tools (see the module documentation).
    let base = name_primary
        .or(operations_max)
        .or(description_verb.map(|(_, category)| category));
    let base_is_read = base == Some(Category::Read);

    // 3b. Strong description phrases.
    for (category, regex) in DESCRIPTION_PHRASES.iter() {
        if let Some(m) = regex.find(description) {
            found.push(
                *category,
                format!("description says \"{}\"", clip(m.as_str())),
                true,
            );
        }
    }

    // 4. Input field names.
    for field in field_names(schema) {
        let words = words(&field);
        if is_execute_field(&words) {
            found.push(
                Category::Execute,
                format!("input field `{}`", clip(&field)),
                false,
            );
        } else if words.iter().any(|w| FINANCIAL_FIELDS.contains(&w.as_str())) {
            found.push(
                Category::Financial,
                format!("input field `{}`", clip(&field)),
                true,
            );
        }
    }

    if base_is_read {
        found.drop_secondary_financial();
    }

    // 5. Nothing recognised.
    if found.items.is_empty() {
        found.push(
            Category::Write,
            "no known verb in name or description: assumed to change state".to_owned(),
            false,
        );
    }

    // Annotations and titles: they can only raise.
    let hint = |key: &str| {
        annotations
            .and_then(|a| a.get(key))
            .and_then(Value::as_bool)
    };
    let read_only = hint("readOnlyHint");
    let destructive = hint("destructiveHint");
    if read_only == Some(false) {
        found.push(
            Category::Write,
            "annotation readOnlyHint: false".to_owned(),
            false,
        );
    }
    if destructive == Some(true) && read_only != Some(true) {
        found.push(
            Category::Destructive,
            "annotation destructiveHint: true".to_owned(),
            false,
        );
    }
    let titles = [
        (
            "annotation title",
            annotations.map_or("", |a| str_in(a, "title")),
        ),
        ("title", str_field(tool, "title")),
    ];
    for (label, title) in titles {
        if let Some((word, category)) = leading_verb(title)
            && category > Category::Read
            && !(base_is_read && category == Category::Financial)
        {
            found.push(category, format!("{label} starts with \"{word}\""), false);
        }
    }

    let category = found.max();
    let mut evidence: Vec<String> = found
        .items
        .into_iter()
        .filter(|f| f.category == category)
        .map(|f| f.evidence)
        .collect();

    // Notes on annotations that agree, or that were overruled.
    match read_only {
        Some(true) if category == Category::Read => {
            evidence.push("annotation readOnlyHint: true".to_owned());
        }
        Some(true) => evidence.push(
            "annotation readOnlyHint: true ignored: annotations cannot lower the risk".into(),
        ),
        _ => {}
    }
    match destructive {
        Some(false) if category == Category::Destructive => evidence.push(
            "annotation destructiveHint: false ignored: annotations cannot lower the risk".into(),
        ),
        Some(true) if read_only == Some(true) && category != Category::Destructive => {
            evidence.push("annotation destructiveHint: true ignored: readOnlyHint is true".into())
        }
        _ => {}
    }
    dedup_in_order(&mut evidence);

    Classification {
        category,
        risk: category.risk(),
        evidence,
        recommended: category.recommended(),
    }
}

// ---------------------------------------------------------------------------------------------
// Vocabulary. Exact, lowercase word matches only: `runs`, `charges`, `deployments` are nouns.

/// Verbs that delete or irreversibly destroy state.
const DESTRUCTIVE_VERBS: &[&str] = &[
    "delete",
    "del",
    "remove",
    "rm",
    "drop",
    "purge",
    "destroy",
    "terminate",
    "kill",
    "wipe",
    "truncate",
    "revoke",
    "erase",
    "expunge",
    "shred",
    "nuke",
    "obliterate",
    "uninstall",
    "deprovision",
    "decommission",
];

/// Verbs that move money (or ownership).
const FINANCIAL_VERBS: &[&str] = &[
    "transfer",
    "refund",
    "charge",
    "pay",
    "payout",
    "invoice",
    "withdraw",
    "deposit",
    "purchase",
    "buy",
    "sell",
    "trade",
    "bill",
    "checkout",
    "donate",
    "reimburse",
];

/// Verbs that run code, commands, jobs or deployments.
const EXECUTE_VERBS: &[&str] = &[
    "deploy",
    "redeploy",
    "undeploy",
    "rollback",
    "exec",
    "execute",
    "run",
    "rerun",
    "eval",
    "evaluate",
    "shell",
    "bash",
    "sh",
    "invoke",
    "spawn",
    "launch",
    "trigger",
    "dispatch",
    "restart",
    "reboot",
    "install",
    "provision",
    "sql",
];

/// Verbs that create or change state. Any tool that is not shown to be read-only is write
/// anyway; this list matters for finding the primary verb (`mark_all_notifications_read` is
/// led by `mark`, so its trailing `read` is not its verb) and for the evidence.
const WRITE_VERBS: &[&str] = &[
    "create",
    "update",
    "add",
    "set",
    "unset",
    "write",
    "edit",
    "put",
    "patch",
    "push",
    "merge",
    "comment",
    "fork",
    "assign",
    "unassign",
    "close",
    "reopen",
    "insert",
    "upsert",
    "save",
    "upload",
    "send",
    "submit",
    "request",
    "reply",
    "react",
    "resolve",
    "unresolve",
    "dismiss",
    "mark",
    "unmark",
    "manage",
    "move",
    "rename",
    "copy",
    "clone",
    "star",
    "unstar",
    "follow",
    "unfollow",
    "subscribe",
    "unsubscribe",
    "approve",
    "reject",
    "cancel",
    "archive",
    "unarchive",
    "lock",
    "unlock",
    "pin",
    "unpin",
    "enable",
    "disable",
    "publish",
    "unpublish",
    "invite",
    "prioritize",
    "reprioritize",
    "reorder",
    "sync",
    "import",
    "unlink",
    "replace",
    "modify",
    "configure",
    "register",
    "unregister",
    "commit",
    "rebase",
    "transition",
    "notify",
    "start",
    "stop",
    "pause",
    "resume",
    "accept",
    "decline",
    "share",
    "grant",
    "toggle",
    "increment",
    "decrement",
    "attach",
    "detach",
    "restore",
    "reset",
    "clear",
    "convert",
    "generate",
    "apply",
    "upgrade",
    "mute",
    "unmute",
    "enqueue",
    "emit",
    "click",
    "press",
    "navigate",
    "drag",
    "hover",
];

/// Verbs that only read.
const READ_VERBS: &[&str] = &[
    "get",
    "list",
    "search",
    "describe",
    "read",
    "fetch",
    "show",
    "view",
    "query",
    "find",
    "count",
    "download",
    "lookup",
    "retrieve",
    "inspect",
    "browse",
    "explore",
    "preview",
    "export",
    "summarize",
    "summarise",
    "analyze",
    "analyse",
    "diff",
    "compare",
    "check",
    "validate",
    "verify",
    "peek",
    "poll",
    "tail",
    "grep",
    "ls",
    "cat",
    "stat",
    "ping",
    "return",
    "is",
    "has",
    "can",
    "whoami",
    "explain",
    "estimate",
    "calculate",
    "lint",
    "screenshot",
    "await",
    "wait",
];

/// Words that join two verbs of equal standing in a name (`create_or_update_file`).
const CONJUNCTIONS: &[&str] = &["and", "or", "then"];

/// Input-schema properties whose enum lists the operations of a multi-operation tool.
const OPERATION_FIELDS: &[&str] = &["method", "action", "operation", "op"];

/// Words of input field names that carry money.
const FINANCIAL_FIELDS: &[&str] = &[
    "amount", "currency", "price", "payment", "payout", "refund", "iban", "cvv", "cvc",
];

/// The category of a verb, if the word is one.
fn verb_category(word: &str) -> Option<Category> {
    let lists = [
        (DESTRUCTIVE_VERBS, Category::Destructive),
        (FINANCIAL_VERBS, Category::Financial),
        (EXECUTE_VERBS, Category::Execute),
        (WRITE_VERBS, Category::Write),
        (READ_VERBS, Category::Read),
    ];
    lists
        .into_iter()
        .find(|(list, _)| list.contains(&word))
        .map(|(_, category)| category)
}

/// Strong description phrases, each with the category it indicates. Verbose regexes
/// (whitespace is insignificant), matched case-insensitively.
static DESCRIPTION_PHRASES: LazyLock<Vec<(Category, Regex)>> = LazyLock::new(|| {
    let phrases = [
        (
            Category::Destructive,
            r"\b permanently \s+ (?: delet | remov | destroy | eras | purg | wip ) [a-z]*",
        ),
        (Category::Destructive, r"\b irreversibl[ey] \b"),
        (
            Category::Destructive,
            r"\b (?: cannot | can't | can \s+ not ) \s+ be \s+ (?: undone | reversed ) \b",
        ),
        (
            // "executes a shell command", "runs arbitrary SQL statements", "evaluates code"
            Category::Execute,
            r"\b (?: execute[sd]? | executing | runs? | running | evaluates? | evaluating ) \s+
              (?: (?: an? | the | any | arbitrary | raw | custom | given | provided ) \s+ )*
              (?: (?: shell | bash | sql | python | javascript | js | system | terminal
                    | cli ) \s+ )?
              (?: commands? | code | scripts? | statements? | sql ) \b",
        ),
        (
            Category::Execute,
            r"\b arbitrary \s+ (?: code | commands? | sql | scripts? ) \b",
        ),
        (Category::Execute, r"\b shell \s+ commands? \b"),
        (
            // "transfers money", "sends the funds"
            Category::Financial,
            r"\b (?: transfers? | transferring | sends? | sending | moves? | moving
                   | withdraws? | withdrawing | deposits? | depositing )
              \s+ (?: \w+ \s+ ){0,3}? (?: money | funds ) \b",
        ),
        (
            // "charges the customer", "bills a card"
            Category::Financial,
            r"\b (?: charges? | charging | bills? ) \s+ (?: (?: the | a | an ) \s+ )?
              (?: customer | card | credit \s+ card | user | account | payment \s+ method ) s? \b",
        ),
        (
            // "issues a refund", "creates a payment", "initiates a wire transfer"
            Category::Financial,
            r"\b (?: issues? | issuing | creates? | creating | process(?:es)? | processing
                   | initiates? | initiating | makes? | making | sends? | sending )
              \s+ (?: (?: an? | the ) \s+ )?
              (?: refunds? | payments? | payouts? | wire \s+ transfers? ) \b",
        ),
    ];
    phrases
        .into_iter()
        .map(|(category, pattern)| {
            let regex = Regex::new(&format!("(?ix){pattern}")).expect("description phrase regex");
            (category, regex)
        })
        .collect()
});

// ---------------------------------------------------------------------------------------------
// Words and verbs.

/// Splits an identifier into lowercase words with their byte spans: on every character that is
/// not alphanumeric, between a lowercase letter or digit and an uppercase letter (`deleteFile`),
/// and before the last capital of an acronym followed by lowercase (`HTTPServer`).
fn spans(s: &str) -> Vec<(usize, usize)> {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, &(at, c)) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if let Some(begin) = start.take() {
                out.push((begin, at));
            }
            continue;
        }
        if let Some(begin) = start {
            let prev = chars[i - 1].1;
            let next_lower = chars.get(i + 1).is_some_and(|&(_, n)| n.is_lowercase());
            let boundary = c.is_uppercase()
                && (prev.is_lowercase()
                    || prev.is_numeric()
                    || (prev.is_uppercase() && next_lower));
            if boundary {
                out.push((begin, at));
                start = Some(at);
            }
        } else {
            start = Some(at);
        }
    }
    if let Some(begin) = start {
        out.push((begin, s.len()));
    }
    out
}

/// The lowercase words of an identifier.
fn words(s: &str) -> Vec<String> {
    spans(s)
        .into_iter()
        .map(|(a, b)| s[a..b].to_lowercase())
        .collect()
}

/// Where a verb stands in a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The name's main verb, or one joined to it by a conjunction.
    Primary,
    /// Any other verb: often a noun (`get_workflow_run`).
    Secondary,
}

/// A verb found in a name.
#[derive(Debug)]
struct NameVerb {
    category: Category,
    role: Role,
    /// Byte span of the word in the name.
    span: (usize, usize),
    /// Span of the word before and after, if any (for quoting the name in the evidence).
    before: Option<(usize, usize)>,
    after: Option<(usize, usize)>,
}

impl NameVerb {
    /// A short quote: "name starts with `delete_`", "name ends with `_write`", or
    /// "name contains verb `deploy`".
    fn describe(&self, name: &str) -> String {
        let word = name[self.span.0..self.span.1].to_lowercase();
        match (self.before, self.after) {
            (None, None) => format!("name is `{}`", clip(name)),
            (None, Some(next)) => format!("name starts with `{}`", clip(&name[..next.0])),
            (Some(prev), None) if self.role == Role::Primary => {
                format!("name ends with `{}`", clip(&name[prev.1..]))
            }
            _ => format!("name contains verb `{word}`"),
        }
    }
}

/// The verbs of a name, with their roles.
#[derive(Debug, Default)]
struct NameVerbs {
    verbs: Vec<NameVerb>,
}

impl NameVerbs {
    /// The highest category among the primary verbs.
    fn primary(&self) -> Option<Category> {
        self.verbs
            .iter()
            .filter(|v| v.role == Role::Primary)
            .map(|v| v.category)
            .max()
    }

    /// The category this name indicates on its own: the primary verbs, raised by the
    /// secondary verbs that count (see the module documentation).
    fn effective(&self) -> Option<Category> {
        let primary = self.primary()?;
        let secondary = self
            .verbs
            .iter()
            .filter(|v| v.role == Role::Secondary && secondary_counts(v.category, primary))
            .map(|v| v.category)
            .max();
        Some(primary.max(secondary.unwrap_or(primary)))
    }
}

/// Whether a verb outside the primary position counts, given the primary category.
fn secondary_counts(category: Category, primary: Category) -> bool {
    match category {
        Category::Destructive => true,
        Category::Execute | Category::Financial => primary != Category::Read,
        Category::Read | Category::Write => false,
    }
}

/// Finds the verbs of a name and their roles.
fn analyse_words(name: &str) -> NameVerbs {
    let spans = spans(name);
    let lower: Vec<String> = spans
        .iter()
        .map(|&(a, b)| name[a..b].to_lowercase())
        .collect();
    let categories: Vec<Option<Category>> = lower.iter().map(|w| verb_category(w)).collect();
    let Some(primary_at) = (if categories.first().is_some_and(Option::is_some) {
        Some(0)
    } else if categories.last().is_some_and(Option::is_some) {
        Some(categories.len() - 1)
    } else {
        categories.iter().position(Option::is_some)
    }) else {
        return NameVerbs::default();
    };

    let verbs = categories
        .iter()
        .enumerate()
        .filter_map(|(i, category)| {
            let category = (*category)?;
            let joined = i > 0 && CONJUNCTIONS.contains(&lower[i - 1].as_str());
            let role = if i == primary_at || joined {
                Role::Primary
            } else {
                Role::Secondary
            };
            Some(NameVerb {
                category,
                role,
                span: spans[i],
                before: i.checked_sub(1).map(|j| spans[j]),
                after: spans.get(i + 1).copied(),
            })
        })
        .collect();
    let mut verbs = NameVerbs { verbs };
    // Secondary verbs that do not count are dropped here, so callers see only evidence.
    if let Some(primary) = verbs.primary() {
        verbs
            .verbs
            .retain(|v| v.role == Role::Primary || secondary_counts(v.category, primary));
    }
    verbs
}

/// The first word of a text, if it is a verb (`Deletes` → `delete`), with the word as written.
fn leading_verb(text: &str) -> Option<(&str, Category)> {
    let text = text.trim_start();
    let end = text
        .char_indices()
        .find(|&(_, c)| !c.is_alphabetic())
        .map_or(text.len(), |(i, _)| i);
    let word = &text[..end];
    if word.is_empty() {
        return None;
    }
    let lower = word.to_lowercase();
    let candidates = [
        Some(lower.as_str()),
        lower.strip_suffix('s'),
        lower.strip_suffix("es"),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(verb_category)
        .map(|category| (word, category))
}

// ---------------------------------------------------------------------------------------------
// The input schema.

/// The values an operation selector can take, as (property, value) pairs, in document order.
fn operations(schema: Option<&Value>) -> Vec<(String, String)> {
    static QUOTED: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"['`"]([A-Za-z][A-Za-z0-9_]*)['`"]"#).expect("quoted word regex")
    });
    let Some(properties) = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, property) in properties {
        if !OPERATION_FIELDS.contains(&key.to_lowercase().as_str()) {
            continue;
        }
        let values: Vec<String> = match property.get("enum").and_then(Value::as_array) {
            Some(values) => values
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            None => QUOTED
                .captures_iter(str_field(property, "description"))
                .map(|c| c[1].to_owned())
                .collect(),
        };
        out.extend(values.into_iter().map(|v| (key.clone(), v)));
    }
    out
}

/// Every property name in the schema, at any depth (bounded), in document order, once each.
fn field_names(schema: Option<&Value>) -> Vec<String> {
    fn walk(schema: &Value, depth: usize, out: &mut Vec<String>) {
        if depth == 0 {
            return;
        }
        let Some(schema) = schema.as_object() else {
            return;
        };
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (key, value) in properties {
                if !out.contains(key) {
                    out.push(key.clone());
                }
                walk(value, depth - 1, out);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(value) = schema.get(key) {
                walk(value, depth - 1, out);
            }
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            for value in schema
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                walk(value, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(schema) = schema {
        walk(schema, 8, &mut out);
    }
    out
}

/// Whether an input field carries something to run: its last word is `command`, `script`,
/// `shell`, `sql`…, any word is `sql`, or it is `code` / `source_code` (but not `status_code`).
fn is_execute_field(words: &[String]) -> bool {
    const LAST: &[&str] = &[
        "command", "commands", "cmd", "script", "scripts", "shell", "sql",
    ];
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    words.last().is_some_and(|w| LAST.contains(w))
        || words.contains(&"sql")
        || matches!(words.as_slice(), ["code"] | ["source", "code"])
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping.

/// One signal.
#[derive(Debug)]
struct Finding {
    category: Category,
    evidence: String,
    /// Financial evidence that is not a primary verb, dropped for read tools.
    secondary: bool,
}

#[derive(Debug, Default)]
struct Findings {
    items: Vec<Finding>,
}

impl Findings {
    fn push(&mut self, category: Category, evidence: String, secondary: bool) {
        self.items.push(Finding {
            category,
            evidence,
            secondary,
        });
    }

    /// Drops secondary financial findings (for read tools).
    fn drop_secondary_financial(&mut self) {
        self.items
            .retain(|f| !(f.secondary && f.category == Category::Financial));
    }

    /// The highest category found (write if nothing was).
    fn max(&self) -> Category {
        self.items
            .iter()
            .map(|f| f.category)
            .max()
            .unwrap_or(Category::Write)
    }
}

fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

fn str_in<'a>(map: &'a Map<String, Value>, key: &str) -> &'a str {
    map.get(key).and_then(Value::as_str).unwrap_or("")
}

/// At most 40 characters of `s`, for quoting in the evidence.
fn clip(s: &str) -> String {
    const MAX: usize = 40;
    let s = s.trim();
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

fn dedup_in_order(items: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    items.retain(|item| seen.insert(item.clone()));
}
