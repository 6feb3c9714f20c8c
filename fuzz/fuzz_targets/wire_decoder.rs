//! Feeds arbitrary bytes to every decoder of pgtrail-wire, split at an arbitrary point as a
//! socket would deliver them. Properties: no panic, no allocation beyond the limits (the
//! fuzzer's -rss_limit_mb catches that), and whatever decodes re-encodes to bytes that
//! decode to the same message.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgtrail_wire::{Limits, decode_backend, decode_frontend, decode_startup};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    // Small limits so that "too large" paths are reached with small inputs.
    let limits = Limits { small: 4096, large: 65_536, startup: 10_000 };
    // Re-encoding may grow a message (invalid UTF-8 becomes U+FFFD), so re-decode roomily.
    let roomy = Limits { small: 1 << 30, large: 1 << 30, startup: 1 << 30 };
    let split = usize::from(selector) % (rest.len() + 1);
    let mut buf = BytesMut::from(&rest[..split]);
    let mut pending = &rest[split..];
    loop {
        let progressed = match selector % 3 {
            0 => match decode_frontend(&mut buf, &limits) {
                Ok(Some(msg)) => {
                    let mut out = BytesMut::new();
                    msg.encode(&mut out);
                    let again = decode_frontend(&mut out, &roomy).expect("re-encoded message decodes");
                    assert_eq!(again.as_ref(), Some(&msg));
                    true
                }
                Ok(None) => false,
                Err(_) => return,
            },
            1 => match decode_backend(&mut buf, &limits) {
                Ok(Some(msg)) => {
                    let mut out = BytesMut::new();
                    msg.encode(&mut out);
                    let again = decode_backend(&mut out, &roomy).expect("re-encoded message decodes");
                    assert_eq!(again.as_ref(), Some(&msg));
                    true
                }
                Ok(None) => false,
                Err(_) => return,
            },
            _ => match decode_startup(&mut buf, &limits) {
                Ok(Some(msg)) => {
                    let mut out = BytesMut::new();
                    msg.encode(&mut out);
                    let again = decode_startup(&mut out, &roomy).expect("re-encoded message decodes");
                    assert_eq!(again.as_ref(), Some(&msg));
                    true
                }
                Ok(None) => false,
                Err(_) => return,
            },
        };
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
