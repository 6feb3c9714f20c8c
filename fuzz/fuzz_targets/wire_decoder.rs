//! Feeds arbitrary bytes to every decoder of pgtrail-wire, split at an arbitrary point as a
//! socket would deliver them. Properties: no panic, no allocation beyond the limits (the
//! fuzzer's -rss_limit_mb catches that), and whatever decodes re-encodes to bytes that
//! decode to the same message.

#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgtrail_wire::{Limits, WireError, decode_backend, decode_frontend, decode_startup};

type Decode<M> = fn(&mut BytesMut, &Limits) -> Result<Option<M>, WireError>;

/// Decodes one message; if there is one, checks that it re-encodes to bytes that decode to
/// the same message. `None` when the input is rejected (the fuzz case ends there),
/// otherwise whether a message was taken.
fn step<M: PartialEq + Debug>(buf: &mut BytesMut, decode: Decode<M>, encode: fn(&M, &mut BytesMut)) -> Option<bool> {
    // Small limits so that "too large" paths are reached with small inputs.
    let limits = Limits { small: 4096, large: 65_536, startup: 10_000 };
    // Re-encoding may grow a message (invalid UTF-8 becomes U+FFFD), so re-decode roomily.
    let roomy = Limits { small: 1 << 30, large: 1 << 30, startup: 1 << 30 };
    match decode(buf, &limits) {
        Ok(Some(msg)) => {
            let mut out = BytesMut::new();
            encode(&msg, &mut out);
            let again = decode(&mut out, &roomy).expect("re-encoded message decodes");
            assert_eq!(again.as_ref(), Some(&msg));
            Some(true)
        }
        Ok(None) => Some(false),
        Err(_) => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let split = usize::from(selector) % (rest.len() + 1);
    let mut buf = BytesMut::from(&rest[..split]);
    let mut pending = &rest[split..];
    loop {
        let progressed = match selector % 3 {
            0 => step(&mut buf, decode_frontend, |m, out| m.encode(out)),
            1 => step(&mut buf, decode_backend, |m, out| m.encode(out)),
            _ => step(&mut buf, decode_startup, |m, out| m.encode(out)),
        };
        let Some(progressed) = progressed else { return };
        if !progressed {
            if pending.is_empty() {
                return;
            }
            // Deliver the rest of the bytes, as a second read from the socket would.
            buf.extend_from_slice(pending);
            pending = &[];
        }
    }
});
