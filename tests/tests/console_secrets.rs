//! Secrets stay secret: no password, agent key or credential header value appears in any
//! response (beyond the one that hands out a new key), any log line (at TRACE, every crate), or
//! the database in clear text. Its own test binary, because it installs the global log
//! subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};

use portcullis_tests::client::{self, result_text};
use portcullis_tests::console::TestApp;
use portcullis_tests::upstream::TestUpstream;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Every log line of the process, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Captured {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    captured
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_responses_logs_or_the_database() {
    let logs = capture_logs();
    let app = TestApp::start().await;
    let mut responses: Vec<Value> = Vec::new();

    let password = "correct horse battery staple 9431";
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/signup",
            None,
            Some(
                &json!({"email": "alice@acme.test", "password": password, "organization": "Acme"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let token = body["token"].as_str().unwrap().to_owned();
    responses.push(body);
    let (_, body) = app
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(&json!({"email": "alice@acme.test", "password": password})),
        )
        .await;
    responses.push(body);
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(&json!({"email": "alice@acme.test", "password": "almost the password"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    responses.push(body);

    let upstream = TestUpstream::start().await;
    let credential = "Bearer upstream-credential-7Hq2PzW9";
    let api_key = "api-key-value-Kx81Lm02";
    let (status, server) = app
        .post(
            "/api/v1/orgs/acme/servers",
            &token,
            &json!({"name": "images", "url": upstream.url,
                    "headers": {"Authorization": credential, "X-Api-Key": api_key}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{server}");
    assert_eq!(
        server["header_names"],
        json!(["Authorization", "X-Api-Key"])
    );
    let sid = server["id"].as_str().unwrap().to_owned();
    responses.push(server.clone());
    let (_, body) = app
        .get(&format!("/api/v1/orgs/acme/servers/{sid}"), &token)
        .await;
    responses.push(body);
    let (_, body) = app.get("/api/v1/orgs/acme/servers", &token).await;
    responses.push(body);
    let (_, body) = app
        .post(
            &format!("/api/v1/orgs/acme/servers/{sid}/discover"),
            &token,
            &json!({}),
        )
        .await;
    responses.push(body);

    let (_, created) = app
        .post("/api/v1/orgs/acme/agents", &token, &json!({"name": "bot"}))
        .await;
    let first_key = created["key"].as_str().unwrap().to_owned();
    let aid = created["id"].as_str().unwrap().to_owned();
    let (_, rotated) = app
        .post(
            &format!("/api/v1/orgs/acme/agents/{aid}/rotate"),
            &token,
            &json!({}),
        )
        .await;
    let key = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(key, first_key);
    let (_, body) = app.get("/api/v1/orgs/acme/agents", &token).await;
    responses.push(body);

    // The credentials are used: the upstream receives them through the gateway.
    app.put(
        &format!("/api/v1/orgs/acme/servers/{sid}/policy"),
        &token,
        &json!({"version": "1", "default": "allow"}),
    )
    .await;
    app.post(
        &format!("/api/v1/orgs/acme/servers/{sid}/policy/publish"),
        &token,
        &json!({}),
    )
    .await;
    let mcp = client::connect(server["gateway_url"].as_str().unwrap(), Some(&key))
        .await
        .unwrap();
    let echoed = mcp.call("echo", json!({"text": "hello"})).await.unwrap();
    assert_eq!(result_text(&echoed), "hello");
    mcp.close().await.unwrap();
    assert!(
        upstream
            .authorization_headers()
            .iter()
            .any(|h| h.as_deref() == Some(credential)),
        "the upstream never received the stored credential"
    );
    // A rotated-out key is refused (within the 1 s revocation promise).
    assert_eq!(
        portcullis_tests::console::wait_until_refused(
            &app,
            server["gateway_url"].as_str().unwrap(),
            &first_key
        )
        .await,
        StatusCode::UNAUTHORIZED
    );

    let secrets = [
        password,
        credential,
        "upstream-credential-7Hq2PzW9",
        api_key,
        &first_key,
        &key,
    ];
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();

    // Responses (besides the two that hand out a key, once each).
    let responses = serde_json::to_string(&responses).unwrap();
    for secret in secrets {
        assert!(
            !responses.contains(secret),
            "a response contains {secret:?}"
        );
    }
    assert!(created.to_string().contains(&first_key) && !created.to_string().contains(&key));

    // The database, every table as text.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 10, "{tables:?}");
    let mut dump = String::new();
    for table in &tables {
        let rows: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT string_agg(t::text, E'\\n') FROM \"{table}\" t"
        )))
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        dump.push_str(&rows.unwrap_or_default());
    }
    assert!(
        dump.contains("$argon2id$"),
        "passwords are stored as Argon2id hashes"
    );
    for secret in secrets {
        assert!(
            !dump.contains(secret),
            "the database holds {secret:?} in clear"
        );
        assert!(
            !dump.contains(&hex(secret)),
            "the database holds {secret:?} as hex"
        );
    }

    // Every log line.
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("account created"), "the capture works");
    assert!(logs.contains("agent key rotated"));
    // One span per MCP request, carrying who, what and the decision.
    let decided = logs
        .lines()
        .find(|l| l.contains("decided") && l.contains("tool=\"echo\""))
        .unwrap_or_else(|| panic!("no decision line for echo in:\n{logs}"));
    for field in [
        "mcp{",
        "org=",
        "server=",
        "agent=",
        "method=\"tools/call\"",
        "decision=\"allow\"",
    ] {
        assert!(decided.contains(field), "{field} missing from {decided}");
    }
    for secret in secrets {
        assert!(!logs.contains(secret), "a log line contains {secret:?}");
    }
}
