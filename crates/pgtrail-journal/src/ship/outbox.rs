//! What every publisher reads and keeps on the journal's side: the journal's instance once
//! it has one, runs of durable records to send, the journal's own record of a sequence (to
//! check a broker's last one against), and the position a publisher saves between runs.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ShipStats;
use crate::{Hash, JournalError, JournalReader, Record};

/// How long a run of records sent as one message may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSize {
    /// Most records in a run.
    pub records: usize,
    /// A run ends once its records reach this many bytes (framing included).
    pub bytes: usize,
}

/// The journal's instance, once its first record is written (`Ok(None)` when `stop` says
/// so first); a publisher names its subject or topic after it.
pub async fn instance_once_written(
    journal: &Path,
    poll: Duration,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Option<String>, JournalError> {
    loop {
        if let Some(instance) = JournalReader::instance_of(journal)? {
            return Ok(Some(instance));
        }
        if stop() {
            return Ok(None);
        }
        tokio::time::sleep(poll).await;
    }
}

/// The next run of records from `reader`: consecutive, none past `durable` (the last record
/// the writer has made durable, when it says), at most `size`. Empty when there is nothing
/// to send. Updates the stats' view of the journal's head (from `published` when the
/// journal's end is not known) and whether the publisher has caught up.
pub fn next_run(
    reader: &mut JournalReader,
    durable: Option<u64>,
    size: RunSize,
    published: u64,
    stats: &ShipStats,
) -> Result<Vec<Record>, JournalError> {
    let mut run = Vec::new();
    let mut bytes = 0;
    while run.len() < size.records {
        if durable.is_some_and(|limit| JournalReader::position(reader) > limit) {
            break;
        }
        let Some(record) = reader.next_record()? else { break };
        bytes += record.payload.len() + 96;
        run.push(record);
        if bytes >= size.bytes {
            break;
        }
    }
    let head = durable.unwrap_or_else(|| run.last().map_or(published, |r| r.seq));
    stats.journal_seq.fetch_max(head, Ordering::Relaxed);
    stats.caught_up.store(run.is_empty(), Ordering::Relaxed);
    Ok(run)
}

/// The journal's record `seq` (`None` when the journal does not hold it).
pub fn record_at(journal: &Path, seq: u64) -> Result<Option<Record>, JournalError> {
    let mut reader = JournalReader::open(journal, seq)?;
    Ok(reader.next_record()?.filter(|record| record.seq == seq))
}

/// Why publishing cannot go on after the broker's last record.
#[derive(Debug)]
pub enum Mismatch {
    /// The broker holds records up to `found`, but this publisher was acknowledged up to
    /// `saved`: the broker lost records.
    Lost { saved: u64, found: u64 },
    /// The broker's last record `record` is not this journal's record of that sequence.
    Diverged { record: u64 },
    /// The journal could not be read.
    Journal(JournalError),
}

/// Checks where the broker says publishing stands (its last record `found`, with its hash)
/// against the position this publisher saved (`saved`) and the journal itself, before
/// publishing goes on after it.
pub fn check_resume(journal: &Path, saved: Option<u64>, found: u64, found_hash: Option<Hash>) -> Result<(), Mismatch> {
    if let Some(saved) = saved
        && saved > found
    {
        return Err(Mismatch::Lost { saved, found });
    }
    if found > 0 && record_at(journal, found).map_err(Mismatch::Journal)?.map(|r| r.hash) != found_hash {
        return Err(Mismatch::Diverged { record: found });
    }
    Ok(())
}

/// A publisher's saved position (`Ok(None)` when none was saved yet).
pub fn load_position<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Saves a publisher's position: written beside, then renamed over the last one, so a
/// crash leaves the old position or the new one, never half of one.
pub fn save_position<T: Serialize>(path: &Path, position: &T) -> Result<(), String> {
    let text = serde_json::to_string(position).map_err(|e| e.to_string())?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)).map_err(|e| e.to_string())
}

/// A record hash in a saved position, as hex (`#[serde(with = "hex_hash")]`).
pub mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(hash: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match hash {
            Some(h) => s.serialize_some(&hex::encode(h)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            let bytes = hex::decode(&t).map_err(serde::de::Error::custom)?;
            bytes.try_into().map_err(|_| serde::de::Error::custom("a hash is 32 bytes"))
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Position {
        record: u64,
        #[serde(with = "hex_hash")]
        hash: Option<[u8; 32]>,
    }

    #[test]
    fn a_saved_position_reads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("position.json");
        assert_eq!(load_position::<Position>(&path).unwrap(), None);
        let position = Position { record: 7, hash: Some([0xab; 32]) };
        save_position(&path, &position).unwrap();
        assert_eq!(load_position::<Position>(&path).unwrap(), Some(position));
        assert!(std::fs::read_to_string(&path).unwrap().contains(&"ab".repeat(32)));
        std::fs::write(&path, "{\"record\": 1, \"hash\": \"00\"}").unwrap();
        assert!(load_position::<Position>(&path).unwrap_err().contains("32 bytes"));
    }
}
