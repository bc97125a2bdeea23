//! GRE encapsulation of the copies MIRROR and SNOOP send to the collector.
//!
//! The copy is the original Ethernet frame (whole, or cut for SNOOP) carried in GRE with
//! protocol type 0x6558 (transparent Ethernet bridging, RFC 1701/2784, no optional fields), in
//! an IPv4 or IPv6 packet to the session's next hop, in an Ethernet frame out of the collector
//! port: tcpdump, tshark or any GRE endpoint decodes it.

use std::net::IpAddr;

use super::CollectorConfig;

/// The longest outer header: Ethernet 14 + IPv6 40 + GRE 4.
pub const MAX_HEADER: usize = 14 + 40 + 4;
/// GRE protocol type of an Ethernet frame.
pub const TRANSPARENT_ETHERNET: u16 = 0x6558;
/// IP protocol number of GRE.
pub const IPPROTO_GRE: u8 = 47;

/// The outer headers of one copy.
#[derive(Clone, Copy)]
pub struct Header {
    bytes: [u8; MAX_HEADER],
    len: usize,
    /// Bytes of the inner frame the outer packet carries (a frame longer than an IP packet
    /// can hold is cut to fit).
    pub inner_len: usize,
}

impl Header {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The ones' complement checksum of an IPv4 header.
fn checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The outer headers for a copy of `inner_len` bytes to `next_hop`.
pub fn header(cfg: &CollectorConfig, next_hop: IpAddr, inner_len: usize) -> Header {
    let mut b = [0u8; MAX_HEADER];
    b[0..6].copy_from_slice(&cfg.dst_mac);
    b[6..12].copy_from_slice(&cfg.src_mac);
    let (len, inner_len) = match next_hop {
        IpAddr::V4(dst) => {
            let inner_len = inner_len.min(usize::from(u16::MAX) - 24);
            b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let ip = &mut b[14..34];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + 4 + inner_len) as u16).to_be_bytes());
            ip[8] = cfg.ttl;
            ip[9] = IPPROTO_GRE;
            ip[12..16].copy_from_slice(&cfg.src_v4.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let sum = checksum(ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            (34, inner_len)
        }
        IpAddr::V6(dst) => {
            let inner_len = inner_len.min(usize::from(u16::MAX) - 4);
            b[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let ip = &mut b[14..54];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&((4 + inner_len) as u16).to_be_bytes());
            ip[6] = IPPROTO_GRE;
            ip[7] = cfg.ttl;
            ip[8..24].copy_from_slice(&cfg.src_v6.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            (54, inner_len)
        }
    };
    // GRE: no checksum, key or sequence; version 0.
    b[len + 2..len + 4].copy_from_slice(&TRANSPARENT_ETHERNET.to_be_bytes());
    Header { bytes: b, len: len + 4, inner_len }
}

/// A whole copy in one buffer (the in-memory wire; kernel ports send header and frame as two
/// pieces of one message, without copying the frame).
pub fn encapsulate(cfg: &CollectorConfig, next_hop: IpAddr, inner: &[u8]) -> Vec<u8> {
    let h = header(cfg, next_hop, inner.len());
    let mut out = Vec::with_capacity(h.len + h.inner_len);
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&inner[..h.inner_len]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn inner() -> Vec<u8> {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1000, 2000)
            .write(&mut f, &[7u8; 100])
            .unwrap();
        f
    }

    /// etherparse reads the outer headers as valid IPv4/IPv6 carrying GRE, with the right
    /// lengths and checksum, and the payload after GRE is the frame itself.
    #[test]
    fn copies_decode_in_both_families() {
        let cfg = CollectorConfig::default();
        let frame = inner();
        for hop in ["198.51.100.9".parse::<IpAddr>().unwrap(), "2001:db8::9".parse().unwrap()] {
            let copy = encapsulate(&cfg, hop, &frame);
            let p = SlicedPacket::from_ethernet(&copy).unwrap();
            let payload = match p.net.unwrap() {
                NetSlice::Ipv4(v4) => {
                    assert_eq!(
                        v4.header().destination_addr(),
                        match hop {
                            IpAddr::V4(a) => a,
                            _ => unreachable!(),
                        }
                    );
                    assert_eq!(v4.header().protocol(), etherparse::IpNumber::GRE);
                    let h = v4.header().to_header();
                    assert_eq!(h.header_checksum, h.calc_header_checksum());
                    v4.payload().payload.to_vec()
                }
                NetSlice::Ipv6(v6) => {
                    assert_eq!(IpAddr::V6(v6.header().destination_addr()), hop);
                    assert_eq!(v6.header().next_header(), etherparse::IpNumber::GRE);
                    v6.payload().payload.to_vec()
                }
                _ => panic!("not IP"),
            };
            assert!(p.transport.is_none() || !matches!(p.transport, Some(TransportSlice::Udp(_))));
            assert_eq!(&payload[..4], &[0, 0, 0x65, 0x58]);
            assert_eq!(&payload[4..], &frame[..]);
        }
    }

    #[test]
    fn a_copy_longer_than_an_ip_packet_is_cut_to_fit() {
        let cfg = CollectorConfig::default();
        let h = header(&cfg, "198.51.100.9".parse().unwrap(), 100_000);
        assert_eq!(h.inner_len, 65_535 - 24);
        let h = header(&cfg, "2001:db8::9".parse().unwrap(), 100_000);
        assert_eq!(h.inner_len, 65_535 - 4);
    }
}
