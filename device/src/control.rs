//! The control plane: the SessionTable gRPC service, every flavour over one backend.
//!
//! [`Device`] owns the session table behind one mutex and the clock. Each RPC converts the wire
//! messages outside the lock. An addSession stream takes the lock once to decide its capacity
//! (and reserve it), then once per [`COMMIT_CHUNK`] inserts, handing the lock over fairly in
//! between, so a 10,000-session commit is 40 short critical sections and unary calls are never
//! stuck behind it. [`SessionTableService`] implements the
//! generated server traits of `openoffload.v1`, `openoffload.v2` and `openoffload.v1alpha5`;
//! they share Rust message types, so the three are the same code behind different paths.
//!
//! Errors become gRPC statuses here, and only here.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use opof_proto::domain::{AddOutcome, AddStatus, PageArgs, SessionId, SessionPage, SessionRecord, SessionSpec};
use opof_proto::openoffload::{v1, v1alpha5, v2};
use opof_proto::{convert, wire};
use parking_lot::{Mutex, MutexGuard};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::datapath::Decision;
use crate::faults::{Fault, Faults};
use crate::table::shards::{self, ShardMap};
use crate::table::{Candidate, ConfigError, Room, SessionTable, TableConfig, TableStats};
use crate::tls::ServerTls;

/// A shard's lock on a cache line of its own (two workers taking two shards' locks do not
/// fight over one line).
#[repr(align(128))]
struct Shard(Mutex<SessionTable>);

/// The device's state shared by the gRPC service, the aging tasks and the datapath workers.
///
/// The sessions are in one or more shards (by 5-tuple hash, see [`crate::table::shards`]),
/// each a [`SessionTable`] behind a lock of its own: a datapath batch takes each shard it
/// touches once, one after another, and never holds two; a call that spans shards (addSession,
/// getAllSessions, getClosedSessions) takes them in index order.
pub struct Device {
    shards: Box<[Shard]>,
    map: ShardMap,
    /// Held by an addSession stream for its whole commit: ids are unique across shards and the
    /// capacity is decided once per stream.
    adding: Mutex<()>,
    /// Where the gRPC handlers' addSession streams wait their turn to commit, without holding
    /// a runtime thread (see [`Device::add_queued`]).
    commit_queue: tokio::sync::Mutex<()>,
    clock: Arc<dyn Clock>,
    /// Woken whenever records are queued for getClosedSessions.
    closed: Arc<Notify>,
    /// Set whenever records may have been queued (with every wake-up of `closed`, after the
    /// records are in their queue), cleared by a reader about to take them all: a reader that
    /// finds it clear has nothing to take and takes no lock. (A reader polling an idle device,
    /// or a device busy with a mass expiry whose records are not queued yet, otherwise took
    /// every shard's lock each time, and the aging tasks handed their locks to it and waited.)
    closed_queued: AtomicBool,
    config: TableConfig,
    /// Defects to imitate (conformance-suite testing only; see [`crate::faults`]).
    faults: Faults,
    /// Set when a fault made the device "crash": every call then fails as if it were gone.
    crashed: tokio::sync::watch::Sender<bool>,
    /// The longest time a shard's lock was held by one call, in nanoseconds.
    longest_hold: AtomicU64,
}

/// A shard's lock, held with the shard aged to `now` (since `held`); `closed`: sessions the
/// last aging step closed (readers not woken for them yet); `total`: all the steps closed.
struct Aged<'a> {
    t: MutexGuard<'a, SessionTable>,
    held: Instant,
    now: opof_proto::domain::Timestamp,
    closed: usize,
    total: usize,
}

/// Units of aging work (a timer element visited, with its session closed when due, or a
/// closed record queued: tens of nanoseconds to about 150 each) done in one hold of a shard's
/// lock: a mass expiry is closed in steps of a few milliseconds, and whoever waits for the
/// lock (a datapath batch, a getSession) waits for one step, not for the whole expiry.
pub const AGING_STEP: usize = 4_096;

type Guards<'a> = Vec<MutexGuard<'a, SessionTable>>;

impl Device {
    pub fn new(config: TableConfig, clock: Arc<dyn Clock>) -> Result<Arc<Self>, ConfigError> {
        Self::with_fault(config, clock, None)
    }

    /// A device that imitates `faults`, to check that the conformance suite catches them.
    pub fn with_fault(
        config: TableConfig,
        clock: Arc<dyn Clock>,
        faults: impl Into<Faults>,
    ) -> Result<Arc<Self>, ConfigError> {
        Self::sharded(config, clock, faults, 1)
    }

    /// A device whose sessions are in `shards` tables (rounded up to a power of two, at most
    /// [`crate::table::shards::MAX_SHARDS`]); `opof device` makes one per datapath worker.
    pub fn sharded(
        config: TableConfig,
        clock: Arc<dyn Clock>,
        faults: impl Into<Faults>,
        shards: usize,
    ) -> Result<Arc<Self>, ConfigError> {
        let faults = faults.into();
        let map = ShardMap::new(shards);
        let tables = map.tables(&config)?;
        for f in faults.iter() {
            warn!(fault = %f, "FAULT INJECTION: this device imitates a defect ({}); use it only to test the conformance suite", f.description());
        }
        let (crashed, _) = tokio::sync::watch::channel(false);
        let shards = tables
            .into_iter()
            .map(|mut t| {
                t.imitate(crate::table::Quirks::of(faults));
                Shard(Mutex::new(t))
            })
            .collect();
        Ok(Arc::new(Device {
            shards,
            map,
            adding: Mutex::new(()),
            commit_queue: tokio::sync::Mutex::new(()),
            clock,
            closed: Arc::new(Notify::new()),
            closed_queued: AtomicBool::new(true),
            config,
            faults,
            crashed,
            longest_hold: AtomicU64::new(0),
        }))
    }

    pub fn faults(&self) -> Faults {
        self.faults
    }

    fn has(&self, f: Fault) -> bool {
        self.faults.contains(f)
    }

    /// Stops answering, as a process that died would ([`Fault::CrashOnLargePage`]).
    fn crash(&self, why: &str) {
        tracing::error!("FAULT INJECTION: the device crashes: {why}");
        self.crashed.send_replace(true);
    }

    pub fn is_crashed(&self) -> bool {
        *self.crashed.borrow()
    }

    /// Completes when the device has crashed (never for a correct device).
    pub async fn crashed(&self) {
        let mut rx = self.crashed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// How many shards the sessions are in.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The shard holding a 5-tuple's session (the same for both directions).
    pub fn shard_of(&self, t: &opof_proto::domain::FiveTuple) -> usize {
        self.map.of(t)
    }

    /// The keys of the hash that chooses a flow's shard: given to the datapath's ports, they
    /// steer each flow's frames to the worker of its shard (see [`crate::datapath::steer`]).
    pub fn steering(&self) -> crate::datapath::steer::SteerKeys {
        self.map.steering()
    }

    fn lock(&self, k: usize) -> MutexGuard<'_, SessionTable> {
        self.shards[k].0.lock()
    }

    /// Every shard's lock, in index order, without aging.
    fn lock_all(&self) -> Guards<'_> {
        self.shards.iter().map(|s| s.0.lock()).collect()
    }

    /// Runs `f` on every shard at the clock's current time, all locked (in index order) and
    /// aged to that time; each shard is aged first on its own, in steps.
    fn with_all<R>(&self, f: impl FnOnce(&mut Guards<'_>, opof_proto::domain::Timestamp) -> R) -> R {
        loop {
            for k in 0..self.shards.len() {
                self.advance_shard(k);
            }
            let mut all = self.lock_all();
            let held = Instant::now();
            let now = self.clock.now();
            // Time moved on since the steps: finish here when little is left, else step again.
            if all.iter().all(|t| !t.aging_behind(now)) || self.age_all_once(&mut all, now) {
                let closes = |all: &Guards<'_>| all.iter().map(|t| t.stats().closes()).sum::<u64>();
                let before = closes(&all);
                let r = f(&mut all, now);
                let after = closes(&all);
                self.note_hold(held);
                drop(all);
                if after != before {
                    self.wake_readers();
                }
                return r;
            }
            self.note_hold(held);
        }
    }

    /// One aging step on each shard of `all` that is behind `now`; `true` when that brought
    /// every shard to `now`.
    fn age_all_once(&self, all: &mut Guards<'_>, now: opof_proto::domain::Timestamp) -> bool {
        let mut done = true;
        let mut closed = 0;
        for t in all.iter_mut() {
            if t.aging_behind(now) {
                let (n, finished) = t.age(now, AGING_STEP);
                closed += n;
                done &= finished;
            }
        }
        if closed > 0 {
            self.wake_readers();
        }
        done
    }

    /// Runs `f` on shard `k` at the clock's current time, under one lock, and wakes
    /// closed-session readers if anything closed meanwhile.
    ///
    /// The shard is aged to that time first, [`AGING_STEP`] units per hold of the lock: a step
    /// that does not finish hands the lock over fairly and takes it again, so no hold is longer
    /// than one step (plus `f`).
    fn with_shard<R>(&self, k: usize, f: impl FnOnce(&mut SessionTable, opof_proto::domain::Timestamp) -> R) -> R {
        self.run_aged(self.lock(k), k, f)
    }

    /// [`Device::with_shard`] with shard `k`'s lock already taken (`t`).
    fn run_aged<R>(
        &self,
        t: MutexGuard<'_, SessionTable>,
        k: usize,
        f: impl FnOnce(&mut SessionTable, opof_proto::domain::Timestamp) -> R,
    ) -> R {
        let Aged { mut t, held, now, closed: aged, .. } = self.aged(t, k);
        let before = t.stats();
        let r = f(&mut t, now);
        let after = t.stats();
        self.note_hold(held);
        drop(t);
        if aged > 0 || after.closes() != before.closes() {
            self.wake_readers();
        }
        self.warn_overflow(&before, &after);
        r
    }

    fn warn_overflow(&self, before: &TableStats, after: &TableStats) {
        if after.closed_overflow != before.closed_overflow {
            warn!(
                dropped = after.closed_overflow - before.closed_overflow,
                dropped_total = after.closed_overflow,
                queue = after.closed_queued,
                "closed-session queue full: newest records dropped (nobody reads getClosedSessions?)"
            );
        }
    }

    /// Shard `k`'s lock (given as `t`), kept once the shard is aged to the clock's time:
    /// [`AGING_STEP`] units per hold, the lock handed over fairly between steps (readers of
    /// closed records woken after each step that closed some).
    fn aged<'a>(&'a self, mut t: MutexGuard<'a, SessionTable>, k: usize) -> Aged<'a> {
        let mut held = Instant::now();
        let mut now = self.clock.now();
        let (mut closed, mut total) = (0, 0);
        while t.aging_behind(now) {
            let (n, done) = t.age(now, AGING_STEP);
            closed += n;
            total += n;
            if done {
                break;
            }
            self.note_hold(held);
            MutexGuard::unlock_fair(t);
            if closed > 0 {
                self.wake_readers();
                closed = 0;
            }
            t = self.lock(k);
            held = Instant::now();
            now = self.clock.now();
        }
        Aged { t, held, now, closed, total }
    }

    /// Decides a batch of frames at the clock's time, as [`crate::datapath::decide_batch`]
    /// does on one table: the packets are grouped by shard and each group is looked up under
    /// its shard's lock (aged first), shards free now before shards another worker holds. A
    /// flow's packets are in one shard and keep their order. `out` receives one decision per
    /// frame.
    pub fn decide_batch<'a, F>(
        &self,
        cfg: &crate::datapath::DatapathConfig,
        frames: F,
        scratch: &mut crate::datapath::Batch,
        out: &mut Vec<Decision>,
    ) where
        F: IntoIterator<Item = (crate::datapath::PortId, &'a [u8])>,
        F::IntoIter: Clone,
    {
        crate::datapath::parse_batch(frames, scratch);
        if !scratch.packets.is_empty() {
            if self.shards.len() == 1 {
                self.with_shard(0, |t, now| {
                    t.packets(&scratch.packets, now, cfg.close_on_tcp_flags, &mut scratch.hits)
                });
            } else {
                self.lookup_sharded(cfg, scratch);
            }
        }
        crate::datapath::finish_batch(cfg, scratch, out);
    }

    /// The lookups of a batch on a sharded table: each packet hashed once (its shard and its
    /// lookup key) and listed under its shard in the same pass; each shard's run looked up in one
    /// hold of its lock, the hits written straight to their places in batch order. A batch of
    /// more than [`LIST_CHUNK`] packets (an in-memory caller may hand over any number) goes in
    /// chunks of that many, one after the other, so the lists' room stays bounded.
    fn lookup_sharded(&self, cfg: &crate::datapath::DatapathConfig, b: &mut crate::datapath::Batch) {
        let len = b.packets.len();
        b.hashes.clear();
        b.hits.clear();
        b.hits.resize(len, crate::table::Hit::NoSession);
        for start in (0..len).step_by(LIST_CHUNK) {
            self.lookup_chunk(cfg, b, start..(start + LIST_CHUNK).min(len));
        }
    }

    /// [`Device::lookup_sharded`] for the packets of `chunk` (places in the batch).
    fn lookup_chunk(
        &self,
        cfg: &crate::datapath::DatapathConfig,
        b: &mut crate::datapath::Batch,
        chunk: std::ops::Range<usize>,
    ) {
        let n = self.shards.len();
        let len = chunk.len();
        // Shard k's packets are listed from k * len in `order` (room for all of them there), in
        // the one pass that hashes them.
        if b.order.len() < n * len {
            b.order.resize(n * len, 0);
        }
        let mut ends = [0usize; crate::table::shards::MAX_SHARDS];
        for (k, end) in ends.iter_mut().enumerate().take(n) {
            *end = k * len;
        }
        let order = &mut b.order;
        b.hashes.extend(b.packets[chunk.clone()].iter().zip(chunk).map(|(p, i)| {
            let hash = self.map.hash(p);
            let end = &mut ends[self.map.shard_of(p)];
            order[*end] = i as u32;
            *end += 1;
            hash
        }));
        // Shard k's run is `order[k * len..ends[k]]`.
        let mut pending: u64 = (0..n).filter(|&k| ends[k] > k * len).fold(0, |m, k| m | 1 << k);
        b.across_shards += u64::from(pending.count_ones() > 1);
        while pending != 0 {
            // A shard nobody holds first. When every one left is held (by another worker's
            // batch, tens of microseconds), spin on them a while rather than sleep in the
            // kernel, then wait for the first. (Shards are a power of two: `& last` wraps.)
            let (first, last) = (b.prefer, n - 1);
            let mut spins = 0;
            let (k, guard) = loop {
                let mut next_pending = (0..n).map(|i| (first + i) & last).filter(|&k| pending & 1 << k != 0);
                if let Some(got) = next_pending.clone().find_map(|k| self.shards[k].0.try_lock().map(|g| (k, g))) {
                    break got;
                }
                spins += 1;
                if spins > SPIN_TRIES {
                    let k = next_pending.next().expect("a shard pending");
                    break (k, self.lock(k));
                }
                std::hint::spin_loop();
            };
            pending &= !(1 << k);
            let run = &b.order[k * len..ends[k]];
            let (packets, hashes, hits) = (&b.packets, &b.hashes, &mut b.hits);
            self.run_aged(guard, k, |t, now| t.packets_hashed(packets, hashes, run, now, cfg.close_on_tcp_flags, hits));
        }
    }

    /// Records were queued (or may have been): tells readers, those waiting and those to come.
    fn wake_readers(&self) {
        self.closed_queued.store(true, Ordering::Release);
        self.closed.notify_waiters();
    }

    fn note_hold(&self, since: Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // Read first: the line stays shared between workers until a hold is a new longest.
        if ns > self.longest_hold.load(Ordering::Relaxed) {
            self.longest_hold.fetch_max(ns, Ordering::Relaxed);
        }
    }

    /// The longest hold of a shard's lock by one call since the last time this was asked.
    pub fn take_longest_hold(&self) -> Duration {
        Duration::from_nanos(self.longest_hold.swap(0, Ordering::Relaxed))
    }

    /// Commits an addSession stream, releasing the shards' locks every [`COMMIT_CHUNK`] inserts
    /// (with a fair hand-off) so unary calls wait for a chunk, not for a whole 10,000-session
    /// stream.
    pub fn add(&self, requests: &[Candidate]) -> AddOutcome {
        if self.has(Fault::DuplicateCheckIgnoresIpv6) || self.has(Fault::DuplicateIdsAllowed) {
            return self.add_each(requests);
        }
        self.add_whole(requests)
    }

    /// [`Device::add`] for async callers (the gRPC handlers): streams wait for their turn in a
    /// FIFO queue that suspends the task, not the thread, so a runtime thread never sleeps on
    /// the commit lock while other calls are ready to run (with 16 streams of 64 sessions on
    /// two cores, threads asleep on it left a sixth of the CPU idle).
    pub async fn add_queued(&self, requests: &[Candidate]) -> AddOutcome {
        let _turn = self.commit_queue.lock().await;
        self.add(requests)
    }

    fn add_whole(&self, requests: &[Candidate]) -> AddOutcome {
        let _one_stream = self.adding.lock();
        let capacity = self.config.capacity;
        let begun = self.with_all(|all, now| shards::begin_add(all, &self.map, capacity, requests, now));
        let mut commit = match begun {
            Ok(c) => c,
            Err(full) if self.has(Fault::PartialInsertWhenFull) => {
                drop(_one_stream);
                return self.add_what_fits(requests, full);
            }
            Err(full) => return full,
        };
        loop {
            let mut all = self.lock_all();
            let held = Instant::now();
            if shards::continue_add(&mut all, &self.map, &mut commit, requests, COMMIT_CHUNK) {
                let out = shards::finish_add(&mut all[0], commit);
                self.note_hold(held);
                return out;
            }
            self.note_hold(held);
            for t in all.into_iter().rev() {
                MutexGuard::unlock_fair(t);
            }
        }
    }
    /// [`Fault::PartialInsertWhenFull`]: inserts the longest prefix of the stream that fits and
    /// flags the rest as `_SESSION_TABLE_FULL`.
    fn add_what_fits(&self, requests: &[Candidate], full: AddOutcome) -> AddOutcome {
        let free = self.config.capacity.saturating_sub(self.stats().sessions);
        let mut fits = 0;
        let mut valid = 0;
        while fits < requests.len() && (valid < free || !matches!(requests[fits], Candidate::Valid(_))) {
            valid += usize::from(matches!(requests[fits], Candidate::Valid(_)));
            fits += 1;
        }
        let mut out = self.add_whole(&requests[..fits]);
        for (i, c) in requests.iter().enumerate().skip(fits) {
            if i < 64 {
                out.error_bits |= 1 << i;
            }
            out.errors.push(opof_proto::domain::AddError { id: c.id(), status: AddStatus::TableFull });
        }
        out.status = full.status;
        out
    }
    /// [`Fault::DuplicateCheckIgnoresIpv6`] and [`Fault::DuplicateIdsAllowed`]: each request
    /// decided and committed alone, the answers merged as one stream's.
    fn add_each(&self, requests: &[Candidate]) -> AddOutcome {
        use opof_proto::domain::AddError;
        let port_key = |s: &SessionSpec| (s.tuple.src_port(), s.tuple.dst_port(), s.tuple.protocol());
        // The port keys of the IPv6 sessions in the table (both orientations).
        let mut v6 = std::collections::HashSet::new();
        if self.has(Fault::DuplicateCheckIgnoresIpv6) {
            let all = PageArgs { page_size: 0, page: 0, start_session: 0, follow: false };
            for r in self.page(&all).records {
                if let Some(s) = self.spec(r.id).filter(|s| !s.tuple.is_ipv4()) {
                    let (a, b, p) = port_key(&s);
                    v6.extend([(a, b, p), (b, a, p)]);
                }
            }
        }
        // Capacity stays all-or-nothing: a stream whose new sessions do not fit is refused whole,
        // as by a correct device.
        let fresh = requests
            .iter()
            .filter(|c| match c {
                Candidate::Valid(s) => {
                    self.get(s.id).is_none()
                        && !(self.has(Fault::DuplicateCheckIgnoresIpv6)
                            && !s.tuple.is_ipv4()
                            && v6.contains(&port_key(s)))
                }
                Candidate::Invalid(_) => false,
            })
            .count();
        if self.stats().sessions + fresh > self.config.capacity {
            return self.add_whole(requests);
        }
        let mut out =
            AddOutcome { status: AddStatus::Accepted, error_bits: 0, errors: Vec::new(), start: self.clock.now() };
        for (i, c) in requests.iter().enumerate() {
            let v6_key = match c {
                Candidate::Valid(s) if self.has(Fault::DuplicateCheckIgnoresIpv6) && !s.tuple.is_ipv4() => {
                    Some(port_key(s))
                }
                _ => None,
            };
            let failed = if v6_key.is_some_and(|k| v6.contains(&k)) {
                Some(AddStatus::AlreadyExists)
            } else {
                if let (Candidate::Valid(s), true) = (c, self.has(Fault::DuplicateIdsAllowed)) {
                    self.remove(s.id);
                }
                self.add_whole(std::slice::from_ref(c)).errors.first().map(|e| e.status)
            };
            match failed {
                Some(status) => {
                    if i < 64 {
                        out.error_bits |= 1 << i;
                    }
                    out.errors.push(AddError { id: c.id(), status });
                }
                None => {
                    if let Some((a, b, p)) = v6_key {
                        v6.extend([(a, b, p), (b, a, p)]);
                    }
                }
            }
        }
        out.status = crate::table::stream_status(&out.errors);
        out
    }

    pub fn get(&self, id: SessionId) -> Option<SessionRecord> {
        // A read, exact without aging (see [`SessionTable::get`]); ids are unique across shards.
        (0..self.shards.len()).find_map(|k| {
            let t = self.lock(k);
            let held = Instant::now();
            let r = t.get(id, self.clock.now());
            self.note_hold(held);
            r
        })
    }
    pub fn delete(&self, id: SessionId) -> Option<SessionRecord> {
        let r = self.remove(id);
        if let (Some(r), true) = (r, self.has(Fault::DeleteQueuesClosed)) {
            self.restore_closed(VecDeque::from([r]), 0);
        }
        r
    }
    /// Takes a session out of whichever shard holds it (each aged first).
    fn remove(&self, id: SessionId) -> Option<SessionRecord> {
        (0..self.shards.len()).find_map(|k| self.with_shard(k, |t, now| t.delete(id, now)))
    }
    pub fn page(&self, args: &PageArgs) -> SessionPage {
        self.with_all(|all, _| shards::page(all, args))
    }
    /// Closes what is due at the clock's time; returns how many sessions closed.
    /// In steps of [`AGING_STEP`] per shard, handing each lock over between them.
    pub fn advance(&self) -> usize {
        (0..self.shards.len()).map(|k| self.advance_shard(k)).sum()
    }
    /// [`Device::advance`] on shard `k` alone.
    pub fn advance_shard(&self, k: usize) -> usize {
        let Aged { t, held, closed, total, .. } = self.aged(self.lock(k), k);
        self.note_hold(held);
        drop(t);
        if closed > 0 {
            self.wake_readers();
        }
        total
    }
    /// Makes room ready for an expiry of shard `k`'s sessions (closed-record chunks, which an
    /// aging pass also writes its runs into; see [`SessionTable::room_lacking`]), at most `most`
    /// chunks per call, allocated and written outside the shard's lock. Returns the chunks
    /// made. (The device's room maker, [`Device::spawn_room_maker`], does the same with its
    /// writes in the idle class.)
    pub fn ready_room(&self, k: usize, most: usize) -> usize {
        self.ready_room_with(k, most, Room::new)
    }

    /// [`Device::ready_room`] with the room made by `make`, outside the lock.
    fn ready_room_with(&self, k: usize, most: usize, make: impl FnOnce(usize) -> Room) -> usize {
        let lacking = self.lock(k).room_lacking().min(most);
        if lacking > 0 {
            let room = make(lacking);
            self.lock(k).add_room(room);
        }
        lacking
    }
    pub fn stats(&self) -> TableStats {
        shards::total_stats((0..self.shards.len()).map(|k| self.with_shard(k, |t, _| t.stats())))
    }
    pub fn spec(&self, id: SessionId) -> Option<SessionSpec> {
        (0..self.shards.len()).find_map(|k| self.with_shard(k, |t, _| t.spec(id)))
    }
    /// Takes up to `max` closed records, oldest first across shards. Aging goes on here by one
    /// step per shard at most: a mass expiry's records come as its steps close them (in the
    /// order one pass would close them), so readers get the first of them after one step, not
    /// after all.
    pub fn take_closed(&self, max: usize) -> Vec<SessionRecord> {
        for k in 0..self.shards.len() {
            // Not on a shard someone holds: its aging task (which tells readers when it has
            // closed sessions) or a datapath batch (which ages it first) is in it. Waiting for
            // it to age it once more made a reader and the aging tasks of a mass expiry hand
            // the locks back and forth, with the cores idle in between.
            if let Some(t) = self.shards[k].0.try_lock() {
                self.age_step_locked(t);
            }
        }
        if !self.closed_queued.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        let mut all = self.lock_all();
        let held = Instant::now();
        let taken = shards::take_closed(&mut all, max);
        if self.has(Fault::ClosedRepeated) {
            all[0].closed().restore(taken.iter().copied());
        }
        if all.iter_mut().any(|t| !t.closed().is_empty()) {
            // Left for the next reader (more than `max`, or given back).
            self.closed_queued.store(true, Ordering::Release);
        }
        self.note_hold(held);
        taken
    }
    /// Ages every shard to the clock's time, whole, then takes up to `max` closed records (a
    /// simulation's reader, which must see every record due by now).
    pub fn drain_closed(&self, max: usize) -> Vec<SessionRecord> {
        self.with_all(|all, _| shards::take_closed(all, max))
    }
    /// Gives back records a stream took and did not deliver; the first `sent` of them it had
    /// sent (they may reach a reader twice). They go to the head of the first shard's queue:
    /// they are older than anything still queued.
    pub(crate) fn restore_closed(&self, records: VecDeque<SessionRecord>, sent: usize) {
        let n = records.len();
        {
            let mut t = self.lock(0);
            t.closed().restore(records.into_iter());
            t.closed().note_redelivered(sent);
        }
        debug!(records = n, sent, "closed-session stream broke before its end; records returned to the queue");
        self.wake_readers();
    }

    /// One aging step of shard `k` toward the clock's time (see [`AGING_STEP`]): the sessions
    /// it closed, and whether the shard is aged to that time.
    pub fn age_step(&self, k: usize) -> (usize, bool) {
        self.age_step_locked(self.lock(k))
    }

    /// [`Device::age_step`] with the shard's lock already taken (`t`).
    fn age_step_locked(&self, mut t: MutexGuard<'_, SessionTable>) -> (usize, bool) {
        let held = Instant::now();
        let now = self.clock.now();
        let r = if t.aging_behind(now) { t.age(now, AGING_STEP) } else { (0, true) };
        self.note_hold(held);
        drop(t);
        if r.0 > 0 {
            self.wake_readers();
        }
        r
    }

    /// Closes idle sessions as real time passes: checks every `period` (10 ms keeps closes
    /// well within the 100 ms promptness of the reference profile), one task per shard, so a
    /// mass expiry is closed on as many cores as there are shards. A task yields to the runtime
    /// after each step, so gRPC calls are served during a long expiry. Ends when the device is
    /// dropped elsewhere and only these tasks hold it, or when the handle is aborted.
    pub fn spawn_aging(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..self.shards.len() {
            let device = Arc::downgrade(self);
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let mut n = 0;
                    loop {
                        let Some(d) = device.upgrade() else { return };
                        let (closed, done) = d.age_step(k);
                        n += closed;
                        drop(d);
                        if done {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    if n > 0 {
                        debug!(closed = n, shard = k, "idle sessions timed out");
                    }
                }
            });
        }
        // Room for expiries, on CPU time nothing else wants.
        let room = self.spawn_room_maker(period);
        // Dropping the set (when this task is aborted) aborts the shards' tasks, and dropping
        // the room maker stops its thread.
        tokio::spawn(async move {
            let _room = room;
            while tasks.join_next().await.is_some() {}
        })
    }

    /// Starts a thread that makes room for expiries (see [`Device::ready_room`]) every
    /// `period`, at most [`ROOM_PER_TICK`] per shard per round, its page writes in the lowest
    /// scheduling class the kernel has (`SCHED_IDLE`: CPU time no other thread wants), and not
    /// for a shard whose sessions grew since the last round: made during a burst of adds, even
    /// from the idle class, the room's page writes took 9 % of addSession's throughput on two
    /// cores. Stops when the handle is dropped or the device is gone.
    pub fn spawn_room_maker(self: &Arc<Self>, period: Duration) -> RoomMaker {
        let device = Arc::downgrade(self);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let run = move || {
            let mut seen: Vec<usize> = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(period);
                let Some(d) = device.upgrade() else { return };
                seen.resize(d.shards.len(), 0);
                for (k, seen) in seen.iter_mut().enumerate() {
                    // Not while sessions are being added: the room's page writes slow the adds
                    // down even from the idle class (they share the process's memory map and
                    // the caches); it is made once the shard stops growing.
                    let len = d.lock(k).len();
                    let growing = len > *seen;
                    *seen = len;
                    if growing {
                        continue;
                    }
                    // The locks are taken at normal priority (a thread of the idle class holding
                    // one could be kept off the CPU while the datapath waits for it); only the
                    // room's writes run in the idle class.
                    d.ready_room_with(k, ROOM_PER_TICK, |need| {
                        idle_class(true);
                        let room = Room::new(need);
                        idle_class(false);
                        room
                    });
                }
            }
        };
        if let Err(e) = std::thread::Builder::new().name("opof-room".into()).spawn(run) {
            warn!(error = %e, "no thread to make room for expiries: they will map their memory as they go");
        }
        RoomMaker { stop }
    }
}

/// The thread of [`Device::spawn_room_maker`]: stops when this is dropped.
pub struct RoomMaker {
    stop: Arc<AtomicBool>,
}

impl Drop for RoomMaker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Puts the calling thread in the idle scheduling class, or back in the normal one (where the
/// kernel refuses, it stays as it is: the work is the same, only less polite).
fn idle_class(idle: bool) {
    let (policy, name) = if idle { (libc::SCHED_IDLE, "idle") } else { (libc::SCHED_OTHER, "normal") };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param` and changes only the calling thread (pid 0).
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc != 0 {
        debug!(error = %std::io::Error::last_os_error(), class = name, "room maker's scheduling class unchanged");
    }
}

/// Room the room maker makes ready per round and shard (see [`Device::spawn_room_maker`]): 64
/// closed-record chunks, 4.5 MiB (a millisecond or so of its thread, outside the shard's
/// lock): with rounds of 10 ms, room for 6.5 M sessions per second and shard.
pub const ROOM_PER_TICK: usize = 64;

/// Packets of a sharded batch listed by shard at a time (see `Device::lookup_sharded`): the
/// lists' room is at most shards × this many places.
const LIST_CHUNK: usize = 1024;

/// Rounds a datapath batch tries the shards it needs (each a few tens of nanoseconds) before
/// it waits for one in the kernel.
const SPIN_TRIES: u32 = 2_000;

/// Inserts per lock hold while committing a stream (about 100 µs of work).
pub const COMMIT_CHUNK: usize = 256;

/// The `grpc-timeout` of a call: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Records per lock taken by a getClosedSessions stream.
const CLOSED_BATCH: usize = 1024;
/// Records a follow-mode stream sends before it ends (cleanly, confirming them) and the reader
/// opens the next.
pub const FOLLOW_SEGMENT: usize = 4096;

/// The server stream of getClosedSessions, which delivers each record at least once.
///
/// A stream dropped before its end (client gone, cancelled, connection reset) gives back
/// everything it took — sent or not — to the head of the queue, in order; the records it had
/// sent are counted as redelivered, and a reader may see them a second time (their session ids
/// tell it so). A stream that ran to its end hands what it sent to its connection, which holds
/// it until the reader comes back for more (see `crate::conn`): the reader's next call is the
/// confirmation. So a follow-mode stream is cut into segments: it ends cleanly once it has sent
/// what was queued (or [`FOLLOW_SEGMENT`] records), and the reader opens the next one.
struct ClosedStream {
    device: Arc<Device>,
    /// Taken from the queue, not yet sent.
    buf: VecDeque<SessionRecord>,
    /// Sent on this stream, not yet confirmed by its end.
    sent: VecDeque<SessionRecord>,
    /// Records still allowed on this stream (`None`: unbounded, follow mode).
    remaining: Option<usize>,
    follow: bool,
    wake: Option<Pin<Box<tokio::sync::futures::OwnedNotified>>>,
    /// The stream ran to its end: what it sent is delivered.
    ended: bool,
    /// The connection carrying the stream: it holds what the stream delivered until the reader
    /// is known to have read it (see `crate::conn`).
    conn: Option<Arc<crate::conn::ConnState>>,
}

impl ClosedStream {
    fn end(&mut self) -> Poll<Option<Result<wire::SessionResponse, Status>>> {
        self.ended = true;
        let sent = std::mem::take(&mut self.sent);
        if let Some(c) = &self.conn {
            c.hold(sent);
        }
        Poll::Ready(None)
    }
}

impl Stream for ClosedStream {
    type Item = Result<wire::SessionResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            if this.follow && this.sent.len() >= FOLLOW_SEGMENT {
                return this.end();
            }
            if let Some(r) = this.buf.pop_front() {
                let out = (&r).into();
                this.sent.push_back(r);
                return Poll::Ready(Some(Ok(out)));
            }
            if this.remaining == Some(0) {
                return this.end();
            }
            if this.follow && this.wake.is_none() {
                // Register before looking at the queue, so no close can slip in between.
                let mut w = Box::pin(this.device.closed.clone().notified_owned());
                w.as_mut().enable();
                this.wake = Some(w);
            }
            let room = if this.follow { FOLLOW_SEGMENT - this.sent.len() } else { usize::MAX };
            let want = this.remaining.unwrap_or(usize::MAX).min(CLOSED_BATCH).min(room);
            let batch = this.device.take_closed(want);
            if !batch.is_empty() {
                if let Some(r) = this.remaining.as_mut() {
                    *r -= batch.len();
                }
                this.buf.extend(batch);
                continue;
            }
            // Nothing queued: the end of a plain stream, and of a follow segment that sent
            // something (confirming it); an empty follow segment waits for closes.
            if !this.follow || !this.sent.is_empty() {
                return this.end();
            }
            match this.wake.as_mut().map(|w| w.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => this.wake = None,
                _ => return Poll::Pending,
            }
        }
    }
}

impl Drop for ClosedStream {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let sent = self.sent.len();
        if sent + self.buf.len() > 0 {
            let mut back = std::mem::take(&mut self.sent);
            back.extend(std::mem::take(&mut self.buf));
            self.device.restore_closed(back, sent);
        }
    }
}

/// The SessionTable service over one [`Device`]; clone it once per flavour.
#[derive(Clone)]
pub struct SessionTableService {
    device: Arc<Device>,
    /// Requests held by addSession streams not yet committed, across all streams, and the most
    /// allowed: what bounds the memory open streams hold (a stream alone is bounded by the
    /// table's capacity).
    pending: Arc<std::sync::atomic::AtomicUsize>,
    max_pending: usize,
}

/// Requests a stream holds, given back to the shared count when the stream is done.
struct Pending<'a> {
    count: &'a std::sync::atomic::AtomicUsize,
    mine: usize,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(self.mine, std::sync::atomic::Ordering::Relaxed);
    }
}

impl SessionTableService {
    pub fn new(device: Arc<Device>) -> Self {
        let max_pending = 2 * device.config.capacity;
        Self::with_pending_limit(device, max_pending)
    }

    /// A service whose open addSession streams hold at most `max_pending` requests in all.
    pub fn with_pending_limit(device: Arc<Device>, max_pending: usize) -> Self {
        SessionTableService { device, pending: Arc::default(), max_pending }
    }

    async fn add_session(
        &self,
        request: Request<Streaming<wire::SessionRequest>>,
    ) -> Result<Response<wire::AddSessionResponse>, Status> {
        // The client's deadline (grpc-timeout) bounds the whole stream: a stream still open when
        // it passes is answered DEADLINE_EXCEEDED and inserts nothing, whatever comes later.
        let deadline = grpc_timeout(request.metadata()).map(|t| tokio::time::Instant::now() + t);
        let mut stream = request.into_inner();
        self.alive()?;
        let limit = self.device.config.capacity;
        let mut requests = Vec::new();
        let mut held = Pending { count: &self.pending, mine: 0 };
        // Fault::NoValidation: positions of invalid requests answered as accepted, not stored.
        let mut silently_dropped = Vec::new();
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, stream.message()).await {
                    Ok(next) => next,
                    Err(_) => {
                        crate::conn::refused(crate::conn::Refusal::Deadline);
                        return Err(Status::deadline_exceeded(format!(
                            "addSession: the deadline passed after {} requests, before the end of the stream; \
                             nothing was inserted",
                            requests.len()
                        )));
                    }
                },
                None => stream.message().await,
            };
            match next {
                Ok(Some(mut r)) => {
                    if !self.device.faults.is_empty() {
                        for f in self.device.faults.iter() {
                            misread_request(f, &mut r, self.device.config.max_cache_timeout);
                        }
                    }
                    if requests.len() == limit {
                        crate::conn::refused(crate::conn::Refusal::OverCapacity);
                        return Err(Status::resource_exhausted(format!(
                            "addSession: the stream holds more than {limit} requests, the table's capacity; \
                             nothing was inserted"
                        )));
                    }
                    let all = self.pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    held.mine += 1;
                    if all > self.max_pending {
                        crate::conn::refused(crate::conn::Refusal::PendingRequests);
                        return Err(Status::resource_exhausted(format!(
                            "addSession: open addSession streams hold {} requests, the most this device buffers; \
                             nothing of this stream was inserted (retry when fewer streams are open)",
                            self.max_pending
                        )));
                    }
                    requests.push(match SessionSpec::try_from(&r) {
                        Ok(spec) => Candidate::Valid(spec),
                        Err(_) if self.device.has(Fault::NoValidation) => {
                            silently_dropped.push(requests.len());
                            Candidate::Invalid(r.session_id)
                        }
                        Err(e) => {
                            debug!(session = r.session_id, index = requests.len(), error = %e, "addSession request refused");
                            Candidate::Invalid(r.session_id)
                        }
                    });
                }
                Ok(None) => break,
                Err(status) => {
                    return Err(Status::new(
                        status.code(),
                        format!(
                            "addSession: the request stream failed after {} requests ({}); nothing was inserted",
                            requests.len(),
                            status.message()
                        ),
                    ))
                }
            }
        }
        // hyper reports a client's RST_STREAM(CANCEL) as a clean end of the request body, so the
        // end of the stream alone does not prove the client finished it. Yielding once lets
        // hyper look for a reset of this stream: if there was one, it drops this call here and
        // nothing is inserted.
        if self.device.has(Fault::CancelledStreamInserts) {
            // Commit at once, before hyper can drop the call of a reset stream.
            let outcome = self.device.add(&requests);
            return Ok(Response::new((&outcome).into()));
        }
        tokio::task::yield_now().await;
        self.alive()?;
        if self.device.has(Fault::StoresNothing) {
            let now = self.device.clock.now();
            let outcome = AddOutcome { status: AddStatus::Accepted, error_bits: 0, errors: Vec::new(), start: now };
            return Ok(Response::new((&outcome).into()));
        }
        let outcome = if silently_dropped.is_empty() {
            self.device.add_queued(&requests).await
        } else {
            self.add_skipping(&requests, &silently_dropped)
        };
        debug!(requests = requests.len(), failed = outcome.errors.len(), status = ?outcome.status, "addSession");
        let mut response: wire::AddSessionResponse = (&outcome).into();
        if self.device.has(Fault::RequestStatusNeverSet) {
            response.request_status = 0;
        }
        if self.device.has(Fault::RefusalsOnlyInResponseError) {
            response.error_status = 0;
        }
        if self.device.has(Fault::GrpcCodesInResponseError) {
            for e in &mut response.response_error {
                e.error_status = match AddStatus::try_from(e.error_status) {
                    Ok(AddStatus::AlreadyExists) => tonic::Code::AlreadyExists as i32,
                    Ok(AddStatus::TableFull) => tonic::Code::ResourceExhausted as i32,
                    _ => tonic::Code::InvalidArgument as i32,
                };
            }
        }
        Ok(Response::new(response))
    }

    /// [`Fault::NoValidation`]: commits the stream without the requests at `skipped` (answered
    /// as accepted, never stored); bits are renumbered to the stream's positions.
    fn add_skipping(&self, requests: &[Candidate], skipped: &[usize]) -> AddOutcome {
        let kept: Vec<usize> = (0..requests.len()).filter(|i| !skipped.contains(i)).collect();
        let subset: Vec<Candidate> = kept.iter().map(|&i| requests[i]).collect();
        let mut out = self.device.add(&subset);
        let bits = out.error_bits;
        out.error_bits = 0;
        // A kept request's position in the stream is never below its position in the subset.
        for (j, &i) in kept.iter().enumerate().take(64) {
            if bits & (1 << j) != 0 && i < 64 {
                out.error_bits |= 1 << i;
            }
        }
        out
    }

    /// Every call of a crashed device fails as a call to a dead process would (only a device
    /// imitating [`Fault::CrashOnLargePage`] can crash).
    fn alive(&self) -> Result<(), Status> {
        if self.device.has(Fault::CrashOnLargePage) && self.device.is_crashed() {
            return Err(Status::unavailable("the device has stopped (fault crash-on-large-page)"));
        }
        Ok(())
    }

    /// [`Fault::StoresNothing`]: the one session a stub answers for every id.
    fn fixed_session(&self) -> wire::SessionResponse {
        let r = SessionRecord {
            id: 1,
            counters: Default::default(),
            state: opof_proto::domain::SessionState::Established,
            close_code: opof_proto::domain::CloseCode::NotClosed,
            start: self.device.clock.now(),
            end: None,
        };
        (&r).into()
    }

    /// The id as a device with [`Fault::IdTruncated32`] would store it.
    fn id(&self, id: u64) -> u64 {
        if self.device.has(Fault::IdTruncated32) {
            id & 0xffff_ffff
        } else {
            id
        }
    }

    fn not_found(&self, id: u64) -> Result<wire::SessionResponse, Status> {
        if self.device.has(Fault::NotFoundStatus) {
            return Err(Status::not_found(format!("session {id} not found")));
        }
        Ok(convert::nonexistent_response(id))
    }

    fn get_session(&self, id: u64) -> Result<wire::SessionResponse, Status> {
        self.alive()?;
        if self.device.has(Fault::StoresNothing) {
            return Ok(self.fixed_session());
        }
        let id = self.id(id);
        self.device.get(id).map_or_else(|| self.not_found(id), |r| Ok((&r).into()))
    }

    fn delete_session(&self, id: u64) -> Result<wire::SessionResponse, Status> {
        self.alive()?;
        if self.device.has(Fault::StoresNothing) {
            return Ok(self.fixed_session());
        }
        let id = self.id(id);
        self.device.delete(id).map_or_else(|| self.not_found(id), |r| Ok((&r).into()))
    }

    fn get_all_sessions(&self, args: &wire::SessionRequestArgs) -> Result<wire::SessionResponses, Status> {
        self.alive()?;
        let mut args = PageArgs::from(args);
        if self.device.has(Fault::PageSizeIgnored) {
            (args.page_size, args.page) = (0, 0);
        }
        if self.device.has(Fault::StartSessionIgnored) {
            args.start_session = 0;
        }
        Ok((&self.device.page(&args)).into())
    }

    fn get_closed_sessions(
        &self,
        args: &wire::SessionRequestArgs,
        conn: Option<Arc<crate::conn::ConnState>>,
    ) -> Result<ClosedStream, Status> {
        // The reader came back on this connection: what its earlier streams delivered was read.
        if let Some(c) = &conn {
            c.release();
        }
        if self.device.has(Fault::ClosedEmptyNotFound) && self.device.stats().closed_queued == 0 {
            return Err(Status::not_found("no closed sessions"));
        }
        self.alive()?;
        let mut args = PageArgs::from(args);
        if self.device.has(Fault::CrashOnLargePage) && (args.page_size == 0 || args.page_size > 64) {
            let queued = self.device.stats().closed_queued;
            if queued > 64 {
                self.device
                    .crash(&format!("getClosedSessions with pageSize {} and {queued} records queued", args.page_size));
                self.alive()?;
            }
        }
        if self.device.has(Fault::PageSizeIgnoredOnClosed) {
            args.page_size = 0;
        }
        let remaining = match (args.page_size, args.follow) {
            (0, true) => None,
            // pageSize 0 without follow: what is queued now, then the end of the stream.
            (0, false) => Some(self.device.stats().closed_queued),
            (n, _) => Some(n as usize),
        };
        Ok(ClosedStream {
            device: self.device.clone(),
            buf: VecDeque::new(),
            sent: VecDeque::new(),
            remaining,
            follow: args.follow,
            wake: None,
            ended: false,
            conn,
        })
    }
}

/// Rewrites a request the way a device with fault `f` would misread it.
fn misread_request(f: Fault, r: &mut wire::SessionRequest, max_cache_timeout: u32) {
    match f {
        Fault::NoValidation => r.cache_timeout = r.cache_timeout.min(max_cache_timeout),
        Fault::Ipv4WrongByteOrder if r.ip_version == wire::IpVersion::Ipv4 as i32 => {
            r.source_ip = r.source_ip.swap_bytes();
            r.destination_ip = r.destination_ip.swap_bytes();
            if let Some(a) = r.action.as_mut() {
                a.action_next_hop = a.action_next_hop.swap_bytes();
            }
        }
        Fault::Ipv4WrongByteOrder => {}
        Fault::MirrorWithoutNextHop => {
            if let Some(a) = r.action.as_mut() {
                let copies = [wire::ActionType::Mirror as i32, wire::ActionType::Snoop as i32].contains(&a.action_type);
                if copies && a.action_next_hop == 0 && a.action_next_hop_v6.is_empty() {
                    a.action_type = wire::ActionType::Forward as i32;
                }
            }
        }
        Fault::IdTruncated32 => r.session_id &= 0xffff_ffff,
        _ => {}
    }
}

type ClosedResponseStream = Pin<Box<dyn Stream<Item = Result<wire::SessionResponse, Status>> + Send + 'static>>;

/// Implements one flavour's generated trait by delegating to the shared methods above.
macro_rules! serve_flavour {
    ($module:ident, $stream:ident) => {
        #[tonic::async_trait]
        impl $module::session_table_server::SessionTable for SessionTableService {
            async fn add_session(
                &self,
                request: Request<Streaming<wire::SessionRequest>>,
            ) -> Result<Response<wire::AddSessionResponse>, Status> {
                SessionTableService::add_session(self, request).await
            }

            async fn get_session(
                &self,
                request: Request<wire::SessionId>,
            ) -> Result<Response<wire::SessionResponse>, Status> {
                SessionTableService::get_session(self, request.get_ref().session_id).map(Response::new)
            }

            async fn delete_session(
                &self,
                request: Request<wire::SessionId>,
            ) -> Result<Response<wire::SessionResponse>, Status> {
                SessionTableService::delete_session(self, request.get_ref().session_id).map(Response::new)
            }

            async fn get_all_sessions(
                &self,
                request: Request<wire::SessionRequestArgs>,
            ) -> Result<Response<wire::SessionResponses>, Status> {
                SessionTableService::get_all_sessions(self, request.get_ref()).map(Response::new)
            }

            type $stream = ClosedResponseStream;

            async fn get_closed_sessions(
                &self,
                request: Request<wire::SessionRequestArgs>,
            ) -> Result<Response<Self::$stream>, Status> {
                let conn = request
                    .extensions()
                    .get::<crate::conn::ConnInfo>()
                    .or_else(|| {
                        request
                            .extensions()
                            .get::<tonic::transport::server::TlsConnectInfo<crate::conn::ConnInfo>>()
                            .map(|t| t.get_ref())
                    })
                    .map(|c| c.0.clone());
                let stream = SessionTableService::get_closed_sessions(self, request.get_ref(), conn)?;
                Ok(Response::new(Box::pin(stream)))
            }
        }
    };
}

serve_flavour!(v1, getClosedSessionsStream);
serve_flavour!(v2, GetClosedSessionsStream);
serve_flavour!(v1alpha5, getClosedSessionsStream);

/// Server-side limits and transport settings.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub tls: Option<ServerTls>,
    /// Largest message accepted (the gRPC default is 4 MiB).
    pub max_message_bytes: usize,
    /// Streams one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS);
    /// a client asking for more waits (or is refused with REFUSED_STREAM if it does not).
    pub max_streams_per_connection: u32,
    /// HTTP/2 keepalive: a PING after this long without frames; a peer that does not answer
    /// within the same time is disconnected (and its closed-record streams given back).
    pub keepalive: Duration,
    /// A connection must start (send its first bytes: the HTTP/2 preface, or a TLS hello)
    /// within this long, and finish a TLS handshake within it; otherwise it is closed.
    pub handshake_timeout: Duration,
    /// Requests open addSession streams may hold in all before a stream is refused
    /// (RESOURCE_EXHAUSTED); `None`: twice the table's capacity.
    pub max_pending_requests: Option<usize>,
    /// A connection that carries no call for this long is closed (`None`: never). A call
    /// counts until its response ends, so a follow stream keeps its connection.
    pub idle_timeout: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            tls: None,
            max_message_bytes: 4 * 1024 * 1024,
            max_streams_per_connection: 256,
            keepalive: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
            max_pending_requests: None,
            idle_timeout: Some(Duration::from_secs(300)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS configuration refused: {0}")]
    Tls(tonic::transport::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// `builder` with the HTTP/2 bounds every gRPC server of the toolkit keeps: at most `streams`
/// streams per connection, keepalive PINGs (a peer that answers none within `keepalive` is
/// dropped), TCP keepalive, and h2's guards against reset floods, which tonic turns off unless
/// asked (CVE-2023-44487 and its kin; the counts are h2's own defaults).
pub fn with_h2_bounds(
    builder: tonic::transport::Server,
    streams: u32,
    keepalive: Duration,
) -> tonic::transport::Server {
    builder
        .max_concurrent_streams(streams)
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_max_local_error_reset_streams(Some(1024))
}

/// Serves every flavour of the SessionTable of `device` on `listener` until `shutdown`
/// completes; in-flight calls are allowed to finish.
pub async fn serve(
    device: Arc<Device>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let svc = match options.max_pending_requests {
        Some(n) => SessionTableService::with_pending_limit(device.clone(), n),
        None => SessionTableService::new(device.clone()),
    };
    let max = options.max_message_bytes;
    let builder = tonic::transport::Server::builder()
        .initial_connection_window_size(16 << 20)
        .initial_stream_window_size(4 << 20);
    let mut builder =
        with_h2_bounds(builder, options.max_streams_per_connection, options.keepalive).layer(crate::conn::CallsLayer);
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(tls.to_tonic().timeout(options.handshake_timeout)).map_err(ServeError::Tls)?;
    }
    let (_health, health) = opof_proto::introspect::health(&[
        "openoffload.v1.SessionTable",
        "openoffload.v2.SessionTable",
        "openoffload.v1alpha5.SessionTable",
    ])
    .await;
    let router = builder
        .add_service(v1::session_table_server::SessionTableServer::new(svc.clone()).max_decoding_message_size(max))
        .add_service(v2::session_table_server::SessionTableServer::new(svc.clone()).max_decoding_message_size(max))
        .add_service(v1alpha5::session_table_server::SessionTableServer::new(svc).max_decoding_message_size(max))
        .add_service(opof_proto::introspect::reflection_v1())
        .add_service(opof_proto::introspect::reflection_v1alpha())
        .add_service(health);
    let addr = listener.local_addr().ok();
    info!(
        ?addr,
        tls = options.tls.is_some(),
        mtls = options.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()),
        "SessionTable serving openoffload.v1, openoffload.v2 and openoffload.v1alpha5 (with gRPC reflection and health)"
    );
    let incoming = crate::conn::incoming(listener, device, options.handshake_timeout, options.idle_timeout);
    router.serve_with_incoming_shutdown(incoming, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use opof_proto::domain::{Action, FiveTuple, Protocol, Timestamp};
    use tokio_stream::StreamExt;

    #[test]
    fn grpc_timeout_header_is_read() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        for (v, d) in
            [("100m", Duration::from_millis(100)), ("2S", Duration::from_secs(2)), ("1H", Duration::from_secs(3600))]
        {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(grpc_timeout(&m), Some(d));
        }
        for bad in ["", "m", "12x", "123456789S", "-1S"] {
            m.insert("grpc-timeout", bad.parse().unwrap());
            assert_eq!(grpc_timeout(&m), None, "{bad:?}");
        }
    }

    /// `n` DROP sessions of distinct UDP flows, ids 0..n, idle timeout 5 s.
    fn udp_drops(n: u32) -> Vec<Candidate> {
        (0..n)
            .map(|i| {
                let (host, port) = ((i / 60_000) as u8, 1000 + (i % 60_000) as u16);
                Candidate::Valid(SessionSpec {
                    id: i.into(),
                    tuple: FiveTuple::new(Protocol::Udp, [10, 0, host, 1].into(), port, [10, 0, 0, 2].into(), 53)
                        .unwrap(),
                    action: Action::Drop,
                    in_lif: 0,
                    out_lif: 0,
                    cache_timeout: 5,
                })
            })
            .collect()
    }

    /// Every record reaches a reader, in takes of any size, however it was queued: closed by
    /// the reader's own aging steps, left over by a smaller take, given back by a broken
    /// stream. The shortcut of a reader that finds nothing queued (no lock taken) hides none:
    /// each way records are queued tells readers.
    #[test]
    fn a_reader_takes_every_record_however_it_was_queued() {
        let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000)));
        let device = Device::sharded(TableConfig::default(), clock.clone(), None, 2).unwrap();
        // Nothing queued yet: the shortcut is armed.
        assert!(device.take_closed(10).is_empty());
        assert!(device.take_closed(10).is_empty());
        assert!(device.add(&udp_drops(3_000)).errors.is_empty());
        clock.advance_secs(5);
        // No aging task: the reader's own steps close the sessions.
        let mut got = Vec::new();
        for _ in 0..10_000 {
            got.extend(device.take_closed(7));
            if got.len() >= 3_000 {
                break;
            }
        }
        let mut ids: Vec<u64> = got.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..3_000).collect::<Vec<u64>>());
        assert!(device.take_closed(10).is_empty());
        // Given back by a stream that did not deliver them: taken again, in two takes.
        device.restore_closed(got.iter().take(5).copied().collect(), 0);
        assert_eq!(device.take_closed(3).len(), 3);
        assert_eq!(device.take_closed(3).len(), 2);
        assert!(device.take_closed(3).is_empty());
    }

    /// A stream waiting for its turn to commit suspends its task, not the runtime's thread:
    /// on a runtime of one thread, other tasks run while two streams wait, and the streams
    /// commit in the order they queued (the second's duplicate ids are refused).
    #[tokio::test(flavor = "current_thread")]
    async fn a_stream_waiting_to_commit_leaves_the_thread_to_other_tasks() {
        let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000)));
        let device = Device::sharded(TableConfig::default(), clock, None, 2).unwrap();
        // Another stream is committing.
        let turn = device.commit_queue.lock().await;
        let (first, second) = (device.clone(), device.clone());
        let first = tokio::spawn(async move { first.add_queued(&udp_drops(10)).await });
        tokio::task::yield_now().await;
        let second = tokio::spawn(async move { second.add_queued(&udp_drops(20)).await });
        // The only thread is free: another task runs to its end while both streams wait.
        assert_eq!(tokio::spawn(async { 7 }).await.unwrap(), 7);
        assert!(!first.is_finished() && !second.is_finished());
        assert_eq!(device.stats().sessions, 0);
        drop(turn);
        assert!(first.await.unwrap().errors.is_empty());
        let refused = second.await.unwrap();
        assert_eq!(refused.errors.len(), 10, "ids 0..10 were the first stream's");
        assert_eq!(device.stats().sessions, 20);
    }

    /// The room: made a bounded amount per call until each shard has a
    /// closed-record chunk per 1,024 sessions, used by the expiry, freed once nothing is open.
    #[test]
    fn room_is_made_ready_a_bounded_amount_at_a_time() {
        let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000)));
        let device = Device::sharded(TableConfig::default(), clock.clone(), None, 2).unwrap();
        device.add(&udp_drops(20_000));
        for k in 0..2 {
            let mut calls = 0;
            while device.ready_room(k, 1) == 1 {
                calls += 1;
                assert!(calls < 20, "shard {k}: room made without end");
            }
            let t = device.lock(k);
            let want = t.len().div_ceil(1024);
            assert!(t.len() > 8192 && calls == want, "shard {k}: {} sessions, {calls} calls", t.len());
            assert_eq!(t.room_spare(), want, "shard {k}");
        }
        clock.advance_secs(5);
        assert_eq!(device.advance(), 20_000);
        let mut ids: Vec<u64> = device.take_closed(30_000).iter().map(|r| r.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..20_000).collect::<Vec<u64>>());
        for k in 0..2 {
            assert_eq!(device.ready_room(k, ROOM_PER_TICK), 0);
            assert_eq!(device.lock(k).room_spare(), 0, "shard {k}: nothing open, room freed");
        }
    }

    /// The room maker started with the device's aging makes the room, round after round, until
    /// each shard has what an expiry of its sessions needs (no expiry: the clock stands still).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_room_maker_makes_room_for_an_expiry() {
        let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000)));
        let device = Device::sharded(TableConfig::default(), clock, None, 2).unwrap();
        assert!(device.add(&udp_drops(150_000)).errors.is_empty());
        let want: Vec<usize> = (0..2).map(|k| device.lock(k).len().div_ceil(1024)).collect();
        // More than one tick's worth per shard: the room comes over several ticks.
        assert!(want.iter().all(|&w| w > ROOM_PER_TICK), "{want:?}");
        let aging = device.spawn_aging(Duration::from_millis(2));
        let spare = || (0..2).map(|k| device.lock(k).room_spare()).collect::<Vec<_>>();
        // Waits for a state, not for a time: the bound only keeps a broken build from hanging
        // (generous: the room is made on idle CPU, and other tests may be running).
        for _ in 0..30_000 {
            if spare() == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(spare(), want);
        aging.abort();
    }

    /// A closed-session stream dropped half way (the client went away) gives back every record
    /// it took from the queue, sent or not: they reach the next reader, in order.
    #[tokio::test]
    async fn an_abandoned_closed_stream_gives_back_everything_it_took() {
        let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000)));
        let device = Device::new(TableConfig::default(), clock.clone()).unwrap();
        device.add(&udp_drops(5));
        clock.advance_secs(5);
        assert_eq!(device.advance(), 5);
        let svc = SessionTableService::new(device.clone());
        let mut s = svc.get_closed_sessions(&wire::SessionRequestArgs::default(), None).unwrap();
        assert_eq!(s.next().await.unwrap().unwrap().session_id, 0);
        assert_eq!(device.stats().closed_queued, 0, "the stream holds the other four");
        drop(s);
        let rest: Vec<u64> = svc
            .get_closed_sessions(&wire::SessionRequestArgs::default(), None)
            .unwrap()
            .map(|r| r.unwrap().session_id)
            .collect()
            .await;
        // The one it had sent too (it never reached the end): at least once.
        assert_eq!(rest, vec![0, 1, 2, 3, 4]);
        assert_eq!(device.stats().closed_redelivered, 1);
    }
}
