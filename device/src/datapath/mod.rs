//! The datapath: what the device does with each frame.
//!
//! The core is pure (sans-IO): [`decide`] is a function of a frame, the port it came in on, the
//! session table and the time; it returns where the frame goes and whether a copy goes to the
//! collector. The shells around it only move bytes:
//! - [`mem`]: the in-memory wire, deterministic and in virtual time (simulation and tests);
//! - [`uring`]: kernel ports (UDP wire, TAP, AF_PACKET) driven by an io_uring ring per worker, multishot
//!   receive into provided buffer rings, batched zero-copy sends.
//!
//! A table (or each shard of a sharded device's table) is locked once per batch of received
//! frames, never per packet; the control plane reads counters between batches.
//!
//! - [`parse`]: an Ethernet frame to its session key, or the reason it takes the miss path.
//! - [`gre`]: the GRE encapsulation of MIRROR and SNOOP copies.
//! - [`metrics`]: per-port and per-reason counters, and their Prometheus text form.
//! - [`steer`]: the hash that places a flow's session in a shard, and the kernel program that
//!   sends the flow's frames to that shard's worker.

pub mod gre;
pub mod mem;
pub mod metrics;
pub mod parse;
pub mod steer;
pub mod uring;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use opof_proto::domain::{Action, CloseCode, Timestamp};

use crate::table::{Hit, PacketIn, SessionTable};
use parse::MissReason;

/// The device's ports (SEMANTICS.md "Topology").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortId {
    Ext0,
    Ext1,
    Vnf0,
    Vnf1,
    Collector,
}

impl PortId {
    pub const ALL: [PortId; 5] = [PortId::Ext0, PortId::Ext1, PortId::Vnf0, PortId::Vnf1, PortId::Collector];

    pub fn name(self) -> &'static str {
        match self {
            PortId::Ext0 => "ext0",
            PortId::Ext1 => "ext1",
            PortId::Vnf0 => "vnf0",
            PortId::Vnf1 => "vnf1",
            PortId::Collector => "collector",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The external port across from this one (FORWARD).
    fn across(self) -> Option<PortId> {
        match self {
            PortId::Ext0 => Some(PortId::Ext1),
            PortId::Ext1 => Some(PortId::Ext0),
            _ => None,
        }
    }
}

impl std::fmt::Display for PortId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PortId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PortId::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("{s:?} is not a port (ext0, ext1, vnf0, vnf1, collector)"))
    }
}

/// How the datapath behaves; the defaults are the reference profile of SEMANTICS.md.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Close sessions on TCP FIN from both sides (`_FINACK`) and on RST (`_RST`); when false
    /// sessions close on timeout only (as the BlueField daemon does).
    pub close_on_tcp_flags: bool,
    /// Bytes of a frame a SNOOP copy keeps.
    pub snoop_bytes: usize,
    pub collector: CollectorConfig,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig { close_on_tcp_flags: true, snoop_bytes: 128, collector: CollectorConfig::default() }
    }
}

/// Addresses of the GRE copies sent out of the collector port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorConfig {
    /// Outer source MAC (the device's collector port).
    pub src_mac: [u8; 6],
    /// Outer destination MAC (the collector, or the gateway towards the next hops). The
    /// default, broadcast, reaches a collector on the same segment without ARP.
    pub dst_mac: [u8; 6],
    /// Outer source addresses, per family of the next hop.
    pub src_v4: Ipv4Addr,
    pub src_v6: Ipv6Addr,
    pub ttl: u8,
    /// The collector link's MTU when the collector port is a UDP wire (an interface's MTU is
    /// read from the interface): copies longer than it leave as IP fragments.
    pub udp_mtu: usize,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            src_mac: [0x02, 0x00, 0x5e, 0x0f, 0x0f, 0x01],
            dst_mac: [0xff; 6],
            src_v4: Ipv4Addr::new(192, 0, 2, 1),
            src_v6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            ttl: 64,
            udp_mtu: 1500,
        }
    }
}

/// Why a frame went where it went (for metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// From an external port, unparseable or not TCP/UDP: the miss path.
    Miss(MissReason),
    /// From an external port, TCP/UDP, no session: the miss path.
    NoSession,
    /// A TCP control segment of a session: the miss path, not counted; `closed` when it ended
    /// the session.
    Control(Option<CloseCode>),
    /// Counted on its session and handled by the session's action.
    Offloaded(ActionKind),
    /// Sent by the VNF: out the external port of its side.
    FromVnf,
    /// Received on the collector port: not for the datapath, discarded.
    AtCollector,
}

/// An action without its next hop (for counting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActionKind {
    Drop,
    Forward,
    Mirror,
    Snoop,
}

impl ActionKind {
    pub const ALL: [ActionKind; 4] = [ActionKind::Drop, ActionKind::Forward, ActionKind::Mirror, ActionKind::Snoop];
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Drop => "drop",
            ActionKind::Forward => "forward",
            ActionKind::Mirror => "mirror",
            ActionKind::Snoop => "snoop",
        }
    }
}

/// A copy of the frame for the collector: the first `len` bytes, GRE-encapsulated to `next_hop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyOrder {
    pub next_hop: IpAddr,
    pub len: usize,
}

/// What to do with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The port the frame leaves on; `None`: dropped.
    pub out: Option<PortId>,
    /// A copy for the collector port.
    pub copy: Option<CopyOrder>,
    pub class: Class,
}

/// Decides one frame that came in on `port` at `now` (SEMANTICS.md "Topology", "Actions on
/// the datapath", "Closing"). Counts it on its session, notes TCP control segments, and may
/// close sessions (due ones first, then one a control segment ends).
pub fn decide(table: &mut SessionTable, cfg: &DatapathConfig, port: PortId, frame: &[u8], now: Timestamp) -> Decision {
    match before_lookup(port, frame) {
        Err(d) => d,
        Ok(p) => {
            let hit = table.packet(&p.tuple, p.flags, frame.len() as u64, now, cfg.close_on_tcp_flags);
            from_hit(cfg, port, frame.len(), hit)
        }
    }
}

/// Frames whose heads are fetched ahead of parsing in [`decide_batch`].
const PARSE_AHEAD: usize = 8;

/// Reusable buffers of [`decide_batch`].
pub struct Batch {
    /// The shard a sharded table's batch tries first: batches of different workers start at
    /// different shards and so seldom wait for each other.
    pub(crate) prefer: usize,
    /// The frames looked up (in batch order), and the port each came in on.
    pub(crate) packets: Vec<PacketIn>,
    ports: Vec<PortId>,
    /// The frames decided without a lookup: each with its place in the batch.
    early: Vec<(u32, Decision)>,
    pub(crate) hits: Vec<Hit>,
    /// A sharded table's batch (see `Device::decide_batch`): each packet's tuple hash,
    pub(crate) hashes: Vec<u64>,
    /// and the places in `packets` of each shard's packets (shard k's listed from k × the
    /// length of the chunk being looked up on).
    pub(crate) order: Vec<u32>,
    /// Lookups of a batch (or of a chunk of a long one) that spanned more than one shard, since
    /// last taken.
    pub(crate) across_shards: u64,
}

impl Batch {
    /// How many batches were looked up in more than one shard since the last call (for
    /// [`metrics::Tally::batches_across_shards`]).
    pub fn take_across_shards(&mut self) -> u64 {
        std::mem::take(&mut self.across_shards)
    }
}

impl Default for Batch {
    fn default() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        Batch {
            prefer: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            packets: Vec::new(),
            ports: Vec::new(),
            early: Vec::new(),
            hits: Vec::new(),
            hashes: Vec::new(),
            order: Vec::new(),
            across_shards: 0,
        }
    }
}

/// Decides a batch of frames that came in at `now`: the same decisions as [`decide`] frame by
/// frame, in order, with the table's lookups of the whole batch overlapped (see
/// [`SessionTable::packets`]). `out` receives one decision per frame. The frames are walked
/// twice (a clone of the iterator runs a few frames ahead, requesting each frame's head from
/// memory), so the iterator must be cheap to clone and yield the same frames both times.
pub fn decide_batch<'a, F>(
    table: &mut SessionTable,
    cfg: &DatapathConfig,
    frames: F,
    now: Timestamp,
    scratch: &mut Batch,
    out: &mut Vec<Decision>,
) where
    F: IntoIterator<Item = (PortId, &'a [u8])>,
    F::IntoIter: Clone,
{
    parse_batch(frames, scratch);
    if !scratch.packets.is_empty() {
        table.packets(&scratch.packets, now, cfg.close_on_tcp_flags, &mut scratch.hits);
    }
    finish_batch(cfg, scratch, out);
}

/// The first half of [`decide_batch`]: parses the frames; a frame that needs no lookup gets its
/// decision in `scratch.early`, one that does its packet in `scratch.packets`.
pub(crate) fn parse_batch<'a, F>(frames: F, scratch: &mut Batch)
where
    F: IntoIterator<Item = (PortId, &'a [u8])>,
    F::IntoIter: Clone,
{
    scratch.packets.clear();
    scratch.ports.clear();
    scratch.early.clear();
    scratch.hits.clear();
    // Frames are parsed a few behind the one whose head is being fetched, so parsing does not
    // wait for a frame that is not in cache yet: a second walk of the frames (`ahead`, a copy
    // of the iterator) runs PARSE_AHEAD frames in front and only requests each frame's head.
    let frames = frames.into_iter();
    let mut ahead = frames.clone();
    for (_, f) in ahead.by_ref().take(PARSE_AHEAD) {
        crate::table::prefetch(f.as_ptr());
    }
    for (k, (port, frame)) in frames.enumerate() {
        if let Some((_, next)) = ahead.next() {
            crate::table::prefetch(next.as_ptr());
        }
        let place = k as u32;
        // The external ports first, in one comparison (the frames that are looked up).
        if !matches!(port, PortId::Ext0 | PortId::Ext1) {
            if let Some(d) = without_lookup(port) {
                scratch.early.push((place, d));
                continue;
            }
        }
        // Parsed straight into the table's key, no `FiveTuple` in between, and pushed where the
        // parser knows the family (the packet's bytes are written for its family alone).
        let packets = &mut scratch.packets;
        match parse::parse_with(frame, |f| packets.push(PacketIn::from_fields(&f, frame.len() as u64))) {
            Err(reason) => scratch.early.push((place, miss(port, reason))),
            Ok(()) => scratch.ports.push(port),
        }
    }
}

/// The second half of [`decide_batch`]: the batch's decisions in order into `out`, the
/// looked-up packets' from their hits (`scratch.hits`, one per packet).
pub(crate) fn finish_batch(cfg: &DatapathConfig, scratch: &Batch, out: &mut Vec<Decision>) {
    let looked_up = scratch.packets.iter().zip(&scratch.ports).zip(&scratch.hits);
    if scratch.early.is_empty() {
        // Every frame was looked up (the rule on the external ports): one pass, no merge.
        out.extend(looked_up.map(|((p, &port), &hit)| from_hit(cfg, port, p.len as usize, hit)));
        return;
    }
    out.reserve(scratch.packets.len() + scratch.early.len());
    let mut early = scratch.early.iter().peekable();
    let mut place = 0;
    for ((p, &port), &hit) in looked_up {
        while let Some(&(_, d)) = early.next_if(|&&(at, _)| at == place) {
            out.push(d);
            place += 1;
        }
        out.push(from_hit(cfg, port, p.len as usize, hit));
        place += 1;
    }
    out.extend(early.map(|&(_, d)| d));
}

/// Where a frame goes without a table lookup (from the VNF, at the collector, unparseable),
/// or what to look up.
#[inline]
fn before_lookup(port: PortId, frame: &[u8]) -> Result<parse::Parsed, Decision> {
    if let Some(d) = without_lookup(port) {
        return Err(d);
    }
    parse::parse(frame).map_err(|reason| miss(port, reason))
}

/// Where a frame that came in on `port` goes whatever it holds; `None` for external ports.
#[inline]
fn without_lookup(port: PortId) -> Option<Decision> {
    match port {
        PortId::Ext0 | PortId::Ext1 => None,
        PortId::Vnf0 => Some(Decision { out: Some(PortId::Ext0), copy: None, class: Class::FromVnf }),
        PortId::Vnf1 => Some(Decision { out: Some(PortId::Ext1), copy: None, class: Class::FromVnf }),
        PortId::Collector => Some(Decision { out: None, copy: None, class: Class::AtCollector }),
    }
}

/// An unparseable frame from external `port`: to the VNF, counted as a miss.
fn miss(port: PortId, reason: parse::MissReason) -> Decision {
    Decision { out: Some(miss_port(port)), copy: None, class: Class::Miss(reason) }
}

/// The VNF port of an external port's side.
fn miss_port(port: PortId) -> PortId {
    if port == PortId::Ext0 {
        PortId::Vnf0
    } else {
        PortId::Vnf1
    }
}

/// The decision for a frame of `len` bytes from external `port` whose lookup gave `hit`.
#[inline]
fn from_hit(cfg: &DatapathConfig, port: PortId, len: usize, hit: Hit) -> Decision {
    let to_vnf = |class| Decision { out: Some(miss_port(port)), copy: None, class };
    match hit {
        Hit::NoSession => to_vnf(Class::NoSession),
        Hit::Control { closed } => to_vnf(Class::Control(closed)),
        Hit::Offloaded(action) => {
            let across = port.across();
            match action {
                Action::Drop => Decision { out: None, copy: None, class: Class::Offloaded(ActionKind::Drop) },
                Action::Forward => Decision { out: across, copy: None, class: Class::Offloaded(ActionKind::Forward) },
                Action::Mirror { next_hop } => Decision {
                    out: across,
                    copy: Some(CopyOrder { next_hop, len }),
                    class: Class::Offloaded(ActionKind::Mirror),
                },
                Action::Snoop { next_hop } => Decision {
                    out: across,
                    copy: Some(CopyOrder { next_hop, len: len.min(cfg.snoop_bytes) }),
                    class: Class::Offloaded(ActionKind::Snoop),
                },
            }
        }
    }
}
