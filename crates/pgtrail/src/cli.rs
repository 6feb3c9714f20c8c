//! The command line: every subcommand and flag, with the help text `--help` shows.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use pgtrail_event::EventClass;

use crate::quickstart;

/// Database activity auditing for PostgreSQL: a wire-protocol proxy that records every
/// connection and statement into a local journal.
#[derive(Debug, Parser)]
#[command(name = "pgtrail", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Process log format (the log never contains SQL text, parameters or passwords).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PGTRAIL_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFileFormat {
    Stderr,
    Csvlog,
    Jsonlog,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the auditing proxy in front of a PostgreSQL server.
    ///
    /// Either give a configuration file (see pgtrail.example.toml for every key), or the
    /// three flags --listen, --upstream and --journal, which also override the file.
    /// Stops cleanly on SIGTERM or Ctrl-C: no new connections, sessions get a grace
    /// period, every event is flushed to the journal. SIGHUP reloads the configuration: a
    /// new wrapping key and the [envelope] settings apply from the next record; other
    /// changes need a restart (the log and a control event in the stream say which).
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
        /// Directory with wrapping.pub and signing.key (from `pgtrail keys init`).
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
        /// When the journal's last segment is damaged or tampered with (the proxy refuses
        /// to start on it, naming the record), move that segment aside intact as
        /// <segment>.damaged-<time>, continue after its last valid record, and record the
        /// repair in the stream (JOURNAL REPAIRED, a critical alert). Run `pgtrail verify`
        /// first and keep the set-aside file as evidence.
        #[arg(long)]
        set_aside_damaged_journal: bool,
    },
    /// Print the events in a journal, oldest first (decrypting, checking the hash chain).
    Tail {
        /// Directory of the journal.
        #[arg(long, value_name = "DIR", required_unless_present_any = ["nats", "kafka"], conflicts_with_all = ["nats", "kafka"])]
        journal: Option<PathBuf>,
        #[command(flatten)]
        source: StreamArgs,
        /// Wrapping private key file (wrapping.key), or a directory of wrapping*.key files.
        /// Repeat for records wrapped to older keys.
        #[arg(long, value_name = "FILE|DIR", required = true)]
        key: Vec<PathBuf>,
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
        /// Show heartbeat events too.
        #[arg(long)]
        heartbeats: bool,
        /// Show pgAudit's records of statements the proxy recorded too (each names the
        /// proxy event it confirms in `confirms`); hidden by default, as they are the same
        /// statements seen twice.
        #[arg(long)]
        confirmations: bool,
    },
    /// Start a throwaway PostgreSQL behind the proxy and show its events live.
    ///
    /// Creates a cluster in a temporary directory with the installed PostgreSQL server
    /// binaries, puts the proxy in front of it, prints the psql command to connect, and
    /// prints every event as it is recorded until Ctrl-C. Then everything is removed.
    Quickstart(quickstart::Args),
    /// Write every record of a journal to stdout or a file (decrypting, checking the chain).
    Export {
        /// The journal directory to read (the proxy's journal.dir).
        #[arg(long, value_name = "DIR", required_unless_present_any = ["nats", "kafka"], conflicts_with_all = ["nats", "kafka"])]
        journal: Option<PathBuf>,
        #[command(flatten)]
        source: StreamArgs,
        /// Wrapping private key file or directory (repeatable), as for tail.
        #[arg(long, value_name = "FILE|DIR", required = true)]
        key: Vec<PathBuf>,
        /// jsonl: one event per line. das: one DAS record per line, exactly as written
        /// (encrypted; readable by DAS consumers given `pgtrail keys unwrap`). cef: one
        /// ArcSight CEF line per event, for SIEMs. ocsf: one OCSF 1.8.0 JSON object per
        /// event (Authentication, Datastore Activity, Event Log Activity; see the README).
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Output file (default: standard output).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Archive a journal's events as Parquet files (zstd), Hive-partitioned by date and
    /// instance (date=YYYY-MM-DD/instance=NAME/part-NNNNNNNN.parquet), each file recorded in
    /// a hash-chained manifest (_manifest/). Without --follow it archives what the journal
    /// holds and exits; a restart resumes exactly where the last file ended.
    Archive {
        /// The journal directory to archive (the proxy's journal.dir). With --nats or --kafka instead,
        /// every instance of the stream (or those named) is archived at once, each with its
        /// own cursor (--state FILE.<instance>).
        #[arg(long, value_name = "DIR", required_unless_present_any = ["nats", "kafka"], conflicts_with_all = ["nats", "kafka"])]
        journal: Option<PathBuf>,
        #[command(flatten)]
        source: StreamArgs,
        /// Wrapping private key file or directory (repeatable), as for tail.
        #[arg(long, value_name = "FILE|DIR", required = true)]
        key: Vec<PathBuf>,
        /// Where the archive goes: a directory (created when missing), or
        /// s3://BUCKET/PREFIX on AWS or any S3-compatible store, configured by the usual
        /// AWS environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
        /// AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL).
        #[arg(long, value_name = "URL")]
        to: String,
        /// Cursor file: where the last run stopped, so a restart reads on from there.
        /// Without it the journal is read from its start and what the manifest holds is
        /// skipped.
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// With --nats: keep the cursor in the stream's key-value bucket (<stream>_CURSORS,
        /// key NAME.<instance>) instead of a file, and read through the durable consumer
        /// NAME_<instance>, acknowledged as the cursor is saved. The consumer then needs no
        /// disk of its own and can move to another machine; run one process per NAME.
        #[arg(long, value_name = "NAME", requires = "nats", conflicts_with = "state")]
        consumer: Option<String>,
        /// Keep archiving new records until SIGINT/SIGTERM (then write what is pending).
        #[arg(long)]
        follow: bool,
        /// Roll files after this many events.
        #[arg(long, value_name = "N", default_value_t = pgtrail_archive::Roll::EVENTS)]
        roll_events: usize,
        /// With --follow: roll files once their oldest event has waited this long.
        #[arg(long, value_name = "SECONDS", default_value_t = pgtrail_archive::Roll::AGE_SECS)]
        roll_secs: u64,
        /// The archive key (archive.key from `pgtrail keys init`): signs every manifest
        /// entry, so that `pgtrail verify --archive` can prove the files unaltered.
        #[arg(long, value_name = "FILE")]
        signing_key: PathBuf,
        /// Delete the files of dates older than this many days (UTC), once a day; each
        /// deletion is recorded in the manifest and as an ARCHIVE RETENTION control event
        /// in the archive. Default: archive.retention_days from --config, else keep all.
        #[arg(long, value_name = "DAYS")]
        retention_days: Option<u32>,
        /// A TOML configuration file; its [archive] table is read (retention_days).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run SQL over an archive made by `pgtrail archive`. The archive is one table named
    /// events (the columns of the archive schema, plus the partitions date and instance:
    /// filters on them skip whole directories).
    ///
    /// Example: pgtrail query --archive /srv/audit-archive "SELECT db_user_name, count(*)
    /// FROM events WHERE date >= '2026-11-01' GROUP BY 1 ORDER BY 2 DESC"
    Query {
        /// The archive: a directory or s3://BUCKET/PREFIX (the AWS environment variables
        /// configure S3, as for archive).
        #[arg(long, value_name = "URL")]
        archive: String,
        /// table: aligned columns; csv: with a header row; jsonl: one JSON object per row.
        #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
        format: QueryFormat,
        /// The SQL statement (DataFusion's dialect, close to PostgreSQL's).
        sql: String,
    },
    /// Stream a journal's events to a SIEM, with a cursor of its own: the cursor moves
    /// only once the destination has confirmed a batch (an HTTP 2xx, and with --ack Splunk's
    /// indexer acknowledgement), failed batches are retried with backoff (0.5 s doubling to
    /// 30 s, until SIGTERM), so a crash or an outage never loses events; a batch may be
    /// sent twice, and each event carries its journal position (instance:record:index) to
    /// tell the copies apart.
    ///
    /// splunk-hec: --url https://splunk:8088 (the HEC base URL), the token in
    /// PGTRAIL_FORWARD_TOKEN or --token-file; events go to /services/collector/event.
    /// syslog-cef: --url tls://siem:6514, one CEF line per RFC 5424 message, RFC 5425
    /// framing. ocsf-http: --url https://collector/path, a JSON array of OCSF 1.8.0 events
    /// per POST (bearer token optional). Plain http:// or tcp:// only to loopback, or with
    /// --allow-plaintext.
    Forward {
        /// The journal directory to read (the proxy's journal.dir). With --nats or --kafka instead,
        /// every instance of the stream (or those named) is forwarded at once, each with its
        /// own cursor (--state FILE.<instance>).
        #[arg(long, value_name = "DIR", required_unless_present_any = ["nats", "kafka"], conflicts_with_all = ["nats", "kafka"])]
        journal: Option<PathBuf>,
        #[command(flatten)]
        source: StreamArgs,
        /// Wrapping private key file or directory (repeatable), as for tail.
        #[arg(long, value_name = "FILE|DIR", required = true)]
        key: Vec<PathBuf>,
        /// splunk-hec, syslog-cef or ocsf-http.
        #[arg(long, value_name = "DESTINATION")]
        to: pgtrail_forward::Target,
        /// Where: see above for each destination.
        #[arg(long, value_name = "URL")]
        url: String,
        /// The forwarder's cursor file (one per destination): a restart resumes after the
        /// last batch the destination confirmed.
        #[arg(long, value_name = "FILE", required_unless_present = "consumer")]
        state: Option<PathBuf>,
        /// With --nats: keep the cursor in the stream's key-value bucket (<stream>_CURSORS,
        /// key NAME.<instance>) instead of a file, and read through the durable consumer
        /// NAME_<instance>, acknowledged as the cursor is saved. The consumer then needs no
        /// disk of its own and can move to another machine; run one process per NAME.
        #[arg(long, value_name = "NAME", requires = "nats", conflicts_with = "state")]
        consumer: Option<String>,
        /// Keep forwarding new records until SIGINT/SIGTERM.
        #[arg(long)]
        follow: bool,
        /// A file holding the HEC token (or the bearer token of ocsf-http); keep it 0600.
        /// Or set PGTRAIL_FORWARD_TOKEN.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Splunk HEC: wait for the indexer acknowledgement of each batch (the token must
        /// have it enabled); the cursor moves only after it.
        #[arg(long)]
        ack: bool,
        /// Splunk HEC: send a batch again when it is not acknowledged in this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = pgtrail_forward::Settings::ACK_TIMEOUT.as_secs())]
        ack_timeout: u64,
        /// Splunk HEC with --ack: batches sent before waiting for their acknowledgements
        /// (polled together); the cursor moves once all of them are acknowledged.
        #[arg(long, value_name = "N", default_value_t = pgtrail_forward::Settings::WINDOW)]
        in_flight: usize,
        /// Splunk HEC: the index (default: the token's).
        #[arg(long, value_name = "NAME")]
        index: Option<String>,
        /// Splunk HEC: the sourcetype.
        #[arg(long, value_name = "NAME", default_value = "pgtrail:activity")]
        sourcetype: String,
        /// Events per batch.
        #[arg(long, value_name = "N", default_value_t = pgtrail_forward::Settings::BATCH_EVENTS)]
        batch_events: usize,
        /// A PEM file of CA certificates to trust besides the system's (a private CA).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Allow plain HTTP or TCP to a host other than loopback (events unencrypted).
        #[arg(long)]
        allow_plaintext: bool,
        /// A request with no answer in this many seconds failed (and is retried).
        #[arg(long, value_name = "SECONDS", default_value_t = pgtrail_forward::Settings::TIMEOUT.as_secs())]
        timeout: u64,
    },
    /// Make a compliance report from an archive, signed, ending with an integrity
    /// statement: the journal records the report covers, the checkpoints that sign them,
    /// the archive manifest's last entry, and what verifying them found (the command
    /// exits 1 when verification failed, after writing the report that says so).
    ///
    /// Kinds: object-access (who read or changed an object; --object for one),
    /// privileged (ROLE, DDL, superuser sessions, password changes, COPY PROGRAM),
    /// failed-logins (failed or refused logins), person (one person's activity across
    /// database users; needs --person), denied (statements the policy denied or the
    /// journal refused), coverage (connections that bypassed pgtrail, loss records,
    /// the capture's control events).
    ///
    /// Example: pgtrail report --archive /srv/audit-archive --journal /var/lib/pgtrail/journal
    /// --kind privileged --from 2026-11-01 --to 2026-11-30 --format html -o privileged.html
    /// --signing-key keys/signing.key --verify-key keys/verify.pub --verify-key keys/archive.pub
    ///
    /// Check a report later with: pgtrail report verify privileged.html --verify-key keys/verify.pub
    Report(ReportArgs),
    /// Check a journal's integrity with the public verification key only: CRCs, the hash
    /// chain, sequence continuity, checkpoint signatures, a prune anchor and (with
    /// --witness) truncation. With --archive, check an archive too: its manifest chain and
    /// signatures, every file's hash and rows, no file missing or extra, no journal record
    /// left out, and (with --journal) each entry against the journal's records and the
    /// manifest entry a prune anchor pins. Exits 1 naming the first problem.
    Verify {
        /// The journal directory.
        #[arg(long, value_name = "DIR", required_unless_present_any = ["archive", "nats", "kafka"])]
        journal: Option<PathBuf>,
        #[command(flatten)]
        source: StreamArgs,
        /// An archive made by `pgtrail archive` (a directory or s3://BUCKET/PREFIX).
        #[arg(long, value_name = "URL")]
        archive: Option<String>,
        /// Verification keys: verify.pub for checkpoints and prune anchors, archive.pub for
        /// the archive's manifest; repeat for each, and for rotated keys.
        #[arg(long = "verify-key", value_name = "FILE", required = true)]
        verify_key: Vec<PathBuf>,
        /// Witness directory the proxy copied checkpoints to (journal.witness_dir).
        #[arg(long, value_name = "DIR")]
        witness: Option<PathBuf>,
    },
    /// Read pgAudit's records (and connections, disconnections, errors) from PostgreSQL's
    /// log files into a journal: sealed, hash-chained and checkpointed like the proxy's.
    ///
    /// Follows the files of one format in the log directory across rotation and truncation;
    /// the position is saved once the events are durable, so a restart neither repeats nor
    /// skips. Lines it cannot read are counted, logged once per kind and recorded as LOG
    /// PARSE ERROR control events naming file and line. Stops cleanly on SIGTERM or Ctrl-C.
    Ingest {
        /// PostgreSQL's log directory (log_directory).
        #[arg(long, value_name = "DIR")]
        log_dir: PathBuf,
        /// Which files to read: stderr (*.log), csvlog (*.csv) or jsonlog (*.json).
        #[arg(long, value_enum)]
        format: LogFileFormat,
        /// log_line_prefix of the stderr format, as in postgresql.conf.
        #[arg(long, default_value = "%m [%p] %q%u@%d ")]
        prefix: String,
        /// Journal directory to write to.
        #[arg(long, value_name = "DIR")]
        journal: PathBuf,
        /// Key directory (wrapping.pub and signing.key, from `pgtrail keys init`).
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
        /// Position file (default: <journal>.ingest-position).
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// Configuration file for [journal], [instance], [envelope] and [recorder].
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Make and use keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage a journal.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// The fleet transport on NATS JetStream.
    #[command(subcommand)]
    Transport(TransportCommand),
    /// Check rule files and try them on events.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Alerting.
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// pgtrail local tokens, for places without an identity provider.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct ReportArgs {
    #[command(subcommand)]
    pub(crate) command: Option<ReportCommand>,
    /// The archive: a directory or s3://BUCKET/PREFIX (the AWS environment variables
    /// configure S3, as for archive).
    #[arg(long, value_name = "URL", required = true)]
    pub(crate) archive: Option<String>,
    /// object-access, privileged, failed-logins, person, denied or coverage.
    #[arg(long, value_name = "KIND", required = true)]
    pub(crate) kind: Option<pgtrail_report::Kind>,
    /// Events logged at or after this time: RFC 3339 (2026-11-01T09:00:00Z) or a UTC date.
    #[arg(long, value_name = "TIME", required = true, value_parser = |s: &str| pgtrail_report::parse_time(s, false))]
    pub(crate) from: Option<chrono::DateTime<chrono::Utc>>,
    /// Events logged before this time: RFC 3339, or a UTC date to take in the whole of
    /// that day. Default: now.
    #[arg(long, value_name = "TIME", value_parser = |s: &str| pgtrail_report::parse_time(s, true))]
    pub(crate) to: Option<chrono::DateTime<chrono::Utc>>,
    /// Only this database user.
    #[arg(long, value_name = "ROLE")]
    pub(crate) user: Option<String>,
    /// Only this person: the name, email or subject the identity provider gives.
    #[arg(long, value_name = "WHO")]
    pub(crate) person: Option<String>,
    /// Only events on this object (a table, view or function as the events name it).
    #[arg(long, value_name = "NAME")]
    pub(crate) object: Option<String>,
    /// html: one self-contained printable page (summary, chart, rows, integrity); csv: a
    /// header row, the rows, the integrity statement as # lines; json: one document.
    #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
    pub(crate) format: ReportFormat,
    /// The report file; its signature goes next to it, in FILE.sig.
    #[arg(long, short, value_name = "FILE", required = true)]
    pub(crate) output: Option<PathBuf>,
    /// A journal of an instance in the archive (repeatable): the archive is verified
    /// against it and the integrity statement names its checkpoints. Without one, the
    /// statement rests on the archive key alone and says so.
    #[arg(long, value_name = "DIR")]
    pub(crate) journal: Vec<PathBuf>,
    /// Verification keys: archive.pub for the manifest, verify.pub for the checkpoints
    /// (repeat for each, and for rotated keys).
    #[arg(long = "verify-key", value_name = "FILE", required = true)]
    pub(crate) verify_key: Vec<PathBuf>,
    /// The key that signs the report: the checkpoint signing key (signing.key) or a
    /// reporter key of the same kind.
    #[arg(long, value_name = "FILE", required = true)]
    pub(crate) signing_key: Option<PathBuf>,
    /// At most this many rows listed in an HTML report (the summary counts them all; CSV
    /// and JSON list every row).
    #[arg(long, value_name = "N", default_value_t = pgtrail_report::Spec::HTML_ROWS)]
    pub(crate) max_rows: usize,
    /// Coverage reports: list the stretches of more than this many seconds in which an
    /// instance recorded no event at all (not even a heartbeat).
    #[arg(long, value_name = "SECONDS", default_value_t = pgtrail_report::Spec::GAP_SECS)]
    pub(crate) gap: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ReportFormat {
    Html,
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ReportCommand {
    /// Check a report against its signature file (FILE.sig): exits 1 if the report or its
    /// signature was changed or the key is not among the verification keys.
    Verify {
        /// The report file.
        file: PathBuf,
        /// Verification keys (verify.pub, or the reporter key's public half); repeatable.
        #[arg(long = "verify-key", value_name = "FILE", required = true)]
        verify_key: Vec<PathBuf>,
    },
}

/// Reading records from the audit stream on JetStream instead of a journal directory.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StreamArgs {
    /// Read from the audit stream on these NATS servers (nats://HOST:PORT, comma-separated)
    /// instead of a journal directory. Each instance's chain and checkpoints are checked
    /// across the stream exactly as in a journal.
    #[arg(long, value_name = "URL", conflicts_with = "kafka")]
    pub(crate) nats: Option<String>,
    /// The audit stream's name (with --nats).
    #[arg(long = "stream", value_name = "NAME", default_value = pgtrail_transport_nats::StreamSpec::NAME)]
    pub(crate) stream: String,
    /// Only this instance (repeatable; with --nats or --kafka). Default: every instance in
    /// the stream (every pgtrail.records.* topic on Kafka).
    #[arg(long, value_name = "NAME")]
    pub(crate) instance: Vec<String>,
    /// Read from the instances' topics (pgtrail.records.<instance>) on these Kafka brokers
    /// (HOST:PORT, comma-separated) instead of a journal directory; each topic is read from
    /// its first message and its chain checked from the genesis. Plaintext only to brokers
    /// on this host unless --kafka-tls or --kafka-allow-plaintext.
    #[arg(long, value_name = "BROKERS")]
    pub(crate) kafka: Option<String>,
    /// Reach the Kafka brokers over TLS.
    #[arg(long, requires = "kafka")]
    pub(crate) kafka_tls: bool,
    /// The CA certificates (PEM) that sign the Kafka brokers' certificates (default: the
    /// system's).
    #[arg(long, value_name = "FILE", requires = "kafka_tls")]
    pub(crate) kafka_ca: Option<PathBuf>,
    /// Allow plaintext to Kafka brokers on other hosts (a trusted network only).
    #[arg(long, requires = "kafka")]
    pub(crate) kafka_allow_plaintext: bool,
}

impl StreamArgs {
    /// The Kafka brokers, with --kafka.
    pub(crate) fn kafka_brokers(&self) -> anyhow::Result<Option<pgtrail_transport_kafka::Brokers>> {
        let Some(list) = &self.kafka else { return Ok(None) };
        let brokers = pgtrail_transport_kafka::Brokers::new(
            list,
            self.kafka_tls,
            self.kafka_ca.clone(),
            self.kafka_allow_plaintext,
        )?;
        Ok(Some(brokers))
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum TransportCommand {
    /// Create the audit stream on a JetStream cluster, or check the one there (exit 1 with
    /// every shortcoming named: too few replicas, delete or purge allowed, rollups, memory
    /// storage, a short de-duplication window or retention, other subjects). A stream that
    /// falls short is reported, never changed. Subjects: pgtrail.records.<instance>. Also
    /// creates (or checks) the key-value bucket <stream>_CURSORS where named consumers
    /// (--consumer) keep their cursors, with as many replicas.
    Init {
        /// The NATS servers: nats://HOST:PORT, comma-separated for several.
        #[arg(long, value_name = "URL")]
        nats: String,
        /// The stream's name.
        #[arg(long, value_name = "NAME", default_value = pgtrail_transport_nats::StreamSpec::NAME)]
        stream: String,
        /// Copies of every record, on different servers (JetStream allows up to 5).
        #[arg(long, value_name = "N", default_value_t = pgtrail_transport_nats::StreamSpec::REPLICAS)]
        replicas: usize,
        /// Records older than this many days expire (0: never).
        #[arg(long, value_name = "DAYS", default_value_t = 400)]
        max_age_days: u64,
        /// A record sent again within this many seconds (same message id) is stored once.
        #[arg(long, value_name = "SECONDS", default_value_t = pgtrail_transport_nats::StreamSpec::DUPLICATE_WINDOW.as_secs())]
        duplicate_window: u64,
        /// Only check the stream; never create it.
        #[arg(long)]
        check: bool,
    },
    /// Publish a journal to the audit stream: each record, once durable, exactly as the
    /// journal frames it, on pgtrail.records.<instance>, de-duplicated by message id
    /// (instance:record) and checked by the expected last subject sequence, so the stream
    /// can neither skip nor reorder records. Resumes where the stream says it stands (checked
    /// against --state and the local journal); while JetStream is unreachable records wait
    /// in the journal and are sent once it is back. Runs until SIGTERM or Ctrl-C.
    /// With --kafka instead: to the instance's topic pgtrail.records.<instance> (created if
    /// missing) through an idempotent producer (acks=all, --in-flight messages at once),
    /// resuming after the topic's last record.
    /// (The proxy and `pgtrail ingest` publish by themselves with [transport.nats] or
    /// [transport.kafka].)
    Publish {
        /// The journal directory to publish.
        #[arg(long, value_name = "DIR")]
        journal: PathBuf,
        /// The NATS servers: nats://HOST:PORT, comma-separated for several.
        #[arg(long, value_name = "URL", required_unless_present = "kafka", conflicts_with = "kafka")]
        nats: Option<String>,
        /// Publish to these Kafka brokers instead (HOST:PORT, comma-separated). Plaintext
        /// only to brokers on this host unless --kafka-tls or --kafka-allow-plaintext.
        #[arg(long, value_name = "BROKERS")]
        kafka: Option<String>,
        /// Reach the Kafka brokers over TLS.
        #[arg(long, requires = "kafka")]
        kafka_tls: bool,
        /// The CA certificates (PEM) of the Kafka brokers (default: the system's).
        #[arg(long, value_name = "FILE", requires = "kafka_tls")]
        kafka_ca: Option<PathBuf>,
        /// Allow plaintext to Kafka brokers on other hosts (a trusted network only).
        #[arg(long, requires = "kafka")]
        kafka_allow_plaintext: bool,
        /// With --kafka: most messages awaiting the brokers' acknowledgement at once.
        #[arg(long, value_name = "N", requires = "kafka",
              default_value_t = pgtrail_transport_kafka::PublishSettings::IN_FLIGHT as u16,
              value_parser = clap::value_parser!(u16).range(1..=1000))]
        in_flight: u16,
        /// With --kafka: the replication factor of the topic if it has to be created.
        #[arg(long, value_name = "N", requires = "kafka",
              default_value_t = pgtrail_transport_kafka::PublishSettings::REPLICATION,
              value_parser = clap::value_parser!(i32).range(1..=32))]
        replication: i32,
        /// The audit stream's name.
        #[arg(long, value_name = "NAME", default_value = pgtrail_transport_nats::StreamSpec::NAME)]
        stream: String,
        /// Where the last acknowledged position is saved (checked against the stream on start:
        /// a stream holding less than was acknowledged is reported as loss).
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// Most records in one message.
        #[arg(long, value_name = "N", default_value_t = pgtrail_transport_nats::PublishSettings::RUN_RECORDS)]
        run_records: usize,
        /// Exit once everything the journal holds is in the stream (a backfill), instead of
        /// following it.
        #[arg(long)]
        until_caught_up: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Print a signed, short-lived token that the proxy (auth.client = "token", with
    /// auth.local_token_key = DIR/token-signing.pub) accepts in place of a password:
    ///
    ///   PGPASSWORD=$(pgtrail token issue --user alice) psql "host=... sslmode=require user=alice"
    ///
    /// The signing key pair is created in DIR on first use (token-signing.key, mode 0600).
    /// Every event of the session records the person: issuer pgtrail-local, subject, name,
    /// email, groups, token id.
    Issue {
        /// The person (the token's subject); also the database user unless --db-user is given.
        #[arg(long)]
        user: String,
        /// A database user the token may log in as (repeatable); defaults to --user.
        #[arg(long = "db-user", value_name = "USER")]
        db_users: Vec<String>,
        /// How long the token is valid: e.g. 90s, 15m, 2h (at most 24h).
        #[arg(long, default_value = "15m", value_parser = parse_ttl)]
        ttl: u64,
        /// The person's display name.
        #[arg(long)]
        name: Option<String>,
        /// The person's email address.
        #[arg(long)]
        email: Option<String>,
        /// A group the person belongs to (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Directory of the token signing key pair.
        #[arg(long, value_name = "DIR", default_value = "pgtrail-keys")]
        key_dir: PathBuf,
    },
}

/// `90s`, `15m`, `2h` or plain seconds.
pub(crate) fn parse_ttl(text: &str) -> Result<u64, String> {
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{text:?}: expected a number with s, m or h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    if secs == 0 || secs > pgtrail_identity::local::MAX_TTL_SECS {
        return Err(format!("{text:?}: must be between 1s and 24h"));
    }
    Ok(secs)
}

#[derive(Debug, Subcommand)]
pub(crate) enum AlertsCommand {
    /// The alerting consumer: follows the journal with its own cursor, runs the rules on
    /// every event, and writes each alert (firing or resolved) as a JSON line. After a
    /// restart it resumes at its cursor without repeating alerts.
    Run {
        /// The journal directory to read. With --nats or --kafka instead: one instance
        /// per process (--instance, needed when the stream or the brokers hold several).
        #[arg(long, value_name = "DIR", required_unless_present_any = ["nats", "kafka"], conflicts_with_all = ["nats", "kafka"])]
        journal: Option<PathBuf>,
        #[command(flatten)]
        source: StreamArgs,
        /// Wrapping private key file or directory (repeatable).
        #[arg(long, value_name = "FILE|DIR", required = true)]
        key: Vec<PathBuf>,
        #[arg(long, value_name = "FILE")]
        rules: PathBuf,
        /// Cursor file (created if missing): where to resume after a restart.
        #[arg(long, value_name = "FILE", required_unless_present = "consumer")]
        state: Option<PathBuf>,
        /// With --nats: keep the cursor in the stream's key-value bucket (<stream>_CURSORS,
        /// key NAME.<instance>) instead of a file, and read through the durable consumer
        /// NAME_<instance>, acknowledged as the cursor is saved. The consumer then needs no
        /// disk of its own and can move to another machine; run one process per NAME.
        #[arg(long, value_name = "NAME", requires = "nats", conflicts_with = "state")]
        consumer: Option<String>,
        /// Append alerts to this file instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Alert when no record (not even a heartbeat) arrives for this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        gap_secs: u64,
        /// Destinations file (TOML, [[destination]] tables): also send each alert to
        /// webhooks, Slack, PagerDuty, Opsgenie, email or syslog.
        #[arg(long, value_name = "FILE")]
        destinations: Option<PathBuf>,
        /// Serve Prometheus /metrics, /livez and /readyz on this address.
        #[arg(long, value_name = "HOST:PORT")]
        metrics: Option<SocketAddr>,
    },
    /// Send a test notification to every destination in the file and report each result
    /// (PagerDuty and Opsgenie test incidents are resolved right after). Exits 1 if any
    /// destination failed.
    Test {
        /// Destinations file (TOML, [[destination]] tables).
        #[arg(long, value_name = "FILE")]
        destinations: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RulesCommand {
    /// Parse and check a rule file: syntax, CEL conditions (names and types), windows.
    /// Exits 1 naming the line and the problem.
    Check {
        /// The rule file (TOML, one [[rule]] table per rule).
        rules: PathBuf,
    },
    /// Run rules over events (JSON lines, as `pgtrail export --format jsonl` writes them)
    /// and show which rules fire, when and why, and each rule's alarm state at the end.
    Test {
        #[arg(long, value_name = "FILE")]
        rules: PathBuf,
        /// Events file, or - for standard input.
        #[arg(long, value_name = "FILE")]
        events: PathBuf,
        /// One JSON object per alert instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum JournalCommand {
    /// Remove a journal's oldest segments once the archive holds their events, leaving an
    /// anchor signed with the checkpoint signing key, so that `pgtrail verify` still proves
    /// what remains and `pgtrail verify --archive` proves the archive cannot have been cut
    /// short below it. The archive and the journal are verified first; only whole segments
    /// go, never the one being written. Safe while the proxy runs.
    Prune {
        /// The journal directory.
        #[arg(long, value_name = "DIR")]
        journal: PathBuf,
        /// Prune records before this: a record sequence number, a date (YYYY-MM-DD, UTC
        /// midnight) or an RFC 3339 time. Records the archive does not hold always stay.
        #[arg(long, value_name = "SEQ|DATE")]
        before: pgtrail_journal::Before,
        /// The archive holding the journal's events (a directory or s3://BUCKET/PREFIX).
        #[arg(long, value_name = "URL")]
        archive: String,
        /// The checkpoint signing key (signing.key): signs the anchor.
        #[arg(long, value_name = "FILE")]
        signing_key: PathBuf,
        /// Verification keys for the journal and the archive (verify.pub, archive.pub, and
        /// any rotated ones); repeat.
        #[arg(long = "verify-key", value_name = "FILE", required = true)]
        verify_key: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Make a wrapping key pair (HPKE X25519), a checkpoint signing key pair and an archive
    /// key pair (ed25519).
    ///
    /// Writes wrapping.pub and signing.key (for the proxy), wrapping.key (for readers:
    /// keep it off the proxy host), verify.pub (for `pgtrail verify`), archive.key (for
    /// `pgtrail archive`) and archive.pub (for `pgtrail verify --archive`), each mode 0600.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Print the plaintext data key of a DAS record (hex), for consumers that decrypt DAS
    /// records themselves (raw AES keyring, provider "BC", key name "DataKey").
    Unwrap {
        /// Wrapping private key file or directory (repeatable).
        #[arg(long, value_name = "FILE|DIR", required = true)]
        key: Vec<PathBuf>,
        /// A file holding one DAS record (JSON), or - for standard input.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["journal", "seq"])]
        record: Option<PathBuf>,
        /// Take the record from this journal...
        #[arg(long, value_name = "DIR", requires = "seq")]
        journal: Option<PathBuf>,
        /// ...at this sequence number.
        #[arg(long, value_name = "N")]
        seq: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum QueryFormat {
    Table,
    Csv,
    Jsonl,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ExportFormat {
    Jsonl,
    Das,
    Cef,
    Ocsf,
}
