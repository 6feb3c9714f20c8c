//! Client encodings: what the proxy records (statement text, text parameters, error
//! messages, and so object names) is decoded from the session's `client_encoding` into
//! UTF-8, so `select * from "café"` sent in LATIN1 is recorded as such, not as
//! `"caf\u{fffd}"`, and the classifier reads what the server reads (a Shift-JIS character
//! whose second byte is a backslash is one character, not an escape).
//!
//! The bytes forwarded are never touched: decoding is only for understanding. Encodings
//! come from encoding_rs (the WHATWG set); LATIN1 is ISO-8859-1 byte for byte. PostgreSQL
//! client encodings with no decoder here (JOHAB, EUC_TW, MULE_INTERNAL) and SQL_ASCII are
//! read as UTF-8, invalid bytes replaced, as before.

use std::borrow::Cow;

use encoding_rs::Encoding;

/// How the session's text is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEncoding {
    /// UTF8 (and encodings read as UTF-8, invalid bytes replaced).
    Utf8,
    /// LATIN1: ISO-8859-1, each byte its code point.
    Latin1,
    /// Any other encoding with a decoder.
    Other(&'static Encoding),
}

impl ClientEncoding {
    /// The encoding PostgreSQL names in its `client_encoding` ParameterStatus.
    pub fn from_name(name: &str) -> Self {
        use encoding_rs as e;
        let encoding = match name.to_ascii_uppercase().as_str() {
            "LATIN1" => return Self::Latin1,
            "LATIN2" => e::ISO_8859_2,
            "LATIN3" => e::ISO_8859_3,
            "LATIN4" => e::ISO_8859_4,
            // ISO-8859-9 as windows-1254, its superset (they differ only in C1 controls).
            "LATIN5" => e::WINDOWS_1254,
            "LATIN6" => e::ISO_8859_10,
            "LATIN7" => e::ISO_8859_13,
            "LATIN8" => e::ISO_8859_14,
            "LATIN9" => e::ISO_8859_15,
            "LATIN10" => e::ISO_8859_16,
            "ISO_8859_5" => e::ISO_8859_5,
            "ISO_8859_6" => e::ISO_8859_6,
            "ISO_8859_7" => e::ISO_8859_7,
            "ISO_8859_8" => e::ISO_8859_8,
            "WIN1250" => e::WINDOWS_1250,
            "WIN1251" => e::WINDOWS_1251,
            "WIN1252" => e::WINDOWS_1252,
            "WIN1253" => e::WINDOWS_1253,
            "WIN1254" => e::WINDOWS_1254,
            "WIN1255" => e::WINDOWS_1255,
            "WIN1256" => e::WINDOWS_1256,
            "WIN1257" => e::WINDOWS_1257,
            "WIN1258" => e::WINDOWS_1258,
            "WIN866" => e::IBM866,
            "WIN874" => e::WINDOWS_874,
            "KOI8R" => e::KOI8_R,
            "KOI8U" => e::KOI8_U,
            "SJIS" | "SHIFT_JIS_2004" => e::SHIFT_JIS,
            "EUC_JP" | "EUC_JIS_2004" => e::EUC_JP,
            "GBK" | "EUC_CN" => e::GBK,
            "GB18030" => e::GB18030,
            "BIG5" => e::BIG5,
            "UHC" | "EUC_KR" => e::EUC_KR,
            _ => return Self::Utf8,
        };
        Self::Other(encoding)
    }

    /// `bytes` as text.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Cow<'a, str> {
        match self {
            Self::Utf8 => String::from_utf8_lossy(bytes),
            Self::Latin1 => match std::str::from_utf8(bytes) {
                // ASCII (the common case) is the same in both.
                Ok(text) if text.is_ascii() => Cow::Borrowed(text),
                _ => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
            },
            Self::Other(encoding) => encoding.decode_without_bom_handling(bytes).0,
        }
    }

    /// A message body whose first `strings` NUL-terminated strings are text in this
    /// encoding, with those strings in UTF-8 and the rest unchanged (for parsing).
    pub fn body_to_utf8(&self, body: &[u8], strings: usize) -> Option<bytes::Bytes> {
        if *self == Self::Utf8 {
            return None;
        }
        let mut out = Vec::with_capacity(body.len() + body.len() / 2);
        let mut rest = body;
        for _ in 0..strings {
            let Some(nul) = rest.iter().position(|&b| b == 0) else { break };
            out.extend_from_slice(self.decode(&rest[..nul]).as_bytes());
            out.push(0);
            rest = &rest[nul + 1..];
        }
        out.extend_from_slice(rest);
        Some(out.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_encodings_decode_to_utf8() {
        assert_eq!(ClientEncoding::from_name("LATIN1").decode(b"caf\xe9"), "café");
        assert_eq!(ClientEncoding::from_name("win1252").decode(b"\x80 5"), "€ 5");
        // ソ in Shift-JIS is 0x83 0x5C: its second byte is a backslash in ASCII.
        assert_eq!(ClientEncoding::from_name("SJIS").decode(b"'\x83\x5c'"), "'ソ'");
        assert_eq!(ClientEncoding::from_name("EUC_JP").decode(b"\xa5\xc6\xa5\xb9\xa5\xc8"), "テスト");
        assert_eq!(ClientEncoding::from_name("UTF8").decode("é".as_bytes()), "é");
        // Error fields: each string of the body decoded, the structure kept.
        let body = b"SERROR\0Mrelation \"caf\xe9\" does not exist\0\0";
        let utf8 = ClientEncoding::Latin1.body_to_utf8(body, 3).expect("converted");
        assert_eq!(&utf8[..], "SERROR\0Mrelation \"café\" does not exist\0\0".as_bytes());
        assert_eq!(ClientEncoding::Utf8.body_to_utf8(body, 3), None);
    }
}
