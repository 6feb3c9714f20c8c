//! Segment and record encoding (see the crate documentation for the layout).

use std::path::{Path, PathBuf};

pub(crate) const MAGIC: &[u8; 8] = b"PGTRJRN1";
pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const SEGMENT_HEADER_LEN: usize = 16;
pub(crate) const RECORD_HEADER_LEN: usize = 24;
/// The largest payload a record may carry: 64 MiB. A larger declared length is corruption.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    /// Microseconds since the Unix epoch, taken when the record was appended.
    pub timestamp_micros: i64,
    pub payload: Vec<u8>,
}

pub(crate) fn segment_header() -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

pub(crate) fn check_segment_header(bytes: &[u8]) -> bool {
    bytes.len() >= SEGMENT_HEADER_LEN && &bytes[..8] == MAGIC && bytes[8..12] == FORMAT_VERSION.to_le_bytes()
}

pub(crate) fn encode_record(out: &mut Vec<u8>, seq: u64, timestamp_micros: i64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload length checked against MAX_PAYLOAD");
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&timestamp_micros.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What is at a position of a segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A whole, valid record and the number of bytes it occupies.
    Record(Record, usize),
    /// The bytes end inside the record: more may still be written.
    Incomplete,
    /// The bytes are there but wrong.
    Corrupt(String),
}

pub(crate) fn decode_record(bytes: &[u8]) -> Decoded {
    let Some(header) = bytes.get(..RECORD_HEADER_LEN) else {
        return Decoded::Incomplete;
    };
    let field = |range: std::ops::Range<usize>| -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..range.len()].copy_from_slice(&header[range]);
        b
    };
    let len = u64::from_le_bytes(field(0..4)) as usize;
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt(format!("declared payload length {len} exceeds {MAX_PAYLOAD}"));
    }
    let crc = u64::from_le_bytes(field(4..8)) as u32;
    let total = RECORD_HEADER_LEN + len;
    let Some(whole) = bytes.get(..total) else {
        return Decoded::Incomplete;
    };
    let actual = crc32c::crc32c(&whole[8..]);
    if actual != crc {
        return Decoded::Corrupt(format!("CRC32C mismatch (stored {crc:08x}, computed {actual:08x})"));
    }
    let record = Record {
        seq: u64::from_le_bytes(field(8..16)),
        timestamp_micros: i64::from_le_bytes(field(16..24)),
        payload: whole[RECORD_HEADER_LEN..].to_vec(),
    };
    Decoded::Record(record, total)
}

pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

/// The segments of a journal directory, sorted by first sequence number.
pub(crate) fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.len() == 20
            && let Ok(first) = stem.parse::<u64>()
        {
            segments.push((first, path));
        }
    }
    segments.sort();
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip_and_every_cut_is_incomplete() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, 1_700_000_000_000_000, b"hello");
        let Decoded::Record(r, n) = decode_record(&buf) else { panic!() };
        assert_eq!(
            (r.seq, r.timestamp_micros, r.payload.as_slice(), n),
            (7, 1_700_000_000_000_000, &b"hello"[..], buf.len())
        );
        for cut in 0..buf.len() {
            assert_eq!(decode_record(&buf[..cut]), Decoded::Incomplete);
        }
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, 2, b"payload bytes");
        for byte in 4..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(matches!(decode_record(&bad), Decoded::Corrupt(_)), "byte {byte} bit {bit}");
            }
        }
    }
}
