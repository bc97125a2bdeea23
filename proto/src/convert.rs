//! The one conversion layer between wire messages (any flavour: they share Rust types) and
//! domain values.
//!
//! Encodings fixed here, once for the whole project:
//! - IPv4 addresses travel as the `uint32` that holds `in_addr.s_addr`: the four address bytes
//!   in network order, read as a little-endian integer (what every client in the field sends
//!   from its x86 host). 10.0.0.1 ⇄ 16777226. This never depends on the host's byte order.
//! - IPv6 addresses (and `actionNextHopV6`) are exactly 16 bytes, network order.
//! - Ports travel as `uint32`; only 0..=65535 are accepted.
//! - Times are `google.protobuf.Timestamp` (seconds and nanoseconds since the Unix epoch).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::domain::*;
use crate::wire;

/// IPv4 address from its wire form (`in_addr.s_addr` read little-endian).
pub fn ipv4_from_wire(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_le_bytes())
}

/// IPv4 address to its wire form (`in_addr.s_addr` read little-endian).
pub fn ipv4_to_wire(a: Ipv4Addr) -> u32 {
    u32::from_le_bytes(a.octets())
}

/// IPv6 address from its wire form: exactly 16 bytes.
pub fn ipv6_from_wire(b: &[u8]) -> Option<Ipv6Addr> {
    <[u8; 16]>::try_from(b).ok().map(Ipv6Addr::from)
}

/// Why a sessionRequest is not a valid session (it is refused with `_SESSION_REJECTED`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("ipVersion {0} is neither _IPV4 (0) nor _IPV6 (1)")]
    IpVersion(i32),
    #[error("{field} has {len} bytes; an IPv6 address has exactly 16")]
    Ipv6Length { field: &'static str, len: usize },
    #[error("protocolId {0} cannot be offloaded; only _TCP (6) and _UDP (17) can")]
    Protocol(i32),
    #[error("{field} {value} is not a port (0..=65535)")]
    Port { field: &'static str, value: u32 },
    #[error("actionType {0} is not one of _DROP, _FORWARD, _MIRROR, _SNOOP")]
    Action(i32),
    #[error("{0:?} needs a next hop: a non-zero actionNextHop or a 16-byte actionNextHopV6")]
    MissingNextHop(wire::ActionType),
    #[error("next hop {0} is not a unicast address (copies are tunnelled to one host)")]
    NextHopNotUnicast(IpAddr),
}

/// A next hop receives GRE-tunnelled copies, so it must name one host: not unspecified,
/// multicast, limited broadcast or the reserved 240.0.0.0/4. Besides being right, this rule
/// makes the IPv4 byte order visible on the control plane: 10.0.0.224 is a valid next hop and
/// 224.0.0.10, its byte-swapped reading, is not.
pub fn is_unicast(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.octets()[0] >= 240),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

fn port(field: &'static str, value: u32) -> Result<u16, RequestError> {
    u16::try_from(value).map_err(|_| RequestError::Port { field, value })
}

fn v6(field: &'static str, b: &[u8]) -> Result<Ipv6Addr, RequestError> {
    ipv6_from_wire(b).ok_or(RequestError::Ipv6Length { field, len: b.len() })
}

impl TryFrom<&wire::SessionRequest> for SessionSpec {
    type Error = RequestError;

    fn try_from(r: &wire::SessionRequest) -> Result<Self, RequestError> {
        let (src, dst): (IpAddr, IpAddr) = match wire::IpVersion::try_from(r.ip_version) {
            Ok(wire::IpVersion::Ipv4) => (ipv4_from_wire(r.source_ip).into(), ipv4_from_wire(r.destination_ip).into()),
            Ok(wire::IpVersion::Ipv6) => {
                (v6("sourceIpV6", &r.source_ip_v6)?.into(), v6("destinationIpV6", &r.destination_ip_v6)?.into())
            }
            Err(_) => return Err(RequestError::IpVersion(r.ip_version)),
        };
        let protocol = match wire::ProtocolId::try_from(r.protocol_id) {
            Ok(wire::ProtocolId::Tcp) => Protocol::Tcp,
            Ok(wire::ProtocolId::Udp) => Protocol::Udp,
            _ => return Err(RequestError::Protocol(r.protocol_id)),
        };
        let src_port = port("sourcePort", r.source_port)?;
        let dst_port = port("destinationPort", r.destination_port)?;
        // An absent action message decodes as its defaults: actionType 0 = _DROP.
        let absent = wire::ActionParameters::default();
        let a = r.action.as_ref().unwrap_or(&absent);
        let kind = wire::ActionType::try_from(a.action_type).map_err(|_| RequestError::Action(a.action_type))?;
        let next_hop = || -> Result<IpAddr, RequestError> {
            let hop: IpAddr = if a.action_next_hop != 0 {
                ipv4_from_wire(a.action_next_hop).into()
            } else if !a.action_next_hop_v6.is_empty() {
                v6("actionNextHopV6", &a.action_next_hop_v6)?.into()
            } else {
                return Err(RequestError::MissingNextHop(kind));
            };
            if is_unicast(hop) {
                Ok(hop)
            } else {
                Err(RequestError::NextHopNotUnicast(hop))
            }
        };
        let action = match kind {
            wire::ActionType::Drop => Action::Drop,
            wire::ActionType::Forward => Action::Forward,
            wire::ActionType::Mirror => Action::Mirror { next_hop: next_hop()? },
            wire::ActionType::Snoop => Action::Snoop { next_hop: next_hop()? },
        };
        let tuple =
            FiveTuple::new(protocol, src, src_port, dst, dst_port).expect("both addresses come from one ipVersion");
        Ok(SessionSpec {
            id: r.session_id,
            tuple,
            action,
            in_lif: r.in_lif,
            out_lif: r.out_lif,
            cache_timeout: r.cache_timeout,
        })
    }
}

impl From<&SessionSpec> for wire::SessionRequest {
    fn from(s: &SessionSpec) -> Self {
        let mut r = wire::SessionRequest {
            session_id: s.id,
            in_lif: s.in_lif,
            out_lif: s.out_lif,
            source_port: s.tuple.src_port().into(),
            destination_port: s.tuple.dst_port().into(),
            protocol_id: match s.tuple.protocol() {
                Protocol::Tcp => wire::ProtocolId::Tcp,
                Protocol::Udp => wire::ProtocolId::Udp,
            } as i32,
            cache_timeout: s.cache_timeout,
            ..Default::default()
        };
        match (s.tuple.src(), s.tuple.dst()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                r.ip_version = wire::IpVersion::Ipv4 as i32;
                r.source_ip = ipv4_to_wire(a);
                r.destination_ip = ipv4_to_wire(b);
            }
            (a, b) => {
                r.ip_version = wire::IpVersion::Ipv6 as i32;
                r.source_ip_v6 = v6_bytes(a);
                r.destination_ip_v6 = v6_bytes(b);
            }
        }
        let (kind, hop) = match s.action {
            Action::Drop => (wire::ActionType::Drop, None),
            Action::Forward => (wire::ActionType::Forward, None),
            Action::Mirror { next_hop } => (wire::ActionType::Mirror, Some(next_hop)),
            Action::Snoop { next_hop } => (wire::ActionType::Snoop, Some(next_hop)),
        };
        let mut a = wire::ActionParameters { action_type: kind as i32, ..Default::default() };
        match hop {
            Some(IpAddr::V4(h)) => a.action_next_hop = ipv4_to_wire(h),
            Some(h @ IpAddr::V6(_)) => a.action_next_hop_v6 = v6_bytes(h),
            None => {}
        }
        r.action = Some(a);
        r
    }
}

fn v6_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V6(a) => a.octets().to_vec(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets().to_vec(),
    }
}

impl From<Timestamp> for prost_types::Timestamp {
    fn from(t: Timestamp) -> Self {
        prost_types::Timestamp { seconds: (t.0 / 1_000_000_000) as i64, nanos: (t.0 % 1_000_000_000) as i32 }
    }
}

/// A wire timestamp as a domain time; times before the epoch (or absurd nanos) clamp to it.
pub fn timestamp_from_wire(t: &prost_types::Timestamp) -> Timestamp {
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let nanos = u64::try_from(t.nanos).unwrap_or(0).min(999_999_999);
    Timestamp(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

impl From<SessionState> for wire::SessionState {
    fn from(s: SessionState) -> Self {
        match s {
            SessionState::Established => wire::SessionState::Established,
            SessionState::Closing1 => wire::SessionState::Closing1,
            SessionState::Closing2 => wire::SessionState::Closing2,
            SessionState::Closed => wire::SessionState::Closed,
        }
    }
}

impl From<CloseCode> for wire::SessionCloseCode {
    fn from(c: CloseCode) -> Self {
        match c {
            CloseCode::NotClosed => wire::SessionCloseCode::NotClosed,
            CloseCode::FinAck => wire::SessionCloseCode::Finack,
            CloseCode::Rst => wire::SessionCloseCode::Rst,
            CloseCode::Timeout => wire::SessionCloseCode::Timeout,
        }
    }
}

impl From<AddStatus> for wire::AddSessionStatus {
    fn from(s: AddStatus) -> Self {
        match s {
            AddStatus::Accepted => wire::AddSessionStatus::SessionAccepted,
            AddStatus::Rejected => wire::AddSessionStatus::SessionRejected,
            AddStatus::TableFull => wire::AddSessionStatus::SessionTableFull,
            AddStatus::TableUnavailable => wire::AddSessionStatus::SessionTableUnavailable,
            AddStatus::AlreadyExists => wire::AddSessionStatus::SessionAlreadyExists,
        }
    }
}

impl TryFrom<i32> for AddStatus {
    type Error = i32;
    /// Reads an ADD_SESSION_STATUS number.
    fn try_from(v: i32) -> Result<Self, i32> {
        Ok(match wire::AddSessionStatus::try_from(v).map_err(|_| v)? {
            wire::AddSessionStatus::SessionAccepted => AddStatus::Accepted,
            wire::AddSessionStatus::SessionRejected => AddStatus::Rejected,
            wire::AddSessionStatus::SessionTableFull => AddStatus::TableFull,
            wire::AddSessionStatus::SessionTableUnavailable => AddStatus::TableUnavailable,
            wire::AddSessionStatus::SessionAlreadyExists => AddStatus::AlreadyExists,
        })
    }
}

impl From<&SessionRecord> for wire::SessionResponse {
    fn from(r: &SessionRecord) -> Self {
        wire::SessionResponse {
            session_id: r.id,
            in_packets: r.counters.in_packets,
            out_packets: r.counters.out_packets,
            in_bytes: r.counters.in_bytes,
            out_bytes: r.counters.out_bytes,
            session_state: wire::SessionState::from(r.state) as i32,
            session_close_code: wire::SessionCloseCode::from(r.close_code) as i32,
            request_status: wire::RequestStatus::Accepted as i32,
            start_time: Some(r.start.into()),
            end_time: r.end.map(Into::into),
        }
    }
}

/// Why a sessionResponse does not describe a session.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("requestStatus {0} is not _ACCEPTED")]
    NotAccepted(i32),
    #[error("sessionState {0} is not a known SESSION_STATE")]
    State(i32),
    #[error("sessionCloseCode {0} is not a known SESSION_CLOSE_CODE")]
    CloseCode(i32),
}

impl TryFrom<&wire::SessionResponse> for SessionRecord {
    type Error = ResponseError;
    fn try_from(r: &wire::SessionResponse) -> Result<Self, ResponseError> {
        if r.request_status != wire::RequestStatus::Accepted as i32 {
            return Err(ResponseError::NotAccepted(r.request_status));
        }
        let state = match wire::SessionState::try_from(r.session_state) {
            Ok(wire::SessionState::Established) => SessionState::Established,
            Ok(wire::SessionState::Closing1) => SessionState::Closing1,
            Ok(wire::SessionState::Closing2) => SessionState::Closing2,
            Ok(wire::SessionState::Closed) => SessionState::Closed,
            _ => return Err(ResponseError::State(r.session_state)),
        };
        let close_code = match wire::SessionCloseCode::try_from(r.session_close_code) {
            Ok(wire::SessionCloseCode::NotClosed) => CloseCode::NotClosed,
            Ok(wire::SessionCloseCode::Finack) => CloseCode::FinAck,
            Ok(wire::SessionCloseCode::Rst) => CloseCode::Rst,
            Ok(wire::SessionCloseCode::Timeout) => CloseCode::Timeout,
            _ => return Err(ResponseError::CloseCode(r.session_close_code)),
        };
        Ok(SessionRecord {
            id: r.session_id,
            counters: Counters {
                in_packets: r.in_packets,
                out_packets: r.out_packets,
                in_bytes: r.in_bytes,
                out_bytes: r.out_bytes,
            },
            state,
            close_code,
            start: r.start_time.as_ref().map(timestamp_from_wire).unwrap_or_default(),
            end: r.end_time.as_ref().map(timestamp_from_wire),
        })
    }
}

/// The in-band answer for an id the table does not hold.
pub fn nonexistent_response(id: SessionId) -> wire::SessionResponse {
    wire::SessionResponse {
        session_id: id,
        request_status: wire::RequestStatus::RejectedSessionNonexistent as i32,
        ..Default::default()
    }
}

impl From<&AddOutcome> for wire::AddSessionResponse {
    fn from(o: &AddOutcome) -> Self {
        wire::AddSessionResponse {
            request_status: wire::AddSessionStatus::from(o.status) as i32,
            error_status: o.error_bits,
            start_time: Some(o.start.into()),
            response_error: o
                .errors
                .iter()
                .map(|e| wire::SessionResponseError {
                    session_id: e.id,
                    error_status: wire::AddSessionStatus::from(e.status) as i32,
                })
                .collect(),
        }
    }
}

impl From<&wire::SessionRequestArgs> for PageArgs {
    fn from(a: &wire::SessionRequestArgs) -> Self {
        PageArgs { page_size: a.page_size, page: a.page, start_session: a.start_session, follow: a.follow }
    }
}

impl From<&PageArgs> for wire::SessionRequestArgs {
    fn from(a: &PageArgs) -> Self {
        wire::SessionRequestArgs {
            page_size: a.page_size,
            page: a.page,
            start_session: a.start_session,
            follow: a.follow,
        }
    }
}

impl From<&SessionPage> for wire::SessionResponses {
    fn from(p: &SessionPage) -> Self {
        wire::SessionResponses { session_info: p.records.iter().map(Into::into).collect(), nextkey: p.next_key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_nonexistent_answer_is_not_a_record() {
        let r = nonexistent_response(5);
        assert_eq!(SessionRecord::try_from(&r), Err(ResponseError::NotAccepted(2)));
    }

    #[test]
    fn ipv4_wire_encoding_is_s_addr_read_little_endian() {
        assert_eq!(ipv4_to_wire(Ipv4Addr::new(10, 0, 0, 1)), 16_777_226);
        assert_eq!(ipv4_from_wire(16_777_226), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ipv4_to_wire(Ipv4Addr::new(12, 2, 3, 4)), 67_305_996);
        assert_eq!(ipv4_from_wire(0x0100_000A), Ipv4Addr::new(10, 0, 0, 1));
    }

    fn request_v4() -> wire::SessionRequest {
        wire::SessionRequest {
            session_id: 7,
            ip_version: wire::IpVersion::Ipv4 as i32,
            source_ip: 16_777_226,
            destination_ip: 67_305_996,
            source_port: 1234,
            destination_port: 80,
            protocol_id: wire::ProtocolId::Tcp as i32,
            action: Some(wire::ActionParameters {
                action_type: wire::ActionType::Forward as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ipv4_request_becomes_the_right_tuple() {
        let s = SessionSpec::try_from(&request_v4()).unwrap();
        assert_eq!(s.tuple.src(), IpAddr::from([10, 0, 0, 1]));
        assert_eq!(s.tuple.dst(), IpAddr::from([12, 2, 3, 4]));
        assert_eq!((s.tuple.src_port(), s.tuple.dst_port()), (1234, 80));
        assert_eq!(s.action, Action::Forward);
    }

    #[test]
    fn ipv6_needs_exactly_16_bytes() {
        let mut r = request_v4();
        r.ip_version = wire::IpVersion::Ipv6 as i32;
        r.source_ip_v6 = (1..=16).collect();
        r.destination_ip_v6 = vec![0xfe; 16];
        let s = SessionSpec::try_from(&r).unwrap();
        assert_eq!(s.tuple.src(), IpAddr::from([1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]));
        r.destination_ip_v6 = vec![0xfe; 15];
        assert_eq!(SessionSpec::try_from(&r), Err(RequestError::Ipv6Length { field: "destinationIpV6", len: 15 }));
        r.destination_ip_v6 = vec![0xfe; 17];
        assert!(SessionSpec::try_from(&r).is_err());
        // An IPv4 session ignores the IPv6 fields, whatever they hold.
        let mut r4 = request_v4();
        r4.source_ip_v6 = vec![1; 3];
        assert!(SessionSpec::try_from(&r4).is_ok());
    }

    #[test]
    fn invalid_requests_are_named() {
        let mut r = request_v4();
        r.source_port = 70_000;
        assert_eq!(SessionSpec::try_from(&r), Err(RequestError::Port { field: "sourcePort", value: 70_000 }));
        let mut r = request_v4();
        r.protocol_id = 1;
        assert_eq!(SessionSpec::try_from(&r), Err(RequestError::Protocol(1)));
        let mut r = request_v4();
        r.protocol_id = 0;
        assert_eq!(SessionSpec::try_from(&r), Err(RequestError::Protocol(0)));
        let mut r = request_v4();
        r.ip_version = 2;
        assert_eq!(SessionSpec::try_from(&r), Err(RequestError::IpVersion(2)));
        let mut r = request_v4();
        r.action = Some(wire::ActionParameters { action_type: 4, ..Default::default() });
        assert_eq!(SessionSpec::try_from(&r), Err(RequestError::Action(4)));
        for kind in [wire::ActionType::Mirror, wire::ActionType::Snoop] {
            let mut r = request_v4();
            r.action = Some(wire::ActionParameters { action_type: kind as i32, ..Default::default() });
            assert_eq!(SessionSpec::try_from(&r), Err(RequestError::MissingNextHop(kind)));
            r.action.as_mut().unwrap().action_next_hop_v6 = vec![1; 4];
            assert!(matches!(SessionSpec::try_from(&r), Err(RequestError::Ipv6Length { .. })));
            r.action.as_mut().unwrap().action_next_hop = ipv4_to_wire(Ipv4Addr::new(192, 0, 2, 9));
            assert_eq!(SessionSpec::try_from(&r).unwrap().action.next_hop(), Some(IpAddr::from([192, 0, 2, 9])));
        }
    }

    /// A next hop must be one host; the rule tells the two IPv4 byte orders apart.
    #[test]
    fn next_hop_must_be_unicast() {
        let with_hop = |v4: u32, v6: Vec<u8>| {
            let mut r = request_v4();
            r.action = Some(wire::ActionParameters {
                action_type: wire::ActionType::Mirror as i32,
                action_next_hop: v4,
                action_next_hop_v6: v6,
            });
            SessionSpec::try_from(&r)
        };
        assert!(with_hop(ipv4_to_wire(Ipv4Addr::new(10, 0, 0, 224)), vec![]).is_ok());
        for bad in [[224, 0, 0, 10], [255, 255, 255, 255], [240, 0, 0, 1], [239, 1, 2, 3]] {
            assert_eq!(
                with_hop(ipv4_to_wire(Ipv4Addr::from(bad)), vec![]),
                Err(RequestError::NextHopNotUnicast(IpAddr::from(bad)))
            );
        }
        let mut mcast6 = vec![0; 16];
        mcast6[0] = 0xff;
        assert!(matches!(with_hop(0, mcast6), Err(RequestError::NextHopNotUnicast(_))));
        assert!(matches!(with_hop(0, vec![0; 16]), Err(RequestError::NextHopNotUnicast(_))));
        let mut ula = vec![0; 16];
        ula[0] = 0xfd;
        ula[15] = 1;
        assert!(with_hop(0, ula).is_ok());
    }

    fn arb_ip(v4: bool) -> BoxedStrategy<IpAddr> {
        if v4 {
            any::<[u8; 4]>().prop_map(IpAddr::from).boxed()
        } else {
            any::<[u8; 16]>().prop_map(IpAddr::from).boxed()
        }
    }

    fn arb_spec() -> impl Strategy<Value = SessionSpec> {
        any::<bool>().prop_flat_map(|v4| (arb_ip(v4), arb_ip(v4))).prop_flat_map(|(src, dst)| {
            let action = prop_oneof![
                Just(Action::Drop),
                Just(Action::Forward),
                (any::<bool>(), any::<[u8; 16]>()).prop_map(|(m, b)| {
                    // A next hop is a unicast host (ADD-6): first octet 1..=223 for IPv4 (which
                    // also keeps 0.0.0.0, "absent" on the wire, out), not ff00::/8 or :: for IPv6.
                    let hop = if b[0] % 2 == 0 {
                        IpAddr::from([
                            b[1] % 0xff,
                            b[2],
                            b[3],
                            b[4],
                            b[5],
                            b[6],
                            b[7],
                            b[8],
                            b[9],
                            b[10],
                            b[11],
                            b[12],
                            b[13],
                            b[14],
                            b[15],
                            1,
                        ])
                    } else {
                        IpAddr::from([1 + b[1] % 223, b[2], b[3], b[4]])
                    };
                    if m {
                        Action::Mirror { next_hop: hop }
                    } else {
                        Action::Snoop { next_hop: hop }
                    }
                }),
            ];
            (any::<u64>(), any::<bool>(), any::<u16>(), any::<u16>(), action, any::<i32>(), any::<i32>(), any::<u32>())
                .prop_map(move |(id, tcp, sp, dp, action, il, ol, t)| SessionSpec {
                    id,
                    tuple: FiveTuple::new(if tcp { Protocol::Tcp } else { Protocol::Udp }, src, sp, dst, dp).unwrap(),
                    action,
                    in_lif: il,
                    out_lif: ol,
                    cache_timeout: t,
                })
        })
    }

    proptest! {
        #[test]
        fn spec_round_trips_through_the_wire(spec in arb_spec()) {
            let wire = wire::SessionRequest::from(&spec);
            let bytes = prost::Message::encode_to_vec(&wire);
            let back: wire::SessionRequest = prost::Message::decode(bytes.as_slice()).unwrap();
            prop_assert_eq!(SessionSpec::try_from(&back).unwrap(), spec);
        }

        #[test]
        fn any_request_bytes_convert_or_are_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            if let Ok(r) = <wire::SessionRequest as prost::Message>::decode(bytes.as_slice()) {
                let _ = SessionSpec::try_from(&r);
            }
        }

        #[test]
        fn records_round_trip(id in any::<u64>(), c in any::<[u64; 4]>(), state in 0usize..4, code in 0usize..4, start in any::<u64>(), end in proptest::option::of(any::<u64>())) {
            let r = SessionRecord {
                id,
                counters: Counters { in_packets: c[0], out_packets: c[1], in_bytes: c[2], out_bytes: c[3] },
                state: [SessionState::Established, SessionState::Closing1, SessionState::Closing2, SessionState::Closed][state],
                close_code: [CloseCode::NotClosed, CloseCode::FinAck, CloseCode::Rst, CloseCode::Timeout][code],
                start: Timestamp(start),
                end: end.map(Timestamp),
            };
            prop_assert_eq!(SessionRecord::try_from(&wire::SessionResponse::from(&r)), Ok(r));
        }

        #[test]
        fn add_statuses_round_trip(v in -2i32..8) {
            match AddStatus::try_from(v) {
                Ok(s) => prop_assert_eq!(wire::AddSessionStatus::from(s) as i32, v),
                Err(e) => prop_assert!(!(0..=4).contains(&e)),
            }
        }

        #[test]
        fn timestamps_round_trip(ns in any::<u64>()) {
            let t = Timestamp(ns);
            prop_assert_eq!(timestamp_from_wire(&t.into()), t);
        }
    }
}
