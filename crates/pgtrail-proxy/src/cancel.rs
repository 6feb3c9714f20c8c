//! Cancel keys. Clients get the proxy's own BackendKeyData, never the server's: the proxy
//! maps it to the upstream pid and secret, so a cancel request only reaches the session
//! it was issued for, and server pids are not disclosed.

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

    /// Issues a fresh random client key for `upstream`.
    pub(crate) fn register(&self, upstream: UpstreamKey) -> ClientKey {
        let mut rng = rand::rng();
        let mut keys = self.lock();
        loop {
            let key = ClientKey { pid: rng.random_range(1..i32::MAX), secret: rng.random() };
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
