//! The queue of closed-session records waiting for getClosedSessions.
//!
//! Records leave oldest first. A reader takes a batch, and gives back what it could not hand
//! to an open stream ([`ClosedQueue::restore`]) so that nothing is lost when a client goes away
//! mid-stream. When the queue is full the oldest records are kept and the newest are dropped
//! (and counted by the table): the VNF then misses the latest closes, not a random subset.

use std::collections::VecDeque;

use opof_proto::domain::SessionRecord;

/// Records per chunk of the queue (about 72 KiB), and per run of an aging pass (runs are
/// written in the queue's spare chunks and, when they fall in order, become its chunks).
pub(crate) const CHUNK: usize = 1024;

/// A run of records in arrival order; `head` records of it were taken.
struct Chunk {
    records: Vec<SessionRecord>,
    head: usize,
}

/// The queue is a list of fixed-size chunks: it grows by one chunk at a time and never copies
/// what it holds (a mass expiry queues a million records under a shard's lock; a ring buffer
/// that doubles would copy all of them, in one hold, at every doubling).
///
/// Room made ready: a mass expiry writes its records into memory, and memory the process never
/// wrote costs a page fault on first write (about a third of an expiry's time, measured). So
/// the table's owner may ask the queue what room it lacks to take a record for every live
/// session ([`ClosedQueue::want_room`]), make that room outside any lock ([`Room::new`]: chunks
/// allocated and written once) and hand it over ([`ClosedQueue::add_room`]). Chunks read to
/// their end are kept as room while that much is wanted, and given back to the allocator
/// beyond it, so its memory follows what it holds plus what may close.
///
/// An aging pass writes its records into runs (buffers of up to a chunk) and queues a run that
/// holds at least half a chunk as a chunk of its own, without copying it ([`ClosedQueue::adopt`]);
/// the chunk being filled then stays as it is. So the chunks are full but for these: a sparse
/// chunk needs an adopted one of at least half a chunk after it, and the queue's memory is
/// at most four times what its records need, about once in practice.
pub struct ClosedQueue {
    /// Records given back by [`ClosedQueue::restore`], oldest last: they leave first.
    returned: Vec<SessionRecord>,
    chunks: VecDeque<Chunk>,
    /// Empty chunks, ready to take records.
    spare: Vec<Vec<SessionRecord>>,
    /// Chunks (in use and spare) the owner last asked to keep.
    wanted: usize,
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
        ClosedQueue {
            returned: Vec::new(),
            chunks: VecDeque::new(),
            spare: Vec::new(),
            wanted: 0,
            len: 0,
            capacity,
            redelivered: 0,
        }
    }

    /// Asks the queue to keep room for `more` records beyond those it holds (within its
    /// capacity); returns the chunks of room it lacks for that (make them with [`Room::new`],
    /// outside the table's lock). Spare chunks beyond that room are freed here.
    pub(crate) fn want_room(&mut self, more: usize) -> usize {
        self.wanted = self.len.saturating_add(more).min(self.capacity).div_ceil(CHUNK);
        let have = self.chunks.len() + self.spare.len();
        if have > self.wanted {
            let free = (have - self.wanted).min(self.spare.len());
            self.spare.truncate(self.spare.len() - free);
        }
        self.wanted.saturating_sub(self.chunks.len() + self.spare.len())
    }

    /// Takes room made ready, as much of it as was last wanted (the rest is freed).
    pub(crate) fn add_room(&mut self, room: Room) {
        let lacking = self.wanted.saturating_sub(self.chunks.len() + self.spare.len());
        self.spare.extend(room.0.into_iter().take(lacking));
    }

    /// An empty buffer to write up to a chunk of records into (an aging pass's run): a chunk
    /// of room made ready if any, else a small buffer that grows to a chunk as it fills (a run
    /// of a few records does not hold a chunk's memory). Give it back with
    /// [`ClosedQueue::adopt`] or [`ClosedQueue::recycle`].
    pub(crate) fn chunk(&mut self) -> Vec<SessionRecord> {
        self.spare.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK / 16))
    }

    /// Queues the records of `records` from `head` on, as a chunk of their own, when they are
    /// at least half a chunk (a queue of sparse chunks would hold far more memory than its
    /// records need) and all fit within the capacity; otherwise nothing is queued and `records`
    /// is given back. The caller vouches that they come after everything queued, in order.
    pub(crate) fn adopt(&mut self, records: Vec<SessionRecord>, head: usize) -> Result<(), Vec<SessionRecord>> {
        let n = records.len().saturating_sub(head);
        if n < CHUNK / 2 || self.len + n > self.capacity || records.capacity() != CHUNK {
            return Err(records);
        }
        // An empty last chunk (kept for what comes next) would sit before this one.
        if self.chunks.back().is_some_and(|c| c.head == c.records.len()) {
            if let Some(Chunk { records: empty, .. }) = self.chunks.pop_back() {
                self.recycle(empty);
            }
        }
        self.chunks.push_back(Chunk { records, head });
        self.len += n;
        Ok(())
    }

    /// Takes back a chunk no longer in use: kept as room while room is wanted, freed beyond.
    pub(crate) fn recycle(&mut self, mut records: Vec<SessionRecord>) {
        if records.capacity() == CHUNK && self.chunks.len() + self.spare.len() < self.wanted {
            records.clear();
            self.spare.push(records);
        }
    }

    /// Chunks holding records (or kept for the next, when only one is left).
    #[cfg(test)]
    pub(crate) fn chunks_in_use(&self) -> usize {
        self.chunks.len()
    }

    /// Chunks of room ready and not in use.
    pub fn spare_chunks(&self) -> usize {
        self.spare.len()
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
                let mut records = self.spare.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK));
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
        let mut one = None;
        self.take_into(1, |r| one = r.first().copied());
        one
    }

    /// The records, oldest first, without taking them.
    pub fn iter(&self) -> impl Iterator<Item = &SessionRecord> {
        self.returned.iter().rev().chain(self.chunks.iter().flat_map(|c| &c.records[c.head..]))
    }

    /// The records, oldest first, a run of them at a time (each record given back alone, then
    /// each chunk's unread part), without taking them.
    pub(crate) fn slices(&self) -> impl Iterator<Item = &[SessionRecord]> {
        self.returned.iter().rev().map(std::slice::from_ref).chain(self.chunks.iter().map(|c| &c.records[c.head..]))
    }

    /// Takes up to `max` of the oldest records.
    pub fn take(&mut self, max: usize) -> Vec<SessionRecord> {
        let mut out = Vec::with_capacity(max.min(self.len));
        self.take_into(max, |r| out.extend_from_slice(r));
        out
    }

    /// Drops up to `max` of the oldest records (already copied elsewhere).
    pub(crate) fn discard(&mut self, max: usize) {
        self.take_into(max, |_| {});
    }

    /// Hands up to `max` of the oldest records to `into`, a run of them at a time (records
    /// given back first, then each chunk's unread part as one slice).
    fn take_into(&mut self, max: usize, mut into: impl FnMut(&[SessionRecord])) {
        let mut left = max.min(self.len);
        while left > 0 {
            let Some(r) = self.returned.pop() else { break };
            into(&[r]);
            self.len -= 1;
            left -= 1;
        }
        while left > 0 {
            let several = self.chunks.len() > 1;
            let Some(c) = self.chunks.front_mut() else { break };
            let k = left.min(c.records.len() - c.head);
            if k == 0 {
                // Only the last chunk is ever empty, and then nothing is left to take.
                break;
            }
            into(&c.records[c.head..c.head + k]);
            c.head += k;
            self.len -= k;
            left -= k;
            if c.head < c.records.len() {
                break;
            }
            // Read to its end: a full chunk goes (kept as room while room is wanted); the last
            // one is kept for what comes next.
            if several || c.records.len() == CHUNK {
                if let Some(Chunk { records, .. }) = self.chunks.pop_front() {
                    self.recycle(records);
                }
            } else {
                c.records.clear();
                c.head = 0;
            }
        }
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

/// Room for closed records, made outside any lock: chunks allocated and written once, so that
/// records written into them later cost no page fault.
pub struct Room(Vec<Vec<SessionRecord>>);

impl Room {
    /// `chunks` chunks of [`CHUNK`] records each.
    pub fn new(chunks: usize) -> Room {
        use opof_proto::domain::{CloseCode, Counters, SessionState, Timestamp};
        // Written with a record that is not all zeros: an allocation followed by zeroing may be
        // compiled into a zeroed allocation, which leaves fresh pages untouched.
        let filler = SessionRecord {
            id: u64::MAX,
            counters: Counters::default(),
            state: SessionState::Closed,
            close_code: CloseCode::Timeout,
            start: Timestamp(u64::MAX),
            end: None,
        };
        Room(
            (0..chunks)
                .map(|_| {
                    let mut records: Vec<SessionRecord> = Vec::with_capacity(CHUNK);
                    // Written, never read: every page of the chunk is mapped from here on.
                    records.spare_capacity_mut().fill(std::mem::MaybeUninit::new(filler));
                    records
                })
                .collect(),
        )
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
        /// chunk boundaries (pushes of up to 3 chunks at once), with room made ready, and with
        /// runs written into its chunks and queued whole (an aging pass's runs: all of them
        /// within the capacity, or record by record as pushes when they do not fit).
        #[test]
        fn behaves_like_a_deque(ops in proptest::collection::vec((0u8..6, 0usize..3 * CHUNK), 1..40), capacity in 1usize..4 * CHUNK) {
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
                    3 => prop_assert_eq!(q.pop_front(), model.pop_front()),
                    4 => {
                        let mut run = q.chunk();
                        prop_assert!(run.is_empty() && run.capacity() <= CHUNK);
                        let n = n % (CHUNK + 1);
                        for _ in 0..n {
                            run.push(record(next));
                            next += 1;
                        }
                        // The first few were queued before (a run merged part of the way).
                        let head = n % 3;
                        let rest = run[head..].to_vec();
                        match q.adopt(run, head) {
                            Ok(()) => {
                                prop_assert!(rest.len() >= CHUNK / 2 && model.len() + rest.len() <= capacity);
                                model.extend(rest);
                            }
                            Err(run) => {
                                // Refused only when sparse, beyond the capacity, or not a chunk.
                                prop_assert!(
                                    rest.len() < CHUNK / 2
                                        || model.len() + rest.len() > capacity
                                        || run.capacity() != CHUNK
                                );
                                for r in &run[head..] {
                                    let kept = model.len() < capacity;
                                    if kept {
                                        model.push_back(*r);
                                    }
                                    prop_assert_eq!(q.push(*r), kept);
                                }
                                q.recycle(run);
                            }
                        }
                    }
                    // Room asked for and made (or not): no record moves.
                    _ => {
                        let lacking = q.want_room(n);
                        if n % 2 == 0 {
                            q.add_room(Room::new(lacking));
                        }
                        prop_assert!(q.spare.len() + q.chunks.len() <= q.wanted.max(q.chunks.len()));
                    }
                }
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.front(), model.front());
                prop_assert!(q.iter().eq(model.iter()), "iter() is not the queue's order");
            }
        }
    }

    /// Room made ready takes the records of a mass close (no chunk allocated under the lock),
    /// comes back as room once read, and is freed when no longer wanted.
    #[test]
    fn room_made_ready_is_used_kept_and_freed() {
        let mut q = ClosedQueue::new(10 * CHUNK);
        assert_eq!(q.want_room(3 * CHUNK - 5), 3);
        q.add_room(Room::new(5));
        assert_eq!(q.spare_chunks(), 3, "only the room wanted is kept");
        assert_eq!(q.want_room(3 * CHUNK - 5), 0);
        for i in 0..3 * CHUNK as u64 - 5 {
            assert!(q.push(record(i)));
        }
        assert_eq!((q.spare_chunks(), q.chunks.len()), (0, 3), "the records went into the room");
        // Still wanted for as many more (sessions still open): read chunks come back as room.
        assert_eq!(q.want_room(3 * CHUNK), 3);
        q.add_room(Room::new(3));
        assert_eq!(q.take(3 * CHUNK).len(), 3 * CHUNK - 5);
        assert_eq!(q.spare_chunks() + q.chunks.len(), 6);
        // Nothing open any more: the spare room goes back to the allocator.
        assert_eq!(q.want_room(0), 0);
        assert_eq!(q.spare_chunks(), 0);
        // More room than the capacity is never wanted.
        assert_eq!(q.want_room(usize::MAX), 10 - q.chunks.len());
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
