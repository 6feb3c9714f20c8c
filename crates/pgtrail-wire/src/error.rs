//! Errors raised while decoding untrusted protocol bytes.

/// Why a sequence of bytes is not an acceptable protocol message.
///
/// Every variant names the message tag (or `0` for the untagged startup phase) so that the
/// operator's log line says which message was refused, without ever including its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The declared length exceeds the configured maximum for this message type.
    #[error("message {tag:?} declares {len} bytes, above the limit of {max}")]
    TooLarge { tag: char, len: u64, max: u64 },
    /// The declared length is smaller than the minimum for any message (4 bytes).
    #[error("message {tag:?} declares an impossible length {len}")]
    BadLength { tag: char, len: i64 },
    /// The body ended before a field could be read.
    #[error("message {tag:?} is truncated while reading {field}")]
    Truncated { tag: char, field: &'static str },
    /// The body has bytes left over after the last field.
    #[error("message {tag:?} has {extra} unexpected trailing bytes")]
    TrailingBytes { tag: char, extra: usize },
    /// A field holds a value the protocol does not allow.
    #[error("message {tag:?} has an invalid {field}")]
    Invalid { tag: char, field: &'static str },
    /// The tag byte is not a message this side of the protocol sends.
    #[error("unknown message tag {tag:?}")]
    UnknownTag { tag: char },
    /// The startup packet requests a protocol version or special code we do not speak.
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedProtocol { major: u16, minor: u16 },
}

/// Render a tag byte for error messages; the startup phase has no tag and shows as `'\0'`.
pub(crate) fn tag_char(tag: u8) -> char {
    if tag.is_ascii_graphic() { tag as char } else { '?' }
}
