//! The archive's one flat column schema: every DAS field, the extensions (identity
//! flattened into columns, objects and parameters as lists), and where each event sits in
//! the journal (`journal_instance`, `record_seq`, `event_index`). The Hive partition
//! columns `date` and `instance` are in the paths, not in the files.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    BooleanBuilder, Int32Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use pgtrail_event::{ActivityEvent, ExitCode};
use serde::Serialize;

/// Column names and types, in file order.
const COLUMNS: &[(&str, Kind)] = &[
    ("journal_instance", Kind::Text),
    ("record_seq", Kind::U64),
    ("event_index", Kind::U32),
    ("type", Kind::Text),
    ("class", Kind::Text),
    ("command", Kind::Text),
    ("command_text", Kind::Text),
    ("database_name", Kind::Text),
    ("db_user_name", Kind::Text),
    ("client_application", Kind::Text),
    ("remote_host", Kind::Text),
    ("remote_port", Kind::Text),
    ("session_id", Kind::Text),
    ("pid", Kind::I32),
    ("statement_id", Kind::U64),
    ("substatement_id", Kind::U64),
    ("log_time", Kind::Time),
    ("start_time", Kind::Time),
    ("end_time", Kind::Time),
    ("exit_code", Kind::Text),
    ("sql_state", Kind::Text),
    ("error_message", Kind::Text),
    ("row_count", Kind::U64),
    ("object_type", Kind::Text),
    ("object_name", Kind::Text),
    ("objects", Kind::TextList),
    ("param_list", Kind::TextList),
    ("query_fingerprint", Kind::Text),
    ("server_host", Kind::Text),
    ("server_type", Kind::Text),
    ("server_version", Kind::Text),
    ("service_name", Kind::Text),
    ("db_protocol", Kind::Text),
    ("net_protocol", Kind::Text),
    ("source", Kind::Text),
    ("noise", Kind::Bool),
    ("superuser", Kind::Bool),
    ("identity_issuer", Kind::Text),
    ("identity_subject", Kind::Text),
    ("identity_name", Kind::Text),
    ("identity_email", Kind::Text),
    ("identity_groups", Kind::TextList),
    ("identity_token_id", Kind::Text),
    ("identity_auth_method", Kind::Text),
    ("verdict", Kind::Text),
    ("denied_by", Kind::Text),
    ("confirms", Kind::U64),
    ("outcome", Kind::Text),
    ("tags", Kind::Text),
    ("has_where", Kind::Bool),
    ("copy_program", Kind::Bool),
    ("sets_password", Kind::Bool),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    TextList,
    U64,
    U32,
    I32,
    Bool,
    Time,
}

fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::Text => DataType::Utf8,
        Kind::TextList => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        Kind::U64 => DataType::UInt64,
        Kind::U32 => DataType::UInt32,
        Kind::I32 => DataType::Int32,
        Kind::Bool => DataType::Boolean,
        Kind::Time => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields: Vec<Field> = COLUMNS
        .iter()
        .map(|(name, kind)| {
            // The journal position and what every event has are never null.
            let required = matches!(
                *name,
                "journal_instance" | "record_seq" | "event_index" | "type" | "class" | "command" | "log_time"
            );
            Field::new(*name, data_type(*kind), !required)
        })
        .collect();
    Arc::new(Schema::new(fields))
});

/// The archive's Arrow schema.
pub fn schema() -> SchemaRef {
    Arc::clone(&SCHEMA)
}

/// A serde enum's name as it is written in the journal (`"READ"`, `"record"`...).
fn name_of<T: Serialize>(value: &T) -> Option<String> {
    match serde_json::to_value(value).ok()? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// One column's builder.
#[derive(Debug)]
enum Builder {
    Text(StringBuilder),
    TextList(ListBuilder<StringBuilder>),
    U64(UInt64Builder),
    U32(UInt32Builder),
    I32(Int32Builder),
    Bool(BooleanBuilder),
    Time(TimestampMicrosecondBuilder),
}

impl Builder {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Text => Self::Text(StringBuilder::new()),
            Kind::TextList => Self::TextList(ListBuilder::new(StringBuilder::new())),
            Kind::U64 => Self::U64(UInt64Builder::new()),
            Kind::U32 => Self::U32(UInt32Builder::new()),
            Kind::I32 => Self::I32(Int32Builder::new()),
            Kind::Bool => Self::Bool(BooleanBuilder::new()),
            Kind::Time => Self::Time(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
        }
    }

    fn append(&mut self, value: Value<'_>) {
        match (self, value) {
            (Self::Text(b), Value::Text(v)) => b.append_option(v),
            (Self::TextList(b), Value::TextList(Some(items))) => {
                for item in items {
                    b.values().append_value(item);
                }
                b.append(true);
            }
            (Self::TextList(b), Value::TextList(None)) => b.append(false),
            (Self::U64(b), Value::U64(v)) => b.append_option(v),
            (Self::U32(b), Value::U32(v)) => b.append_value(v),
            (Self::I32(b), Value::I32(v)) => b.append_option(v),
            (Self::Bool(b), Value::Bool(v)) => b.append_option(v),
            (Self::Time(b), Value::Time(v)) => b.append_option(v),
            _ => unreachable!("Rows::push lists its values in the order and kinds of COLUMNS"),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Text(b) => Arc::new(b.finish()),
            Self::TextList(b) => Arc::new(b.finish()),
            Self::U64(b) => Arc::new(b.finish()),
            Self::U32(b) => Arc::new(b.finish()),
            Self::I32(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
        }
    }
}

/// Rows being gathered for one file: one builder per column of [`COLUMNS`].
#[derive(Debug)]
pub struct Rows {
    columns: Vec<Builder>,
    len: usize,
}

impl Default for Rows {
    fn default() -> Self {
        Rows { columns: COLUMNS.iter().map(|(_, kind)| Builder::new(*kind)).collect(), len: 0 }
    }
}

/// One row's values, in column order, before they go to the builders (borrowed from the
/// event where they can be: no allocation per field).
enum Value<'a> {
    Text(Option<Cow<'a, str>>),
    TextList(Option<Vec<&'a str>>),
    U64(Option<u64>),
    U32(u32),
    I32(Option<i32>),
    Bool(Option<bool>),
    Time(Option<i64>),
}

fn text(value: Option<&str>) -> Value<'_> {
    Value::Text(value.map(Cow::Borrowed))
}

fn owned(value: Option<String>) -> Value<'static> {
    Value::Text(value.map(Cow::Owned))
}

impl Rows {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds event `index` of record `seq` of journal `instance`.
    pub fn push(&mut self, instance: &str, seq: u64, index: u32, e: &ActivityEvent) {
        let identity = e.identity.as_deref();
        let exit_code = e.exit_code.as_ref().map(|c| match c {
            ExitCode::Clean(n) => n.to_string(),
            ExitCode::SqlState(s) => s.clone(),
        });
        let objects = e.objects.iter().map(|o| o.name.as_str()).collect();
        let params = e.param_list.iter().map(|p| p.as_deref().unwrap_or_default()).collect();
        let tags = (!e.tags.is_empty()).then(|| serde_json::to_string(&e.tags).unwrap_or_default());
        let values = [
            text(Some(instance)),
            Value::U64(Some(seq)),
            Value::U32(index),
            text(Some(e.kind.as_str())),
            text(Some(e.class.as_str())),
            text(Some(&e.command)),
            text(e.command_text.as_deref()),
            text(e.database_name.as_deref()),
            text(e.db_user_name.as_deref()),
            text(e.client_application.as_deref()),
            text(e.remote_host.as_deref()),
            text(e.remote_port.as_deref()),
            text(e.session_id.as_deref()),
            Value::I32(e.pid),
            Value::U64(Some(e.statement_id)),
            Value::U64(Some(e.substatement_id)),
            Value::Time(Some(e.log_time.timestamp_micros())),
            Value::Time(Some(e.start_time.timestamp_micros())),
            Value::Time(e.end_time.map(|t| t.timestamp_micros())),
            owned(exit_code),
            text(e.sql_state.as_deref()),
            text(e.error_message.as_deref()),
            Value::U64(e.row_count),
            text(e.object_type.as_deref()),
            text(e.object_name.as_deref()),
            Value::TextList(Some(objects)),
            Value::TextList(Some(params)),
            text(e.query_fingerprint.as_deref()),
            text(e.server_host.as_deref()),
            text(Some(&e.server_type)),
            text(e.server_version.as_deref()),
            text(Some(&e.service_name)),
            text(Some(&e.db_protocol)),
            text(Some(&e.net_protocol)),
            owned(e.source.as_ref().and_then(name_of)),
            Value::Bool(Some(e.noise)),
            Value::Bool(e.superuser),
            text(identity.map(|i| i.issuer.as_str())),
            text(identity.map(|i| i.subject.as_str())),
            text(identity.and_then(|i| i.name.as_deref())),
            text(identity.and_then(|i| i.email.as_deref())),
            Value::TextList(identity.map(|i| i.groups.iter().map(String::as_str).collect())),
            text(identity.and_then(|i| i.token_id.as_deref())),
            text(identity.map(|i| i.auth_method.as_str())),
            owned(e.verdict.as_ref().and_then(name_of)),
            text(e.denied_by.as_deref()),
            Value::U64(e.confirms),
            text(e.outcome.as_deref()),
            owned(tags),
            Value::Bool(Some(e.has_where)),
            Value::Bool(Some(e.copy_program)),
            Value::Bool(Some(e.sets_password)),
        ];
        debug_assert_eq!(values.len(), COLUMNS.len());
        for (builder, value) in self.columns.iter_mut().zip(values) {
            builder.append(value);
        }
        self.len += 1;
    }

    /// The rows as one batch in the archive's schema; the builders start over empty.
    pub fn finish(&mut self) -> RecordBatch {
        let columns = self.columns.iter_mut().map(Builder::finish).collect();
        self.len = 0;
        RecordBatch::try_new(schema(), columns).expect("the builders follow the schema")
    }
}
