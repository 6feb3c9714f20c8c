//! Bounded readers and writers for message bodies.
//!
//! The reader never trusts a count: before reserving room for `n` elements it checks that
//! at least `n * min_element_size` bytes remain in the body.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{WireError, tag_char};

/// Reads fields out of one message body. Holds `Bytes` so that large values are sliced,
/// not copied.
pub(crate) struct Reader {
    tag: u8,
    body: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(tag: u8, body: Bytes) -> Self {
        Self { tag, body, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.body.len() - self.pos
    }

    fn truncated(&self, field: &'static str) -> WireError {
        WireError::Truncated { tag: tag_char(self.tag), field }
    }

    pub(crate) fn invalid(&self, field: &'static str) -> WireError {
        WireError::Invalid { tag: tag_char(self.tag), field }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        let byte = *self.body.get(self.pos).ok_or_else(|| self.truncated(field))?;
        self.pos += 1;
        Ok(byte)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let slice = self.body.get(self.pos..self.pos + N).ok_or_else(|| self.truncated(field))?;
        self.pos += N;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, WireError> {
        self.array::<2>(field).map(i16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, WireError> {
        self.array::<4>(field).map(i32::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        self.array::<4>(field).map(u32::from_be_bytes)
    }

    /// A count read as i16 that must be non-negative, and whose elements (each at least
    /// `min_element_size` bytes) must fit in what is left of the body.
    pub(crate) fn count16(&mut self, field: &'static str, min_element_size: usize) -> Result<usize, WireError> {
        let n = self.i16(field)?;
        self.check_count(i64::from(n), field, min_element_size)
    }

    pub(crate) fn check_count(&self, n: i64, field: &'static str, min_element_size: usize) -> Result<usize, WireError> {
        let n = usize::try_from(n).map_err(|_| self.invalid(field))?;
        if n.saturating_mul(min_element_size) > self.remaining() {
            return Err(self.truncated(field));
        }
        Ok(n)
    }

    /// A NUL-terminated string. Invalid UTF-8 (a non-UTF-8 client_encoding) is replaced
    /// lossily: the proxy forwards the original bytes, this value is only for understanding.
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<String, WireError> {
        let rest = &self.body[self.pos..];
        let nul = rest.iter().position(|&b| b == 0).ok_or_else(|| self.truncated(field))?;
        let text = String::from_utf8_lossy(&rest[..nul]).into_owned();
        self.pos += nul + 1;
        Ok(text)
    }

    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, WireError> {
        if n > self.remaining() {
            return Err(self.truncated(field));
        }
        let out = self.body.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn rest(&mut self) -> Bytes {
        let out = self.body.slice(self.pos..);
        self.pos = self.body.len();
        out
    }

    /// A value prefixed by an i32 length where -1 means NULL.
    pub(crate) fn nullable(&mut self, field: &'static str) -> Result<Option<Bytes>, WireError> {
        let len = self.i32(field)?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| self.invalid(field))?;
        self.bytes(len, field).map(Some)
    }

    pub(crate) fn finish(self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(WireError::TrailingBytes { tag: tag_char(self.tag), extra }),
        }
    }
}

/// Writes one tagged message: tag, a length placeholder, the body, then the real length.
pub(crate) fn write_message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    write_untagged(out, body);
}

/// Writes a length-prefixed body without a tag (the startup phase).
pub(crate) fn write_untagged(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_i32(0);
    body(out);
    let len = i32::try_from(out.len() - start).expect("message larger than 2 GiB");
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub(crate) fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

pub(crate) fn put_nullable(out: &mut BytesMut, value: &Option<Bytes>) {
    match value {
        None => out.put_i32(-1),
        Some(v) => {
            out.put_i32(i32::try_from(v.len()).expect("value larger than 2 GiB"));
            out.put_slice(v);
        }
    }
}

pub(crate) fn put_len16(out: &mut BytesMut, n: usize) {
    out.put_i16(i16::try_from(n).expect("more than 32767 elements"));
}
