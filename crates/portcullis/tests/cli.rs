//! The `portcullis` binary as a person runs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn portcullis() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    // Tests decide every setting themselves.
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "PORTCULLIS_SECRET_KEY",
        "PORTCULLIS_LISTEN",
        "LOG_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name)
}

#[test]
fn policy_check_prints_every_problem_with_its_pointer_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"version":"1","default":"deny","hide":["delete_image_set"]}"#,
    )
    .unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"version":"2","default":"maybe","tools":{"search_logs":{"rate_limit":{"max":0,"window":60}},"x":{"colour":"red"}}}"#,
    )
    .unwrap();

    let ok = portcullis()
        .args(["policy", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("good.json: ok"));

    let out = portcullis()
        .args(["policy", "check"])
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for pointer in [
        "/version",
        "/default",
        "/tools/search_logs/rate_limit/max",
        "/tools/x/colour",
    ] {
        assert!(
            stdout.contains(&format!("  {pointer}: ")),
            "{pointer} missing from:\n{stdout}"
        );
    }
    assert!(stdout.contains("bad.json: 4 problems"), "{stdout}");
}

#[test]
fn policy_explain_names_the_decision_and_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.json");
    std::fs::write(
        &file,
        r#"{"version":"1","default":"allow","hide":["delete_*"],
            "tools":{"create_refund":{"deny_if":[{"conditions":[{"path":"args.amount","op":"gt","value":10000}],
                                                 "on_deny":"Refunds over 10000 are not allowed."}]}}}"#,
    )
    .unwrap();
    let run = |tool: &str, args: &str| {
        let out = portcullis()
            .args(["policy", "explain"])
            .arg(&file)
            .args(["--tool", tool, "--args", args, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let denied = run("create_refund", r#"{"amount": 20000}"#);
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["rule"], "/tools/create_refund/deny_if/0");
    assert_eq!(
        denied["agent_sees"],
        "[POLICY DENIED] Refunds over 10000 are not allowed."
    );
    let hidden = run("delete_bucket", "{}");
    assert_eq!(hidden["decision"], "hidden");
    assert_eq!(hidden["rule"], "/hide/0");
    let allowed = run("list_buckets", "{}");
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["rule"], "/default");

    let bad_args = portcullis()
        .args(["policy", "explain"])
        .arg(&file)
        .args(["--tool", "x", "--args", "[1]"])
        .output()
        .unwrap();
    assert!(!bad_args.status.success());
    assert!(String::from_utf8_lossy(&bad_args.stderr).contains("--args must be a JSON object"));
}

#[test]
fn classify_prints_a_table_of_the_github_fixture() {
    let out = portcullis()
        .arg("classify")
        .arg(fixture("github-mcp-server.tools.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let header = stdout.lines().next().unwrap();
    assert!(
        header.starts_with("TOOL") && header.contains("CATEGORY") && header.contains("RISK"),
        "{header}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("delete_file "))
        .expect("a row for delete_file");
    assert!(
        row.contains("destructive") && row.contains("critical"),
        "{row}"
    );
    assert!(stdout.contains("117 tools:"), "{stdout}");

    let json = portcullis()
        .arg("classify")
        .arg("--json")
        .arg(fixture("github-mcp-server.tools.json"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["tools"].as_array().unwrap().len(), 117);
    let get_me = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "get_me")
        .unwrap();
    assert_eq!(get_me["category"], "read");
    assert_eq!(get_me["recommended"], serde_json::json!({"rule": {}}));
}

#[test]
fn classify_explains_a_file_that_is_not_a_tool_list() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.json");
    std::fs::write(&file, r#"{"servers": []}"#).unwrap();
    let out = portcullis().arg("classify").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"tools\" array"),
        "{out:?}"
    );
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        &["serve"][..],
        &["console"],
        &["gateway"],
        &["migrate"],
        &["policy", "check"],
        &["policy", "explain"],
        &["classify"],
    ] {
        let out = portcullis().args(sub).arg("--help").output().unwrap();
        assert!(out.status.success(), "{sub:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{sub:?}"
        );
    }
    let out = portcullis().args(["serve", "--help"]).output().unwrap();
    // Help is wrapped to the terminal's width: compare with white space folded.
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains("[env: PORTCULLIS_LISTEN=]") && help.contains("[env: DATABASE_URL"),
        "{help}"
    );
}

/// `serve` with no configuration: the embedded cluster is created, migrated and served from; the
/// process answers health checks and, on SIGTERM, stops the cluster and exits cleanly.
#[test]
fn serve_starts_with_no_configuration_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let mut child = portcullis()
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        // As compose's `PORTCULLIS_SECRET_KEY: ${PORTCULLIS_SECRET_KEY:-}` passes it: not set.
        .env("PORTCULLIS_SECRET_KEY", "")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let mut listen = None;
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["fields"]["message"] == "Portcullis is serving"
        {
            listen = v["fields"]["listen"].as_str().map(str::to_owned);
            break;
        }
    }
    let listen = listen.unwrap_or_else(|| panic!("no serving line; stderr:\n{}", seen.join("\n")));
    // Keep draining stderr so the child never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    for path in ["/healthz", "/readyz"] {
        let (status, body) = http_get(&listen, path);
        assert_eq!(status, 200, "{path}: {body}");
    }
    assert!(data.join("postgres/pgdata/PG_VERSION").exists());

    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let rest = drain.join().unwrap();
    assert!(
        status.success(),
        "exit {status:?}; stderr:\n{}",
        rest.join("\n")
    );
    assert!(
        rest.iter()
            .any(|l| l.contains("embedded PostgreSQL cluster stopped")),
        "{}",
        rest.join("\n")
    );
    assert!(
        !data.join("postgres/pgdata/postmaster.pid").exists(),
        "the cluster is still running"
    );
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn output_of(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A setting from the file is used unless an environment variable or a flag gives it; `config
/// print` names each value's source and never prints a secret.
#[test]
fn the_config_file_sits_below_environment_and_flags_and_print_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(
        &file,
        r#"
listen = "127.0.0.1:9001"
public-url = "https://file.example"
admin_listen = "127.0.0.1:9002"
database_url = "postgres://app:hunter2-db@db.internal:5432/pcl"
redis_url = "redis://:hunter2-redis@cache:6379"
secret_key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXktMTIzNA=="
allowed_origins = ["https://a.example", "https://b.example"]
allow_private_upstreams = true
upstream_timeout = 5
"#,
    )
    .unwrap();
    let (code, out, err) = output_of(
        portcullis()
            .args(["config", "print", "--listen", "127.0.0.1:9100"])
            .arg("--config")
            .arg(&file)
            .env("PORTCULLIS_PUBLIC_URL", "https://env.example")
            // Empty, as compose's `VAR: ${VAR:-}` writes it: not set, so the file's value holds.
            .env("REDIS_URL", "")
            .env("PORTCULLIS_ALLOWED_HOSTS", ""),
    );
    assert_eq!(code, 0, "{err}");
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .to_owned()
    };
    assert_eq!(line("listen"), r#"listen = "127.0.0.1:9100"  # flag"#);
    assert_eq!(
        line("public_url"),
        r#"public_url = "https://env.example"  # environment (PORTCULLIS_PUBLIC_URL)"#
    );
    assert_eq!(
        line("admin_listen"),
        r#"admin_listen = "127.0.0.1:9002"  # file"#
    );
    assert_eq!(line("upstream_timeout"), "upstream_timeout = 5  # file");
    assert!(
        out.contains(
            "# allowed_hosts = (not set: empty in the environment (PORTCULLIS_ALLOWED_HOSTS))"
        ),
        "{out}"
    );
    assert_eq!(
        line("allow_private_upstreams"),
        "allow_private_upstreams = true  # file"
    );
    assert_eq!(
        line("allowed_origins"),
        r#"allowed_origins = ["https://a.example", "https://b.example"]  # file"#
    );
    assert_eq!(
        line("max_body_bytes"),
        "max_body_bytes = 4194304  # default"
    );
    assert_eq!(
        line("database_url"),
        r#"database_url = "postgres://app:****@db.internal:5432/pcl"  # file"#
    );
    assert_eq!(
        line("redis_url"),
        r#"redis_url = "redis://:****@cache:6379"  # file"#
    );
    assert_eq!(
        line("secret_key"),
        r#"secret_key = "(set, hidden)"  # file"#
    );
    for secret in ["hunter2", "c2VjcmV0"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} leaked:\n{out}{err}"
        );
    }

    // The printed configuration is itself a configuration file (secrets aside).
    let printed = dir.path().join("printed.toml");
    let without_secrets: String = out
        .lines()
        .filter(|l| !l.contains("****") && !l.contains("(set, hidden)"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&printed, without_secrets).unwrap();
    let (code, again, err) = output_of(
        portcullis()
            .args(["config", "print"])
            .arg("--config")
            .arg(&printed),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        again.contains(r#"listen = "127.0.0.1:9100"  # file"#),
        "{again}"
    );
}

#[test]
fn a_config_file_with_an_unknown_setting_or_bad_value_is_refused_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nlisten_port = 8080\n").unwrap();
    let (code, _, err) = output_of(portcullis().arg("--config").arg(&file).arg("doctor"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown setting `listen_port`") && err.contains("public_url"),
        "{err}"
    );

    std::fs::write(&file, "upstream_timeout = \"soon\"\n").unwrap();
    let (code, _, err) = output_of(portcullis().arg("--config").arg(&file).arg("doctor"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("upstream-timeout") && err.contains("soon"),
        "{err}"
    );

    std::fs::write(&file, "listen = [\n").unwrap();
    let (code, _, err) = output_of(portcullis().arg("--config").arg(&file).arg("doctor"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not valid TOML"), "{err}");

    let (code, _, err) =
        output_of(portcullis().args(["--config", "/nonexistent/portcullis.toml", "doctor"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot read the configuration file /nonexistent/portcullis.toml"),
        "{err}"
    );
}

/// `doctor` against a working setup says so and exits 0; against a broken one it names every
/// problem in plain words, exits 1, and never prints a secret.
#[tokio::test]
async fn doctor_names_what_is_wrong_and_what_is_right() {
    let db = portcullis_store::testing::fresh_database().await.unwrap();
    let key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXktMTIzNA==";
    let (code, out, err) = output_of(
        portcullis()
            .args([
                "doctor",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--public-url", "https://mcp.example.com"])
            .env("DATABASE_URL", db.url())
            .env("REDIS_URL", "redis://127.0.0.1:6379")
            .env("PORTCULLIS_SECRET_KEY", key),
    );
    assert_eq!(code, 0, "{out}{err}");
    for expected in [
        "ok    database     PostgreSQL ",
        "schema up to date",
        "ok    redis        127.0.0.1:6379 answers",
        "ok    secret key   set",
        "ok    public URL   https://mcp.example.com",
        "Everything Portcullis needs is in place.",
    ] {
        assert!(out.contains(expected), "{expected:?} not in:\n{out}");
    }

    // Everything broken at once: each problem is reported, not just the first.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (code, out, err) = output_of(
        portcullis()
            .args([
                "doctor",
                "--listen",
                &busy_addr,
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--public-url", "ftp://mcp.example.com"])
            .env(
                "DATABASE_URL",
                format!("postgres://app:hunter2@127.0.0.1:{closed}/pcl"),
            )
            .env("REDIS_URL", format!("redis://:hunter3@127.0.0.1:{closed}"))
            .env("PORTCULLIS_SECRET_KEY", "c2hvcnQ="),
    );
    assert_eq!(code, 1, "{out}{err}");
    for expected in [
        &format!("FAIL  database     cannot connect to 127.0.0.1:{closed}/pcl") as &str,
        &format!("FAIL  redis        cannot reach Redis at 127.0.0.1:{closed}: connection refused"),
        "FAIL  secret key   PORTCULLIS_SECRET_KEY is unusable",
        "FAIL  public URL   ftp://mcp.example.com must be an http:// or https:// URL",
        &format!("warn  listen       {busy_addr} is already in use"),
        "4 problem(s) would stop Portcullis from working.",
    ] {
        assert!(out.contains(expected), "{expected:?} not in:\n{out}");
    }
    for secret in ["hunter2", "hunter3", "c2hvcnQ="] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} leaked:\n{out}{err}"
        );
    }
    drop(busy);
}

/// Several processes migrating one empty database at once: all succeed (sqlx holds an advisory
/// lock), and each migration is applied exactly once.
#[tokio::test]
async fn migrate_from_several_processes_at_once_applies_each_migration_once() {
    let db = portcullis_store::testing::empty_database().await.unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            portcullis()
                .arg("migrate")
                .env("DATABASE_URL", db.url())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let applied: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT version, count(*) FROM _sqlx_migrations WHERE success GROUP BY version ORDER BY version",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected: Vec<(i64, i64)> = portcullis_store::MIGRATOR
        .iter()
        .map(|m| (m.version, 1))
        .collect();
    assert_eq!(applied, expected);
}

/// `rotate-key` re-seals upstream credentials under the new key (all or nothing), refuses a
/// wrong current key without changing anything, and rewrites the key file when the key came
/// from it.
#[tokio::test]
async fn rotate_key_reseals_credentials_and_refuses_a_wrong_current_key() {
    use portcullis_store::crypto::{Sealer, SecretKey};
    use portcullis_store::servers::{self, CREDENTIALS_PURPOSE, NewServer, ServerSecrets};
    let db = portcullis_store::testing::fresh_database().await.unwrap();
    let (_, org) = portcullis_store::orgs::create_account(
        &db.pool,
        &portcullis_store::orgs::NewAccount {
            email: "ops@keys.test",
            password_hash: "unused",
            org_slug: "keys",
            org_name: "Keys",
        },
    )
    .await
    .unwrap();
    let [a, b, c] = [0, 1, 2].map(|_| {
        format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
    });
    let sealer = |k: &str| Sealer::new(&SecretKey::parse(k).unwrap(), CREDENTIALS_PURPOSE);
    let id = portcullis_store::new_id();
    let headers = br#"{"Authorization":"Bearer upstream-token-1"}"#;
    servers::insert(
        &db.pool,
        org.id,
        &NewServer {
            id,
            name: "billing",
            url: Some("https://billing.example/mcp"),
            command: None,
            header_names: &["Authorization".to_owned()],
            secrets: ServerSecrets {
                headers_enc: Some(sealer(&a).seal(headers, id.as_bytes()).unwrap()),
                env_enc: None,
            },
            transport_requested: "auto",
            transport: "streamable_http",
            protocol_version: None,
            server_info: None,
        },
    )
    .await
    .unwrap();
    let opens_with = |k: String| {
        let pool = db.pool.clone();
        async move {
            let sealed = servers::secrets(&pool, org.id, id)
                .await
                .unwrap()
                .headers_enc
                .unwrap();
            sealer(&k).open(&sealed, id.as_bytes())
        }
    };

    let (code, out, err) = output_of(
        portcullis()
            .arg("rotate-key")
            .env("DATABASE_URL", db.url())
            .env("PORTCULLIS_SECRET_KEY", &a)
            .env("PORTCULLIS_NEW_SECRET_KEY", &b),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Re-sealed the credentials of 1 server(s)"),
        "{out}"
    );
    assert_eq!(opens_with(b.clone()).await.as_deref(), Some(&headers[..]));
    assert_eq!(opens_with(a.clone()).await, None);

    // The old key again is now the wrong key: refused, nothing changed.
    let (code, out, err) = output_of(
        portcullis()
            .arg("rotate-key")
            .env("DATABASE_URL", db.url())
            .env("PORTCULLIS_SECRET_KEY", &a)
            .env("PORTCULLIS_NEW_SECRET_KEY", &c),
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "the credentials of server {id} do not open with the current key"
        )),
        "{err}"
    );
    assert_eq!(opens_with(b.clone()).await.as_deref(), Some(&headers[..]));
    for secret in [&a, &b, &c] {
        assert!(!out.contains(secret.as_str()) && !err.contains(secret.as_str()));
    }

    // The current key from the key file: the file ends holding the new key.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.key"), &b).unwrap();
    let (code, out, err) = output_of(
        portcullis()
            .arg("rotate-key")
            .arg("--data-dir")
            .arg(dir.path())
            .env("DATABASE_URL", db.url())
            .env("PORTCULLIS_NEW_SECRET_KEY", &c),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secret.key")).unwrap(),
        c
    );
    assert_eq!(opens_with(c.clone()).await.as_deref(), Some(&headers[..]));
}
