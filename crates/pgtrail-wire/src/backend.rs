//! Messages a server sends: authentication, session parameters, results, errors and
//! notices, extended-query acknowledgements, COPY, and readiness.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::{Reader, put_cstr, put_len16, put_nullable, write_message};
use crate::error::{WireError, tag_char};

/// The Authentication family (tag `R`), told apart by its first i32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Ok,
    KerberosV5,
    CleartextPassword,
    Md5Password { salt: [u8; 4] },
    Gss,
    GssContinue(Bytes),
    Sspi,
    Sasl { mechanisms: Vec<String> },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: String,
    pub table_oid: u32,
    pub column_id: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    pub format: i16,
}

/// The fields of an ErrorResponse or NoticeResponse, in the order the server sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields(pub Vec<(u8, String)>);

impl ErrorFields {
    /// Builds the fields PostgreSQL always sends: severity (localized and not), SQLSTATE
    /// and message.
    pub fn new(severity: &str, code: &str, message: &str) -> Self {
        Self(vec![
            (b'S', severity.to_owned()),
            (b'V', severity.to_owned()),
            (b'C', code.to_owned()),
            (b'M', message.to_owned()),
        ])
    }

    pub fn get(&self, code: u8) -> Option<&str> {
        self.0.iter().find(|(c, _)| *c == code).map(|(_, v)| v.as_str())
    }

    /// The non-localized severity (`V`), falling back to the localized one (`S`).
    pub fn severity(&self) -> Option<&str> {
        self.get(b'V').or_else(|| self.get(b'S'))
    }

    pub fn code(&self) -> Option<&str> {
        self.get(b'C')
    }

    pub fn message(&self) -> Option<&str> {
        self.get(b'M')
    }

    /// FATAL and PANIC end the session.
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity(), Some("FATAL" | "PANIC"))
    }

    fn parse(r: &mut Reader) -> Result<Self, WireError> {
        let mut fields = Vec::new();
        loop {
            let code = r.u8("field code")?;
            if code == 0 {
                return Ok(Self(fields));
            }
            fields.push((code, r.cstr("field value")?));
        }
    }

    fn encode(&self, out: &mut BytesMut) {
        for (code, value) in &self.0 {
            out.put_u8(*code);
            put_cstr(out, value);
        }
        out.put_u8(0);
    }
}

/// A backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Authentication(Authentication),
    ParameterStatus { name: String, value: String },
    BackendKeyData { pid: i32, secret: Bytes },
    RowDescription(Vec<FieldDescription>),
    DataRow(Vec<Option<Bytes>>),
    CommandComplete { tag: String },
    EmptyQueryResponse,
    ErrorResponse(ErrorFields),
    NoticeResponse(ErrorFields),
    NotificationResponse { pid: i32, channel: String, payload: String },
    ParseComplete,
    BindComplete,
    CloseComplete,
    ParameterDescription(Vec<u32>),
    NoData,
    PortalSuspended,
    CopyInResponse { format: i8, column_formats: Vec<i16> },
    CopyOutResponse { format: i8, column_formats: Vec<i16> },
    CopyBothResponse { format: i8, column_formats: Vec<i16> },
    CopyData(Bytes),
    CopyDone,
    FunctionCallResponse(Option<Bytes>),
    ReadyForQuery { status: u8 },
    NegotiateProtocolVersion { newest_minor: i32, unrecognized: Vec<String> },
}

impl BackendMessage {
    /// Decodes the body of a frame whose tag is `tag`.
    pub fn parse(tag: u8, body: Bytes) -> Result<Self, WireError> {
        let mut r = Reader::new(tag, body);
        let msg = match tag {
            b'R' => Self::Authentication(parse_auth(&mut r)?),
            b'S' => Self::ParameterStatus { name: r.cstr("name")?, value: r.cstr("value")? },
            b'K' => {
                let pid = r.i32("process id")?;
                let secret = r.rest();
                if !(4..=256).contains(&secret.len()) {
                    return Err(r.invalid("secret key length"));
                }
                Self::BackendKeyData { pid, secret }
            }
            b'T' => {
                // name (>= 1 byte) + 18 bytes of fixed fields
                let n = r.count16("field count", 19)?;
                let mut fields = Vec::with_capacity(n);
                for _ in 0..n {
                    fields.push(FieldDescription {
                        name: r.cstr("field name")?,
                        table_oid: r.u32("table oid")?,
                        column_id: r.i16("column number")?,
                        type_oid: r.u32("type oid")?,
                        type_size: r.i16("type size")?,
                        type_modifier: r.i32("type modifier")?,
                        format: r.i16("format")?,
                    });
                }
                Self::RowDescription(fields)
            }
            b'D' => {
                let n = r.count16("column count", 4)?;
                let mut values = Vec::with_capacity(n);
                for _ in 0..n {
                    values.push(r.nullable("column value")?);
                }
                Self::DataRow(values)
            }
            b'C' => Self::CommandComplete { tag: r.cstr("command tag")? },
            b'I' => Self::EmptyQueryResponse,
            b'E' => Self::ErrorResponse(ErrorFields::parse(&mut r)?),
            b'N' => Self::NoticeResponse(ErrorFields::parse(&mut r)?),
            b'A' => Self::NotificationResponse {
                pid: r.i32("process id")?,
                channel: r.cstr("channel")?,
                payload: r.cstr("payload")?,
            },
            b'1' => Self::ParseComplete,
            b'2' => Self::BindComplete,
            b'3' => Self::CloseComplete,
            b't' => {
                let n = r.count16("parameter count", 4)?;
                let mut types = Vec::with_capacity(n);
                for _ in 0..n {
                    types.push(r.u32("parameter type")?);
                }
                Self::ParameterDescription(types)
            }
            b'n' => Self::NoData,
            b's' => Self::PortalSuspended,
            b'G' | b'H' | b'W' => {
                let format = r.u8("copy format")?.cast_signed();
                let n = r.count16("column count", 2)?;
                let mut column_formats = Vec::with_capacity(n);
                for _ in 0..n {
                    column_formats.push(r.i16("column format")?);
                }
                match tag {
                    b'G' => Self::CopyInResponse { format, column_formats },
                    b'H' => Self::CopyOutResponse { format, column_formats },
                    _ => Self::CopyBothResponse { format, column_formats },
                }
            }
            b'd' => Self::CopyData(r.rest()),
            b'c' => Self::CopyDone,
            b'V' => Self::FunctionCallResponse(r.nullable("result")?),
            b'Z' => {
                let status = r.u8("transaction status")?;
                if crate::TransactionStatus::from_byte(status).is_none() {
                    return Err(r.invalid("transaction status"));
                }
                Self::ReadyForQuery { status }
            }
            b'v' => {
                let newest_minor = r.i32("newest minor version")?;
                let n = r.i32("option count")?;
                let n = r.check_count(i64::from(n), "option count", 1)?;
                let mut unrecognized = Vec::with_capacity(n);
                for _ in 0..n {
                    unrecognized.push(r.cstr("option name")?);
                }
                Self::NegotiateProtocolVersion { newest_minor, unrecognized }
            }
            _ => return Err(WireError::UnknownTag { tag: tag_char(tag) }),
        };
        r.finish()?;
        Ok(msg)
    }

    /// The tag byte of this message.
    pub fn tag(&self) -> u8 {
        match self {
            Self::Authentication(_) => b'R',
            Self::ParameterStatus { .. } => b'S',
            Self::BackendKeyData { .. } => b'K',
            Self::RowDescription(_) => b'T',
            Self::DataRow(_) => b'D',
            Self::CommandComplete { .. } => b'C',
            Self::EmptyQueryResponse => b'I',
            Self::ErrorResponse(_) => b'E',
            Self::NoticeResponse(_) => b'N',
            Self::NotificationResponse { .. } => b'A',
            Self::ParseComplete => b'1',
            Self::BindComplete => b'2',
            Self::CloseComplete => b'3',
            Self::ParameterDescription(_) => b't',
            Self::NoData => b'n',
            Self::PortalSuspended => b's',
            Self::CopyInResponse { .. } => b'G',
            Self::CopyOutResponse { .. } => b'H',
            Self::CopyBothResponse { .. } => b'W',
            Self::CopyData(_) => b'd',
            Self::CopyDone => b'c',
            Self::FunctionCallResponse(_) => b'V',
            Self::ReadyForQuery { .. } => b'Z',
            Self::NegotiateProtocolVersion { .. } => b'v',
        }
    }

    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        write_message(out, self.tag(), |out| match self {
            Self::Authentication(auth) => encode_auth(auth, out),
            Self::ParameterStatus { name, value } => {
                put_cstr(out, name);
                put_cstr(out, value);
            }
            Self::BackendKeyData { pid, secret } => {
                out.put_i32(*pid);
                out.put_slice(secret);
            }
            Self::RowDescription(fields) => {
                put_len16(out, fields.len());
                for f in fields {
                    put_cstr(out, &f.name);
                    out.put_u32(f.table_oid);
                    out.put_i16(f.column_id);
                    out.put_u32(f.type_oid);
                    out.put_i16(f.type_size);
                    out.put_i32(f.type_modifier);
                    out.put_i16(f.format);
                }
            }
            Self::DataRow(values) => {
                put_len16(out, values.len());
                values.iter().for_each(|v| put_nullable(out, v));
            }
            Self::CommandComplete { tag } => put_cstr(out, tag),
            Self::ErrorResponse(fields) | Self::NoticeResponse(fields) => fields.encode(out),
            Self::NotificationResponse { pid, channel, payload } => {
                out.put_i32(*pid);
                put_cstr(out, channel);
                put_cstr(out, payload);
            }
            Self::EmptyQueryResponse
            | Self::ParseComplete
            | Self::BindComplete
            | Self::CloseComplete
            | Self::NoData
            | Self::PortalSuspended
            | Self::CopyDone => {}
            Self::ParameterDescription(types) => {
                put_len16(out, types.len());
                types.iter().for_each(|t| out.put_u32(*t));
            }
            Self::CopyInResponse { format, column_formats }
            | Self::CopyOutResponse { format, column_formats }
            | Self::CopyBothResponse { format, column_formats } => {
                out.put_i8(*format);
                put_len16(out, column_formats.len());
                column_formats.iter().for_each(|f| out.put_i16(*f));
            }
            Self::CopyData(data) => out.put_slice(data),
            Self::FunctionCallResponse(value) => put_nullable(out, value),
            Self::ReadyForQuery { status } => out.put_u8(*status),
            Self::NegotiateProtocolVersion { newest_minor, unrecognized } => {
                out.put_i32(*newest_minor);
                out.put_i32(i32::try_from(unrecognized.len()).expect("option count fits i32"));
                unrecognized.iter().for_each(|o| put_cstr(out, o));
            }
        });
    }
}

fn parse_auth(r: &mut Reader) -> Result<Authentication, WireError> {
    Ok(match r.i32("authentication type")? {
        0 => Authentication::Ok,
        2 => Authentication::KerberosV5,
        3 => Authentication::CleartextPassword,
        5 => {
            let salt = r.bytes(4, "md5 salt")?;
            Authentication::Md5Password { salt: [salt[0], salt[1], salt[2], salt[3]] }
        }
        7 => Authentication::Gss,
        8 => Authentication::GssContinue(r.rest()),
        9 => Authentication::Sspi,
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr("SASL mechanism")?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            Authentication::Sasl { mechanisms }
        }
        11 => Authentication::SaslContinue(r.rest()),
        12 => Authentication::SaslFinal(r.rest()),
        _ => return Err(r.invalid("authentication type")),
    })
}

fn encode_auth(auth: &Authentication, out: &mut BytesMut) {
    match auth {
        Authentication::Ok => out.put_i32(0),
        Authentication::KerberosV5 => out.put_i32(2),
        Authentication::CleartextPassword => out.put_i32(3),
        Authentication::Md5Password { salt } => {
            out.put_i32(5);
            out.put_slice(salt);
        }
        Authentication::Gss => out.put_i32(7),
        Authentication::GssContinue(data) => {
            out.put_i32(8);
            out.put_slice(data);
        }
        Authentication::Sspi => out.put_i32(9),
        Authentication::Sasl { mechanisms } => {
            out.put_i32(10);
            mechanisms.iter().for_each(|m| put_cstr(out, m));
            out.put_u8(0);
        }
        Authentication::SaslContinue(data) => {
            out.put_i32(11);
            out.put_slice(data);
        }
        Authentication::SaslFinal(data) => {
            out.put_i32(12);
            out.put_slice(data);
        }
    }
}
