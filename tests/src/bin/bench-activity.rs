//! The activity benchmark: with 10,000 events recorded for one organization, how long the API
//! and the page take to answer the first page (newest 50), unfiltered and filtered. See
//! docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release -p portcullis-tests --bin bench-activity
//! target/release/bench-activity --events 10000 --rounds 200
//! ```
//!
//! The console runs in this process on a fresh database of the test cluster (or `DATABASE_URL`'s
//! server); requests go over loopback HTTP like a browser's.

use std::time::{Duration, Instant};

use portcullis_store::activity::{NewEvent, insert_batch};
use portcullis_tests::console::TestApp;
use portcullis_tests::fake_mcp::{FakeMcp, fake_tool};
use serde_json::json;
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn measure(
    client: &reqwest::Client,
    url: &str,
    rounds: usize,
) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(rounds);
    let mut bytes = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let response = client.get(url).send().await.expect("an answer");
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        bytes = response.bytes().await.expect("a body").len();
        times.push(started.elapsed());
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.95), bytes)
}

#[tokio::main]
async fn main() {
    let events = arg("--events", 10_000);
    let rounds = arg("--rounds", 200);
    let app = TestApp::start().await;
    let fake = FakeMcp::start(vec![fake_tool("get_ticket", "Get a ticket.")]).await;
    let admin = app.signup("bench@acme.test", "Acme").await;
    let server = app
        .register(&admin.token, "acme", "tickets", &fake.mcp())
        .await;
    let server_id: Uuid = server["id"].as_str().unwrap().parse().unwrap();
    let org_id: Uuid = admin.org_id.parse().unwrap();
    let (_, agent) = app
        .post(
            "/api/v1/orgs/acme/agents",
            &admin.token,
            &json!({"name": "bench"}),
        )
        .await;
    let agent_id: Uuid = agent["id"].as_str().unwrap().parse().unwrap();
    let decisions = ["allow", "allow", "allow", "deny", "hidden", "rate_limited"];
    let tools = [
        "get_ticket",
        "list_tickets",
        "close_ticket",
        "delete_ticket",
    ];
    let start = chrono::Utc::now() - chrono::Duration::hours(2);
    let mut batch = Vec::new();
    for i in 0..events {
        batch.push(NewEvent {
            id: Uuid::now_v7(),
            org_id,
            at: start + chrono::Duration::milliseconds(i as i64 * 500),
            server_id: Some(server_id),
            agent_id: Some(agent_id),
            agent_name: Some("bench".into()),
            session: Some(format!("s{}", i % 50)),
            method: "tools/call".into(),
            tool: Some(tools[i % tools.len()].into()),
            argument_keys: vec!["id".into()],
            arguments: None,
            decision: decisions[i % decisions.len()].into(),
            rule: Some("/default".into()),
            reason: None,
            policy_id: None,
            policy_version: Some(1),
            latency_ms: Some(3.0 + (i % 17) as f64),
            upstream_status: Some(200),
            policy_agent_id: None,
            shadow: None,
        });
        if batch.len() == 500 {
            insert_batch(&app.db.pool, &batch).await.expect("insert");
            batch.clear();
        }
    }
    insert_batch(&app.db.pool, &batch).await.expect("insert");
    sqlx::query("ANALYZE activity_events")
        .execute(&app.db.pool)
        .await
        .unwrap();

    let api = reqwest::Client::builder()
        .default_headers({
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", admin.token).parse().unwrap(),
            );
            h
        })
        .build()
        .unwrap();
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    browser
        .post(format!("{}/login", app.base_url))
        .form(&[
            ("email", admin.email.as_str()),
            ("password", admin.password.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let base = &app.base_url;
    println!("{events} events, {rounds} requests each (sequential), loopback HTTP");
    println!("{:<46} {:>9} {:>9} {:>9}", "request", "p50", "p95", "bytes");
    for (name, client, url) in [
        (
            "API first page",
            &api,
            format!("{base}/api/v1/orgs/acme/activity"),
        ),
        (
            "API first page, decision=deny",
            &api,
            format!("{base}/api/v1/orgs/acme/activity?decision=deny"),
        ),
        (
            "API first page, tool=close_ticket",
            &api,
            format!("{base}/api/v1/orgs/acme/activity?tool=close_ticket"),
        ),
        (
            "page (HTML) first page",
            &browser,
            format!("{base}/app/acme/activity"),
        ),
        (
            "page (HTML), decision=hidden",
            &browser,
            format!("{base}/app/acme/activity?decision=hidden"),
        ),
        ("baseline: GET /healthz", &api, format!("{base}/healthz")),
    ] {
        let (p50, p95, bytes) = measure(client, &url, rounds).await;
        println!(
            "{name:<46} {:>7.2}ms {:>7.2}ms {bytes:>9}",
            p50.as_secs_f64() * 1000.0,
            p95.as_secs_f64() * 1000.0
        );
    }
}
