//! A fleet of native processes, as the compose `scale` profile runs it: `portcullis console`,
//! two `portcullis gateway` processes, one PostgreSQL, one Redis and one secret key. A client's
//! session moves between the gateways; a publish in the console reaches both within 1 s; an
//! agent revoked in the console is refused by both within 1 s; a rate limit is shared.

use std::time::{Duration, Instant};

use portcullis_tests::console::{Api, eventually};
use portcullis_tests::gateway::{call_text, initialize, message_of, redis_url, rpc};
use portcullis_tests::process::{Fleet, new_secret_key};
use portcullis_tests::upstream::TestUpstream;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The tool names a `tools/list` on `url` shows in `session`.
async fn listed(url: &str, key: &str, session: &str) -> Vec<String> {
    let resp = rpc(
        url,
        key,
        Some(session),
        json!({"jsonrpc": "2.0", "id": 90, "method": "tools/list"}),
    )
    .await;
    let message = message_of(resp, 90).await;
    message["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{message}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_and_two_gateways_share_sessions_publishes_revocations_and_limits() {
    let db = portcullis_store::testing::fresh_database().await.unwrap();
    let upstream = TestUpstream::start().await;
    let fleet = Fleet {
        bin: env!("CARGO_BIN_EXE_portcullis").into(),
        database_url: db.url(),
        secret_key: new_secret_key(),
        redis_url: Some(redis_url()),
    };
    let (console, g1, g2) = tokio::join!(
        fleet.start("console"),
        fleet.start("gateway"),
        fleet.start("gateway")
    );
    let api = Api::new(&console.url);

    // Set up through the console process only.
    let admin = api.signup("ops@fleet.test", "Fleet").await;
    let org = admin.slug.clone();
    let server = api
        .register(&admin.token, &org, "tools", &upstream.url)
        .await;
    let sid = server["id"].as_str().unwrap().to_owned();
    let publish = |policy: Value| {
        let api = api.clone();
        let (token, org, sid) = (admin.token.clone(), org.clone(), sid.clone());
        async move { api.publish_policy(&token, &org, &sid, None, &policy).await }
    };
    publish(json!({"version": "1", "default": "allow",
                   "tools": {"echo": {"rate_limit": {"max": 4, "window": "minute", "scope": "agent"}}}}))
    .await;
    let (agent_id, key) = api.create_agent(&admin.token, &org, "ci-runner").await;
    let url1 = format!("{}/mcp/{sid}", g1.url);
    let url2 = format!("{}/mcp/{sid}", g2.url);

    // A session opened on gateway 1 continues on gateway 2 and back; the limit of 4 per agent
    // is counted once across both (Redis).
    let session = initialize(&url1, &key).await;
    let mut texts = Vec::new();
    for (i, url) in [&url1, &url2, &url1, &url2, &url1].into_iter().enumerate() {
        texts.push(
            call_text(
                url,
                &key,
                &session,
                i as u64 + 1,
                "echo",
                json!({"text": "hi"}),
            )
            .await,
        );
    }
    assert!(texts[..4].iter().all(|t| t.contains("hi")), "{texts:?}");
    assert!(texts[4].starts_with("[RATE LIMITED] echo"), "{texts:?}");
    assert_eq!(upstream.calls("echo"), 4);

    // A publish in the console reaches both gateways within 1 s: the hidden tool disappears
    // from the list each of them serves.
    assert!(
        listed(&url1, &key, &session)
            .await
            .contains(&"delete_image_set".to_owned())
    );
    let published = Instant::now();
    publish(json!({"version": "1", "default": "allow", "hide": ["delete_image_set"]})).await;
    for url in [&url1, &url2] {
        eventually(
            "the publish reaches the gateway",
            Duration::from_secs(1),
            || async {
                (!listed(url, &key, &session)
                    .await
                    .contains(&"delete_image_set".to_owned()))
                .then_some(())
            },
        )
        .await;
    }
    let reached = published.elapsed();
    assert!(reached < Duration::from_secs(1), "publish took {reached:?}");

    // An agent revoked in the console is refused by both within 1 s.
    let (status, _) = api
        .delete(
            &format!("/api/v1/orgs/{org}/agents/{agent_id}"),
            &admin.token,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let revoked = Instant::now();
    for url in [&url1, &url2] {
        eventually(
            "the revocation reaches the gateway",
            Duration::from_secs(1),
            || async {
                let resp = rpc(
                    url,
                    &key,
                    Some(&session),
                    json!({"jsonrpc": "2.0", "id": 99, "method": "tools/list"}),
                )
                .await;
                (resp.status() == StatusCode::UNAUTHORIZED).then_some(())
            },
        )
        .await;
    }
    let refused = revoked.elapsed();
    assert!(
        refused < Duration::from_secs(1),
        "revocation took {refused:?}"
    );
    assert_eq!(
        upstream.calls("echo"),
        4,
        "nothing reached the upstream after"
    );

    // Every process logged in JSON and none logged the agent key or the secret key.
    for p in [&console, &g1, &g2] {
        let log = p.log_text();
        assert!(
            !log.contains(&key) && !log.contains(&fleet.secret_key),
            "secret in {}",
            p.log.display()
        );
    }
}
