//! `pgtrail`: the command-line entry point. Parses arguments, sets up logging, and hands
//! off to the library; no business logic lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pgtrail::capture::Capture;
use pgtrail::config::{FileConfig, Overrides};
use pgtrail::tail;
use pgtrail_event::EventClass;
use tracing::info;

mod quickstart;

/// Database activity auditing for PostgreSQL: a wire-protocol proxy that records every
/// connection and statement into a local journal.
#[derive(Debug, Parser)]
#[command(name = "pgtrail", version, propagate_version = true)]
struct Cli {
    /// Process log format (the log never contains SQL text, parameters or passwords).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PGTRAIL_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the auditing proxy in front of a PostgreSQL server.
    ///
    /// Either give a configuration file (see pgtrail.example.toml for every key), or the
    /// three flags --listen, --upstream and --journal, which also override the file.
    /// Stops cleanly on SIGTERM or Ctrl-C: no new connections, sessions get a grace
    /// period, every event is flushed to the journal.
    Proxy {
        /// Configuration file (TOML; unknown keys are errors).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to accept clients on, e.g. 127.0.0.1:6432.
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<SocketAddr>,
        /// The PostgreSQL server to protect, e.g. postgres://db.internal:5432.
        #[arg(long, value_name = "postgres://HOST:PORT")]
        upstream: Option<String>,
        /// Directory of the journal the events are written to.
        #[arg(long, value_name = "DIR")]
        journal: Option<PathBuf>,
    },
    /// Print the events in a journal, oldest first.
    Tail {
        /// Directory of the journal.
        #[arg(long, value_name = "DIR")]
        journal: PathBuf,
        /// Keep running and print new events as they are written.
        #[arg(long, short)]
        follow: bool,
        /// Only events of this database user.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Only events of this class: READ, WRITE, FUNCTION, ROLE, DDL, MISC, MISC_SET, CONNECT, DISCONNECT.
        #[arg(long, value_name = "CLASS")]
        class: Option<EventClass>,
        /// One JSON object per line (the DAS event fields) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start a throwaway PostgreSQL behind the proxy and show its events live.
    ///
    /// Creates a cluster in a temporary directory with the installed PostgreSQL server
    /// binaries, puts the proxy in front of it, prints the psql command to connect, and
    /// prints every event as it is recorded until Ctrl-C. Then everything is removed.
    Quickstart(quickstart::Args),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGTRAIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "shutdown requested"),
        _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "shutdown requested"),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run_blocking(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgtrail: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves what can be resolved before the runtime starts (the proxy's configuration
/// decides the number of worker threads), then runs the command.
fn run_blocking(command: Command) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Command::Proxy { config, listen, upstream, journal } = command {
        let file = match &config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let resolved = file.resolve(&Overrides { listen, upstream, journal })?;
        // One worker: a current-thread scheduler, like pgbouncer's single event loop (no
        // work-stealing bookkeeping on every wake-up). The journal writer has its own thread.
        let runtime = if resolved.workers == 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            builder.worker_threads(resolved.workers).build()
        }
        .context("cannot start the async runtime")?;
        return runtime.block_on(run_proxy(resolved));
    }
    let runtime = builder.build().context("cannot start the async runtime")?;
    runtime.block_on(run(command))
}

async fn run_proxy(resolved: pgtrail::config::CaptureConfig) -> anyhow::Result<()> {
    let workers = resolved.workers;
    let mut capture = Capture::start(resolved).await?;
    info!(listen = %capture.addr, workers, "pgtrail proxy ready");
    tokio::select! {
        () = shutdown_signal() => capture.stop().await,
        result = capture.wait() => result.and_then(|()| anyhow::bail!("the proxy stopped unexpectedly")),
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Proxy { .. } => unreachable!("the proxy is started by run_blocking"),
        Command::Tail { journal, follow, user, class, json } => {
            let filter = tail::Filter { user, class };
            let format = if json { tail::Format::Json } else { tail::Format::Table };
            let stop = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&stop);
            tokio::spawn(async move {
                shutdown_signal().await;
                flag.store(true, Ordering::Relaxed);
            });
            tokio::task::spawn_blocking(move || {
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                tail::run(&journal, &filter, format, follow, &mut out, &|| stop.load(Ordering::Relaxed))
            })
            .await
            .context("tail task failed")?
        }
        Command::Quickstart(args) => quickstart::run(args).await,
    }
}
