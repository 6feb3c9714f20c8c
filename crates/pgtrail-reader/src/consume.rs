//! The one loop every consumer runs: resume at the cursor, hand each record's events over,
//! save the cursor when the consumer says its output is durable, and (when following) wait
//! for new records until told to stop.

use std::time::Duration;

use pgtrail_event::ActivityEvent;

use crate::{Cursor, CursorStore, Opened, ReadError, Reader, RecordSource};

/// Where a consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// At the record after the cursor: what was consumed before is not read again.
    AfterCursor,
    /// From the journal's first record, handing the records up to the cursor over as a
    /// replay (to rebuild state without emitting anything), then live ones.
    ReplayToCursor,
}

/// What the consumer says after a record or a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep going; the cursor is not saved yet.
    Continue,
    /// Everything handed over so far is durable in the consumer's output: save the cursor.
    Save,
}

/// Errors of a consumer run: the reader's, or the consumer's own.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Consumer(Box<dyn std::error::Error + Send + Sync>),
}

impl ConsumerError {
    /// Wraps a consumer's own error.
    pub fn consumer(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Consumer(Box::new(error))
    }

    /// The I/O error behind a consumer's failure, when that is what it was (its output's
    /// reader went away, its disk is full).
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            Self::Consumer(error) => error.downcast_ref(),
            Self::Read(_) => None,
        }
    }
}

/// A consumer of events.
pub trait Consumer {
    /// Where to start; most consumers resume after their cursor.
    fn resume(&self) -> Resume {
        Resume::AfterCursor
    }

    /// One record's events. `replay` is true for records up to the cursor (only with
    /// [`Resume::ReplayToCursor`]): rebuild state, emit nothing. `cursor.state` is the
    /// consumer's own part of the cursor, saved with it.
    fn record(
        &mut self,
        opened: &Opened,
        events: Vec<ActivityEvent>,
        replay: bool,
        cursor: &mut Cursor,
    ) -> Result<Step, ConsumerError>;

    /// Called whenever the reader has caught up with the journal (past the cursor): flush,
    /// or act on the wall clock.
    fn caught_up(&mut self, _cursor: &mut Cursor) -> Result<Step, ConsumerError> {
        Ok(Step::Continue)
    }
}

/// Whether to stop at the end of the journal or wait for more.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    pub follow: bool,
    /// How long to wait before looking again.
    pub poll: Duration,
}

impl Follow {
    /// Read what is there, then stop.
    pub const NO: Follow = Follow { follow: false, poll: Duration::ZERO };

    pub fn every(poll: Duration) -> Follow {
        Follow { follow: true, poll }
    }
}

/// Runs `consumer` over `reader` from `cursor` (a saved cursor, or the default for the
/// beginning) until the end of the journal, or with `follow` until `stop` says so. With a
/// cursor store, the cursor is saved there whenever the consumer says [`Step::Save`], and
/// then the source is told ([`Reader::consumed`]).
///
/// The reader must start at the record `cursor.seq` or before (see [`Reader::resume_at`](crate::Reader::resume_at)).
/// The record at the cursor is checked to be the one the cursor names (instance and
/// hash): a cursor of another journal is an error, not a silent skip.
pub fn consume<S: RecordSource>(
    reader: &mut Reader<S>,
    mut cursor: Cursor,
    store: Option<&dyn CursorStore>,
    consumer: &mut dyn Consumer,
    follow: Follow,
    stop: &dyn Fn() -> bool,
) -> Result<Cursor, ConsumerError> {
    let resume_at = cursor.seq;
    let mut reached = resume_at == 0;
    let save_at = |reader: &mut Reader<S>, cursor: &Cursor| store.map_or(Ok(()), |store| save(reader, store, cursor));
    loop {
        while let Some(opened) = reader.next_envelope()? {
            if opened.seq <= resume_at {
                if opened.seq == resume_at {
                    check_cursor(&cursor, &opened, reader.instance())?;
                    reached = true;
                }
                if consumer.resume() == Resume::AfterCursor {
                    continue;
                }
                consumer.record(&opened, opened.events()?, true, &mut cursor)?;
                continue;
            }
            reached = true;
            let events = opened.events()?;
            // Known before the consumer sees the record (it may partition by instance).
            cursor.instance = reader.instance().map(str::to_owned);
            let step = consumer.record(&opened, events, false, &mut cursor)?;
            cursor.seq = opened.seq;
            cursor.hash = Some(opened.hash);
            if step == Step::Save {
                save_at(reader, &cursor)?;
            }
        }
        if reached && consumer.caught_up(&mut cursor)? == Step::Save {
            save_at(reader, &cursor)?;
        }
        if !follow.follow || stop() {
            return Ok(cursor);
        }
        std::thread::sleep(follow.poll);
    }
}

/// Saves `cursor` in `store`, then tells the reader's source that everything up to it is
/// consumed (in that order: a source acknowledges only what a saved cursor covers).
pub fn save<S: RecordSource>(
    reader: &mut Reader<S>,
    store: &dyn CursorStore,
    cursor: &Cursor,
) -> Result<(), ReadError> {
    store.save(cursor)?;
    reader.consumed(cursor.seq)
}

/// Runs `each` for every origin, on threads of its own when there are several (each
/// instance has its own chain and cursor); the results in the origins' order.
pub fn each_origin<T: Send, E: Send>(
    origins: &[crate::Origin],
    each: impl Fn(&crate::Origin) -> Result<T, E> + Sync,
) -> Vec<Result<T, E>> {
    if let [origin] = origins {
        return vec![each(origin)];
    }
    std::thread::scope(|scope| {
        let each = &each;
        let running: Vec<_> = origins.iter().map(|origin| scope.spawn(move || each(origin))).collect();
        running.into_iter().map(|r| r.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

fn check_cursor(cursor: &Cursor, opened: &Opened, instance: Option<&str>) -> Result<(), ReadError> {
    let instance_differs = matches!((&cursor.instance, instance), (Some(a), Some(b)) if a != b);
    let hash_differs = cursor.hash.is_some_and(|h| h != opened.hash);
    if instance_differs || hash_differs {
        let found = if instance_differs {
            format!("is instance {:?}", instance.unwrap_or_default())
        } else {
            format!("has a different record {}", opened.seq)
        };
        return Err(ReadError::CursorMismatch {
            seq: cursor.seq,
            cursor_instance: cursor.instance.clone().unwrap_or_default(),
            found,
        });
    }
    Ok(())
}
