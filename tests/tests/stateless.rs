//! Clients of the stateless revision (2026-07-28) through the gateway: a real rmcp client in
//! `Discover` mode against the rmcp test server (reached in the handshake era), the header
//! validation cases of the specification with their statuses and codes, and the validation
//! running before any policy.

use std::time::Duration;

use portcullis_tests::client::{Era, connect_with, result_text};
use portcullis_tests::fake_mcp::FakeMcp;
use portcullis_tests::gateway;
use portcullis_tests::upstream::TestUpstream;
use reqwest::StatusCode;
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(20);

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rmcp_stateless_client_lists_calls_is_denied_and_samples_through_input_rounds() {
    // A server of the handshake era only: everything is translated.
    let upstream = TestUpstream::start_handshake_only().await;
    let policy = json!({
        "version": "1",
        "default": "allow",
        "hide": ["delete_image_set"],
        "tools": {
            "deploy_webapp": {"action": "deny", "reason": "Deploys go through CI."},
            "list_images": {"rate_limit": {"max": 1, "window": "minute"}},
        },
    });
    let gw = gateway::start(&upstream.url, Some(policy)).await;
    let client = bounded(
        "connect",
        connect_with(&gw.mcp_url(), Some(&gw.agent_key), Era::Stateless),
    )
    .await
    .expect("a stateless client connects through the gateway");
    let info = client.server_info().expect("discover answered");
    assert_eq!(
        info.protocol_version.as_str(),
        "2026-07-28",
        "the client did not fall back: {info:?}"
    );

    let tools = bounded("tools/list", client.list_all_tools())
        .await
        .unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert!(names.contains(&"echo"), "{names:?}");
    assert!(!names.contains(&"delete_image_set"), "{names:?}");

    let echoed = bounded("echo", client.call("echo", json!({"text": "stateless"})))
        .await
        .unwrap();
    assert_eq!(result_text(&echoed), "stateless");

    let denied = bounded("deploy", client.call("deploy_webapp", json!({})))
        .await
        .unwrap();
    assert_eq!(denied.is_error, Some(true));
    assert_eq!(
        result_text(&denied),
        "[POLICY DENIED] Deploys go through CI."
    );
    assert_eq!(upstream.calls("deploy_webapp"), 0);

    let first = bounded("list_images", client.call("list_images", json!({})))
        .await
        .unwrap();
    assert_ne!(first.is_error, Some(true), "{first:?}");
    let limited = bounded("list_images", client.call("list_images", json!({})))
        .await
        .unwrap();
    assert!(
        result_text(&limited).starts_with("[RATE LIMITED]"),
        "{limited:?}"
    );

    // The upstream (handshake era) asks the client's model mid-call; the stateless client gets
    // `input_required`, answers, and the same upstream call finishes with its answer.
    let sampled = bounded("sample", client.call("sample", json!({})))
        .await
        .unwrap();
    assert_eq!(
        result_text(&sampled),
        format!("sampled: {}", portcullis_tests::client::SAMPLED_TEXT)
    );
    assert_eq!(client.sampling_count(), 1);
    assert_eq!(upstream.calls("sample"), 1, "one upstream call, two rounds");
    bounded("close", client.close()).await.unwrap();
}

/// A stateless POST with the envelope in `_meta` and the headers, each overridable.
struct Stateless<'a> {
    url: &'a str,
    key: &'a str,
}

impl Stateless<'_> {
    fn envelope(version: &str) -> Value {
        json!({
            "io.modelcontextprotocol/protocolVersion": version,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        })
    }

    /// `params` gets the envelope unless it has `_meta` already; `headers` are sent as given
    /// (the test decides which mirror headers to send).
    async fn post(&self, body: Value, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut request = reqwest::Client::new()
            .post(self.url)
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(self.key)
            .json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let is_sse = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let text = response.text().await.unwrap();
        let value = if is_sse {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .find(|m| m.get("id").is_some())
                .unwrap_or(Value::Null)
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        (status, value)
    }
}

fn call(name: &str, args: Value, meta: Option<Value>) -> Value {
    let mut params = json!({"name": name, "arguments": args});
    if let Some(meta) = meta {
        params["_meta"] = meta;
    }
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params})
}

#[tokio::test]
async fn header_and_envelope_mismatches_get_the_specified_status_and_code() {
    let fake = FakeMcp::start(vec![json!({
        "name": "deploy",
        "description": "Deploy a service to a region.",
        "inputSchema": {"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "service": {"type": "string"}}},
    })])
    .await;
    let gw = gateway::start(
        &fake.mcp(),
        Some(json!({"version": "1", "default": "allow"})),
    )
    .await;
    let url = gw.mcp_url();
    let s = Stateless {
        url: &url,
        key: &gw.agent_key,
    };
    let v = "2026-07-28";
    let env = Some(Stateless::envelope(v));
    let args = json!({"region": "eu-west", "service": "api"});
    let good: &[(&str, &str)] = &[
        ("mcp-protocol-version", v),
        ("mcp-method", "tools/call"),
        ("mcp-name", "deploy"),
        ("mcp-param-region", "eu-west"),
    ];

    struct Case<'a> {
        name: &'a str,
        body: Value,
        headers: Vec<(&'a str, &'a str)>,
        status: StatusCode,
        code: i64,
    }
    let with = |skip: &str, extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        let mut h: Vec<(&str, &str)> = good.iter().copied().filter(|(n, _)| *n != skip).collect();
        h.extend_from_slice(extra);
        h
    };
    let cases = vec![
        Case {
            name: "no capabilities in _meta",
            body: call(
                "deploy",
                args.clone(),
                Some(json!({"io.modelcontextprotocol/protocolVersion": v})),
            ),
            headers: good.to_vec(),
            status: StatusCode::BAD_REQUEST,
            code: -32602,
        },
        Case {
            name: "no MCP-Protocol-Version header",
            body: call("deploy", args.clone(), env.clone()),
            headers: with("mcp-protocol-version", &[]),
            status: StatusCode::BAD_REQUEST,
            code: -32020,
        },
        Case {
            name: "MCP-Protocol-Version header differs from _meta",
            body: call(
                "deploy",
                args.clone(),
                Some(Stateless::envelope("2025-11-25")),
            ),
            headers: good.to_vec(),
            status: StatusCode::BAD_REQUEST,
            code: -32020,
        },
        Case {
            name: "no Mcp-Method header",
            body: call("deploy", args.clone(), env.clone()),
            headers: with("mcp-method", &[]),
            status: StatusCode::BAD_REQUEST,
            code: -32020,
        },
        Case {
            name: "Mcp-Method differs from the method",
            body: call("deploy", args.clone(), env.clone()),
            headers: with("mcp-method", &[("mcp-method", "tools/list")]),
            status: StatusCode::BAD_REQUEST,
            code: -32020,
        },
        Case {
            name: "no Mcp-Name header",
            body: call("deploy", args.clone(), env.clone()),
            headers: with("mcp-name", &[]),
            status: StatusCode::BAD_REQUEST,
            code: -32020,
        },
        Case {
            name: "Mcp-Name names another tool",
            body: call("deploy", args.clone(), env.clone()),
            headers: with("mcp-name", &[("mcp-name", "rollback")]),
            status: StatusCode::BAD_REQUEST,
            code: -32020,
        },
        Case {
            name: "two Mcp-Name headers",
            body: call("deploy", args.clone(), env.clone()),
            headers: with("", &[("mcp-name", "deploy")]),
            status: StatusCode::BAD_REQUEST,
            code: -32020,
        },
        Case {
            name: "Mcp-Param-Region differs from the argument",
            body: call("deploy", args.clone(), env.clone()),
            headers: with("mcp-param-region", &[("mcp-param-region", "us-east")]),
            status: StatusCode::BAD_REQUEST,
            code: -32020,
        },
        Case {
            name: "no Mcp-Param-Region header for a tagged argument",
            body: call("deploy", args.clone(), env.clone()),
            headers: with("mcp-param-region", &[]),
            status: StatusCode::BAD_REQUEST,
            code: -32020,
        },
        Case {
            name: "an unsupported version",
            body: call(
                "deploy",
                args.clone(),
                Some(Stateless::envelope("2027-01-01")),
            ),
            headers: with(
                "mcp-protocol-version",
                &[("mcp-protocol-version", "2027-01-01")],
            ),
            status: StatusCode::BAD_REQUEST,
            code: -32022,
        },
        Case {
            name: "initialize sent stateless",
            body: json!({"jsonrpc": "2.0", "id": 7, "method": "initialize",
                         "params": {"_meta": Stateless::envelope(v)}}),
            headers: vec![("mcp-protocol-version", v), ("mcp-method", "initialize")],
            status: StatusCode::NOT_FOUND,
            code: -32601,
        },
        Case {
            name: "ping sent stateless",
            body: json!({"jsonrpc": "2.0", "id": 7, "method": "ping",
                         "params": {"_meta": Stateless::envelope(v)}}),
            headers: vec![("mcp-protocol-version", v), ("mcp-method", "ping")],
            status: StatusCode::NOT_FOUND,
            code: -32601,
        },
    ];
    for c in &cases {
        let (status, body) = s.post(c.body.clone(), &c.headers).await;
        assert_eq!(status, c.status, "{}: {body}", c.name);
        assert_eq!(body["error"]["code"], c.code, "{}: {body}", c.name);
        assert_eq!(body["id"], 7, "{}: {body}", c.name);
    }
    // The unsupported version lists the handshake versions too (dual-era clients fall back).
    let (_, body) = s.post(cases[10].body.clone(), &cases[10].headers).await;
    assert_eq!(body["error"]["data"]["requested"], "2027-01-01");
    let supported = body["error"]["data"]["supported"].as_array().unwrap();
    assert!(supported.contains(&json!("2026-07-28")), "{body}");
    assert!(supported.contains(&json!("2025-11-25")), "{body}");

    // Everything right: the call goes through the policy to the upstream (which has no
    // tools/call: its error comes back as a JSON-RPC error, not a header mismatch).
    let (status, body) = s
        .post(call("deploy", args.clone(), env.clone()), good)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["error"]["code"], -32601, "{body}");
    // Base64-encoded header values are decoded.
    let encoded = with(
        "mcp-param-region",
        &[("mcp-param-region", "=?base64?ZXUtd2VzdA==?=")],
    );
    let (status, body) = s
        .post(call("deploy", args.clone(), env.clone()), &encoded)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn headers_are_checked_before_the_policy_and_nothing_is_recorded() {
    let upstream = TestUpstream::start().await;
    // Everything denied: a mismatch must still be reported as a mismatch.
    let gw = gateway::start(
        &upstream.url,
        Some(json!({"version": "1", "default": "deny"})),
    )
    .await;
    let url = gw.mcp_url();
    let s = Stateless {
        url: &url,
        key: &gw.agent_key,
    };
    let v = "2026-07-28";
    let (status, body) = s
        .post(
            call("echo", json!({"text": "x"}), Some(Stateless::envelope(v))),
            &[
                ("mcp-protocol-version", v),
                ("mcp-method", "tools/call"),
                ("mcp-name", "list_images"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], -32020, "{body}");
    // With the right headers, the policy answers (a refusal the model reads), and only that
    // call is in the activity log.
    let (status, body) = s
        .post(
            call("echo", json!({"text": "x"}), Some(Stateless::envelope(v))),
            &[
                ("mcp-protocol-version", v),
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["isError"], true, "{body}");
    assert_eq!(body["result"]["resultType"], "complete", "{body}");
    let events = gw.activity(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].decision, "deny");
    assert_eq!(upstream.total_calls(), 0);
}

#[tokio::test]
async fn discover_and_lists_carry_the_fields_of_the_revision() {
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow", "hide": ["delete_image_set"]})),
    )
    .await;
    let url = gw.mcp_url();
    let s = Stateless {
        url: &url,
        key: &gw.agent_key,
    };
    let v = "2026-07-28";
    let (status, body) = s
        .post(
            json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover",
                   "params": {"_meta": Stateless::envelope(v)}}),
            &[
                ("mcp-protocol-version", v),
                ("mcp-method", "server/discover"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let result = &body["result"];
    assert_eq!(result["resultType"], "complete", "{body}");
    assert!(result["ttlMs"].is_u64(), "{body}");
    assert_eq!(result["cacheScope"], "private", "{body}");
    assert!(result.get("serverInfo").is_none(), "{body}");
    assert!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"].is_string(),
        "{body}"
    );
    assert_eq!(result["supportedVersions"][0], "2026-07-28", "{body}");
    assert_eq!(
        result["capabilities"]["tools"]["listChanged"], true,
        "{body}"
    );

    let (status, body) = s
        .post(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list",
                   "params": {"_meta": Stateless::envelope(v)}}),
            &[("mcp-protocol-version", v), ("mcp-method", "tools/list")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let result = &body["result"];
    assert_eq!(result["resultType"], "complete");
    assert_eq!(result["cacheScope"], "private");
    assert!(result["ttlMs"].is_u64());
    let names = portcullis_tests::gateway::names_in(&result["tools"]);
    assert!(!names.contains(&"delete_image_set"), "{names:?}");
    // A forged requestState is refused, and so is another agent's.
    let mut forged = call("sample", json!({}), Some(Stateless::envelope(v)));
    forged["params"]["requestState"] = json!("pcr_AAAA");
    forged["params"]["inputResponses"] = json!({"input": {}});
    let (status, body) = s
        .post(
            forged,
            &[
                ("mcp-protocol-version", v),
                ("mcp-method", "tools/call"),
                ("mcp-name", "sample"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["error"]["code"], -32602, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_client_speaks_the_stateless_era_through_the_gateway() {
    let root = portcullis_tests::workspace_root();
    let python = root.join("tests/conformance/pyvenv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run tests/conformance/setup.sh",
        python.display()
    );
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(
        &upstream.url,
        Some(json!({
            "version": "1",
            "default": "allow",
            "hide": ["delete_image_set"],
            "tools": {"deploy_webapp": {"action": "deny", "reason": "Deploys go through CI."}},
        })),
    )
    .await;
    let run = tokio::process::Command::new(&python)
        .arg(root.join("tests/fixtures/python_client.py"))
        .arg(gw.mcp_url())
        .arg(&gw.agent_key)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the Python client finishes")
        .expect("the Python client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(seen["version"], "2026-07-28", "no fallback: {seen}");
    let tools = seen["tools"].as_array().unwrap();
    assert!(tools.contains(&json!("echo")), "{seen}");
    assert!(!tools.contains(&json!("delete_image_set")), "{seen}");
    assert_eq!(seen["echo"], "from python");
    assert_eq!(seen["denied"]["is_error"], true);
    assert_eq!(
        seen["denied"]["text"],
        "[POLICY DENIED] Deploys go through CI."
    );
    assert_eq!(seen["sample"], "sampled: sampled-by-python");
    assert_eq!(upstream.calls("deploy_webapp"), 0);
    assert_eq!(upstream.calls("sample"), 1);
}

/// A console and gateway with a server that speaks only 2026-07-28 registered through the API
/// (so its era is detected there), a policy published, and an agent: (app, gateway URL, key).
async fn stateless_only_server(
    upstream: &TestUpstream,
) -> (portcullis_tests::console::TestApp, String, String) {
    let app = portcullis_tests::console::TestApp::start().await;
    let alice = app.signup("alice@acme.test", "Acme").await;
    let server = app
        .register(&alice.token, &alice.slug, "modern", &upstream.url)
        .await;
    assert_eq!(server["protocol_version"], "2026-07-28", "{server}");
    assert_eq!(server["transport"], "streamable_http");
    assert!(
        server["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "echo"),
        "{server}"
    );
    let server_id = server["id"].as_str().unwrap();
    app.publish_policy(
        &alice.token,
        &alice.slug,
        server_id,
        None,
        &json!({
            "version": "1",
            "default": "allow",
            "hide": ["delete_image_set"],
            "tools": {"deploy_webapp": {"action": "deny", "reason": "Deploys go through CI."}},
        }),
    )
    .await;
    let (_, key) = app.create_agent(&alice.token, &alice.slug, "bot").await;
    let url = server["gateway_url"].as_str().unwrap().to_owned();
    (app, url, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_client_reaches_a_server_that_speaks_only_the_stateless_era() {
    let upstream = TestUpstream::start_stateless_only().await;
    let (_app, url, key) = stateless_only_server(&upstream).await;
    let client = bounded(
        "connect",
        portcullis_tests::client::connect(&url, Some(&key)),
    )
    .await
    .expect("a handshake client connects (initialize answered by the gateway)");
    let info = client.server_info().expect("initialized");
    assert_eq!(info.protocol_version.as_str(), "2025-11-25");
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some("portcullis-test-upstream")
    );

    let tools = bounded("tools/list", client.list_all_tools())
        .await
        .unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert!(names.contains(&"echo"), "{names:?}");
    assert!(!names.contains(&"delete_image_set"), "{names:?}");
    let echoed = bounded("echo", client.call("echo", json!({"text": "translated"})))
        .await
        .unwrap();
    assert_eq!(result_text(&echoed), "translated");
    let denied = bounded("deploy", client.call("deploy_webapp", json!({})))
        .await
        .unwrap();
    assert_eq!(
        result_text(&denied),
        "[POLICY DENIED] Deploys go through CI."
    );
    assert_eq!(upstream.calls("deploy_webapp"), 0);

    // The server's `input_required` reaches the handshake client as a sampling request on the
    // call's stream; its answer goes back in the retry.
    let sampled = bounded("sample", client.call("sample", json!({})))
        .await
        .unwrap();
    assert_eq!(
        result_text(&sampled),
        format!("sampled: {}", portcullis_tests::client::SAMPLED_TEXT)
    );
    assert_eq!(client.sampling_count(), 1);
    assert_eq!(upstream.calls("sample"), 2, "two rounds at the upstream");
    bounded("close", client.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_client_reaches_a_stateless_server_with_its_rounds_bound_to_the_agent() {
    let upstream = TestUpstream::start_stateless_only().await;
    let (_app, url, key) = stateless_only_server(&upstream).await;
    let client = bounded("connect", connect_with(&url, Some(&key), Era::Stateless))
        .await
        .unwrap();
    let tools = bounded("tools/list", client.list_all_tools())
        .await
        .unwrap();
    assert!(!tools.iter().any(|t| t.name == "delete_image_set"));
    let echoed = bounded("echo", client.call("echo", json!({"text": "modern"})))
        .await
        .unwrap();
    assert_eq!(result_text(&echoed), "modern");
    let sampled = bounded("sample", client.call("sample", json!({})))
        .await
        .unwrap();
    assert_eq!(
        result_text(&sampled),
        format!("sampled: {}", portcullis_tests::client::SAMPLED_TEXT)
    );
    assert_eq!(upstream.calls("sample"), 2, "the upstream's own two rounds");
    bounded("close", client.close()).await.unwrap();

    // The upstream's requestState reaches the client only inside a token bound to the agent.
    let s = Stateless {
        url: &url,
        key: &key,
    };
    let v = "2026-07-28";
    let headers = [
        ("mcp-protocol-version", v),
        ("mcp-method", "tools/call"),
        ("mcp-name", "sample"),
    ];
    let (status, body) = s
        .post(
            call("sample", json!({}), Some(Stateless::envelope(v))),
            &headers,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["resultType"], "input_required", "{body}");
    let state = body["result"]["requestState"].as_str().unwrap();
    assert!(state.starts_with("pcr_"), "{body}");
    assert_ne!(state, "sample-round-1");

    // The token continues that call only: not another tool, not other arguments.
    for (tool, args) in [("echo", json!({"text": "x"})), ("sample", json!({"n": 1}))] {
        let mut other = call(tool, args, Some(Stateless::envelope(v)));
        other["params"]["requestState"] = json!(state);
        other["params"]["inputResponses"] = json!({"sample": {}});
        let (status, body) = s
            .post(
                other,
                &[
                    ("mcp-protocol-version", v),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", tool),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["error"]["code"], -32602, "{tool}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("another call"),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_stream_cancels_the_call_at_a_handshake_upstream() {
    use futures_util::StreamExt as _;
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow"})),
    )
    .await;
    let v = "2026-07-28";
    let mut meta = Stateless::envelope(v);
    meta["progressToken"] = json!("p-1");
    let body = call(
        "progress",
        json!({"steps": 50, "pause_ms": 100}),
        Some(meta),
    );
    let response = reqwest::Client::new()
        .post(gw.mcp_url())
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", v)
        .header("mcp-method", "tools/call")
        .header("mcp-name", "progress")
        .bearer_auth(&gw.agent_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut bytes = response.bytes_stream();
    // The first progress notification: the call is running upstream.
    let first = bounded("the first progress event", bytes.next())
        .await
        .expect("an event")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("notifications/progress"),
        "{first:?}"
    );
    drop(bytes);
    let cancelled = portcullis_tests::console::eventually(
        "the upstream is told the call is cancelled",
        STEP,
        || async { (!upstream.cancelled().is_empty()).then(|| upstream.cancelled()) },
    )
    .await;
    assert_eq!(cancelled, vec![json!(7)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_clients_cancellation_closes_the_call_at_a_stateless_server() {
    use futures_util::StreamExt as _;
    let upstream = TestUpstream::start_stateless_only().await;
    let (_app, url, key) = stateless_only_server(&upstream).await;
    let session = gateway::initialize(&url, &key).await;
    let response = gateway::rpc(
        &url,
        &key,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": "progress", "arguments": {"steps": 50, "pause_ms": 100},
            "_meta": {"progressToken": "p-7"}}}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut bytes = response.bytes_stream();
    let first = bounded("the first progress event", bytes.next())
        .await
        .expect("an event")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("notifications/progress"),
        "{first:?}"
    );
    let cancelled = gateway::rpc(
        &url,
        &key,
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
               "params": {"requestId": 7, "reason": "changed my mind"}}),
    )
    .await;
    assert_eq!(cancelled.status(), StatusCode::ACCEPTED);
    // The stream ends without the call's result (50 steps would take 5 s more).
    let mut rest = Vec::new();
    bounded("the end of the stream", async {
        while let Some(chunk) = bytes.next().await {
            rest.extend_from_slice(&chunk.unwrap());
        }
    })
    .await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("\"result\""), "{rest}");
    assert!(!rest.contains("done"), "{rest}");
}
