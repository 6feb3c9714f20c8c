//! The publisher inside a journal writer (the proxy, `pgtrail ingest`), run by
//! `pgtrail_journal::ship::Running`.

use std::path::PathBuf;

use pgtrail_journal::ship::{Durable, LagAlarm, Running, Shipping, Transport};

use crate::{KafkaTransport, TOPIC_PREFIX, publish};

impl Transport for KafkaTransport {
    fn describe(&self) -> String {
        format!("Kafka topics {TOPIC_PREFIX}.* on {}", self.settings.brokers)
    }

    fn sync_waits(&self) -> bool {
        self.sync_waits_for_stream
    }

    fn start(&self, journal: PathBuf, durable: Durable, alarm: Box<dyn FnMut(LagAlarm) + Send>) -> Box<dyn Shipping> {
        let (settings, limit) = (self.settings.clone(), durable.clone());
        Box::new(Running::start(
            "Kafka",
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
