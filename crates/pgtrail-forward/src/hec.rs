//! Splunk HTTP Event Collector. A batch is one POST to `/services/collector/event`: the
//! events as JSON objects one after the other, each
//! `{"time": SECONDS.MICROS, "host", "source", "sourcetype", ["index",] "event": {...},
//! "fields": {"pgtrail_position", "pgtrail_instance"}}` where `event` is the event as
//! `pgtrail export --format jsonl` writes it. The token goes in `Authorization: Splunk
//! TOKEN`. With indexer acknowledgements, every request carries the run's channel
//! (`X-Splunk-Request-Channel`, a GUID), the answer's `ackId` is polled at
//! `/services/collector/ack` (`{"acks": [ID, ...]}` -> `{"acks": {"ID": true, ...}}`), and a
//! batch counts as delivered only once it is acknowledged. Several batches are in flight
//! at once (the forwarder's window), their acks polled together; a batch not acknowledged
//! in time is sent again.

use std::io::Write as _;
use std::time::{Duration, Instant};

use pgtrail_event::ActivityEvent;
use pgtrail_export::Position;

use crate::http::{Http, checked_url, failed_status};
use crate::{Destination, Failure, ForwardError, Settings};

pub(crate) struct Hec {
    http: Http,
    event_url: url::Url,
    ack_url: url::Url,
    authorization: String,
    /// The channel, when acknowledgements are on.
    channel: Option<String>,
    ack_timeout: Duration,
    index: Option<String>,
    sourcetype: String,
    body: Vec<u8>,
    pending: usize,
    /// Batches sent and not acknowledged yet.
    in_flight: Vec<InFlight>,
}

/// A batch awaiting its acknowledgement.
struct InFlight {
    body: Vec<u8>,
    /// `None`: to be sent again.
    ack_id: Option<u64>,
    sent: Instant,
}

impl Hec {
    pub fn open(settings: &Settings) -> Result<Hec, ForwardError> {
        let base = checked_url(&settings.url, settings.plaintext)?;
        let token = settings.token.as_deref().ok_or_else(|| {
            ForwardError::Setup("Splunk HEC needs a token (--token-file or PGTRAIL_FORWARD_TOKEN)".into())
        })?;
        let endpoint = |path: &str| {
            let mut url = base.clone();
            url.set_path(&format!("{}/{path}", base.path().trim_end_matches('/')));
            url
        };
        Ok(Hec {
            http: Http::open(settings)?,
            event_url: endpoint("services/collector/event"),
            ack_url: endpoint("services/collector/ack"),
            authorization: format!("Splunk {token}"),
            channel: settings.ack.then(crate::random_guid),
            ack_timeout: settings.ack_timeout,
            index: settings.index.clone(),
            sourcetype: settings.sourcetype.clone(),
            body: Vec::new(),
            pending: 0,
            in_flight: Vec::new(),
        })
    }

    fn post(&self, url: &url::Url, body: Vec<u8>) -> Result<serde_json::Value, Failure> {
        let mut request = self
            .http
            .client
            .post(url.clone())
            .header("authorization", &self.authorization)
            .header("content-type", "application/json")
            .body(body);
        if let Some(channel) = &self.channel {
            request = request.header("x-splunk-request-channel", channel);
        }
        let (status, text) = self.http.send(request)?;
        if !(200..300).contains(&status) {
            return Err(failed_status(status, &text));
        }
        serde_json::from_str(&text)
            .map_err(|_| Failure::retriable(format!("HTTP {status} with an answer that is not JSON")))
    }

    /// Posts a batch; its ackId when acknowledgements are on.
    fn post_batch(&self, body: Vec<u8>) -> Result<Option<u64>, Failure> {
        let answer = self.post(&self.event_url, body)?;
        if answer["code"] != 0 {
            return Err(Failure::fatal(format!("HEC answered {answer}")));
        }
        if self.channel.is_none() {
            return Ok(None);
        }
        answer["ackId"].as_u64().map(Some).ok_or_else(|| {
            Failure::fatal(
                "HEC gave no ackId: indexer acknowledgement is not enabled for this token (drop --ack, or enable it)",
            )
        })
    }

    /// One poll of the acknowledgements of the batches in flight: the acknowledged ones
    /// leave.
    fn poll(&mut self) -> Result<(), Failure> {
        let ids: Vec<u64> = self.in_flight.iter().filter_map(|b| b.ack_id).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(&serde_json::json!({ "acks": ids })).expect("JSON");
        let answer = self.post(&self.ack_url, body)?;
        self.in_flight.retain(|b| b.ack_id.is_none_or(|id| answer["acks"][id.to_string()] != true));
        Ok(())
    }
}

impl Destination for Hec {
    fn add(&mut self, event: &ActivityEvent, at: Position<'_>) {
        let time = event.log_time;
        let host = event.server_host.as_deref().unwrap_or(at.instance);
        let body = &mut self.body;
        // Writing to a Vec cannot fail.
        let _ = write!(
            body,
            "{{\"time\":{}.{:06},\"host\":{},\"source\":{},\"sourcetype\":{}",
            time.timestamp(),
            time.timestamp_subsec_micros(),
            json_string(host),
            json_string(&format!("pgtrail:{}", at.instance)),
            json_string(&self.sourcetype),
        );
        if let Some(index) = &self.index {
            let _ = write!(body, ",\"index\":{}", json_string(index));
        }
        body.extend_from_slice(b",\"event\":");
        serde_json::to_writer(&mut *body, event).expect("an event serializes");
        let position = format!("{}:{}:{}", at.instance, at.record_seq, at.event_index);
        let _ = writeln!(
            body,
            ",\"fields\":{{\"pgtrail_position\":{},\"pgtrail_instance\":{}}}}}",
            json_string(&position),
            json_string(at.instance)
        );
        self.pending += 1;
    }

    fn pending(&self) -> usize {
        self.pending
    }

    fn send(&mut self) -> Result<(), Failure> {
        let ack_id = self.post_batch(self.body.clone())?;
        if ack_id.is_some() {
            let body = std::mem::take(&mut self.body);
            self.in_flight.push(InFlight { body, ack_id, sent: Instant::now() });
        }
        self.body.clear();
        self.pending = 0;
        Ok(())
    }

    fn unconfirmed(&self) -> usize {
        self.in_flight.len()
    }

    fn confirm(&mut self, stop: &dyn Fn() -> bool) -> Result<(), Failure> {
        // Batches whose acknowledgement did not come in time go again, with new ackIds.
        for i in 0..self.in_flight.len() {
            if self.in_flight[i].ack_id.is_none() {
                let ack_id = self.post_batch(self.in_flight[i].body.clone())?;
                self.in_flight[i].ack_id = ack_id;
                self.in_flight[i].sent = Instant::now();
            }
        }
        let mut wait = Duration::from_millis(20);
        loop {
            match self.poll() {
                Ok(()) => {}
                Err(failure) if !failure.retriable => return Err(failure),
                // A failed poll is tried again; the ack timeout bounds it.
                Err(failure) => tracing::debug!(error = %failure.message, "polling HEC acknowledgements failed"),
            }
            if self.in_flight.is_empty() {
                return Ok(());
            }
            if stop() {
                return Err(Failure::retriable("stopped while waiting for acknowledgements"));
            }
            let late: Vec<u64> = self
                .in_flight
                .iter_mut()
                .filter(|b| b.sent.elapsed() > self.ack_timeout)
                .filter_map(|b| b.ack_id.take())
                .collect();
            if !late.is_empty() {
                return Err(Failure::retriable(format!(
                    "no indexer acknowledgement of ackIds {late:?} in {} s: sending those batches again",
                    self.ack_timeout.as_secs()
                )));
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_millis(500));
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}
