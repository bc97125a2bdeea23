//! Offload metadata of Linux interfaces: checksums left for "hardware" and segmentation
//! super-frames, as an AF_PACKET socket with `PACKET_VNET_HDR` sees them.
//!
//! A Linux host sending over a veth (or any interface with checksum and segmentation offloads,
//! the default) hands the link frames whose TCP/UDP checksum holds only the pseudo-header's sum
//! (`CHECKSUM_PARTIAL`) and TCP or UDP super-frames of up to 64 KiB that "the hardware" is to cut
//! into packets of `gso_size` payload bytes. A device between two hosts is that hardware: it
//! completes checksums and cuts super-frames into the packets the wire carries, so that what
//! leaves it is what a switch would carry, and so that its counters count wire packets.
//!
//! The kernel describes each frame with a `virtio_net_hdr` in front of it (10 bytes, host byte
//! order for an AF_PACKET socket). [`VnetHdr`] reads it; [`complete_checksum`] finishes a
//! partial checksum in place; [`Segments`] writes the wire packets of a super-frame one at a
//! time into buffers the caller owns.

use std::fmt;

/// Bytes of the `virtio_net_hdr` in front of each frame on a socket with `PACKET_VNET_HDR`.
pub const VNET_HDR_LEN: usize = 10;
/// `SOL_PACKET` option that puts a `virtio_net_hdr` in front of each frame read and written.
pub const PACKET_VNET_HDR: i32 = 15;

/// `flags`: the checksum at `csum_start + csum_offset` is to be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type` values (the ECN bit, 0x80, may be added to any of them).
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

/// The metadata in front of a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// The headers' length as the kernel states it (a hint: [`Segments`] reads the headers
    /// themselves and does not rely on it).
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Is this a super-frame to be cut into packets?
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }
}

/// Why a frame's offload metadata could not be acted on (the frame is then dropped and counted:
/// the kernel never sends such a frame, so it means a defect somewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadError {
    /// `csum_start` / `csum_offset` point outside the frame.
    ChecksumOutside,
    /// A segmentation type this device does not cut (UFO: IP fragmentation of UDP).
    UnsupportedGso(u8),
    /// The super-frame's headers are not Ethernet (+ VLAN tags) + IPv4/IPv6 + TCP/UDP where
    /// the metadata says.
    BadHeaders,
    /// A segment would not fit the buffer it is to be written into.
    SegmentTooLong,
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OffloadError::ChecksumOutside => write!(f, "checksum offsets outside the frame"),
            OffloadError::UnsupportedGso(t) => write!(f, "segmentation type {t} is not supported"),
            OffloadError::BadHeaders => write!(f, "super-frame headers do not match its metadata"),
            OffloadError::SegmentTooLong => write!(f, "a segment is longer than a buffer"),
        }
    }
}

/// Ones' complement sum of `data` in host order (RFC 1071 §2(B): the sum is the same whatever
/// the byte order, swapped once at the end — here by reading and writing in host order).
fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
        let (s, carry) = acc.overflowing_add(v);
        acc = s + u64::from(carry);
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    let (s, carry) = acc.overflowing_add(u64::from_ne_bytes(tail));
    s + u64::from(carry)
}

/// Folds a sum to 16 bits, host order.
fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The Internet checksum of `data` (as it goes into a header field, in memory order).
pub fn internet_checksum(data: &[u8]) -> [u8; 2] {
    (!fold(sum(data, 0))).to_ne_bytes()
}

/// Completes a partial checksum in place: the field at `start + offset` holds the
/// pseudo-header's sum, and the ones' complement of the sum from `start` to the end goes there
/// (0 written as 0xffff, as the kernel does, which UDP needs and TCP reads alike).
pub fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> Result<(), OffloadError> {
    let at = start.checked_add(offset).ok_or(OffloadError::ChecksumOutside)?;
    if start >= frame.len() || at + 2 > frame.len() {
        return Err(OffloadError::ChecksumOutside);
    }
    let c = !fold(sum(&frame[start..], 0));
    let c = if c == 0 { 0xffff } else { c };
    frame[at..at + 2].copy_from_slice(&c.to_ne_bytes());
    Ok(())
}

const TCP: u8 = 6;
const UDP: u8 = 17;

/// The wire packets of one super-frame, written one at a time.
#[derive(Clone, Copy, Debug)]
pub struct Segments {
    /// Where the IP header starts.
    l3: usize,
    v6: bool,
    /// Where the TCP/UDP header starts.
    l4: usize,
    proto: u8,
    /// Headers of every packet: Ethernet (+ tags) + IP (+ extension headers) + TCP/UDP.
    hdr_len: usize,
    gso_size: usize,
    count: usize,
    payload: usize,
}

impl Segments {
    /// Reads a super-frame's headers as its metadata describes them.
    pub fn new(frame: &[u8], h: &VnetHdr) -> Result<Segments, OffloadError> {
        let proto = match h.gso_type & !GSO_ECN {
            GSO_TCPV4 | GSO_TCPV6 => TCP,
            GSO_UDP_L4 => UDP,
            t => return Err(OffloadError::UnsupportedGso(t)),
        };
        let mut l3 = 14;
        let mut ethertype = be16(frame, 12).ok_or(OffloadError::BadHeaders)?;
        while matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
            ethertype = be16(frame, l3 + 2).ok_or(OffloadError::BadHeaders)?;
            l3 += 4;
        }
        let v6 = match ethertype {
            0x0800 => false,
            0x86dd => true,
            _ => return Err(OffloadError::BadHeaders),
        };
        let l4 = usize::from(h.csum_start);
        let min_l4 = l3 + if v6 { 40 } else { 20 };
        if l4 < min_l4
            || (!v6 && frame.get(l3).map(|b| b >> 4) != Some(4))
            || (v6 && frame.get(l3).map(|b| b >> 4) != Some(6))
        {
            return Err(OffloadError::BadHeaders);
        }
        let l4_len =
            if proto == TCP { usize::from(frame.get(l4 + 12).ok_or(OffloadError::BadHeaders)? >> 4) * 4 } else { 8 };
        let hdr_len = l4 + l4_len;
        let gso_size = usize::from(h.gso_size);
        if l4_len < 8 || hdr_len > frame.len() || gso_size == 0 {
            return Err(OffloadError::BadHeaders);
        }
        let payload = frame.len() - hdr_len;
        Ok(Segments { l3, v6, l4, proto, hdr_len, gso_size, count: payload.div_ceil(gso_size).max(1), payload })
    }

    /// How many packets the wire carries for this super-frame.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The longest packet.
    pub fn max_len(&self) -> usize {
        self.hdr_len + self.gso_size.min(self.payload)
    }

    /// Bytes the wire carries in all (each packet with its own headers).
    pub fn wire_bytes(&self) -> usize {
        self.hdr_len * self.count + self.payload
    }

    /// Writes packet `i` of `frame` into `out`; returns its length.
    pub fn write(&self, frame: &[u8], i: usize, out: &mut [u8]) -> Result<usize, OffloadError> {
        if i >= self.count {
            return Err(OffloadError::BadHeaders);
        }
        let from = self.hdr_len + i * self.gso_size;
        let chunk = self.gso_size.min(self.payload.saturating_sub(i * self.gso_size));
        let len = self.hdr_len + chunk;
        if len > out.len() {
            return Err(OffloadError::SegmentTooLong);
        }
        let last = i + 1 == self.count;
        out[..self.hdr_len].copy_from_slice(&frame[..self.hdr_len]);
        out[self.hdr_len..len].copy_from_slice(&frame[from..from + chunk]);
        let out = &mut out[..len];
        let l4_bytes = len - self.l4;
        let ip = self.l3;
        if self.v6 {
            put16(out, ip + 4, (len - ip - 40) as u16);
        } else {
            put16(out, ip + 2, (len - ip) as u16);
            let id = be16(out, ip + 4).unwrap_or(0).wrapping_add(i as u16);
            put16(out, ip + 4, id);
            put16(out, ip + 10, 0);
            let ihl = usize::from(out[ip] & 0x0f) * 4;
            let c = internet_checksum(&out[ip..ip + ihl.max(20)]);
            out[ip + 10..ip + 12].copy_from_slice(&c);
        }
        let l4 = self.l4;
        let check_at = if self.proto == TCP {
            let seq = u32::from_be_bytes(out[l4 + 4..l4 + 8].try_into().expect("4 bytes"));
            out[l4 + 4..l4 + 8].copy_from_slice(&seq.wrapping_add((i * self.gso_size) as u32).to_be_bytes());
            // FIN and PSH belong to the last packet, CWR to the first.
            if !last {
                out[l4 + 13] &= !0x09;
            }
            if i > 0 {
                out[l4 + 13] &= !0x80;
            }
            l4 + 16
        } else {
            put16(out, l4 + 4, l4_bytes as u16);
            l4 + 6
        };
        put16(out, check_at, 0);
        let mut pseudo = [0u8; 40];
        let p = if self.v6 {
            pseudo[..32].copy_from_slice(&out[ip + 8..ip + 40]);
            pseudo[32..36].copy_from_slice(&(l4_bytes as u32).to_be_bytes());
            pseudo[39] = self.proto;
            &pseudo[..40]
        } else {
            pseudo[..8].copy_from_slice(&out[ip + 12..ip + 20]);
            pseudo[9] = self.proto;
            pseudo[10..12].copy_from_slice(&(l4_bytes as u16).to_be_bytes());
            &pseudo[..12]
        };
        let c = !fold(sum(&out[l4..], sum(p, 0)));
        let c = if c == 0 && self.proto == UDP { 0xffff } else { c };
        out[check_at..check_at + 2].copy_from_slice(&c.to_ne_bytes());
        Ok(len)
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn tcp_frame(v6: bool, payload: &[u8], flags_fin_psh: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let b = if v6 {
            b.ipv6(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
        } else {
            b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        };
        let mut b = b.tcp(40000, 80, 1000, 65535).ack(77).cwr();
        if flags_fin_psh {
            b = b.fin().psh();
        }
        let mut f = Vec::new();
        b.write(&mut f, payload).unwrap();
        f
    }

    /// Every packet of a super-frame is a valid TCP segment (checksums verified by etherparse),
    /// and their payloads in sequence order are the super-frame's payload.
    #[test]
    fn tcp_super_frames_cut_into_valid_segments() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
            let frame = tcp_frame(v6, &payload, true);
            let l4 = if v6 { 14 + 40 } else { 14 + 20 };
            let h = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                hdr_len: (l4 + 20) as u16,
                gso_size: 1448,
                csum_start: l4 as u16,
                csum_offset: 16,
            };
            let s = Segments::new(&frame, &h).unwrap();
            assert_eq!(s.count(), 7);
            assert_eq!(s.wire_bytes(), 7 * (l4 + 20) + 10_000);
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            for i in 0..s.count() {
                let n = s.write(&frame, i, &mut buf).unwrap();
                let p = SlicedPacket::from_ethernet(&buf[..n]).unwrap();
                let Some(TransportSlice::Tcp(t)) = p.transport else { panic!("tcp") };
                assert_eq!(t.sequence_number(), 1000 + (i * 1448) as u32);
                assert_eq!(t.fin(), i == 6);
                assert_eq!(t.psh(), i == 6);
                assert_eq!(t.cwr(), i == 0);
                let sum = match p.net.as_ref().unwrap() {
                    etherparse::NetSlice::Ipv4(ip) => {
                        let hdr = ip.header().to_header();
                        assert_eq!(hdr.header_checksum, hdr.calc_header_checksum());
                        assert_eq!(hdr.identification, i as u16);
                        t.to_header().calc_checksum_ipv4(&hdr, t.payload()).unwrap()
                    }
                    etherparse::NetSlice::Ipv6(ip) => {
                        t.to_header().calc_checksum_ipv6(&ip.header().to_header(), t.payload()).unwrap()
                    }
                    _ => unreachable!(),
                };
                assert_eq!(sum, t.checksum(), "segment {i} v6={v6}");
                got.extend_from_slice(t.payload());
            }
            assert_eq!(got, payload);
        }
    }

    #[test]
    fn a_partial_checksum_is_completed() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1000, 2000)
            .write(&mut f, &[9u8; 333])
            .unwrap();
        let good = f.clone();
        // What a host with checksum offload hands the link: the pseudo-header's sum only.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&f[38..40]);
        let partial = !u16::from_ne_bytes(internet_checksum(&pseudo));
        f[40..42].copy_from_slice(&partial.to_ne_bytes());
        assert_ne!(f, good);
        complete_checksum(&mut f, 34, 6).unwrap();
        assert_eq!(f, good);
        assert_eq!(complete_checksum(&mut f, 34, 400), Err(OffloadError::ChecksumOutside));
        assert_eq!(complete_checksum(&mut f, usize::MAX, 6), Err(OffloadError::ChecksumOutside));
    }

    #[test]
    fn udp_super_frames_and_bad_metadata() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .single_vlan(7.try_into().unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1000, 2000)
            .write(&mut f, &[5u8; 3000])
            .unwrap();
        let h = VnetHdr { flags: 1, gso_type: GSO_UDP_L4, hdr_len: 46, gso_size: 1400, csum_start: 38, csum_offset: 6 };
        let s = Segments::new(&f, &h).unwrap();
        assert_eq!(s.count(), 3);
        let mut buf = [0u8; 1500];
        for i in 0..3 {
            let n = s.write(&f, i, &mut buf).unwrap();
            let p = SlicedPacket::from_ethernet(&buf[..n]).unwrap();
            let Some(TransportSlice::Udp(u)) = p.transport else { panic!("udp") };
            let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else { panic!("v4") };
            let want = u.to_header().calc_checksum_ipv4(&ip.header().to_header(), u.payload()).unwrap();
            assert_eq!(u.checksum(), want);
            assert_eq!(u.payload().len(), if i < 2 { 1400 } else { 200 });
        }
        assert_eq!(s.write(&f, 0, &mut [0u8; 100]), Err(OffloadError::SegmentTooLong));
        for bad in [
            VnetHdr { gso_type: GSO_UDP, ..h },
            VnetHdr { csum_start: 20, ..h },
            VnetHdr { gso_size: 0, ..h },
            VnetHdr { csum_start: 5000, ..h },
        ] {
            assert!(Segments::new(&f, &bad).is_err(), "{bad:?}");
        }
        assert!(Segments::new(&f[..10], &h).is_err());
    }
}
