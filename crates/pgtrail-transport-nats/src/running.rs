//! The publisher inside a journal writer (the proxy, `pgtrail ingest`): started with the
//! writer, publishing each record once it is durable, watching the lag, and given a
//! moment at shutdown to publish what is left (see `pgtrail_journal::ship::Running`).

use std::path::PathBuf;

use pgtrail_journal::ship::{Durable, LagAlarm, Running, Shipping, Transport};

use crate::{NatsTransport, publish};

impl Transport for NatsTransport {
    fn describe(&self) -> String {
        // The URL may carry credentials (nats://user:password@host): only hosts are named.
        let hosts: Vec<&str> = self
            .settings
            .url
            .split(',')
            .map(|server| server.trim().rsplit_once('@').map_or(server.trim(), |(_, host)| host))
            .collect();
        format!("JetStream stream {} on {}", self.settings.stream, hosts.join(","))
    }

    fn sync_waits(&self) -> bool {
        self.sync_waits_for_stream
    }

    fn start(&self, journal: PathBuf, durable: Durable, alarm: Box<dyn FnMut(LagAlarm) + Send>) -> Box<dyn Shipping> {
        let (settings, limit) = (self.settings.clone(), durable.clone());
        Box::new(Running::start(
            "JetStream",
            durable,
            self.lag_alarm_records,
            alarm,
            Box::new(move |stats, stopped| {
                Box::pin(async move {
                    publish(&journal, &settings, Some(limit), stats, &*stopped).await.map_err(|e| e.to_string())
                })
            }),
        ))
    }
}
