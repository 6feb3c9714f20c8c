//! The fleet transport on Kafka against a real Kafka-protocol broker (Tansu, from
//! crates.io, with its SQLite store, started on loopback): two proxies publishing by
//! themselves through an idempotent producer (`acks=all`) while pgbench runs, the broker
//! killed mid-run and restarted, a proxy killed and restarted, and every topic read back
//! with its chain and signed checkpoints verified; sync delivery waiting for the broker.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgtrail_testkit::*;
use pgtrail_transport_kafka::rdkafka;

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn pgtrail(args: &[&str]) -> Output {
    Command::new(pgtrail_binary()).args(args).output().unwrap()
}

/// One PostgreSQL server behind one proxy that publishes its journal to Kafka itself.
struct Site {
    pg: LocalPg,
    journal: PathBuf,
    keys: PathBuf,
    config: PathBuf,
    port: u16,
    metrics: u16,
    proxy: KillOnDrop,
    dir: PathBuf,
    instance: String,
}

impl Site {
    fn start(dir: &Path, instance: &str, brokers: &str, extra: &str) -> Site {
        let pg = start_pg(HostAuth::Trust);
        let dir = dir.join(instance);
        std::fs::create_dir_all(&dir).unwrap();
        let (journal, keys) = (dir.join("journal"), dir.join("keys"));
        keys_init(&keys);
        let (port, metrics) = (free_port(), free_port());
        let config = dir.join("pgtrail.toml");
        let extra = format!(
            "[instance]\ninstance_id = \"{instance}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
             [transport.kafka]\nbrokers = \"{brokers}\"\nreplication = 1\n{extra}"
        );
        write_proxy_config(&config, port, &pg, &journal, &keys, &extra);
        let proxy = KillOnDrop(spawn_proxy_with_config(&config, &dir.join("proxy1.log"), port));
        Site { pg, journal, keys, config, port, metrics, proxy, dir, instance: instance.into() }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pgbench_init(&self) {
        let init = Command::new(self.pg.binaries().bin("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-i", "-s", "1", "postgres"])
            .output()
            .unwrap();
        assert!(init.status.success(), "{}", said(&init));
    }

    fn pgbench(&self, seconds: u32) -> std::process::Child {
        Command::new(self.pg.binaries().bin("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-n", "-S"])
            .args(["-c", "2", "-j", "1", "-T", &seconds.to_string(), "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn wrapping_key(&self) -> String {
        self.keys.join("wrapping.key").display().to_string()
    }

    fn verify_key(&self) -> String {
        self.keys.join("verify.pub").display().to_string()
    }

    /// Stops the proxy cleanly (a last checkpoint, the stop event) and checks it said so.
    fn stop(&mut self, log: &str) {
        signal(&self.proxy.0, "-TERM");
        let status = self.proxy.0.wait().unwrap();
        assert!(status.success(), "the proxy stops cleanly: {}", self.log(log));
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Every event of the local journal, as `export --format cef` positions them.
    fn local_events(&self) -> Vec<String> {
        let journal = self.journal.to_str().unwrap();
        let out = pgtrail(&["export", "--journal", journal, "--key", &self.wrapping_key(), "--format", "cef"]);
        assert!(out.status.success(), "{}", said(&out));
        String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
    }

    /// The last record of the local journal.
    fn last_record(&self) -> u64 {
        let out = pgtrail(&["verify", "--journal", self.journal.to_str().unwrap(), "--verify-key", &self.verify_key()]);
        assert!(out.status.success(), "{}", said(&out));
        last_record_in(&said(&out)).unwrap()
    }

    /// The topic's events, exported as CEF by a consumer that never sees the journal.
    fn topic_events(&self, brokers: &str) -> Vec<String> {
        let out = pgtrail(&[
            "export",
            "--kafka",
            brokers,
            "--instance",
            &self.instance,
            "--key",
            &self.wrapping_key(),
            "--format",
            "cef",
        ]);
        assert!(out.status.success(), "{}", said(&out));
        String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
    }

    /// Waits until the topic holds the local journal's last record.
    fn wait_published(&self, brokers: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let last = self.last_record();
        loop {
            let out = pgtrail(&[
                "verify",
                "--kafka",
                brokers,
                "--instance",
                &self.instance,
                "--verify-key",
                &self.verify_key(),
            ]);
            let text = said(&out);
            if out.status.success() && last_record_in(&text) == Some(last) {
                return;
            }
            assert!(Instant::now() < deadline, "the topic did not reach record {last} of {}: {text}", self.instance);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn last_record_in(text: &str) -> Option<u64> {
    text.split("last record ").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[test]
fn two_proxies_publish_to_kafka_through_a_broker_kill_and_every_record_arrives_once_in_order() {
    let mut broker = KafkaBroker::start();
    let brokers = broker.brokers();
    let dir = tempfile::tempdir().unwrap();
    let extra = "lag_alarm_records = 3\n";
    let mut sites =
        [Site::start(dir.path(), "db-east-1", &brokers, extra), Site::start(dir.path(), "db-west-1", &brokers, extra)];
    for site in &sites {
        site.pgbench_init();
    }
    let published = |site: &Site| metric(site.metrics, "pgtrail_transport_published_records_total");
    for site in &sites {
        wait_until("the first records in the topic", Duration::from_secs(30), || published(site) > 0.0);
    }
    let written = |site: &Site| metric(site.metrics, "pgtrail_journal_records_total");
    let before: Vec<f64> = sites.iter().map(written).collect();
    let benches: Vec<_> = sites.iter().map(|s| s.pgbench(20)).collect();

    // The broker dies mid-run (SIGKILL) and comes back with its store: capture goes on,
    // records wait in the journals, the lag grows, and publishing resumes.
    wait_until("pgbench through the proxies", Duration::from_secs(20), || {
        sites.iter().zip(&before).all(|(s, before)| written(s) > before + 20.0)
    });
    broker.kill();
    wait_until("the publishers to notice", Duration::from_secs(30), || {
        sites.iter().all(|s| metric(s.metrics, "pgtrail_transport_connected") == 0.0)
    });
    let lag = |s: &Site| metric(s.metrics, "pgtrail_transport_lag_records");
    let lag_before: Vec<f64> = sites.iter().map(lag).collect();
    wait_until("the lag to grow while the broker is down", Duration::from_secs(20), || {
        sites.iter().zip(&lag_before).all(|(s, before)| lag(s) > before + 5.0)
    });
    broker.restart();
    for bench in benches {
        let out = bench.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", said(&out));
    }
    for site in &sites {
        wait_until("the publishers to reach the broker again", Duration::from_secs(60), || {
            metric(site.metrics, "pgtrail_transport_connected") == 1.0 && lag(site) == 0.0
        });
    }

    // The journals say the transport lagged past lag_alarm_records, and caught up.
    for site in &sites {
        let journal = site.journal.to_str().unwrap();
        let alarms = || {
            let out = pgtrail(&["export", "--journal", journal, "--key", &site.wrapping_key(), "--format", "jsonl"]);
            let text = said(&out);
            text.contains("TRANSPORT LAGGING") && text.contains("TRANSPORT CAUGHT UP")
        };
        wait_until("the lag's control events in the journal", Duration::from_secs(30), alarms);
    }

    // A proxy killed with SIGKILL and started again sends nothing twice and skips nothing:
    // it reads the topic's last record back before it goes on.
    let site = &mut sites[0];
    signal(&site.proxy.0, "-KILL");
    let _ = site.proxy.0.wait();
    site.proxy = KillOnDrop(spawn_proxy_with_config(&site.config, &site.dir.join("proxy2.log"), site.port));
    let more = site.pgbench(1).wait_with_output().unwrap();
    assert!(more.status.success(), "{}", said(&more));
    sites[0].stop("proxy2.log");
    sites[1].stop("proxy1.log");

    for site in &sites {
        site.wait_published(&brokers);
        let local = site.local_events();
        assert!(local.len() > 1000, "{} events", local.len());
        let streamed = site.topic_events(&brokers);
        assert_eq!(streamed.len(), local.len(), "every event once ({})", site.instance);
        assert!(streamed == local, "the same events in the same order ({})", site.instance);
    }
    // Both chains, with their signed checkpoints, verify across the topics.
    let keys: Vec<String> = sites.iter().map(Site::verify_key).collect();
    let verify = || pgtrail(&["verify", "--kafka", &brokers, "--verify-key", &keys[0], "--verify-key", &keys[1]]);
    let out = verify();
    assert!(out.status.success(), "{}", said(&out));
    let text = said(&out);
    for site in &sites {
        assert!(text.contains(&format!("OK: instance {} on Kafka", site.instance)), "{text}");
    }
    let checkpoints: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split(" checkpoints verified").next()?.rsplit(", ").next()?.parse().ok())
        .collect();
    assert!(checkpoints.len() == 2 && checkpoints.iter().all(|&n| n > 0), "{text}");
    // The publishers met the broker's death: they said so, and recovered.
    let logs = sites[0].log("proxy1.log") + &sites[1].log("proxy1.log");
    assert!(logs.contains("publishing to Kafka failed") && logs.contains("publishing to Kafka again"), "{logs}");

    // A message of one topic replayed into it (its first records again), as anyone who may
    // write to the topic could: caught there, and only there.
    replay_first_message(&brokers, &sites[0].instance);
    let out = verify();
    assert!(!out.status.success(), "{}", said(&out));
    let text = said(&out);
    assert_eq!(text.matches("FAILED: instance").count(), 1, "{text}");
    assert!(text.contains("FAILED: instance db-east-1") && text.contains("OK: instance db-west-1"), "{text}");
    assert!(text.contains("sequence 1 where"), "{text}");
}

/// Produces the first message of `instance`'s topic again at its end, with a plain
/// producer of the test's own.
fn replay_first_message(brokers: &str, instance: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let topic = format!("pgtrail.records.{instance}");
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "replayer").create().unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition_offset(&topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&partitions).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let payload = loop {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            break message.payload().unwrap().to_vec();
        }
        assert!(Instant::now() < deadline, "no first message in {topic}");
    };
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    producer.send(BaseRecord::<str, _>::to(&topic).payload(&payload).partition(0)).unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
}

#[test]
fn sync_delivery_can_wait_for_kafka_and_fail_closed_refuses_while_the_broker_is_down() {
    let mut broker = KafkaBroker::start();
    let brokers = broker.brokers();
    let dir = tempfile::tempdir().unwrap();
    let extra = "sync_waits_for_stream = true\n[delivery]\nmode = \"sync\"\nfail_closed = true\n";
    let mut site = Site::start(dir.path(), "db-south-1", &brokers, extra);
    let connected = || metric(site.metrics, "pgtrail_transport_connected") == 1.0;
    wait_until("the publisher to reach the broker", Duration::from_secs(30), connected);

    // When psql has its answer, the statement's record is in the topic already.
    for n in 0..3 {
        let marker = format!("SELECT 'in the topic before the answer {n}'");
        assert_ok(&psql(&site.pg, &site.url(), &["-c", &marker]));
        let streamed = site.topic_events(&brokers);
        assert!(streamed.iter().any(|e| e.contains(&marker)), "{marker} not in the topic when psql returned");
    }

    // With the broker down, statements are refused (58030) rather than run unpublished;
    // one sent as it went down waits for its record to be published.
    broker.kill();
    let waiting = Command::new(site.pg.binaries().bin("psql"))
        .arg(site.url())
        .args(["-X", "-c", "SELECT 'while the broker goes down'"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the publisher to notice", Duration::from_secs(60), || !connected());
    let refused = psql(&site.pg, &site.url(), &["-c", "SELECT 'refused'"]);
    assert!(!refused.status.success(), "{}", said(&refused));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime.block_on(tokio_postgres::connect(&site.url(), tokio_postgres::NoTls)).err().unwrap();
    assert_eq!(refused.code().map(|c| c.code()), Some("58030"), "{refused}");
    // A reader of the brokers that are down is told so (rather than finding nothing).
    let out = pgtrail(&["verify", "--kafka", &brokers, "--instance", "db-south-1", "--verify-key", &site.verify_key()]);
    assert!(!out.status.success() && said(&out).contains("reading pgtrail.records.db-south-1"), "{}", said(&out));

    broker.restart();
    wait_until("the publisher to reach the broker again", Duration::from_secs(60), connected);
    let waited = waiting.wait_with_output().unwrap();
    assert!(waited.status.success(), "the waiting statement completes once published: {}", said(&waited));
    assert_ok(&psql(&site.pg, &site.url(), &["-c", "SELECT 'after the outage'"]));
    site.stop("proxy1.log");
    site.wait_published(&brokers);
    let streamed = site.topic_events(&brokers);
    assert!(streamed.iter().any(|e| e.contains("after the outage")));
    assert!(streamed.iter().any(|e| e.contains("while the broker goes down")));
    assert!(streamed == site.local_events(), "the topic holds the journal's events, once, in order");
    let out = pgtrail(&["verify", "--kafka", &brokers, "--verify-key", &site.verify_key()]);
    assert!(out.status.success() && said(&out).contains("OK: instance db-south-1"), "{}", said(&out));
}

/// `transport publish --until-caught-up` stopped once it had handed the journal's last run
/// to the producer, while messages were still in flight: a backfill exited with most of the
/// journal unacknowledged (the next run sent the rest).
#[test]
fn kafka_backfill_exited_before_its_messages_in_flight_were_acknowledged() {
    let (broker, other) = (KafkaBroker::start(), KafkaBroker::start());
    let dir = tempfile::tempdir().unwrap();
    let mut site = Site::start(dir.path(), "db-backfill-1", &broker.brokers(), "");
    site.pgbench_init();
    let bench = site.pgbench(2).wait_with_output().unwrap();
    assert!(bench.status.success(), "{}", said(&bench));
    site.stop("proxy1.log");
    let local = site.local_events();

    // The journal again, to other brokers, in many small messages with many in flight.
    let state = site.dir.join("backfill.state");
    let backfill = || {
        pgtrail(&[
            "transport",
            "publish",
            "--kafka",
            &other.brokers(),
            "--replication",
            "1",
            "--in-flight",
            "16",
            "--run-records",
            "2",
            "--journal",
            site.journal.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--until-caught-up",
        ])
    };
    let out = backfill();
    assert!(out.status.success() && said(&out).contains("the topic holds the journal"), "{}", said(&out));
    let last = site.last_record();
    assert!(said(&out).contains(&format!("up to record {last}")), "every record acknowledged: {}", said(&out));
    assert!(site.topic_events(&other.brokers()) == local, "the backfill holds the journal's events");
    // A second run finds everything there and sends nothing.
    let out = backfill();
    assert!(said(&out).contains("published 0 records"), "{}", said(&out));
    assert!(site.topic_events(&other.brokers()) == local);
}

#[test]
fn the_alert_consumer_keeps_alerting_from_kafka_through_a_broker_kill_and_a_restart_of_its_own() {
    let mut broker = KafkaBroker::start();
    let brokers = broker.brokers();
    let dir = tempfile::tempdir().unwrap();
    let site = Site::start(dir.path(), "db-alert-1", &brokers, "");
    assert_ok(&psql(&site.pg, &site.url(), &["-c", "SELECT 'first'"]));
    wait_until("the instance's topic", Duration::from_secs(30), || {
        pgtrail(&["verify", "--kafka", &brokers, "--instance", &site.instance, "--verify-key", &site.verify_key()])
            .status
            .success()
    });
    let (rules, alerts, cursor) =
        (dir.path().join("rules.toml"), dir.path().join("alerts.jsonl"), dir.path().join("alerts.cursor"));
    std::fs::write(&rules, "[[rule]]\nname = \"ddl\"\ncondition = 'class == \"DDL\"'\nseverity = \"high\"\n").unwrap();
    // The consumer never sees the journal: it reads the topic, its cursor in a file.
    let alert_consumer = |log: &str| {
        KillOnDrop(
            Command::new(pgtrail_binary())
                .args(["alerts", "run", "--kafka", &brokers, "--instance", &site.instance, "--key"])
                .arg(site.wrapping_key())
                .arg("--rules")
                .arg(&rules)
                .arg("--state")
                .arg(&cursor)
                .arg("--output")
                .arg(&alerts)
                .args(["--gap-secs", "600"])
                .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let logs = || {
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        format!("alerts1.log:\n{}\nalerts2.log:\n{}", read("alerts1.log"), read("alerts2.log"))
    };
    let mut alerting = alert_consumer("alerts1.log");
    assert_ok(&psql(&site.pg, &site.url(), &["-c", "CREATE TABLE before_the_kill (id int)"]));
    let first = wait_lines_or(&alerts, 1, logs);
    assert_eq!(first[0]["event"]["commandText"], "CREATE TABLE before_the_kill (id int)");

    // The broker dies while a DDL is run: the consumer waits, and alerts once it is back.
    broker.kill();
    assert_ok(&psql(&site.pg, &site.url(), &["-c", "CREATE TABLE during_the_outage (id int)"]));
    broker.restart();
    let second = wait_lines_or(&alerts, 2, logs);
    assert_eq!(second[1]["event"]["commandText"], "CREATE TABLE during_the_outage (id int)");

    // Stopped and started again, it resumes at its cursor: the next DDL alerts, none twice.
    signal(&alerting.0, "-TERM");
    assert!(alerting.0.wait().unwrap().success(), "{}", logs());
    let mut alerting = alert_consumer("alerts2.log");
    assert_ok(&psql(&site.pg, &site.url(), &["-c", "CREATE TABLE after_the_restart (id int)"]));
    let third = wait_lines_or(&alerts, 3, logs);
    assert_eq!(third[2]["event"]["commandText"], "CREATE TABLE after_the_restart (id int)");
    signal(&alerting.0, "-TERM");
    assert!(alerting.0.wait().unwrap().success(), "{}", logs());
    let all = std::fs::read_to_string(&alerts).unwrap();
    assert_eq!(all.lines().count(), 3, "one alert per DDL, none twice: {all}");
}
