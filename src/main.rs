//! The `bearerd` binary: arguments, logging, configuration, then serve until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bearerd::config::{Config, Env};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "\
bearerd — sidecar HTTP forward proxy that adds OAuth 2.0 access tokens

Usage:
  bearerd [run] [--config PATH]   serve (PATH: $BEARERD_CONFIG, else ./config/bearerd.yaml)
  bearerd --version | --help

Environment: BEARERD_CONFIG, BEARERD_LISTEN, BEARERD_ADMIN_LISTEN,
BEARERD_LOG_FORMAT (json | pretty), RUST_LOG (tracing filter, default info),
BEARERD_CONFIG__<ID>__<FIELD> (define or override a field of auth config <id>).
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config_path = match parse_args(&args) {
        Ok(Command::Run(path)) => path,
        Ok(Command::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("bearerd: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let env: Env = std::env::vars().collect();
    init_logging(&env);
    let path = config_path
        .or_else(|| env.get("BEARERD_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config/bearerd.yaml"));
    let config = match Config::load(&path, &env) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("bearerd: {err}");
            return ExitCode::FAILURE;
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bearerd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

enum Command {
    Run(Option<PathBuf>),
    Print(String),
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut config = None;
    let mut rest = args.iter();
    let mut first = true;
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--help" | "-h" => return Ok(Command::Print(USAGE.to_owned())),
            "--version" | "-V" => return Ok(Command::Print(format!("bearerd {}\n", env!("CARGO_PKG_VERSION")))),
            "run" if first => {}
            "--config" | "-c" => config = Some(PathBuf::from(rest.next().ok_or("--config needs a path")?)),
            other => match other.strip_prefix("--config=") {
                Some(path) => config = Some(PathBuf::from(path)),
                None => return Err(format!("unexpected argument `{other}`")),
            },
        }
        first = false;
    }
    Ok(Command::Run(config))
}

fn init_logging(env: &Env) {
    let filter = EnvFilter::try_new(env.get("RUST_LOG").map_or("info", String::as_str))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if env.get("BEARERD_LOG_FORMAT").is_some_and(|f| f == "json") {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let _server = bearerd::Server::start(config).await?;
        shutdown_signal().await?;
        tracing::info!("stopping");
        Ok(())
    })
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
