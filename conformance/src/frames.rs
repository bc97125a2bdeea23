//! The suite's own frames: Ethernet (with 0–2 VLAN tags), IPv4 or IPv6 (optionally with a
//! hop-by-hop extension header), TCP or UDP, with correct checksums, built from a session's
//! 5-tuple; and the frames the device must not match (fragments, malformed headers, other
//! protocols). Written here, independently of the reference device's parser, so the suite
//! checks a device against the wire format and not against itself.

use std::net::IpAddr;

use opof_proto::convert::{ipv4_from_wire, ipv6_from_wire};
use opof_proto::wire;

use crate::traffic::{MAC_A, MAC_B};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// A session's flow as added: the source is the host on network A (behind ext0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl Flow {
    /// The flow of an addSession request (IPv4 as docs/WIRE.md "Field variants" encodes it).
    pub fn of(r: &wire::SessionRequest) -> Flow {
        let v6 = r.ip_version == wire::IpVersion::Ipv6 as i32;
        let addr = |v4: u32, v6b: &[u8]| -> IpAddr {
            if v6 {
                IpAddr::V6(ipv6_from_wire(v6b).unwrap_or(std::net::Ipv6Addr::UNSPECIFIED))
            } else {
                IpAddr::V4(ipv4_from_wire(v4))
            }
        };
        Flow {
            protocol: if r.protocol_id == wire::ProtocolId::Udp as i32 { UDP } else { TCP },
            src: addr(r.source_ip, &r.source_ip_v6),
            dst: addr(r.destination_ip, &r.destination_ip_v6),
            sport: r.source_port as u16,
            dport: r.destination_port as u16,
        }
    }

    /// A packet travelling as the session was added ("in"; enters on ext0).
    pub fn a_to_b(&self) -> Pkt {
        Pkt::new(*self, false)
    }

    /// A packet of the reverse direction ("out"; enters on ext1).
    pub fn b_to_a(&self) -> Pkt {
        Pkt::new(*self, true)
    }
}

/// One packet of a flow, to build.
#[derive(Clone, Debug)]
pub struct Pkt {
    flow: Flow,
    reverse: bool,
    flags: u8,
    payload: usize,
    seq: u32,
    tags: Vec<(u16, u16)>,
    hop_by_hop: bool,
}

impl Pkt {
    fn new(flow: Flow, reverse: bool) -> Pkt {
        Pkt { flow, reverse, flags: ACK | PSH, payload: 64, seq: 0, tags: Vec::new(), hop_by_hop: false }
    }
    /// TCP flags (default ACK|PSH; no meaning for UDP).
    pub fn flags(mut self, f: u8) -> Pkt {
        self.flags = f;
        self
    }
    pub fn payload(mut self, n: usize) -> Pkt {
        self.payload = n;
        self
    }
    /// A number written at the start of the payload, so that frames of a flow differ.
    pub fn seq(mut self, n: u32) -> Pkt {
        self.seq = n;
        self
    }
    /// Adds a VLAN tag (outermost first): TPID 0x8100 or 0x88a8, and the VLAN id.
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Pkt {
        self.tags.push((tpid, vid));
        self
    }
    /// IPv6 only: a hop-by-hop options header (PadN) before the transport header.
    pub fn hop_by_hop(mut self) -> Pkt {
        self.hop_by_hop = true;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let f = &self.flow;
        let (src, dst, sport, dport) =
            if self.reverse { (f.dst, f.src, f.dport, f.sport) } else { (f.src, f.dst, f.sport, f.dport) };
        let (smac, dmac) = if self.reverse { (MAC_B, MAC_A) } else { (MAC_A, MAC_B) };
        let mut payload = vec![0u8; self.payload];
        for (i, b) in payload.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7).wrapping_add(0x30);
        }
        let n = payload.len().min(4);
        payload[..n].copy_from_slice(&self.seq.to_be_bytes()[..n]);
        let mut l4 = match f.protocol {
            UDP => {
                let mut h = Vec::with_capacity(8 + payload.len());
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend(((8 + payload.len()) as u16).to_be_bytes());
                h.extend([0, 0]);
                h
            }
            _ => {
                let mut h = Vec::with_capacity(20 + payload.len());
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend((1000 + self.seq * 100).to_be_bytes());
                h.extend(if self.flags & ACK != 0 { 5000u32 } else { 0 }.to_be_bytes());
                h.extend([0x50, self.flags, 0xff, 0xff, 0, 0, 0, 0]);
                h
            }
        };
        l4.extend(&payload);
        let sum_at = if f.protocol == UDP { 6 } else { 16 };
        let c = l4_checksum(src, dst, f.protocol, &l4);
        // UDP over IPv4 sends a computed 0 as 0xffff (0 means "no checksum").
        let c = if c == 0 && f.protocol == UDP { 0xffff } else { c };
        l4[sum_at..sum_at + 2].copy_from_slice(&c.to_be_bytes());
        let mut frame = Vec::with_capacity(18 + 8 + 40 + l4.len());
        frame.extend(dmac);
        frame.extend(smac);
        for &(tpid, vid) in &self.tags {
            frame.extend(tpid.to_be_bytes());
            frame.extend((vid & 0x0fff).to_be_bytes());
        }
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                frame.extend(0x0800u16.to_be_bytes());
                frame.extend(ipv4_header(s.octets(), d.octets(), f.protocol, l4.len(), 0));
            }
            (s, d) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V6(a) => a.octets(),
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                };
                frame.extend(0x86ddu16.to_be_bytes());
                let ext = if self.hop_by_hop { 8 } else { 0 };
                frame.extend([0x60, 0, 0, 0]);
                frame.extend(((l4.len() + ext) as u16).to_be_bytes());
                frame.push(if self.hop_by_hop { 0 } else { f.protocol });
                frame.push(64);
                frame.extend(v6(s));
                frame.extend(v6(d));
                if self.hop_by_hop {
                    frame.extend([f.protocol, 0, 1, 4, 0, 0, 0, 0]);
                }
            }
        }
        frame.extend(l4);
        frame
    }
}

/// An IPv4 header (no options) for `len` bytes of payload, with its checksum; `frag` is the
/// flags-and-offset field.
fn ipv4_header(src: [u8; 4], dst: [u8; 4], protocol: u8, len: usize, frag: u16) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend(((20 + len) as u16).to_be_bytes());
    h.extend([0x12, 0x34]);
    h.extend(frag.to_be_bytes());
    h.extend([64, protocol, 0, 0]);
    h.extend(src);
    h.extend(dst);
    let c = checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        for c in p.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn l4_checksum(src: IpAddr, dst: IpAddr, protocol: u8, l4: &[u8]) -> u16 {
    let len = l4.len() as u32;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ph = Vec::with_capacity(12);
            ph.extend(s.octets());
            ph.extend(d.octets());
            ph.extend([0, protocol]);
            ph.extend((len as u16).to_be_bytes());
            checksum(&[&ph, l4])
        }
        (s, d) => {
            let o = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            let mut ph = Vec::with_capacity(40);
            ph.extend(o(s));
            ph.extend(o(d));
            ph.extend(len.to_be_bytes());
            ph.extend([0, 0, 0, protocol]);
            checksum(&[&ph, l4])
        }
    }
}

/// The offset of the IP header in a frame built without VLAN tags.
const L3: usize = 14;

/// Frames carrying an IPv4 flow's addresses (and, where there is one, its ports at the usual
/// place) that a device must not match: each with what it is. Built from a data packet of the
/// flow from network A.
pub fn unmatchable_v4(flow: &Flow) -> Vec<(&'static str, Vec<u8>)> {
    let base = flow.a_to_b().payload(200).build();
    let reheader = |f: &mut Vec<u8>| {
        f[L3 + 10..L3 + 12].copy_from_slice(&[0, 0]);
        let c = checksum(&[&f[L3..L3 + 20]]);
        f[L3 + 10..L3 + 12].copy_from_slice(&c.to_be_bytes());
    };
    let mut first_fragment = base.clone();
    first_fragment[L3 + 6] = 0x20; // more fragments, offset 0
    reheader(&mut first_fragment);
    let mut later_fragment = base.clone();
    later_fragment[L3 + 6..L3 + 8].copy_from_slice(&185u16.to_be_bytes()); // offset 1,480 bytes, last
    reheader(&mut later_fragment);
    let mut short_ihl = base.clone();
    short_ihl[L3] = 0x44; // a header length of 16 bytes, less than the minimum 20
    reheader(&mut short_ihl);
    // Cut inside the transport header after the ports, with the IP total length saying so.
    let mut truncated = base[..L3 + 20 + 4].to_vec();
    truncated[L3 + 2..L3 + 4].copy_from_slice(&24u16.to_be_bytes());
    reheader(&mut truncated);
    let mut icmp = base.clone();
    icmp[L3 + 9] = 1;
    reheader(&mut icmp);
    let mut arp = base[..L3].to_vec();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    arp.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend(MAC_A);
    if let IpAddr::V4(a) = flow.src {
        arp.extend(a.octets());
    }
    arp.extend([0; 6]);
    if let IpAddr::V4(a) = flow.dst {
        arp.extend(a.octets());
    }
    vec![
        ("an IPv4 first fragment (MF set)", first_fragment),
        ("an IPv4 later fragment (offset 1,480)", later_fragment),
        ("an IPv4 header length below 20 bytes", short_ihl),
        ("a transport header cut short", truncated),
        ("ICMP between the flow's hosts", icmp),
        ("ARP between the flow's hosts", arp),
    ]
}

/// An IPv6 packet of the flow with a Fragment header (a fragment of the flow, which a device
/// must not match).
pub fn v6_fragment(flow: &Flow) -> Vec<u8> {
    let f = flow.a_to_b().payload(64).build();
    // Insert a fragment header (next header = the transport protocol, offset 0, M set).
    let mut out = f[..L3 + 40].to_vec();
    out[L3 + 6] = 44;
    let plen = u16::from_be_bytes([out[L3 + 4], out[L3 + 5]]) + 8;
    out[L3 + 4..L3 + 6].copy_from_slice(&plen.to_be_bytes());
    out.extend([flow.protocol, 0, 0, 1, 0, 0, 0x12, 0x34]);
    out.extend(&f[L3 + 40..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4flow(protocol: u8) -> Flow {
        Flow {
            protocol,
            src: IpAddr::from([10, 1, 2, 3]),
            dst: IpAddr::from([198, 18, 0, 1]),
            sport: 40000,
            dport: 443,
        }
    }

    #[test]
    fn checksums_verify() {
        for proto in [TCP, UDP] {
            let f = v4flow(proto).a_to_b().payload(33).seq(9).build();
            assert_eq!(checksum(&[&f[L3..L3 + 20]]), 0, "IPv4 header");
            assert_eq!(l4_checksum(v4flow(proto).src, v4flow(proto).dst, proto, &f[L3 + 20..]), 0, "L4");
            assert_eq!(&f[6..12], &MAC_A);
        }
        let v6 = Flow { src: "fd00::1".parse().unwrap(), dst: "2001:db8::1".parse().unwrap(), ..v4flow(UDP) };
        let f = v6.b_to_a().hop_by_hop().build();
        assert_eq!((f[L3 + 6], f[L3 + 40]), (0, UDP));
        assert_eq!(l4_checksum(v6.dst, v6.src, UDP, &f[L3 + 48..]), 0);
        assert_eq!(&f[6..12], &MAC_B);
        let frag = v6_fragment(&v6);
        assert_eq!((frag[L3 + 6], frag.len()), (44, v6.a_to_b().payload(64).build().len() + 8));
    }

    #[test]
    fn tags_go_after_the_addresses() {
        let f = v4flow(TCP).a_to_b().vlan(0x88a8, 100).vlan(0x8100, 200).build();
        assert_eq!(&f[12..20], &[0x88, 0xa8, 0, 100, 0x81, 0x00, 0, 200]);
        assert_eq!(&f[20..22], &[0x08, 0x00]);
        assert_eq!(unmatchable_v4(&v4flow(UDP)).len(), 6);
    }
}
