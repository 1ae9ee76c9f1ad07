//! The `bearerd` binary: arguments, logging, configuration, then serve until a signal.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bearerd::config::{Config, Env};
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc: it gives pages no longer used back to the system
/// (settings in `.cargo/config.toml`), so the memory a burst of connections took is returned
/// after they close (glibc kept it; `benches/idle_memory.sh`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const USAGE: &str = "\
bearerd — sidecar HTTP forward proxy that adds OAuth 2.0 access tokens

Usage:
  bearerd [run] [--config PATH]             serve (PATH: $BEARERD_CONFIG, else ./config/bearerd.yaml)
  bearerd check [--offline] [--config PATH]  validate, resolve discovery and fetch one token per
                                             auth config; one row each; exit 1 if any fails
                                             (--offline: validate only, contact nothing)
  bearerd --version | --help

Signals: SIGHUP reloads the config (so does a change to the file); SIGTERM and SIGINT stop
accepting, let in-flight requests finish (shutdown_grace), and exit 0.

Environment: BEARERD_CONFIG, BEARERD_LISTEN, BEARERD_ADMIN_LISTEN,
BEARERD_LOG_FORMAT (json | pretty), RUST_LOG (tracing filter, default info),
BEARERD_CONFIG__<ID>__<FIELD> (define or override a field of auth config <id>).
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, config_path) = match parse_args(&args) {
        Ok(Command::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(path)) => (Mode::Run, path),
        Ok(Command::Check { offline, config }) => (Mode::Check { offline }, config),
        Err(message) => {
            eprintln!("bearerd: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let env: Env = std::env::vars().collect();
    init_logging(&env, command != Mode::Run);
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
    let result = match command {
        Mode::Run => run(config, &path, &env),
        Mode::Check { offline } => check(&config, offline),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("bearerd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    Check { offline: bool },
}

enum Command {
    Run(Option<PathBuf>),
    Check { offline: bool, config: Option<PathBuf> },
    Print(String),
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut config = None;
    let mut check = false;
    let mut offline = false;
    let mut rest = args.iter();
    let mut first = true;
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--help" | "-h" => return Ok(Command::Print(USAGE.to_owned())),
            "--version" | "-V" => return Ok(Command::Print(format!("bearerd {}\n", env!("CARGO_PKG_VERSION")))),
            "run" if first => {}
            "check" if first => check = true,
            "--offline" if check => offline = true,
            "--config" | "-c" => config = Some(PathBuf::from(rest.next().ok_or("--config needs a path")?)),
            other => match other.strip_prefix("--config=") {
                Some(path) => config = Some(PathBuf::from(path)),
                None => return Err(format!("unexpected argument `{other}`")),
            },
        }
        first = false;
    }
    Ok(if check {
        Command::Check { offline, config }
    } else {
        Command::Run(config)
    })
}

fn runtime(worker_threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    // One worker per CPU the process may use (std's available_parallelism counts affinity
    // and the cgroup CPU quota), unless configured. With one, a single-threaded runtime:
    // no work stealing and no cross-thread wake-ups, which is what a 1-CPU sidecar wants.
    let threads =
        worker_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build().context("starting the runtime")
}

fn run(config: Config, path: &Path, env: &Env) -> anyhow::Result<ExitCode> {
    let runtime = runtime(config.worker_threads)?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let watch_every = config.config_watch_interval;
        let server = bearerd::Server::start(config).await?;
        if !watch_every.is_zero() {
            server.watch(path.to_owned(), env.clone(), watch_every);
        }
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading {}", path.display());
                    // A failed reload is logged and counted; the old config keeps serving.
                    let _ = server.reload(path, env);
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("shutting down");
        if server.shutdown().await {
            tracing::info!("every in-flight request finished; exiting");
        }
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}

fn check(config: &Config, offline: bool) -> anyhow::Result<ExitCode> {
    let runtime = runtime(Some(1))?;
    let rows = runtime.block_on(bearerd::check::check(config, offline))?;
    print!("{}", bearerd::check::table(&rows));
    let redis = runtime.block_on(bearerd::check::shared_cache(config, offline));
    if let Some((line, _)) = &redis {
        println!("{line}");
    }
    let redis_passed = redis.is_none_or(|(_, passed)| passed);
    Ok(if redis_passed && rows.iter().all(bearerd::check::Row::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Logs go to stderr; `check` logs only warnings unless `RUST_LOG` says otherwise, so its
/// table stays readable.
fn init_logging(env: &Env, quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_new(env.get("RUST_LOG").map_or(default, String::as_str))
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
