//! Headless Chromium driven through chromedriver (Debian's `chromium` and `chromium-driver`,
//! installed by `tests/conformance/setup.sh`), with screenshots kept in `target/screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::process::{Child, Command};

/// How long the browser may take to show what a step waits for.
pub const WAIT: Duration = Duration::from_secs(20);

/// A browser session; the chromedriver process is killed on drop.
pub struct Browser {
    pub client: Client,
    shots: PathBuf,
    _driver: Child,
}

/// The two widths every screenshot is taken at: a laptop and a phone.
pub const WIDTHS: [(u32, u32); 2] = [(1280, 900), (390, 844)];

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium window; screenshots go
    /// to `target/screenshots/{test}/`.
    pub async fn start(test: &str) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts (bash tests/conformance/setup.sh installs it)");
        // chromedriver listens within a moment; poll its port (bounded).
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": "/usr/bin/chromium",
                   "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--window-size=1280,900"]}),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        let shots = crate::workspace_root()
            .join("target")
            .join("screenshots")
            .join(test);
        drop(std::fs::remove_dir_all(&shots));
        std::fs::create_dir_all(&shots).expect("the screenshots folder");
        Browser {
            client,
            shots,
            _driver: driver,
        }
    }

    /// Screenshots of the current page at each of [`WIDTHS`], as `{name}-{width}.png`; the
    /// window is left at the first width.
    pub async fn screenshots(&self, name: &str) {
        for (width, height) in WIDTHS.iter().rev() {
            self.client
                .set_window_size(*width, *height)
                .await
                .expect("resize the window");
            let png = self.client.screenshot().await.expect("a screenshot");
            std::fs::write(self.shots.join(format!("{name}-{width}.png")), png)
                .expect("write the screenshot");
        }
    }

    /// Waits for an element (bounded by [`WAIT`]).
    pub async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} did not appear: {e}"))
    }

    /// Types into the field `css` (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.wait_for(css).await;
        field.clear().await.expect("clear the field");
        field.send_keys(text).await.expect("type");
    }

    /// The text of the element `css`.
    pub async fn text(&self, css: &str) -> String {
        self.wait_for(css).await.text().await.expect("its text")
    }

    pub async fn click(&self, css: &str) {
        self.wait_for(css).await.click().await.expect("click");
    }

    pub async fn close(self) {
        self.client.close().await.expect("close the browser");
    }
}
