//! The queue of closed-session records waiting for getClosedSessions.
//!
//! Records leave oldest first. A reader takes a batch, and gives back what it could not hand
//! to an open stream ([`ClosedQueue::restore`]) so that nothing is lost when a client goes away
//! mid-stream. When the queue is full the oldest records are kept and the newest are dropped
//! (and counted by the table): the VNF then misses the latest closes, not a random subset.

use std::collections::VecDeque;

use opof_proto::domain::SessionRecord;

/// Records per chunk of the queue (about 72 KiB).
const CHUNK: usize = 1024;

/// A run of records in arrival order; `head` records of it were taken.
struct Chunk {
    records: Vec<SessionRecord>,
    head: usize,
}

/// The queue is a list of fixed-size chunks: it grows by one chunk at a time and never copies
/// what it holds (a mass expiry queues a million records under a shard's lock; a ring buffer
/// that doubles would copy all of them, in one hold, at every doubling), and it gives a chunk
/// back to the allocator once it was read, so its memory follows what it holds.
pub struct ClosedQueue {
    /// Records given back by [`ClosedQueue::restore`], oldest last: they leave first.
    returned: Vec<SessionRecord>,
    chunks: VecDeque<Chunk>,
    len: usize,
    capacity: usize,
    /// Records given back after a stream that had sent them broke: each may reach a reader a
    /// second time.
    redelivered: u64,
}

impl ClosedQueue {
    /// A queue for `capacity` records; it holds memory for what it holds (in chunks of
    /// [`CHUNK`] records), not for its capacity.
    pub(crate) fn new(capacity: usize) -> Self {
        ClosedQueue { returned: Vec::new(), chunks: VecDeque::new(), len: 0, capacity, redelivered: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a record; `false` when the queue is full and the record was dropped.
    pub(crate) fn push(&mut self, r: SessionRecord) -> bool {
        if self.len >= self.capacity {
            return false;
        }
        match self.chunks.back_mut() {
            Some(c) if c.records.len() < CHUNK => c.records.push(r),
            _ => {
                let mut records = Vec::with_capacity(CHUNK);
                records.push(r);
                self.chunks.push_back(Chunk { records, head: 0 });
            }
        }
        self.len += 1;
        true
    }

    /// The oldest record, without taking it.
    pub fn front(&self) -> Option<&SessionRecord> {
        self.returned.last().or_else(|| self.chunks.front().and_then(|c| c.records.get(c.head)))
    }

    /// Takes the oldest record.
    pub fn pop_front(&mut self) -> Option<SessionRecord> {
        if let Some(r) = self.returned.pop() {
            self.len -= 1;
            return Some(r);
        }
        let several = self.chunks.len() > 1;
        let c = self.chunks.front_mut()?;
        let r = *c.records.get(c.head)?;
        c.head += 1;
        if c.head == c.records.len() {
            // Read to its end: a full chunk goes; the last one is kept for what comes next.
            if several || c.records.len() == CHUNK {
                self.chunks.pop_front();
            } else {
                c.records.clear();
                c.head = 0;
            }
        }
        self.len -= 1;
        Some(r)
    }

    /// Takes up to `max` of the oldest records.
    pub fn take(&mut self, max: usize) -> Vec<SessionRecord> {
        let n = max.min(self.len);
        let mut out = Vec::with_capacity(n);
        out.extend(std::iter::from_fn(|| self.pop_front()).take(n));
        out
    }

    /// Gives back records taken earlier and not delivered, in their order, ahead of the rest.
    /// They may exceed the capacity for a while: they are the oldest and are kept.
    pub fn restore(&mut self, undelivered: impl DoubleEndedIterator<Item = SessionRecord>) {
        for r in undelivered.rev() {
            self.returned.push(r);
            self.len += 1;
        }
    }

    /// Counts records given back that a broken stream had already sent (see [`Self::restore`]).
    pub fn note_redelivered(&mut self, n: usize) {
        self.redelivered += n as u64;
    }

    pub fn redelivered(&self) -> u64 {
        self.redelivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opof_proto::domain::{CloseCode, Counters, SessionState, Timestamp};
    use proptest::prelude::*;

    fn record(id: u64) -> SessionRecord {
        SessionRecord {
            id,
            counters: Counters::default(),
            state: SessionState::Closed,
            close_code: CloseCode::Timeout,
            start: Timestamp(0),
            end: Some(Timestamp(id)),
        }
    }

    proptest! {
        /// The chunked queue behaves as a plain double-ended queue with a capacity: pushes
        /// past it dropped, takes oldest first, restored records ahead of the rest; across
        /// chunk boundaries (pushes of up to 3 chunks at once).
        #[test]
        fn behaves_like_a_deque(ops in proptest::collection::vec((0u8..4, 0usize..3 * CHUNK), 1..40), capacity in 1usize..4 * CHUNK) {
            let mut q = ClosedQueue::new(capacity);
            let mut model: VecDeque<SessionRecord> = VecDeque::new();
            let mut next = 0u64;
            for (op, n) in ops {
                match op {
                    0 | 1 => {
                        for _ in 0..n {
                            let r = record(next);
                            next += 1;
                            let kept = model.len() < capacity;
                            if kept {
                                model.push_back(r);
                            }
                            prop_assert_eq!(q.push(r), kept);
                        }
                    }
                    2 => {
                        let got = q.take(n);
                        let want: Vec<_> = model.drain(..n.min(model.len())).collect();
                        prop_assert_eq!(&got, &want);
                        let back = &got[got.len().saturating_sub(n % 5)..];
                        q.restore(back.iter().copied());
                        for r in back.iter().rev() {
                            model.push_front(*r);
                        }
                    }
                    _ => prop_assert_eq!(q.pop_front(), model.pop_front()),
                }
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.front(), model.front());
            }
        }
    }

    /// Records taken a thousand at a time and some given back, across many chunks: every one
    /// comes out once.
    #[test]
    fn fifty_thousand_records_with_restores() {
        let mut q = ClosedQueue::new(65_536);
        for i in 0..50_000 {
            assert!(q.push(record(i)));
        }
        let (mut seen, mut x) = (0, 7u64);
        while !q.is_empty() {
            let got = q.take(1024);
            assert!(!got.is_empty(), "{} records queued but none taken ({seen} seen)", q.len());
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let keep = got.len() - (x >> 33) as usize % (got.len() + 1);
            seen += keep;
            q.restore(got[keep..].iter().copied());
        }
        assert_eq!(seen, 50_000);
    }
}
