//! The activity event model and statement classification.
//!
//! Owns: the event model (the DAS field set and pgtrail's extensions, [`EventKind`]),
//! the events about the stream itself (control, heartbeat, loss), and statement
//! classification. Must not: do I/O, or depend on any other pgtrail crate.
//!
//! [`ActivityEvent`] is the unit everything downstream consumes: it carries the Aurora DAS
//! v1.1 field set so DAS consumers read it unchanged, plus pgtrail's extensions.
//! [`Classifier`] turns statement text into command, class and objects with the real
//! PostgreSQL parser. This crate knows nothing about sockets or files.

mod classify;
mod command;
mod event;
mod literals;
pub mod noise;
mod normalize;
mod password;
mod stream;
mod tags;

pub use classify::{Classified, Classifier, Statement, Traits};
pub use command::{class_from_tag, rows_from_completion, tag_from_completion};
pub use event::{
    ActivityEvent, ActivityRecord, EventClass, EventKind, EventSource, ExitCode, Identity, ObjectKind, ObjectRef,
    Verdict, activity_record_json, format_das_time, parse_das_time, session_id,
};
pub use password::{password_change_in_literals, redact_passwords, redact_passwords_with};
pub use stream::{control_event, heartbeat_event, loss_event};
pub use tags::sqlcommenter_tags;
