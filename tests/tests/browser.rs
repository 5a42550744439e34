//! The whole path in a real browser (headless Chromium): sign up, add a server, build a policy
//! with the visual builder (hide one tool, deny one with a reason, rate-limit one, require
//! approval for one), publish, create a key and copy the gateway URL; then a real MCP client
//! through that URL sees exactly that policy, and a held call is approved on the approvals page. Screenshots of each step at 1280 and 390 px are
//! kept in `target/screenshots/sign_up_to_gateway_url/`.

use fantoccini::Locator;
use portcullis_tests::browser::Browser;
use portcullis_tests::client::{self, result_text};
use portcullis_tests::console::TestApp;
use portcullis_tests::upstream::TestUpstream;
use serde_json::{Value, json};

async fn select(browser: &Browser, tool: &str, state: &str) {
    browser
        .wait_for(&format!(".tool-row[data-tool=\"{tool}\"] select.state"))
        .await
        .select_by_value(state)
        .await
        .unwrap_or_else(|e| panic!("choose {state} for {tool}: {e}"));
}

async fn value(browser: &Browser, css: &str) -> String {
    browser
        .wait_for(css)
        .await
        .prop("value")
        .await
        .expect("a value")
        .unwrap_or_default()
}

async fn document(browser: &Browser) -> Value {
    serde_json::from_str(&value(browser, "#document").await).expect("the document is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_to_gateway_url() {
    let app = TestApp::start().await;
    let upstream = TestUpstream::start().await;
    let browser = Browser::start("sign_up_to_gateway_url").await;
    let b = &browser;

    // Landing → sign up.
    b.client.goto(&app.base_url).await.unwrap();
    b.wait_for(".hero").await;
    b.screenshots("01-landing").await;
    b.click(".hero a.button").await;
    b.fill("#email", "ada@example.com").await;
    b.fill("#password", "short").await;
    b.fill("#organization", "Acme").await;
    b.click("form[action='/signup'] button[type=submit]").await;
    // A weak password is refused next to its field, and what was typed is kept.
    assert!(
        b.text("#password-error")
            .await
            .contains("at least 10 characters")
    );
    assert_eq!(value(b, "#email").await, "ada@example.com");
    b.screenshots("02-signup-error").await;
    b.fill("#password", "correct horse battery").await;
    b.click("form[action='/signup'] button[type=submit]").await;
    b.wait_for(".stat").await;
    b.screenshots("03-dashboard-empty").await;

    // Add a server.
    b.click("main a.button[href$='/servers/new']").await;
    b.fill("#url", &upstream.url).await;
    b.fill("#name", "images").await;
    b.screenshots("04-add-server").await;
    b.click("form[action$='/servers/new'] button[type=submit]")
        .await;
    b.wait_for(".tabs").await;
    assert!(b.text(".flash.ok").await.contains("Server added"));
    let tools_text = b.text("table").await;
    assert!(tools_text.contains("delete_image_set") && tools_text.contains("critical"));
    b.screenshots("05-tools").await;

    // The builder: the JSON document drives it, and it drives the document.
    b.click(".tabs a[href$='/policy']").await;
    b.wait_for(".tool-row[data-tool='echo']").await;
    let mut edited = document(b).await;
    edited["tools"]["fail"] =
        json!({"action": "deny", "reason": "Failing on purpose is not allowed."});
    b.client
        .execute(
            "const t = document.getElementById('document'); t.value = arguments[0]; \
             t.dispatchEvent(new Event('input'));",
            vec![json!(serde_json::to_string_pretty(&edited).unwrap())],
        )
        .await
        .unwrap();
    assert_eq!(
        value(b, ".tool-row[data-tool='fail'] select.state").await,
        "deny"
    );
    assert_eq!(
        value(b, ".tool-row[data-tool='fail'] .reason").await,
        "Failing on purpose is not allowed."
    );
    select(b, "delete_image_set", "hide").await;
    select(b, "create_refund", "deny").await;
    b.fill(
        ".tool-row[data-tool='create_refund'] .reason",
        "Refunds go through finance.",
    )
    .await;
    select(b, "echo", "rate_limit").await;
    b.fill(".tool-row[data-tool='echo'] .max", "2").await;
    select(b, "deploy_webapp", "approval").await;
    select(b, "list_images", "allow").await;
    let doc = document(b).await;
    assert!(
        doc["hide"]
            .as_array()
            .unwrap()
            .contains(&json!("delete_image_set")),
        "{doc}"
    );
    assert_eq!(
        doc["tools"]["create_refund"],
        json!({"action": "deny", "reason": "Refunds go through finance."})
    );
    assert_eq!(
        doc["tools"]["echo"],
        json!({"rate_limit": {"max": 2, "window": "minute", "scope": "agent"}})
    );
    assert_eq!(
        doc["tools"]["deploy_webapp"],
        json!({"action": "require_approval", "approval": {"timeout": "5m"}})
    );
    assert_eq!(doc["tools"]["list_images"], json!({}));
    assert_eq!(
        doc["tools"]["fail"]["reason"],
        "Failing on purpose is not allowed."
    );
    b.screenshots("06-builder").await;
    b.click("button[value=publish]").await;
    assert!(b.text(".flash.ok").await.contains("Published version 1"));
    b.screenshots("07-published").await;

    // Connect: a key for this server, and the gateway URL.
    b.click(".tabs a[href$='/connect']").await;
    b.fill("#agent-name", "browser-agent").await;
    b.click("form[action$='/connect'] button[type=submit]")
        .await;
    let key = b.text("#new-key").await;
    let gateway_url = b.text("#gateway-url").await;
    assert!(key.starts_with("pcl_"), "{key}");
    let snippets = b.text("main").await;
    assert!(snippets.contains(&format!("claude mcp add --transport http images {gateway_url} --header \"Authorization: Bearer {key}\"")));
    b.screenshots("08-connect").await;
    b.click("[data-copy='#gateway-url']").await;
    b.client
        .wait()
        .at_most(portcullis_tests::browser::WAIT)
        .for_element(Locator::XPath("//button[text()='Copied']"))
        .await
        .expect("the copy button says so");
    b.click("a.brand").await;
    assert!(b.text("table").await.contains("v1 published"));
    b.screenshots("09-dashboard").await;

    // An MCP client through that URL sees exactly that policy.
    let mcp = client::connect(&gateway_url, Some(&key)).await.unwrap();
    let names: Vec<String> = mcp
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(!names.contains(&"delete_image_set".to_owned()), "{names:?}");
    assert!(names.contains(&"echo".to_owned()));
    let refund = mcp
        .call("create_refund", json!({"amount": 5}))
        .await
        .unwrap();
    assert_eq!(
        result_text(&refund),
        "[POLICY DENIED] Refunds go through finance."
    );
    let fail = mcp.call("fail", json!({})).await.unwrap();
    assert_eq!(
        result_text(&fail),
        "[POLICY DENIED] Failing on purpose is not allowed."
    );
    for _ in 0..2 {
        let echoed = mcp.call("echo", json!({"text": "hi"})).await.unwrap();
        assert_eq!(result_text(&echoed), "hi");
    }
    let limited = mcp.call("echo", json!({"text": "hi"})).await.unwrap();
    assert!(
        result_text(&limited).starts_with("[RATE LIMITED] echo: 2 per minute"),
        "{}",
        result_text(&limited)
    );
    let listed = mcp.call("list_images", json!({})).await.unwrap();
    assert_ne!(listed.is_error, Some(true));
    // Held for approval: the approver sees it in the browser, with its arguments, and approves.
    b.click("a[href$='/approvals']").await;
    assert!(
        b.text("main")
            .await
            .contains("Nothing is waiting for approval.")
    );
    let deploy = tokio::spawn({
        let (url, key) = (gateway_url.clone(), key.clone());
        async move {
            let mcp = client::connect(&url, Some(&key)).await.unwrap();
            let result = mcp
                .call("deploy_webapp", json!({"service": "checkout-web"}))
                .await;
            mcp.close().await.unwrap();
            result
        }
    });
    // It appears without reloading the page.
    let held = b.text(".approval").await;
    assert!(
        held.contains("deploy_webapp") && held.contains("checkout-web"),
        "{held}"
    );
    assert_eq!(upstream.calls("deploy_webapp"), 0);
    b.fill(".approval input[name=note]", "Release window is open.")
        .await;
    b.screenshots("10-approval").await;
    b.click(".approval button[value=approve]").await;
    let deployed = tokio::time::timeout(std::time::Duration::from_secs(20), deploy)
        .await
        .expect("the held call returns once approved")
        .unwrap()
        .unwrap();
    assert_ne!(deployed.is_error, Some(true), "{}", result_text(&deployed));
    assert_eq!(upstream.calls("deploy_webapp"), 1);
    assert!(
        b.text("main")
            .await
            .contains("Nothing is waiting for approval.")
    );
    b.screenshots("11-approved").await;

    // Before changing the policy: replay the calls just made against a stricter draft in the
    // editor (htmx), then give the agent a policy of its own.
    let sid = gateway_url.rsplit('/').next().unwrap().to_owned();
    b.client
        .goto(&format!("{}/app/acme/servers/{sid}/policy", app.base_url))
        .await
        .unwrap();
    b.wait_for("#tool-rows .tool-row").await;
    select(b, "echo", "deny").await;
    b.click("#preview button[hx-post]").await;
    let summary = b.text("#preview-summary").await;
    assert!(
        summary.contains("would change outcome under this document"),
        "{summary}"
    );
    assert!(b.text("#preview-result").await.contains("echo"));
    b.client
        .execute(
            "document.querySelector('#preview').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
    b.screenshots("12-preview").await;
    b.click("#policy-scope form[action$='/policy/agents'] button[type=submit]")
        .await;
    // The agent's view (only it offers to remove the agent's policy) once the page has loaded.
    b.wait_for("#policy-scope form[action$='/delete']").await;
    assert!(b.text("#policy-scope h2").await.contains("own policy"));
    b.screenshots("13-agent-policy").await;
    browser.close().await;
    assert_eq!(upstream.calls("create_refund"), 0);
    assert_eq!(upstream.calls("echo"), 2);
    mcp.close().await.unwrap();
}
