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

/// Rows being gathered for one file.
#[derive(Debug)]
pub struct Rows {
    text: Vec<StringBuilder>,
    lists: Vec<ListBuilder<StringBuilder>>,
    u64s: Vec<UInt64Builder>,
    u32s: Vec<UInt32Builder>,
    i32s: Vec<Int32Builder>,
    bools: Vec<BooleanBuilder>,
    times: Vec<TimestampMicrosecondBuilder>,
    len: usize,
}

impl Default for Rows {
    fn default() -> Self {
        let count = |k: fn(Kind) -> bool| COLUMNS.iter().filter(|(_, kind)| k(*kind)).count();
        Rows {
            text: (0..count(|k| matches!(k, Kind::Text))).map(|_| StringBuilder::new()).collect(),
            lists: (0..count(|k| matches!(k, Kind::TextList)))
                .map(|_| ListBuilder::new(StringBuilder::new()))
                .collect(),
            u64s: (0..count(|k| matches!(k, Kind::U64))).map(|_| UInt64Builder::new()).collect(),
            u32s: (0..count(|k| matches!(k, Kind::U32))).map(|_| UInt32Builder::new()).collect(),
            i32s: (0..count(|k| matches!(k, Kind::I32))).map(|_| Int32Builder::new()).collect(),
            bools: (0..count(|k| matches!(k, Kind::Bool))).map(|_| BooleanBuilder::new()).collect(),
            times: (0..count(|k| matches!(k, Kind::Time)))
                .map(|_| TimestampMicrosecondBuilder::new().with_timezone("UTC"))
                .collect(),
            len: 0,
        }
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
        let (mut t, mut l, mut u, mut u32s, mut i, mut b, mut ts) = (0, 0, 0, 0, 0, 0, 0);
        for value in values {
            match value {
                Value::Text(v) => {
                    self.text[t].append_option(v);
                    t += 1;
                }
                Value::TextList(v) => {
                    match v {
                        Some(items) => {
                            for item in items {
                                self.lists[l].values().append_value(item);
                            }
                            self.lists[l].append(true);
                        }
                        None => self.lists[l].append(false),
                    }
                    l += 1;
                }
                Value::U64(v) => {
                    self.u64s[u].append_option(v);
                    u += 1;
                }
                Value::U32(v) => {
                    self.u32s[u32s].append_value(v);
                    u32s += 1;
                }
                Value::I32(v) => {
                    self.i32s[i].append_option(v);
                    i += 1;
                }
                Value::Bool(v) => {
                    self.bools[b].append_option(v);
                    b += 1;
                }
                Value::Time(v) => {
                    self.times[ts].append_option(v);
                    ts += 1;
                }
            }
        }
        self.len += 1;
    }

    /// The rows as one batch in the archive's schema; the builders start over empty.
    pub fn finish(&mut self) -> RecordBatch {
        let (mut t, mut l, mut u, mut u32s, mut i, mut b, mut ts) = (0, 0, 0, 0, 0, 0, 0);
        let next = |n: &mut usize| {
            *n += 1;
            *n - 1
        };
        let columns: Vec<ArrayRef> = COLUMNS
            .iter()
            .map(|(_, kind)| -> ArrayRef {
                match kind {
                    Kind::Text => Arc::new(self.text[next(&mut t)].finish()),
                    Kind::TextList => Arc::new(self.lists[next(&mut l)].finish()),
                    Kind::U64 => Arc::new(self.u64s[next(&mut u)].finish()),
                    Kind::U32 => Arc::new(self.u32s[next(&mut u32s)].finish()),
                    Kind::I32 => Arc::new(self.i32s[next(&mut i)].finish()),
                    Kind::Bool => Arc::new(self.bools[next(&mut b)].finish()),
                    Kind::Time => Arc::new(self.times[next(&mut ts)].finish()),
                }
            })
            .collect();
        self.len = 0;
        RecordBatch::try_new(schema(), columns).expect("the builders follow the schema")
    }
}
