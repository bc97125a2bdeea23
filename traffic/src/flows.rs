//! Accounting a capture by flow: frames and bytes per direction, first and last timestamps,
//! keyed by the 5-tuple as the first frame of the flow saw it. Frames that are not TCP or UDP
//! over IPv4/IPv6 (behind up to two VLAN tags) are counted apart.

use std::collections::HashMap;
use std::net::IpAddr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use crate::capture::Frame;
use crate::gen::DirTruth;

/// A flow's key as its first frame gave it: protocol, source, destination.
pub type Key = (u8, IpAddr, u16, IpAddr, u16);

#[derive(Debug, Default)]
pub struct FlowAccount {
    pub flows: HashMap<Key, (DirTruth, DirTruth)>,
    /// Frames with no TCP/UDP 5-tuple.
    pub other: u64,
}

/// The 5-tuple of a frame, if it is TCP or UDP over IP.
pub fn five_tuple(frame: &[u8]) -> Option<Key> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst): (IpAddr, IpAddr) = match p.net? {
        NetSlice::Ipv4(ip) => (ip.header().source_addr().into(), ip.header().destination_addr().into()),
        NetSlice::Ipv6(ip) => (ip.header().source_addr().into(), ip.header().destination_addr().into()),
        _ => return None,
    };
    match p.transport? {
        TransportSlice::Tcp(t) => Some((6, src, t.source_port(), dst, t.destination_port())),
        TransportSlice::Udp(u) => Some((17, src, u.source_port(), dst, u.destination_port())),
        _ => None,
    }
}

impl FlowAccount {
    pub fn add(&mut self, f: &Frame) {
        let Some(k) = five_tuple(&f.data) else {
            self.other += 1;
            return;
        };
        let rev = (k.0, k.3, k.4, k.1, k.2);
        if let Some((_, r)) = self.flows.get_mut(&rev) {
            r.add(f.ts_ns, f.data.len());
        } else {
            self.flows.entry(k).or_default().0.add(f.ts_ns, f.data.len());
        }
    }
}
