//! Differential conformance: the official MCP conformance suite (`@modelcontextprotocol/conformance`)
//! run against `@modelcontextprotocol/server-everything` (Streamable HTTP) directly, then through
//! the gateway with an allow-all policy. The gateway's results must equal the direct ones,
//! scenario by scenario and check by check (id, status, error message).
//!
//! The Node toolchain is pinned in `tests/conformance/package.json` and installed by
//! `tests/conformance/setup.sh` (see `tests/conformance/README.md`); `portcullis_tests::everything`
//! finds it and runs server-everything.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use portcullis_tests::everything::{self, Toolchain, tail, toolchain};
use portcullis_tests::gateway;
use serde_json::{Value, json};
use tokio::process::Command;

/// Bound on one run of the whole suite (a direct run takes about 2 s).
const SUITE_TIMEOUT: Duration = Duration::from_secs(240);
/// The suite's scenarios: "all" is the active ones plus the pending ones (SSE polling, JSON
/// Schema 2020-12), which exercise a proxy as much as the others.
const SUITE: &str = "all";

/// A fresh folder for the logs and results of the last run, under Cargo's temporary directory.
fn work_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance");
    drop(std::fs::remove_dir_all(&dir));
    std::fs::create_dir_all(&dir).expect("a work folder");
    dir
}

/// Scenarios where the gateway protects more than the upstream does: server-everything answers a
/// request with a foreign `Host` and `Origin` (DNS rebinding), the gateway refuses it.
const STRICTER: &[&str] = &["dns-rebinding-protection"];

/// One check of a scenario: compared by id, status and message.
#[derive(Clone, Debug)]
struct Check {
    id: String,
    status: String,
    /// The error message, with the run's URL and address replaced by placeholders.
    message: Option<String>,
    /// The suite's details (session ids, timestamps...): shown, not compared.
    details: Value,
}

impl Check {
    fn key(&self) -> (&str, &str, Option<&str>) {
        (&self.id, &self.status, self.message.as_deref())
    }
}

/// One scenario's checks, sorted by key.
#[derive(Debug)]
struct Scenario {
    checks: Vec<Check>,
}

impl Scenario {
    fn keys(&self) -> Vec<(&str, &str, Option<&str>)> {
        self.checks.iter().map(Check::key).collect()
    }
}

/// A run of the suite.
struct SuiteRun {
    url: String,
    scenarios: BTreeMap<String, Scenario>,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// Runs the whole suite against `url`, sending `authorization` with every request.
async fn run_suite(toolchain: &Toolchain, url: &str, authorization: &str, dir: &Path) -> SuiteRun {
    std::fs::create_dir_all(dir).expect("a run folder");
    let results = dir.join("results");
    let stdout = dir.join("stdout.txt");
    let stderr = dir.join("stderr.txt");
    let mut child = Command::new(&toolchain.node)
        .arg("--import")
        .arg(&toolchain.auth_shim)
        .arg(&toolchain.suite)
        .args(["server", "--suite", SUITE, "--url", url, "--output-dir"])
        .arg(&results)
        .env("CONFORMANCE_AUTHORIZATION", authorization)
        .env("NO_COLOR", "1")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .kill_on_drop(true)
        .spawn()
        .expect("the conformance suite starts");
    let status: ExitStatus = match tokio::time::timeout(SUITE_TIMEOUT, child.wait()).await {
        Ok(status) => status.expect("the suite's exit status"),
        Err(_) => panic!(
            "the suite against {url} did not finish within {SUITE_TIMEOUT:?}; its output ends:\n{}\n{}",
            tail(&stdout, 10),
            tail(&stderr, 10)
        ),
    };
    // 0: every check passed, 1: some failed; anything else is the suite itself failing.
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "the suite against {url} exited with {status}:\n{}",
        tail(&stderr, 30)
    );
    let scenarios = parse_results(url, &results, &stdout, &stderr);
    SuiteRun {
        url: url.to_owned(),
        scenarios,
        stdout,
        stderr,
    }
}

/// `results/server-<scenario>-<ISO timestamp with : and . as ->/checks.json` per scenario; a
/// scenario that threw has a folder without checks.json and a line in the suite's stderr.
fn parse_results(
    url: &str,
    results: &Path,
    stdout: &Path,
    stderr: &Path,
) -> BTreeMap<String, Scenario> {
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let normalize = |text: &str| text.replace(url, "<URL>").replace(&host, "<HOST>");
    let stderr_text = std::fs::read_to_string(stderr).unwrap_or_default();
    let mut scenarios = BTreeMap::new();
    let entries = std::fs::read_dir(results)
        .unwrap_or_else(|e| panic!("no results in {} ({e})", results.display()));
    for entry in entries {
        let entry = entry.expect("a results entry");
        let folder = entry.file_name().to_string_lossy().into_owned();
        let name = scenario_name(&folder)
            .unwrap_or_else(|| panic!("unexpected results folder {folder}"))
            .to_owned();
        let checks_file = entry.path().join("checks.json");
        let mut checks: Vec<Check> = match std::fs::read_to_string(&checks_file) {
            Ok(text) => {
                let raw: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", checks_file.display()));
                raw.as_array()
                    .unwrap_or_else(|| panic!("{} is not an array", checks_file.display()))
                    .iter()
                    .map(|check| Check {
                        id: check["id"].as_str().unwrap_or_default().to_owned(),
                        status: check["status"].as_str().unwrap_or_default().to_owned(),
                        message: check["errorMessage"].as_str().map(normalize),
                        details: check["details"].clone(),
                    })
                    .collect()
            }
            Err(_) => {
                // The suite records such a scenario as one failed check named after it.
                let prefix = format!("Failed to run scenario {name}:");
                let message = stderr_text
                    .lines()
                    .find_map(|line| line.strip_prefix(&prefix))
                    .map(|rest| normalize(rest.trim()))
                    .or_else(|| Some("Failed to run scenario".to_owned()));
                let check = Check {
                    id: name.clone(),
                    status: "FAILURE".to_owned(),
                    message,
                    details: json!("the scenario threw: see the suite's stderr"),
                };
                vec![check]
            }
        };
        checks.sort_by(|a, b| a.key().cmp(&b.key()));
        scenarios.insert(name, Scenario { checks });
    }
    // Cross-check with the suite's own summary: one line per scenario run.
    let summary: BTreeSet<String> = std::fs::read_to_string(stdout)
        .unwrap_or_default()
        .lines()
        .skip_while(|line| !line.contains("=== SUMMARY ==="))
        .filter_map(|line| {
            let rest = line
                .strip_prefix("✓ ")
                .or_else(|| line.strip_prefix("✗ "))?;
            Some(rest.split(": ").next()?.to_owned())
        })
        .collect();
    let found: BTreeSet<String> = scenarios.keys().cloned().collect();
    assert_eq!(
        summary,
        found,
        "the suite's summary and its results folder ({}) name different scenarios",
        results.display()
    );
    scenarios
}

/// `server-tools-list-2026-01-02T03-04-05-678Z` → `tools-list`.
fn scenario_name(folder: &str) -> Option<&str> {
    let rest = folder.strip_prefix("server-")?;
    // The timestamp: `-YYYY-MM-DDTHH-MM-SS-mmmZ`, 25 characters.
    let cut = rest.len().checked_sub(25)?;
    let (name, stamp) = rest.split_at(cut);
    let shape = stamp.bytes().enumerate().all(|(i, b)| match i {
        0 | 5 | 8 | 14 | 17 | 20 => b == b'-',
        11 => b == b'T',
        24 => b == b'Z',
        _ => b.is_ascii_digit(),
    });
    (shape && !name.is_empty()).then_some(name)
}

/// The checks of one side, with the details of those the other side lacks.
fn describe(checks: &[Check], other: Option<&Scenario>) -> String {
    let mut theirs = other.map(Scenario::keys).unwrap_or_default();
    let mut out = String::new();
    for check in checks {
        // Matched one for one: a check that appears twice here and once there is marked once.
        let mark = match theirs.iter().position(|key| *key == check.key()) {
            Some(i) => {
                theirs.swap_remove(i);
                ' '
            }
            None => '*',
        };
        write!(out, "     {mark} {} {}", check.status, check.id).unwrap();
        if let Some(message) = &check.message {
            write!(out, ": {message}").unwrap();
        }
        if mark == '*' {
            let details = check.details.to_string();
            let cut = details
                .char_indices()
                .nth(600)
                .map_or(details.len(), |(i, _)| i);
            write!(out, "\n         details: {}", &details[..cut]).unwrap();
        }
        out.push('\n');
    }
    out
}

fn successes(run: &SuiteRun) -> usize {
    run.scenarios
        .values()
        .flat_map(|s| &s.checks)
        .filter(|c| c.status == "SUCCESS")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_results_equal_direct_results_scenario_by_scenario() {
    let toolchain = toolchain();
    let dir = work_dir();
    let everything = everything::start_with(&toolchain, &dir).await;
    let gw = gateway::start(
        &everything.url,
        Some(json!({"version": "1", "default": "allow"})),
    )
    .await;
    // Both runs send the same header (server-everything ignores it), so the client is identical.
    let authorization = format!("Bearer {}", gw.agent_key);

    let direct = run_suite(
        &toolchain,
        &everything.url,
        &authorization,
        &dir.join("direct"),
    )
    .await;
    // Not vacuous: the direct run ran scenarios, and some checks pass against server-everything.
    assert!(
        !direct.scenarios.is_empty(),
        "the direct run reported no scenario (see {})",
        direct.stdout.display()
    );
    let initialize = direct.scenarios.get("server-initialize").map(|s| &s.checks);
    assert!(
        initialize.is_some_and(|checks| checks.iter().all(|c| c.status == "SUCCESS")),
        "server-initialize does not pass directly against server-everything: {initialize:?} (see {})",
        direct.stderr.display()
    );
    assert!(successes(&direct) > 0);

    let through = run_suite(
        &toolchain,
        &gw.mcp_url(),
        &authorization,
        &dir.join("gateway"),
    )
    .await;

    let names: BTreeSet<&String> = direct
        .scenarios
        .keys()
        .chain(through.scenarios.keys())
        .collect();
    let mut report = String::new();
    let mut differ = 0;
    for name in &names {
        let (d, g) = (direct.scenarios.get(*name), through.scenarios.get(*name));
        if d.map(Scenario::keys) == g.map(Scenario::keys) {
            continue;
        }
        // Where the gateway is deliberately stricter than server-everything, every check must
        // pass through the gateway, whatever the upstream did alone.
        if STRICTER.contains(&name.as_str())
            && g.is_some_and(|s| {
                !s.checks.is_empty() && s.checks.iter().all(|c| c.status == "SUCCESS")
            })
        {
            println!("{name}: passes through the gateway (stricter than the upstream by design)");
            continue;
        }
        differ += 1;
        writeln!(report, "  {name}: (* = not on the other side)").unwrap();
        match d {
            Some(s) => write!(
                report,
                "    direct ({}):\n{}",
                direct.url,
                describe(&s.checks, g)
            ),
            None => writeln!(report, "    direct: not run"),
        }
        .unwrap();
        match g {
            Some(s) => write!(
                report,
                "    gateway ({}):\n{}",
                through.url,
                describe(&s.checks, d)
            ),
            None => writeln!(report, "    gateway: not run"),
        }
        .unwrap();
    }
    let checks: usize = direct.scenarios.values().map(|s| s.checks.len()).sum();
    println!(
        "conformance: {} scenarios ({checks} checks, {} SUCCESS directly), {differ} differ; results under {}",
        names.len(),
        successes(&direct),
        dir.display()
    );
    assert!(
        differ == 0,
        "{differ} of {} scenarios differ through the gateway (results under {}):\n{report}",
        names.len(),
        dir.display()
    );
}

#[test]
fn scenario_names_are_parsed_from_result_folders() {
    assert_eq!(
        scenario_name("server-tools-call-simple-text-2026-11-24T10-45-39-359Z"),
        Some("tools-call-simple-text")
    );
    assert_eq!(
        scenario_name("server-ping-2026-11-24T10-45-39-295Z"),
        Some("ping")
    );
    assert_eq!(scenario_name("server-ping"), None);
    assert_eq!(scenario_name("client-ping-2026-11-24T10-45-39-295Z"), None);
}
