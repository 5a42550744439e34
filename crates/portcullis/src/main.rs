//! The `portcullis` binary: parse the command line, start logging, run the command.

mod classify_cmd;
mod cli;
mod policy_cmd;
mod serve;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        cli::Command::Serve(opts) => serve::run(serve::Planes::Both, opts),
        cli::Command::Console(opts) => serve::run(serve::Planes::Console, opts),
        cli::Command::Gateway(opts) => serve::run(serve::Planes::Gateway, opts),
        cli::Command::Migrate(opts) => serve::migrate(opts),
        cli::Command::Policy(cmd) => return policy_cmd::run(cmd),
        cli::Command::Classify(args) => return classify_cmd::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Log the whole cause chain; never print secrets (none are in errors by design).
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: cli::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Colours only for a person at a terminal, never in files or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        cli::LogFormat::Json => builder.json().init(),
        cli::LogFormat::Text => builder.init(),
    }
}
