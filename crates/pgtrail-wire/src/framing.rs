//! Frame boundaries and size limits.
//!
//! A tagged frame is `tag: u8, len: i32 (counts itself, not the tag), body`. The limit for
//! a frame is decided from its tag before its body is awaited or allocated: only messages
//! that legitimately carry user data (statement text, parameters, COPY data, result rows)
//! get the large limit.

use bytes::{Buf, Bytes, BytesMut};

use crate::backend::BackendMessage;
use crate::codes::{BackendCode, FrontendCode};
use crate::error::{WireError, tag_char};
use crate::frontend::FrontendMessage;

/// Which peer sent the bytes: the same tag means different things on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Client to server.
    Frontend,
    /// Server to client.
    Backend,
}

/// Per-message size limits, in bytes of the whole frame after the tag (length included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Any message not listed under `large`.
    pub small: u32,
    /// Query, Parse, Bind, FunctionCall, CopyData (both sides) and DataRow.
    pub large: u32,
    /// The untagged startup packet; PostgreSQL itself refuses more than 10,000 bytes.
    pub startup: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            small: 1 << 20,
            // PostgreSQL's own ceiling for a single message is 1 GiB.
            large: (1 << 30) - 1,
            startup: 10_000,
        }
    }
}

impl Limits {
    /// The limit for a tag sent by `side`.
    pub fn for_tag(&self, side: Side, tag: u8) -> u32 {
        let large = match side {
            Side::Frontend => FrontendCode::from_tag(tag).is_some_and(FrontendCode::carries_user_data),
            Side::Backend => BackendCode::from_tag(tag).is_some_and(BackendCode::carries_user_data),
        };
        if large { self.large } else { self.small }
    }
}

/// The header of a complete frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: u8,
    /// Bytes of the whole frame including tag and length.
    pub total_len: usize,
}

impl FrameHeader {
    /// Length of the body (what follows the length field).
    pub fn body_len(&self) -> usize {
        self.total_len - 5
    }
}

/// Looks at the start of `buf` and reports the frame there.
///
/// Returns `Ok(None)` until the 5-byte header is present, then checks the declared length
/// against `limits` (an error as soon as the header arrives, before any body byte is
/// awaited), and returns the header. Callers that want the body must wait until
/// `buf.len() >= total_len`; callers that forward opaquely may stream it instead.
pub fn peek_frame(buf: &[u8], side: Side, limits: &Limits) -> Result<Option<FrameHeader>, WireError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(WireError::BadLength { tag: tag_char(tag), len: i64::from(len) });
    }
    let max = limits.for_tag(side, tag);
    // len is non-negative here, so the widening conversion is lossless.
    let len = len.unsigned_abs();
    if len > max {
        return Err(WireError::TooLarge { tag: tag_char(tag), len: u64::from(len), max: u64::from(max) });
    }
    Ok(Some(FrameHeader { tag, total_len: len as usize + 1 }))
}

fn take_frame(buf: &mut BytesMut, side: Side, limits: &Limits) -> Result<Option<(u8, Bytes)>, WireError> {
    let Some(header) = peek_frame(buf, side, limits)? else {
        return Ok(None);
    };
    if buf.len() < header.total_len {
        buf.reserve(header.total_len - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(header.total_len);
    frame.advance(5);
    Ok(Some((header.tag, frame.freeze())))
}

/// Takes one complete frontend message off the front of `buf`, if there is one.
pub fn decode_frontend(buf: &mut BytesMut, limits: &Limits) -> Result<Option<FrontendMessage>, WireError> {
    match take_frame(buf, Side::Frontend, limits)? {
        None => Ok(None),
        Some((tag, body)) => FrontendMessage::parse(tag, body).map(Some),
    }
}

/// Takes one complete backend message off the front of `buf`, if there is one.
pub fn decode_backend(buf: &mut BytesMut, limits: &Limits) -> Result<Option<BackendMessage>, WireError> {
    match take_frame(buf, Side::Backend, limits)? {
        None => Ok(None),
        Some((tag, body)) => BackendMessage::parse(tag, body).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_checked_before_body_arrives() {
        let limits = Limits::default();
        // A Sync ('S') declaring 2^31-1 bytes: refused from the 5-byte header alone.
        let buf = [b'S', 0x7f, 0xff, 0xff, 0xff];
        let err = peek_frame(&buf, Side::Frontend, &limits).unwrap_err();
        assert!(matches!(err, WireError::TooLarge { tag: 'S', .. }), "{err:?}");
        // Even a large-class message cannot exceed the large limit.
        let buf = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        assert!(peek_frame(&buf, Side::Frontend, &limits).is_err());
    }

    #[test]
    fn negative_and_tiny_lengths_are_errors() {
        let limits = Limits::default();
        for len in [-1i32, 0, 3] {
            let mut buf = vec![b'Q'];
            buf.extend_from_slice(&len.to_be_bytes());
            assert!(peek_frame(&buf, Side::Frontend, &limits).is_err(), "len {len}");
        }
    }

    #[test]
    fn incomplete_frames_are_none() {
        let limits = Limits::default();
        let mut buf = BytesMut::from(&b"Q\0\0\0\x0dSELECT"[..]);
        assert_eq!(decode_frontend(&mut buf, &limits).unwrap(), None);
        assert_eq!(buf.len(), 11, "nothing consumed from an incomplete frame");
        buf.extend_from_slice(b" 1\0");
        assert_eq!(
            decode_frontend(&mut buf, &limits).unwrap(),
            Some(FrontendMessage::Query { query: "SELECT 1".into() })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn large_limit_applies_only_to_data_messages() {
        let limits = Limits { small: 100, large: 1000, startup: 100 };
        let mut big_query = vec![b'Q'];
        big_query.extend_from_slice(&500i32.to_be_bytes());
        assert!(peek_frame(&big_query, Side::Frontend, &limits).unwrap().is_some());
        let mut big_describe = vec![b'D'];
        big_describe.extend_from_slice(&500i32.to_be_bytes());
        assert!(peek_frame(&big_describe, Side::Frontend, &limits).is_err());
        // ...but 'D' from the backend is DataRow, which is large.
        assert!(peek_frame(&big_describe, Side::Backend, &limits).unwrap().is_some());
    }
}
