//! `[envelope]` in `pgtrail.toml`: the suite and when a new data key is made.

use std::time::Duration;

use serde::Deserialize;

use crate::{SealerConfig, Suite};

/// An `[envelope]` section that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeConfigError {
    #[error("envelope.gzip_level must be 0 to 9")]
    GzipLevel,
    #[error("envelope.rotate_after_records and envelope.rotate_after_secs must be positive")]
    Rotation,
}

/// `[envelope]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSection {
    /// `"0x0178"` (Aurora's, the default) or `"0x0478"` (key-committing).
    #[serde(default = "defaults::suite")]
    pub suite: Suite,
    /// A new data key after this many records...
    #[serde(default = "defaults::rotate_after_records")]
    pub rotate_after_records: u64,
    /// ...or this many seconds, whichever comes first.
    #[serde(default = "defaults::rotate_after_secs")]
    pub rotate_after_secs: u64,
    /// gzip level of the inner record, 0 to 9.
    #[serde(default = "defaults::gzip_level")]
    pub gzip_level: u32,
}

impl Default for EnvelopeSection {
    fn default() -> Self {
        Self {
            suite: defaults::suite(),
            rotate_after_records: defaults::rotate_after_records(),
            rotate_after_secs: defaults::rotate_after_secs(),
            gzip_level: defaults::gzip_level(),
        }
    }
}

impl EnvelopeSection {
    pub fn validate(&self) -> Result<(), EnvelopeConfigError> {
        if self.gzip_level > 9 {
            return Err(EnvelopeConfigError::GzipLevel);
        }
        if self.rotate_after_records == 0 || self.rotate_after_secs == 0 {
            return Err(EnvelopeConfigError::Rotation);
        }
        Ok(())
    }

    /// The sealer's configuration.
    pub fn sealer_config(&self) -> SealerConfig {
        SealerConfig {
            suite: self.suite,
            rotate_after_records: self.rotate_after_records,
            rotate_after: Duration::from_secs(self.rotate_after_secs),
            gzip_level: self.gzip_level,
        }
    }
}

mod defaults {
    use crate::{SealerConfig, Suite};

    pub fn suite() -> Suite {
        SealerConfig::default().suite
    }
    pub fn rotate_after_records() -> u64 {
        SealerConfig::default().rotate_after_records
    }
    pub fn rotate_after_secs() -> u64 {
        SealerConfig::default().rotate_after.as_secs()
    }
    pub fn gzip_level() -> u32 {
        SealerConfig::default().gzip_level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_are_named_by_their_ids_and_checked() {
        let section: EnvelopeSection = toml::from_str("suite = \"0x0478\"").unwrap();
        assert_eq!(section.suite, Suite::Aes256GcmHkdfSha512Commit);
        let err = toml::from_str::<EnvelopeSection>("suite = \"0x9999\"").unwrap_err().to_string();
        assert!(err.contains("0x0178") && err.contains("0x0478"), "the error names the choices: {err}");
        let section: EnvelopeSection = toml::from_str("gzip_level = 10").unwrap();
        assert_eq!(section.validate(), Err(EnvelopeConfigError::GzipLevel));
        assert_eq!(EnvelopeSection::default().sealer_config(), SealerConfig::default());
    }
}
