//! Domain values of the offload API, validated: a value of these types is always meaningful.
//! Wire messages become domain values only through [`crate::convert`].

use std::fmt;
use std::net::IpAddr;

/// Session ids are chosen by the client (the VNF). Every 64-bit value is valid, 0 included.
pub type SessionId = u64;

/// A point in time: nanoseconds since the Unix epoch.
///
/// The device's clock produces these. In real mode the clock is monotonic and anchored to the
/// wall clock at start; in simulation it follows the timestamps of the replayed traffic. Either
/// way the value is also the wall time reported on the wire (`startTime`, `endTime`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const fn from_secs(s: u64) -> Self {
        Timestamp(s.saturating_mul(1_000_000_000))
    }
    pub const fn nanos(self) -> u64 {
        self.0
    }
    pub const fn saturating_add_secs(self, s: u64) -> Self {
        Timestamp(self.0.saturating_add(s.saturating_mul(1_000_000_000)))
    }
    pub const fn saturating_add_nanos(self, n: u64) -> Self {
        Timestamp(self.0.saturating_add(n))
    }
}

/// Transport protocols whose sessions can be offloaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IANA protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// The 5-tuple of a session as the client added it (source → destination is the "in"
/// direction). Both addresses are of the same family; [`FiveTuple::new`] enforces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    protocol: Protocol,
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
}

impl FiveTuple {
    /// `None` when the two addresses are of different families.
    pub fn new(protocol: Protocol, src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Option<Self> {
        (src.is_ipv4() == dst.is_ipv4()).then_some(FiveTuple { protocol, src, dst, src_port, dst_port })
    }
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
    pub fn src(&self) -> IpAddr {
        self.src
    }
    pub fn dst(&self) -> IpAddr {
        self.dst
    }
    pub fn src_port(&self) -> u16 {
        self.src_port
    }
    pub fn dst_port(&self) -> u16 {
        self.dst_port
    }
    pub fn is_ipv4(&self) -> bool {
        self.src.is_ipv4()
    }
    /// The same flow seen from the other side.
    pub fn reversed(&self) -> Self {
        FiveTuple {
            protocol: self.protocol,
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

impl fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let sock = |a: IpAddr, port: u16| match a {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        };
        write!(f, "{p} {} -> {}", sock(self.src, self.src_port), sock(self.dst, self.dst_port))
    }
}

/// What the device does with the packets of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Drop,
    Forward,
    /// Forward, and send an exact copy to the collector at `next_hop`.
    Mirror {
        next_hop: IpAddr,
    },
    /// Forward, and send a copy cut to its headers to the collector at `next_hop`.
    Snoop {
        next_hop: IpAddr,
    },
}

impl Action {
    pub fn next_hop(&self) -> Option<IpAddr> {
        match *self {
            Action::Mirror { next_hop } | Action::Snoop { next_hop } => Some(next_hop),
            Action::Drop | Action::Forward => None,
        }
    }
}

/// One validated addSession request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionSpec {
    pub id: SessionId,
    pub tuple: FiveTuple,
    pub action: Action,
    /// Logical interfaces: stored with the session, not used for matching.
    pub in_lif: i32,
    pub out_lif: i32,
    /// Idle timeout in seconds; 0 means the device's default for the protocol.
    pub cache_timeout: u32,
}

/// Packet and byte counters of a session. "in" is source → destination as added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    pub in_packets: u64,
    pub out_packets: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionState {
    Established,
    /// A FIN was seen from one side.
    Closing1,
    /// FINs were seen from both sides (the session is about to close).
    Closing2,
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CloseCode {
    NotClosed,
    FinAck,
    Rst,
    Timeout,
}

/// A session as reported by getSession, deleteSession, getAllSessions and getClosedSessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionRecord {
    pub id: SessionId,
    pub counters: Counters,
    pub state: SessionState,
    pub close_code: CloseCode,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
}

/// Why one request of an addSession stream failed (the ADD_SESSION_STATUS it reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddStatus {
    Accepted,
    Rejected,
    TableFull,
    TableUnavailable,
    AlreadyExists,
}

/// One failed request of an addSession stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddError {
    pub id: SessionId,
    pub status: AddStatus,
}

/// The answer to a whole addSession stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddOutcome {
    pub status: AddStatus,
    /// Bit i set: the i-th request of the stream (i < 64) failed.
    pub error_bits: u64,
    /// Every failed request, in stream order.
    pub errors: Vec<AddError>,
    /// Commit time.
    pub start: Timestamp,
}

/// Paging arguments of getAllSessions and getClosedSessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageArgs {
    /// 0: no paging.
    pub page_size: u32,
    /// 1-based page number; 0 is read as 1.
    pub page: u32,
    pub start_session: SessionId,
    /// Project extension: getClosedSessions stays open and streams records as sessions close.
    pub follow: bool,
}

/// One page of getAllSessions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionPage {
    pub records: Vec<SessionRecord>,
    /// Id of the next session not returned; 0 when none is left.
    pub next_key: SessionId,
}
