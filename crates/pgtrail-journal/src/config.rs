//! The journal's sections of `pgtrail.toml`: `[journal]`, `[recorder]` and `[instance]`.
//! Each is parsed strictly (unknown keys are errors), checked by `validate`, and turned
//! into the options the writer and the recorder take.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{JournalOptions, RecorderConfig};

/// A section that cannot be used, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalConfigError {
    #[error("journal.segment_max_bytes must be at least 4096")]
    SegmentTooSmall,
    #[error("journal.checkpoint_every_records and journal.checkpoint_every_secs must be positive")]
    CheckpointInterval,
    #[error("recorder.max_batch_events and recorder.queue_capacity must be positive")]
    RecorderLimits,
    #[error("instance.instance_id must be 1 to 64 bytes")]
    InstanceId,
}

/// `[journal]`: where the journal is and how it is cut into segments and signed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSection {
    /// The journal directory (or `--journal DIR`).
    pub dir: Option<PathBuf>,
    /// A new segment file is started when the current one reaches this size.
    #[serde(default = "defaults::segment_max_bytes")]
    pub segment_max_bytes: u64,
    /// A signed checkpoint after this many records...
    #[serde(default = "defaults::checkpoint_every_records")]
    pub checkpoint_every_records: u64,
    /// ...or after this many seconds, whichever comes first.
    #[serde(default = "defaults::checkpoint_every_secs")]
    pub checkpoint_every_secs: u64,
    /// A copy of every checkpoint is appended here (another mount or host), so that a
    /// journal cut short is detected by `pgtrail verify --witness`.
    pub witness_dir: Option<PathBuf>,
}

impl Default for JournalSection {
    fn default() -> Self {
        Self {
            dir: None,
            segment_max_bytes: defaults::segment_max_bytes(),
            checkpoint_every_records: defaults::checkpoint_every_records(),
            checkpoint_every_secs: defaults::checkpoint_every_secs(),
            witness_dir: None,
        }
    }
}

impl JournalSection {
    pub fn validate(&self) -> Result<(), JournalConfigError> {
        if self.segment_max_bytes < 4096 {
            return Err(JournalConfigError::SegmentTooSmall);
        }
        if self.checkpoint_every_records == 0 || self.checkpoint_every_secs == 0 {
            return Err(JournalConfigError::CheckpointInterval);
        }
        Ok(())
    }

    /// The writer's options for `instance` (the signer is loaded by the caller).
    pub fn options(&self, instance: String) -> JournalOptions {
        JournalOptions {
            segment_max_bytes: self.segment_max_bytes,
            instance,
            signer: None,
            checkpoint_every_records: self.checkpoint_every_records,
            checkpoint_every: Duration::from_secs(self.checkpoint_every_secs),
            witness_dir: self.witness_dir.clone(),
            set_aside_damage: false,
        }
    }
}

/// `[recorder]`: batching and the queue between the capture and the writer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecorderSection {
    /// A record holds at most this many events...
    #[serde(default = "defaults::max_batch_events")]
    pub max_batch_events: usize,
    /// ...and is written at most this long after its first event arrived.
    #[serde(default = "defaults::max_batch_delay_ms")]
    pub max_batch_delay_ms: u64,
    /// Events waiting to be written; beyond this, async events are dropped, counted and
    /// recorded as a loss record.
    #[serde(default = "defaults::queue_capacity")]
    pub queue_capacity: usize,
}

impl Default for RecorderSection {
    fn default() -> Self {
        Self {
            max_batch_events: defaults::max_batch_events(),
            max_batch_delay_ms: defaults::max_batch_delay_ms(),
            queue_capacity: defaults::queue_capacity(),
        }
    }
}

impl RecorderSection {
    pub fn validate(&self) -> Result<(), JournalConfigError> {
        if self.max_batch_events == 0 || self.queue_capacity == 0 {
            return Err(JournalConfigError::RecorderLimits);
        }
        Ok(())
    }

    /// The recorder's configuration, with a heartbeat after `heartbeat` of silence.
    pub fn recorder_config(&self, heartbeat: Option<Duration>) -> RecorderConfig {
        RecorderConfig {
            max_batch_items: self.max_batch_events,
            max_batch_delay: Duration::from_millis(self.max_batch_delay_ms),
            queue_capacity: self.queue_capacity,
            heartbeat,
        }
    }
}

/// `[instance]`: the DAS `clusterId` and `instanceId` the records carry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSection {
    #[serde(default = "defaults::cluster_id")]
    pub cluster_id: String,
    /// Default: this machine's host name.
    pub instance_id: Option<String>,
}

impl Default for InstanceSection {
    fn default() -> Self {
        Self { cluster_id: defaults::cluster_id(), instance_id: None }
    }
}

impl InstanceSection {
    /// The instance id: the configured one, or the host name.
    pub fn instance_id(&self) -> Result<String, JournalConfigError> {
        let id = self.instance_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "pgtrail".into())
        });
        if id.is_empty() || id.len() > 64 {
            return Err(JournalConfigError::InstanceId);
        }
        Ok(id)
    }

    pub fn validate(&self) -> Result<(), JournalConfigError> {
        self.instance_id().map(drop)
    }
}

mod defaults {
    use crate::{JournalOptions, RecorderConfig};

    pub fn segment_max_bytes() -> u64 {
        JournalOptions::default().segment_max_bytes
    }
    pub fn checkpoint_every_records() -> u64 {
        JournalOptions::default().checkpoint_every_records
    }
    pub fn checkpoint_every_secs() -> u64 {
        JournalOptions::default().checkpoint_every.as_secs()
    }
    pub fn max_batch_events() -> usize {
        RecorderConfig::default().max_batch_items
    }
    pub fn max_batch_delay_ms() -> u64 {
        RecorderConfig::default().max_batch_delay.as_millis() as u64
    }
    pub fn queue_capacity() -> usize {
        RecorderConfig::default().queue_capacity
    }
    pub fn cluster_id() -> String {
        "pgtrail".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_strict_and_validated() {
        let journal: JournalSection = toml::from_str("segment_max_bytes = 100").unwrap();
        assert_eq!(journal.validate(), Err(JournalConfigError::SegmentTooSmall));
        assert!(toml::from_str::<RecorderSection>("queue_capacty = 1").is_err(), "unknown keys are errors");
        let recorder: RecorderSection = toml::from_str("queue_capacity = 0").unwrap();
        assert_eq!(recorder.validate(), Err(JournalConfigError::RecorderLimits));
        let instance = InstanceSection { instance_id: Some("x".repeat(65)), ..InstanceSection::default() };
        assert_eq!(instance.validate(), Err(JournalConfigError::InstanceId));
        assert_eq!(JournalSection::default(), JournalSection::default());
    }
}
