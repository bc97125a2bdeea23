//! One device's sessions in several tables (shards), each behind a lock of its own, so that
//! datapath workers look sessions up in parallel and a control-plane call waits for one
//! shard's batch at most, never for every worker.
//!
//! A session lives in the shard its 5-tuple's steering value names ([`crate::datapath::steer`]:
//! direction-free, so both directions of a flow meet the same shard, and computable by the
//! kernel, so that a port's fanout group sends a flow's frames to its shard's worker).
//! What spans shards is done here, sans-IO, on shards the caller has locked:
//! - addSession streams: an id is unique across all shards, the capacity is the device's, and a
//!   stream is still inserted whole or not at all; a request is decided exactly as one table
//!   decides it (see [`SessionTable::begin_add`]);
//! - getAllSessions pages: ids in ascending order across shards;
//! - closed records: oldest first across shards (by end time, then id).
//!
//! A shard's own room is its share of the capacity plus slack (an eighth of the share, at least
//! 256): the seeded hash spreads sessions evenly (at a million sessions in two shards the
//! imbalance is about a thousand), so a shard fills before the device only if the capacity is
//! reached too. A stream that would overfill a shard is refused as one that overfills the
//! device is. Each shard's closed-record queue has the same share plus slack of the queue's
//! capacity (its memory follows what it holds, not its capacity).

use std::ops::{Deref, DerefMut};

use super::*;

/// Most shards a device may have.
pub const MAX_SHARDS: usize = 64;

/// Which shard holds a 5-tuple; shared by the shards' tables (one set of hash keys).
pub struct ShardMap {
    seeds: Seeds,
    steer: SteerKeys,
    mask: usize,
}

impl ShardMap {
    /// `shards` rounded up to a power of two, between 1 and [`MAX_SHARDS`].
    pub fn new(shards: usize) -> Self {
        let n = shards.clamp(1, MAX_SHARDS).next_power_of_two();
        ShardMap { seeds: Seeds::random(), steer: SteerKeys::random(), mask: n - 1 }
    }

    /// The keys of the steering hash that chooses a flow's shard (for the kernel's program).
    pub fn steering(&self) -> SteerKeys {
        self.steer
    }

    pub fn count(&self) -> usize {
        self.mask + 1
    }

    /// The shard of a 5-tuple (the same for both directions).
    #[inline]
    pub fn of(&self, t: &FiveTuple) -> usize {
        if self.mask == 0 {
            return 0;
        }
        self.shard(&self.key(t))
    }

    /// A 5-tuple's key and hash in every shard's table.
    #[inline]
    pub fn key(&self, t: &FiveTuple) -> PacketKey {
        let key = AnyKey::of(t);
        PacketKey { key, hash: key.hash(&self.seeds) }
    }

    /// The shard of a keyed packet.
    #[inline]
    pub fn shard(&self, k: &PacketKey) -> usize {
        self.shard_of_key(&k.key)
    }

    /// A datapath packet's hash in every shard's table (a batch hashes each packet once: to
    /// choose its shard and to look it up there).
    #[inline]
    pub fn hash(&self, p: &PacketIn) -> u64 {
        p.key.hash(&self.seeds)
    }

    /// The shard of a datapath packet.
    #[inline]
    pub fn shard_of(&self, p: &PacketIn) -> usize {
        self.shard_of_key(&p.key)
    }

    #[inline(always)]
    fn shard_of_key(&self, k: &AnyKey) -> usize {
        if self.mask == 0 {
            return 0;
        }
        k.steer(&self.steer) as usize & self.mask
    }

    /// The configuration of one shard of a device configured with `config`.
    pub fn shard_config(&self, config: &TableConfig) -> TableConfig {
        let n = self.count();
        if n == 1 {
            return config.clone();
        }
        let room = |total: usize| {
            let share = total.div_ceil(n);
            total.min(share + (share / 8).max(256))
        };
        TableConfig {
            capacity: room(config.capacity),
            closed_queue_capacity: room(config.closed_queue_capacity),
            ..config.clone()
        }
    }

    /// The shards' tables, empty.
    pub fn tables(&self, config: &TableConfig) -> Result<Vec<SessionTable>, ConfigError> {
        config.validate()?;
        (0..self.count()).map(|_| SessionTable::with_seeds(self.shard_config(config), self.seeds.clone())).collect()
    }
}

/// A packet's 5-tuple as the tables key it, with its hash (see [`ShardMap::key`]).
#[derive(Clone, Copy)]
pub struct PacketKey {
    pub(super) key: AnyKey,
    pub(super) hash: u64,
}

/// An addSession stream being committed across shards (see [`begin_add`]).
#[derive(Debug)]
pub struct ShardedCommit {
    out: AddOutcome,
    next: usize,
}

/// Is `id` in any shard but `except`?
fn has_id<G: Deref<Target = SessionTable>>(shards: &[G], id: SessionId, except: Option<usize>) -> bool {
    shards.iter().enumerate().any(|(k, t)| Some(k) != except && t.ids.contains(id))
}

/// Decides an addSession stream's capacity on shards that are all locked and aged to `now`:
/// `Err` with every request flagged `_SESSION_TABLE_FULL` (or its own refusal) when its new
/// sessions do not fit in `capacity` (the device's) or would overfill a shard. The caller
/// commits one stream at a time (nothing else inserts until [`finish_add`]).
pub fn begin_add<G: DerefMut<Target = SessionTable>>(
    shards: &mut [G],
    map: &ShardMap,
    capacity: usize,
    requests: &[Candidate],
    now: Timestamp,
) -> Result<ShardedCommit, AddOutcome> {
    let out = AddOutcome { status: AddStatus::Accepted, error_bits: 0, errors: Vec::new(), start: now };
    let len: usize = shards.iter().map(|t| t.len()).sum();
    let over = |fresh: &[usize]| {
        len + fresh.iter().sum::<usize>() > capacity
            || shards.iter().zip(fresh).any(|(t, k)| t.len() + k > t.config.capacity)
    };
    // Far from full (the common case): no shard could overflow even if every request went
    // to it, and no request needs hashing here.
    let n_valid = requests.iter().filter(|c| shards[0].valid(c).is_some()).count();
    if len + n_valid <= capacity && shards.iter().all(|t| t.len() + n_valid <= t.config.capacity) {
        return Ok(ShardedCommit { out, next: 0 });
    }
    let mut fresh = vec![0; shards.len()];
    for c in requests {
        if let Some(s) = shards[0].valid(c) {
            fresh[map.of(&s.tuple)] += 1;
        }
    }
    if !over(&fresh) {
        return Ok(ShardedCommit { out, next: 0 });
    }
    // Duplicates are not inserted, so count exactly what would be (as one table does).
    let verdicts = stream_verdicts(
        requests,
        |c| shards[0].valid(c),
        |s| has_id(shards, s.id, None) || shards[map.of(&s.tuple)].contains_tuple(&s.tuple),
    );
    fresh.iter_mut().for_each(|k| *k = 0);
    for (c, v) in requests.iter().zip(&verdicts) {
        if let (Candidate::Valid(s), AddStatus::Accepted) = (c, v) {
            fresh[map.of(&s.tuple)] += 1;
        }
    }
    if !over(&fresh) {
        return Ok(ShardedCommit { out, next: 0 });
    }
    shards[0].stats.refused += requests.len() as u64;
    Err(refuse_whole(out, requests, &verdicts))
}

/// Inserts up to `max` more requests of a stream begun with [`begin_add`] (the same
/// `requests`), on shards that are all locked; `true` once every request was handled.
pub fn continue_add<G: DerefMut<Target = SessionTable>>(
    shards: &mut [G],
    map: &ShardMap,
    commit: &mut ShardedCommit,
    requests: &[Candidate],
    max: usize,
) -> bool {
    let now = commit.out.start;
    let end = commit.next.saturating_add(max).min(requests.len());
    // Each insert first reads its tuple's index slot, a cache miss in a large table: the slot of
    // the request INSERT_AHEAD places on is requested before each insert, so the misses of
    // several inserts overlap instead of following one another.
    let prefetch = |shards: &[G], j: usize| {
        if let Some(tuple) = tuple_ahead(requests, j, end) {
            let pk = map.key(tuple);
            shards[map.shard(&pk)].tuples.prefetch(pk.hash);
        }
    };
    for j in commit.next..end.min(commit.next + INSERT_AHEAD) {
        prefetch(shards, j);
    }
    for (i, c) in requests.iter().enumerate().take(end).skip(commit.next) {
        prefetch(shards, i + INSERT_AHEAD);
        let Some(s) = shards[0].valid(c) else {
            fail(&mut commit.out, i, c.id(), AddStatus::Rejected);
            continue;
        };
        // One hash: the shard's choice and its index's key.
        let pk = map.key(&s.tuple);
        let k = map.shard(&pk);
        // The id is unique across shards: the other shards are asked, and the session's own
        // shard answers with its insert (a duplicate id or tuple is `_ALREADY_EXISTS` either
        // way, and nothing is inserted).
        let elsewhere = has_id(shards, s.id, Some(k));
        let t = &mut *shards[k];
        if elsewhere || t.find_any(&pk.key, pk.hash).is_some() || !t.insert_unless_id_taken(&s, pk.hash, now) {
            fail(&mut commit.out, i, s.id, AddStatus::AlreadyExists);
        } else {
            t.stats.added += 1;
        }
    }
    commit.next = end;
    end == requests.len()
}

/// How many requests ahead of its insert a stream's commit requests a tuple's index slot.
pub(super) const INSERT_AHEAD: usize = 8;

/// The answer to a stream whose requests were all handled (refusals counted on shard 0).
pub fn finish_add(first: &mut SessionTable, commit: ShardedCommit) -> AddOutcome {
    let ShardedCommit { mut out, .. } = commit;
    first.stats.refused += out.errors.len() as u64;
    out.status = stream_status(&out.errors);
    out
}

/// One page of getAllSessions across shards aged to the time of the call: ids ascending, as
/// one table pages them ([`SessionTable::page`]).
pub fn page<G: Deref<Target = SessionTable>>(shards: &[G], args: &PageArgs) -> SessionPage {
    let max_page = shards[0].config.max_page;
    let (limit, skip) = if args.page_size == 0 {
        (max_page, 0)
    } else {
        let size = args.page_size as usize;
        (size.min(max_page), (args.page.max(1) as usize - 1).saturating_mul(size))
    };
    let mut runs: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(k, t)| t.ids.range_from(args.start_session).map(move |(id, h)| (id, h, k)).peekable())
        .collect();
    let mut merged = std::iter::from_fn(|| {
        let (k, _) = runs.iter_mut().enumerate().filter_map(|(k, r)| r.peek().map(|x| (k, x.0))).min_by_key(|x| x.1)?;
        runs[k].next()
    })
    .skip(skip);
    let total: usize = shards.iter().map(|t| t.len()).sum();
    let mut records = Vec::with_capacity(limit.min(total));
    for (_, h, k) in merged.by_ref().take(limit) {
        if let Some(r) = with_entry!(shards[k].stores, h, e, c => e.record(c)) {
            records.push(r);
        }
    }
    let next_key = merged.next().map_or(0, |(id, _, _)| id);
    SessionPage { records, next_key }
}

/// Takes up to `max` closed records from the shards' queues, oldest first (by end time, then
/// id: each queue is in that order, and the heads are merged). Each record is copied once:
/// chosen where it lies in its queue and copied straight into the result; the records taken
/// then leave their queues without a second copy. (Before, each shard's part was taken out as
/// a copy and the parts merged into a third place: a million records due together spent a
/// quarter of their reader's time in that second copy.)
pub fn take_closed<G: DerefMut<Target = SessionTable>>(shards: &mut [G], max: usize) -> Vec<SessionRecord> {
    if let [only] = shards {
        return only.closed.take(max);
    }
    let queued: usize = shards.iter().map(|t| t.closed.len()).sum();
    let mut out = Vec::with_capacity(max.min(queued));
    let mut counts = vec![0usize; shards.len()];
    {
        let mut fronts: Vec<Front> = shards.iter().map(|t| Front::of(t.closed.slices())).collect();
        while out.len() < max {
            let mut oldest: Option<(ClosingKey, usize, &SessionRecord)> = None;
            for (k, f) in fronts.iter_mut().enumerate() {
                if let Some(r) = f.peek() {
                    let key = closing_order(r);
                    if oldest.is_none_or(|(o, _, _)| key < o) {
                        oldest = Some((key, k, r));
                    }
                }
            }
            let Some((_, k, r)) = oldest else { break };
            out.push(*r);
            fronts[k].at += 1;
            counts[k] += 1;
        }
    }
    for (t, n) in shards.iter_mut().zip(counts) {
        t.closed.discard(n);
    }
    out
}

/// A shard's queue as [`take_closed`] walks it: its runs of records and where it is.
struct Front<'q> {
    runs: Vec<&'q [SessionRecord]>,
    run: usize,
    at: usize,
}

impl<'q> Front<'q> {
    fn of(runs: impl Iterator<Item = &'q [SessionRecord]>) -> Self {
        Front { runs: runs.filter(|r| !r.is_empty()).collect(), run: 0, at: 0 }
    }

    /// The next record, if any.
    fn peek(&mut self) -> Option<&'q SessionRecord> {
        loop {
            let run = self.runs.get(self.run)?;
            if let Some(r) = run.get(self.at) {
                return Some(r);
            }
            self.run += 1;
            self.at = 0;
        }
    }
}

/// The shards' counters added up.
pub fn total_stats(stats: impl IntoIterator<Item = TableStats>) -> TableStats {
    stats.into_iter().fold(TableStats::default(), |a, b| TableStats {
        sessions: a.sessions + b.sessions,
        added: a.added + b.added,
        refused: a.refused + b.refused,
        deleted: a.deleted + b.deleted,
        closed_finack: a.closed_finack + b.closed_finack,
        closed_rst: a.closed_rst + b.closed_rst,
        closed_timeout: a.closed_timeout + b.closed_timeout,
        closed_queued: a.closed_queued + b.closed_queued,
        closed_overflow: a.closed_overflow + b.closed_overflow,
        closed_redelivered: a.closed_redelivered + b.closed_redelivered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::TableConfig;
    use opof_proto::domain::{CloseCode, Counters, SessionState, Timestamp};
    use proptest::prelude::*;

    proptest! {
        /// Records taken across shards in batches of any size come out as one sorted sequence
        /// (by end, then id), each exactly once, whatever each shard holds.
        #[test]
        fn closed_records_leave_shards_oldest_first(
            shards in proptest::collection::vec(proptest::collection::vec((0u64..50, 0u64..1_000), 0..3000), 1..5),
            batches in proptest::collection::vec(1usize..2500, 1..12),
        ) {
            let mut tables: Vec<SessionTable> =
                shards.iter().map(|_| SessionTable::new(TableConfig::default()).unwrap()).collect();
            let mut all = Vec::new();
            for (t, records) in tables.iter_mut().zip(&shards) {
                // A shard's queue is in close order: by end, then id.
                let mut records: Vec<SessionRecord> = records
                    .iter()
                    .map(|&(end, id)| SessionRecord {
                        id,
                        counters: Counters::default(),
                        state: SessionState::Closed,
                        close_code: CloseCode::Timeout,
                        start: Timestamp(0),
                        end: Some(Timestamp(end)),
                    })
                    .collect();
                records.sort_by_key(closing_order);
                for r in &records {
                    prop_assert!(t.closed().push(*r));
                }
                all.extend(records);
            }
            all.sort_by_key(closing_order);
            let mut taken = Vec::new();
            let mut guards: Vec<&mut SessionTable> = tables.iter_mut().collect();
            for max in batches {
                let got = take_closed(&mut guards, max);
                prop_assert_eq!(got.len(), max.min(all.len() - taken.len()));
                taken.extend(got);
            }
            taken.extend(take_closed(&mut guards, usize::MAX));
            prop_assert_eq!(taken.iter().map(closing_order).collect::<Vec<_>>(), all.iter().map(closing_order).collect::<Vec<_>>());
        }
    }
}
