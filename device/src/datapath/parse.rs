//! Frame parsing for the datapath: a pure function from the bytes of an Ethernet frame to the
//! session key it belongs to, or the reason it takes the miss path.
//!
//! Ethernet II with zero, one or two VLAN tags (0x8100, 0x88a8, 0x9100 in any order; tags are
//! not part of the key); IPv4 (options allowed, the header checked for length and version) and
//! IPv6 (hop-by-hop, routing and destination-options extension headers skipped); TCP and UDP.
//! Anything else is a counted miss: not IP, another protocol (ICMP, ...), an IP fragment, a frame
//! cut short, or a header that contradicts itself. Never a panic: every length is checked before
//! it is used (a property test feeds it arbitrary bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use opof_proto::domain::{FiveTuple, Protocol};

/// Why a frame takes the miss path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MissReason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...), or more than two VLAN tags.
    NotIp,
    /// IP, but neither TCP nor UDP (ICMP, ESP, ...).
    OtherProtocol,
    /// An IPv4 fragment (MF set or a fragment offset) or an IPv6 Fragment header.
    Fragment,
    /// The frame ends before a header it announces.
    Truncated,
    /// A header contradicts itself (IHL < 5, a length shorter than the header, wrong version).
    Malformed,
}

impl MissReason {
    pub const ALL: [MissReason; 5] = [
        MissReason::NotIp,
        MissReason::OtherProtocol,
        MissReason::Fragment,
        MissReason::Truncated,
        MissReason::Malformed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MissReason::NotIp => "not_ip",
            MissReason::OtherProtocol => "other_protocol",
            MissReason::Fragment => "fragment",
            MissReason::Truncated => "truncated",
            MissReason::Malformed => "malformed",
        }
    }
}

/// TCP flags the datapath cares about: FIN, SYN, RST and ACK, as the bits of the TCP header
/// (one byte carried with each packet, tested with a mask).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags(u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;

    /// The flags of a TCP header's flags byte (the others are dropped).
    pub const fn from_bits(bits: u8) -> Self {
        TcpFlags(bits & (Self::FIN | Self::SYN | Self::RST | Self::ACK))
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }

    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }

    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }

    /// ACK (not a control flag for the datapath; the VNF follows handshakes with it).
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }

    /// SYN, FIN or RST: such segments always go to the VNF and are not counted.
    pub fn is_control(self) -> bool {
        self.0 & (Self::SYN | Self::FIN | Self::RST) != 0
    }
}

impl std::fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [(Self::SYN, "SYN"), (Self::FIN, "FIN"), (Self::RST, "RST"), (Self::ACK, "ACK")];
        let set: Vec<&str> = names.iter().filter(|(b, _)| self.0 & b != 0).map(|(_, n)| *n).collect();
        write!(f, "TcpFlags({})", set.join("|"))
    }
}

/// A frame that belongs to a possible session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The key as the frame travels (source → destination of this frame).
    pub tuple: FiveTuple,
    /// TCP flags (none for UDP).
    pub flags: TcpFlags,
    /// VLAN tags seen (0, 1 or 2).
    pub vlan_tags: u8,
}

const ETH_HEADER: usize = 14;
const VLAN_TYPES: [u16; 3] = [0x8100, 0x88a8, 0x9100];

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The addresses of a parsed frame, in its family's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addrs {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

/// What the parser found, handed to the caller's constructor (see [`parse_with`]).
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    pub addrs: Addrs,
    pub protocol: Protocol,
    pub src_port: u16,
    pub dst_port: u16,
    pub flags: TcpFlags,
    pub vlan_tags: u8,
}

/// Parses one frame.
pub fn parse(frame: &[u8]) -> Result<Parsed, MissReason> {
    parse_with(frame, |f| {
        let (src, dst): (IpAddr, IpAddr) = match f.addrs {
            Addrs::V4 { src, dst } => (Ipv4Addr::from(src).into(), Ipv4Addr::from(dst).into()),
            Addrs::V6 { src, dst } => (Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into()),
        };
        let tuple = FiveTuple::new(f.protocol, src, f.src_port, dst, f.dst_port).expect("one family");
        Parsed { tuple, flags: f.flags, vlan_tags: f.vlan_tags }
    })
}

/// Parses one frame and builds the caller's value of what it found: the datapath builds its
/// table key straight from the header bytes this way, with no [`FiveTuple`] in between.
#[inline(always)]
pub fn parse_with<T>(frame: &[u8], make: impl FnOnce(Fields) -> T) -> Result<T, MissReason> {
    let mut ethertype = be16(frame, 12).ok_or(MissReason::Truncated)?;
    let mut at = ETH_HEADER;
    let mut vlan_tags = 0u8;
    while VLAN_TYPES.contains(&ethertype) {
        if vlan_tags == 2 {
            return Err(MissReason::NotIp);
        }
        ethertype = be16(frame, at + 2).ok_or(MissReason::Truncated)?;
        at += 4;
        vlan_tags += 1;
    }
    let l3 = &frame[at.min(frame.len())..];
    // The transport is parsed in each family's branch, so that the caller's value is built
    // where the family is known (no merged code moving either family's addresses byte by byte).
    match ethertype {
        0x0800 => {
            let (protocol, addrs, l4) = ipv4(l3)?;
            transport(protocol, addrs, l4, vlan_tags, make)
        }
        0x86dd => {
            let (protocol, addrs, l4) = ipv6(l3)?;
            transport(protocol, addrs, l4, vlan_tags, make)
        }
        _ => Err(MissReason::NotIp),
    }
}

/// The TCP or UDP header of a parsed IP packet, and the caller's value of the whole.
#[inline(always)]
fn transport<T>(
    protocol: u8,
    addrs: Addrs,
    l4: &[u8],
    vlan_tags: u8,
    make: impl FnOnce(Fields) -> T,
) -> Result<T, MissReason> {
    let (protocol, flags) = match protocol {
        6 => {
            if l4.len() < 20 {
                return Err(MissReason::Truncated);
            }
            let offset = usize::from(l4[12] >> 4) * 4;
            if offset < 20 {
                return Err(MissReason::Malformed);
            }
            if l4.len() < offset {
                return Err(MissReason::Truncated);
            }
            (Protocol::Tcp, TcpFlags::from_bits(l4[13]))
        }
        17 => {
            if l4.len() < 8 {
                return Err(MissReason::Truncated);
            }
            let len = usize::from(be16(l4, 4).unwrap_or(0));
            if len < 8 {
                return Err(MissReason::Malformed);
            }
            (Protocol::Udp, TcpFlags::default())
        }
        _ => return Err(MissReason::OtherProtocol),
    };
    // Both transports are at least 8 bytes long here.
    let (src_port, dst_port) = (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]));
    Ok(make(Fields { addrs, protocol, src_port, dst_port, flags, vlan_tags }))
}

/// IPv4: (protocol, addresses, the transport bytes within the packet's length).
#[inline(always)]
fn ipv4(b: &[u8]) -> Result<(u8, Addrs, &[u8]), MissReason> {
    if b.len() < 20 {
        return Err(MissReason::Truncated);
    }
    if b[0] >> 4 != 4 {
        return Err(MissReason::Malformed);
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if ihl < 20 || total < ihl {
        return Err(MissReason::Malformed);
    }
    if b.len() < total {
        return Err(MissReason::Truncated);
    }
    let frag = u16::from_be_bytes([b[6], b[7]]);
    if frag & 0x3fff != 0 {
        return Err(MissReason::Fragment);
    }
    let src: [u8; 4] = b[12..16].try_into().expect("4 bytes");
    let dst: [u8; 4] = b[16..20].try_into().expect("4 bytes");
    // Ethernet padding after the packet is not transport data.
    Ok((b[9], Addrs::V4 { src, dst }, &b[ihl..total]))
}

/// IPv6, skipping the extension headers a transit device may meet.
#[inline(always)]
fn ipv6(b: &[u8]) -> Result<(u8, Addrs, &[u8]), MissReason> {
    if b.len() < 40 {
        return Err(MissReason::Truncated);
    }
    if b[0] >> 4 != 6 {
        return Err(MissReason::Malformed);
    }
    let payload = usize::from(u16::from_be_bytes([b[4], b[5]]));
    if b.len() < 40 + payload {
        return Err(MissReason::Truncated);
    }
    let src: [u8; 16] = b[8..24].try_into().expect("16 bytes");
    let dst: [u8; 16] = b[24..40].try_into().expect("16 bytes");
    let mut next = b[6];
    let mut rest = &b[40..40 + payload];
    // Hop-by-hop (0), routing (43), destination options (60): skip; fragment (44): a fragment.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                if rest.len() < 8 {
                    return Err(MissReason::Truncated);
                }
                let len = (usize::from(rest[1]) + 1) * 8;
                if rest.len() < len {
                    return Err(MissReason::Truncated);
                }
                next = rest[0];
                rest = &rest[len..];
            }
            44 => return Err(MissReason::Fragment),
            _ => return Ok((next, Addrs::V6 { src, dst }, rest)),
        }
    }
    Err(MissReason::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    fn eth(tags: &[(u16, u16)], ethertype: u16, l3: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        for (tpid, vid) in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(l3);
        f
    }

    fn v4_tcp(
        flags: impl Fn(
            etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        ) -> etherparse::PacketBuilderStep<etherparse::TcpHeader>,
    ) -> Vec<u8> {
        let mut l3 = Vec::new();
        flags(PacketBuilder::ipv4([10, 0, 0, 1], [192, 0, 2, 7], 64).tcp(40000, 443, 1, 1000))
            .write(&mut l3, b"hello")
            .unwrap();
        l3
    }

    #[test]
    fn tcp_and_udp_over_both_families_and_tags() {
        let l3 = v4_tcp(|b| b);
        for tags in [vec![], vec![(0x8100, 10)], vec![(0x88a8, 100), (0x8100, 10)]] {
            let p = parse(&eth(&tags, 0x0800, &l3)).unwrap();
            assert_eq!(p.vlan_tags as usize, tags.len());
            assert_eq!(
                p.tuple,
                FiveTuple::new(Protocol::Tcp, [10, 0, 0, 1].into(), 40000, [192, 0, 2, 7].into(), 443).unwrap()
            );
            assert!(!p.flags.is_control());
        }
        let mut l3 = Vec::new();
        let (s6, d6) = (
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        );
        PacketBuilder::ipv6(s6, d6, 64).udp(5353, 53).write(&mut l3, b"q").unwrap();
        let p = parse(&eth(&[(0x8100, 5)], 0x86dd, &l3)).unwrap();
        assert_eq!(p.tuple, FiveTuple::new(Protocol::Udp, s6.into(), 5353, d6.into(), 53).unwrap());
    }

    #[test]
    fn control_segments_are_flagged() {
        assert!(parse(&eth(&[], 0x0800, &v4_tcp(|b| b.syn()))).unwrap().flags.syn());
        assert!(parse(&eth(&[], 0x0800, &v4_tcp(|b| b.fin()))).unwrap().flags.fin());
        assert!(parse(&eth(&[], 0x0800, &v4_tcp(|b| b.rst()))).unwrap().flags.rst());
    }

    #[test]
    fn misses_by_reason() {
        assert_eq!(parse(&eth(&[], 0x0806, &[0; 28])), Err(MissReason::NotIp));
        assert_eq!(
            parse(&eth(&[(0x8100, 1), (0x8100, 2), (0x8100, 3)], 0x0800, &v4_tcp(|b| b))),
            Err(MissReason::NotIp)
        );
        let mut icmp = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, b"ping")
            .unwrap();
        assert_eq!(parse(&eth(&[], 0x0800, &icmp)), Err(MissReason::OtherProtocol));
        let mut frag = v4_tcp(|b| b);
        frag[6] = 0x20; // more fragments
        assert_eq!(parse(&eth(&[], 0x0800, &frag)), Err(MissReason::Fragment));
        let mut later = v4_tcp(|b| b);
        later[7] = 0x10; // a fragment offset
        assert_eq!(parse(&eth(&[], 0x0800, &later)), Err(MissReason::Fragment));
        let l3 = v4_tcp(|b| b);
        assert_eq!(parse(&eth(&[], 0x0800, &l3[..30])), Err(MissReason::Truncated));
        assert_eq!(parse(&[0u8; 10]), Err(MissReason::Truncated));
        let mut bad_ihl = v4_tcp(|b| b);
        bad_ihl[0] = 0x44;
        assert_eq!(parse(&eth(&[], 0x0800, &bad_ihl)), Err(MissReason::Malformed));
        let mut v6frag = Vec::new();
        PacketBuilder::ipv6([0xfd; 16], [0x20; 16], 64).udp(1, 2).write(&mut v6frag, b"x").unwrap();
        v6frag[6] = 44;
        assert_eq!(parse(&eth(&[], 0x86dd, &v6frag)), Err(MissReason::Fragment));
    }

    /// Padding after a short IPv4 packet (Ethernet's 60-byte minimum) is not transport data.
    #[test]
    fn ethernet_padding_is_ignored() {
        let mut f = eth(&[], 0x0800, &v4_tcp(|b| b));
        f.resize(f.len() + 20, 0);
        assert!(parse(&f).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]
        /// Any bytes give a key or a miss reason, never a panic.
        #[test]
        fn any_bytes_parse_or_miss(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&b);
        }

        /// Frames whose headers are right but whose bytes are otherwise random (so every
        /// length field is tried) parse or miss, never panic.
        #[test]
        fn mangled_real_frames_parse_or_miss(pos in 0usize..80, val in any::<u8>(), cut in 0usize..90, v6 in any::<bool>()) {
            let mut l3 = Vec::new();
            if v6 {
                PacketBuilder::ipv6([0xfd; 16], [0x20; 16], 64).tcp(1, 2, 3, 4).write(&mut l3, b"data").unwrap();
            } else {
                PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(1, 2).write(&mut l3, b"data").unwrap();
            }
            let mut f = eth(&[(0x8100, 7)], if v6 { 0x86dd } else { 0x0800 }, &l3);
            if pos < f.len() {
                f[pos] = val;
            }
            f.truncate(cut.max(1));
            let _ = parse(&f);
        }

        /// Frames built by etherparse round-trip to their 5-tuple, with and without tags.
        #[test]
        fn built_frames_round_trip(sp in any::<u16>(), dp in any::<u16>(), a in any::<[u8; 4]>(), d in any::<[u8; 16]>(), tcp in any::<bool>(), tags in 0usize..3, v6 in any::<bool>()) {
            let mut l3 = Vec::new();
            let (src, dst): (IpAddr, IpAddr);
            let ip = if v6 {
                let mut s = d;
                s[0] ^= 0xff;
                (src, dst) = (s.into(), d.into());
                PacketBuilder::ipv6(s, d, 64)
            } else {
                (src, dst) = (a.into(), [a[3], a[2], a[1], a[0]].into());
                PacketBuilder::ipv4(a, [a[3], a[2], a[1], a[0]], 64)
            };
            if tcp {
                ip.tcp(sp, dp, 1, 100).write(&mut l3, b"payload").unwrap();
            } else {
                ip.udp(sp, dp).write(&mut l3, b"payload").unwrap();
            }
            let tag_list = [(0x88a8u16, 3u16), (0x8100, 4)];
            let f = eth(&tag_list[2 - tags.min(2)..], if v6 { 0x86dd } else { 0x0800 }, &l3);
            let p = parse(&f).unwrap();
            let proto = if tcp { Protocol::Tcp } else { Protocol::Udp };
            prop_assert_eq!(p.tuple, FiveTuple::new(proto, src, sp, dst, dp).unwrap());
            prop_assert_eq!(p.vlan_tags as usize, tags);
        }
    }
}
