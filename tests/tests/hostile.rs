//! Hostile requests, table-driven, against the gateway and the console of one running app:
//! each gets the right status and error shape, nothing crashes, nothing is stored, and the app
//! keeps serving ordinary calls afterwards.

use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine as _;
use portcullis_store::crypto::{SecretKey, hmac_sha256};
use portcullis_tests::console::{TestApp, eventually};
use portcullis_tests::gateway::{call_text, initialize};
use portcullis_tests::upstream::TestUpstream;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A request of the table.
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: StatusCode,
    /// Where the answer is JSON: the error code (console) or JSON-RPC error code (gateway).
    code: Option<Value>,
}

fn case(name: &'static str, method: Method, path: String, status: StatusCode) -> Case {
    Case {
        name,
        method,
        path,
        headers: Vec::new(),
        body: Vec::new(),
        status,
        code: None,
    }
}

impl Case {
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Case {
        self.headers.push((name, value.into()));
        self
    }
    fn body(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.body = body.into();
        self
    }
    fn code(mut self, code: Value) -> Case {
        self.code = Some(code);
        self
    }
}

/// An HS256 token signed with the console's key, with the claims given.
fn jwt(secret: &SecretKey, header: &Value, claims: &Value) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let input = format!("{}.{}", b64(header), b64(claims));
    let signature = hmac_sha256(&secret.derive("console-jwt"), input.as_bytes());
    format!(
        "{input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Sends raw bytes on a new connection; answers the raw response.
fn raw(addr: &str, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_the_right_answer_and_change_nothing() {
    let app = TestApp::start().await;
    let upstream = TestUpstream::start().await;
    let alice = app.signup("alice@acme.test", "Acme").await;
    let mallory = app.signup("mallory@evil.test", "Evil").await;
    let server = app
        .register(&alice.token, "acme", "tools", &upstream.url)
        .await;
    let sid = server["id"].as_str().unwrap().to_owned();
    let evil_server = app
        .register(&mallory.token, "evil", "bait", &upstream.url)
        .await;
    let evil_sid = evil_server["id"].as_str().unwrap().to_owned();
    app.publish_policy(
        &alice.token,
        "acme",
        &sid,
        None,
        &json!({"version": "1", "default": "allow",
        "tools": {"deploy_webapp": {"action": "require_approval"}}}),
    )
    .await;
    let (_, key) = app.create_agent(&alice.token, "acme", "ci").await;
    let (_, other_key) = app.create_agent(&alice.token, "acme", "other").await;
    let mcp = format!("/mcp/{sid}");
    let session = initialize(&format!("{}{mcp}", app.base_url), &key).await;
    let other_session = initialize(&format!("{}{mcp}", app.base_url), &other_key).await;
    let secret = SecretKey::parse(&app.secret_key).unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64| {
        json!({"sub": alice.user_id, "iat": now - 7200, "exp": exp,
               "iss": "portcullis", "aud": "portcullis-console"})
    };
    let stale = jwt(
        &secret,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims(now - 3600),
    );
    let fresh = jwt(
        &secret,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims(now + 600),
    );
    let unsigned = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims(now + 600).to_string())
    );
    let other_key_token = jwt(
        &SecretKey::generate().unwrap(),
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims(now + 600),
    );
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#,
        "x".repeat(10 * 1024 * 1024)
    );
    let mut invalid_utf8 = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","x":""#.to_vec();
    invalid_utf8.extend([0xff, 0xfe, 0xc3, 0x28]);
    invalid_utf8.extend(br#""}"#);
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}})
    .to_string();
    let json_rpc = |m: &str| json!({"jsonrpc": "2.0", "id": 1, "method": m}).to_string();
    let bearer = |t: &str| format!("Bearer {t}");
    let accept = "application/json, text/event-stream";
    let api = "/api/v1/orgs/acme";

    let cases = vec![
        // The gateway.
        case(
            "path traversal in the server id",
            Method::POST,
            "/mcp/..%2F..%2Fapi%2Fv1%2Fme".into(),
            StatusCode::NOT_FOUND,
        )
        .header("authorization", bearer(&key))
        .header("accept", accept)
        .body(json_rpc("tools/list")),
        case(
            "SQL in the server id",
            Method::POST,
            "/mcp/'%20OR%201=1--".into(),
            StatusCode::NOT_FOUND,
        )
        .header("authorization", bearer(&key))
        .header("accept", accept)
        .body(json_rpc("tools/list")),
        case(
            "SQL in the agent key",
            Method::POST,
            mcp.clone(),
            StatusCode::UNAUTHORIZED,
        )
        .header("authorization", bearer("pcl_' OR '1'='1"))
        .header("accept", accept)
        .body(json_rpc("tools/list")),
        case(
            "another organization's server with our key",
            Method::POST,
            format!("/mcp/{evil_sid}"),
            StatusCode::NOT_FOUND,
        )
        .header("authorization", bearer(&key))
        .header("accept", accept)
        .header("content-type", "application/json")
        .body(initialize.clone()),
        case(
            "10 MB of JSON",
            Method::POST,
            mcp.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
        .header("authorization", bearer(&key))
        .header("accept", accept)
        .header("content-type", "application/json")
        .header("mcp-session-id", session.clone())
        .body(huge.clone()),
        case(
            "JSON nested 100,000 deep",
            Method::POST,
            mcp.clone(),
            StatusCode::BAD_REQUEST,
        )
        .header("authorization", bearer(&key))
        .header("accept", accept)
        .header("content-type", "application/json")
        .header("mcp-session-id", session.clone())
        .body(nested.clone())
        .code(json!(-32700)),
        case(
            "invalid UTF-8",
            Method::POST,
            mcp.clone(),
            StatusCode::BAD_REQUEST,
        )
        .header("authorization", bearer(&key))
        .header("accept", accept)
        .header("content-type", "application/json")
        .header("mcp-session-id", session.clone())
        .body(invalid_utf8.clone())
        .code(json!(-32700)),
        case(
            "another agent's session id",
            Method::POST,
            mcp.clone(),
            StatusCode::NOT_FOUND,
        )
        .header("authorization", bearer(&key))
        .header("accept", accept)
        .header("content-type", "application/json")
        .header("mcp-session-id", other_session.clone())
        .body(json_rpc("tools/list")),
        case(
            "a forged session id",
            Method::POST,
            mcp.clone(),
            StatusCode::NOT_FOUND,
        )
        .header("authorization", bearer(&key))
        .header("accept", accept)
        .header("content-type", "application/json")
        .header("mcp-session-id", format!("{session}x"))
        .body(json_rpc("tools/list")),
        // The console's API.
        case(
            "a stale token",
            Method::GET,
            "/api/v1/me".into(),
            StatusCode::UNAUTHORIZED,
        )
        .header("authorization", bearer(&stale))
        .code(json!("unauthorized")),
        case(
            "a token with alg none",
            Method::GET,
            "/api/v1/me".into(),
            StatusCode::UNAUTHORIZED,
        )
        .header("authorization", bearer(&unsigned))
        .code(json!("unauthorized")),
        case(
            "a token signed with another key",
            Method::GET,
            "/api/v1/me".into(),
            StatusCode::UNAUTHORIZED,
        )
        .header("authorization", bearer(&other_key_token))
        .code(json!("unauthorized")),
        case(
            "SQL in the organization slug",
            Method::GET,
            "/api/v1/orgs/acme'%3B%20DROP%20TABLE%20users--/servers".into(),
            StatusCode::NOT_FOUND,
        )
        .header("authorization", bearer(&alice.token))
        .code(json!("not_found")),
        case(
            "path traversal in a server id",
            Method::GET,
            format!("{api}/servers/..%2F..%2Fme"),
            StatusCode::NOT_FOUND,
        )
        .header("authorization", bearer(&alice.token))
        .code(json!("not_found")),
        case(
            "another organization's server",
            Method::GET,
            format!("{api}/servers/{evil_sid}"),
            StatusCode::NOT_FOUND,
        )
        .header("authorization", bearer(&alice.token))
        .code(json!("not_found")),
        case(
            "10 MB policy",
            Method::PUT,
            format!("{api}/servers/{sid}/policy"),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
        .header("authorization", bearer(&alice.token))
        .header("content-type", "application/json")
        .body(huge),
        case(
            "a policy nested 100,000 deep",
            Method::PUT,
            format!("{api}/servers/{sid}/policy"),
            StatusCode::BAD_REQUEST,
        )
        .header("authorization", bearer(&alice.token))
        .header("content-type", "application/json")
        .body(nested),
        case(
            "invalid UTF-8 at sign-up",
            Method::POST,
            "/api/v1/signup".into(),
            StatusCode::BAD_REQUEST,
        )
        .header("content-type", "application/json")
        .body(
            [
                &br#"{"email":"a@b.test","password":"long enough pw","organization":""#[..],
                &[0xff, 0xfe, 0xc3, 0x28],
                br#""}"#,
            ]
            .concat(),
        ),
        case(
            "a header injection attempt in the token",
            Method::GET,
            "/api/v1/me".into(),
            StatusCode::UNAUTHORIZED,
        )
        .header(
            "authorization",
            bearer(&format!("{fresh}%0d%0aSet-Cookie:%20evil=1")),
        ),
        // The pages.
        case(
            "a forged session cookie",
            Method::GET,
            "/app/acme".into(),
            StatusCode::SEE_OTHER,
        )
        .header("cookie", "pcl_session=eyJhbGciOiJub25lIn0.e30."),
        case(
            "a form post without the CSRF token",
            Method::POST,
            format!("/app/acme/servers/{sid}/delete"),
            StatusCode::FORBIDDEN,
        )
        .header("cookie", format!("pcl_session={}", alice.token))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("confirm=1"),
    ];
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for c in cases {
        let mut request = http.request(c.method.clone(), format!("{}{}", app.base_url, c.path));
        for (name, value) in &c.headers {
            request = request.header(*name, value);
        }
        let (status, text) = if c.status == StatusCode::PAYLOAD_TOO_LARGE {
            // A server refusing a body it has not read closes the connection, and a client
            // still writing the body may lose the answer to the reset: announce the body with
            // `Expect: 100-continue` and send it only if asked (the refusal comes first).
            let headers: Vec<(&str, &str)> =
                c.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            portcullis_tests::console::refused_before_the_body(
                &app.base_url,
                c.method.as_str(),
                &c.path,
                &headers,
                c.body.len(),
            )
            .await
        } else {
            let response = request
                .body(c.body.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("{}: no answer: {e}", c.name));
            let status = response.status();
            (status, response.text().await.unwrap_or_default())
        };
        assert_eq!(status, c.status, "{}: {text}", c.name);
        assert!(!text.contains("evil=1"), "{}: reflected", c.name);
        if let Some(code) = &c.code {
            let body: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{}: not JSON: {text}", c.name));
            let found = body["error"]["code"].clone();
            assert_eq!(&found, code, "{}: {body}", c.name);
        }
    }

    // A fresh token of the right key works (the table's refusals were about the token).
    let (status, _) = app.get("/api/v1/me", &fresh).await;
    assert_eq!(status, StatusCode::OK);

    // Header injection on the wire: the extra line is a header of the request, never of the
    // answer.
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        raw(
            &addr,
            b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\nX-Forwarded-For: 1.2.3.4\r\n Set-Cookie: evil=1\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 401"),
        "{answer}"
    );
    assert!(
        !answer.to_ascii_lowercase().contains("set-cookie: evil"),
        "{answer}"
    );

    // A replayed approval: decided once, then 409.
    let held = tokio::spawn({
        let (url, key, session) = (
            format!("{}{mcp}", app.base_url),
            key.clone(),
            session.clone(),
        );
        async move {
            call_text(
                &url,
                &key,
                &session,
                40,
                "deploy_webapp",
                json!({"service": "web"}),
            )
            .await
        }
    });
    let approval: Value = eventually("held", Duration::from_secs(10), || async {
        let (_, body) = app.get(&format!("{api}/approvals"), &alice.token).await;
        body["approvals"]
            .as_array()
            .and_then(|a| a.first().cloned())
    })
    .await;
    let approve = format!(
        "{api}/approvals/{}/approve",
        approval["id"].as_str().unwrap()
    );
    let (status, _) = app.post(&approve, &alice.token, &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(held.await.unwrap(), "deployed web");
    let (status, body) = app.post(&approve, &alice.token, &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        upstream.calls("deploy_webapp"),
        1,
        "approved once, forwarded once"
    );
    // Mallory cannot decide Acme's approvals either.
    let (status, _) = app
        .post(
            &approve.replace("/acme/", "/evil/"),
            &mallory.token,
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Nothing of the table was stored, and the app still serves ordinary calls.
    let servers: i64 = sqlx::query_scalar("SELECT count(*) FROM servers")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(servers, 2);
    let text = call_text(
        &format!("{}{mcp}", app.base_url),
        &key,
        &session,
        50,
        "echo",
        json!({"text": "still here"}),
    )
    .await;
    assert_eq!(text, "still here");
}
