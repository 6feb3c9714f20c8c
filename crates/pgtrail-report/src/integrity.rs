//! The integrity statement a report ends with: for each journal instance, the records the
//! report's window covers, the checkpoint that signs them (seq, hash, key id), the
//! archive manifest's last entry (seq, hash, keys), and what verifying the archive (and
//! the journal, where one was given) found.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pgtrail_archive::{ArchiveReport, InstanceReport, verify_archive};
use pgtrail_journal::{JournalReader, VerifierSet, VerifyReport, verify_dir};
use serde::Serialize;

use crate::select::Covered;
use crate::{ReportError, Spec};

/// The integrity of one instance's part of a report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InstanceIntegrity {
    pub instance: String,
    /// The journal records holding the window's events (first, last) and how many events.
    pub first_record: u64,
    pub last_record: u64,
    pub events: u64,
    /// The archive manifest's last entry: seq and hash.
    pub manifest_entry: Option<u64>,
    pub manifest_hash: Option<String>,
    /// The archive keys that signed the manifest.
    pub manifest_keys: Vec<String>,
    /// The archive holds the journal's records 1 to this, none left out.
    pub archived_through: u64,
    /// The journal the archive was checked against, when one was given.
    pub journal: Option<PathBuf>,
    /// The first checkpoint at or after `last_record`: it signs every record up to it.
    pub checkpoint_seq: Option<u64>,
    pub checkpoint_hash: Option<String>,
    pub checkpoint_key: Option<String>,
    /// The result of verifying this instance, in words.
    pub verification: String,
    pub verified: bool,
}

/// The integrity statement of a report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Integrity {
    pub instances: Vec<InstanceIntegrity>,
    /// Everything checked held together and every covered record is signed.
    pub verified: bool,
    /// Problems found (empty when verified).
    pub problems: Vec<String>,
}

impl Integrity {
    /// The statement in words, one sentence per line.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        lines.push(if self.verified {
            "VERIFIED: everything stated below was checked when this report was made, and held.".into()
        } else {
            "NOT VERIFIED: verification found problems (listed below); do not rely on this report.".into()
        });
        for i in &self.instances {
            lines.push(format!(
                "Instance {}: {} events of the window are in journal records {} to {}.",
                i.instance, i.events, i.first_record, i.last_record
            ));
            match (&i.manifest_entry, &i.manifest_hash) {
                (Some(seq), Some(hash)) => lines.push(format!(
                    "  Archive manifest: last entry {seq}, hash {hash}, signed by {}; the archive holds records 1 to {} with none left out.",
                    i.manifest_keys.join(", "),
                    i.archived_through
                )),
                _ => lines.push("  Archive manifest: none for this instance.".into()),
            }
            match (&i.checkpoint_seq, &i.checkpoint_hash, &i.checkpoint_key) {
                (Some(seq), Some(hash), Some(key)) => lines.push(format!(
                    "  Signed by journal checkpoint at record {seq}, chain hash {hash}, key {key}."
                )),
                _ => match &i.journal {
                    Some(journal) => lines.push(format!(
                        "  No checkpoint of the journal {} signs record {} yet.",
                        journal.display(),
                        i.last_record
                    )),
                    None => lines.push(
                        "  Checkpoints: no journal of this instance was given (--journal), so the records are proven by the archive key only."
                            .into(),
                    ),
                },
            }
            lines.push(format!("  Verification: {}", i.verification));
        }
        for problem in &self.problems {
            lines.push(format!("Problem: {problem}"));
        }
        lines
    }
}

/// What verifying the archive and the journals found, per instance.
#[derive(Debug)]
pub(crate) struct Verified {
    journals: BTreeMap<String, (PathBuf, Result<VerifyReport, String>)>,
    archive: BTreeMap<String, Result<InstanceReport, String>>,
    problems: Vec<String>,
}

/// Verifies the archive against each journal given (or alone).
pub(crate) fn verify(spec: &Spec, keys: &VerifierSet) -> Result<Verified, ReportError> {
    let mut problems = Vec::new();
    // Each journal given, by instance, with its own verification.
    let mut journals: BTreeMap<String, (PathBuf, Result<VerifyReport, String>)> = BTreeMap::new();
    for dir in &spec.journals {
        let Some(instance) = JournalReader::instance_of(dir)? else {
            return Err(ReportError::Invalid(format!("{}: the journal is empty", dir.display())));
        };
        let verified = verify_dir(dir, keys, None)?.map_err(|failure| failure.to_string());
        journals.insert(instance, (dir.clone(), verified));
    }
    // The archive, against each journal (or alone).
    let mut archive: BTreeMap<String, Result<InstanceReport, String>> = BTreeMap::new();
    let mut runs: Vec<Option<&PathBuf>> = journals.values().map(|(dir, _)| Some(dir)).collect();
    if runs.is_empty() {
        runs.push(None);
    }
    for journal in runs {
        match verify_archive(&spec.archive, keys, journal.map(PathBuf::as_path))? {
            Ok(ArchiveReport { instances }) => {
                for report in instances {
                    let checked = report.journal_checked.is_some();
                    let keep = match archive.get(&report.instance) {
                        Some(Ok(earlier)) => checked && earlier.journal_checked.is_none(),
                        Some(Err(_)) => false,
                        None => true,
                    };
                    if keep {
                        archive.insert(report.instance.clone(), Ok(report));
                    }
                }
            }
            Err(failure) => {
                let text = failure.to_string();
                match &failure.instance {
                    Some(instance) => {
                        archive.insert(instance.clone(), Err(text));
                    }
                    None => problems.push(format!("archive: {text}")),
                }
            }
        }
    }
    Ok(Verified { journals, archive, problems })
}

/// The integrity statement of a report whose window covers `covered`.
pub(crate) fn state(covered: &[Covered], verified: Verified) -> Integrity {
    let Verified { journals, mut archive, mut problems } = verified;
    let mut instances = Vec::new();
    for c in covered {
        let mut i = InstanceIntegrity {
            instance: c.instance.clone(),
            first_record: c.first,
            last_record: c.last,
            events: c.events,
            ..InstanceIntegrity::default()
        };
        let (mut said, mut failed) = (Vec::new(), Vec::new());
        match archive.remove(&c.instance) {
            Some(Ok(report)) => {
                if let Some((seq, hash)) = &report.last_entry {
                    i.manifest_entry = Some(*seq);
                    i.manifest_hash = Some(hash.clone());
                }
                i.manifest_keys = report.key_ids.iter().cloned().collect();
                i.archived_through = report.through_record_seq;
                said.push(format!(
                    "archive verified ({} manifest entries, {} files, {} rows)",
                    report.entries, report.files, report.rows
                ));
                if c.last > report.through_record_seq {
                    failed.push(format!(
                        "instance {}: the report's rows reach record {} but the verified archive only through {}",
                        c.instance, c.last, report.through_record_seq
                    ));
                }
            }
            Some(Err(failure)) => failed.push(format!("archive: {failure}")),
            None => failed.push(format!("instance {}: the archive has no manifest for it", c.instance)),
        }
        match journals.get(&c.instance) {
            Some((dir, Ok(report))) => {
                i.journal = Some(dir.clone());
                said.push(format!(
                    "journal {} verified (records {} to {}, {} checkpoints)",
                    dir.display(),
                    report.pruned_before.max(1),
                    report.last_seq,
                    report.checkpoints
                ));
                match report.signing(c.last) {
                    Some(signed) => {
                        i.checkpoint_seq = Some(signed.seq);
                        i.checkpoint_hash = Some(hex::encode(signed.hash));
                        i.checkpoint_key = Some(signed.key_id.clone());
                    }
                    None => failed.push(format!(
                        "instance {}: no checkpoint signs record {} yet (the journal's last checkpoint is at {})",
                        c.instance, c.last, report.last_checkpoint_seq
                    )),
                }
            }
            Some((dir, Err(failure))) => {
                i.journal = Some(dir.clone());
                failed.push(format!("journal {}: {failure}", dir.display()));
            }
            None => said.push("no journal given: checkpoints not checked".into()),
        }
        i.verified = failed.is_empty();
        i.verification = if i.verified { said.join("; ") } else { format!("FAILED: {}", failed.join("; ")) };
        problems.extend(failed);
        instances.push(i);
    }
    // An instance with no events in the window still counts when its archive is damaged.
    for failure in archive.into_values().filter_map(Result::err) {
        problems.push(format!("archive: {failure}"));
    }
    let verified = problems.is_empty();
    Integrity { instances, verified, problems }
}
