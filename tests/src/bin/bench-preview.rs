//! The impact-preview benchmark: with 100,000 recorded `tools/call` events of one server over
//! the last 7 days, how long `POST …/policy/preview` takes to replay them against a 50-rule
//! draft with globs and conditions. See docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release -p portcullis-tests --bin bench-preview
//! target/release/bench-preview --events 100000 --rounds 10
//! ```
//!
//! Two histories are measured in one run, on two servers of one organization: argument values
//! stored and every call's values distinct (the worst case: nothing groups, every call is
//! evaluated), and argument keys only (calls group by tool, agent and outcome).

use std::time::{Duration, Instant};

use chrono::Utc;
use portcullis_store::activity::{NewEvent, insert_batch};
use portcullis_tests::bench::policy;
use portcullis_tests::console::TestApp;
use portcullis_tests::fake_mcp::{FakeMcp, fake_tool};
use serde_json::{Value, json};
use uuid::Uuid;

fn arg(name: &str, default: usize) -> usize {
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == name {
            return it.next().and_then(|v| v.parse().ok()).unwrap_or(default);
        }
    }
    default
}

/// Seeds `n` calls of `server_id` spread over the last 7 days: 40 tool names (rules, globs,
/// conditions, hidden, unlisted), 20 agents, mixed outcomes.
async fn seed(
    app: &TestApp,
    org_id: Uuid,
    server_id: Uuid,
    agents: &[Uuid],
    n: usize,
    values: bool,
) {
    let tools: Vec<String> = (0..10)
        .map(|i| format!("tool_{i:02}"))
        .chain((0..5).map(|i| format!("group_{i:02}_x")))
        .chain((0..7).map(|i| format!("refund_{i}")))
        .chain(
            [
                "echo",
                "delete_repo",
                "admin_reset",
                "unlisted_a",
                "unlisted_b",
            ]
            .map(String::from),
        )
        .collect();
    let decisions = [
        "allow",
        "allow",
        "allow",
        "deny",
        "hidden",
        "rate_limited",
        "approval_requested",
    ];
    let now = Utc::now();
    let span_ms = 7 * 24 * 3600 * 1000 - 60_000;
    let mut batch = Vec::with_capacity(1000);
    for i in 0..n {
        let tool = &tools[i % tools.len()];
        let arguments = if tool.starts_with("refund") {
            json!({"amount": (i % 300) as i64, "order": i})
        } else {
            json!({"text": format!("call {i}"), "id": i})
        };
        let agent = agents[i % agents.len()];
        batch.push(NewEvent {
            id: Uuid::now_v7(),
            org_id,
            at: now - chrono::Duration::milliseconds((i as i64 * 7919) % span_ms),
            server_id: Some(server_id),
            agent_id: Some(agent),
            agent_name: Some(format!("agent-{}", i % agents.len())),
            session: Some(format!("s{}", i % 200)),
            method: "tools/call".into(),
            tool: Some(tool.clone()),
            argument_keys: arguments
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default(),
            arguments: values.then_some(arguments),
            decision: decisions[i % decisions.len()].into(),
            rule: Some("/default".into()),
            reason: None,
            policy_id: None,
            policy_version: Some(1),
            latency_ms: Some(3.0),
            upstream_status: Some(200),
            policy_agent_id: None,
            shadow: None,
        });
        if batch.len() == 1000 {
            insert_batch(&app.db.pool, &batch).await.expect("insert");
            batch.clear();
        }
    }
    insert_batch(&app.db.pool, &batch).await.expect("insert");
}

#[tokio::main]
async fn main() {
    let events = arg("--events", 100_000);
    let rounds = arg("--rounds", 10);
    let app = TestApp::start().await;
    let fake = FakeMcp::start(vec![fake_tool("echo", "Echo.")]).await;
    let admin = app.signup("bench@acme.test", "Acme").await;
    let org_id: Uuid = admin.org_id.parse().unwrap();
    let mut agents = Vec::new();
    for i in 0..20 {
        let (id, _) = app
            .create_agent(&admin.token, "acme", &format!("agent-{i}"))
            .await;
        agents.push(id.parse::<Uuid>().unwrap());
    }
    let mut servers = Vec::new();
    for (name, values) in [("with values", true), ("keys only", false)] {
        let server = app.register(&admin.token, "acme", name, &fake.mcp()).await;
        let sid = server["id"].as_str().unwrap().to_owned();
        let (status, body) = app
            .put(
                &format!("/api/v1/orgs/acme/servers/{sid}/policy"),
                &admin.token,
                &policy(),
            )
            .await;
        assert!(status.is_success(), "{body}");
        let started = Instant::now();
        seed(&app, org_id, sid.parse().unwrap(), &agents, events, values).await;
        eprintln!(
            "seeded {events} events ({name}) in {:.1?}",
            started.elapsed()
        );
        servers.push((name, sid));
    }
    sqlx::query("ANALYZE activity_events")
        .execute(&app.db.pool)
        .await
        .unwrap();

    println!(
        "{events} recorded calls per server over 7 days, 50-rule draft, {rounds} sequential requests"
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "history", "p50", "max", "changed", "unknown"
    );
    for (name, sid) in &servers {
        let path = format!("/api/v1/orgs/acme/servers/{sid}/policy/preview");
        let mut times = Vec::with_capacity(rounds);
        let mut last = Value::Null;
        for _ in 0..rounds {
            let started = Instant::now();
            let (status, body) = app.post(&path, &admin.token, &json!({"days": 7})).await;
            times.push(started.elapsed());
            assert!(status.is_success(), "{body}");
            last = body;
        }
        assert_eq!(last["calls"], json!(events), "every call replayed");
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{name:<34} {:>7.0}ms {:>7.0}ms {:>9} {:>9}",
            ms(times[times.len() / 2]),
            ms(*times.last().unwrap()),
            last["changed"],
            last["unknown"]
        );
    }
    let started = Instant::now();
    for _ in 0..rounds {
        app.get("/api/v1/orgs/acme/settings", &admin.token).await;
    }
    println!(
        "{:<34} {:>7.2}ms",
        "baseline: GET settings",
        started.elapsed().as_secs_f64() * 1000.0 / rounds as f64
    );
}
