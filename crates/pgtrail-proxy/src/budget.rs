//! A budget for what all sessions together may buffer.
//!
//! The relay streams most messages through, but a Query, Parse, Bind or FunctionCall must
//! be read whole (its text is judged and recorded). Each session's messages are bounded by
//! `max_data_message_bytes` (1 GiB by default, PostgreSQL's own ceiling), so a few clients
//! could otherwise make the proxy hold gigabytes. Messages over [`COUNTED_ABOVE`] bytes
//! reserve their size here before they are buffered; one that does not fit is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Messages up to this size are not counted: every session may hold one of them.
pub(crate) const COUNTED_ABOVE: usize = 64 * 1024;

/// Bytes that sessions may still reserve.
#[derive(Debug)]
pub(crate) struct BufferBudget {
    max: usize,
    /// Shared with [`crate::ProxyStats::buffered_message_bytes`].
    used: Arc<AtomicUsize>,
}

/// Bytes reserved by one session; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<BufferBudget>,
    bytes: usize,
}

impl BufferBudget {
    pub(crate) fn new(max: usize, used: Arc<AtomicUsize>) -> Self {
        Self { max, used }
    }

    /// Reserves `bytes`, or `None` when that would go over the budget.
    pub(crate) fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .ok()?;
        Some(Reservation { budget: Arc::clone(self), bytes })
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_given_back() {
        let budget = Arc::new(BufferBudget::new(100, Arc::default()));
        let a = budget.reserve(60).expect("fits");
        assert!(budget.reserve(50).is_none(), "over the budget");
        let b = budget.reserve(40).expect("fits exactly");
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(budget.reserve(usize::MAX).is_none());
    }
}
