//! One pgAudit record: the text after `AUDIT: ` in a log message.
//!
//! pgAudit 1.7 writes `AUDIT_TYPE,STATEMENT_ID,SUBSTATEMENT_ID,CLASS,COMMAND,OBJECT_TYPE,
//! OBJECT_NAME,STATEMENT,PARAMETER[,ROWS]` as CSV (a field is quoted when it holds a comma,
//! a quote, CR or LF). STATEMENT and PARAMETER may be `<previously logged>` (log_statement_once)
//! or `<not logged>` (log_statement off, log_parameter off); PARAMETER is `<none>` without
//! parameters, otherwise itself a CSV list of the values (an empty element is a NULL, a long
//! value may read `<long field suppressed>`). ROWS is there with pgaudit.log_rows. Values
//! redacted by PostgreSQL's own logging appear as written (`<REDACTED>` for passwords is the
//! proxy's; pgAudit logs the statement text as the server received it).

use crate::csv;

/// The prefix of a pgAudit message.
pub const MARKER: &str = "AUDIT: ";

/// SESSION (pgaudit.log) or OBJECT (pgaudit.role grants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditType {
    Session,
    Object,
}

/// What a STATEMENT or PARAMETER field held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logged<T> {
    Value(T),
    /// Logged with an earlier substatement (pgaudit.log_statement_once).
    PreviouslyLogged,
    /// Logging switched off (pgaudit.log_statement / log_parameter).
    NotLogged,
}

/// A parsed pgAudit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub audit_type: AuditType,
    pub statement_id: u64,
    pub substatement_id: u64,
    /// READ, WRITE, FUNCTION, ROLE, DDL, MISC, MISC_SET.
    pub class: String,
    pub command: String,
    pub object_type: Option<String>,
    pub object_name: Option<String>,
    pub statement: Logged<String>,
    /// Parameter values (None: SQL NULL); empty for `<none>`.
    pub parameters: Logged<Vec<Option<String>>>,
    /// With pgaudit.log_rows.
    pub rows: Option<u64>,
}

/// Why a message is not a pgAudit record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("not a pgAudit message (no \"AUDIT: \" prefix)")]
    NotAudit,
    #[error("malformed CSV: {0}")]
    Csv(#[from] csv::CsvError),
    #[error("{0} fields where pgAudit writes 9 or 10")]
    FieldCount(usize),
    #[error("audit type {0:?} is neither SESSION nor OBJECT")]
    AuditType(String),
    #[error("{field} {value:?} is not a number")]
    Number { field: &'static str, value: String },
    #[error("the {0} field is empty")]
    Empty(&'static str),
}

fn number(field: &'static str, value: Option<&str>) -> Result<u64, AuditError> {
    let value = value.unwrap_or_default();
    value.parse().map_err(|_| AuditError::Number { field, value: value.to_string() })
}

impl AuditRecord {
    /// Parses a whole log message (`AUDIT: ...`).
    pub fn parse(message: &str) -> Result<AuditRecord, AuditError> {
        let body = message.strip_prefix(MARKER).ok_or(AuditError::NotAudit)?;
        let fields = csv::split(body)?;
        if !(9..=10).contains(&fields.len()) {
            return Err(AuditError::FieldCount(fields.len()));
        }
        let field = |i: usize| fields[i].as_deref();
        let audit_type = match field(0) {
            Some("SESSION") => AuditType::Session,
            Some("OBJECT") => AuditType::Object,
            other => return Err(AuditError::AuditType(other.unwrap_or_default().to_string())),
        };
        let statement = match field(7) {
            Some("<previously logged>") => Logged::PreviouslyLogged,
            Some("<not logged>") => Logged::NotLogged,
            other => Logged::Value(other.unwrap_or_default().to_string()),
        };
        let parameters = match field(8) {
            Some("<previously logged>") => Logged::PreviouslyLogged,
            Some("<not logged>") => Logged::NotLogged,
            Some("<none>") | None => Logged::Value(Vec::new()),
            Some(list) => Logged::Value(csv::split(list)?),
        };
        let rows = if fields.len() == 10 { Some(number("rows", field(9))?) } else { None };
        Ok(AuditRecord {
            audit_type,
            statement_id: number("statement id", field(1))?,
            substatement_id: number("substatement id", field(2))?,
            class: field(3).ok_or(AuditError::Empty("class"))?.to_string(),
            command: field(4).ok_or(AuditError::Empty("command"))?.to_string(),
            object_type: field(5).map(str::to_string),
            object_name: field(6).map(str::to_string),
            statement,
            parameters,
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_records_with_quoting_parameters_and_rows() {
        let r = AuditRecord::parse("AUDIT: SESSION,19,1,READ,SELECT,,,PREPARE q1 (int) AS SELECT 1;,1").unwrap();
        assert_eq!((r.audit_type, r.statement_id, r.substatement_id), (AuditType::Session, 19, 1));
        assert_eq!((r.class.as_str(), r.command.as_str(), r.object_name), ("READ", "SELECT", None));
        assert_eq!(r.parameters, Logged::Value(vec![Some("1".into())]));
        let r = AuditRecord::parse(
            "AUDIT: OBJECT,3,2,WRITE,INSERT,TABLE,public.t,\"INSERT INTO t VALUES ($1, $2)\",\"a,\"\"b\"\"\",5",
        )
        .unwrap();
        assert_eq!(r.audit_type, AuditType::Object);
        assert_eq!(r.object_name.as_deref(), Some("public.t"));
        assert_eq!(r.statement, Logged::Value("INSERT INTO t VALUES ($1, $2)".into()));
        assert_eq!(r.parameters, Logged::Value(vec![Some("a".into()), Some("b".into())]));
        let r = AuditRecord::parse(
            "AUDIT: SESSION,4,2,READ,SELECT,TABLE,public.t,<previously logged>,<previously logged>,12",
        )
        .unwrap();
        assert_eq!((r.statement, r.rows), (Logged::PreviouslyLogged, Some(12)));
        let r = AuditRecord::parse("AUDIT: SESSION,1,1,MISC,SHOW,,,SHOW x,<not logged>").unwrap();
        assert_eq!(r.parameters, Logged::NotLogged);
    }

    #[test]
    fn malformed_records_say_why() {
        assert_eq!(AuditRecord::parse("SESSION,1"), Err(AuditError::NotAudit));
        assert_eq!(AuditRecord::parse("AUDIT: SESSION,1,1"), Err(AuditError::FieldCount(3)));
        assert!(matches!(AuditRecord::parse("AUDIT: PARTY,1,1,READ,SELECT,,,x,<none>"), Err(AuditError::AuditType(_))));
        assert!(matches!(
            AuditRecord::parse("AUDIT: SESSION,x,1,READ,SELECT,,,x,<none>"),
            Err(AuditError::Number { .. })
        ));
        assert!(matches!(AuditRecord::parse("AUDIT: SESSION,1,1,READ,SELECT,,,\"x,<none>"), Err(AuditError::Csv(_))));
    }
}
