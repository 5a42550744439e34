//! The `portcullis` binary as separate processes (`serve`, `console`, `gateway`), for tests of a
//! fleet: several processes sharing one database, one Redis and one secret key.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::console::eventually;

/// A port free at the time of asking (the process binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A new random secret key, as PORTCULLIS_SECRET_KEY takes it (hex, 32 bytes).
pub fn new_secret_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// What a process shares with the rest of the fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The `portcullis` binary (`env!("CARGO_BIN_EXE_portcullis")` in the test).
    pub bin: PathBuf,
    pub database_url: String,
    pub secret_key: String,
    pub redis_url: Option<String>,
}

/// One running process; killed on drop. Its log (stderr, JSON lines) is kept in a file.
pub struct Process {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub log: PathBuf,
    child: tokio::process::Child,
}

impl Fleet {
    /// Starts `portcullis {plane}` (serve, console or gateway) on loopback ports and waits until
    /// it answers `/healthz`. Migrations are left to the test database (`--no-migrate`).
    pub async fn start(&self, plane: &str) -> Process {
        self.start_with(plane, &[]).await
    }

    /// [`Fleet::start`] with more flags.
    pub async fn start_with(&self, plane: &str, extra: &[&str]) -> Process {
        let (port, admin) = (free_port(), free_port());
        let log = std::env::temp_dir().join(format!("portcullis-{plane}-{port}.log"));
        let stderr = std::fs::File::create(&log).expect("a log file");
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(["--log-format", "json", plane])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--public-url", &url])
            .args(["--allow-private-upstreams", "--no-migrate"])
            .args(extra)
            .env("DATABASE_URL", &self.database_url)
            .env("PORTCULLIS_SECRET_KEY", &self.secret_key)
            .env_remove("PORTCULLIS_CONFIG")
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        match &self.redis_url {
            Some(redis) => cmd.env("REDIS_URL", redis),
            None => cmd.env_remove("REDIS_URL"),
        };
        let child = cmd.spawn().expect("the portcullis binary starts");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        eventually(
            &format!("`portcullis {plane}` serves (log: {})", log.display()),
            Duration::from_secs(30),
            || async {
                http.get(format!("{url}/healthz"))
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            },
        )
        .await;
        Process { url, log, child }
    }
}

impl Process {
    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub async fn kill(mut self) {
        self.child.kill().await.ok();
    }

    /// Asks the process to stop (SIGTERM), as an orchestrator does.
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .expect("kill runs");
            assert!(sent.success(), "kill -TERM {pid}");
        }
    }

    /// Waits for the process to exit (at most 60 s).
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the process exits within 60 s")
            .expect("its status")
    }
}
