//! Messages a client sends after startup, grouped as the protocol documentation groups
//! them: simple query, extended query, COPY, function call, authentication, termination.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::{Reader, put_cstr, put_len16, put_nullable, write_message};
use crate::error::{WireError, tag_char};

/// What a Describe or Close refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A prepared statement (`S`).
    Statement,
    /// A portal (`P`).
    Portal,
}

impl TargetKind {
    fn parse(r: &mut Reader) -> Result<Self, WireError> {
        match r.u8("target kind")? {
            b'S' => Ok(Self::Statement),
            b'P' => Ok(Self::Portal),
            _ => Err(r.invalid("target kind")),
        }
    }

    fn byte(self) -> u8 {
        match self {
            Self::Statement => b'S',
            Self::Portal => b'P',
        }
    }
}

/// A frontend message after the startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    Query {
        query: String,
    },
    Parse {
        name: String,
        query: String,
        param_types: Vec<u32>,
    },
    Bind {
        portal: String,
        statement: String,
        param_formats: Vec<i16>,
        params: Vec<Option<Bytes>>,
        result_formats: Vec<i16>,
    },
    Describe {
        kind: TargetKind,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: i32,
    },
    Close {
        kind: TargetKind,
        name: String,
    },
    Sync,
    Flush,
    CopyData(Bytes),
    CopyDone,
    CopyFail {
        message: String,
    },
    FunctionCall {
        oid: u32,
        arg_formats: Vec<i16>,
        args: Vec<Option<Bytes>>,
        result_format: i16,
    },
    /// Tag `p`: PasswordMessage, SASLInitialResponse or SASLResponse. Which one it is depends
    /// on the authentication request it answers, so the body stays raw here; see
    /// [`SaslInitialResponse::parse`] and [`FrontendMessage::password`].
    AuthResponse(Bytes),
    Terminate,
}

impl FrontendMessage {
    /// Decodes the body of a frame whose tag is `tag`.
    pub fn parse(tag: u8, body: Bytes) -> Result<Self, WireError> {
        let mut r = Reader::new(tag, body);
        let msg = match tag {
            b'Q' => Self::Query { query: r.cstr("query")? },
            b'P' => {
                let name = r.cstr("statement name")?;
                let query = r.cstr("query")?;
                let n = r.count16("parameter type count", 4)?;
                let mut param_types = Vec::with_capacity(n);
                for _ in 0..n {
                    param_types.push(r.u32("parameter type")?);
                }
                Self::Parse { name, query, param_types }
            }
            b'B' => {
                let portal = r.cstr("portal name")?;
                let statement = r.cstr("statement name")?;
                let param_formats = formats(&mut r, "parameter format")?;
                let params = values(&mut r, "parameter")?;
                let result_formats = formats(&mut r, "result format")?;
                Self::Bind { portal, statement, param_formats, params, result_formats }
            }
            b'D' => Self::Describe { kind: TargetKind::parse(&mut r)?, name: r.cstr("name")? },
            b'E' => Self::Execute { portal: r.cstr("portal name")?, max_rows: r.i32("row limit")? },
            b'C' => Self::Close { kind: TargetKind::parse(&mut r)?, name: r.cstr("name")? },
            b'S' => Self::Sync,
            b'H' => Self::Flush,
            b'd' => Self::CopyData(r.rest()),
            b'c' => Self::CopyDone,
            b'f' => Self::CopyFail { message: r.cstr("message")? },
            b'F' => {
                let oid = r.u32("function oid")?;
                let arg_formats = formats(&mut r, "argument format")?;
                let args = values(&mut r, "argument")?;
                let result_format = r.i16("result format")?;
                Self::FunctionCall { oid, arg_formats, args, result_format }
            }
            b'p' => Self::AuthResponse(r.rest()),
            b'X' => Self::Terminate,
            _ => return Err(WireError::UnknownTag { tag: tag_char(tag) }),
        };
        r.finish()?;
        Ok(msg)
    }

    /// The tag byte of this message.
    pub fn tag(&self) -> u8 {
        match self {
            Self::Query { .. } => b'Q',
            Self::Parse { .. } => b'P',
            Self::Bind { .. } => b'B',
            Self::Describe { .. } => b'D',
            Self::Execute { .. } => b'E',
            Self::Close { .. } => b'C',
            Self::Sync => b'S',
            Self::Flush => b'H',
            Self::CopyData(_) => b'd',
            Self::CopyDone => b'c',
            Self::CopyFail { .. } => b'f',
            Self::FunctionCall { .. } => b'F',
            Self::AuthResponse(_) => b'p',
            Self::Terminate => b'X',
        }
    }

    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        write_message(out, self.tag(), |out| match self {
            Self::Query { query } => put_cstr(out, query),
            Self::Parse { name, query, param_types } => {
                put_cstr(out, name);
                put_cstr(out, query);
                put_len16(out, param_types.len());
                for t in param_types {
                    out.put_u32(*t);
                }
            }
            Self::Bind { portal, statement, param_formats, params, result_formats } => {
                put_cstr(out, portal);
                put_cstr(out, statement);
                put_formats(out, param_formats);
                put_len16(out, params.len());
                params.iter().for_each(|p| put_nullable(out, p));
                put_formats(out, result_formats);
            }
            Self::Describe { kind, name } | Self::Close { kind, name } => {
                out.put_u8(kind.byte());
                put_cstr(out, name);
            }
            Self::Execute { portal, max_rows } => {
                put_cstr(out, portal);
                out.put_i32(*max_rows);
            }
            Self::Sync | Self::Flush | Self::CopyDone | Self::Terminate => {}
            Self::CopyData(data) | Self::AuthResponse(data) => out.put_slice(data),
            Self::CopyFail { message } => put_cstr(out, message),
            Self::FunctionCall { oid, arg_formats, args, result_format } => {
                out.put_u32(*oid);
                put_formats(out, arg_formats);
                put_len16(out, args.len());
                args.iter().for_each(|a| put_nullable(out, a));
                out.put_i16(*result_format);
            }
        });
    }

    /// A cleartext or MD5 PasswordMessage body, as the string it is.
    pub fn password(body: &[u8]) -> Option<&str> {
        let (text, nul) = body.split_at(body.len().checked_sub(1)?);
        (nul == [0]).then(|| std::str::from_utf8(text).ok()).flatten()
    }
}

fn formats(r: &mut Reader, field: &'static str) -> Result<Vec<i16>, WireError> {
    let n = r.count16(field, 2)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let f = r.i16(field)?;
        if !matches!(f, 0 | 1) {
            return Err(r.invalid(field));
        }
        out.push(f);
    }
    Ok(out)
}

fn values(r: &mut Reader, field: &'static str) -> Result<Vec<Option<Bytes>>, WireError> {
    let n = r.count16(field, 4)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.nullable(field)?);
    }
    Ok(out)
}

fn put_formats(out: &mut BytesMut, formats: &[i16]) {
    put_len16(out, formats.len());
    formats.iter().for_each(|f| out.put_i16(*f));
}

/// The first message of a SASL exchange: the chosen mechanism and the client-first data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitialResponse {
    pub mechanism: String,
    /// `None` when the client sent length -1.
    pub data: Option<Bytes>,
}

impl SaslInitialResponse {
    /// Decodes the body of an `AuthResponse` that answers AuthenticationSASL.
    pub fn parse(body: Bytes) -> Result<Self, WireError> {
        let mut r = Reader::new(b'p', body);
        let mechanism = r.cstr("SASL mechanism")?;
        let data = r.nullable("SASL data")?;
        r.finish()?;
        Ok(Self { mechanism, data })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        write_message(out, b'p', |out| {
            put_cstr(out, &self.mechanism);
            put_nullable(out, &self.data);
        });
    }
}
