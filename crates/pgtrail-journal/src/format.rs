//! Segment and record encoding (see the crate documentation for the layout).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub(crate) const MAGIC: &[u8; 8] = b"PGTRJRN2";
pub(crate) const FORMAT_VERSION: u32 = 2;
pub(crate) const SEGMENT_HEADER_LEN: usize = 128;
pub(crate) const RECORD_HEADER_LEN: usize = 96;
/// The largest payload a record may carry: 64 MiB. A larger declared length is corruption.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// The longest instance name a journal accepts.
pub const MAX_INSTANCE_LEN: usize = 64;

/// A SHA-256 chain hash.
pub type Hash = [u8; 32];

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// An envelope (a DAS record): opaque to the journal.
    Envelope,
    /// A signed checkpoint (its payload is described in the `checkpoint` module).
    Checkpoint,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            RecordKind::Envelope => 1,
            RecordKind::Checkpoint => 2,
        }
    }

    fn from_code(code: u8) -> Option<RecordKind> {
        match code {
            1 => Some(RecordKind::Envelope),
            2 => Some(RecordKind::Checkpoint),
            _ => None,
        }
    }
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub seq: u64,
    /// Microseconds since the Unix epoch, taken when the record was appended.
    pub timestamp_micros: i64,
    /// The hash of the record before this one (the segment's genesis for the first).
    pub prev_hash: Hash,
    /// This record's hash: SHA-256 over `prev_hash`, the header fields and the payload.
    pub hash: Hash,
    pub payload: Vec<u8>,
}

impl Record {
    /// The record exactly as the journal frames it in a segment (header with length, CRC,
    /// kind, sequence, time, previous hash and own hash, then the payload): what a
    /// transport carries, so that a reader elsewhere checks the same CRC, hash and link.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER_LEN + self.payload.len());
        encode_record(&mut out, self.kind, self.seq, self.timestamp_micros, &self.prev_hash, &self.payload);
        out
    }

    /// Parses records framed as [`Record::to_bytes`] writes them, one after another, each
    /// with its CRC and own hash checked (whether they link up is [`crate::Chain`]'s
    /// check). `Err` says what is wrong and where.
    pub fn parse_all(bytes: &[u8]) -> Result<Vec<Record>, String> {
        let mut records = Vec::new();
        let mut offset = 0;
        while offset < bytes.len() {
            match decode_record(&bytes[offset..]) {
                Decoded::Record(record, n) => {
                    records.push(record);
                    offset += n;
                }
                Decoded::Incomplete => return Err(format!("a record is cut short at byte {offset}")),
                Decoded::Corrupt(what) => return Err(format!("at byte {offset}: {what}")),
            }
        }
        Ok(records)
    }
}

/// The chain hash before the first record of an instance's journal.
pub fn genesis_hash(instance: &str) -> Hash {
    let mut h = Sha256::new();
    h.update(b"pgtrail journal v2 genesis\0");
    h.update(instance.as_bytes());
    h.finalize().into()
}

/// The hash of a record: SHA-256(prev_hash || kind || seq || timestamp || payload length || payload),
/// integers little-endian.
pub fn record_hash(prev_hash: &Hash, kind: RecordKind, seq: u64, timestamp_micros: i64, payload: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update([kind.code()]);
    h.update(seq.to_le_bytes());
    h.update(timestamp_micros.to_le_bytes());
    h.update((payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize().into()
}

/// A segment's header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_seq: u64,
    /// The chain hash before the segment's first record.
    pub start_hash: Hash,
    pub instance: String,
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        assert!(
            !self.instance.is_empty() && self.instance.len() <= MAX_INSTANCE_LEN,
            "instance length checked on open"
        );
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        h[24..56].copy_from_slice(&self.start_hash);
        h[56] = self.instance.len() as u8;
        h[57..57 + self.instance.len()].copy_from_slice(self.instance.as_bytes());
        let crc = crc32c::crc32c(&h[16..]);
        h[12..16].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses a segment header; `Err` says what is wrong.
    pub(crate) fn decode(bytes: &[u8]) -> Result<SegmentHeader, &'static str> {
        let h = bytes.get(..SEGMENT_HEADER_LEN).ok_or("segment header is incomplete")?;
        if &h[..8] != MAGIC || h[8..12] != FORMAT_VERSION.to_le_bytes() {
            return Err("not a pgtrail journal v2 segment (bad magic or version)");
        }
        if h[12..16] != crc32c::crc32c(&h[16..]).to_le_bytes() {
            return Err("segment header CRC32C mismatch");
        }
        let len = usize::from(h[56]);
        if len == 0 || len > MAX_INSTANCE_LEN {
            return Err("segment header instance length out of range");
        }
        let instance =
            std::str::from_utf8(&h[57..57 + len]).map_err(|_| "segment header instance is not UTF-8")?.to_owned();
        Ok(SegmentHeader {
            first_seq: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
            start_hash: h[24..56].try_into().expect("32 bytes"),
            instance,
        })
    }
}

/// Appends one encoded record to `out`; returns its hash.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    kind: RecordKind,
    seq: u64,
    timestamp_micros: i64,
    prev_hash: &Hash,
    payload: &[u8],
) -> Hash {
    let len = u32::try_from(payload.len()).expect("payload length checked against MAX_PAYLOAD");
    let hash = record_hash(prev_hash, kind, seq, timestamp_micros, payload);
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind.code());
    out.extend_from_slice(&[0; 7]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&timestamp_micros.to_le_bytes());
    out.extend_from_slice(prev_hash);
    out.extend_from_slice(&hash);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    hash
}

/// What is at a position of a segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A whole record whose CRC and own hash check out, and the bytes it occupies.
    /// (Whether it links to the record before is the caller's check.)
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
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt(format!("declared payload length {len} exceeds {MAX_PAYLOAD}"));
    }
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let total = RECORD_HEADER_LEN + len;
    let Some(whole) = bytes.get(..total) else {
        return Decoded::Incomplete;
    };
    let actual = crc32c::crc32c(&whole[8..]);
    if actual != crc {
        return Decoded::Corrupt(format!("CRC32C mismatch (stored {crc:08x}, computed {actual:08x})"));
    }
    let Some(kind) = RecordKind::from_code(header[8]) else {
        return Decoded::Corrupt(format!("unknown record kind {}", header[8]));
    };
    if header[9..16].iter().any(|&b| b != 0) {
        return Decoded::Corrupt("reserved header bytes are not zero".into());
    }
    let seq = u64_at(16);
    let timestamp_micros = u64_at(24) as i64;
    let prev_hash: Hash = header[32..64].try_into().expect("32 bytes");
    let hash: Hash = header[64..96].try_into().expect("32 bytes");
    let payload = &whole[RECORD_HEADER_LEN..];
    if record_hash(&prev_hash, kind, seq, timestamp_micros, payload) != hash {
        return Decoded::Corrupt("record hash does not match its contents".into());
    }
    Decoded::Record(Record { kind, seq, timestamp_micros, prev_hash, hash, payload: payload.to_vec() }, total)
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
        let prev = genesis_hash("db-1");
        let hash = encode_record(&mut buf, RecordKind::Envelope, 7, 1_700_000_000_000_000, &prev, b"hello");
        let Decoded::Record(r, n) = decode_record(&buf) else { panic!() };
        assert_eq!(
            (r.kind, r.seq, r.timestamp_micros, r.prev_hash, r.hash, r.payload.as_slice(), n),
            (RecordKind::Envelope, 7, 1_700_000_000_000_000, prev, hash, &b"hello"[..], buf.len())
        );
        for cut in 0..buf.len() {
            assert_eq!(decode_record(&buf[..cut]), Decoded::Incomplete);
        }
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, RecordKind::Checkpoint, 1, 2, &[9; 32], b"payload bytes");
        for byte in 4..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(matches!(decode_record(&bad), Decoded::Corrupt(_)), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn segment_header_roundtrip_and_damage() {
        let header = SegmentHeader { first_seq: 42, start_hash: [3; 32], instance: "db-ABC".into() };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes).unwrap(), header);
        for i in 0..SEGMENT_HEADER_LEN {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert!(SegmentHeader::decode(&bad).is_err(), "byte {i}");
        }
    }
}
