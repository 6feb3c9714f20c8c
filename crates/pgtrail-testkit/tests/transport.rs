//! The fleet transport against a real 3-node NATS JetStream cluster (Debian nats-server,
//! three processes with their own stores and routes on loopback): the audit stream's
//! creation and checks, publishing journals while pgbench runs through two proxies in
//! front of two PostgreSQL servers with a node killed mid-run, and reading the stream back
//! with every chain verified.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgtrail_testkit::*;
use pgtrail_transport_nats::async_nats;

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The HEC token of the Splunk receiver (tests/forward/hec_receiver.py).
const HEC_TOKEN: &str = "3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f";

fn pgtrail(args: &[&str]) -> Output {
    Command::new(pgtrail_binary()).args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_stream_is_replicated_and_refuses_purge_and_delete() {
    let cluster = NatsCluster::start(3);
    let url = cluster.url();
    let client = async_nats::connect(cluster.node_url(0)).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);

    // A stream made by hand that could lose records is reported, point by point, and left alone.
    let mut loose = pgtrail_transport_nats::StreamSpec {
        name: "PGTRAIL".into(),
        replicas: 1,
        max_age: Duration::ZERO,
        duplicate_window: Duration::from_secs(120),
    }
    .config();
    (loose.deny_delete, loose.deny_purge) = (false, false);
    jetstream.create_stream(loose).await.unwrap();
    for args in [vec!["--check"], vec![]] {
        let out = pgtrail(&[&["transport", "init", "--nats", &url][..], &args].concat());
        assert!(!out.status.success(), "{}", said(&out));
        let text = said(&out);
        for problem in ["1 replica(s), 3 wanted", "DenyDelete is off", "DenyPurge is off"] {
            assert!(text.contains(problem), "{problem:?} not in: {text}");
        }
    }
    let mut stream = jetstream.get_stream("PGTRAIL").await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.num_replicas, 1, "a stream that was only checked is not changed");
    jetstream.delete_stream("PGTRAIL").await.unwrap();

    // Created as the audit trail needs it: 3 replicas on 3 servers, no delete, no purge.
    let out = pgtrail(&["transport", "init", "--nats", &url]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("stream PGTRAIL created"), "{}", said(&out));
    let out = pgtrail(&["transport", "init", "--nats", &url, "--check"]);
    assert!(out.status.success() && said(&out).contains("exists and is fit"), "{}", said(&out));
    let mut stream = jetstream.get_stream("PGTRAIL").await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3);
    let cluster_info = info.cluster.expect("a clustered stream");
    assert_eq!(cluster_info.replicas.len() + 1, 3, "a leader and two replicas: {cluster_info:?}");

    // What anyone with access to the stream's API might try: the server refuses each.
    let ack = jetstream.publish("pgtrail.records.x", "a record".into()).await.unwrap().await.unwrap();
    let purge = stream.purge().await;
    assert!(purge.is_err(), "purge refused: {purge:?}");
    let delete = stream.delete_message(ack.sequence).await;
    assert!(delete.is_err(), "delete refused: {delete:?}");
    // Nor can the stream be reconfigured to allow purging again.
    let mut config = info.config.clone();
    config.deny_purge = false;
    let update = jetstream.update_stream(config).await;
    assert!(update.is_err_and(|e| e.to_string().contains("can not cancel deny purge")), "update refused");
    let out = pgtrail(&["transport", "init", "--nats", &url, "--check"]);
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(stream.info().await.unwrap().state.messages, 1, "the message is still there");
}

/// One PostgreSQL server behind one proxy process, with its journal published by
/// `pgtrail transport publish`.
struct Site {
    pg: LocalPg,
    journal: PathBuf,
    keys: PathBuf,
    port: u16,
    proxy: KillOnDrop,
    publisher: Option<KillOnDrop>,
    dir: PathBuf,
    instance: String,
}

impl Site {
    fn start(dir: &Path, instance: &str) -> Site {
        Site::start_with(dir, instance, "")
    }

    /// A site whose proxy configuration has `extra` sections too.
    fn start_with(dir: &Path, instance: &str, extra: &str) -> Site {
        let pg = start_pg(HostAuth::Trust);
        let dir = dir.join(instance);
        std::fs::create_dir_all(&dir).unwrap();
        let (journal, keys) = (dir.join("journal"), dir.join("keys"));
        keys_init(&keys);
        let port = free_port();
        let config = dir.join("pgtrail.toml");
        let extra = format!("[instance]\ninstance_id = \"{instance}\"\n{extra}");
        write_proxy_config(&config, port, &pg, &journal, &keys, &extra);
        let proxy = KillOnDrop(spawn_proxy_with_config(&config, &dir.join("proxy.log"), port));
        Site { pg, journal, keys, port, proxy, publisher: None, dir, instance: instance.into() }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn publish(&mut self, url: &str, log: &str) {
        let child = Command::new(pgtrail_binary())
            .args(["transport", "publish", "--nats", url, "--journal"])
            .arg(&self.journal)
            .arg("--state")
            .arg(self.dir.join("publish.state"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(log)).unwrap())
            .spawn()
            .unwrap();
        self.publisher = Some(KillOnDrop(child));
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

    /// Every event of the local journal, as `export --format cef` positions them.
    fn local_events(&self) -> Vec<String> {
        self.local_export("cef").lines().map(str::to_owned).collect()
    }

    /// `pgtrail export --format FORMAT` of the local journal.
    fn local_export(&self, format: &str) -> String {
        let journal = self.journal.to_str().unwrap();
        let out = pgtrail(&["export", "--journal", journal, "--key", &self.wrapping_key(), "--format", format]);
        assert!(out.status.success(), "{}", said(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The last record of the local journal.
    fn last_record(&self) -> u64 {
        let out = pgtrail(&[
            "verify",
            "--journal",
            self.journal.to_str().unwrap(),
            "--verify-key",
            self.keys.join("verify.pub").to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", said(&out));
        let text = said(&out);
        text.split("last record ").nth(1).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    }
}

/// The stream's records of `instance` exported as CEF, as a consumer elsewhere reads them.
fn stream_events(url: &str, site: &Site) -> Output {
    pgtrail(&["export", "--nats", url, "--instance", &site.instance, "--key", &site.wrapping_key(), "--format", "cef"])
}

/// Waits until the stream holds the local journal's last record of `site`.
fn wait_published(url: &str, site: &Site) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let last = site.last_record();
    loop {
        let out = pgtrail(&[
            "verify",
            "--nats",
            url,
            "--instance",
            &site.instance,
            "--verify-key",
            site.keys.join("verify.pub").to_str().unwrap(),
        ]);
        let text = said(&out);
        let streamed: Option<u64> =
            text.split("last record ").nth(1).and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
        if out.status.success() && streamed == Some(last) {
            return;
        }
        assert!(Instant::now() < deadline, "the stream did not reach record {last} of {}: {text}", site.instance);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The index of the server leading the audit stream.
fn stream_leader(cluster: &NatsCluster) -> usize {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let name = runtime.block_on(async {
        let jetstream = async_nats::jetstream::new(async_nats::connect(cluster.node_url(0)).await.unwrap());
        let mut stream = jetstream.get_stream("PGTRAIL").await.unwrap();
        stream.info().await.unwrap().cluster.clone().unwrap().leader.unwrap()
    });
    name.trim_start_matches('n').parse::<usize>().unwrap() - 1
}

#[test]
fn two_proxies_publish_through_a_node_kill_and_every_record_arrives_once_in_order() {
    let mut cluster = NatsCluster::start(3);
    let url = cluster.url();
    let out = pgtrail(&["transport", "init", "--nats", &url]);
    assert!(out.status.success(), "{}", said(&out));
    let dir = tempfile::tempdir().unwrap();
    let mut sites = [Site::start(dir.path(), "db-east-1"), Site::start(dir.path(), "db-west-1")];
    for site in &sites {
        let init = Command::new(site.pg.binaries().bin("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &site.port.to_string(), "-U", "postgres", "-i", "-s", "1", "postgres"])
            .output()
            .unwrap();
        assert!(init.status.success(), "{}", said(&init));
    }
    for site in &mut sites {
        site.publish(&url, "publish1.log");
    }
    let benches: Vec<_> = sites.iter().map(|s| s.pgbench(8)).collect();

    // The stream's leader dies mid-run (SIGKILL) and comes back later with its store: the
    // publishers meet a leader election.
    std::thread::sleep(Duration::from_secs(2));
    let leader = stream_leader(&cluster);
    cluster.kill(leader);
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart(leader);
    for bench in benches {
        let out = bench.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", said(&out));
    }

    // A publisher killed with SIGKILL and started again sends nothing twice and skips nothing.
    let site = &mut sites[0];
    signal(&site.publisher.as_ref().unwrap().0, "-KILL");
    site.publisher = None;
    let more = site.pgbench(1).wait_with_output().unwrap();
    assert!(more.status.success());
    site.publish(&url, "publish2.log");
    // The proxies stop cleanly (a last checkpoint): the journals are complete.
    for site in &mut sites {
        signal(&site.proxy.0, "-TERM");
        assert!(site.proxy.0.wait().unwrap().success());
    }

    for site in &sites {
        wait_published(&url, site);
        let local = site.local_events();
        assert!(local.len() > 1000, "{} events", local.len());
        let out = stream_events(&url, site);
        assert!(out.status.success(), "{}", said(&out));
        let streamed: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
        assert_eq!(streamed.len(), local.len(), "every event once ({})", site.instance);
        assert!(streamed == local, "the same events in the same order ({})", site.instance);
    }
    // Both chains, with their signed checkpoints, verify across the stream.
    let keys: Vec<String> = sites.iter().map(|s| s.keys.join("verify.pub").display().to_string()).collect();
    let out = pgtrail(&["verify", "--nats", &url, "--verify-key", &keys[0], "--verify-key", &keys[1]]);
    assert!(out.status.success(), "{}", said(&out));
    let text = said(&out);
    let verified: BTreeMap<&str, bool> =
        sites.iter().map(|s| (s.instance.as_str(), text.contains(&format!("OK: instance {}", s.instance)))).collect();
    assert!(verified.values().all(|&ok| ok), "{text}");
    let checkpoints: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split(" checkpoints verified").next()?.rsplit(", ").next()?.parse().ok())
        .collect();
    assert!(checkpoints.len() == 2 && checkpoints.iter().all(|&n| n > 0), "{text}");
    // A message replayed into one instance's subject (a record of it again) is caught there,
    // and only there.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let jetstream = async_nats::jetstream::new(async_nats::connect(cluster.node_url(0)).await.unwrap());
        let stream = jetstream.get_stream("PGTRAIL").await.unwrap();
        let first = stream.get_raw_message(1).await.unwrap();
        jetstream.publish(first.subject.to_string(), first.payload).await.unwrap().await.unwrap();
    });
    let out = pgtrail(&["verify", "--nats", &url, "--verify-key", &keys[0], "--verify-key", &keys[1]]);
    assert!(!out.status.success(), "{}", said(&out));
    let text = said(&out);
    assert_eq!(text.matches("FAILED: instance").count(), 1, "{text}");
    assert!(text.contains("sequence 1 where") && text.contains("OK: instance"), "{text}");

    // The publishers met the leader's death: they said so once, and recovered.
    let logs: String = sites.iter().map(|s| std::fs::read_to_string(s.dir.join("publish1.log")).unwrap()).collect();
    assert!(
        logs.contains("publishing to JetStream failed") && logs.contains("publishing to JetStream again"),
        "{logs}"
    );
}

/// `pgtrail transport init`, which must succeed.
fn init_stream(url: &str) {
    let out = pgtrail(&["transport", "init", "--nats", url]);
    assert!(out.status.success(), "{}", said(&out));
}

/// The local journal's events of `site` as JSON lines (control events included).
fn local_jsonl(site: &Site) -> String {
    site.local_export("jsonl")
}

#[test]
fn the_proxy_publishes_by_itself_through_a_20_second_outage_of_the_whole_cluster() {
    let mut cluster = NatsCluster::start(3);
    let url = cluster.url();
    init_stream(&url);
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let extra = format!(
        "[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[transport.nats]\nurl = \"{url}\"\nlag_alarm_records = 20\n"
    );
    let mut site = Site::start_with(dir.path(), "db-north-1", &extra);
    let init = Command::new(site.pg.binaries().bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &site.port.to_string(), "-U", "postgres", "-i", "-s", "1", "postgres"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", said(&init));
    let published = || metric(metrics, "pgtrail_transport_published_records_total");
    wait_until("the first records in the stream", Duration::from_secs(20), || published() > 0.0);
    let bench = site.pgbench(40);
    wait_until("pgbench through the proxy", Duration::from_secs(20), || {
        metric(metrics, "pgtrail_journal_records_total") > published() + 5.0
            || metric(metrics, "pgtrail_transport_lag_records") > 0.0
    });

    // The whole cluster goes down for 20 s: capture goes on, records wait in the journal,
    // and the lag grows.
    for i in 0..3 {
        cluster.kill(i);
    }
    let down = Instant::now();
    let (written_before, lag_before) =
        (metric(metrics, "pgtrail_journal_records_total"), metric(metrics, "pgtrail_transport_lag_records"));
    let mut lags = Vec::new();
    while down.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_secs(1));
        lags.push(metric(metrics, "pgtrail_transport_lag_records"));
    }
    assert_eq!(metric(metrics, "pgtrail_transport_connected"), 0.0);
    // Under load the recorder puts many events in one record: a few records a second here.
    let written_during = metric(metrics, "pgtrail_journal_records_total") - written_before;
    assert!(written_during > 40.0, "capture went on: {written_during} records written while the cluster was down");
    assert!(lags.windows(2).all(|w| w[1] >= w[0]), "the lag only grows while nothing is taken: {lags:?}");
    let lag = *lags.last().unwrap();
    assert!(
        lag - lag_before >= written_during * 0.8 && lag > 20.0,
        "the lag grew from {lag_before} to {lag} while {written_during} records were written"
    );

    cluster.restart_all();
    let out = bench.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", said(&out));
    wait_until("the stream to catch up", Duration::from_secs(60), || {
        metric(metrics, "pgtrail_transport_lag_records") == 0.0 && metric(metrics, "pgtrail_transport_connected") == 1.0
    });
    // The journal itself says the stream lagged, and that it caught up.
    wait_until("the caught-up control event", Duration::from_secs(30), || {
        local_jsonl(&site).contains("TRANSPORT CAUGHT UP")
    });
    assert!(local_jsonl(&site).contains("TRANSPORT LAGGING"));
    // A clean stop publishes the last records (the stop event, the final checkpoint).
    signal(&site.proxy.0, "-TERM");
    let status = site.proxy.0.wait().unwrap();
    let log = std::fs::read_to_string(site.dir.join("proxy.log")).unwrap();
    assert!(status.success(), "the proxy stops cleanly: {log}");
    wait_published(&url, &site);
    let local = site.local_events();
    let out = stream_events(&url, &site);
    assert!(out.status.success(), "{}", said(&out));
    let streamed: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(streamed.len(), local.len(), "every event once");
    assert!(streamed == local, "the same events in the same order");
    let key = site.keys.join("verify.pub");
    let out = pgtrail(&["verify", "--nats", &url, "--verify-key", key.to_str().unwrap()]);
    assert!(out.status.success() && said(&out).contains("OK: instance db-north-1"), "{}", said(&out));
    assert!(log.contains("publishing to JetStream failed") && log.contains("publishing to JetStream again"), "{log}");
}

#[test]
fn sync_delivery_can_wait_for_the_stream_and_fail_closed_refuses_while_it_is_down() {
    let mut cluster = NatsCluster::start(3);
    let url = cluster.url();
    init_stream(&url);
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let extra = format!(
        "[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[delivery]\nmode = \"sync\"\nfail_closed = true\n\
         [transport.nats]\nurl = \"{url}\"\nsync_waits_for_stream = true\n"
    );
    let mut site = Site::start_with(dir.path(), "db-south-1", &extra);
    let connected = || metric(metrics, "pgtrail_transport_connected") == 1.0;
    wait_until("the publisher to reach the stream", Duration::from_secs(20), connected);

    // When psql has its answer, the statement's record is in the stream already.
    for n in 0..3 {
        let marker = format!("SELECT 'in the stream before the answer {n}'");
        assert_ok(&psql(&site.pg, &site.url(), &["-c", &marker]));
        let out = stream_events(&url, &site);
        assert!(out.status.success(), "{}", said(&out));
        assert!(said(&out).contains(&marker), "{marker} not in the stream when psql returned");
    }

    // With the cluster down, statements are refused (58030) rather than run unstreamed.
    for i in 0..3 {
        cluster.kill(i);
    }
    let waiting = Command::new(site.pg.binaries().bin("psql"))
        .arg(site.url())
        .args(["-X", "-c", "SELECT 'while the cluster goes down'"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the publisher to notice", Duration::from_secs(30), || !connected());
    let refused = psql(&site.pg, &site.url(), &["-c", "SELECT 'refused'"]);
    assert!(!refused.status.success(), "{}", said(&refused));
    assert!(said(&refused).contains("pgtrail"), "{}", said(&refused));
    // The SQLSTATE a driver sees: 58030, the same as when the local journal cannot write.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime.block_on(tokio_postgres::connect(&site.url(), tokio_postgres::NoTls)).err().unwrap();
    assert_eq!(refused.code().map(|c| c.code()), Some("58030"), "{refused}");

    cluster.restart_all();
    wait_until("the publisher to reach the stream again", Duration::from_secs(60), connected);
    let waited = waiting.wait_with_output().unwrap();
    let text = said(&waited);
    assert!(waited.status.success() || text.contains("58030") || text.contains("pgtrail"), "{text}");
    assert_ok(&psql(&site.pg, &site.url(), &["-c", "SELECT 'after the outage'"]));
    signal(&site.proxy.0, "-TERM");
    let status = site.proxy.0.wait().unwrap();
    let log = std::fs::read_to_string(site.dir.join("proxy.log")).unwrap();
    assert!(status.success(), "the proxy stops cleanly: {log}");
    wait_published(&url, &site);
    let streamed = String::from_utf8(stream_events(&url, &site).stdout).unwrap();
    assert!(streamed.contains("after the outage"));
    assert_eq!(streamed.lines().count(), site.local_events().len());
}

#[test]
fn consumers_elsewhere_read_the_stream_and_the_alert_consumer_keeps_alerting_through_a_node_kill() {
    let mut cluster = NatsCluster::start(3);
    let url = cluster.url();
    init_stream(&url);
    let dir = tempfile::tempdir().unwrap();
    // Both proxies publish by themselves; the consumers never see their directories.
    let extra = format!("[transport.nats]\nurl = \"{url}\"\n");
    let mut sites =
        [Site::start_with(dir.path(), "db-east-2", &extra), Site::start_with(dir.path(), "db-west-2", &extra)];
    // One key pair for both sites' consumers would be the usual set-up; here each site has
    // its own, so each consumer is given both.
    let keys: Vec<String> = sites.iter().map(|s| s.wrapping_key()).collect();
    let (rules, alerts) = (dir.path().join("rules.toml"), dir.path().join("alerts.jsonl"));
    std::fs::write(&rules, "[[rule]]\nname = \"ddl\"\ncondition = 'class == \"DDL\"'\nseverity = \"high\"\n").unwrap();
    assert_ok(&psql(&sites[0].pg, &sites[0].url(), &["-c", "SELECT 'first'"]));
    wait_until("db-east-2 in the stream", Duration::from_secs(30), || {
        pgtrail(&[
            "verify",
            "--nats",
            &url,
            "--instance",
            "db-east-2",
            "--verify-key",
            sites[0].keys.join("verify.pub").to_str().unwrap(),
        ])
        .status
        .success()
    });
    // Two alert consumers: one with a cursor file, reading through an ordered consumer; one
    // named, reading through a durable consumer with its cursor in the stream's bucket.
    let alerts_named = dir.path().join("alerts-named.jsonl");
    let alert_consumer = |cursor: [&str; 2], output: &Path, log: &str| {
        KillOnDrop(
            Command::new(pgtrail_binary())
                .args([
                    "alerts",
                    "run",
                    "--nats",
                    &url,
                    "--instance",
                    "db-east-2",
                    "--key",
                    &keys[0],
                    "--key",
                    &keys[1],
                ])
                .arg("--rules")
                .arg(&rules)
                .args(cursor)
                .arg("--output")
                .arg(output)
                .args(["--gap-secs", "600"])
                .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let cursor_file = dir.path().join("alerts.cursor");
    let mut alerting = alert_consumer(["--state", cursor_file.to_str().unwrap()], &alerts, "alerts.log");
    let mut alerting_named = alert_consumer(["--consumer", "alarms"], &alerts_named, "alerts-named.log");
    assert_ok(&psql(&sites[0].pg, &sites[0].url(), &["-c", "CREATE TABLE before_the_kill (id int)"]));
    let proxy_log = sites[0].dir.join("proxy.log");
    let logs = || {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "alerts.log:\n{}\nalerts-named.log:\n{}\nproxy.log:\n{}",
            read(&dir.path().join("alerts.log")),
            read(&dir.path().join("alerts-named.log")),
            read(&proxy_log)
        )
    };
    for output in [&alerts, &alerts_named] {
        let first = wait_lines_or(output, 1, logs);
        assert_eq!(first[0]["event"]["commandText"], "CREATE TABLE before_the_kill (id int)");
    }

    // The stream's leader dies: the consumer keeps reading, the next DDL alerts.
    let leader = stream_leader(&cluster);
    cluster.kill(leader);
    assert_ok(&psql(&sites[0].pg, &sites[0].url(), &["-c", "CREATE TABLE after_the_kill (id int)"]));
    for output in [&alerts, &alerts_named] {
        let second = wait_lines_or(output, 2, logs);
        assert_eq!(second[1]["event"]["commandText"], "CREATE TABLE after_the_kill (id int)");
    }
    cluster.restart(leader);
    assert_ok(&psql(&sites[1].pg, &sites[1].url(), &["-c", "CREATE TABLE west_table (id int)"]));
    for site in &mut sites {
        signal(&site.proxy.0, "-TERM");
        assert!(site.proxy.0.wait().unwrap().success());
        wait_published(&url, site);
    }
    for (child, output) in [(&mut alerting, &alerts), (&mut alerting_named, &alerts_named)] {
        signal(&child.0, "-TERM");
        assert!(child.0.wait().unwrap().success(), "{}", logs());
        assert_eq!(wait_lines(output, 2).len(), 2, "one alert per DDL, none twice");
    }

    // tail reads every instance at once, each chain on its own.
    let keyargs = ["--key", &keys[0], "--key", &keys[1]];
    let out = pgtrail(&[&["tail", "--nats", &url, "--json"][..], &keyargs].concat());
    assert!(out.status.success(), "{}", said(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for statement in ["CREATE TABLE before_the_kill", "CREATE TABLE after_the_kill", "CREATE TABLE west_table"] {
        assert!(text.contains(statement), "{statement} not in tail --nats");
    }
    // The archive of both instances from the stream, each with its own cursor, holds every
    // event the journals hold.
    let archive = dir.path().join("archive");
    let state = dir.path().join("archive.cursor");
    let out = pgtrail(
        &[
            &["archive", "--nats", &url, "--to", archive.to_str().unwrap(), "--state", state.to_str().unwrap()][..],
            &keyargs,
            &["--signing-key", sites[0].keys.join("archive.key").to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", said(&out));
    for site in &sites {
        assert!(dir.path().join(format!("archive.cursor.{}", site.instance)).exists());
        let sql = format!("SELECT count(*) AS n FROM events WHERE journal_instance = '{}'", site.instance);
        let out = pgtrail(&["query", "--archive", archive.to_str().unwrap(), "--format", "csv", &sql]);
        assert!(out.status.success(), "{}", said(&out));
        let count: usize = String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap();
        assert_eq!(count, site.local_events().len(), "{}: every event archived once", site.instance);
    }
}

/// The archive's count of `instance`'s events.
fn archived_events(archive: &Path, instance: &str) -> usize {
    let sql = format!("SELECT count(*) AS n FROM events WHERE journal_instance = '{instance}'");
    let out = pgtrail(&["query", "--archive", archive.to_str().unwrap(), "--format", "csv", &sql]);
    if !out.status.success() {
        return 0; // nothing archived yet
    }
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn a_named_consumer_keeps_its_cursor_in_the_stream_and_resumes_on_another_machine_after_a_kill() {
    let cluster = NatsCluster::start(3);
    let url = cluster.url();
    init_stream(&url);
    let out = pgtrail(&["transport", "init", "--nats", &url, "--check"]);
    assert!(out.status.success(), "init made the cursors' bucket, which --check finds: {}", said(&out));
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[transport.nats]\nurl = \"{url}\"\n");
    let mut site = Site::start_with(dir.path(), "db-north-1", &extra);
    let key = site.wrapping_key();
    let signing_key = site.keys.join("archive.key").display().to_string();
    let (rules, alerts, archive) =
        (dir.path().join("rules.toml"), dir.path().join("alerts.jsonl"), dir.path().join("archive"));
    std::fs::write(&rules, "[[rule]]\nname = \"ddl\"\ncondition = 'class == \"DDL\"'\nseverity = \"high\"\n").unwrap();
    // Each "machine" is a working directory of its own: the consumers are given no state
    // file, so anything they kept locally would show up there.
    let machine = |name: &str| {
        let cwd = dir.path().join(name);
        std::fs::create_dir_all(&cwd).unwrap();
        cwd
    };
    let consumer = |cwd: &Path, args: &[&str], log: &str| {
        KillOnDrop(
            Command::new(pgtrail_binary())
                .current_dir(cwd)
                .args(args)
                .args(["--nats", &url, "--instance", "db-north-1", "--key", &key])
                .stderr(std::fs::File::create(cwd.join(log)).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let (rules_arg, alerts_arg, archive_arg) =
        (rules.to_str().unwrap(), alerts.to_str().unwrap(), archive.to_str().unwrap());
    let alerting_args =
        ["alerts", "run", "--consumer", "alarms", "--rules", rules_arg, "--output", alerts_arg, "--gap-secs", "600"];
    let archive_args = [
        "archive",
        "--consumer",
        "archiver",
        "--follow",
        "--roll-secs",
        "1",
        "--to",
        archive_arg,
        "--signing-key",
        &signing_key,
    ];
    let statements = |tag: &str| {
        let selects: Vec<String> = (0..40).map(|i| format!("SELECT '{tag} {i}'")).collect();
        let mut args = Vec::new();
        for select in &selects {
            args.extend(["-c", select.as_str()]);
        }
        assert_ok(&psql(&site.pg, &site.url(), &args));
    };

    let one = machine("one");
    let mut alerting = consumer(&one, &alerting_args, "alerts.log");
    let mut archiving = consumer(&one, &archive_args, "archive.log");
    let logs = |cwd: &Path| {
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        format!("alerts.log:\n{}\narchive.log:\n{}", read(cwd.join("alerts.log")), read(cwd.join("archive.log")))
    };
    assert_ok(&psql(&site.pg, &site.url(), &["-c", "CREATE TABLE north_first (id int)"]));
    statements("before");
    let first = wait_lines_or(&alerts, 1, || logs(&one));
    assert_eq!(first[0]["event"]["commandText"], "CREATE TABLE north_first (id int)");
    wait_until("some events archived", Duration::from_secs(60), || archived_events(&archive, "db-north-1") > 40);

    // Both consumers die without a word; more happens while they are down.
    for child in [&mut alerting, &mut archiving] {
        signal(&child.0, "-KILL");
        child.0.wait().unwrap();
    }
    statements("while down");
    assert_ok(&psql(&site.pg, &site.url(), &["-c", "CREATE TABLE north_second (id int)"]));
    statements("after");

    // They start again on another machine, from the cursors the stream keeps.
    let two = machine("two");
    let mut alerting = consumer(&two, &alerting_args, "alerts.log");
    let mut archiving = consumer(&two, &archive_args, "archive.log");
    let second = wait_lines_or(&alerts, 2, || logs(&two));
    assert_eq!(second[1]["event"]["commandText"], "CREATE TABLE north_second (id int)");
    signal(&site.proxy.0, "-TERM");
    assert!(site.proxy.0.wait().unwrap().success());
    wait_published(&url, &site);
    let local = site.local_events().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while archived_events(&archive, "db-north-1") < local {
        assert!(Instant::now() < deadline, "the archive did not reach {local} events\n{}", logs(&two));
        std::thread::sleep(Duration::from_millis(200));
    }
    for child in [&mut alerting, &mut archiving] {
        signal(&child.0, "-TERM");
        assert!(child.0.wait().unwrap().success(), "{}", logs(&two));
    }
    assert_eq!(archived_events(&archive, "db-north-1"), local, "every event archived once, through the kill");
    assert_eq!(wait_lines(&alerts, 2).len(), 2, "one alert per DDL: none repeated after the restart");
    for cwd in [&one, &two] {
        let mut kept: Vec<String> =
            std::fs::read_dir(cwd).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        kept.sort();
        assert_eq!(kept, ["alerts.log", "archive.log"], "nothing kept on the consumer's machine");
    }

    // A SIEM forwarder as a named consumer too (a Splunk HEC with indexer acknowledgements):
    // run twice, every event is delivered once.
    let received = dir.path().join("hec.jsonl");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/forward/hec_receiver.py");
    let receiver =
        PortPrinter::spawn(Command::new("python3").arg(script).arg(&received).args(["--token", HEC_TOKEN, "--ack"]));
    let hec_url = format!("http://127.0.0.1:{}", receiver.port);
    for _ in 0..2 {
        let out = Command::new(pgtrail_binary())
            .current_dir(&two)
            .args(["forward", "--nats", &url, "--instance", "db-north-1", "--consumer", "splunk", "--key", &key])
            .args(["--to", "splunk-hec", "--url", &hec_url, "--ack"])
            .env("PGTRAIL_FORWARD_TOKEN", HEC_TOKEN)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", said(&out));
    }
    let delivered: Vec<String> = std::fs::read_to_string(&received)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["kind"] == "batch")
        .flat_map(|l| l["events"].as_array().unwrap().clone())
        .map(|e| e["fields"]["pgtrail_position"].as_str().unwrap().to_owned())
        .collect();
    let unique: std::collections::BTreeSet<&String> = delivered.iter().collect();
    assert_eq!((delivered.len(), unique.len()), (local, local), "every event forwarded once over two runs");

    // The servers hold each consumer's cursor and its durable consumer's position. The
    // archive's cursor is the one an archive of the local journal ends with.
    let state = dir.path().join("local-archive.cursor");
    let out = pgtrail(&[
        "archive",
        "--journal",
        site.journal.to_str().unwrap(),
        "--to",
        dir.path().join("local-archive").to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--key",
        &key,
        "--signing-key",
        &signing_key,
    ]);
    assert!(out.status.success(), "{}", said(&out));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let jetstream = async_nats::jetstream::new(async_nats::connect(cluster.node_url(0)).await.unwrap());
        let bucket = jetstream.get_key_value("PGTRAIL_CURSORS").await.unwrap();
        let saved = bucket.get("archiver.db-north-1").await.unwrap().expect("the archive's cursor is in the bucket");
        assert_eq!(String::from_utf8_lossy(&saved), std::fs::read_to_string(&state).unwrap());
        let alarms = bucket.get("alarms.db-north-1").await.unwrap().expect("the alert consumer's cursor too");
        assert!(String::from_utf8_lossy(&alarms).contains("instance db-north-1"));
        let stream = jetstream.get_stream("PGTRAIL").await.unwrap();
        let info = stream.consumer_info("archiver_db-north-1").await.unwrap();
        assert_eq!(info.config.durable_name.as_deref(), Some("archiver_db-north-1"));
        assert!(info.ack_floor.stream_sequence > 0, "acknowledged as the cursor was saved: {info:?}");
        let last = stream.get_last_raw_message_by_subject("pgtrail.records.db-north-1").await.unwrap().sequence;
        assert!(info.ack_floor.stream_sequence <= last);
    });
}

#[test]
fn pgtrail_ingest_publishes_pgaudit_records_to_the_stream_by_itself() {
    let cluster = NatsCluster::start(3);
    let url = cluster.url();
    init_stream(&url);
    let pg = start_pgaudit_pg("stderr");
    pg.psql("CREATE EXTENSION pgaudit; CREATE TABLE ingested_table (id int)").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (journal, keys, config) =
        (dir.path().join("journal"), dir.path().join("keys"), dir.path().join("pgtrail.toml"));
    keys_init(&keys);
    let wrapping = keys.join("wrapping.key").display().to_string();
    std::fs::write(&config, format!("[instance]\ninstance_id = \"db-ingest-1\"\n[transport.nats]\nurl = \"{url}\"\n"))
        .unwrap();
    let mut ingest = KillOnDrop(
        Command::new(pgtrail_binary())
            .args(["ingest", "--format", "stderr", "--log-dir"])
            .arg(pg.log_dir())
            .arg("--journal")
            .arg(&journal)
            .arg("--keys")
            .arg(&keys)
            .arg("--config")
            .arg(&config)
            .stderr(std::fs::File::create(dir.path().join("ingest.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let streamed = || {
        let out =
            pgtrail(&["export", "--nats", &url, "--instance", "db-ingest-1", "--key", &wrapping, "--format", "jsonl"]);
        assert!(out.status.success(), "{}", said(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    wait_until("pgAudit's record of the DDL in the stream", Duration::from_secs(30), || {
        streamed().contains("CREATE TABLE ingested_table")
    });
    signal(&ingest.0, "-TERM");
    assert!(ingest.0.wait().unwrap().success());
    // Stopped cleanly, the last records (the stop, the final checkpoint) are in the stream too.
    let local = || {
        let journal = journal.to_str().unwrap();
        let out = pgtrail(&["export", "--journal", journal, "--key", &wrapping, "--format", "jsonl"]);
        assert!(out.status.success(), "{}", said(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(streamed(), local(), "the stream holds the ingest journal, event for event");
    let verify_key = keys.join("verify.pub");
    let out = pgtrail(&["verify", "--nats", &url, "--verify-key", verify_key.to_str().unwrap()]);
    assert!(out.status.success() && said(&out).contains("OK: instance db-ingest-1"), "{}", said(&out));
}

/// A journal of `records` records of instance `instance` whose payloads start with `tag`.
fn write_journal(dir: &Path, instance: &str, tag: &str, records: usize) {
    let options = pgtrail_journal::JournalOptions { instance: instance.into(), ..Default::default() };
    let mut journal = pgtrail_journal::Journal::open(dir, options).unwrap();
    for i in 0..records {
        journal.append(1_700_000_000_000_000 + i as i64, format!("{tag} record {i}").as_bytes()).unwrap();
    }
    journal.sync().unwrap();
    journal.close().unwrap();
}

fn publish_once(url: &str, journal: &Path, state: &Path) -> Output {
    Command::new(pgtrail_binary())
        .args(["transport", "publish", "--until-caught-up", "--nats", url, "--journal"])
        .arg(journal)
        .arg("--state")
        .arg(state)
        .output()
        .unwrap()
}

#[test]
fn a_stream_that_lost_records_or_holds_another_journal_is_an_error_not_a_fresh_start() {
    let cluster = NatsCluster::start(3);
    let url = cluster.url();
    init_stream(&url);
    let dir = tempfile::tempdir().unwrap();
    let (first, other, state) = (dir.path().join("first"), dir.path().join("other"), dir.path().join("state.json"));
    write_journal(&first, "db-lost-1", "first", 40);
    let out = publish_once(&url, &first, &state);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("up to record 40"), "{}", said(&out));

    // Another journal under the same instance name (a host rebuilt, its journal started
    // again): the stream's last record is not this journal's record of that sequence.
    write_journal(&other, "db-lost-1", "other", 60);
    let out = publish_once(&url, &other, &dir.path().join("other-state.json"));
    assert!(!out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("the stream holds another journal of this instance"), "{}", said(&out));

    // The stream deleted and made again (JetStream allows deleting a whole stream even with
    // DenyDelete): the publisher's saved position says what it had acknowledged.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let jetstream = async_nats::jetstream::new(async_nats::connect(cluster.node_url(0)).await.unwrap());
        jetstream.delete_stream("PGTRAIL").await.unwrap();
    });
    init_stream(&url);
    let out = publish_once(&url, &first, &state);
    assert!(!out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("up to 0, but it had acknowledged up to 40: records were lost from the stream"),
        "{}",
        said(&out)
    );
}
