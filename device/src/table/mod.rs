//! The session table: the device's state, as a sans-IO core.
//!
//! No I/O and no clock of its own: every call that depends on time takes `now`, and the caller
//! (the gRPC shell in real time, a simulation in virtual time) owns the clock. Every operation
//! that changes the table first closes the sessions whose idle deadline is at or before `now`,
//! and reads ([`SessionTable::get`]) treat such a session as gone, so what a caller sees is
//! always exact for the time it passed. Aging can also go in bounded steps
//! ([`SessionTable::age`]) that close exactly what one pass would, in the same order.
//!
//! Invariants:
//! - a session is in the table under its id and under its 5-tuple (matching both directions);
//!   no two sessions share an id or a 5-tuple in either direction;
//! - the table never holds more than `capacity` sessions; an addSession stream is inserted
//!   whole or, when its valid requests do not all fit, not at all;
//! - a session that closes (timeout, FIN/ACK, RST) leaves the table at once and its final
//!   record is queued exactly once for getClosedSessions, oldest first; a deleted session is
//!   not queued;
//! - closes of one aging pass are queued in order of deadline, then session id, however the
//!   pass is cut into steps.
//!
//! Memory: an IPv4 session costs an 88-byte entry — a 64-byte hot part (what a packet
//! touches, one cache line, aligned) and a 24-byte cold part (id, start, logical interfaces)
//! in an array of its own — a 12-byte id-index slot and a 4-byte timer element; an IPv6 one
//! 120 bytes of entry (96 hot, on two whole lines, 24 cold) instead of 88. The 5-tuple index
//! costs 8 bytes per slot, with 4/3 to 8/3 slots per session of capacity (fixed at start).
//! Addresses are stored per family so IPv4 does not pay for IPv6. The entry slabs reserve
//! address space for the capacity (up to 4 Mi entries) and, like the index, ask for
//! transparent huge pages: random lookups on the datapath then miss the TLB far less.
//! Room for an expiry, once its owner makes it ready ([`SessionTable::room_lacking`]), adds up
//! to 72 bytes per live session: the closed-record queue's room for its final record.
//!
//! Lookups for the datapath ([`SessionTable::packets`]) are staged over windows of packets so
//! their cache misses overlap (the `index` module tells how).

mod closed;
mod ids;
mod index;
mod timers;

pub mod model;
#[cfg(test)]
mod model_tests;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;

use crate::datapath::parse::TcpFlags;
use crate::datapath::steer::SteerKeys;
use opof_proto::domain::*;

pub use closed::{ClosedQueue, Room};
use ids::IdIndex;
pub(crate) use index::prefetch;
use index::TupleIndex;
use timers::TimerWheel;

/// Configuration of a table. Defaults are the reference profile of SEMANTICS.md.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableConfig {
    /// Most sessions held at once.
    pub capacity: usize,
    /// Largest accepted `cacheTimeout`, seconds.
    pub max_cache_timeout: u32,
    /// Default idle timeouts (cacheTimeout 0), seconds.
    pub tcp_timeout: u32,
    pub udp_timeout: u32,
    /// Closed records kept while nobody reads them; the default is the capacity.
    pub closed_queue_capacity: usize,
    /// Most records in one getAllSessions response (keeps it under the 4 MiB gRPC limit).
    pub max_page: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            capacity: 1_048_576,
            max_cache_timeout: 86_400,
            tcp_timeout: 30,
            udp_timeout: 30,
            closed_queue_capacity: 1_048_576,
            max_page: 32_768,
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("capacity {0} is out of range (1..={max})", max = MAX_CAPACITY)]
    Capacity(usize),
    #[error("timeout {0} s is out of range (1..={max} s)", max = MAX_TIMEOUT)]
    Timeout(u32),
    #[error("max_page must be at least 1")]
    MaxPage,
}

/// Entries are addressed by 31-bit slots per family.
pub const MAX_CAPACITY: usize = 1 << 30;
/// Timeouts are stored in 20 bits (about 12 days).
pub const MAX_TIMEOUT: u32 = (1 << 20) - 1;

impl TableConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            return Err(ConfigError::Capacity(self.capacity));
        }
        for t in [self.max_cache_timeout, self.tcp_timeout, self.udp_timeout] {
            if t == 0 || t > MAX_TIMEOUT {
                return Err(ConfigError::Timeout(t));
            }
        }
        if self.max_page == 0 {
            return Err(ConfigError::MaxPage);
        }
        Ok(())
    }

    /// The timeout a session gets for its `cacheTimeout`.
    pub fn effective_timeout(&self, protocol: Protocol, cache_timeout: u32) -> u32 {
        match (cache_timeout, protocol) {
            (0, Protocol::Tcp) => self.tcp_timeout,
            (0, Protocol::Udp) => self.udp_timeout,
            (t, _) => t,
        }
    }
}

/// One request of an addSession stream, after wire validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Candidate {
    Valid(SessionSpec),
    /// Refused by wire validation; only its id is known.
    Invalid(SessionId),
}

impl Candidate {
    pub fn id(&self) -> SessionId {
        match self {
            Candidate::Valid(s) => s.id,
            Candidate::Invalid(id) => *id,
        }
    }
}

/// Counters of what the table did, for metrics and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub sessions: usize,
    pub added: u64,
    pub refused: u64,
    pub deleted: u64,
    /// Closes by code: FIN/ACK, RST, timeout.
    pub closed_finack: u64,
    pub closed_rst: u64,
    pub closed_timeout: u64,
    pub closed_queued: usize,
    /// Closed records dropped because the queue was full.
    pub closed_overflow: u64,
    /// Closed records given back to the queue after a stream that had sent them broke (each
    /// may be delivered twice).
    pub closed_redelivered: u64,
}

impl TableStats {
    /// Sessions closed, by any code.
    pub fn closes(&self) -> u64 {
        self.closed_finack + self.closed_rst + self.closed_timeout
    }
}

// Entry flag bits.
const LIVE: u32 = 1;
const TCP: u32 = 1 << 1;
const ACTION_SHIFT: u32 = 2;
const FIN_IN: u32 = 1 << 4;
const FIN_OUT: u32 = 1 << 5;
const TIMEOUT_SHIFT: u32 = 12;

/// A [`FiveTuple`] holds two addresses of one family, so its key in that family exists.
const ONE_FAMILY: &str = "a FiveTuple holds two addresses of one family";

/// Most entries a store reserves address space for up front.
const RESERVE_MAX: usize = 4 << 20;

/// Handles: slot index, top bit set for the IPv6 store.
const V6_BIT: u32 = 1 << 31;

/// Address bytes of one family.
trait Family: Copy + Eq + Ord + Hash + Default {
    const V6: bool;
    fn from_ip(a: IpAddr) -> Option<Self>;
    fn ip(self) -> IpAddr;
    fn store(s: &Stores) -> &Store<Self>;
    /// The address as two words, for hashing.
    fn words(self) -> (u64, u64);
    /// An endpoint's value in the steering hash (see [`crate::datapath::steer`]).
    fn steer_endpoint(self, port: u16, k: &SteerKeys) -> u32;
    /// A zero-sized type whose alignment a hot entry of this family takes: a cache line for
    /// IPv4 (whose hot entry is exactly one), half a line for IPv6 (two whole lines).
    type Line: Copy + Default;
    /// Does the handle point into this family's store?
    fn owns(h: u32) -> bool {
        (h & V6_BIT != 0) == Self::V6
    }
}

/// The two per-family slabs.
struct Stores {
    v4: Store<[u8; 4]>,
    v6: Store<[u8; 16]>,
}

/// Aligns an IPv4 hot entry to a cache line.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct CacheLine;

/// Aligns an IPv6 hot entry to half a line: its 88 bytes round up to 96, which then never
/// straddle three lines (at 8-byte alignment two entries in eight did, and their third line
/// was a miss the lookup had not asked for ahead).
#[derive(Clone, Copy, Default)]
#[repr(align(32))]
struct HalfLine;

impl Family for [u8; 4] {
    const V6: bool = false;
    type Line = CacheLine;
    fn from_ip(a: IpAddr) -> Option<Self> {
        match a {
            IpAddr::V4(a) => Some(a.octets()),
            IpAddr::V6(_) => None,
        }
    }
    fn ip(self) -> IpAddr {
        IpAddr::from(self)
    }
    fn store(s: &Stores) -> &Store<Self> {
        &s.v4
    }
    fn words(self) -> (u64, u64) {
        (u64::from(u32::from_ne_bytes(self)), 0)
    }
    #[inline(always)]
    fn steer_endpoint(self, port: u16, k: &SteerKeys) -> u32 {
        k.endpoint([u32::from_be_bytes(self)], port)
    }
}

impl Family for [u8; 16] {
    const V6: bool = true;
    type Line = HalfLine;
    fn from_ip(a: IpAddr) -> Option<Self> {
        match a {
            IpAddr::V6(a) => Some(a.octets()),
            IpAddr::V4(_) => None,
        }
    }
    fn ip(self) -> IpAddr {
        IpAddr::from(self)
    }
    fn store(s: &Stores) -> &Store<Self> {
        &s.v6
    }
    fn words(self) -> (u64, u64) {
        let (a, b) = self.split_at(8);
        (u64::from_ne_bytes(a.try_into().expect("8 bytes")), u64::from_ne_bytes(b.try_into().expect("8 bytes")))
    }
    #[inline(always)]
    fn steer_endpoint(self, port: u16, k: &SteerKeys) -> u32 {
        k.endpoint(crate::datapath::steer::be_words(self), port)
    }
}

/// The part of a session a packet touches (hot): its 5-tuple, action, counters and last-seen
/// time, with the timer and free-list word. For IPv4 exactly one cache line, aligned to one,
/// so a lookup costs one miss for the entry; the rest of the session ([`Cold`]) is apart.
#[derive(Clone, Copy, Default)]
struct Entry<A: Family> {
    counters: Counters,
    last_seen: u64,
    /// LIVE, TCP, action, FIN seen per direction, timeout seconds (20 bits).
    bits: u32,
    /// Live: the low 32 bits of the timer tick its wheel element sits in.
    /// Free: the next free slot (`u32::MAX` ends the list).
    armed: u32,
    /// Next hop: index + 1 in [`NextHops`]; 0 when the action has none.
    next_hop: u32,
    src_port: u16,
    dst_port: u16,
    src: A,
    dst: A,
    _line: [A::Line; 0],
}

const _: () = assert!(std::mem::size_of::<Entry<[u8; 4]>>() == 64 && std::mem::align_of::<Entry<[u8; 4]>>() == 64);
const _: () = assert!(std::mem::size_of::<Entry<[u8; 16]>>() == 96 && std::mem::align_of::<Entry<[u8; 16]>>() == 32);

/// The part of a session only the control plane reads: its id, start and logical interfaces.
#[derive(Clone, Copy, Default)]
struct Cold {
    id: u64,
    start: u64,
    in_lif: i32,
    out_lif: i32,
}

impl Cold {
    fn new(spec: &SessionSpec, now: Timestamp) -> Self {
        Cold { id: spec.id, start: now.0, in_lif: spec.in_lif, out_lif: spec.out_lif }
    }
}

impl<A: Family> Entry<A> {
    fn new(key: &Key<A>, bits: u32, next_hop: u32, now: Timestamp) -> Self {
        Entry {
            counters: Counters::default(),
            last_seen: now.0,
            bits,
            armed: 0,
            next_hop,
            src_port: key.src_port,
            dst_port: key.dst_port,
            src: key.src,
            dst: key.dst,
            _line: [],
        }
    }
    fn live(&self) -> bool {
        self.bits & LIVE != 0
    }
    fn protocol(&self) -> Protocol {
        if self.bits & TCP != 0 {
            Protocol::Tcp
        } else {
            Protocol::Udp
        }
    }
    /// Does the session never age? Only a DROP session of a table imitating that defect
    /// (`drop_never_ages`).
    fn never_ages(&self, drop_never_ages: bool) -> bool {
        drop_never_ages && (self.bits >> ACTION_SHIFT) & 3 == 0
    }
    /// Has the session's deadline passed at `now`?
    fn due(&self, now: u64, drop_never_ages: bool) -> bool {
        self.deadline() <= now && !self.never_ages(drop_never_ages)
    }
    fn timeout_secs(&self) -> u64 {
        u64::from(self.bits >> TIMEOUT_SHIFT)
    }
    fn deadline(&self) -> u64 {
        self.last_seen.saturating_add(self.timeout_secs() * 1_000_000_000)
    }
    /// Which way a packet of this tuple travels on the entry's flow: `Some(true)` as the
    /// session was added (inbound), `Some(false)` the other way, `None` another flow.
    #[inline]
    fn direction(&self, k: &Key<A>) -> Option<bool> {
        if self.protocol() != k.protocol {
            return None;
        }
        // Compared as words: both ports in one, an IPv4 address pair in one (the other way
        // round is the same word rotated), an IPv6 pair in four.
        let ((es0, es1), (ed0, ed1)) = (self.src.words(), self.dst.words());
        let ((ks0, ks1), (kd0, kd1)) = (k.src.words(), k.dst.words());
        let ports = u32::from(self.src_port) | u32::from(self.dst_port) << 16;
        let key_ports = u32::from(k.src_port) | u32::from(k.dst_port) << 16;
        let (same, crossed) = if A::V6 {
            (
                (es0 ^ ks0) | (es1 ^ ks1) | (ed0 ^ kd0) | (ed1 ^ kd1) == 0,
                (es0 ^ kd0) | (es1 ^ kd1) | (ed0 ^ ks0) | (ed1 ^ ks1) == 0,
            )
        } else {
            let (addrs, key_addrs) = (es0 | ed0 << 32, ks0 | kd0 << 32);
            (addrs == key_addrs, addrs == key_addrs.rotate_left(32))
        };
        if same && ports == key_ports {
            Some(true)
        } else if crossed && ports == key_ports.rotate_left(16) {
            Some(false)
        } else {
            None
        }
    }
    /// [`Entry::direction`] of a live entry; `None` for a slot whose session is gone.
    #[inline]
    fn holds(&self, k: &Key<A>) -> Option<bool> {
        self.direction(k).filter(|_| self.live())
    }
    fn key(&self) -> Key<A> {
        Key {
            protocol: self.protocol(),
            src: self.src,
            dst: self.dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
        }
    }
    fn record(&self, cold: &Cold) -> SessionRecord {
        let state = match (self.bits & FIN_IN != 0, self.bits & FIN_OUT != 0) {
            (false, false) => SessionState::Established,
            (true, true) => SessionState::Closing2,
            _ => SessionState::Closing1,
        };
        SessionRecord {
            id: cold.id,
            counters: self.counters,
            state,
            close_code: CloseCode::NotClosed,
            start: Timestamp(cold.start),
            end: None,
        }
    }
}

/// A 5-tuple in one family's address bytes.
#[derive(Clone, Copy)]
struct Key<A> {
    protocol: Protocol,
    src: A,
    dst: A,
    src_port: u16,
    dst_port: u16,
}

impl<A: Family> Key<A> {
    /// The tuple in this family's bytes; `None` when it is of the other family.
    fn of(t: &FiveTuple) -> Option<Self> {
        Some(Key {
            protocol: t.protocol(),
            src: A::from_ip(t.src())?,
            dst: A::from_ip(t.dst())?,
            src_port: t.src_port(),
            dst_port: t.dst_port(),
        })
    }

    /// Hash of the direction-independent form, keyed by the table's random seeds so crafted
    /// traffic cannot aim at one chain of the index. The two endpoints (address, port) are
    /// ordered by value, so both directions of a flow hash alike; then one multiply mixes the
    /// two endpoints (an IPv6 endpoint, three words, is first folded into one by a multiply of
    /// its own) and a last multiply-fold spreads the result over all 64 bits, as wyhash
    /// finishes a short input: two multiplies for IPv4, four for IPv6.
    #[inline]
    fn hash(&self, s: &Seeds) -> u64 {
        let kind = u64::from(A::V6) << 1 | u64::from(self.protocol == Protocol::Tcp);
        let ((src0, src1), (dst0, dst1)) = (self.src.words(), self.dst.words());
        let (x, y) = if A::V6 {
            let (a, b) = ((src0, src1, self.src_port), (dst0, dst1, self.dst_port));
            let ((l0, l1, lo_port), (h0, h1, hi_port)) = if a <= b { (a, b) } else { (b, a) };
            let ports = u64::from(lo_port) << 16 | u64::from(hi_port) | kind << 32;
            (fold(l0 ^ s.0[0], l1 ^ s.0[1]) ^ ports, fold(h0 ^ s.0[2], h1 ^ s.0[3]))
        } else {
            // An IPv4 endpoint is 48 bits: address and port in one word.
            let (a, b) = (src0 << 16 | u64::from(self.src_port), dst0 << 16 | u64::from(self.dst_port));
            (a.min(b) ^ kind << 48 ^ s.0[0], a.max(b) ^ s.0[1])
        };
        let p = u128::from(x) * u128::from(y);
        fold(p as u64 ^ s.0[4], (p >> 64) as u64 ^ s.0[5])
    }

    /// The flow's value in the steering hash, which chooses its shard (the same both ways).
    #[inline(always)]
    fn steer(&self, k: &SteerKeys) -> u32 {
        k.finish(self.src.steer_endpoint(self.src_port, k), self.dst.steer_endpoint(self.dst_port, k))
    }
}

/// The multiply-fold step of the tuple hash: the two halves of the 128-bit product, xored.
#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Random keys of the tuple hash, per table (shared by the shards of one device; the shard is
/// chosen by another hash, [`crate::datapath::steer`]).
#[derive(Clone)]
struct Seeds([u64; 6]);

impl Seeds {
    fn random() -> Self {
        let r = std::collections::hash_map::RandomState::new();
        // Odd keys: a key is never zero, so no multiplier is zero for the key alone.
        Seeds(std::array::from_fn(|i| r.hash_one(i) | 1))
    }
}

/// A 5-tuple as the key of its family.
#[derive(Clone, Copy)]
enum AnyKey {
    V4(Key<[u8; 4]>),
    V6(Key<[u8; 16]>),
}

impl AnyKey {
    fn of(t: &FiveTuple) -> Self {
        if t.is_ipv4() {
            AnyKey::V4(Key::of(t).expect(ONE_FAMILY))
        } else {
            AnyKey::V6(Key::of(t).expect(ONE_FAMILY))
        }
    }
    #[inline]
    fn hash(&self, s: &Seeds) -> u64 {
        match self {
            AnyKey::V4(k) => k.hash(s),
            AnyKey::V6(k) => k.hash(s),
        }
    }
    #[inline]
    fn steer(&self, k: &SteerKeys) -> u32 {
        match self {
            AnyKey::V4(key) => key.steer(k),
            AnyKey::V6(key) => key.steer(k),
        }
    }
}

/// A 5-tuple's steering value ([`crate::datapath::steer`]), as the table computes it to choose
/// the session's shard.
pub(crate) fn steer_value(t: &FiveTuple, k: &SteerKeys) -> u32 {
    AnyKey::of(t).steer(k)
}

/// Entries of one family, in a slab with an intrusive free list: hot parts in one array, cold
/// parts at the same slots in another.
struct Store<A: Family> {
    slots: Vec<Entry<A>>,
    cold: Vec<Cold>,
    free: u32,
}

impl<A: Family> Store<A> {
    /// A store with room for `reserve` entries: address space only until entries are written,
    /// the hot array advised for huge pages (fewer TLB misses on the datapath's random lookups).
    fn new(reserve: usize) -> Self {
        let slots: Vec<Entry<A>> = Vec::with_capacity(reserve);
        index::advise_huge_pages(slots.as_ptr().cast(), slots.capacity() * std::mem::size_of::<Entry<A>>());
        Store { slots, cold: Vec::with_capacity(reserve), free: u32::MAX }
    }
    /// The slot the next [`Store::alloc`] gives out.
    fn next_slot(&self) -> u32 {
        if self.free != u32::MAX {
            self.free
        } else {
            self.slots.len() as u32
        }
    }
    fn alloc(&mut self, e: Entry<A>, c: Cold) -> u32 {
        if self.free != u32::MAX {
            let slot = self.free;
            self.free = self.slots[slot as usize].armed;
            self.slots[slot as usize] = e;
            self.cold[slot as usize] = c;
            slot
        } else {
            let before = self.slots.capacity();
            self.slots.push(e);
            self.cold.push(c);
            if self.slots.capacity() != before {
                let bytes = self.slots.capacity() * std::mem::size_of::<Entry<A>>();
                index::advise_huge_pages(self.slots.as_ptr().cast(), bytes);
            }
            (self.slots.len() - 1) as u32
        }
    }
    fn release(&mut self, slot: u32) -> (Entry<A>, Cold) {
        let e = std::mem::take(&mut self.slots[slot as usize]);
        self.slots[slot as usize].armed = self.free;
        self.free = slot;
        (e, self.cold[slot as usize])
    }
    fn get(&self, slot: u32) -> Option<&Entry<A>> {
        self.slots.get(slot as usize).filter(|e| e.live())
    }
    /// A live slot's hot and cold parts.
    fn both(&self, slot: u32) -> Option<(&Entry<A>, &Cold)> {
        self.get(slot).map(|e| (e, &self.cold[slot as usize]))
    }
}

/// Next hops of MIRROR and SNOOP sessions, interned: deployments have a handful of collectors,
/// so an entry stores a 4-byte index instead of a 17-byte address.
#[derive(Default)]
struct NextHops {
    addrs: Vec<(IpAddr, u32)>,
    index: HashMap<IpAddr, u32>,
    free: Vec<u32>,
}

impl NextHops {
    fn acquire(&mut self, a: IpAddr) -> u32 {
        if let Some(&i) = self.index.get(&a) {
            self.addrs[i as usize].1 += 1;
            return i + 1;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.addrs[i as usize] = (a, 1);
                i
            }
            None => {
                self.addrs.push((a, 1));
                (self.addrs.len() - 1) as u32
            }
        };
        self.index.insert(a, i);
        i + 1
    }
    fn release(&mut self, r: u32) {
        if r == 0 {
            return;
        }
        let i = r - 1;
        let (a, n) = &mut self.addrs[i as usize];
        *n -= 1;
        if *n == 0 {
            self.index.remove(a);
            self.free.push(i);
        }
    }
    fn get(&self, r: u32) -> Option<IpAddr> {
        r.checked_sub(1).map(|i| self.addrs[i as usize].0)
    }
}

/// The session table. See the module documentation for its invariants.
pub struct SessionTable {
    config: TableConfig,
    stores: Stores,
    ids: IdIndex,
    tuples: TupleIndex,
    seeds: Seeds,
    timers: TimerWheel,
    next_hops: NextHops,
    closed: ClosedQueue,
    stats: TableStats,
    /// Room reserved by streams being committed in chunks.
    reserved: usize,
    /// Datapath defects imitated (conformance-suite testing only).
    quirks: Quirks,
    /// The aging pass under way (see [`SessionTable::age`]), and the time the last finished
    /// pass brought the table to.
    aging: Option<AgingPass>,
    aged_to: Option<u64>,
}

/// An aging pass under way. It visits the timer elements that may be due at `target` (a
/// bounded number per step) and closes each session found due on the spot, while its entry is
/// at hand: out of both indexes and the slab at once, its final record written to a run (at
/// most a closed-queue chunk's worth; each run sorted). Once every element was visited, it
/// queues the records, merging the runs, in the order one unbounded pass would queue them
/// (deadline, then id); a run whose records all come before every other run's next is queued
/// as it is, as a chunk of the queue (sessions added together and expiring together fill runs
/// that follow one another: their records are never copied). Meanwhile a read of such a
/// session finds it gone, as its deadline has passed, and every change to the table finishes
/// the pass first.
struct AgingPass {
    target: u64,
    /// Each run and how far it was queued.
    runs: Vec<(Vec<SessionRecord>, usize)>,
    /// Queuing: the next of each run, smallest first.
    heads: Option<std::collections::BinaryHeap<std::cmp::Reverse<(ClosingKey, usize)>>>,
}

/// Where a record stands in the order a pass queues them: its deadline, then its id.
type ClosingKey = (u64, u64);

/// The order a pass queues its records in: deadline (the record's end), then id.
fn closing_order(r: &SessionRecord) -> ClosingKey {
    (r.end.map_or(0, |t| t.0), r.id)
}

/// The order of a run's next record, if any.
fn next_key(run: &(Vec<SessionRecord>, usize)) -> Option<ClosingKey> {
    run.0.get(run.1).map(closing_order)
}

/// The requestStatus of a stream, from its failed requests: accepted when none failed, table
/// full when one failed for room, already-exists when every failure is a duplicate, rejected
/// otherwise.
pub fn stream_status(errors: &[opof_proto::domain::AddError]) -> AddStatus {
    if errors.is_empty() {
        AddStatus::Accepted
    } else if errors.iter().any(|e| e.status == AddStatus::TableFull) {
        AddStatus::TableFull
    } else if errors.iter().all(|e| e.status == AddStatus::AlreadyExists) {
        AddStatus::AlreadyExists
    } else {
        AddStatus::Rejected
    }
}

/// Datapath defects a table can imitate (see [`crate::faults`]); all off in a real device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    /// Packets counted in the other direction.
    pub reversed: bool,
    /// DROP sessions never expire.
    pub drop_never_ages: bool,
    /// MIRROR sessions drop.
    pub mirror_as_drop: bool,
    /// TCP control segments counted.
    pub count_control: bool,
    /// FIN/ACK and RST closes recorded as `_TIMEOUT`.
    pub close_code_timeout: bool,
    /// Idle timeouts twice as long as asked.
    pub timeouts_doubled: bool,
}

impl Quirks {
    /// The datapath part of a fault (none for the control-plane faults).
    pub fn of(faults: crate::faults::Faults) -> Quirks {
        use crate::faults::Fault;
        Quirks {
            reversed: faults.contains(Fault::WrongDirectionCounted),
            drop_never_ages: faults.contains(Fault::DropNeverAges),
            mirror_as_drop: faults.contains(Fault::MirrorAsDrop),
            count_control: faults.contains(Fault::ControlCounted),
            close_code_timeout: faults.contains(Fault::CloseCodeAlwaysTimeout),
            timeouts_doubled: faults.contains(Fault::TimeoutsDoubled),
        }
    }
}

/// Applies `$body` to the entry behind a handle, whatever its family.
macro_rules! with_entry {
    ($stores:expr, $h:expr, $e:ident => $body:expr) => {
        if $h & V6_BIT != 0 {
            $stores.v6.get($h & !V6_BIT).map(|$e| $body)
        } else {
            $stores.v4.get($h).map(|$e| $body)
        }
    };
    ($stores:expr, $h:expr, $e:ident, $c:ident => $body:expr) => {
        if $h & V6_BIT != 0 {
            $stores.v6.both($h & !V6_BIT).map(|($e, $c)| $body)
        } else {
            $stores.v4.both($h).map(|($e, $c)| $body)
        }
    };
}

/// The 5-tuple of request `j` of a commit that stops before `end`, when there is one and it is
/// valid: the insert whose index slot a commit requests [`shards::INSERT_AHEAD`] inserts early.
fn tuple_ahead(requests: &[Candidate], j: usize, end: usize) -> Option<&FiveTuple> {
    match requests[..end.min(requests.len())].get(j)? {
        Candidate::Valid(s) => Some(&s.tuple),
        Candidate::Invalid(_) => None,
    }
}

/// Takes session `handle`, whose tuple hash is `hash`, out of the table's parts (tuple index,
/// slab, next hops) and returns its last record; the caller takes its id out of the id index
/// (one at a time, or an aging step's together). (The parts apart, so that an aging pass
/// holding some of the table's other fields can close a session.)
fn take_out(
    stores: &mut Stores,
    tuples: &mut TupleIndex,
    next_hops: &mut NextHops,
    handle: u32,
    hash: u64,
) -> SessionRecord {
    tuples.remove(hash, handle);
    let (record, next_hop) = if handle & V6_BIT != 0 {
        let (e, c) = stores.v6.release(handle & !V6_BIT);
        (e.record(&c), e.next_hop)
    } else {
        let (e, c) = stores.v4.release(handle);
        (e.record(&c), e.next_hop)
    };
    next_hops.release(next_hop);
    record
}

/// A session's last record as a close leaves it: closed with `code`, ended `at`.
fn ended(mut r: SessionRecord, code: CloseCode, at: Timestamp) -> SessionRecord {
    r.state = SessionState::Closed;
    r.close_code = code;
    r.end = Some(at);
    r
}

/// The tuple hash of session `h` (the stores apart, so a caller holding them mutably can ask).
fn handle_hash(v4: &Store<[u8; 4]>, v6: &Store<[u8; 16]>, s: &Seeds, h: u32) -> u64 {
    if h & V6_BIT != 0 {
        v6.slots[(h & !V6_BIT) as usize].key().hash(s)
    } else {
        v4.slots[h as usize].key().hash(s)
    }
}

/// Where both stores' entries are, to request a session's hot and cold parts from memory ahead
/// of its use (a slot past the end is never read, only its address computed).
#[derive(Clone, Copy)]
struct EntryAddrs {
    hot4: *const Entry<[u8; 4]>,
    cold4: *const Cold,
    hot6: *const Entry<[u8; 16]>,
    cold6: *const Cold,
}

impl EntryAddrs {
    fn of(v4: &Store<[u8; 4]>, v6: &Store<[u8; 16]>) -> Self {
        EntryAddrs {
            hot4: v4.slots.as_ptr(),
            cold4: v4.cold.as_ptr(),
            hot6: v6.slots.as_ptr(),
            cold6: v6.cold.as_ptr(),
        }
    }

    fn prefetch(self, h: u32) {
        if h & V6_BIT != 0 {
            let i = (h & !V6_BIT) as usize;
            index::prefetch(self.hot6.wrapping_add(i));
            index::prefetch(self.cold6.wrapping_add(i));
        } else {
            index::prefetch(self.hot4.wrapping_add(h as usize));
            index::prefetch(self.cold4.wrapping_add(h as usize));
        }
    }
}

/// What the insert pass would answer each request of a stream, capacity aside: rejected when
/// `valid` refuses it, a duplicate when `in_table` holds its id or tuple or an earlier request
/// that would be inserted has them (not one that is itself refused), accepted otherwise.
fn stream_verdicts(
    requests: &[Candidate],
    valid: impl Fn(&Candidate) -> Option<SessionSpec>,
    in_table: impl Fn(&SessionSpec) -> bool,
) -> Vec<AddStatus> {
    let mut ids = hashbrown::HashSet::new();
    let mut tuples = hashbrown::HashSet::new();
    requests
        .iter()
        .map(|c| match valid(c) {
            None => AddStatus::Rejected,
            Some(s)
                if in_table(&s)
                    || ids.contains(&s.id)
                    || tuples.contains(&s.tuple)
                    || tuples.contains(&s.tuple.reversed()) =>
            {
                AddStatus::AlreadyExists
            }
            Some(s) => {
                ids.insert(s.id);
                tuples.insert(s.tuple);
                AddStatus::Accepted
            }
        })
        .collect()
}

/// The answer to a stream refused whole for room: every request flagged (as the API asks),
/// `_SESSION_TABLE_FULL` where it would have been accepted, its own refusal otherwise.
fn refuse_whole(mut out: AddOutcome, requests: &[Candidate], verdicts: &[AddStatus]) -> AddOutcome {
    for (i, (c, &v)) in requests.iter().zip(verdicts).enumerate() {
        let status = if v == AddStatus::Accepted { AddStatus::TableFull } else { v };
        fail(&mut out, i, c.id(), status);
    }
    out.error_bits = if requests.len() >= 64 { u64::MAX } else { (1u64 << requests.len()) - 1 };
    out.status = AddStatus::TableFull;
    out
}

/// Records one failed request of a stream.
fn fail(out: &mut AddOutcome, i: usize, id: SessionId, status: AddStatus) {
    if i < 64 {
        out.error_bits |= 1 << i;
    }
    out.errors.push(AddError { id, status });
}

/// One packet of a batch (see [`SessionTable::packets`]): its 5-tuple as it travels (in the
/// table's key form), its TCP flags and its whole-frame length.
#[derive(Clone, Copy)]
pub struct PacketIn {
    key: AnyKey,
    pub flags: TcpFlags,
    pub len: u64,
}

impl PacketIn {
    /// A parsed frame's packet, built from its header fields without a [`FiveTuple`].
    #[inline(always)]
    pub fn from_fields(f: &crate::datapath::parse::Fields, len: u64) -> Self {
        use crate::datapath::parse::Addrs;
        let (protocol, src_port, dst_port) = (f.protocol, f.src_port, f.dst_port);
        let key = match f.addrs {
            Addrs::V4 { src, dst } => AnyKey::V4(Key { protocol, src, dst, src_port, dst_port }),
            Addrs::V6 { src, dst } => AnyKey::V6(Key { protocol, src, dst, src_port, dst_port }),
        };
        PacketIn { key, flags: f.flags, len }
    }
}

/// What a packet found in the table (see [`SessionTable::packet`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hit {
    /// No session holds the packet's 5-tuple.
    NoSession,
    /// A TCP control segment (SYN, FIN or RST) of a session: not counted; `closed` says how
    /// the session ended when this segment ended it.
    Control { closed: Option<CloseCode> },
    /// Counted on the session; the session's action.
    Offloaded(Action),
}

/// What [`touch`] did to an entry.
enum Touched {
    Data { action_bits: u32, next_hop: u32 },
    Control { rst: bool, both_fins: bool },
}

/// One packet on a session's entry: counts a data packet in its direction, or notes a FIN.
#[inline]
fn touch<A: Family>(
    e: &mut Entry<A>,
    inbound: bool,
    flags: TcpFlags,
    frame_len: u64,
    now: Timestamp,
    quirks: &Quirks,
) -> Touched {
    if flags.is_control() {
        if flags.fin() {
            e.bits |= if inbound { FIN_IN } else { FIN_OUT };
        }
        if quirks.count_control {
            count(&mut e.counters, inbound, frame_len);
        }
        return Touched::Control { rst: flags.rst(), both_fins: e.bits & (FIN_IN | FIN_OUT) == FIN_IN | FIN_OUT };
    }
    count(&mut e.counters, inbound != quirks.reversed, frame_len);
    e.last_seen = e.last_seen.max(now.0);
    Touched::Data { action_bits: (e.bits >> ACTION_SHIFT) & 3, next_hop: e.next_hop }
}

/// [`touch`] on the entry of candidate `h` when it is of this family, live and holds the
/// packet's tuple `k`; `None` otherwise (the lookup then goes to the index).
#[inline(always)]
fn touch_candidate<A: Family>(
    store: &mut Store<A>,
    h: u32,
    k: &Key<A>,
    flags: TcpFlags,
    frame_len: u64,
    now: Timestamp,
    quirks: &Quirks,
) -> Option<Touched> {
    if !A::owns(h) {
        return None;
    }
    let e = &mut store.slots[(h & !V6_BIT) as usize];
    let inbound = e.holds(k)?;
    Some(touch(e, inbound, flags, frame_len, now, quirks))
}

/// Counts one packet in its direction.
#[inline]
fn count(c: &mut Counters, inbound: bool, frame_len: u64) {
    if inbound {
        c.in_packets += 1;
        c.in_bytes += frame_len;
    } else {
        c.out_packets += 1;
        c.out_bytes += frame_len;
    }
}

/// An addSession stream being committed in chunks (see [`SessionTable::begin_add`]).
#[derive(Debug)]
pub struct AddCommit {
    out: AddOutcome,
    /// Index of the next request to handle.
    next: usize,
    /// Room still reserved for this stream's valid requests not yet handled.
    reserved: usize,
}

impl SessionTable {
    pub fn new(config: TableConfig) -> Result<Self, ConfigError> {
        Self::with_seeds(config, Seeds::random())
    }

    fn with_seeds(config: TableConfig, seeds: Seeds) -> Result<Self, ConfigError> {
        config.validate()?;
        let capacity = config.capacity;
        Ok(SessionTable {
            closed: ClosedQueue::new(config.closed_queue_capacity),
            config,
            // Each family's store may hold the whole capacity; reserved up to 4 Mi entries
            // (larger tables grow by doubling).
            stores: Stores { v4: Store::new(capacity.min(RESERVE_MAX)), v6: Store::new(capacity.min(RESERVE_MAX)) },
            ids: IdIndex::default(),
            // Sized for the configured capacity up front, as a NIC's flow table is: the insert
            // path never rehashes (8 to 16 bytes per session of capacity).
            tuples: TupleIndex::with_capacity(capacity),
            seeds,
            timers: TimerWheel::new(),
            next_hops: NextHops::default(),
            stats: TableStats::default(),
            reserved: 0,
            quirks: Quirks::default(),
            aging: None,
            aged_to: None,
        })
    }

    /// Makes the table imitate datapath defects (conformance-suite testing only).
    pub fn imitate(&mut self, quirks: Quirks) {
        self.quirks = quirks;
    }

    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> TableStats {
        TableStats {
            sessions: self.len(),
            closed_queued: self.closed.len(),
            closed_redelivered: self.closed.redelivered(),
            ..self.stats
        }
    }

    /// The tuple-index hash of a 5-tuple (the same in both directions), and the session that
    /// holds it, if any.
    fn find_tuple(&self, t: &FiveTuple) -> (u64, Option<u32>) {
        if t.is_ipv4() {
            self.find_key(&Key::<[u8; 4]>::of(t).expect(ONE_FAMILY))
        } else {
            self.find_key(&Key::<[u8; 16]>::of(t).expect(ONE_FAMILY))
        }
    }

    fn find_key<A: Family>(&self, k: &Key<A>) -> (u64, Option<u32>) {
        let hash = k.hash(&self.seeds);
        (hash, self.find_hashed(k, hash))
    }

    /// The session holding a key whose hash is known, whatever its family.
    fn find_any(&self, k: &AnyKey, hash: u64) -> Option<u32> {
        match k {
            AnyKey::V4(k) => self.find_hashed(k, hash),
            AnyKey::V6(k) => self.find_hashed(k, hash),
        }
    }

    #[inline]
    fn find_hashed<A: Family>(&self, k: &Key<A>, hash: u64) -> Option<u32> {
        self.find_directed(k, hash).map(|(h, _)| h)
    }

    /// [`SessionTable::find_hashed`] that also tells the packet's direction on the entry.
    #[inline]
    fn find_directed<A: Family>(&self, k: &Key<A>, hash: u64) -> Option<(u32, bool)> {
        let store = A::store(&self.stores);
        self.tuples.find_map(hash, |h| if A::owns(h) { store.slots[(h & !V6_BIT) as usize].direction(k) } else { None })
    }

    /// [`SessionTable::find_directed`] given the first candidate the index names for `hash`
    /// (see [`SessionTable::packet_hashed`]): in the common case that candidate is the session,
    /// and its entry, already compared, spares a second probe of the index. Sessions are
    /// removed between the two looks (a control segment, earlier in a batch, closes one) but
    /// never added, so no candidate means no session; a candidate since removed, or one whose
    /// tag matched by chance, sends the lookup to the index.
    #[inline]
    fn find_from<A: Family>(&self, k: &Key<A>, hash: u64, first: Option<u32>) -> Option<(u32, bool)> {
        let h = first?;
        if A::owns(h) {
            if let Some(inbound) = A::store(&self.stores).slots[(h & !V6_BIT) as usize].holds(k) {
                return Some((h, inbound));
            }
        }
        self.find_directed(k, hash)
    }

    /// Is a session with this 5-tuple (either direction) in the table?
    pub fn contains_tuple(&self, t: &FiveTuple) -> bool {
        self.find_tuple(t).1.is_some()
    }

    /// Inserts one session whose tuple is known absent (capacity available; `hash` is its tuple
    /// hash) and whose id may be in this table: `false`, and nothing changes, when it is. The id
    /// index's insert answers (given the handle the session will get), so the id is searched
    /// for once, not once to ask and again to insert.
    fn insert_unless_id_taken(&mut self, spec: &SessionSpec, hash: u64, now: Timestamp) -> bool {
        let handle =
            if spec.tuple.is_ipv4() { self.stores.v4.next_slot() } else { V6_BIT | self.stores.v6.next_slot() };
        if !self.ids.insert(spec.id, handle) {
            return false;
        }
        let placed = self.place(spec, hash, now);
        debug_assert_eq!(placed, handle, "a store gives out the slot it named");
        true
    }

    /// The parts of an insert other than the id index: the entry, its timer and its tuple's
    /// index slot; returns the session's handle.
    fn place(&mut self, spec: &SessionSpec, hash: u64, now: Timestamp) -> u32 {
        let mut timeout = self.config.effective_timeout(spec.tuple.protocol(), spec.cache_timeout);
        if self.quirks.timeouts_doubled {
            timeout = timeout.saturating_mul(2).min(MAX_TIMEOUT);
        }
        let action_bits = match spec.action {
            Action::Drop => 0,
            Action::Forward => 1,
            Action::Mirror { .. } => 2,
            Action::Snoop { .. } => 3,
        };
        let bits = LIVE
            | if spec.tuple.protocol() == Protocol::Tcp { TCP } else { 0 }
            | (action_bits << ACTION_SHIFT)
            | (timeout << TIMEOUT_SHIFT);
        let next_hop = spec.action.next_hop().map_or(0, |a| self.next_hops.acquire(a));
        let deadline = now.0.saturating_add(u64::from(timeout) * 1_000_000_000);
        let t = &spec.tuple;
        let handle = if t.is_ipv4() {
            let k = Key::<[u8; 4]>::of(t).expect(ONE_FAMILY);
            self.stores.v4.alloc(Entry::new(&k, bits, next_hop, now), Cold::new(spec, now))
        } else {
            let k = Key::<[u8; 16]>::of(t).expect(ONE_FAMILY);
            V6_BIT | self.stores.v6.alloc(Entry::new(&k, bits, next_hop, now), Cold::new(spec, now))
        };
        let tick = self.timers.arm(handle, deadline, now.0);
        self.set_armed(handle, tick);
        self.tuples.insert(hash, handle);
        handle
    }

    fn set_armed(&mut self, handle: u32, tick: u64) {
        if handle & V6_BIT != 0 {
            self.stores.v6.slots[(handle & !V6_BIT) as usize].armed = tick as u32;
        } else {
            self.stores.v4.slots[handle as usize].armed = tick as u32;
        }
    }

    /// Takes a session out of the table (id index, tuple index, slab, next hop) and returns
    /// its last record. Its timer element goes stale and is dropped when it comes due.
    fn remove(&mut self, handle: u32) -> SessionRecord {
        let hash = handle_hash(&self.stores.v4, &self.stores.v6, &self.seeds, handle);
        self.remove_hashed(handle, hash)
    }

    /// [`SessionTable::remove`] with the session's tuple hash already known.
    fn remove_hashed(&mut self, handle: u32, hash: u64) -> SessionRecord {
        let r = take_out(&mut self.stores, &mut self.tuples, &mut self.next_hops, handle, hash);
        self.ids.remove(r.id);
        r
    }

    /// Commits one addSession stream at once (SEMANTICS.md "addSession"): per-request
    /// refusals, then all-or-nothing capacity for the valid rest. The same as
    /// [`SessionTable::begin_add`], [`SessionTable::continue_add`] until done, then
    /// [`SessionTable::finish_add`].
    pub fn add(&mut self, requests: &[Candidate], now: Timestamp) -> AddOutcome {
        match self.begin_add(requests, now) {
            Err(full) => full,
            Ok(mut commit) => {
                while !self.continue_add(&mut commit, requests, usize::MAX) {}
                self.finish_add(commit)
            }
        }
    }

    /// Starts committing a stream: decides capacity for the whole stream and reserves room
    /// for its valid requests, so the inserts may then run in chunks (the caller releases its
    /// lock between chunks and unary calls are not stuck behind a 10,000-session commit).
    /// `Err` is the final answer when the stream does not fit (`_SESSION_TABLE_FULL`).
    pub fn begin_add(&mut self, requests: &[Candidate], now: Timestamp) -> Result<AddCommit, AddOutcome> {
        self.advance(now);
        let out = AddOutcome { status: AddStatus::Accepted, error_bits: 0, errors: Vec::new(), start: now };
        let n_valid = requests.iter().filter(|c| self.valid(c).is_some()).count();
        if self.len() + self.reserved + n_valid > self.config.capacity {
            // Duplicates are not inserted, so count exactly what would be.
            let verdicts = stream_verdicts(
                requests,
                |c| self.valid(c),
                |s| self.ids.contains(s.id) || self.contains_tuple(&s.tuple),
            );
            let fresh = verdicts.iter().filter(|v| **v == AddStatus::Accepted).count();
            if self.len() + self.reserved + fresh > self.config.capacity {
                self.stats.refused += requests.len() as u64;
                return Err(refuse_whole(out, requests, &verdicts));
            }
        }
        self.reserved += n_valid;
        Ok(AddCommit { out, next: 0, reserved: n_valid })
    }

    /// Inserts up to `max` more requests of a stream begun with [`SessionTable::begin_add`]
    /// (the same `requests`); `true` once every request was handled.
    pub fn continue_add(&mut self, commit: &mut AddCommit, requests: &[Candidate], max: usize) -> bool {
        let now = commit.out.start;
        let end = commit.next.saturating_add(max).min(requests.len());
        // As a sharded commit does (`shards::continue_add`): each insert's index slot is
        // requested a few requests ahead, so the slots' misses overlap.
        let prefetch = |t: &Self, j: usize| {
            if let Some(tuple) = tuple_ahead(requests, j, end) {
                t.tuples.prefetch(AnyKey::of(tuple).hash(&t.seeds));
            }
        };
        for j in commit.next..end.min(commit.next + shards::INSERT_AHEAD) {
            prefetch(self, j);
        }
        for (i, c) in requests.iter().enumerate().take(end).skip(commit.next) {
            prefetch(self, i + shards::INSERT_AHEAD);
            let Some(s) = self.valid(c) else {
                fail(&mut commit.out, i, c.id(), AddStatus::Rejected);
                continue;
            };
            commit.reserved -= 1;
            self.reserved -= 1;
            // A duplicate id or tuple: either way `_ALREADY_EXISTS`, and nothing inserted.
            let inserted = match self.find_tuple(&s.tuple) {
                (_, Some(_)) => false,
                (hash, None) => self.insert_unless_id_taken(&s, hash, now),
            };
            if !inserted {
                fail(&mut commit.out, i, s.id, AddStatus::AlreadyExists);
            }
        }
        commit.next = end;
        end == requests.len()
    }

    /// The answer to a stream whose requests were all handled.
    pub fn finish_add(&mut self, commit: AddCommit) -> AddOutcome {
        let AddCommit { mut out, next, reserved } = commit;
        // A commit abandoned half way gives back the room it did not use.
        self.reserved -= reserved;
        self.stats.added += (next - out.errors.len()) as u64;
        self.stats.refused += out.errors.len() as u64;
        out.status = stream_status(&out.errors);
        out
    }

    /// The spec of a request that passes the table's own checks (cacheTimeout ≤ maximum).
    fn valid(&self, c: &Candidate) -> Option<SessionSpec> {
        match c {
            Candidate::Valid(s) if s.cache_timeout <= self.config.max_cache_timeout => Some(*s),
            _ => None,
        }
    }

    /// The record of a session in the table.
    ///
    /// A read, exact without aging first: a session whose deadline has passed is not there,
    /// whether or not an aging pass has closed it yet (its entry cannot have changed since its
    /// deadline: every change to the table ages it first). So getSession need not wait for a
    /// mass expiry to be closed.
    pub fn get(&self, id: SessionId, now: Timestamp) -> Option<SessionRecord> {
        let h = self.ids.get(id)?;
        let never = self.quirks.drop_never_ages;
        with_entry!(self.stores, h, e, c => (!e.due(now.0, never)).then(|| e.record(c))).flatten()
    }

    /// Removes a session at once; its final record has state CLOSED, close code NOT_CLOSED and
    /// `end = now`. It is not queued for getClosedSessions.
    pub fn delete(&mut self, id: SessionId, now: Timestamp) -> Option<SessionRecord> {
        self.advance(now);
        let h = self.ids.get(id)?;
        let mut r = self.remove(h);
        r.state = SessionState::Closed;
        r.end = Some(now);
        self.stats.deleted += 1;
        Some(r)
    }

    /// One page of getAllSessions (SEMANTICS.md "getAllSessions").
    pub fn page(&mut self, args: &PageArgs, now: Timestamp) -> SessionPage {
        self.advance(now);
        let (limit, skip) = if args.page_size == 0 {
            (self.config.max_page, 0)
        } else {
            let size = args.page_size as usize;
            (size.min(self.config.max_page), (args.page.max(1) as usize - 1).saturating_mul(size))
        };
        let mut it = self.ids.range_from(args.start_session).skip(skip);
        let mut records = Vec::with_capacity(limit.min(self.len()));
        for (_, h) in it.by_ref().take(limit) {
            if let Some(r) = with_entry!(self.stores, h, e, c => e.record(c)) {
                records.push(r);
            }
        }
        let next_key = it.next().map_or(0, |(id, _)| id);
        SessionPage { records, next_key }
    }

    /// Closes every session whose idle deadline is at or before `now`; returns how many.
    pub fn advance(&mut self, now: Timestamp) -> usize {
        self.age(now, usize::MAX).0
    }

    /// Does aging to `now` remain to be done (a pass under way, or time moved on)?
    pub fn aging_behind(&self, now: Timestamp) -> bool {
        self.aging.is_some() || self.aged_to.is_none_or(|t| t < now.0)
    }

    /// Ages the table toward `now` with at most `budget` units of work (a timer element visited,
    /// with its session closed when due, is one; so is a record queued, or a run of them
    /// queued whole): returns the sessions whose records were queued (or counted lost to a full
    /// queue) and whether the table is aged to `now`. Steps of a pass, whatever their budgets,
    /// close exactly the sessions one unbounded pass would, at the same deadlines, and queue
    /// their records in the same order (by deadline, then id): a step that runs out keeps its
    /// place, and a pass is finished before one for a later time begins. Between steps the
    /// table may be read ([`SessionTable::get`]); anything that changes it ages it to its time
    /// first.
    pub fn age(&mut self, now: Timestamp, budget: usize) -> (usize, bool) {
        let mut budget = budget.max(1);
        let mut closed = 0;
        loop {
            let pass = match &mut self.aging {
                Some(p) => p,
                None if self.aged_to.is_some_and(|t| t >= now.0) => return (closed, true),
                // Nothing in the wheel to visit: aged to `now` as a pass would leave it, without
                // setting one up.
                None if self.timers.nothing_due(now.0) => {
                    self.aged_to = Some(now.0);
                    return (closed, true);
                }
                None => self.aging.insert(AgingPass { target: now.0, runs: Vec::new(), heads: None }),
            };
            let target = pass.target;
            if pass.heads.is_none() {
                // Each run holds at most a chunk of records, whatever the budget. (The chunk is
                // taken at the first close: a step that closes nothing, as most of the
                // datapath's do, allocates nothing.)
                let mut part = budget.min(closed::CHUNK);
                let mut run = Vec::new();
                let visited = self.visit_due(target, &mut part, &mut run);
                budget -= budget.min(closed::CHUNK) - part;
                if !run.is_empty() {
                    // The step's sessions leave the id index together (see `remove_sorted`).
                    let mut gone: Vec<u64> = run.iter().map(|r| r.id).collect();
                    gone.sort_unstable();
                    self.ids.remove_sorted(&gone);
                    run.sort_unstable_by_key(closing_order);
                    self.aging.as_mut().expect("a pass under way").runs.push((run, 0));
                }
                if !visited {
                    if budget == 0 {
                        return (closed, false);
                    }
                    continue;
                }
                let pass = self.aging.as_mut().expect("a pass under way");
                let heads = pass.runs.iter().enumerate().filter_map(|(i, r)| next_key(r).map(|k| (k, i)));
                pass.heads = Some(heads.map(std::cmp::Reverse).collect());
            }
            // Queuing: the smallest next first, within budget. A run whose records all come
            // before every other run's next is queued as it is (one unit); otherwise a run goes
            // on without the heap while its next is still the smallest.
            let Self { aging, closed: queue, stats, .. } = self;
            let AgingPass { runs, heads, .. } = aging.as_mut().expect("a pass under way");
            let heads = heads.as_mut().expect("queuing");
            while budget > 0 {
                let Some(std::cmp::Reverse((_, i))) = heads.pop() else { break };
                let run = &mut runs[i];
                let last = run.0.last().map(closing_order);
                if heads.peek().is_none_or(|std::cmp::Reverse((top, _))| last <= Some(*top)) {
                    let (records, head) = (std::mem::take(&mut run.0), run.1);
                    let n = records.len() - head;
                    match queue.adopt(records, head) {
                        Ok(()) => {
                            budget -= 1;
                            closed += n;
                            continue;
                        }
                        Err(records) => run.0 = records,
                    }
                }
                loop {
                    let r = run.0[run.1];
                    run.1 += 1;
                    budget -= 1;
                    closed += 1;
                    if !queue.push(r) {
                        stats.closed_overflow += 1;
                    }
                    let Some(next) = next_key(run) else { break };
                    if budget > 0 && heads.peek().is_none_or(|std::cmp::Reverse((top, _))| next <= *top) {
                        continue;
                    }
                    heads.push(std::cmp::Reverse((next, i)));
                    break;
                }
            }
            if !heads.is_empty() {
                return (closed, false);
            }
            // Runs not queued as chunks go back to the queue as room.
            for (run, _) in self.aging.take().map(|p| p.runs).unwrap_or_default() {
                self.closed.recycle(run);
            }
            self.aged_to = Some(target);
        }
    }

    /// Visits timer elements due by `target` (within `budget`): sessions whose deadline has
    /// passed are closed `_TIMEOUT` at their deadline, their records going to `due` (queued
    /// once the pass has visited every element); the others are re-armed at their deadline.
    /// `true` once all were visited.
    fn visit_due(&mut self, target: u64, budget: &mut usize, due: &mut Vec<SessionRecord>) -> bool {
        let drop_never_ages = self.quirks.drop_never_ages;
        let Self { seeds, stores, tuples, next_hops, stats, timers, closed, .. } = self;
        // A close reads the session's entry (hot and cold parts) and removes its 5-tuple from
        // the index: the entries of the elements to come are requested from memory a few visits
        // ahead and, nearer, the index slots of those whose entry says they are due (their
        // hashes kept for the close, in a small ring checked by handle).
        let addrs = EntryAddrs::of(&stores.v4, &stores.v6);
        let mut hashes = [(u32::MAX, 0u64); 8];
        timers.advance_bounded(
            target,
            budget,
            |h| addrs.prefetch(h),
            |wheel, d| {
                if let Some(n) = d.near {
                    let due = if n & V6_BIT != 0 {
                        stores.v6.get(n & !V6_BIT).is_some_and(|e| e.due(target, drop_never_ages))
                    } else {
                        stores.v4.get(n).is_some_and(|e| e.due(target, drop_never_ages))
                    };
                    if due {
                        let hash = handle_hash(&stores.v4, &stores.v6, seeds, n);
                        tuples.prefetch_run(hash);
                        hashes[n as usize % 8] = (n, hash);
                    }
                }
                let h = d.handle;
                let entry_armed_deadline = if h & V6_BIT != 0 {
                    stores.v6.get(h & !V6_BIT).map(|e| (e.armed, e.deadline(), e.never_ages(drop_never_ages)))
                } else {
                    stores.v4.get(h).map(|e| (e.armed, e.deadline(), e.never_ages(drop_never_ages)))
                };
                let Some((armed, deadline, never)) = entry_armed_deadline else { return };
                if let Some(t) = d.tick {
                    let ahead = armed.wrapping_sub(t as u32);
                    if ahead != 0 {
                        if ahead < 1 << 31 && timers::same_bucket(u64::from(ahead)) {
                            // Armed for a later turn of the wheel (a timeout longer than the wheel
                            // spans): keep it in this bucket.
                            wheel.arm(h, (t + u64::from(ahead)) * timers::TICK_NS, target);
                        }
                        // Otherwise a stale element: the session was re-armed elsewhere, or its slot
                        // now holds another session with its own element.
                        return;
                    }
                }
                // A session that never ages is looked at again an hour on.
                if deadline <= target && !never {
                    let hash = match hashes[h as usize % 8] {
                        (k, hash) if k == h => hash,
                        _ => handle_hash(&stores.v4, &stores.v6, seeds, h),
                    };
                    let r = take_out(stores, tuples, next_hops, h, hash);
                    let r = ended(r, CloseCode::Timeout, Timestamp(deadline));
                    stats.closed_timeout += 1;
                    if due.capacity() == 0 {
                        *due = closed.chunk();
                    }
                    due.push(r);
                } else {
                    let at = if never { target + 3_600_000_000_000 } else { deadline };
                    let tick = wheel.arm(h, at, target) as u32;
                    if h & V6_BIT != 0 {
                        stores.v6.slots[(h & !V6_BIT) as usize].armed = tick;
                    } else {
                        stores.v4.slots[h as usize].armed = tick;
                    }
                }
            },
        )
    }

    /// Ends a live session with `code` at `at`: out of the table, its record queued.
    fn close(&mut self, handle: u32, code: CloseCode, at: Timestamp) {
        let hash = handle_hash(&self.stores.v4, &self.stores.v6, &self.seeds, handle);
        self.close_hashed(handle, hash, code, at);
    }

    fn close_hashed(&mut self, handle: u32, hash: u64, code: CloseCode, at: Timestamp) {
        let r = ended(self.remove_hashed(handle, hash), code, at);
        match code {
            CloseCode::FinAck => self.stats.closed_finack += 1,
            CloseCode::Rst => self.stats.closed_rst += 1,
            CloseCode::Timeout | CloseCode::NotClosed => self.stats.closed_timeout += 1,
        }
        if !self.closed.push(r) {
            self.stats.closed_overflow += 1;
        }
    }

    /// What one packet of the datapath does to the table (SEMANTICS.md "Closing" and "Actions
    /// on the datapath"), at `now`: first every session due by then closes; then the session
    /// holding the packet's 5-tuple in either direction, if any, is found.
    /// - A TCP segment with SYN, FIN or RST is not counted and does not keep the session alive;
    ///   with `close_on_flags`, RST closes the session `_RST` and the second direction's FIN
    ///   closes it `_FINACK`.
    /// - Any other packet is counted on the session in its direction ("in" when it travels as
    ///   the session was added) with `frame_len` bytes, keeps the session alive, and gets the
    ///   session's action.
    pub fn packet(
        &mut self,
        tuple: &FiveTuple,
        flags: TcpFlags,
        frame_len: u64,
        now: Timestamp,
        close_on_flags: bool,
    ) -> Hit {
        self.advance(now);
        let p = PacketIn { key: AnyKey::of(tuple), flags, len: frame_len };
        let hash = p.key.hash(&self.seeds);
        let first = self.tuples.first_candidate(hash);
        self.packet_hashed(&p, hash, first, now, close_on_flags)
    }

    /// [`SessionTable::packet`] for a batch of packets at one time, with the same result
    /// packet by packet (in order: a packet that closes a session makes the later ones of its
    /// flow misses). The work is pipelined so the memory loads of many packets overlap with
    /// the handling of earlier ones (prefetches are hints: each packet is still looked up
    /// afresh when handled).
    pub fn packets(&mut self, batch: &[PacketIn], now: Timestamp, close_on_flags: bool, out: &mut Vec<Hit>) {
        self.advance(now);
        out.reserve(batch.len());
        let emit = |_: usize, hit: Hit| out.push(hit);
        self.pipeline(batch.len(), |s, i| batch[i].key.hash(s), |i| &batch[i], now, close_on_flags, emit);
    }

    /// [`SessionTable::packets`] on the packets `order` names in `batch`, whose hashes a
    /// [`shards::ShardMap`] of this table computed (`hashes`, by place in `batch`): each hit
    /// is written to its packet's place in `hits` (as long as `batch`).
    pub(crate) fn packets_hashed(
        &mut self,
        batch: &[PacketIn],
        hashes: &[u64],
        order: &[u32],
        now: Timestamp,
        close_on_flags: bool,
        hits: &mut [Hit],
    ) {
        self.advance(now);
        let hash = |_: &Seeds, i: usize| hashes[order[i] as usize];
        let emit = |i: usize, hit: Hit| hits[order[i] as usize] = hit;
        self.pipeline(order.len(), hash, |i| &batch[order[i] as usize], now, close_on_flags, emit);
    }

    /// The lookups of `n` packets (`hash` and `packet` give the i-th) as a software pipeline.
    #[inline]
    fn pipeline<'b>(
        &mut self,
        n: usize,
        hash: impl Fn(&Seeds, usize) -> u64,
        packet: impl Fn(usize) -> &'b PacketIn,
        now: Timestamp,
        close_on_flags: bool,
        mut emit: impl FnMut(usize, Hit),
    ) {
        // A software pipeline over the batch: packet i's index slot is fetched at step i, its
        // entry at step i + AHEAD (once the slot has arrived and names it), and the packet is
        // handled at step i + 2 * AHEAD (once the entry has arrived). Loads of 2 * AHEAD
        // packets are in flight while the core computes, and no step waits for a whole group.
        // Only the hashes and the first candidates travel in the ring; a packet's key is read
        // from the batch when used. The candidate the index named at step i + AHEAD is the
        // one tried first at step i + 2 * AHEAD (the index is not probed twice for it).
        const AHEAD: usize = 12;
        const RING: usize = 32; // a power of two > 2 * AHEAD
        let mut hashes = [0u64; RING];
        let mut firsts = [None; RING];
        for step in 0..n + 2 * AHEAD {
            if step < n {
                let h = hash(&self.seeds, step);
                self.tuples.prefetch(h);
                hashes[step % RING] = h;
            }
            if let Some(j) = step.checked_sub(AHEAD).filter(|&j| j < n) {
                let first = self.tuples.first_candidate(hashes[j % RING]);
                firsts[j % RING] = first;
                if let Some(c) = first {
                    let e: *const u8 = if c & V6_BIT != 0 {
                        self.stores.v6.slots.as_ptr().wrapping_add((c & !V6_BIT) as usize).cast()
                    } else {
                        self.stores.v4.slots.as_ptr().wrapping_add(c as usize).cast()
                    };
                    index::prefetch(e);
                    if c & V6_BIT != 0 {
                        // An IPv6 hot entry spans two lines; an IPv4 one is a single line.
                        index::prefetch(e.wrapping_add(64));
                    }
                }
            }
            if let Some(j) = step.checked_sub(2 * AHEAD).filter(|&j| j < n) {
                let p = packet(j);
                let (hash, first) = (hashes[j % RING], firsts[j % RING]);
                emit(j, self.packet_hashed(p, hash, first, now, close_on_flags));
            }
        }
    }

    /// One packet whose tuple hash is `hash`, and `first` the first handle the index holds
    /// under that hash's tag ([`TupleIndex::first_candidate`], asked since the last session
    /// was added: `None` means the tuple has no session).
    ///
    /// The common case is handled inline (a data packet whose candidate is its session, or a
    /// packet without a candidate), the rest by [`SessionTable::packet_found`], out of line: the
    /// pipeline's loop then holds only the few instructions most packets need.
    #[inline(always)]
    fn packet_hashed(
        &mut self,
        p: &PacketIn,
        hash: u64,
        first: Option<u32>,
        now: Timestamp,
        close_on_flags: bool,
    ) -> Hit {
        let Some(h) = first else { return Hit::NoSession };
        let (flags, len) = (p.flags, p.len);
        if !flags.is_control() {
            let touched = match &p.key {
                AnyKey::V4(k) => touch_candidate(&mut self.stores.v4, h, k, flags, len, now, &self.quirks),
                AnyKey::V6(k) => touch_candidate(&mut self.stores.v6, h, k, flags, len, now, &self.quirks),
            };
            if let Some(Touched::Data { action_bits, next_hop }) = touched {
                return self.offloaded(action_bits, next_hop);
            }
        }
        self.packet_found(p, hash, first, now, close_on_flags)
    }

    /// [`SessionTable::packet_hashed`] for any packet: the lookup from its candidate (see
    /// [`SessionTable::find_from`]), control segments and their closes.
    #[inline(never)]
    fn packet_found(
        &mut self,
        p: &PacketIn,
        hash: u64,
        first: Option<u32>,
        now: Timestamp,
        close_on_flags: bool,
    ) -> Hit {
        let (quirks, flags, frame_len) = (&self.quirks, p.flags, p.len);
        // One comparison of the key finds the entry and the packet's direction on it.
        let found = match &p.key {
            AnyKey::V4(k) => self.find_from(k, hash, first).map(|(h, inbound)| {
                (h, touch(&mut self.stores.v4.slots[h as usize], inbound, flags, frame_len, now, quirks))
            }),
            AnyKey::V6(k) => self.find_from(k, hash, first).map(|(h, inbound)| {
                (h, touch(&mut self.stores.v6.slots[(h & !V6_BIT) as usize], inbound, flags, frame_len, now, quirks))
            }),
        };
        let Some((handle, touched)) = found else { return Hit::NoSession };
        match touched {
            Touched::Data { action_bits, next_hop } => self.offloaded(action_bits, next_hop),
            Touched::Control { rst, both_fins } => {
                let code = match (close_on_flags, rst, both_fins) {
                    (false, _, _) => None,
                    (true, true, _) => Some(CloseCode::Rst),
                    (true, false, true) => Some(CloseCode::FinAck),
                    (true, false, false) => None,
                };
                if let Some(code) = code {
                    let recorded = if self.quirks.close_code_timeout { CloseCode::Timeout } else { code };
                    self.close(handle, recorded, now);
                }
                Hit::Control { closed: code }
            }
        }
    }

    /// The hit of a data packet counted on a session with these action bits and next hop.
    #[inline(always)]
    fn offloaded(&self, action_bits: u32, next_hop: u32) -> Hit {
        let hop = if action_bits >= 2 { self.next_hops.get(next_hop) } else { None };
        Hit::Offloaded(match (action_bits, hop) {
            (2, Some(next_hop)) if !self.quirks.mirror_as_drop => Action::Mirror { next_hop },
            (3, Some(next_hop)) => Action::Snoop { next_hop },
            (1, _) => Action::Forward,
            _ => Action::Drop,
        })
    }

    /// The queue of closed records.
    pub fn closed(&mut self) -> &mut ClosedQueue {
        &mut self.closed
    }

    /// The room this table lacks for an expiry of all its sessions, in closed-record chunks: one
    /// per 1,024 sessions, within the queue's capacity (an aging pass writes its records into
    /// such chunks and queues them). Make it outside the table's lock ([`Room::new`]) and hand
    /// it over ([`SessionTable::add_room`]): a mass expiry then writes its records into memory
    /// already mapped, without page faults under the lock (a third of an expiry's time when
    /// the memory is fresh). Room beyond what is wanted is freed here. Nothing is asked during
    /// a pass (its records are in runs, counted neither as sessions nor as queued).
    pub fn room_lacking(&mut self) -> usize {
        if self.aging.is_some() {
            return 0;
        }
        self.closed.want_room(self.len())
    }

    /// Takes room made ready, as much of it as is wanted (the rest is freed).
    pub fn add_room(&mut self, room: Room) {
        self.closed.add_room(room);
    }

    /// Both of the above at once (a table with no lock around it); returns the chunks made.
    pub fn ready_room(&mut self) -> usize {
        let lacking = self.room_lacking();
        if lacking > 0 {
            self.add_room(Room::new(lacking));
        }
        lacking
    }

    /// Chunks of room ready and not in use.
    pub fn room_spare(&self) -> usize {
        self.closed.spare_chunks()
    }

    /// What a session in the table was added with; `cache_timeout` is the effective timeout
    /// (the protocol default when 0 was asked).
    pub fn spec(&self, id: SessionId) -> Option<SessionSpec> {
        let h = self.ids.get(id)?;
        with_entry!(self.stores, h, e, c => self.spec_of(e, c))
    }

    fn spec_of<A: Family>(&self, e: &Entry<A>, c: &Cold) -> SessionSpec {
        let hop = self.next_hops.get(e.next_hop);
        let action = match ((e.bits >> ACTION_SHIFT) & 3, hop) {
            (2, Some(next_hop)) => Action::Mirror { next_hop },
            (3, Some(next_hop)) => Action::Snoop { next_hop },
            (1, _) => Action::Forward,
            _ => Action::Drop,
        };
        let tuple = FiveTuple::new(e.protocol(), e.src.ip(), e.src_port, e.dst.ip(), e.dst_port)
            .expect("an entry holds addresses of its store's family");
        SessionSpec {
            id: c.id,
            tuple,
            action,
            in_lif: c.in_lif,
            out_lif: c.out_lif,
            cache_timeout: e.timeout_secs() as u32,
        }
    }
}

// After the macros above, which it uses.
pub mod shards;
