//! Cancel keys. Clients get the server's real pid (drivers use it: `pg_backend_pid()`,
//! `pg_terminate_backend`, `pg_stat_activity`, the pid in NotificationResponse) with a
//! secret of the proxy's own, never the server's: the proxy maps the pair to the upstream
//! key, so a cancel request only reaches the session it was issued for, also when a pid is
//! reused while an older session with it is still known (their secrets differ).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use rand::Rng;

/// What the proxy needs to cancel the upstream query of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpstreamKey {
    pub(crate) pid: i32,
    pub(crate) secret: Bytes,
}

/// The key handed to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey {
    pub(crate) pid: i32,
    pub(crate) secret: [u8; 4],
}

#[derive(Debug, Default)]
pub(crate) struct CancelRegistry {
    keys: Mutex<HashMap<ClientKey, UpstreamKey>>,
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, UpstreamKey>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues the client key for `upstream`: its pid, and a fresh random secret.
    pub(crate) fn register(&self, upstream: UpstreamKey) -> ClientKey {
        let mut rng = rand::rng();
        let mut keys = self.lock();
        loop {
            let key = ClientKey { pid: upstream.pid, secret: rng.random() };
            if let std::collections::hash_map::Entry::Vacant(slot) = keys.entry(key) {
                slot.insert(upstream);
                return key;
            }
        }
    }

    pub(crate) fn remove(&self, key: &ClientKey) {
        self.lock().remove(key);
    }

    /// The upstream key for a cancel request, if the pid and secret match a live session.
    pub(crate) fn lookup(&self, pid: i32, secret: &[u8]) -> Option<UpstreamKey> {
        let secret: [u8; 4] = secret.try_into().ok()?;
        self.lock().get(&ClientKey { pid, secret }).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13.2: clients got a random pid. They get the server's, with the proxy's
    /// secret; a reused pid still cancels only its own session.
    #[test]
    fn regression_clients_got_a_random_backend_pid() {
        let registry = CancelRegistry::default();
        let older = UpstreamKey { pid: 4242, secret: Bytes::from_static(b"old!") };
        let newer = UpstreamKey { pid: 4242, secret: Bytes::from_static(b"new!") };
        let (a, b) = (registry.register(older.clone()), registry.register(newer.clone()));
        assert_eq!((a.pid, b.pid), (4242, 4242));
        assert_ne!(a.secret, b.secret);
        assert_ne!(&a.secret[..], b"old!", "the server's secret is never disclosed");
        assert_eq!(registry.lookup(4242, &a.secret), Some(older));
        assert_eq!(registry.lookup(4242, &b.secret), Some(newer));
        registry.remove(&a);
        assert_eq!(registry.lookup(4242, &a.secret), None);
        assert_eq!(registry.lookup(4242, b"nope"), None);
    }
}
