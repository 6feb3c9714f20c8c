//! Rules over activity events.
//!
//! Owns: the rule language, the built-in pack, windows, alarms and suppression. Must not:
//! read the journal or send alerts anywhere (pgtrail-alerts and pgtrail-notify do).
//!
//! A rule file is TOML with one `[[rule]]` table per rule:
//!
//! ```toml
//! [[rule]]
//! name = "burst of failed logins"
//! condition = 'class == "CONNECT" && sqlState == "28P01"'   # CEL over the event's fields
//! severity = "high"             # info, low, medium, high, critical
//! group_by = ["dbUserName"]     # count per user...
//! window_secs = 60              # ...within a sliding minute...
//! threshold = 5                 # ...and fire at the fifth
//! dedup_key = ["dbUserName"]    # alerts with the same key are one alert (default: group_by)
//! suppress_secs = 300           # no repeat for the same key within this time
//! resolve_after_secs = 600      # back to OK after this long without a match
//! include_noise = false         # noise events (client-tool introspection...) are skipped
//! ```
//!
//! The condition sees every field of the event under its DAS name (`class`, `command`,
//! `commandText`, `dbUserName`, `rowCount`, `objects`, `noise`, `type`...): the one
//! vocabulary of [`vocabulary`], shared with the proxy's deny rules. It is parsed
//! and checked when the file is loaded: a syntax error, a name that is not an event field,
//! or a condition that is not a boolean for a complete event is rejected with the rule's
//! line and a clear message. At run time an evaluation error (e.g. comparing a null
//! `rowCount`) counts as no match.
//!
//! Each rule has an alarm state as CloudWatch alarms do: INSUFFICIENT_DATA until the
//! first event, ALARM while any group is in breach, OK otherwise.

mod engine;
mod rule;
pub mod vocabulary;

pub use engine::{Alarm, Alert, AlertStatus, Engine};
pub use rule::{RuleSet, Severity};

/// A rule file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{file}: {message}")]
    Toml { file: String, message: String },
    #[error("{file}:{line}: rule {rule:?}: {message}")]
    Invalid { file: String, line: usize, rule: String, message: String },
}
