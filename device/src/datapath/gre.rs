//! GRE encapsulation of the copies MIRROR and SNOOP send to the collector.
//!
//! The copy is the original Ethernet frame (whole, or cut for SNOOP) carried in GRE with
//! protocol type 0x6558 (transparent Ethernet bridging, RFC 1701/2784, no optional fields), in
//! an IPv4 or IPv6 packet to the session's next hop, in an Ethernet frame out of the collector
//! port: tcpdump, tshark or any GRE endpoint decodes it.
//!
//! A copy longer than the collector link's MTU is sent as fragments of its outer IP packet
//! (IPv4 fragments, or IPv6 fragments with a Fragment header): the collector's IP layer (a
//! Linux GRE/gretap endpoint, Wireshark) reassembles them into the whole copy, so nothing of
//! the frame is lost on a link of MTU 1,500 carrying copies of 1,514-byte frames.

use std::net::IpAddr;

use super::CollectorConfig;

/// The longest outer header: Ethernet 14 + IPv6 40 + Fragment header 8 + GRE 4.
pub const MAX_HEADER: usize = 14 + 40 + 8 + 4;
/// The most fragments one copy is sent as; a copy that would need more is not sent (counted
/// `too_big`): at MTU 1,280 (IPv6's least) this is over 9,000 bytes of frame.
pub const MAX_FRAGMENTS: usize = 8;
/// GRE protocol type of an Ethernet frame.
pub const TRANSPARENT_ETHERNET: u16 = 0x6558;
/// IP protocol number of GRE.
pub const IPPROTO_GRE: u8 = 47;

/// The outer headers of one copy.
#[derive(Clone, Copy)]
pub struct Header {
    bytes: [u8; MAX_HEADER],
    len: usize,
    /// Where the part of the inner frame this packet carries starts (0 but in later
    /// fragments).
    pub inner_from: usize,
    /// Bytes of the inner frame the outer packet carries (a frame longer than an IP packet
    /// can hold is cut to fit).
    pub inner_len: usize,
}

impl Header {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The ones' complement sum of big-endian 16-bit words, folded to 16 bits.
fn sum16(h: &[u8]) -> u32 {
    fold(h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum())
}

fn fold(mut sum: u32) -> u32 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The ones' complement checksum of an IPv4 header.
fn checksum(h: &[u8]) -> u16 {
    !(sum16(h) as u16)
}

/// The outer headers of every copy to one next hop, built once (as a router keeps a rewrite
/// string per adjacency): a copy's header is the template with its lengths, and for IPv4 its
/// checksum, filled in, instead of headers built byte by byte for each copy.
#[derive(Clone, Copy)]
pub struct Template {
    next_hop: IpAddr,
    /// The headers with zero lengths and checksum.
    blank: Header,
    /// IPv4: the ones' complement sum of the blank IP header (the length is added to it).
    sum: u32,
}

impl Template {
    pub fn new(cfg: &CollectorConfig, next_hop: IpAddr) -> Self {
        let mut b = [0u8; MAX_HEADER];
        b[0..6].copy_from_slice(&cfg.dst_mac);
        b[6..12].copy_from_slice(&cfg.src_mac);
        let (len, sum) = match next_hop {
            IpAddr::V4(dst) => {
                b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                let ip = &mut b[14..34];
                ip[0] = 0x45;
                ip[8] = cfg.ttl;
                ip[9] = IPPROTO_GRE;
                ip[12..16].copy_from_slice(&cfg.src_v4.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                (34, sum16(ip))
            }
            IpAddr::V6(dst) => {
                b[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
                let ip = &mut b[14..54];
                ip[0] = 0x60;
                ip[6] = IPPROTO_GRE;
                ip[7] = cfg.ttl;
                ip[8..24].copy_from_slice(&cfg.src_v6.octets());
                ip[24..40].copy_from_slice(&dst.octets());
                (54, 0)
            }
        };
        // GRE: no checksum, key or sequence; version 0.
        b[len + 2..len + 4].copy_from_slice(&TRANSPARENT_ETHERNET.to_be_bytes());
        Template { next_hop, blank: Header { bytes: b, len: len + 4, inner_from: 0, inner_len: 0 }, sum }
    }

    pub fn next_hop(&self) -> IpAddr {
        self.next_hop
    }

    /// The outer headers for a copy of `inner_len` bytes (cut to what one IP packet holds).
    #[inline]
    pub fn header(&self, inner_len: usize) -> Header {
        let mut h = self.blank;
        if self.next_hop.is_ipv4() {
            h.inner_len = inner_len.min(usize::from(u16::MAX) - 24);
            let total = (20 + 4 + h.inner_len) as u16;
            h.bytes[16..18].copy_from_slice(&total.to_be_bytes());
            let sum = !(fold(self.sum + u32::from(total)) as u16);
            h.bytes[24..26].copy_from_slice(&sum.to_be_bytes());
        } else {
            h.inner_len = inner_len.min(usize::from(u16::MAX) - 4);
            h.bytes[18..20].copy_from_slice(&((4 + h.inner_len) as u16).to_be_bytes());
        }
        h
    }
}

/// The templates of the next hops copies went to lately (a handful in practice: the
/// collectors), kept by each datapath shell so a copy's header costs a lookup and a fill.
#[derive(Default)]
pub struct Templates {
    recent: Vec<Template>,
}

impl Templates {
    /// The most next hops kept; one more replaces the oldest.
    pub const KEPT: usize = 16;

    pub fn get(&mut self, cfg: &CollectorConfig, next_hop: IpAddr) -> &Template {
        let at = match self.recent.iter().position(|t| t.next_hop == next_hop) {
            Some(at) => at,
            None => {
                if self.recent.len() == Self::KEPT {
                    self.recent.remove(0);
                }
                self.recent.push(Template::new(cfg, next_hop));
                self.recent.len() - 1
            }
        };
        &self.recent[at]
    }
}

/// The outer headers for a copy of `inner_len` bytes to `next_hop`.
pub fn header(cfg: &CollectorConfig, next_hop: IpAddr, inner_len: usize) -> Header {
    Template::new(cfg, next_hop).header(inner_len)
}

/// The copy of an `inner_len`-byte frame to `to`'s next hop, as the packets a link of `mtu` bytes
/// carries, written into `out`: one whole packet when it fits, else fragments of the outer IP
/// packet (`id` is the fragment identification). Returns how many; `None` (and `out` untouched)
/// when it would take more than [`MAX_FRAGMENTS`].
pub fn fragments(
    to: &Template,
    inner_len: usize,
    mtu: usize,
    id: u32,
    out: &mut [Header; MAX_FRAGMENTS],
) -> Option<usize> {
    let next_hop = to.next_hop;
    let whole = to.header(inner_len);
    let ip_len = if next_hop.is_ipv4() { 20 } else { 40 };
    let payload = 4 + whole.inner_len;
    if ip_len + payload <= mtu {
        out[0] = whole;
        return Some(1);
    }
    // Fragment payloads are multiples of 8 bytes, but for the last.
    let per = (mtu.checked_sub(if next_hop.is_ipv4() { 20 } else { 48 })?) & !7;
    if per == 0 {
        return None;
    }
    let n = payload.div_ceil(per);
    if n > MAX_FRAGMENTS {
        return None;
    }
    for (k, h) in out.iter_mut().enumerate().take(n) {
        *h = whole;
        let off = k * per;
        let plen = per.min(payload - off);
        let more = u16::from(k + 1 < n);
        let b = &mut h.bytes;
        let l2 = 14;
        let mut len = match next_hop {
            IpAddr::V4(_) => {
                let ip = &mut b[l2..l2 + 20];
                ip[2..4].copy_from_slice(&((20 + plen) as u16).to_be_bytes());
                ip[4..6].copy_from_slice(&(id as u16).to_be_bytes());
                ip[6..8].copy_from_slice(&((more << 13) | (off / 8) as u16).to_be_bytes());
                ip[10..12].copy_from_slice(&[0, 0]);
                let sum = checksum(ip);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                l2 + 20
            }
            IpAddr::V6(_) => {
                let ip = &mut b[l2..l2 + 40];
                ip[4..6].copy_from_slice(&((8 + plen) as u16).to_be_bytes());
                ip[6] = 44; // a Fragment header follows
                let f = &mut b[l2 + 40..l2 + 48];
                f[0] = IPPROTO_GRE;
                f[1] = 0;
                f[2..4].copy_from_slice(&(((off / 8) as u16) << 3 | more).to_be_bytes());
                f[4..8].copy_from_slice(&id.to_be_bytes());
                l2 + 48
            }
        };
        if k == 0 {
            // The GRE header leads the first fragment's payload.
            b[len..len + 4].copy_from_slice(&[0, 0, 0x65, 0x58]);
            len += 4;
            h.inner_from = 0;
            h.inner_len = plen - 4;
        } else {
            h.inner_from = off - 4;
            h.inner_len = plen;
        }
        h.len = len;
    }
    Some(n)
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

    /// A copy over the MTU leaves as fragments no longer than the MTU, which reassemble
    /// (offsets, MF flags, one identification) into exactly the whole copy's IP payload.
    #[test]
    fn copies_over_the_mtu_are_fragments_that_reassemble() {
        let cfg = CollectorConfig::default();
        let frame: Vec<u8> = (0..1514u32).map(|i| (i % 253) as u8).collect();
        for hop in ["198.51.100.9".parse::<IpAddr>().unwrap(), "2001:db8::9".parse().unwrap()] {
            let whole = encapsulate(&cfg, hop, &frame);
            let ip_len = if hop.is_ipv4() { 20 } else { 40 };
            let mut fits = [header(&cfg, hop, 0); MAX_FRAGMENTS];
            let to = Template::new(&cfg, hop);
            assert_eq!(fragments(&to, frame.len(), 9000, 7, &mut fits), Some(1));
            assert_eq!(fits[0].as_bytes(), &whole[..fits[0].as_bytes().len()]);
            let mut hs = fits;
            let n = fragments(&to, frame.len(), 1500, 0x0102_0304, &mut hs).unwrap();
            assert_eq!(n, 2);
            let mut payload = vec![0u8; 4 + frame.len()];
            let mut seen = 0;
            for (k, h) in hs[..n].iter().enumerate() {
                let pkt = [h.as_bytes(), &frame[h.inner_from..h.inner_from + h.inner_len]].concat();
                assert!(pkt.len() - 14 <= 1500, "fragment {k}: {}", pkt.len());
                let ip = &pkt[14..];
                let (off, more, body) = if hop.is_ipv4() {
                    assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
                    assert_eq!(checksum(&ip[..20]), 0);
                    assert_eq!(&ip[4..6], &[3, 4]);
                    let fo = u16::from_be_bytes([ip[6], ip[7]]);
                    (usize::from(fo & 0x1fff) * 8, fo & 0x2000 != 0, &ip[20..])
                } else {
                    assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), ip.len() - 40);
                    assert_eq!((ip[6], ip[40]), (44, IPPROTO_GRE));
                    assert_eq!(&ip[44..48], &[1, 2, 3, 4]);
                    let fo = u16::from_be_bytes([ip[42], ip[43]]);
                    (usize::from(fo >> 3) * 8, fo & 1 != 0, &ip[48..])
                };
                assert_eq!(more, k + 1 < n);
                payload[off..off + body.len()].copy_from_slice(body);
                seen += body.len();
            }
            assert_eq!(seen, payload.len());
            assert_eq!(payload, whole[14 + ip_len..]);
            // More fragments than a copy may take: not sent.
            assert!(fragments(&to, frame.len(), 100, 1, &mut hs).is_none());
            assert!(fragments(&to, frame.len(), 30, 1, &mut hs).is_none());
        }
    }

    /// A template's header, lengths and checksum filled in, is what etherparse reads as a
    /// valid header of that length, at every length an IP packet can carry and past it; the
    /// cache gives the same headers as fresh templates, past its size.
    #[test]
    fn a_template_fills_lengths_and_checksum_right_at_every_length() {
        let cfg = CollectorConfig { ttl: 255, ..CollectorConfig::default() };
        for hop in [
            "198.51.100.9".parse::<IpAddr>().unwrap(),
            "255.255.255.254".parse().unwrap(),
            "2001:db8::9".parse().unwrap(),
        ] {
            let t = Template::new(&cfg, hop);
            for inner in (0..=70_000).step_by(7).chain([65_511, 65_512, 65_531, 65_532]) {
                let h = t.header(inner);
                let b = h.as_bytes();
                match hop {
                    IpAddr::V4(_) => {
                        let (ip, _) = etherparse::Ipv4Header::from_slice(&b[14..]).unwrap();
                        assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "{hop} {inner}");
                        assert_eq!(usize::from(ip.total_len), 24 + h.inner_len);
                        assert_eq!(h.inner_len, inner.min(65_535 - 24));
                    }
                    IpAddr::V6(_) => {
                        let (ip, _) = etherparse::Ipv6Header::from_slice(&b[14..]).unwrap();
                        assert_eq!(usize::from(ip.payload_length), 4 + h.inner_len);
                        assert_eq!(h.inner_len, inner.min(65_535 - 4));
                    }
                }
            }
        }
        let mut cache = Templates::default();
        for round in 0..2 {
            for k in 0..=Templates::KEPT as u32 {
                let hop = IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + k));
                let got = cache.get(&cfg, hop);
                assert_eq!(got.next_hop(), hop, "round {round}");
                assert_eq!(got.header(100).as_bytes(), Template::new(&cfg, hop).header(100).as_bytes());
            }
            assert_eq!(cache.recent.len(), Templates::KEPT);
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
