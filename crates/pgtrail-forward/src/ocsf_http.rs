//! OCSF over HTTP: a batch is one POST of a JSON array of OCSF 1.8.0 events (as `pgtrail
//! export --format ocsf` writes them), with `Authorization: Bearer TOKEN` when a token is
//! given; any 2xx answer confirms the batch.

use pgtrail_event::ActivityEvent;
use pgtrail_export::Position;

use crate::http::{Http, checked_url, failed_status};
use crate::{Destination, Failure, ForwardError, Settings};

pub(crate) struct OcsfHttp {
    http: Http,
    url: url::Url,
    authorization: Option<String>,
    body: Vec<u8>,
    pending: usize,
}

impl OcsfHttp {
    pub fn open(settings: &Settings) -> Result<OcsfHttp, ForwardError> {
        Ok(OcsfHttp {
            http: Http::open(settings)?,
            url: checked_url(&settings.url, settings.plaintext)?,
            authorization: settings.token.as_ref().map(|t| format!("Bearer {t}")),
            body: b"[".to_vec(),
            pending: 0,
        })
    }
}

impl Destination for OcsfHttp {
    fn add(&mut self, event: &ActivityEvent, at: Position<'_>) {
        if self.pending > 0 {
            self.body.push(b',');
        }
        serde_json::to_writer(&mut self.body, &pgtrail_export::ocsf::event(event, at)).expect("OCSF serializes");
        self.pending += 1;
    }

    fn pending(&self) -> usize {
        self.pending
    }

    fn send(&mut self) -> Result<(), Failure> {
        let mut body = self.body.clone();
        body.push(b']');
        let mut request = self.http.client.post(self.url.clone()).header("content-type", "application/json").body(body);
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        let (status, text) = self.http.send(request)?;
        if !(200..300).contains(&status) {
            return Err(failed_status(status, &text));
        }
        self.body.truncate(1);
        self.pending = 0;
        Ok(())
    }
}
