//! The gateway in front of the reference MCP server, `@modelcontextprotocol/server-everything`
//! (Node, Streamable HTTP): a real rmcp client through the gateway, compared with the same client
//! talking to server-everything directly. Tool names and arguments are the ones server-everything
//! lists; each test checks that first, so a new server-everything that renames them fails loudly.
//!
//! Needs the pinned Node toolchain: `bash tests/conformance/setup.sh`.

use std::path::PathBuf;
use std::time::Duration;

use portcullis_tests::client::{self, RunningClient, result_text};
use portcullis_tests::everything::{self, ServerEverything};
use portcullis_tests::gateway;
use rmcp::model::{GetPromptRequestParams, ReadResourceRequestParams};
use serde_json::{Value, json};

/// server-everything's tool that reads its environment: the one to keep from agents.
const HIDDEN: &str = "get-env";
/// Bound on any one client operation, so a hang fails the test instead of stalling it.
const BOUND: Duration = Duration::from_secs(20);

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

fn log_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("gateway_everything")
        .join(test);
    drop(std::fs::remove_dir_all(&dir));
    dir
}

async fn tool_names(client: &RunningClient) -> Vec<String> {
    bounded("tools/list", client.list_all_tools())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

/// server-everything, and its tools as a direct client lists them (checked to include `needed`).
async fn start_everything(test: &str, needed: &[&str]) -> (ServerEverything, Vec<String>) {
    let everything = everything::start(&log_dir(test)).await;
    let direct = bounded("direct connect", client::connect(&everything.url, None))
        .await
        .unwrap();
    let names = tool_names(&direct).await;
    for name in needed {
        assert!(
            names.iter().any(|n| n == name),
            "server-everything no longer lists {name}: {names:?}"
        );
    }
    bounded("direct close", direct.close()).await.unwrap();
    (everything, names)
}

async fn call(client: &RunningClient, tool: &str, args: Value) -> rmcp::model::CallToolResult {
    bounded(tool, client.call(tool, args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_policy_hides_a_real_tool_and_denies_the_rest_then_allow_lets_them_work() {
    let (everything, direct_names) = start_everything("seed", &[HIDDEN, "echo", "get-sum"]).await;
    let seed = json!({"version": "1", "default": "deny", "hide": [HIDDEN]});
    let gw = gateway::start(&everything.url, Some(seed)).await;
    let client = bounded(
        "gateway connect",
        client::connect(&gw.mcp_url(), Some(&gw.agent_key)),
    )
    .await
    .unwrap();

    // Listed: every tool server-everything lists (for this client's capabilities), in its
    // order, except the hidden one.
    let expected: Vec<String> = direct_names
        .iter()
        .filter(|n| *n != HIDDEN)
        .cloned()
        .collect();
    assert_eq!(tool_names(&client).await, expected);

    let hidden = call(&client, HIDDEN, json!({})).await;
    assert_eq!(hidden.is_error, Some(true), "{hidden:?}");
    assert_eq!(result_text(&hidden), "[POLICY DENIED] tool not available");
    let denied = call(&client, "echo", json!({"message": "hi"})).await;
    assert_eq!(denied.is_error, Some(true), "{denied:?}");
    assert_eq!(
        result_text(&denied),
        "[POLICY DENIED] denied by default policy"
    );

    gw.publish(&json!({"version": "1", "default": "allow", "hide": [HIDDEN]}))
        .await;
    let echoed = call(&client, "echo", json!({"message": "through the gateway"})).await;
    assert_ne!(echoed.is_error, Some(true), "{echoed:?}");
    assert_eq!(result_text(&echoed), "Echo: through the gateway");
    let sum = call(&client, "get-sum", json!({"a": 2, "b": 40})).await;
    assert_eq!(result_text(&sum), "The sum of 2 and 40 is 42.");
    let still_hidden = call(&client, HIDDEN, json!({})).await;
    assert_eq!(
        result_text(&still_hidden),
        "[POLICY DENIED] tool not available"
    );
    assert!(!tool_names(&client).await.iter().any(|n| n == HIDDEN));
    bounded("close", client.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_resources_and_progress_pass_through_as_they_do_directly() {
    let (everything, _) =
        start_everything("passthrough", &["trigger-long-running-operation"]).await;
    let gw = gateway::start(
        &everything.url,
        Some(json!({"version": "1", "default": "allow", "hide": [HIDDEN]})),
    )
    .await;
    let direct = bounded("direct connect", client::connect(&everything.url, None))
        .await
        .unwrap();
    let through = bounded(
        "gateway connect",
        client::connect(&gw.mcp_url(), Some(&gw.agent_key)),
    )
    .await
    .unwrap();

    // The server describes itself the same way through the gateway.
    let info = |c: &RunningClient| {
        let info = c.server_info().expect("server info");
        json!({"server": info.server_info, "capabilities": info.capabilities,
               "instructions": info.instructions})
    };
    assert_eq!(info(&through), info(&direct));

    // Prompts.
    let (d, g) = (direct.peer(), through.peer());
    let prompts = bounded("direct prompts/list", d.list_all_prompts())
        .await
        .unwrap();
    assert!(
        prompts.iter().any(|p| p.name == "args-prompt"),
        "{prompts:?}"
    );
    assert_eq!(
        serde_json::to_value(bounded("prompts/list", g.list_all_prompts()).await.unwrap()).unwrap(),
        serde_json::to_value(&prompts).unwrap()
    );
    let args = json!({"city": "Lyon", "state": "Rhône"});
    let get = || {
        GetPromptRequestParams::new("args-prompt").with_arguments(args.as_object().unwrap().clone())
    };
    let direct_prompt = bounded("direct prompts/get", d.get_prompt(get()))
        .await
        .unwrap();
    let prompt = bounded("prompts/get", g.get_prompt(get())).await.unwrap();
    assert_eq!(
        serde_json::to_value(&prompt).unwrap(),
        serde_json::to_value(&direct_prompt).unwrap()
    );
    assert!(
        serde_json::to_string(&prompt)
            .unwrap()
            .contains("What's weather in Lyon, Rhône?"),
        "{prompt:?}"
    );

    // Resources: the static documents, the templates, and a read.
    let resources = bounded("direct resources/list", d.list_all_resources())
        .await
        .unwrap();
    assert!(!resources.is_empty());
    assert_eq!(
        serde_json::to_value(
            bounded("resources/list", g.list_all_resources())
                .await
                .unwrap()
        )
        .unwrap(),
        serde_json::to_value(&resources).unwrap()
    );
    assert_eq!(
        serde_json::to_value(
            bounded("resources/templates/list", g.list_resource_templates(None))
                .await
                .unwrap()
        )
        .unwrap(),
        serde_json::to_value(
            bounded(
                "direct resources/templates/list",
                d.list_resource_templates(None)
            )
            .await
            .unwrap()
        )
        .unwrap()
    );
    let uri = resources[0].uri.clone();
    let read = bounded(
        "resources/read",
        g.read_resource(ReadResourceRequestParams::new(uri.clone())),
    )
    .await
    .unwrap();
    let direct_read = bounded(
        "direct resources/read",
        d.read_resource(ReadResourceRequestParams::new(uri.clone())),
    )
    .await
    .unwrap();
    assert_eq!(
        serde_json::to_value(&read).unwrap(),
        serde_json::to_value(&direct_read).unwrap()
    );
    assert!(
        serde_json::to_string(&read).unwrap().len() > 100,
        "{uri} read through the gateway has content: {read:?}"
    );

    // Progress: server-everything reports each step when the call carries a progress token
    // (rmcp sends one with every request).
    let done = call(
        &through,
        "trigger-long-running-operation",
        json!({"duration": 0.3, "steps": 3}),
    )
    .await;
    assert_eq!(
        result_text(&done),
        "Long running operation completed. Duration: 0.3 seconds, Steps: 3."
    );
    assert!(
        through.wait_for_progress(3, Duration::from_secs(5)).await,
        "3 progress notifications relayed, got {:?}",
        through.progress_events()
    );
    let steps: Vec<(f64, Option<f64>)> = through
        .progress_events()
        .iter()
        .map(|p| (p.progress, p.total))
        .collect();
    assert_eq!(
        steps,
        [(1.0, Some(3.0)), (2.0, Some(3.0)), (3.0, Some(3.0))]
    );
    bounded("close", through.close()).await.unwrap();
    bounded("direct close", direct.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_if_condition_on_a_real_argument_is_enforced() {
    let (everything, _) = start_everything("deny_if", &["get-sum", "echo"]).await;
    let policy = json!({
        "version": "1",
        "default": "deny",
        "tools": {
            "get-sum": {
                "deny_if": [{"conditions": [{"path": "args.a", "op": "gt", "value": 100}],
                             "on_deny": "Sums of more than 100 are not allowed."}]
            },
            "echo": {
                "deny_if": [{"conditions": [{"path": "args.message", "op": "contains",
                                             "value": "password"}],
                             "on_deny": "No secrets in echoes."}]
            }
        }
    });
    let gw = gateway::start(&everything.url, Some(policy)).await;
    let client = bounded(
        "gateway connect",
        client::connect(&gw.mcp_url(), Some(&gw.agent_key)),
    )
    .await
    .unwrap();

    let small = call(&client, "get-sum", json!({"a": 7, "b": 5})).await;
    assert_eq!(result_text(&small), "The sum of 7 and 5 is 12.");
    let big = call(&client, "get-sum", json!({"a": 1000, "b": 5})).await;
    assert_eq!(big.is_error, Some(true), "{big:?}");
    assert_eq!(
        result_text(&big),
        "[POLICY DENIED] Sums of more than 100 are not allowed."
    );
    let meta = serde_json::to_value(&big.meta).unwrap();
    assert_eq!(
        meta["io.portcullis/rule"], "/tools/get-sum/deny_if/0",
        "{meta}"
    );
    // Fail closed: a value of the wrong type counts as matched (server-everything would
    // reject it anyway, but it must not even see it).
    let wrong_type = call(&client, "get-sum", json!({"a": "1000", "b": 5})).await;
    assert_eq!(
        result_text(&wrong_type),
        "[POLICY DENIED] Sums of more than 100 are not allowed."
    );

    let fine = call(&client, "echo", json!({"message": "hello"})).await;
    assert_eq!(result_text(&fine), "Echo: hello");
    let secret = call(
        &client,
        "echo",
        json!({"message": "my password is hunter2"}),
    )
    .await;
    assert_eq!(
        result_text(&secret),
        "[POLICY DENIED] No secrets in echoes."
    );
    // Not in `tools` under default deny: still denied.
    let other = call(&client, "get-tiny-image", json!({})).await;
    assert_eq!(
        result_text(&other),
        "[POLICY DENIED] denied by default policy"
    );
    bounded("close", client.close()).await.unwrap();
}
