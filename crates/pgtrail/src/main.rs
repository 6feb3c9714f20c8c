//! `pgtrail`: the command-line entry point. Parses arguments, loads configuration, sets up
//! logging, and composes the library crates for each subcommand; no business logic lives
//! here.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Parser;
use pgtrail_capture::Capture;
use pgtrail_capture::config::{CaptureConfig, FileConfig, Overrides};
use pgtrail_envelope::{DasEnvelope, Opener};
use pgtrail_journal::{JournalReader, RecordKind, VerifierSet};
use pgtrail_keys as keys;
use pgtrail_reader::view as tail;
use tracing::info;

mod cli;
mod quickstart;

use cli::{
    AlertsCommand, Cli, Command, ExportFormat, JournalCommand, KeysCommand, LogFileFormat, LogFormat, QueryFormat,
    ReportArgs, ReportCommand, ReportFormat, RulesCommand, StreamArgs, TokenCommand, TransportCommand,
};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGTRAIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    use std::io::IsTerminal;
    // Colours only on a terminal: a log file or a collector gets plain key=value text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
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
    quiet_on_closed_stdout();
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `pgtrail tail ... | head`: the reader has all it wanted.
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgtrail: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether an error comes from writing to a pipe whose reader has gone.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let io = cause.downcast_ref::<std::io::Error>().or_else(|| {
            // A consumer's output error is kept whole inside the reader's error.
            cause.downcast_ref::<pgtrail_reader::ConsumerError>().and_then(pgtrail_reader::ConsumerError::io_error)
        });
        io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` panics when stdout is a pipe whose reader has gone (`pgtrail verify | head
/// -1`): end quietly instead, as command-line tools do, with the same status as if the
/// output had been read. Any other panic is reported as before.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// A multi-threaded runtime for the commands that are not the proxy.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// A flag that SIGTERM or SIGINT sets, for the commands that run until told to stop (on
/// blocking threads, which check it between steps).
fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    tokio::spawn(async move {
        shutdown_signal().await;
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

/// Starts the proxy: its configuration decides the runtime (the number of worker threads),
/// so it is resolved before the runtime starts.
fn proxy(config: Option<PathBuf>, overrides: Overrides, set_aside_damaged_journal: bool) -> anyhow::Result<()> {
    let file = match &config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let mut resolved = file.resolve(&overrides)?;
    resolved.writer.journal.set_aside_damage = set_aside_damaged_journal;
    // One worker: a current-thread scheduler, like pgbouncer's single event loop (no
    // work-stealing bookkeeping on every wake-up). The journal writer has its own thread.
    let runtime = if resolved.workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(resolved.workers).build()
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(run_proxy(resolved, config, overrides))
}

/// Runs the proxy until SIGTERM or SIGINT; SIGHUP reloads the configuration (and the key
/// files it names).
async fn run_proxy(resolved: CaptureConfig, config_file: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let workers = resolved.workers;
    let metrics_listen = resolved.metrics_listen;
    let mut capture = Capture::start(resolved).await?;
    info!(listen = %capture.addr, workers, "pgtrail proxy ready");
    let _metrics = match metrics_listen {
        Some(addr) => {
            let healthy = Arc::clone(&capture.journal_healthy);
            let ready: pgtrail_metrics::ReadyFn = Arc::new(move || healthy.load(Ordering::Relaxed));
            let registry = pgtrail_metrics::registry(capture.metric_families());
            Some(pgtrail_metrics::serve(addr, registry, ready).await?.1)
        }
        None => None,
    };
    let mut hangup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(capture.stop().await?),
            result = capture.wait() => {
                result?;
                anyhow::bail!("the proxy stopped unexpectedly");
            }
            _ = hangup.recv() => {
                let file = match &config_file {
                    Some(path) => FileConfig::load(path),
                    None => Ok(FileConfig::default()),
                };
                let resolved = file.and_then(|f| f.resolve(&overrides)).map_err(anyhow::Error::from);
                match resolved.and_then(|new| Ok(capture.reload(new)?)) {
                    Ok(done) => info!(applied = ?done.applied, need_restart = ?done.need_restart, "configuration reloaded"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "configuration reload failed; the running configuration stays"),
                }
            }
        }
    }
}

/// Runs one subcommand.
fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Proxy { config, listen, upstream, journal, keys, set_aside_damaged_journal } => proxy(
            config,
            Overrides { listen, upstream, journal, keys, transports: transports() },
            set_aside_damaged_journal,
        ),
        Command::Tail { journal, source, key, follow, user, class, json, heartbeats, confirmations } => {
            let origins = origins(journal, &source, None)?;
            let filter = tail::Filter { user, class, heartbeats, confirmations };
            let format = if json { tail::Format::Json } else { tail::Format::Table };
            runtime()?.block_on(async move {
                let stop = stop_on_signal();
                tokio::task::spawn_blocking(move || {
                    // Several instances of the stream: one reader each, whole lines on stdout.
                    all_ok(
                        &origins,
                        pgtrail_reader::each_origin(&origins, |origin| {
                            let mut out = tail::SharedStdout::default();
                            let ring = keys::load_key_ring(&key)?;
                            let stop = || stop.load(Ordering::Relaxed);
                            anyhow::Ok(tail::run(origin, ring, &filter, format, follow, &mut out, &stop)?)
                        }),
                    )
                })
                .await
                .context("tail task failed")?
            })
        }
        Command::Quickstart(args) => runtime()?.block_on(quickstart::run(args)),
        Command::Export { journal, source, key, format, output } => {
            export(journal, &source, &key, format, output.as_deref())
        }
        Command::Archive {
            journal,
            source,
            key,
            to,
            state,
            consumer,
            follow,
            roll_events,
            roll_secs,
            signing_key,
            retention_days,
            config,
        } => {
            // Loaded once now so that a bad key fails before anything starts; each reader loads its own.
            keys::load_key_ring(&key)?;
            let signer = keys::load_signer(&signing_key)?;
            let section = config.as_deref().map(pgtrail_archive::ArchiveSection::load).transpose()?.unwrap_or_default();
            let retention_days = retention_days.or(section.retention_days);
            let roll = pgtrail_archive::Roll {
                events: roll_events.max(1),
                age: std::time::Duration::from_secs(roll_secs.max(1)),
            };
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let origins = origins(journal, &source, consumer.as_deref())?;
            let several = origins.len() > 1;
            runtime()?.block_on(async move {
                let stop = stop_on_signal();
                tokio::task::spawn_blocking(move || {
                    all_ok(
                        &origins,
                        pgtrail_reader::each_origin(&origins, |origin| {
                            let config = pgtrail_archive::ArchiveRun {
                                journal: origin.clone(),
                                target: to.clone(),
                                state: origin.cursor(state.as_deref(), several),
                                follow,
                                roll,
                                progress: progress && !several,
                                signer: signer.clone(),
                                retention_days,
                            };
                            let done = pgtrail_archive::run(&config, keys::load_key_ring(&key)?, &|| {
                                stop.load(Ordering::Relaxed)
                            })?;
                            eprintln!(
                                "{}: archived {} events of {} records into {} files ({} records were archived already)",
                                origin.name(),
                                done.events,
                                done.records,
                                done.files,
                                done.skipped
                            );
                            anyhow::Ok(())
                        }),
                    )
                })
                .await
                .context("archive task failed")?
            })
        }
        Command::Query { archive, format, sql } => {
            let format = match format {
                QueryFormat::Table => pgtrail_query::Format::Table,
                QueryFormat::Csv => pgtrail_query::Format::Csv,
                QueryFormat::Jsonl => pgtrail_query::Format::Jsonl,
            };
            runtime()?.block_on(async move {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                pgtrail_query::run(&archive, &sql, format, &mut out).await?;
                std::io::Write::flush(&mut out)?;
                anyhow::Ok(())
            })
        }
        Command::Report(args) => report(args),
        Command::Transport(TransportCommand::Init {
            nats,
            stream,
            replicas,
            max_age_days,
            duplicate_window,
            check,
        }) => {
            let spec = pgtrail_transport_nats::StreamSpec {
                name: stream,
                replicas: replicas.max(1),
                max_age: std::time::Duration::from_secs(max_age_days * 86_400),
                duplicate_window: std::time::Duration::from_secs(duplicate_window),
            };
            let outcome = runtime()?.block_on(pgtrail_transport_nats::init(&nats, &spec, check))?;
            let done = match outcome {
                pgtrail_transport_nats::Outcome::Created => "created",
                pgtrail_transport_nats::Outcome::Fit => "exists and is fit",
            };
            println!(
                "stream {} {done}: subjects {}.>, {} replicas, file storage, DenyDelete and DenyPurge on; \
                 consumers' cursors in the bucket {}",
                spec.name,
                pgtrail_transport_nats::SUBJECT_PREFIX,
                spec.replicas,
                pgtrail_transport_nats::cursor::bucket(&spec.name)
            );
            Ok(())
        }
        Command::Forward {
            journal,
            source,
            key,
            to,
            url,
            state,
            consumer,
            follow,
            token_file,
            ack,
            ack_timeout,
            in_flight,
            index,
            sourcetype,
            batch_events,
            ca_file,
            allow_plaintext,
            timeout,
        } => {
            keys::load_key_ring(&key)?;
            let token = pgtrail_forward::Settings::token(token_file.as_deref())?;
            let settings = pgtrail_forward::Settings {
                target: to,
                url,
                token,
                ack,
                ack_timeout: std::time::Duration::from_secs(ack_timeout.max(1)),
                index,
                sourcetype,
                ca_file,
                plaintext: allow_plaintext,
                batch_events,
                window: in_flight,
                timeout: std::time::Duration::from_secs(timeout.max(1)),
            };
            let origins = origins(journal, &source, consumer.as_deref())?;
            let several = origins.len() > 1;
            runtime()?.block_on(async move {
                let stop = stop_on_signal();
                tokio::task::spawn_blocking(move || {
                    all_ok(
                        &origins,
                        pgtrail_reader::each_origin(&origins, |origin| {
                            let run = pgtrail_forward::ForwardRun {
                                journal: origin.clone(),
                                state: origin
                                    .cursor(state.as_deref(), several)
                                    .context("give --state FILE or --consumer NAME")?,
                                follow,
                                settings: settings.clone(),
                            };
                            match pgtrail_forward::run(&run, keys::load_key_ring(&key)?, &|| {
                                stop.load(Ordering::Relaxed)
                            }) {
                                Ok(done) => {
                                    eprintln!(
                                        "{}: forwarded {} events in {} batches ({} attempts retried)",
                                        origin.name(),
                                        done.events,
                                        done.batches,
                                        done.retries
                                    );
                                    Ok(())
                                }
                                Err(pgtrail_reader::ConsumerError::Consumer(e))
                                    if matches!(e.downcast_ref(), Some(pgtrail_forward::ForwardError::Stopped)) =>
                                {
                                    eprintln!("{e}");
                                    Ok(())
                                }
                                Err(e) => Err(anyhow::Error::from(e)),
                            }
                        }),
                    )
                })
                .await
                .context("forward task failed")?
            })
        }
        Command::Verify { journal, source, archive, verify_key, witness } => {
            let keys = keys::load_verifiers(&verify_key)?;
            if let Some(url) = &source.nats {
                verify_stream(url, &source, &keys)?;
            }
            if let Some(brokers) = source.kafka_brokers()? {
                verify_topics(&brokers, &source.instance, &keys)?;
            }
            if let Some(journal) = &journal {
                verify(journal, &keys, witness.as_deref())?;
            }
            match archive {
                Some(archive) => verify_archive(&archive, &keys, journal.as_deref()),
                None => Ok(()),
            }
        }
        Command::Journal(JournalCommand::Prune { journal, before, archive, signing_key, verify_key }) => {
            let signer = keys::load_signer(&signing_key)?;
            let keys = keys::load_verifiers(&verify_key)?;
            let report = pgtrail_archive::prune_journal(&journal, &archive, before, &signer, &keys)?;
            println!("{}", report.describe(&journal));
            Ok(())
        }
        Command::Transport(TransportCommand::Publish {
            journal,
            nats,
            kafka,
            kafka_tls,
            kafka_ca,
            kafka_allow_plaintext,
            in_flight,
            replication,
            stream,
            state,
            run_records,
            until_caught_up,
        }) => {
            let stats = Arc::new(pgtrail_journal::ship::ShipStats::default());
            let holder = if kafka.is_some() { "topic" } else { "stream" };
            runtime()?.block_on(async {
                let signalled = stop_on_signal();
                let stop = || {
                    signalled.load(Ordering::Relaxed) || (until_caught_up && stats.caught_up.load(Ordering::Relaxed))
                };
                if let Some(list) = kafka {
                    let brokers =
                        pgtrail_transport_kafka::Brokers::new(&list, kafka_tls, kafka_ca, kafka_allow_plaintext)?;
                    let mut settings = pgtrail_transport_kafka::PublishSettings::new(brokers);
                    (settings.run_records, settings.in_flight, settings.replication) =
                        (run_records.max(1), usize::from(in_flight), replication);
                    settings.state = state;
                    pgtrail_transport_kafka::publish(&journal, &settings, None, stats.clone(), &stop).await?;
                } else {
                    let settings = pgtrail_transport_nats::PublishSettings {
                        url: nats.expect("clap requires --nats or --kafka"),
                        stream,
                        run_records: run_records.max(1),
                        run_bytes: pgtrail_transport_nats::PublishSettings::RUN_BYTES,
                        ack_timeout: pgtrail_transport_nats::PublishSettings::ACK_TIMEOUT,
                        state,
                        poll: pgtrail_transport_nats::PublishSettings::POLL,
                    };
                    pgtrail_transport_nats::publish(&journal, &settings, None, stats.clone(), &stop).await?;
                }
                anyhow::Ok(())
            })?;
            eprintln!(
                "published {} records in {} messages; the {holder} holds the journal up to record {}",
                stats.records.load(Ordering::Relaxed),
                stats.messages.load(Ordering::Relaxed),
                stats.published_seq.load(Ordering::Relaxed)
            );
            Ok(())
        }
        Command::Rules(RulesCommand::Check { rules }) => {
            let set = pgtrail_rules::RuleSet::load(&rules)?;
            println!("{}: {} rules OK", rules.display(), set.rules.len());
            for rule in &set.rules {
                println!("  [{}] {}", rule.severity.as_str(), rule.name);
            }
            Ok(())
        }
        Command::Rules(RulesCommand::Test { rules, events, json }) => rules_test(&rules, &events, json),
        Command::Alerts(AlertsCommand::Run {
            journal,
            source,
            key,
            rules,
            state,
            consumer,
            output,
            gap_secs,
            destinations,
            metrics,
        }) => {
            let mut origins = origins(journal, &source, consumer.as_deref())?;
            if origins.len() > 1 {
                let names: Vec<String> = origins.iter().map(pgtrail_reader::Origin::name).collect();
                anyhow::bail!(
                    "alerts run reads one instance per process: name it with --instance ({})",
                    names.join(", ")
                );
            }
            let journal = origins.remove(0);
            let state = journal.cursor(state.as_deref(), false).context("give --state FILE or --consumer NAME")?;
            let ring = keys::load_key_ring(&key)?;
            let rules = pgtrail_rules::RuleSet::load(&rules)?;
            let notify = destinations.as_deref().map(pgtrail_notify::NotifyConfig::load).transpose()?;
            info!(rules = rules.rules.len(), "alerting consumer started");
            let gap = std::time::Duration::from_secs(gap_secs.max(1));
            let status = Arc::default();
            let config = pgtrail_alerts::AlertsRun { journal, rules, state, gap, status };
            runtime()?.block_on(async move {
                let stop = stop_on_signal();
                Ok(pgtrail_alerts::serve(config, ring, output, notify, metrics, stop).await?)
            })
        }
        Command::Token(TokenCommand::Issue { user, db_users, ttl, name, email, groups, key_dir }) => {
            let (signer, created) = pgtrail_identity::local::LocalSigner::load_or_create(&key_dir)?;
            if created {
                eprintln!(
                    "created the token signing key pair in {}; give the proxy auth.local_token_key = \"{}\"",
                    key_dir.display(),
                    key_dir.join(pgtrail_identity::local::PUBLIC_FILE).display()
                );
            }
            let request =
                pgtrail_identity::local::TokenRequest { subject: user, db_users, name, email, groups, ttl_secs: ttl };
            println!("{}", signer.issue(&request)?);
            Ok(())
        }
        Command::Alerts(AlertsCommand::Test { destinations }) => {
            let config = pgtrail_notify::NotifyConfig::load(&destinations)?;
            runtime()?.block_on(test_destinations(&config))
        }
        Command::Ingest { log_dir, format, prefix, journal, keys, state, config } => {
            let format = match format {
                LogFileFormat::Stderr => pgtrail_pgaudit::LogFormat::Stderr,
                LogFileFormat::Csvlog => pgtrail_pgaudit::LogFormat::Csvlog,
                LogFileFormat::Jsonlog => pgtrail_pgaudit::LogFormat::Jsonlog,
            }
            .format(&prefix)
            .context("--prefix is not a usable log_line_prefix")?;
            let file = match &config {
                Some(path) => FileConfig::load(path)?,
                None => FileConfig::default(),
            };
            // A journal writer only: no proxy runs here, so no upstream is needed.
            let overrides = Overrides {
                journal: Some(journal.clone()),
                keys: Some(keys),
                transports: transports(),
                ..Overrides::default()
            };
            let resolved = file.resolve_writer(&overrides)?;
            let state = state.unwrap_or_else(|| journal.with_extension("ingest-position"));
            runtime()?.block_on(async move {
                let writer = pgtrail_capture::open_journal(&resolved).await?;
                let mut publisher = pgtrail_capture::start_publisher(&resolved, &writer.recorder);
                let stop = stop_on_signal();
                let ingest = pgtrail_pgaudit::IngestConfig { log_dir, format, state };
                // Standalone: no proxy sessions to correlate with (the proxy's [pgaudit] section does).
                let result = pgtrail_pgaudit::ingest::run(writer.recorder, ingest, stop, None).await;
                if let Some(publisher) = &mut publisher {
                    publisher.stop_alarms().await;
                }
                writer.task.await.context("journal writer failed")??;
                if let Some(publisher) = publisher {
                    pgtrail_capture::finish_publisher(publisher).await;
                }
                result.map(drop).map_err(anyhow::Error::from)
            })
        }
        Command::Keys(KeysCommand::Init { dir, force }) => {
            let ids = keys::init(&dir, force)?;
            println!("Keys written to {} (each file mode 0600):", dir.display());
            println!("  wrapping.pub  {}  proxy: wraps data keys; cannot unwrap them", ids.wrapping_id);
            println!("  signing.key   {}  proxy: signs journal checkpoints", ids.signing_id);
            println!(
                "  wrapping.key  {}  readers only (tail, export, keys unwrap): keep it off the proxy host",
                ids.wrapping_id
            );
            println!("  verify.pub    {}  anyone: pgtrail verify", ids.signing_id);
            println!("  archive.key   {}  pgtrail archive: signs the archive's manifest", ids.archive_id);
            println!("  archive.pub   {}  anyone: pgtrail verify --archive", ids.archive_id);
            Ok(())
        }
        Command::Keys(KeysCommand::Unwrap { key, record, journal, seq }) => {
            let ring = keys::load_key_ring(&key)?;
            let envelope = match (record, journal, seq) {
                (Some(path), _, _) => read_record_arg(&path)?,
                (None, Some(dir), Some(seq)) => record_at(&dir, seq)?,
                _ => anyhow::bail!("give --record FILE or --journal DIR --seq N"),
            };
            let envelope = DasEnvelope::parse(&envelope).context("not a DAS record")?;
            let mut opener = Opener::new(ring);
            let data_key = opener.data_key(&envelope)?;
            println!("{}", hex::encode(data_key.bytes()));
            Ok(())
        }
    }
}

/// Where a consumer reads: the journal directory, or each instance of the audit stream
/// (those named with --instance, or every one it holds).
/// The transports a journal writer can publish with (`[transport.<kind>]`).
fn transports() -> pgtrail_capture::config::Transports {
    pgtrail_capture::config::Transports::default()
        .with("nats", Arc::new(pgtrail_transport_nats::transport))
        .with("kafka", Arc::new(pgtrail_transport_kafka::transport))
}

/// Where to read: the journal, or the stream's instances (through the named consumer when
/// there is one).
fn origins(
    journal: Option<PathBuf>,
    source: &StreamArgs,
    consumer: Option<&str>,
) -> anyhow::Result<Vec<pgtrail_reader::Origin>> {
    if let Some(dir) = journal {
        return Ok(vec![dir.into()]);
    }
    if let Some(url) = &source.nats {
        return Ok(pgtrail_transport_nats::origins(url, &source.stream, &source.instance, consumer)?);
    }
    if let Some(brokers) = source.kafka_brokers()? {
        return Ok(pgtrail_transport_kafka::origins(&brokers, &source.instance)?);
    }
    anyhow::bail!("give --journal DIR, --nats URL or --kafka BROKERS to read the audit trail")
}

/// Ok when every origin's run was; else the first error, naming its origin when there
/// were several (the error itself is kept: a closed stdout is recognised as such).
fn all_ok(origins: &[pgtrail_reader::Origin], results: Vec<anyhow::Result<()>>) -> anyhow::Result<()> {
    let several = origins.len() > 1;
    for (origin, result) in origins.iter().zip(results) {
        if several {
            result.with_context(|| format!("instance {}", origin.name()))?;
        } else {
            result?;
        }
    }
    Ok(())
}

fn verify_stream(url: &str, source: &StreamArgs, keys: &VerifierSet) -> anyhow::Result<()> {
    let instances = pgtrail_transport_nats::stream_instances(url, &source.stream, &source.instance)?;
    verify_instances(&format!("in stream {}", source.stream), instances, |instance| {
        match pgtrail_transport_nats::verify_instance(url, &source.stream, instance, keys) {
            Ok(report) => Ok(Ok(report)),
            Err(e @ pgtrail_transport_nats::TransportError::Foreign { .. }) => Ok(Err(e.to_string())),
            Err(e) => Err(e.into()),
        }
    })
}

fn verify_topics(
    brokers: &pgtrail_transport_kafka::Brokers,
    named: &[String],
    keys: &VerifierSet,
) -> anyhow::Result<()> {
    let instances = pgtrail_transport_kafka::topic_instances(brokers, named)?;
    verify_instances(&format!("on Kafka {brokers}"), instances, |instance| {
        match pgtrail_transport_kafka::verify_instance(brokers, instance, keys) {
            Ok(report) => Ok(Ok(report)),
            Err(e @ pgtrail_transport_kafka::KafkaError::Foreign { .. }) => Ok(Err(e.to_string())),
            Err(e) => Err(e.into()),
        }
    })
}

/// One OK or FAILED line per instance read from a broker (`place`: "in stream NAME", "on
/// Kafka BROKERS"); an error when any failed. `verify` tells a chain that fails (`Ok(Err)`)
/// from a broker that cannot be read (`Err`, which stops at once).
fn verify_instances(
    place: &str,
    instances: Vec<String>,
    verify: impl Fn(&str) -> anyhow::Result<Result<pgtrail_journal::VerifyReport, String>>,
) -> anyhow::Result<()> {
    let mut failed = 0;
    for instance in instances {
        match verify(&instance)? {
            Ok(report) => println!(
                "OK: instance {instance} {place}: {} records ({} envelopes, {} checkpoints verified), last record {}, {} after the last checkpoint",
                report.last_seq, report.envelopes, report.checkpoints, report.last_seq, report.uncovered
            ),
            Err(e) => {
                println!("FAILED: instance {instance} {place}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("verification failed for {failed} instance(s) {place}");
    }
    Ok(())
}

fn export(
    journal: Option<PathBuf>,
    source: &StreamArgs,
    key: &[PathBuf],
    format: ExportFormat,
    output: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let cef = |event: &pgtrail_event::ActivityEvent, instance: &str, record_seq: u64, event_index: usize| {
        pgtrail_export::cef::line(event, pgtrail_export::Position { instance, record_seq, event_index })
    };
    let ocsf = |event: &pgtrail_event::ActivityEvent, instance: &str, record_seq: u64, event_index: usize| {
        pgtrail_export::ocsf::event(event, pgtrail_export::Position { instance, record_seq, event_index }).to_string()
    };
    let format = match format {
        ExportFormat::Jsonl => tail::ExportFormat::Jsonl,
        ExportFormat::Das => tail::ExportFormat::Das,
        ExportFormat::Cef => tail::ExportFormat::Lines(&cef),
        ExportFormat::Ocsf => tail::ExportFormat::Lines(&ocsf),
    };
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    // Progress on stderr, only when someone is watching and the output is a file.
    let show = output.is_some() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = |records: u64| {
        if show && records.is_multiple_of(1000) {
            eprint!("\r{records} records...");
        }
    };
    let (mut records, mut events) = (0, 0);
    // One origin after the other: the output keeps each instance's events together.
    for origin in origins(journal, source, None)? {
        let mut reader = pgtrail_reader::Reader::new(origin.open(1)?, keys::load_key_ring(key)?);
        let (r, e) = tail::export(&mut reader, format, &mut out, &mut progress)?;
        (records, events) = (records + r, events + e);
    }
    out.flush()?;
    if output.is_some() {
        eprintln!("\rexported {records} records ({events} events)");
    }
    Ok(())
}

/// Damaged segments a repair moved aside (`<segment>.damaged-<time>`).
fn set_aside_segments(journal: &std::path::Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(journal) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".seg.damaged-")))
        .collect();
    out.sort();
    out
}

/// `pgtrail report`: writes the report, then its signature; `report verify` checks one.
fn report(args: ReportArgs) -> anyhow::Result<()> {
    if let Some(ReportCommand::Verify { file, verify_key }) = args.command {
        let keys = keys::load_verifiers(&verify_key)?;
        return match pgtrail_report::verify_file(&file, &keys)? {
            Ok(signature) => {
                println!("OK: {} is signed by key {} (SHA-256 {})", file.display(), signature.key_id, signature.sha256);
                Ok(())
            }
            Err(why) => {
                println!("FAILED: {}: {why}", file.display());
                Err(anyhow::anyhow!("report verification failed: {why}"))
            }
        };
    }
    let (Some(archive), Some(kind), Some(from), Some(output), Some(signing_key)) =
        (args.archive, args.kind, args.from, args.output, args.signing_key)
    else {
        anyhow::bail!("a report needs --archive, --kind, --from, --output and --signing-key");
    };
    let signer = keys::load_signer(&signing_key)?;
    let keys = keys::load_verifiers(&args.verify_key)?;
    let spec = pgtrail_report::Spec {
        archive,
        kind,
        from,
        to: args.to.unwrap_or_else(chrono::Utc::now),
        user: args.user,
        person: args.person,
        object: args.object,
        journals: args.journal,
        html_rows: args.max_rows,
        gap_secs: args.gap.max(1),
    };
    let format = match args.format {
        ReportFormat::Html => pgtrail_report::Format::Html,
        ReportFormat::Csv => pgtrail_report::Format::Csv,
        ReportFormat::Json => pgtrail_report::Format::Json,
    };
    let written = runtime()?.block_on(pgtrail_report::write_signed(&spec, format, &keys, &signer, &output))?;
    let (outcome, signature) = (written.outcome, written.signature);
    eprintln!(
        "wrote {} ({} of {} events) and its signature {}",
        output.display(),
        outcome.written,
        outcome.rows,
        signature.display()
    );
    for line in outcome.integrity.lines() {
        eprintln!("{line}");
    }
    if !outcome.integrity.verified {
        anyhow::bail!("the report's integrity statement says NOT VERIFIED: {}", outcome.integrity.problems.join("; "));
    }
    Ok(())
}

fn verify_archive(archive: &str, keys: &VerifierSet, journal: Option<&std::path::Path>) -> anyhow::Result<()> {
    match pgtrail_archive::verify_archive(archive, keys, journal)? {
        Ok(report) => {
            if report.instances.is_empty() {
                println!("archive {archive}: empty");
            }
            for instance in &report.instances {
                println!("OK: archive {archive}, {instance}");
            }
            Ok(())
        }
        Err(failure) => {
            println!("FAILED: {failure}");
            Err(anyhow::anyhow!("archive verification failed: {failure}"))
        }
    }
}

fn verify(journal: &std::path::Path, keys: &VerifierSet, witness: Option<&std::path::Path>) -> anyhow::Result<()> {
    match pgtrail_journal::verify_dir(journal, keys, witness)? {
        Ok(report) => {
            let truncation = if witness.is_some() {
                "truncation checked against the witness"
            } else {
                "truncation NOT checked: without --witness, deleted trailing records or segments cannot be detected"
            };
            println!(
                "OK: instance {}, {} records in {} segments ({} envelopes, {} checkpoints), last record {}; {truncation}",
                report.instance,
                report.last_seq + 1 - report.pruned_before.max(1),
                report.segments,
                report.envelopes,
                report.checkpoints,
                report.last_seq
            );
            if report.pruned_before > 1 {
                println!(
                    "pruned: records before {} were removed under a signed prune anchor (verified); {} witnessed checkpoints of them not checkable here",
                    report.pruned_before, report.witnessed_pruned
                );
            }
            for aside in set_aside_segments(journal) {
                println!(
                    "note: {} is a damaged segment set aside by --set-aside-damaged-journal; its records are not in the chain",
                    aside.display()
                );
            }
            if let Some(hash) = report.last_hash {
                println!("chain head: {}", hex::encode(hash));
            }
            if witness.is_some() {
                println!("witness: {} checkpoints, all present in the journal", report.witnessed);
            }
            if report.uncovered > 0 {
                println!(
                    "note: the last {} records follow the last checkpoint: chained but not yet signed",
                    report.uncovered
                );
            }
            Ok(())
        }
        Err(failure) => {
            println!("FAILED: {failure}");
            Err(anyhow::anyhow!("journal verification failed at {failure}"))
        }
    }
}

fn read_record_arg(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    if path == std::path::Path::new("-") {
        std::io::stdin().read_to_end(&mut bytes)?;
    } else {
        bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(bytes)
}

fn record_at(journal: &std::path::Path, seq: u64) -> anyhow::Result<Vec<u8>> {
    let mut reader = JournalReader::open(journal, seq)?;
    match reader.next_record()? {
        Some(record) if record.seq == seq && record.kind == RecordKind::Envelope => Ok(record.payload),
        Some(record) if record.seq == seq => anyhow::bail!("record {seq} is a checkpoint, not a DAS record"),
        _ => anyhow::bail!("the journal has no record {seq}"),
    }
}

fn rules_test(rules: &std::path::Path, events: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use std::io::BufRead;
    let set = pgtrail_rules::RuleSet::load(rules)?;
    let mut engine = pgtrail_rules::Engine::new(set);
    let input: Box<dyn BufRead> = if events == std::path::Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(events).with_context(|| format!("cannot read {}", events.display()))?,
        ))
    };
    let (mut count, mut fired) = (0u64, 0u64);
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event: pgtrail_event::ActivityEvent = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not an activity event", events.display(), index + 1))?;
        count += 1;
        for alert in engine.process(&event) {
            fired += 1;
            if json {
                println!("{}", serde_json::to_string(&alert)?);
                continue;
            }
            let status = match alert.status {
                pgtrail_rules::AlertStatus::Firing => "FIRING",
                pgtrail_rules::AlertStatus::Resolved => "RESOLVED",
            };
            println!(
                "{status:<8} [{}] {} at {} (line {}): {}",
                alert.severity.as_str(),
                alert.rule,
                pgtrail_event::format_das_time(&alert.at),
                index + 1,
                alert.reason
            );
            if let Some(e) = &alert.event {
                let who = e.db_user_name.as_deref().unwrap_or("-");
                let what = e.command_text.as_deref().unwrap_or(&e.command);
                println!("         dedup {:?}; {who}: {what}", alert.dedup_key);
            }
        }
    }
    if !json {
        println!(
            "{count} events, {fired} alerts, {} evaluation errors (counted as no match)",
            engine.evaluation_errors
        );
        for (rule, alarm) in engine.alarms() {
            println!("  {:<17} {rule}", alarm.as_str());
        }
    }
    Ok(())
}

/// `pgtrail alerts test`: one test notification per destination, one line per result.
async fn test_destinations(config: &pgtrail_notify::NotifyConfig) -> anyhow::Result<()> {
    if config.destinations.is_empty() {
        anyhow::bail!("the destinations file names no [[destination]]");
    }
    println!("Sending a test notification to {} destinations...", config.destinations.len());
    let results = pgtrail_notify::test_all(config).await?;
    let mut failed = 0;
    for result in &results {
        for (step, outcome) in &result.outcomes {
            let tries = if outcome.attempts == 1 { String::new() } else { format!(", {} attempts", outcome.attempts) };
            match &outcome.result {
                Ok(()) => println!(
                    "  ok      {} ({}) {step}: delivered in {} ms{tries}",
                    result.name,
                    result.kind,
                    outcome.elapsed.as_millis()
                ),
                Err(error) => println!("  FAILED  {} ({}) {step}: {error}{tries}", result.name, result.kind),
            }
        }
        if !result.ok() {
            failed += 1;
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} destinations failed", results.len());
    }
    println!("All {} destinations accepted the test notification.", results.len());
    Ok(())
}
