//! `[transport.kafka]` in `pgtrail.toml`: the proxy and `pgtrail ingest` publish their
//! journal to Kafka as it is written.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Brokers, KafkaError, PublishSettings};

/// The journal writer's resolver of `[transport.kafka]` (see the capture crate's
/// `Transports`): the table checked and resolved for the journal in `journal_dir`.
pub fn transport(
    table: &toml::Value,
    journal_dir: &Path,
) -> Result<std::sync::Arc<dyn pgtrail_journal::ship::Transport>, String> {
    let section: KafkaSection = table.clone().try_into().map_err(|e| format!("[transport.kafka]: {e}"))?;
    Ok(std::sync::Arc::new(section.resolve(journal_dir).map_err(|e| e.to_string())?))
}

/// `[transport.kafka]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// The brokers: `HOST:PORT`, comma-separated (any one is enough to find the others).
    pub brokers: String,
    /// Reach the brokers over TLS.
    #[serde(default)]
    pub tls: bool,
    /// The CA certificates (PEM) of the brokers' certificates (default: the system's).
    pub ca_file: Option<PathBuf>,
    /// Plaintext to a broker on another host is refused unless this is set: audit records
    /// and their metadata would cross the network unencrypted.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Where the publisher saves its acknowledged position (default:
    /// `<journal>.kafka-position.json` beside the journal directory).
    pub state: Option<PathBuf>,
    /// Most records in one Kafka message (a backlog goes out in runs this long).
    #[serde(default = "default_run_records")]
    pub run_records: usize,
    /// The replication factor of the topics the publisher creates (a topic made by hand is
    /// used as it is).
    #[serde(default = "default_replication")]
    pub replication: i32,
    /// Most messages awaiting the brokers' acknowledgement at once.
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
    /// Past this many records durable in the journal and not yet in the topic, a control
    /// event says the transport lags (and another when it has caught up).
    #[serde(default = "default_lag_alarm")]
    pub lag_alarm_records: u64,
    /// With `[delivery] mode = "sync"` (or `sync_fail_closed`): a statement completes only
    /// once its record is in the local journal (fsync) *and* acknowledged by the brokers
    /// (`acks=all`: every in-sync replica).
    #[serde(default)]
    pub sync_waits_for_stream: bool,
}

fn default_run_records() -> usize {
    PublishSettings::RUN_RECORDS
}

fn default_replication() -> i32 {
    PublishSettings::REPLICATION
}

fn default_in_flight() -> usize {
    PublishSettings::IN_FLIGHT
}

fn default_lag_alarm() -> u64 {
    10_000
}

/// What the publisher inside the proxy or `pgtrail ingest` runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTransport {
    pub settings: PublishSettings,
    pub lag_alarm_records: u64,
    pub sync_waits_for_stream: bool,
}

impl KafkaSection {
    /// Checks the section and resolves it for the journal in `journal_dir`.
    pub fn resolve(&self, journal_dir: &Path) -> Result<KafkaTransport, KafkaError> {
        let brokers = Brokers::new(&self.brokers, self.tls, self.ca_file.clone(), self.allow_plaintext)?;
        if !(1..=10_000).contains(&self.run_records) {
            return Err(KafkaError::Kafka(format!(
                "transport.kafka.run_records must be between 1 and 10000, not {}",
                self.run_records
            )));
        }
        if !(1..=1_000).contains(&self.in_flight) {
            return Err(KafkaError::Kafka(format!(
                "transport.kafka.in_flight must be between 1 and 1000, not {}",
                self.in_flight
            )));
        }
        if !(1..=32).contains(&self.replication) {
            return Err(KafkaError::Kafka(format!(
                "transport.kafka.replication must be between 1 and 32, not {}",
                self.replication
            )));
        }
        let mut settings = PublishSettings::new(brokers);
        settings.replication = self.replication;
        settings.run_records = self.run_records;
        settings.in_flight = self.in_flight;
        settings.state = Some(self.state.clone().unwrap_or_else(|| default_state(journal_dir)));
        settings.poll = std::time::Duration::from_millis(5);
        Ok(KafkaTransport {
            settings,
            lag_alarm_records: self.lag_alarm_records,
            sync_waits_for_stream: self.sync_waits_for_stream,
        })
    }
}

/// `<journal>.kafka-position.json` beside the journal directory (not in it: the journal's
/// directory holds only its segments).
pub fn default_state(journal_dir: &Path) -> PathBuf {
    let name = journal_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "journal".into());
    journal_dir.with_file_name(format!("{name}.kafka-position.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Value {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn plaintext_to_another_host_is_refused_unless_tls_or_allowed() {
        let dir = Path::new("/var/lib/pgtrail/journal");
        assert!(transport(&table("brokers = \"127.0.0.1:9092,localhost:9093\""), dir).is_ok());
        let err = transport(&table("brokers = \"kafka1.example.com:9092\""), dir).unwrap_err();
        assert!(err.contains("without TLS"), "{err}");
        assert!(transport(&table("brokers = \"kafka1.example.com:9093\"\ntls = true"), dir).is_ok());
        assert!(transport(&table("brokers = \"10.0.0.5:9092\"\nallow_plaintext = true"), dir).is_ok());
        let err = transport(&table("brokers = \"kafka://127.0.0.1:9092\""), dir).unwrap_err();
        assert!(err.contains("HOST:PORT"), "{err}");
    }

    #[test]
    fn the_writer_resolves_its_table_and_names_a_wrong_key() {
        let resolved =
            transport(&table("brokers = \"127.0.0.1:9092\"\nsync_waits_for_stream = true"), Path::new("/j")).unwrap();
        assert!(resolved.sync_waits());
        assert_eq!(resolved.describe(), "Kafka topics pgtrail.records.* on 127.0.0.1:9092");
        let err = transport(&table("brokers = \"127.0.0.1:9092\"\nbroker = \"x\""), Path::new("/j")).unwrap_err();
        assert!(err.starts_with("[transport.kafka]") && err.contains("broker"), "{err}");
        let err = transport(&table("brokers = \"127.0.0.1:9092\"\nin_flight = 0"), Path::new("/j")).unwrap_err();
        assert!(err.contains("in_flight"), "{err}");
        let err = transport(&table("brokers = \"127.0.0.1:9092\"\nreplication = 0"), Path::new("/j")).unwrap_err();
        assert!(err.contains("replication"), "{err}");
    }

    #[test]
    fn the_position_file_is_beside_the_journal() {
        let section: KafkaSection = toml::from_str("brokers = \"127.0.0.1:9092\"").unwrap();
        let resolved = section.resolve(Path::new("/var/lib/pgtrail/journal")).unwrap();
        assert_eq!(resolved.settings.state.as_deref(), Some(Path::new("/var/lib/pgtrail/journal.kafka-position.json")));
    }
}
