//! Fault injection: the reference device made to behave like a known defective implementation,
//! one named defect at a time, so that the conformance suite can prove it catches each one.
//!
//! The defects are those met in the field (docs/WIRE.md "Field variants") and a few plain bugs. Each is applied
//! where such a device would get it wrong — the wire layer for encodings and statuses, the
//! device for table behaviour — and nowhere else: with no fault set, none of this code runs.
//! Never use a faulty device for anything but testing the suite; it logs a warning at start.

use std::fmt;
use std::str::FromStr;

/// One defect of a non-conformant device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// getSession / deleteSession of an unknown id answer gRPC NOT_FOUND instead of OK with
    /// `_REJECTED_SESSION_NONEXISTENT`.
    NotFoundStatus,
    /// `responseError.errorStatus` carries gRPC status numbers (3 INVALID_ARGUMENT,
    /// 6 ALREADY_EXISTS, 8 RESOURCE_EXHAUSTED) instead of ADD_SESSION_STATUS values.
    GrpcCodesInResponseError,
    /// A stream that does not fit inserts what fits, and flags only the rest.
    PartialInsertWhenFull,
    /// getAllSessions ignores `pageSize` and `page` and returns everything.
    PageSizeIgnored,
    /// getClosedSessions hands records out without removing them from the queue.
    ClosedRepeated,
    /// MIRROR and SNOOP without a next hop are accepted (as FORWARD).
    MirrorWithoutNextHop,
    /// IPv4 addresses are read as big-endian integers instead of `s_addr` little-endian.
    Ipv4WrongByteOrder,
    /// Session ids are truncated to 32 bits (as one server in the field does).
    IdTruncated32,
    /// An empty getClosedSessions answers gRPC NOT_FOUND instead of an empty OK stream.
    ClosedEmptyNotFound,
    /// deleteSession also queues the deleted session for getClosedSessions.
    DeleteQueuesClosed,
    /// An addSession stream that the client resets (cancels) is committed as if it had ended.
    CancelledStreamInserts,
    /// The datapath counts each packet in the other direction's counters ("in" for "out").
    WrongDirectionCounted,
    /// DROP sessions never time out.
    DropNeverAges,
    /// MIRROR sessions drop their packets (no forward, no copy), as if they were DROP.
    MirrorAsDrop,
    /// TCP control segments (SYN, FIN, RST) are counted on their session.
    ControlCounted,
    /// A stub: addSession answers accepted and stores nothing; getSession and deleteSession
    /// answer one fixed session whatever the id.
    StoresNothing,
    /// addSession never sets `requestStatus` (always 0, `_SESSION_ACCEPTED`); refusals are in
    /// `errorStatus` and `responseError` only.
    RequestStatusNeverSet,
    /// Refusals are reported in `responseError` only: `errorStatus` is always 0.
    RefusalsOnlyInResponseError,
    /// The duplicate check of IPv6 sessions compares ports and protocol only: two IPv6 flows
    /// that differ only in their addresses are duplicates.
    DuplicateCheckIgnoresIpv6,
    /// A session id already in the table (or earlier in the stream) is accepted, replacing the
    /// session that had it.
    DuplicateIdsAllowed,
    /// getAllSessions ignores `startSession` and always starts at the lowest id.
    StartSessionIgnored,
    /// getClosedSessions ignores `pageSize` and sends everything queued.
    PageSizeIgnoredOnClosed,
    /// Sessions closed by FIN/ACK or RST are reported with close code `_TIMEOUT`.
    CloseCodeAlwaysTimeout,
    /// Nothing is validated: an invalid request is answered as accepted (and silently not
    /// stored); a cacheTimeout above the maximum is cut to it.
    NoValidation,
    /// The process dies on getClosedSessions with pageSize 0 or above 64 when more than 64
    /// records are queued (the embedded device stops answering instead).
    CrashOnLargePage,
    /// Idle sessions close at twice their timeout.
    TimeoutsDoubled,
}

impl Fault {
    pub const ALL: [Fault; 26] = [
        Fault::NotFoundStatus,
        Fault::GrpcCodesInResponseError,
        Fault::PartialInsertWhenFull,
        Fault::PageSizeIgnored,
        Fault::ClosedRepeated,
        Fault::MirrorWithoutNextHop,
        Fault::Ipv4WrongByteOrder,
        Fault::IdTruncated32,
        Fault::ClosedEmptyNotFound,
        Fault::DeleteQueuesClosed,
        Fault::CancelledStreamInserts,
        Fault::WrongDirectionCounted,
        Fault::DropNeverAges,
        Fault::MirrorAsDrop,
        Fault::ControlCounted,
        Fault::StoresNothing,
        Fault::RequestStatusNeverSet,
        Fault::RefusalsOnlyInResponseError,
        Fault::DuplicateCheckIgnoresIpv6,
        Fault::DuplicateIdsAllowed,
        Fault::StartSessionIgnored,
        Fault::PageSizeIgnoredOnClosed,
        Fault::CloseCodeAlwaysTimeout,
        Fault::NoValidation,
        Fault::CrashOnLargePage,
        Fault::TimeoutsDoubled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::NotFoundStatus => "not-found-status",
            Fault::GrpcCodesInResponseError => "grpc-codes-in-response-error",
            Fault::PartialInsertWhenFull => "partial-insert-when-full",
            Fault::PageSizeIgnored => "page-size-ignored",
            Fault::ClosedRepeated => "closed-repeated",
            Fault::MirrorWithoutNextHop => "mirror-without-next-hop",
            Fault::Ipv4WrongByteOrder => "ipv4-wrong-byte-order",
            Fault::IdTruncated32 => "id-truncated-32",
            Fault::ClosedEmptyNotFound => "closed-empty-not-found",
            Fault::DeleteQueuesClosed => "delete-queues-closed",
            Fault::CancelledStreamInserts => "cancelled-stream-inserts",
            Fault::WrongDirectionCounted => "wrong-direction-counted",
            Fault::DropNeverAges => "drop-never-ages",
            Fault::MirrorAsDrop => "mirror-as-drop",
            Fault::ControlCounted => "control-counted",
            Fault::StoresNothing => "stores-nothing",
            Fault::RequestStatusNeverSet => "request-status-never-set",
            Fault::RefusalsOnlyInResponseError => "refusals-only-in-response-error",
            Fault::DuplicateCheckIgnoresIpv6 => "duplicate-check-ignores-ipv6",
            Fault::DuplicateIdsAllowed => "duplicate-ids-allowed",
            Fault::StartSessionIgnored => "start-session-ignored",
            Fault::PageSizeIgnoredOnClosed => "page-size-ignored-on-closed",
            Fault::CloseCodeAlwaysTimeout => "close-code-always-timeout",
            Fault::NoValidation => "no-validation",
            Fault::CrashOnLargePage => "crash-on-large-page",
            Fault::TimeoutsDoubled => "timeouts-doubled",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Fault::NotFoundStatus => "unknown session ids answered with gRPC NOT_FOUND",
            Fault::GrpcCodesInResponseError => "gRPC status numbers in responseError.errorStatus",
            Fault::PartialInsertWhenFull => "a stream that does not fit is partly inserted",
            Fault::PageSizeIgnored => "getAllSessions ignores pageSize and page",
            Fault::ClosedRepeated => "getClosedSessions does not dequeue what it sends",
            Fault::MirrorWithoutNextHop => "MIRROR/SNOOP without a next hop accepted",
            Fault::Ipv4WrongByteOrder => "IPv4 addresses read big-endian",
            Fault::IdTruncated32 => "session ids truncated to 32 bits",
            Fault::ClosedEmptyNotFound => "empty getClosedSessions answered with gRPC NOT_FOUND",
            Fault::DeleteQueuesClosed => "deleted sessions also reported by getClosedSessions",
            Fault::CancelledStreamInserts => "a cancelled (reset) addSession stream inserts what arrived",
            Fault::WrongDirectionCounted => "packets counted in the other direction's counters",
            Fault::DropNeverAges => "DROP sessions never time out",
            Fault::MirrorAsDrop => "MIRROR sessions drop their packets",
            Fault::ControlCounted => "TCP SYN/FIN/RST segments counted on their session",
            Fault::StoresNothing => "a stub: adds store nothing, getSession answers one fixed session",
            Fault::RequestStatusNeverSet => "addSession requestStatus always 0",
            Fault::RefusalsOnlyInResponseError => "errorStatus always 0, refusals only in responseError",
            Fault::DuplicateCheckIgnoresIpv6 => "IPv6 duplicate check ignores the addresses",
            Fault::DuplicateIdsAllowed => "a session id already in use replaces its session",
            Fault::StartSessionIgnored => "getAllSessions ignores startSession",
            Fault::PageSizeIgnoredOnClosed => "getClosedSessions ignores pageSize",
            Fault::CloseCodeAlwaysTimeout => "FIN/ACK and RST closes reported as _TIMEOUT",
            Fault::NoValidation => "invalid requests answered as accepted (and not stored)",
            Fault::CrashOnLargePage => "dies on getClosedSessions of pageSize 0 or > 64 with > 64 queued",
            Fault::TimeoutsDoubled => "idle sessions close at twice their timeout",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Fault::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<_> = Fault::ALL.iter().map(|f| f.name()).collect();
            format!("unknown fault {s:?}; known faults: {}", names.join(", "))
        })
    }
}

/// A set of faults: a device may imitate several defects at once (a field server rarely has
/// just one). Empty: a correct device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Faults(u32);

impl Faults {
    pub const NONE: Faults = Faults(0);

    pub fn contains(self, f: Fault) -> bool {
        self.0 & Self::bit(f) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn with(self, f: Fault) -> Faults {
        Faults(self.0 | Self::bit(f))
    }

    pub fn iter(self) -> impl Iterator<Item = Fault> {
        Fault::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    /// A fault's bit: its declaration order, which is its place in [`Fault::ALL`] (checked by
    /// the test `all_lists_every_fault`).
    fn bit(f: Fault) -> u32 {
        1 << f as u32
    }
}

impl From<Fault> for Faults {
    fn from(f: Fault) -> Faults {
        Faults::NONE.with(f)
    }
}

impl From<Option<Fault>> for Faults {
    fn from(f: Option<Fault>) -> Faults {
        f.map_or(Faults::NONE, Faults::from)
    }
}

impl FromIterator<Fault> for Faults {
    fn from_iter<I: IntoIterator<Item = Fault>>(it: I) -> Faults {
        it.into_iter().fold(Faults::NONE, Faults::with)
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Fault::name).collect();
        f.write_str(&names.join(","))
    }
}

/// A comma-separated list of fault names (empty: none).
impl FromStr for Faults {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::parse::<Fault>).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fault::ALL lists every variant once, in declaration order: the exhaustive match below
    /// stops compiling when a variant is added, until it is placed here and in ALL.
    #[test]
    fn all_lists_every_fault() {
        let position = |f: Fault| match f {
            Fault::NotFoundStatus => 0,
            Fault::GrpcCodesInResponseError => 1,
            Fault::PartialInsertWhenFull => 2,
            Fault::PageSizeIgnored => 3,
            Fault::ClosedRepeated => 4,
            Fault::MirrorWithoutNextHop => 5,
            Fault::Ipv4WrongByteOrder => 6,
            Fault::IdTruncated32 => 7,
            Fault::ClosedEmptyNotFound => 8,
            Fault::DeleteQueuesClosed => 9,
            Fault::CancelledStreamInserts => 10,
            Fault::WrongDirectionCounted => 11,
            Fault::DropNeverAges => 12,
            Fault::MirrorAsDrop => 13,
            Fault::ControlCounted => 14,
            Fault::StoresNothing => 15,
            Fault::RequestStatusNeverSet => 16,
            Fault::RefusalsOnlyInResponseError => 17,
            Fault::DuplicateCheckIgnoresIpv6 => 18,
            Fault::DuplicateIdsAllowed => 19,
            Fault::StartSessionIgnored => 20,
            Fault::PageSizeIgnoredOnClosed => 21,
            Fault::CloseCodeAlwaysTimeout => 22,
            Fault::NoValidation => 23,
            Fault::CrashOnLargePage => 24,
            Fault::TimeoutsDoubled => 25,
        };
        for (i, f) in Fault::ALL.into_iter().enumerate() {
            assert_eq!(position(f), i, "{f}");
        }
    }

    #[test]
    fn names_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for f in Fault::ALL {
            assert_eq!(f.name().parse::<Fault>(), Ok(f));
            assert!(seen.insert(f.name()));
        }
        assert!("no-such-fault".parse::<Fault>().unwrap_err().contains("not-found-status"));
    }

    #[test]
    fn fault_sets_parse_print_and_hold_each_fault() {
        let set: Faults = "page-size-ignored-on-closed, timeouts-doubled".parse().unwrap();
        assert!(set.contains(Fault::PageSizeIgnoredOnClosed) && set.contains(Fault::TimeoutsDoubled));
        assert!(!set.contains(Fault::StoresNothing));
        assert_eq!(set.to_string(), "page-size-ignored-on-closed,timeouts-doubled");
        assert_eq!("".parse::<Faults>(), Ok(Faults::NONE));
        assert!("timeouts-doubled,nope".parse::<Faults>().is_err());
        for f in Fault::ALL {
            assert_eq!(Faults::from(f).iter().collect::<Vec<_>>(), vec![f]);
        }
    }
}
