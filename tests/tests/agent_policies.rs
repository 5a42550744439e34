//! Per-agent policies, shadow mode and the impact preview, end to end: the console API, the
//! gateway and a real upstream, observed from the client and from the activity log.

use std::time::{Duration, Instant};

use chrono::Utc;
use portcullis_tests::console::{Account, TestApp, assert_error, eventually};
use portcullis_tests::gateway::{call_result, initialize};
use portcullis_tests::upstream::TestUpstream;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

struct Setup {
    app: TestApp,
    upstream: TestUpstream,
    admin: Account,
    sid: String,
    mcp_url: String,
}

async fn setup() -> Setup {
    let app = TestApp::start().await;
    let upstream = TestUpstream::start().await;
    let admin = app.signup("ada@acme.test", "Acme").await;
    let server = app
        .register(&admin.token, "acme", "tools", &upstream.url)
        .await;
    let sid = server["id"].as_str().unwrap().to_owned();
    let mcp_url = format!("{}/mcp/{sid}", app.base_url);
    Setup {
        app,
        upstream,
        admin,
        sid,
        mcp_url,
    }
}

impl Setup {
    fn path(&self, rest: &str) -> String {
        format!("/api/v1/orgs/acme/servers/{}/policy{rest}", self.sid)
    }

    /// Calls `tool` as the agent with `key` in a new session; answers the tool result.
    async fn call(&self, key: &str, tool: &str, args: Value) -> Value {
        let session = initialize(&self.mcp_url, key).await;
        call_result(&self.mcp_url, key, &session, 1, tool, args).await
    }

    /// The activity API's events for this server, newest first.
    async fn events(&self, at_least: usize, query: &str) -> Vec<Value> {
        let path = format!("/api/v1/orgs/acme/activity?server={}&{query}", self.sid);
        eventually(
            "the events are recorded",
            Duration::from_secs(10),
            || async {
                let (_, body) = self.app.get(&path, &self.admin.token).await;
                let events = body["events"].as_array().cloned().unwrap_or_default();
                (events.len() >= at_least).then_some(events)
            },
        )
        .await
    }
}

fn text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn an_agent_with_its_own_policy_gets_it_and_others_keep_the_servers() {
    let s = setup().await;
    let token = s.admin.token.clone();
    let server_policy = json!({"version": "1", "default": "allow",
                               "tools": {"deploy_webapp": {"action": "deny", "reason": "no deploys"}}});
    s.app
        .publish_policy(&token, "acme", &s.sid, None, &server_policy)
        .await;
    let (ci, ci_key) = s.app.create_agent(&token, "acme", "ci-runner").await;
    let (_bot, bot_key) = s.app.create_agent(&token, "acme", "support-bot").await;

    // Created from a copy of the server's published policy; it governs nothing until published.
    let (status, created) = s
        .app
        .post(&s.path("/agents"), &token, &json!({"agent_id": ci}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["draft"], server_policy);
    assert_eq!(created["agent_id"], json!(ci));
    assert!(created["published"].is_null());
    let (status, again) = s
        .app
        .post(&s.path("/agents"), &token, &json!({"agent_id": ci}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&again, "agent_policy_exists");

    // The CI runner may deploy and nothing else; the support bot keeps the server's policy.
    let ci_policy = json!({"version": "1", "default": "deny",
                           "tools": {"deploy_webapp": {"action": "allow"}}});
    let v = s
        .app
        .publish_policy(&token, "acme", &s.sid, Some(&ci), &ci_policy)
        .await;
    assert_eq!(v, 1);
    let deployed = eventually(
        "the agent's policy is enforced",
        Duration::from_secs(2),
        || async {
            let r = s
                .call(&ci_key, "deploy_webapp", json!({"service": "web"}))
                .await;
            (text(&r) == "deployed web").then_some(r)
        },
    )
    .await;
    assert!(deployed["isError"] != json!(true));
    let echo = s.call(&ci_key, "echo", json!({"text": "hi"})).await;
    assert!(text(&echo).starts_with("[POLICY DENIED]"), "{echo}");
    assert_eq!(echo["_meta"]["io.portcullis/policyScope"], "agent");
    assert_eq!(echo["_meta"]["io.portcullis/rule"], "/default");

    let bot_deploy = s
        .call(&bot_key, "deploy_webapp", json!({"service": "web"}))
        .await;
    assert_eq!(text(&bot_deploy), "[POLICY DENIED] no deploys");
    assert_eq!(bot_deploy["_meta"]["io.portcullis/policyScope"], "server");
    let bot_echo = s.call(&bot_key, "echo", json!({"text": "hi"})).await;
    assert!(text(&bot_echo).contains("hi"), "{bot_echo}");
    assert_eq!(s.upstream.calls("deploy_webapp"), 1);

    // The activity log says which document decided.
    let events = s.events(4, "").await;
    let scope_of = |agent: &str, tool: &str| {
        events
            .iter()
            .find(|e| e["agent"]["name"] == agent && e["tool"] == tool)
            .map(|e| (e["decision"].clone(), e["policy_scope"].clone()))
            .unwrap_or_else(|| panic!("no {agent} {tool} in {events:?}"))
    };
    assert_eq!(
        scope_of("ci-runner", "echo"),
        (json!("deny"), json!("agent"))
    );
    assert_eq!(
        scope_of("support-bot", "deploy_webapp"),
        (json!("deny"), json!("server"))
    );

    // The server's policy lists the agent's; the agent's has its own versions and simulate.
    let (_, server_view) = s.app.get(&s.path(""), &token).await;
    assert_eq!(
        server_view["agent_policies"],
        json!([{"agent_id": ci, "agent_name": "ci-runner", "version": 1}])
    );
    let (_, versions) = s
        .app
        .get(&s.path(&format!("/versions?agent={ci}")), &token)
        .await;
    assert_eq!(versions["versions"][0]["version"], 1);
    assert_eq!(versions["versions"][0]["mode"], "enforced");
    let (status, sim) = s
        .app
        .post(
            &s.path(&format!("/simulate?agent={ci}")),
            &token,
            &json!({"tool": "echo", "arguments": {"text": "x"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sim["decision"], "deny");

    // Removing it falls back to the server's policy within 1 s.
    let (status, _) = s
        .app
        .delete(&s.path(&format!("/agents/{ci}")), &token)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let removed = Instant::now();
    eventually(
        "the fallback reaches the gateway",
        Duration::from_secs(1),
        || async {
            let r = s
                .call(&ci_key, "deploy_webapp", json!({"service": "web"}))
                .await;
            (text(&r) == "[POLICY DENIED] no deploys").then_some(())
        },
    )
    .await;
    assert!(removed.elapsed() < Duration::from_secs(1));
    let (status, gone) = s.app.get(&s.path(&format!("?agent={ci}")), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&gone, "no_agent_policy");
}

#[tokio::test]
async fn agent_policies_stay_inside_their_organization() {
    let s = setup().await;
    let token = s.admin.token.clone();
    let (ci, _) = s.app.create_agent(&token, "acme", "ci-runner").await;
    let other = s.app.signup("eve@evil.test", "Evil").await;
    let (evil_agent, _) = s.app.create_agent(&other.token, "evil", "spy").await;

    // Another organization cannot see or touch this server's policies, by any route.
    for (status, body) in [
        s.app
            .post(
                &format!("/api/v1/orgs/evil/servers/{}/policy/agents", s.sid),
                &other.token,
                &json!({"agent_id": evil_agent}),
            )
            .await,
        s.app
            .get(
                &format!("/api/v1/orgs/evil/servers/{}/policy?agent={ci}", s.sid),
                &other.token,
            )
            .await,
        s.app
            .get(&s.path(&format!("?agent={ci}")), &other.token)
            .await,
    ] {
        assert!(
            matches!(status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN),
            "{status} {body}"
        );
    }
    // Nor give its agent a policy on this server.
    let (status, body) = s
        .app
        .post(&s.path("/agents"), &token, &json!({"agent_id": evil_agent}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = s
        .app
        .put(
            &s.path(&format!("?agent={evil_agent}")),
            &token,
            &json!({"version": "1", "default": "allow"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM policies WHERE agent_id = $1")
        .bind(evil_agent.parse::<Uuid>().unwrap())
        .fetch_one(&s.app.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_shadow_version_records_where_it_differs_and_changes_no_result() {
    let s = setup().await;
    let token = s.admin.token.clone();
    let (_, key) = s.app.create_agent(&token, "acme", "ci-runner").await;

    // Shadow needs an enforced version beside it.
    let (status, _) = s
        .app
        .put(
            &s.path(""),
            &token,
            &json!({"version": "1", "default": "allow"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s
        .app
        .post(&s.path("/publish"), &token, &json!({"mode": "shadow"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_error(&body, "not_published");

    s.app
        .publish_policy(
            &token,
            "acme",
            &s.sid,
            None,
            &json!({"version": "1", "default": "allow"}),
        )
        .await;
    let (status, _) = s
        .app
        .put(
            &s.path(""),
            &token,
            &json!({"version": "1", "default": "allow",
                    "tools": {"delete_image_set": {"action": "deny"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, published) = s
        .app
        .post(&s.path("/publish"), &token, &json!({"mode": "shadow"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{published}");
    assert_eq!(published["mode"], "shadow");
    assert_eq!(published["version"], 2);
    let (_, view) = s.app.get(&s.path(""), &token).await;
    assert_eq!(
        view["published"]["version"], 1,
        "the enforced version is unchanged"
    );
    assert_eq!(view["shadow"]["version"], 2);

    // Every call gets what the enforced allow-all decides.
    eventually(
        "the shadow reaches the gateway",
        Duration::from_secs(2),
        || async {
            let r = s.call(&key, "echo", json!({"text": "probe"})).await;
            let (_, body) = s
                .app
                .get(
                    &format!("/api/v1/orgs/acme/activity?server={}&limit=1", s.sid),
                    &token,
                )
                .await;
            (text(&r).contains("probe") && body["events"][0]["shadow"].is_object()).then_some(())
        },
    )
    .await;
    let before_calls = s.upstream.total_calls();
    for (tool, args) in [
        ("echo", json!({"text": "a"})),
        ("delete_image_set", json!({"name": "old"})),
        ("echo", json!({"text": "b"})),
        ("delete_image_set", json!({"name": "older"})),
        ("deploy_webapp", json!({"service": "web"})),
    ] {
        let r = s.call(&key, tool, args).await;
        assert!(r["isError"] != json!(true), "{tool}: {r}");
    }
    assert_eq!(
        s.upstream.total_calls(),
        before_calls + 5,
        "every call reached the upstream"
    );
    assert_eq!(s.upstream.calls("delete_image_set"), 2);

    // Exactly the two deletes differ, each recorded with the shadow's decision and rule.
    let differing = s.events(2, "shadow=differs").await;
    assert_eq!(differing.len(), 2, "{differing:?}");
    for e in &differing {
        assert_eq!(e["tool"], "delete_image_set");
        assert_eq!(e["decision"], "allow");
        assert_eq!(e["shadow"]["version"], 2);
        assert_eq!(e["shadow"]["decision"], "deny");
        assert_eq!(e["shadow"]["rule"], "/tools/delete_image_set");
        assert_eq!(e["shadow"]["differs"], true);
    }
    let (_, summary) = s.app.get(&s.path("/shadow"), &token).await;
    let probes = summary["calls"].as_i64().unwrap() - 5;
    assert!(probes >= 1, "{summary}");
    assert_eq!(summary["differences"], 2, "{summary}");
    assert_eq!(summary["would_deny"], 2, "{summary}");
    assert_eq!(summary["version"], 2);
    assert_eq!(summary["events"].as_array().unwrap().len(), 2);

    // The server page says so.
    let page = s
        .app
        .http
        .get(format!("{}/app/acme/servers/{}", s.app.base_url, s.sid))
        .header("cookie", format!("pcl_session={token}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!(
            "Shadow would have denied 2 of {} calls in the last 24 h",
            probes + 5
        )),
        "{page}"
    );

    // An agent with its own policy, shadowed by a version that denies echo: its calls are that
    // policy's, and stay out of the server policy's summary.
    let (ci, ci_key) = s.app.create_agent(&token, "acme", "nightly-bot").await;
    s.app
        .publish_policy(
            &token,
            "acme",
            &s.sid,
            Some(&ci),
            &json!({"version": "1", "default": "allow"}),
        )
        .await;
    let agent_path = |rest: &str| format!("{}?agent={ci}", s.path(rest));
    let (status, body) = s
        .app
        .put(
            &agent_path(""),
            &token,
            &json!({"version": "1", "default": "allow",
                    "tools": {"echo": {"action": "deny"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s
        .app
        .post(&agent_path("/publish"), &token, &json!({"mode": "shadow"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually(
        "the agent's shadow differs on a call",
        Duration::from_secs(5),
        || async {
            s.call(&ci_key, "echo", json!({"text": "ci"})).await;
            let (_, body) = s
                .app
                .get(
                    &format!(
                        "/api/v1/orgs/acme/activity?server={}&agent={ci}&limit=1",
                        s.sid
                    ),
                    &token,
                )
                .await;
            (body["events"][0]["shadow"]["differs"] == json!(true)).then_some(())
        },
    )
    .await;
    let (_, after) = s.app.get(&s.path("/shadow"), &token).await;
    assert_eq!(after["differences"], 2, "{after}");
    assert_eq!(after["would_deny"], 2, "{after}");
    assert_eq!(after["events"].as_array().unwrap().len(), 2, "{after}");

    // Stopped, calls carry no shadow any more.
    let (status, _) = s.app.delete(&s.path("/shadow"), &token).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually("the shadow stops", Duration::from_secs(2), || async {
        s.call(&key, "echo", json!({"text": "after"})).await;
        let (_, body) = s
            .app
            .get(
                &format!("/api/v1/orgs/acme/activity?server={}&limit=1", s.sid),
                &token,
            )
            .await;
        body["events"][0]["shadow"].is_null().then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_preview_replays_recorded_calls_against_a_stricter_draft() {
    let s = setup().await;
    let token = s.admin.token.clone();
    let (status, _) = s
        .app
        .put(
            "/api/v1/orgs/acme/settings",
            &token,
            &json!({"store_argument_values": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    s.app
        .publish_policy(
            &token,
            "acme",
            &s.sid,
            None,
            &json!({"version": "1", "default": "allow"}),
        )
        .await;
    let (_, ci_key) = s.app.create_agent(&token, "acme", "ci-runner").await;
    let (bot, bot_key) = s.app.create_agent(&token, "acme", "support-bot").await;
    // A history recorded by the gateway: 4 echoes and 3 deletes by CI, 2 deploys of web and
    // 1 of db by the bot.
    let calls = [
        (&ci_key, "echo", json!({"text": "a"}), 4),
        (&ci_key, "delete_image_set", json!({"name": "x"}), 3),
        (&bot_key, "deploy_webapp", json!({"service": "web"}), 2),
        (&bot_key, "deploy_webapp", json!({"service": "db"}), 1),
    ];
    for (key, tool, args, n) in &calls {
        for _ in 0..*n {
            s.call(key, tool, args.clone()).await;
        }
    }
    s.events(10, "").await;
    // And older calls recorded without their values (the setting was off then): the draft's
    // condition on `service` cannot be told for them.
    let org_id: Uuid = s.admin.org_id.parse().unwrap();
    let old: Vec<_> = (0..3)
        .map(|i| portcullis_store::activity::NewEvent {
            id: Uuid::now_v7(),
            org_id,
            at: Utc::now() - chrono::Duration::hours(30 + i),
            server_id: Some(s.sid.parse().unwrap()),
            agent_id: Some(bot.parse().unwrap()),
            agent_name: Some("support-bot".into()),
            session: None,
            method: "tools/call".into(),
            tool: Some("deploy_webapp".into()),
            argument_keys: vec!["service".into()],
            arguments: None,
            decision: "allow".into(),
            rule: Some("/default".into()),
            reason: None,
            policy_id: None,
            policy_version: Some(1),
            latency_ms: Some(1.0),
            upstream_status: Some(200),
            policy_agent_id: None,
            shadow: None,
        })
        .collect();
    portcullis_store::activity::insert_batch(&s.app.db.pool, &old)
        .await
        .unwrap();

    let draft = json!({"version": "1", "default": "allow", "hide": ["delete_*"],
                       "tools": {"deploy_webapp": {"action": "allow", "deny_if": [{"conditions": [
                           {"path": "args.service", "op": "eq", "value": "db"}]}]}}});
    let (status, _) = s.app.put(&s.path(""), &token, &draft).await;
    assert_eq!(status, StatusCode::OK);
    let (status, p) = s
        .app
        .post(&s.path("/preview"), &token, &json!({"days": 7}))
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(
        (
            p["calls"].clone(),
            p["changed"].clone(),
            p["unknown"].clone()
        ),
        (json!(13), json!(4), json!(3)),
        "{p}"
    );
    let tool = |name: &str| {
        p["by_tool"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tool"] == name)
            .map(|t| {
                (
                    t["calls"].as_i64().unwrap(),
                    t["changed"].as_i64().unwrap(),
                    t["unknown"].as_i64().unwrap(),
                )
            })
            .unwrap()
    };
    assert_eq!(tool("echo"), (4, 0, 0));
    assert_eq!(tool("delete_image_set"), (3, 3, 0));
    assert_eq!(tool("deploy_webapp"), (6, 1, 3));
    let agent = |name: &str| {
        p["by_agent"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["agent_name"] == name)
            .map(|a| {
                (
                    a["calls"].as_i64().unwrap(),
                    a["changed"].as_i64().unwrap(),
                    a["unknown"].as_i64().unwrap(),
                )
            })
            .unwrap()
    };
    assert_eq!(agent("ci-runner"), (7, 3, 0));
    assert_eq!(agent("support-bot"), (6, 1, 3));
    let changes: Vec<(String, String, String, i64)> = p["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["tool"].as_str().unwrap().to_owned(),
                c["from"].as_str().unwrap().to_owned(),
                c["to"].as_str().unwrap().to_owned(),
                c["calls"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (
                "delete_image_set".into(),
                "allow".into(),
                "hidden".into(),
                3
            ),
            ("deploy_webapp".into(), "allow".into(), "deny".into(), 1),
        ]
    );

    // One day back, the older calls are out of the replay; a document can be given inline.
    let (_, day) = s
        .app
        .post(
            &s.path("/preview"),
            &token,
            &json!({"days": 1, "document": {"version": "1", "default": "deny"}}),
        )
        .await;
    assert_eq!(
        (day["calls"].clone(), day["changed"].clone()),
        (json!(10), json!(10)),
        "{day}"
    );
    // Bad input is refused with the error shape.
    let (status, bad) = s
        .app
        .post(&s.path("/preview"), &token, &json!({"days": 0}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&bad, "invalid_body");
    let (status, bad) = s
        .app
        .post(
            &s.path("/preview"),
            &token,
            &json!({"document": {"version": "9"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&bad, "invalid_policy");
}
