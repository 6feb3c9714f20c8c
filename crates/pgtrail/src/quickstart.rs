//! `pgtrail quickstart`: a throwaway PostgreSQL behind the proxy, with live events.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use pgtrail::capture::Capture;
use pgtrail::config::{FileConfig, Overrides};
use pgtrail::localpg::{HostAuth, LocalPg, LocalPgOptions};
use pgtrail::{keys, tail};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port for the proxy on 127.0.0.1 (a free one is chosen if it is taken).
    #[arg(long, default_value_t = 6432)]
    port: u16,
    /// Keep the journal here instead of in the temporary directory.
    #[arg(long, value_name = "DIR")]
    journal: Option<PathBuf>,
    /// Password of the `postgres` user of the throwaway cluster.
    #[arg(long, default_value = "pgtrail")]
    password: String,
    /// Start, print the connection details, and exit right away after one event check
    /// (for scripts and smoke tests).
    #[arg(long, hide = true)]
    smoke: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    eprintln!("Starting a throwaway PostgreSQL cluster...");
    let pgaudit = pgaudit_installed(&pgtrail::localpg::PgBinaries::find()?.bindir);
    let mut options =
        LocalPgOptions { auth: HostAuth::ScramSha256, superuser_password: args.password.clone(), ..Default::default() };
    if pgaudit {
        options.settings = PGAUDIT_SETTINGS.iter().map(|s| s.to_string()).collect();
    }
    let pg = tokio::task::spawn_blocking(move || LocalPg::start(&options)).await??;
    if pgaudit {
        pg.psql("CREATE EXTENSION pgaudit").context("CREATE EXTENSION pgaudit")?;
    }
    let workdir = tempfile::Builder::new().prefix("pgtrail-quickstart-").tempdir()?;
    let journal = args.journal.clone().unwrap_or_else(|| workdir.path().join("journal"));
    // Keys next to a kept journal (so it stays readable), else in the temporary directory.
    let keys_dir = match &args.journal {
        Some(dir) => dir.with_extension("keys"),
        None => workdir.path().join("keys"),
    };
    if !keys_dir.join(keys::WRAPPING_PUBLIC).exists() {
        keys::init(&keys_dir, false)?;
    }
    let ring_path = keys_dir.join(keys::WRAPPING_PRIVATE);
    let listen = pick_listen(args.port);
    let mut config = FileConfig::default().resolve(&Overrides {
        listen: Some(listen),
        upstream: Some(format!("postgres://{}:{}", pg.host(), pg.port())),
        journal: Some(journal.clone()),
        keys: Some(keys_dir.clone()),
    })?;
    if pgaudit {
        config.pgaudit = Some(pgtrail::ingest::IngestConfig {
            log_dir: pg.log_dir(),
            format: pgtrail_pgaudit::Format::Csvlog,
            state: workdir.path().join("ingest-position"),
        });
    }
    let capture = Capture::start(config).await?;
    let addr = capture.addr;
    println!();
    println!("PostgreSQL {} is running behind pgtrail.", pg.binaries().bindir.display());
    println!();
    println!("  Connect through the proxy:   psql \"postgres://postgres:{}@{addr}/postgres\"", args.password);
    let me = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "pgtrail".into());
    println!(
        "  Read the journal elsewhere:  {me} tail --journal {} --key {} --follow",
        journal.display(),
        ring_path.display()
    );
    println!(
        "  Check its integrity:         {me} verify --journal {} --verify-key {}",
        journal.display(),
        keys_dir.join(keys::VERIFY_PUBLIC).display()
    );
    println!();
    println!("  Records are DAS records (gzip, AWS Encryption SDK, suite 0x0178) in a hash-chained");
    println!(
        "  journal with signed checkpoints. Keys (test keys, thrown away unless --journal): {}",
        keys_dir.display()
    );
    println!();
    if pgaudit {
        println!("  pgAudit is on: statements inside functions and DO blocks are recorded from the server's");
        println!("  log (source pgaudit), joined to the proxy's sessions; a session opened directly on port");
        println!("  {} (around pgtrail) raises \"direct connection bypassing pgtrail\".", pg.port());
    } else {
        println!("  pgAudit is not installed: `sudo apt-get install postgresql-15-pgaudit` (Debian, Ubuntu)");
        println!("  adds in-engine detail and the detection of sessions that bypass pgtrail.");
    }
    println!();
    println!("Every connection, statement and disconnect appears below, and the built-in rule pack's");
    println!("alerts (lines starting ALERT). Ctrl-C stops and cleans up.");
    println!();
    if args.smoke {
        return smoke(capture, pg, &journal, &ring_path, addr, &args.password, pgaudit).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let journal_dir = journal.clone();
    let ring = keys::load_key_ring(std::slice::from_ref(&ring_path))?;
    let printer = tokio::task::spawn_blocking(move || {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        tail::run(&journal_dir, ring, &tail::Filter::default(), tail::Format::Table, true, &mut out, &|| {
            flag.load(Ordering::Relaxed)
        })
    });
    // The alerting consumer with the built-in rule pack, as `pgtrail alerts run` runs it.
    let alerts_stop = Arc::clone(&stop);
    let alert_config = pgtrail::alerts::AlertsRun {
        journal: journal.clone(),
        rules: pgtrail_rules::RuleSet::parse("builtin = true\n", "built-in pack")?,
        state: workdir.path().join("alerts.cursor"),
        gap: std::time::Duration::from_secs(30),
        status: Arc::default(),
    };
    let alert_ring = keys::load_key_ring(std::slice::from_ref(&ring_path))?;
    let alerter = tokio::task::spawn_blocking(move || {
        let mut print = |alerts: &[pgtrail_rules::Alert]| -> anyhow::Result<()> {
            for alert in alerts {
                println!("{}", pgtrail::alerts::alert_line(alert));
            }
            Ok(())
        };
        pgtrail::alerts::run_with(alert_config, alert_ring, &mut print, &|| alerts_stop.load(Ordering::Relaxed))
    });
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    eprintln!("\nStopping: closing sessions, flushing the journal, removing the cluster...");
    capture.stop().await?;
    // Let the printer show the DISCONNECT events, then stop it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    printer.await??;
    alerter.await??;
    drop(pg);
    if let Some(dir) = &args.journal {
        eprintln!("The journal stays in {}.", dir.display());
    }
    eprintln!("Done.");
    Ok(())
}

/// What the throwaway cluster runs with when pgAudit is there: every class audited, with
/// parameters and rows, written to csvlog by the logging collector.
const PGAUDIT_SETTINGS: [&str; 9] = [
    "shared_preload_libraries = 'pgaudit'",
    "pgaudit.log = 'all'",
    "pgaudit.log_parameter = on",
    "pgaudit.log_rows = on",
    "logging_collector = on",
    "log_destination = 'csvlog'",
    "log_directory = 'log'",
    "log_connections = on",
    "log_disconnections = on",
];

/// pgaudit's extension files for this server (Debian's layout: bin in
/// /usr/lib/postgresql/N/bin, extensions in /usr/share/postgresql/N/extension).
fn pgaudit_installed(bindir: &std::path::Path) -> bool {
    let Some(major) = bindir.parent().and_then(|p| p.file_name()) else { return false };
    let control = std::path::Path::new("/usr/share/postgresql").join(major).join("extension/pgaudit.control");
    let library = bindir.parent().map(|p| p.join("lib/pgaudit.so"));
    control.is_file() && library.is_some_and(|l| l.is_file())
}

/// 127.0.0.1 on the requested port, or on a free port when it is taken.
fn pick_listen(port: u16) -> SocketAddr {
    let wanted = SocketAddr::from(([127, 0, 0, 1], port));
    if std::net::TcpListener::bind(wanted).is_ok() {
        wanted
    } else {
        eprintln!("Port {port} is taken; choosing a free one.");
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
}

/// Connects once through the proxy with psql, stops, and checks the events arrived.
async fn smoke(
    capture: Capture,
    pg: LocalPg,
    journal: &std::path::Path,
    key: &std::path::Path,
    addr: SocketAddr,
    password: &str,
    pgaudit: bool,
) -> anyhow::Result<()> {
    let psql = pg.binaries().bin("psql");
    let url = format!("postgres://postgres:{password}@{addr}/postgres");
    let status = tokio::process::Command::new(psql).args([url.as_str(), "-X", "-c", "SELECT 1"]).status().await?;
    anyhow::ensure!(status.success(), "psql through the proxy failed");
    if pgaudit {
        // Time for the ingester to read the server's log.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    capture.stop().await?;
    let events = tail::read_all(journal, keys::load_key_ring(&[key.to_path_buf()])?)?;
    let mut out = std::io::stdout();
    use std::io::Write;
    for e in &events {
        writeln!(out, "{}", tail::table_row(e))?;
    }
    anyhow::ensure!(events.iter().any(|e| e.command == "SELECT"), "no SELECT event was recorded");
    if pgaudit {
        let from_log = events.iter().any(|e| {
            e.source == Some(pgtrail_event::EventSource::Pgaudit) && e.command_text.as_deref() == Some("SELECT 1")
        });
        anyhow::ensure!(from_log, "pgAudit is installed but its SELECT 1 was not ingested");
        writeln!(out, "pgaudit: on")?;
    }
    let mut engine = pgtrail_rules::Engine::new(pgtrail_rules::RuleSet::parse("builtin = true\n", "built-in pack")?);
    for event in &events {
        for alert in engine.process(event) {
            writeln!(out, "{}", pgtrail::alerts::alert_line(&alert))?;
        }
    }
    drop(pg);
    Ok(())
}
