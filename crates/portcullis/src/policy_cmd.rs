//! `portcullis policy check` and `portcullis policy explain`.

use std::process::ExitCode;

use portcullis_policy::{Call, Decision, Policy};
use serde_json::{Value, json};

use crate::cli::PolicyCommand;

pub fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Check { files } => {
            let mut failed = false;
            for file in &files {
                let text = match std::fs::read_to_string(file) {
                    Ok(text) => text,
                    Err(e) => {
                        println!("{}: cannot read: {e}", file.display());
                        failed = true;
                        continue;
                    }
                };
                match Policy::parse(&text) {
                    Ok(_) => println!("{}: ok", file.display()),
                    Err(errors) => {
                        failed = true;
                        let n = errors.problems.len();
                        println!(
                            "{}: {n} problem{}",
                            file.display(),
                            if n == 1 { "" } else { "s" }
                        );
                        for p in &errors.problems {
                            let path = if p.path.is_empty() {
                                "(document)"
                            } else {
                                p.path.as_str()
                            };
                            println!("  {path}: {}", p.message);
                        }
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        PolicyCommand::Explain {
            file,
            tool,
            args,
            changed,
            json,
        } => {
            let policy = match std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|text| Policy::parse(&text).map_err(|e| e.to_string()))
            {
                Ok(policy) => policy,
                Err(message) => {
                    eprintln!("error: {}: {message}", file.display());
                    return ExitCode::FAILURE;
                }
            };
            let arguments: Value = match serde_json::from_str(&args) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    eprintln!("error: --args must be a JSON object");
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("error: --args is not JSON: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let decision = policy.evaluate(&Call {
                tool: &tool,
                arguments: &arguments,
                changed,
            });
            let explained = explain(&decision);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&explained).unwrap_or_default()
                );
            } else {
                print!("{}", text(&explained));
            }
            ExitCode::SUCCESS
        }
    }
}

fn explain(decision: &Decision) -> Value {
    match decision {
        Decision::Hidden { rule } => json!({
            "decision": "hidden", "rule": rule, "agent_sees": decision.agent_text(),
        }),
        Decision::Deny { rule, reason } => json!({
            "decision": "deny", "rule": rule, "reason": reason, "agent_sees": decision.agent_text(),
        }),
        Decision::Proceed {
            rule,
            limits,
            approval,
        } => {
            let limits: Vec<Value> = limits
                .iter()
                .map(|l| {
                    json!({"counter": l.counter, "max": l.max, "window_seconds": l.window.as_secs(),
                           "scope": format!("{:?}", l.scope).to_lowercase(), "increment": l.increment,
                           "rule": l.rule})
                })
                .collect();
            let approval = approval.as_ref().map(|a| {
                json!({"rule": a.rule, "timeout_seconds": a.timeout.as_secs(), "reason": a.reason})
            });
            let outcome = if approval.is_some() {
                "approval"
            } else {
                "allow"
            };
            json!({"decision": outcome, "rule": rule, "limits": limits, "approval": approval})
        }
    }
}

fn text(v: &Value) -> String {
    let mut out = format!(
        "decision: {}\nrule:     {}\n",
        v["decision"].as_str().unwrap_or(""),
        v["rule"].as_str().unwrap_or("")
    );
    if let Some(reason) = v["reason"].as_str() {
        out.push_str(&format!("reason:   {reason}\n"));
    }
    if let Some(sees) = v["agent_sees"].as_str() {
        out.push_str(&format!("agent sees: {sees}\n"));
    }
    for l in v["limits"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "limit:    {} max {} per {}s, scope {}, +{} ({})\n",
            l["counter"].as_str().unwrap_or(""),
            l["max"],
            l["window_seconds"],
            l["scope"].as_str().unwrap_or(""),
            l["increment"],
            l["rule"].as_str().unwrap_or("")
        ));
    }
    if let Some(a) = v["approval"].as_object() {
        out.push_str(&format!(
            "approval: required by {}, waits up to {}s\n",
            a["rule"].as_str().unwrap_or(""),
            a["timeout_seconds"]
        ));
    }
    out
}
