//! The untagged messages a client may send first: StartupMessage, SSLRequest,
//! GSSENCRequest and CancelRequest. They share one framing (`len: i32, code: i32, ...`) and
//! are told apart by the code.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::{Reader, put_cstr, write_untagged};
use crate::error::WireError;
use crate::framing::Limits;

/// Protocol 3.0, the version every supported PostgreSQL speaks.
pub const PROTOCOL_V3: i32 = 196_608;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// The one-byte answer to an SSLRequest (or GSSENCRequest): go ahead with the handshake.
pub const ENCRYPTION_ACCEPTED: u8 = b'S';
/// The one-byte answer to an SSLRequest (or GSSENCRequest): continue unencrypted.
pub const ENCRYPTION_REFUSED: u8 = b'N';

/// A message of the startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupMessage {
    /// Protocol version (major 3) and the connection parameters (user, database, ...).
    Startup {
        version: i32,
        params: Vec<(String, String)>,
    },
    SslRequest,
    GssEncRequest,
    /// Process id and secret key from the server's BackendKeyData. The secret is 4 bytes
    /// in protocol 3.0 and up to 256 in 3.2.
    CancelRequest {
        pid: i32,
        secret: Bytes,
    },
}

impl StartupMessage {
    /// The value of a startup parameter such as `user` or `database`.
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            Self::Startup { params, .. } => params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()),
            _ => None,
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        write_untagged(out, |out| match self {
            Self::Startup { version, params } => {
                out.put_i32(*version);
                for (k, v) in params {
                    put_cstr(out, k);
                    put_cstr(out, v);
                }
                out.put_u8(0);
            }
            Self::SslRequest => out.put_i32(SSL_REQUEST_CODE),
            Self::GssEncRequest => out.put_i32(GSSENC_REQUEST_CODE),
            Self::CancelRequest { pid, secret } => {
                out.put_i32(CANCEL_REQUEST_CODE);
                out.put_i32(*pid);
                out.put_slice(secret);
            }
        });
    }

    fn parse(body: Bytes) -> Result<Self, WireError> {
        let mut r = Reader::new(0, body);
        let code = r.i32("protocol code")?;
        let msg = match code {
            SSL_REQUEST_CODE => Self::SslRequest,
            GSSENC_REQUEST_CODE => Self::GssEncRequest,
            CANCEL_REQUEST_CODE => {
                let pid = r.i32("process id")?;
                let secret = r.rest();
                if !(4..=256).contains(&secret.len()) {
                    return Err(r.invalid("cancel secret length"));
                }
                Self::CancelRequest { pid, secret }
            }
            version if version >> 16 == 3 => {
                let mut params = Vec::new();
                loop {
                    let name = r.cstr("parameter name")?;
                    if name.is_empty() {
                        break;
                    }
                    let value = r.cstr("parameter value")?;
                    params.push((name, value));
                }
                Self::Startup { version, params }
            }
            other => {
                // The high and low halves of the code are the major and minor versions.
                let code = other.cast_unsigned();
                return Err(WireError::UnsupportedProtocol {
                    major: (code >> 16) as u16,
                    minor: (code & 0xffff) as u16,
                });
            }
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Takes one startup-phase message off the front of `buf`, if complete.
pub fn decode_startup(buf: &mut BytesMut, limits: &Limits) -> Result<Option<StartupMessage>, WireError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    // The shortest startup-phase message is len + code.
    if len < 8 {
        return Err(WireError::BadLength { tag: '?', len: i64::from(len) });
    }
    let len = len.unsigned_abs();
    if len > limits.startup {
        return Err(WireError::TooLarge { tag: '?', len: u64::from(len), max: u64::from(limits.startup) });
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let mut frame = buf.split_to(len);
    let body = frame.split_off(4).freeze();
    StartupMessage::parse(body).map(Some)
}
