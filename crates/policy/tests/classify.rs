//! The risk classifier against 117 real tool definitions (the GitHub MCP server) and against
//! hand-written tools for each signal.

use portcullis_policy::classify::{Category, Classification, Recommended, Risk, classify};
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("../../../../shared/fixtures/github-mcp-server.tools.json");

fn fixture_tools() -> Vec<Value> {
    let fixture: Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
    let tools = fixture["tools"]
        .as_array()
        .expect("fixture has tools")
        .clone();
    assert_eq!(tools.len(), 117, "fixture size");
    tools
}

fn without_annotations(tool: &Value) -> Value {
    let mut tool = tool.clone();
    tool.as_object_mut()
        .expect("tool is an object")
        .remove("annotations");
    tool
}

fn hint(tool: &Value, key: &str) -> Option<bool> {
    tool.get("annotations")?.get(key)?.as_bool()
}

fn tool(name: &str, description: &str, properties: Value) -> Value {
    json!({
        "name": name,
        "description": description,
        "inputSchema": {"type": "object", "properties": properties},
    })
}

fn category_of(name: &str, description: &str, properties: Value) -> Category {
    classify(&tool(name, description, properties)).category
}

// ---------------------------------------------------------------------------------------------
// Acceptance on the fixture.

/// Without annotations, the read / not-read split agrees with `readOnlyHint` (absent = false).
#[test]
fn fixture_read_split_agrees_with_read_only_hint_without_annotations() {
    let tools = fixture_tools();
    let mut disagreements = Vec::new();
    for tool in &tools {
        let expected_read = hint(tool, "readOnlyHint") == Some(true);
        let got = classify(&without_annotations(tool));
        if (got.category == Category::Read) != expected_read {
            disagreements.push(format!(
                "{}: readOnlyHint={expected_read}, classified {} ({})",
                tool["name"],
                got.category,
                got.evidence.join("; ")
            ));
        }
    }
    let agree = tools.len() - disagreements.len();
    eprintln!(
        "read split agreement without annotations: {agree}/{} = {:.1}%",
        tools.len(),
        100.0 * agree as f64 / tools.len() as f64
    );
    for line in &disagreements {
        eprintln!("  disagreement: {line}");
    }
    assert!(
        agree * 100 >= tools.len() * 95,
        "only {agree}/{} agree: {disagreements:#?}",
        tools.len()
    );
}

/// With annotations, `destructiveHint: true` always yields destructive.
#[test]
fn fixture_destructive_hint_is_always_destructive() {
    let tools = fixture_tools();
    let annotated: Vec<&Value> = tools
        .iter()
        .filter(|t| hint(t, "destructiveHint") == Some(true))
        .collect();
    assert!(annotated.len() >= 5, "the fixture has destructive tools");
    for tool in annotated {
        let got = classify(tool);
        assert_eq!(got.category, Category::Destructive, "{}", tool["name"]);
        assert_eq!(got.risk, Risk::Critical);
        assert_eq!(got.recommended, Recommended::Hide);
        assert!(
            got.evidence
                .iter()
                .any(|e| e == "annotation destructiveHint: true"),
            "{}: {:?}",
            tool["name"],
            got.evidence
        );
    }
}

/// Annotations never lower: every fixture tool is at least as risky with its annotations as
/// without them, and no read-annotated tool is raised above read by its annotations.
#[test]
fn fixture_annotations_only_raise() {
    for tool in fixture_tools() {
        let with = classify(&tool);
        let without = classify(&without_annotations(&tool));
        assert!(with.category >= without.category, "{}", tool["name"]);
        if hint(&tool, "readOnlyHint") == Some(true) {
            assert_eq!(with.category, without.category, "{}", tool["name"]);
        }
    }
}

/// Same input, same output, including the evidence and its order.
#[test]
fn fixture_classification_is_deterministic() {
    let tools = fixture_tools();
    let first: Vec<Classification> = tools.iter().map(classify).collect();
    let second: Vec<Classification> = tools.iter().map(classify).collect();
    assert_eq!(first, second);
    assert_eq!(
        serde_json::to_string(&first).unwrap(),
        serde_json::to_string(&second).unwrap()
    );
    for (tool, got) in tools.iter().zip(&first) {
        assert!(!got.evidence.is_empty(), "{} has evidence", tool["name"]);
        assert_eq!(got.risk, got.category.risk());
        assert_eq!(got.recommended, got.category.recommended());
    }
}

/// `delete_everything` claiming to be read-only is still destructive.
#[test]
fn read_only_hint_cannot_lower_a_destructive_name() {
    let mut tool = tool("delete_everything", "Deletes everything.", json!({}));
    tool["annotations"] = json!({"readOnlyHint": true, "destructiveHint": false});
    let got = classify(&tool);
    assert_eq!(got.category, Category::Destructive);
    assert_eq!(got.risk, Risk::Critical);
    assert_eq!(got.recommended, Recommended::Hide);
    assert!(
        got.evidence
            .contains(&"name starts with `delete_`".to_owned())
    );
    assert!(
        got.evidence
            .iter()
            .any(|e| e.starts_with("annotation readOnlyHint: true ignored")),
        "{:?}",
        got.evidence
    );
    assert!(
        got.evidence
            .iter()
            .any(|e| e.starts_with("annotation destructiveHint: false ignored")),
        "{:?}",
        got.evidence
    );
}

// ---------------------------------------------------------------------------------------------
// Each category by name.

#[test]
fn categories_by_name() {
    let cases = [
        ("list_buckets", Category::Read),
        ("get_file_contents", Category::Read),
        ("describeInstances", Category::Read),
        ("search-logs", Category::Read),
        ("issue_read", Category::Read),
        ("create_issue", Category::Write),
        ("updateUser", Category::Write),
        ("label_write", Category::Write),
        ("mark_all_notifications_read", Category::Write),
        ("deploy_webapp", Category::Execute),
        ("run_workflow", Category::Execute),
        ("db.exec", Category::Execute),
        ("transfer_funds", Category::Financial),
        ("create_refund", Category::Financial),
        ("chargeCustomer", Category::Financial),
        ("delete_object", Category::Destructive),
        ("drop_table", Category::Destructive),
        ("terminate-instances", Category::Destructive),
        ("bulk_delete_items", Category::Destructive),
        ("purge", Category::Destructive),
    ];
    for (name, expected) in cases {
        assert_eq!(category_of(name, "", json!({})), expected, "{name}");
    }
}

#[test]
fn nouns_that_look_like_verbs_do_not_raise_read_tools() {
    // `run`, `shell`, `refund`, `request` are nouns here.
    for name in [
        "get_workflow_run",
        "list_shell_sessions",
        "get_refund",
        "get_pull_request_comments",
        "pull_request_read",
    ] {
        assert_eq!(category_of(name, "", json!({})), Category::Read, "{name}");
    }
}

#[test]
fn verbs_joined_by_a_conjunction_are_both_primary() {
    assert_eq!(
        category_of("get_or_create_user", "", json!({})),
        Category::Write
    );
    assert_eq!(
        category_of("create_or_update_file", "", json!({})),
        Category::Write
    );
    assert_eq!(
        category_of("list_and_delete_files", "", json!({})),
        Category::Destructive
    );
}

#[test]
fn destructive_wins_over_financial() {
    assert_eq!(
        category_of("delete_invoice", "", json!({"amount": {"type": "number"}})),
        Category::Destructive
    );
}

// ---------------------------------------------------------------------------------------------
// By input schema.

#[test]
fn categories_by_schema_field() {
    let execute = classify(&tool(
        "database",
        "",
        json!({"sql": {"type": "string"}, "timeout": {"type": "number"}}),
    ));
    assert_eq!(execute.category, Category::Execute);
    assert!(execute.evidence.contains(&"input field `sql`".to_owned()));

    // An execute field raises even a read-named tool: the caller supplies what runs.
    assert_eq!(
        category_of("query_database", "", json!({"sql": {"type": "string"}})),
        Category::Execute
    );
    assert_eq!(
        category_of("terminal", "", json!({"shellCommand": {"type": "string"}})),
        Category::Execute
    );
    // `status_code` and `command_id` carry nothing to run.
    assert_eq!(
        category_of(
            "get_response",
            "",
            json!({"status_code": {}, "command_id": {}})
        ),
        Category::Read
    );

    let financial = classify(&tool(
        "create_payment_link",
        "",
        json!({"amount": {"type": "number"}, "currency": {"type": "string"}}),
    ));
    assert_eq!(financial.category, Category::Financial);
    assert!(
        financial
            .evidence
            .contains(&"input field `amount`".to_owned())
    );
    assert!(
        financial
            .evidence
            .contains(&"input field `currency`".to_owned())
    );

    // Nested fields count too.
    assert_eq!(
        category_of(
            "create_order",
            "",
            json!({"items": {"type": "array", "items": {"type": "object",
                "properties": {"unitPrice": {"type": "number"}}}}})
        ),
        Category::Financial
    );

    // Filtering by price moves no money.
    assert_eq!(
        category_of(
            "search_products",
            "",
            json!({"max_price": {"type": "number"}})
        ),
        Category::Read
    );
}

#[test]
fn operation_enums_make_a_tool_as_risky_as_its_riskiest_operation() {
    let multi = |methods: Value| {
        classify(&tool(
            "label_write",
            "Write operations on labels.",
            json!({"method": {"type": "string", "enum": methods}}),
        ))
    };
    assert_eq!(multi(json!(["create", "update"])).category, Category::Write);
    let with_delete = multi(json!(["create", "update", "delete"]));
    assert_eq!(with_delete.category, Category::Destructive);
    assert!(
        with_delete
            .evidence
            .contains(&"input `method` can be `delete`".to_owned()),
        "{:?}",
        with_delete.evidence
    );

    // Read operations whose names contain nouns like `run` stay read.
    let read = classify(&tool(
        "actions_get",
        "",
        json!({"method": {"enum": ["get_workflow_run", "download_artifact"]}}),
    ));
    assert_eq!(read.category, Category::Read);

    // Without an enum, operations quoted in the property's description count.
    let quoted = classify(&tool(
        "sub_issue_write",
        "",
        json!({"method": {
            "type": "string",
            "description": "Options are: 'add' - add a sub-issue. 'remove' - remove a sub-issue.",
        }}),
    ));
    assert_eq!(quoted.category, Category::Destructive);
}

// ---------------------------------------------------------------------------------------------
// By description.

#[test]
fn categories_by_description() {
    // The first word decides when the name has no verb.
    assert_eq!(
        category_of("weather", "Gets the forecast for a city.", json!({})),
        Category::Read
    );
    assert_eq!(
        category_of("notes", "Creates a note.", json!({})),
        Category::Write
    );
    assert_eq!(
        category_of("files", "Deletes a file.", json!({})),
        Category::Destructive
    );

    let destructive = classify(&tool(
        "update_bucket",
        "Empties the bucket: objects are permanently deleted.",
        json!({}),
    ));
    assert_eq!(destructive.category, Category::Destructive);
    assert!(
        destructive
            .evidence
            .contains(&"description says \"permanently deleted\"".to_owned()),
        "{:?}",
        destructive.evidence
    );
    assert_eq!(
        category_of("reset_project", "This cannot be undone.", json!({})),
        Category::Destructive
    );
    assert_eq!(
        category_of(
            "terminal",
            "Executes a shell command on the host.",
            json!({})
        ),
        Category::Execute
    );
    assert_eq!(
        category_of("wallet", "Transfers money between two accounts.", json!({})),
        Category::Financial
    );
    assert_eq!(
        category_of("stripe", "Issues a refund for a charge.", json!({})),
        Category::Financial
    );
}

#[test]
fn incidental_description_words_do_not_raise_read_tools() {
    let description = "Find likely duplicates. This is a read-only search: it does not close, \
        delete, comment on, or otherwise modify any issue. Use delete_issue to delete one. \
        Refunds and payments are listed too.";
    assert_eq!(
        category_of("find_duplicate", description, json!({})),
        Category::Read
    );
}

// ---------------------------------------------------------------------------------------------
// Annotations.

#[test]
fn annotations_raise() {
    let mut read = tool("get_thing", "Get a thing.", json!({}));
    assert_eq!(classify(&read).category, Category::Read);

    read["annotations"] = json!({"readOnlyHint": false});
    let got = classify(&read);
    assert_eq!(got.category, Category::Write);
    assert!(
        got.evidence
            .contains(&"annotation readOnlyHint: false".to_owned())
    );

    read["annotations"] = json!({"destructiveHint": true});
    assert_eq!(classify(&read).category, Category::Destructive);

    read["annotations"] = json!({"title": "Deploy the thing"});
    assert_eq!(classify(&read).category, Category::Execute);
}

#[test]
fn absent_or_read_only_annotations_do_not_raise() {
    // Absent hints are not evidence, whatever the specification's defaults.
    let bare = tool("list_things", "", json!({}));
    assert_eq!(classify(&bare).category, Category::Read);

    // destructiveHint means nothing on a read-only tool.
    let mut both = bare.clone();
    both["annotations"] = json!({"readOnlyHint": true, "destructiveHint": true});
    let got = classify(&both);
    assert_eq!(got.category, Category::Read);
    assert!(
        got.evidence
            .contains(&"annotation readOnlyHint: true".to_owned())
    );

    // idempotentHint and openWorldHint do not move the category.
    let mut hints = bare.clone();
    hints["annotations"] = json!({"idempotentHint": false, "openWorldHint": true});
    assert_eq!(classify(&hints).category, Category::Read);
}

#[test]
fn unknown_tools_are_assumed_to_write() {
    let got = classify(&json!({"name": "frobnicate"}));
    assert_eq!(got.category, Category::Write);
    assert_eq!(got.risk, Risk::Medium);
    assert!(!got.evidence.is_empty());

    // A claim of being read-only does not make an unknown tool read.
    let mut claimed = json!({"name": "frobnicate", "annotations": {"readOnlyHint": true}});
    assert_eq!(classify(&claimed).category, Category::Write);
    claimed["description"] = json!("List the frobs.");
    assert_eq!(classify(&claimed).category, Category::Read);
}

// ---------------------------------------------------------------------------------------------
// Robustness and the API.

#[test]
fn odd_tools_never_panic() {
    let odd = [
        json!(null),
        json!(42),
        json!("delete_everything"),
        json!([]),
        json!({}),
        json!({"name": ""}),
        json!({"name": 7, "description": ["x"], "inputSchema": "object", "annotations": []}),
        json!({"name": "___", "inputSchema": {"properties": []}}),
        json!({"name": "ÄÖÜ_löschen_ß", "description": "  "}),
        json!({"name": "x", "inputSchema": {"properties": {"method": {"enum": [1, null, {}]}}}}),
        json!({"name": "x", "inputSchema": {"properties": {"method": {"description": 5}}}}),
        json!({"name": "x", "annotations": {"readOnlyHint": "yes", "destructiveHint": 1}}),
        json!({"name": "x", "annotations": {"title": 3}}),
        json!({"name": "a".repeat(10_000), "description": "é".repeat(10_000)}),
        json!({"name": "getHTTPServer2Delete", "title": "💥 Boom"}),
    ];
    for tool in &odd {
        let got = classify(tool);
        assert!(!got.evidence.is_empty(), "{tool}");
        assert_eq!(got, classify(tool));
    }
    assert_eq!(classify(&json!(null)).category, Category::Write);
    assert_eq!(
        classify(&json!({"name": "getHTTPServer2Delete"})).category,
        Category::Destructive
    );
}

#[test]
fn category_table_matches_policy_md() {
    let table = [
        (Category::Read, Risk::Low, json!({"rule": {}})),
        (
            Category::Write,
            Risk::Medium,
            json!({"rule": {"rate_limit": {"max": 30, "window": "minute"}}}),
        ),
        (
            Category::Execute,
            Risk::High,
            json!({"rule": {"rate_limit": {"max": 10, "window": "minute"}}}),
        ),
        (
            Category::Financial,
            Risk::Critical,
            json!({"rule": {"action": "require_approval"}}),
        ),
        (Category::Destructive, Risk::Critical, json!({"hide": true})),
    ];
    for (category, risk, recommended) in table {
        assert_eq!(category.risk(), risk);
        let serialized = serde_json::to_value(category.recommended()).unwrap();
        assert_eq!(serialized, recommended, "{category}");
        let back: Recommended = serde_json::from_value(recommended).unwrap();
        assert_eq!(back, category.recommended());
    }
    assert!(Risk::Low < Risk::Medium && Risk::Medium < Risk::High && Risk::High < Risk::Critical);
    assert_eq!(Category::Financial.to_string(), "financial");
    assert_eq!(Risk::Critical.to_string(), "critical");
    assert!(serde_json::from_value::<Recommended>(json!({"hide": false})).is_err());
    assert!(serde_json::from_value::<Recommended>(json!({"rule": {}, "hide": true})).is_err());
}

#[test]
fn classification_serializes_as_in_api_md() {
    let got = classify(&tool("delete_file", "Delete a file", json!({})));
    let value = serde_json::to_value(&got).unwrap();
    assert_eq!(value["category"], "destructive");
    assert_eq!(value["risk"], "critical");
    assert_eq!(value["recommended"], json!({"hide": true}));
    assert_eq!(value["evidence"][0], "name starts with `delete_`");
    let back: Classification = serde_json::from_value(value).unwrap();
    assert_eq!(back, got);

    let read = serde_json::to_value(classify(&tool("list_files", "", json!({})))).unwrap();
    assert_eq!(read["category"], "read");
    assert_eq!(read["recommended"], json!({"rule": {}}));
}

proptest::proptest! {
    /// Arbitrary names, descriptions and field names never panic, always give evidence, and
    /// give the same answer twice.
    #[test]
    fn arbitrary_text_never_panics(
        name in ".{0,40}",
        description in ".{0,80}",
        field in "[a-zA-Z_]{0,12}",
        method in proptest::collection::vec("[a-zA-Z_ ]{0,12}", 0..4),
    ) {
        let tool = json!({
            "name": name,
            "description": description,
            "annotations": {"title": description},
            "inputSchema": {"properties": {field: {"type": "string"}, "method": {"enum": method}}},
        });
        let got = classify(&tool);
        proptest::prop_assert!(!got.evidence.is_empty());
        proptest::prop_assert_eq!(got.risk, got.category.risk());
        proptest::prop_assert_eq!(got, classify(&tool));
    }
}
