//! Events about the stream itself rather than the database: control events (the capture
//! started, stopped, was reconfigured, repaired its journal...), heartbeats (silence is
//! not loss) and loss records (how many events were dropped, when, and why). Every writer
//! of a journal (the proxy, `pgtrail ingest`) builds them here, so readers and rules see
//! one shape.

use chrono::DateTime;

use crate::event::{ActivityEvent, EventClass, EventKind};

/// A control event: `command` names what happened (`CAPTURE STARTED`, `JOURNAL
/// REPAIRED`...), `detail` says it in words. DAS consumers skip the type; pgtrail readers
/// show it.
pub fn control_event(command: &str, detail: String) -> ActivityEvent {
    let now = chrono::Utc::now();
    let mut e = ActivityEvent::new(EventClass::Misc, command, now);
    e.kind = EventKind::Control;
    e.end_time = Some(now);
    e.command_text = Some(detail.into());
    e
}

/// The heartbeat written when nothing else was for a while.
pub fn heartbeat_event() -> ActivityEvent {
    let mut e = ActivityEvent::new(EventClass::Misc, "HEARTBEAT", chrono::Utc::now());
    e.kind = EventKind::Heartbeat;
    e
}

/// The event written in place of `count` events dropped between two times (µs since the
/// epoch), with the cause in words.
pub fn loss_event(count: u64, from_micros: i64, to_micros: i64, cause: &dyn std::fmt::Display) -> ActivityEvent {
    let from = DateTime::from_timestamp_micros(from_micros).unwrap_or_default();
    let to = DateTime::from_timestamp_micros(to_micros).unwrap_or_default();
    let mut e = ActivityEvent::new(EventClass::Misc, "EVENTS LOST", from);
    e.kind = EventKind::Loss;
    e.log_time = to;
    e.end_time = Some(to);
    e.row_count = Some(count);
    e.error_message = Some(format!("pgtrail dropped {count} events: {cause}"));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `type` values are the wire contract with DAS consumers and older journals.
    #[test]
    fn kinds_serialize_as_the_das_type_strings() {
        let loss = loss_event(3, 1_000_000, 2_000_000, &"queue full");
        for (event, kind) in [
            (control_event("CAPTURE STARTED", "x".into()), "control"),
            (heartbeat_event(), "heartbeat"),
            (loss, "loss"),
            (ActivityEvent::new(EventClass::Read, "SELECT", chrono::Utc::now()), "record"),
        ] {
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["type"], kind);
            let back: ActivityEvent = serde_json::from_value(json).unwrap();
            assert_eq!(back.kind, event.kind);
        }
        let unknown = serde_json::json!({"type": "surprise"});
        assert!(serde_json::from_value::<EventKind>(unknown["type"].clone()).is_err());
    }
}
