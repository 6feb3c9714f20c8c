//! A named consumer's cursors, kept beside the audit stream: one key per consumer and
//! instance (`<consumer>.<instance>`) in the key-value bucket `<stream>_CURSORS`, replicated
//! like the stream, so that a consumer needs no disk of its own and can move to another
//! machine. The value is the cursor in the reader's text format. Each consumer name also
//! has a durable consumer per instance on the stream (see the source module), acknowledged
//! up to the saved cursor: the servers show how far each consumer is (`nats consumer info`).

use std::time::Duration;

use async_nats::jetstream::kv;
use pgtrail_reader::{Cursor, CursorStore, ReadError};

use crate::TransportError;

/// The cursors' bucket of the audit stream `stream`.
pub fn bucket(stream: &str) -> String {
    format!("{stream}_CURSORS")
}

/// The bucket's stream: the layout of a JetStream key-value bucket (stream `KV_<bucket>`,
/// subjects `$KV.<bucket>.>`, history per key, direct gets), `replicas` copies. Made as a
/// stream because the client's bucket creation asks for account details in a form the
/// Debian server (2.9) does not give.
pub fn bucket_stream(stream: &str, replicas: usize) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
    let bucket = bucket(stream);
    Config {
        name: format!("KV_{bucket}"),
        description: Some(format!("pgtrail consumers' cursors in the audit stream {stream}")),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 5,
        max_bytes: -1,
        max_messages: -1,
        max_message_size: -1,
        storage: StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        ..Config::default()
    }
}

/// One consumer's cursor of one instance, in the bucket.
pub struct KvCursor {
    /// Taken out and shut down in the background on drop (it may be dropped on an async thread).
    runtime: Option<tokio::runtime::Runtime>,
    store: kv::Store,
    key: String,
    durable: String,
}

impl std::fmt::Debug for KvCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCursor").field("key", &self.key).finish()
    }
}

impl KvCursor {
    /// The cursor of consumer `name` for `instance` in the bucket of `stream` (which
    /// `pgtrail transport init` creates).
    pub fn open(url: &str, stream: &str, name: &str, instance: &str) -> Result<KvCursor, TransportError> {
        let key = key(name, instance)?;
        let runtime = crate::runtime()?;
        let store = runtime.block_on(async {
            let client = crate::connect(url).await?;
            let jetstream = async_nats::jetstream::new(client);
            let bucket = bucket(stream);
            match jetstream.get_stream(format!("KV_{bucket}")).await {
                Ok(_) => jetstream.get_key_value(&bucket).await.map_err(|e| TransportError::JetStream(e.to_string())),
                Err(e) if crate::is_not_found(&e) => Err(TransportError::Missing(format!(
                    "{bucket} (the consumers' cursors; pgtrail transport init creates it)"
                ))),
                Err(e) => Err(TransportError::JetStream(e.to_string())),
            }
        })?;
        Ok(KvCursor { runtime: Some(runtime), store, key, durable: durable_name(name, instance) })
    }

    /// The key of this cursor in the bucket.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The name of the durable consumer on the stream that reads for this cursor.
    pub fn durable_name(&self) -> &str {
        &self.durable
    }

    fn block_on<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        self.runtime.as_ref().expect("taken only on drop").block_on(work)
    }

    fn failed(&self, action: &'static str, e: impl std::fmt::Display) -> ReadError {
        ReadError::CursorStore { action, name: format!("{} in the key-value bucket", self.key), message: e.to_string() }
    }
}

impl CursorStore for KvCursor {
    fn load(&self) -> Result<Cursor, ReadError> {
        let value = self
            .block_on(tokio::time::timeout(Duration::from_secs(10), self.store.get(self.key.clone())))
            .map_err(|_| self.failed("read", "no answer in 10 s"))?
            .map_err(|e| self.failed("read", e))?;
        match value {
            None => Ok(Cursor::default()),
            Some(bytes) => {
                let text = std::str::from_utf8(&bytes).map_err(|e| self.failed("read", e))?;
                Cursor::parse(text).map_err(|problem| self.failed("read", problem))
            }
        }
    }

    fn save(&self, cursor: &Cursor) -> Result<(), ReadError> {
        let text = cursor.to_text();
        self.block_on(tokio::time::timeout(Duration::from_secs(10), self.store.put(&self.key, text.into())))
            .map_err(|_| self.failed("save", "no answer in 10 s"))?
            .map_err(|e| self.failed("save", e))?;
        Ok(())
    }
}

impl Drop for KvCursor {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The key of consumer `name`'s cursor of `instance`: `<name>.<instance>`.
fn key(name: &str, instance: &str) -> Result<String, TransportError> {
    let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err(TransportError::Consumer(name.to_owned()));
    }
    let instance_ok = instance.split('.').all(|token| {
        !token.is_empty() && token.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '='))
    });
    if !instance_ok {
        return Err(TransportError::Instance(instance.to_owned()));
    }
    Ok(format!("{name}.{instance}"))
}

/// The durable consumer's name: `<name>_<instance>`, the instance's dots and other
/// characters a consumer name cannot hold replaced, and then a short hash of the instance
/// so that two instances never share a consumer.
fn durable_name(name: &str, instance: &str) -> String {
    let plain: String = instance.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    if plain == instance {
        return format!("{name}_{instance}");
    }
    // FNV-1a: stable across versions and platforms.
    let hash =
        instance.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{name}_{plain}_{:08x}", hash as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_durable_names_keep_instances_apart() {
        assert_eq!(key("siem", "db1.example.com").unwrap(), "siem.db1.example.com");
        assert!(key("si em", "db1").is_err());
        assert!(key("siem", "db:1").is_err());
        assert_eq!(durable_name("siem", "db-east-2"), "siem_db-east-2");
        let dotted = durable_name("siem", "a.b");
        let underscored = durable_name("siem", "a_b");
        assert!(dotted.starts_with("siem_a_b_"), "{dotted}");
        assert_ne!(dotted, underscored);
        assert!(!dotted.contains('.'));
    }
}
