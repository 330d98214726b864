use std::process::ExitCode;

use clap::Parser;
use etcdsafe::cli::{Cli, LogFormat};
use etcdsafe::config::ConfigError;
use etcdsafe::exit::Exit;

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: in files, pipes and journald the escape codes
    // are noise that breaks grep.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    // Both ring (etcd-client, kube) and aws-lc-rs (the AWS SDK) are linked in; rustls needs to
    // be told which one serves connections that do not choose for themselves.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The service logs JSON at info by default; one-shot commands log text, quietly.
    let service = matches!(cli.command, etcdsafe::cli::Command::Run(_));
    let format = cli.log_format.unwrap_or(if service {
        LogFormat::Json
    } else {
        LogFormat::Text
    });
    let level = cli
        .log_level
        .as_deref()
        .unwrap_or(if service { "info" } else { "warn" });
    init_logging(format, level);
    // One thread for the async side (gRPC, HTTP, S3 calls); the heavy stages (spool, zstd, age,
    // verification) run on blocking threads. Measured on the benchmark: a multi-thread runtime
    // bounced the snapshot stream between workers and cost 10% more wall time.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Failed.into();
        }
    };
    let result = runtime.block_on(etcdsafe::commands::run(cli));
    // Bounded: a backup abandoned at shutdown must not hold the process.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => Exit::Success.into(),
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            exit_for(&e).into()
        }
    }
}

/// The one place an error picks its exit code (the table is `etcdsafe::exit::Exit`).
fn exit_for(error: &anyhow::Error) -> Exit {
    etcdsafe::exit::for_config_error(error.downcast_ref::<ConfigError>().is_some())
}

/// Output into a pipe whose reader left (`etcdsafe backups list | head -1`) is not a failure.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` panics when stdout is a closed pipe; that ends the process quietly with
/// [`Exit::Success`] instead of a panic message, as `| head` users expect.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(i32::from(Exit::Success.code()));
        }
        default(info);
    }));
}

/// The error and its causes on one line, leaving out causes its message already includes.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text.replace('\n', " ")
}
