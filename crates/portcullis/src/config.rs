//! The configuration file and `portcullis config print`.
//!
//! Every setting is a flag, an environment variable, and a key of the TOML file named by
//! `--config` (or `PORTCULLIS_CONFIG`), spelled like the flag (`public_url` or `public-url`).
//! Precedence, highest first: flag, environment variable, file, default.
//!
//! The file is applied by rewriting the command line before clap parses it for real: every key
//! whose setting was given neither as a flag nor in the environment becomes `--flag=value`. One
//! parser then validates every value the same way whatever its source, and flag > env > file
//! falls out of clap's own flag > env rule. Keys are checked against the settings of `serve`
//! (the superset), so one file can serve `serve`, `console`, `gateway`, `migrate` and `doctor`:
//! a key a command does not take is ignored by that command, an unknown key is an error.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory as _};
use serde_json::Value;

use crate::cli::Cli;

/// The command line with the file's settings added, and what came from the file.
#[derive(Debug)]
pub struct Layered {
    pub argv: Vec<OsString>,
    pub file: Option<PathBuf>,
    /// Setting ids (`public_url`) whose value came from the file.
    pub from_file: BTreeSet<String>,
}

/// Settings that are secrets: masked by `config print`.
const SECRETS: [&str; 3] = ["database_url", "redis_url", "secret_key"];

/// Adds the configuration file's settings to `argv`. A command line clap would refuse (or
/// `--help`) is returned as it is, for clap to report.
pub fn layer(argv: Vec<OsString>) -> anyhow::Result<Layered> {
    let mut cmd = Cli::command();
    cmd.build();
    let plain = |argv| Layered {
        argv,
        file: None,
        from_file: BTreeSet::new(),
    };
    let Ok(matches) = cmd.clone().try_get_matches_from(&argv) else {
        return Ok(plain(argv));
    };
    let Some(file) = matches.get_one::<PathBuf>("config").cloned() else {
        return Ok(plain(argv));
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the configuration file {}", file.display()))?;
    let table: serde_json::Map<String, Value> = basic_toml::from_str(&text)
        .map_err(|e| anyhow!("{} is not valid TOML: {e}", file.display()))?;

    let known = settings(&cmd);
    let (leaf_cmd, leaf) = leaf(&cmd, &matches)?;
    let mut argv = argv;
    let mut from_file = BTreeSet::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        if !known.contains(&id) {
            bail!(
                "{}: unknown setting `{key}`; the settings are: {}",
                file.display(),
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        let Some(arg) = leaf_cmd.get_arguments().find(|a| a.get_id() == id.as_str()) else {
            continue; // a setting of another command
        };
        let given = match leaf.value_source(&id) {
            Some(ValueSource::CommandLine) => true,
            // An empty variable is "not set" (ServerOpts::normalized), so the file applies.
            Some(ValueSource::EnvVariable) => leaf
                .get_raw(&id)
                .into_iter()
                .flatten()
                .any(|v| !v.is_empty()),
            _ => false,
        };
        if given {
            continue;
        }
        let long = arg
            .get_long()
            .ok_or_else(|| anyhow!("setting {id} has no flag"))?;
        let flag = matches!(arg.get_action(), ArgAction::SetTrue);
        let values = match value {
            Value::Array(items) => items,
            Value::Object(_) => bail!("{}: `{key}` must be a value, not a table", file.display()),
            other => vec![other],
        };
        for value in values {
            match (flag, value) {
                (true, Value::Bool(true)) => argv.push(format!("--{long}").into()),
                (true, Value::Bool(false)) => {}
                (true, _) => bail!("{}: `{key}` must be true or false", file.display()),
                (false, Value::String(s)) => argv.push(format!("--{long}={s}").into()),
                (false, Value::Number(n)) => argv.push(format!("--{long}={n}").into()),
                (false, Value::Bool(b)) => argv.push(format!("--{long}={b}").into()),
                (false, _) => bail!("{}: `{key}` has a value of the wrong kind", file.display()),
            }
        }
        from_file.insert(id);
    }
    Ok(Layered {
        argv,
        file: Some(file),
        from_file,
    })
}

/// Every setting a file may hold: the arguments of `serve` (which take every setting), and the
/// global log format.
fn settings(cmd: &clap::Command) -> BTreeSet<String> {
    cmd.find_subcommand("serve")
        .into_iter()
        .flat_map(|c| c.get_arguments())
        .map(|a| a.get_id().as_str().to_owned())
        .filter(|id| !matches!(id.as_str(), "help" | "version" | "config"))
        .collect()
}

/// The innermost subcommand run, and its matches.
fn leaf<'a>(
    cmd: &'a clap::Command,
    matches: &'a ArgMatches,
) -> anyhow::Result<(&'a clap::Command, &'a ArgMatches)> {
    let (mut cmd, mut at) = (cmd, matches);
    while let Some((name, sub)) = at.subcommand() {
        cmd = cmd
            .find_subcommand(name)
            .ok_or_else(|| anyhow!("no subcommand {name}"))?;
        at = sub;
    }
    Ok((cmd, at))
}

/// `portcullis config print`: the effective settings as TOML, each with its source; secrets
/// masked. The output is itself a valid configuration file.
pub fn print(layered: &Layered) -> anyhow::Result<String> {
    let mut cmd = Cli::command();
    cmd.build();
    let matches = cmd.clone().try_get_matches_from(&layered.argv)?;
    let (leaf_cmd, leaf) = leaf(&cmd, &matches)?;
    let mut out = String::from(
        "# The effective configuration of `portcullis serve`, `console` and `gateway`.\n\
         # Precedence: command-line flag, then environment variable, then the file, then the default.\n",
    );
    if let Some(file) = &layered.file {
        out.push_str(&format!("# File: {}\n", file.display()));
    }
    for arg in leaf_cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version" | "config") {
            continue;
        }
        let source = match leaf.value_source(id) {
            Some(ValueSource::CommandLine) if layered.from_file.contains(id) => "file".to_owned(),
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => format!(
                "environment ({})",
                arg.get_env().and_then(|e| e.to_str()).unwrap_or("?")
            ),
            Some(ValueSource::DefaultValue) => "default".to_owned(),
            _ => {
                out.push_str(&format!("# {id} = (not set)\n"));
                continue;
            }
        };
        let raw: Vec<String> = leaf
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        // An empty variable means "not set" (ServerOpts::normalized).
        if raw.iter().all(|v| v.trim().is_empty())
            && !matches!(arg.get_action(), ArgAction::SetTrue)
        {
            out.push_str(&format!("# {id} = (not set: empty in the {source})\n"));
            continue;
        }
        let value = if matches!(arg.get_action(), ArgAction::SetTrue) {
            raw.first().cloned().unwrap_or_else(|| "false".into())
        } else if matches!(arg.get_action(), ArgAction::Append) {
            let items: Vec<String> = raw.iter().map(|v| toml_string(v)).collect();
            format!("[{}]", items.join(", "))
        } else {
            let v = raw.first().cloned().unwrap_or_default();
            if SECRETS.contains(&id) {
                toml_string(&mask(id, &v))
            } else if v.parse::<u64>().is_ok() {
                v
            } else {
                toml_string(&v)
            }
        };
        out.push_str(&format!("{id} = {value}  # {source}\n"));
    }
    Ok(out)
}

/// A secret as it may be shown: URLs keep everything but the password, keys are hidden.
fn mask(id: &str, value: &str) -> String {
    if id == "secret_key" {
        return "(set, hidden)".into();
    }
    match url::Url::parse(value) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("****"));
            }
            // Query parameters may hold a password too (`?password=`): show their names only.
            if url.query().is_some() {
                let names: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
                let masked: Vec<String> = names.iter().map(|k| format!("{k}=****")).collect();
                url.set_query(Some(&masked.join("&")));
            }
            url.to_string()
        }
        Err(_) => "(set, hidden: not a valid URL)".into(),
    }
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(
            mask(
                "database_url",
                "postgres://app:s3cret@db:5432/pcl?sslmode=require"
            ),
            "postgres://app:****@db:5432/pcl?sslmode=****"
        );
        assert_eq!(
            mask("redis_url", "redis://:hunter2@cache:6379"),
            "redis://:****@cache:6379"
        );
        assert_eq!(mask("secret_key", "abc"), "(set, hidden)");
        assert!(!mask("database_url", "not a url hunter2").contains("hunter2"));
    }
}
