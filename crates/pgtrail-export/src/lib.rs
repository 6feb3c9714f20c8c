//! Owns: pgtrail's events in the formats SIEMs read (CEF, OCSF). Must not: read journals
//! or send anything (readers and forwarders do; this crate only formats).

pub mod cef;
pub mod ocsf;

/// Where an event sits in the trail: what every export carries so a SIEM event can be
/// traced back to the journal record it came from.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub instance: &'a str,
    pub record_seq: u64,
    pub event_index: usize,
}
