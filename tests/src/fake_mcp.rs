//! A minimal MCP server (JSON answers, no sessions) whose tool list a test changes, beside routes
//! that fail in the ways discovery must explain: `/mcp` (MCP), `/html` (a web page), `/hang`
//! (never answers); anything else is 404.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::StatusCode as AxumStatus;
use axum::response::IntoResponse;
use axum::routing::{any, post};
use serde_json::{Value, json};

pub struct FakeMcp {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    tools: Arc<Mutex<Vec<Value>>>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeMcp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tool definition with one string parameter, `id`.
pub fn fake_tool(name: &str, description: &str) -> Value {
    json!({"name": name, "description": description,
           "inputSchema": {"type": "object", "properties": {"id": {"type": "string"}}}})
}

impl FakeMcp {
    pub async fn start(tools: Vec<Value>) -> FakeMcp {
        let tools = Arc::new(Mutex::new(tools));
        let shared = tools.clone();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        let app = Router::new()
            .route(
                "/mcp",
                post(move |body: axum::Json<Value>| {
                    let tools = shared.clone();
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async move { answer(&body.0, &tools) }
                }),
            )
            .route(
                "/html",
                any(|| async { axum::response::Html("<html><body>Welcome</body></html>") }),
            )
            .route("/hang", any(std::future::pending::<String>));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        FakeMcp {
            url,
            tools,
            requests,
            task,
        }
    }

    /// The MCP endpoint.
    pub fn mcp(&self) -> String {
        format!("{}/mcp", self.url)
    }

    /// How many requests reached `/mcp`.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replaces what `tools/list` answers.
    pub fn set_tools(&self, tools: Vec<Value>) {
        *self.tools.lock().unwrap() = tools;
    }
}

fn answer(request: &Value, tools: &Mutex<Vec<Value>>) -> axum::response::Response {
    let id = request["id"].clone();
    let result = match request["method"].as_str() {
        Some("initialize") => json!({"protocolVersion": "2025-06-18",
                                     "capabilities": {"tools": {}},
                                     "serverInfo": {"name": "fake", "version": "1"}}),
        Some("tools/list") => json!({"tools": *tools.lock().unwrap()}),
        _ if id.is_null() => return AxumStatus::ACCEPTED.into_response(),
        _ => {
            return axum::Json(json!({"jsonrpc": "2.0", "id": id,
                                     "error": {"code": -32601, "message": "no such method"}}))
            .into_response();
        }
    };
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}
