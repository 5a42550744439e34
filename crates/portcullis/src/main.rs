//! The `portcullis` binary: parse the command line, start logging, run the command.

mod classify_cmd;
mod cli;
mod config;
mod doctor;
mod log_fields;
mod policy_cmd;
mod serve;

/// jemalloc, not glibc's malloc: a proxied call makes about a hundred small allocations, and
/// glibc's malloc and free were ~20 % of its user-space instructions (fastbin consolidation on
/// every larger buffer). On the gateway benchmark jemalloc took CPU per call from 90 to 72 µs
/// at concurrency 1 with peak RSS 26–28 MiB (docs/BENCHMARKS.md, session 6). mimalloc, tried in
/// session 5, raised peak RSS to 56–62 MiB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // The configuration file's settings join the command line before it is parsed for real.
    let layered = match config::layer(std::env::args_os().collect()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = cli::Cli::parse_from(&layered.argv);
    // Every HTTPS client of the process (upstreams, webhooks, the trace exporter) uses rustls
    // with ring.
    portcullis_mcp::upstream::install_crypto_provider();
    let traces = init_tracing(cli.log_format);
    let code = run(cli, &layered);
    // Send the spans still buffered before the process ends.
    if let Some(provider) = traces
        && let Err(e) = provider.shutdown()
    {
        eprintln!("warning: could not flush traces: {e}");
    }
    code
}

fn run(cli: cli::Cli, layered: &config::Layered) -> ExitCode {
    let result = match cli.command {
        cli::Command::Serve(opts) => serve::run(serve::Planes::Both, opts.normalized()),
        cli::Command::Console(opts) => serve::run(serve::Planes::Console, opts.normalized()),
        cli::Command::Gateway(opts) => serve::run(serve::Planes::Gateway, opts.normalized()),
        cli::Command::Migrate(opts) => serve::migrate(opts.normalized()),
        cli::Command::RotateKey(opts) => serve::rotate_key(opts),
        cli::Command::Policy(cmd) => return policy_cmd::run(cmd),
        cli::Command::Classify(args) => return classify_cmd::run(&args),
        cli::Command::Config(cli::ConfigCommand::Print(_)) => {
            config::print(layered).map(|text| print!("{text}"))
        }
        cli::Command::Doctor(opts) => {
            match doctor::run(&opts.normalized(), layered.file.as_deref()) {
                Ok(true) => return ExitCode::SUCCESS,
                Ok(false) => return ExitCode::FAILURE,
                Err(e) => Err(e),
            }
        }
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

/// Logs to stderr (text or JSON lines) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, traces
/// to that OpenTelemetry collector over OTLP/HTTP (protobuf; the standard `OTEL_*` variables
/// apply, e.g. `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`).
fn init_tracing(format: cli::LogFormat) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Colours only for a person at a terminal, never in files or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let provider = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .and_then(|_| {
            match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
                Ok(exporter) => Some(
                    opentelemetry_sdk::trace::SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(
                            opentelemetry_sdk::Resource::builder()
                                .with_service_name("portcullis")
                                .build(),
                        )
                        .build(),
                ),
                Err(e) => {
                    eprintln!("warning: OTEL_EXPORTER_OTLP_ENDPOINT is set but traces cannot be exported: {e}");
                    None
                }
            }
        });
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("portcullis")));
    let subscriber = tracing_subscriber::registry().with(otel).with(filter);
    match format {
        cli::LogFormat::Json => subscriber
            .with(fmt.json().fmt_fields(log_fields::AppendJsonFields))
            .init(),
        cli::LogFormat::Text => subscriber.with(fmt).init(),
    }
    provider
}
