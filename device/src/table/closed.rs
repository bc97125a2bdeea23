//! The queue of closed-session records waiting for getClosedSessions.
//!
//! Records leave oldest first. A reader takes a batch, and gives back what it could not hand
//! to an open stream ([`ClosedQueue::restore`]) so that nothing is lost when a client goes away
//! mid-stream. When the queue is full the oldest records are kept and the newest are dropped
//! (and counted by the table): the VNF then misses the latest closes, not a random subset.

use std::collections::VecDeque;

use opof_proto::domain::SessionRecord;

pub struct ClosedQueue {
    records: VecDeque<SessionRecord>,
    capacity: usize,
    /// Records given back after a stream that had sent them broke: each may reach a reader a
    /// second time.
    redelivered: u64,
}

impl ClosedQueue {
    /// A queue for `capacity` records. Its buffer starts small and grows with the queue's
    /// high-water mark. (Reserving room for `capacity` records up front cost nothing at first,
    /// but a ring's head walks through its whole buffer as records come and go, touching a new
    /// page every few dozen closes: the soak measured the device's memory growing by about
    /// 0.2 MB/min until the walk would have covered `capacity` records.)
    pub(crate) fn new(capacity: usize) -> Self {
        ClosedQueue { records: VecDeque::with_capacity(capacity.min(4096)), capacity, redelivered: 0 }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Queues a record; `false` when the queue is full and the record was dropped.
    pub(crate) fn push(&mut self, r: SessionRecord) -> bool {
        if self.records.len() >= self.capacity {
            return false;
        }
        self.records.push_back(r);
        true
    }

    /// The oldest record, without taking it.
    pub fn front(&self) -> Option<&SessionRecord> {
        self.records.front()
    }

    /// Takes the oldest record.
    pub fn pop_front(&mut self) -> Option<SessionRecord> {
        self.records.pop_front()
    }

    /// Takes up to `max` of the oldest records.
    pub fn take(&mut self, max: usize) -> Vec<SessionRecord> {
        let n = max.min(self.records.len());
        self.records.drain(..n).collect()
    }

    /// Gives back records taken earlier and not delivered, in their order, ahead of the rest.
    /// They may exceed the capacity for a while: they are the oldest and are kept.
    pub fn restore(&mut self, undelivered: impl DoubleEndedIterator<Item = SessionRecord>) {
        for r in undelivered.rev() {
            self.records.push_front(r);
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
