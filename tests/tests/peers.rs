//! The MCP test peers, talking to each other directly (no gateway): proves the harness before
//! the gateway's end-to-end tests rely on it.

use std::time::Duration;

use portcullis_tests::client::{self, Era, SAMPLED_TEXT, connect, connect_with, result_text};
use portcullis_tests::upstream::{FILLER_TOOLS, README_TEXT, README_URI, TOOL_NAMES, TestUpstream};
use rmcp::ServiceError;
use rmcp::model::{ErrorCode, GetPromptRequestParams, ReadResourceRequestParams, ResourceContents};
use serde_json::json;

/// Bound on every exchange in these tests.
const WAIT: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {WAIT:?}"))
}

#[tokio::test]
async fn lists_the_eight_tools_with_schemas_and_annotations() {
    let upstream = TestUpstream::start().await;
    let client = bounded("connect", connect(&upstream.url, None))
        .await
        .unwrap();

    let info = client.server_info().expect("server info after initialize");
    assert_eq!(
        info.server_info.as_ref().unwrap().name,
        "portcullis-test-upstream"
    );
    assert_eq!(info.protocol_version.as_str(), "2025-11-25");

    let tools = bounded("tools/list", client.list_all_tools())
        .await
        .unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, TOOL_NAMES);
    for tool in &tools {
        assert!(
            tool.description.is_some(),
            "{} has a description",
            tool.name
        );
        assert_eq!(tool.input_schema.get("type"), Some(&json!("object")));
        assert!(tool.annotations.is_some(), "{} is annotated", tool.name);
    }
    let by_name = |name: &str| tools.iter().find(|t| t.name == name).unwrap();
    let list_images = by_name("list_images").annotations.clone().unwrap();
    assert_eq!(list_images.read_only_hint, Some(true));
    let delete = by_name("delete_image_set").annotations.clone().unwrap();
    assert_eq!(delete.destructive_hint, Some(true));
    assert_eq!(delete.read_only_hint, Some(false));
    let refund = by_name("create_refund");
    assert_eq!(
        refund.input_schema.get("required"),
        Some(&json!(["amount"]))
    );
    assert_eq!(upstream.list_tools_requests(), 1);
    client.close().await.unwrap();
}

#[tokio::test]
async fn calls_reach_the_upstream_and_are_counted() {
    let upstream = TestUpstream::start().await;
    let client = bounded("connect", connect(&upstream.url, None))
        .await
        .unwrap();

    let echo = bounded("echo", client.call("echo", json!({"text": "hi there"})))
        .await
        .unwrap();
    assert_eq!(echo.is_error, Some(false));
    assert_eq!(result_text(&echo), "hi there");

    for (tool, args, expected) in [
        ("list_images", json!({}), "image-1, image-2"),
        ("delete_image_set", json!({"name": "prod"}), "deleted prod"),
        ("create_refund", json!({"amount": 12.5}), "refunded 12.5"),
        (
            "create_refund",
            json!({"amount": 40, "reason": "late"}),
            "refunded 40",
        ),
        ("deploy_webapp", json!({"service": "shop"}), "deployed shop"),
    ] {
        let result = bounded(tool, client.call(tool, args)).await.unwrap();
        assert_eq!(result.is_error, Some(false), "{tool}");
        assert_eq!(result_text(&result), expected);
    }

    assert_eq!(upstream.calls("echo"), 1);
    assert_eq!(upstream.calls("create_refund"), 2);
    assert_eq!(upstream.calls("deploy_webapp"), 1);
    assert_eq!(upstream.calls("fail"), 0);
    assert_eq!(upstream.total_calls(), 6);
    client.close().await.unwrap();
}

#[tokio::test]
async fn tool_errors_and_protocol_errors() {
    let upstream = TestUpstream::start().await;
    let client = bounded("connect", connect(&upstream.url, None))
        .await
        .unwrap();

    let fail = bounded("fail", client.call("fail", json!({})))
        .await
        .unwrap();
    assert_eq!(fail.is_error, Some(true));
    assert_eq!(result_text(&fail), "upstream failure");

    // Bad arguments are a tool error (2025-11-25), not a protocol error.
    let bad = bounded("echo", client.call("echo", json!({"text": 7})))
        .await
        .unwrap();
    assert_eq!(bad.is_error, Some(true));

    // An unknown tool is a JSON-RPC -32602 error, counted all the same.
    match bounded("nope", client.call("nope", json!({}))).await {
        Err(ServiceError::McpError(error)) => assert_eq!(error.code, ErrorCode::INVALID_PARAMS),
        other => panic!("expected -32602, got {other:?}"),
    }
    assert_eq!(upstream.calls("nope"), 1);
    assert_eq!(upstream.calls("fail"), 1);
    client.close().await.unwrap();
}

#[tokio::test]
async fn progress_notifications_reach_the_caller() {
    let upstream = TestUpstream::start().await;
    let client = bounded("connect", connect(&upstream.url, None))
        .await
        .unwrap();

    let result = bounded("progress", client.call("progress", json!({"steps": 5})))
        .await
        .unwrap();
    assert_eq!(result_text(&result), "done");
    assert!(
        client.wait_for_progress(5, WAIT).await,
        "5 progress notifications, got {}",
        client.progress_count()
    );
    assert_eq!(client.progress_count(), 5);
    let events = client.progress_events();
    assert_eq!(
        events.iter().map(|e| e.progress).collect::<Vec<_>>(),
        [1.0, 2.0, 3.0, 4.0, 5.0]
    );
    assert!(events.iter().all(|e| e.total == Some(5.0)));
    client.close().await.unwrap();
}

#[tokio::test]
async fn sampling_round_trip_handshake_era() {
    let upstream = TestUpstream::start().await;
    let client = bounded("connect", connect(&upstream.url, None))
        .await
        .unwrap();

    let result = bounded("sample", client.call("sample", json!({})))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(result_text(&result), format!("sampled: {SAMPLED_TEXT}"));
    assert_eq!(client.sampling_count(), 1);
    assert_eq!(upstream.calls("sample"), 1);
    client.close().await.unwrap();
}

#[tokio::test]
async fn stateless_era_client_calls_and_samples_via_input_required() {
    let upstream = TestUpstream::start().await;
    let client = bounded("connect", connect_with(&upstream.url, None, Era::Stateless))
        .await
        .unwrap();

    let tools = bounded("tools/list", client.list_all_tools())
        .await
        .unwrap();
    assert_eq!(tools.len(), TOOL_NAMES.len());
    let echo = bounded("echo", client.call("echo", json!({"text": "modern"})))
        .await
        .unwrap();
    assert_eq!(result_text(&echo), "modern");

    // `input_required` with a sampling request, then the retry carrying the answer.
    let sample = bounded("sample", client.call("sample", json!({})))
        .await
        .unwrap();
    assert_eq!(result_text(&sample), format!("sampled: {SAMPLED_TEXT}"));
    assert_eq!(client.sampling_count(), 1);
    assert_eq!(upstream.calls("sample"), 2, "two rounds");
    client.close().await.unwrap();
}

#[tokio::test]
async fn paginated_tools_list_is_followed_across_pages() {
    let upstream = TestUpstream::start_paginated(7).await;
    let client = bounded("connect", connect(&upstream.url, None))
        .await
        .unwrap();

    let total = TOOL_NAMES.len() + FILLER_TOOLS;
    let pages = bounded("tools/list pages", client.list_tool_pages())
        .await
        .unwrap();
    assert_eq!(pages.len(), total.div_ceil(7));
    assert!(pages[..pages.len() - 1].iter().all(|p| p.tools.len() == 7));
    assert!(
        pages[..pages.len() - 1]
            .iter()
            .all(|p| p.next_cursor.is_some())
    );
    assert!(pages.last().unwrap().next_cursor.is_none());
    assert_eq!(upstream.list_tools_requests(), pages.len());

    let names: Vec<String> = pages
        .iter()
        .flat_map(|p| p.tools.iter().map(|t| t.name.to_string()))
        .collect();
    assert_eq!(names, upstream.tool_names());
    assert_eq!(names.len(), total);

    // An unknown cursor is an error, not an empty page.
    let bogus = rmcp::model::PaginatedRequestParams::default().with_cursor(Some("nope".into()));
    match bounded("bad cursor", client.peer().list_tools(Some(bogus))).await {
        Err(ServiceError::McpError(error)) => assert_eq!(error.code, ErrorCode::INVALID_PARAMS),
        other => panic!("expected -32602, got {other:?}"),
    }

    let item = bounded("inventory", client.call("inventory_03", json!({})))
        .await
        .unwrap();
    assert_eq!(result_text(&item), "item 03");
    client.close().await.unwrap();
}

#[tokio::test]
async fn prompts_resources_and_logging() {
    let upstream = TestUpstream::start().await;
    let client = bounded("connect", connect(&upstream.url, None))
        .await
        .unwrap();
    let peer = client.peer();

    let prompts = bounded("prompts/list", peer.list_all_prompts())
        .await
        .unwrap();
    assert_eq!(prompts.len(), 1);
    assert_eq!(prompts[0].name, "greeting");
    let prompt = bounded(
        "prompts/get",
        peer.get_prompt(
            GetPromptRequestParams::new("greeting")
                .with_arguments(json!({"name": "Ada"}).as_object().unwrap().clone()),
        ),
    )
    .await
    .unwrap();
    let text = serde_json::to_value(&prompt.messages[0].content).unwrap();
    assert_eq!(text["text"], "Hello, Ada!");

    let resources = bounded("resources/list", peer.list_all_resources())
        .await
        .unwrap();
    assert_eq!(resources.len(), 1);
    assert_eq!(resources[0].uri, README_URI);
    let read = bounded(
        "resources/read",
        peer.read_resource(ReadResourceRequestParams::new(README_URI)),
    )
    .await
    .unwrap();
    match &read.contents[0] {
        ResourceContents::TextResourceContents { text, .. } => assert_eq!(text, README_TEXT),
        other => panic!("expected text, got {other:?}"),
    }

    #[allow(deprecated)] // Logging is SEP-2577-deprecated, still in 2025-11-25.
    let set_level = peer.set_level(rmcp::model::SetLevelRequestParams::new(
        rmcp::model::LoggingLevel::Warning,
    ));
    bounded("logging/setLevel", set_level).await.unwrap();
    assert_eq!(upstream.log_level().as_deref(), Some("warning"));
    client.close().await.unwrap();
}

#[tokio::test]
async fn bearer_token_reaches_the_server_and_drop_stops_it() {
    let upstream = TestUpstream::start().await;
    let url = upstream.url.clone();
    let client = bounded("connect", connect(&url, Some("secret-token")))
        .await
        .unwrap();
    bounded("tools/list", client.list_all_tools())
        .await
        .unwrap();
    bounded("echo", client.call("echo", json!({"text": "x"})))
        .await
        .unwrap();
    assert_eq!(
        upstream.authorization_headers(),
        [
            Some("Bearer secret-token".to_string()),
            Some("Bearer secret-token".to_string())
        ]
    );
    client.close().await.unwrap();

    drop(upstream);
    let refused = tokio::time::timeout(WAIT, client::connect(&url, None))
        .await
        .expect("a stopped upstream refuses at once");
    assert!(refused.is_err(), "connecting to a dropped upstream fails");
}
