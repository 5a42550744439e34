//! `portcullis classify TOOLS.json`: every tool's category, risk and evidence.

use std::process::ExitCode;

use portcullis_policy::classify::{Classification, classify};
use serde_json::{Value, json};

use crate::cli::ClassifyArgs;

pub fn run(args: &ClassifyArgs) -> ExitCode {
    let tools = match read_tools(args) {
        Ok(tools) => tools,
        Err(message) => {
            eprintln!("error: {}: {message}", args.file.display());
            return ExitCode::FAILURE;
        }
    };
    let rows: Vec<(String, Classification)> = tools
        .iter()
        .map(|tool| {
            let name = tool
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("(unnamed)")
                .to_owned();
            (name, classify(tool))
        })
        .collect();
    if args.json {
        let out: Vec<Value> = rows
            .iter()
            .map(|(name, c)| {
                json!({"name": name, "category": c.category, "risk": c.risk,
                       "evidence": c.evidence, "recommended": c.recommended})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"tools": out})).unwrap_or_default()
        );
    } else {
        print!("{}", table(&rows));
    }
    ExitCode::SUCCESS
}

/// Accepts a `tools/list` result, `{"tools": [...]}`, a JSON-RPC response carrying either, or a
/// bare array of tools.
fn read_tools(args: &ClassifyArgs) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(&args.file).map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    let tools = match &value {
        Value::Array(items) => items,
        Value::Object(obj) => obj
            .get("tools")
            .or_else(|| obj.get("result").and_then(|r| r.get("tools")))
            .and_then(Value::as_array)
            .ok_or("expected a tools/list result: an object with a \"tools\" array")?,
        _ => return Err("expected a tools/list result: an object with a \"tools\" array".into()),
    };
    Ok(tools.clone())
}

fn table(rows: &[(String, Classification)]) -> String {
    let name_width = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!(
        "{:<name_width$}  {:<11}  {:<8}  EVIDENCE\n",
        "TOOL", "CATEGORY", "RISK"
    );
    for (name, c) in rows {
        out.push_str(&format!(
            "{name:<name_width$}  {:<11}  {:<8}  {}\n",
            c.category.to_string(),
            c.risk.to_string(),
            c.evidence.join("; ")
        ));
    }
    let count = |cat: &str| {
        rows.iter()
            .filter(|(_, c)| c.category.to_string() == cat)
            .count()
    };
    out.push_str(&format!(
        "\n{} tools: {} read, {} write, {} execute, {} financial, {} destructive\n",
        rows.len(),
        count("read"),
        count("write"),
        count("execute"),
        count("financial"),
        count("destructive"),
    ));
    out
}
