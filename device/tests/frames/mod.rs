//! Frames for the datapath tests.
#![allow(dead_code)]

use std::net::IpAddr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket};
use opof_proto::domain::{FiveTuple, Protocol};

#[derive(Clone, Copy, Default)]
pub struct Flags {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
}

/// A frame of `t` travelling as `t` says (src → dst), with `payload` bytes and VLAN tags.
pub fn frame(t: &FiveTuple, flags: Flags, payload: usize, vlans: &[u16]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let ip = match (t.src(), t.dst()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!(),
    };
    let body = vec![0xab; payload];
    let mut f = Vec::new();
    match t.protocol() {
        Protocol::Udp => ip.udp(t.src_port(), t.dst_port()).write(&mut f, &body).unwrap(),
        Protocol::Tcp => {
            let mut b = ip.tcp(t.src_port(), t.dst_port(), 1, 65535).ack(1);
            if flags.syn {
                b = b.syn();
            }
            if flags.fin {
                b = b.fin();
            }
            if flags.rst {
                b = b.rst();
            }
            b.write(&mut f, &body).unwrap()
        }
    }
    // Insert the tags after the MAC addresses, outermost first.
    for (i, vid) in vlans.iter().enumerate() {
        let tpid: u16 = if i == 0 && vlans.len() == 2 { 0x88a8 } else { 0x8100 };
        let at = 12 + 4 * i;
        f.splice(at..at, tpid.to_be_bytes().into_iter().chain(vid.to_be_bytes()));
    }
    f
}

/// Decodes a collector copy: the outer destination, and the GRE payload after checking the
/// protocol type is transparent Ethernet bridging.
pub fn decode_copy(copy: &[u8]) -> (IpAddr, Vec<u8>) {
    let p = SlicedPacket::from_ethernet(copy).expect("the copy parses as Ethernet/IP");
    let (dst, payload) = match p.net.expect("an IP packet") {
        NetSlice::Ipv4(v4) => {
            assert_eq!(v4.header().protocol(), etherparse::IpNumber::GRE);
            (IpAddr::V4(v4.header().destination_addr()), v4.payload().payload.to_vec())
        }
        NetSlice::Ipv6(v6) => {
            assert_eq!(v6.header().next_header(), etherparse::IpNumber::GRE);
            (IpAddr::V6(v6.header().destination_addr()), v6.payload().payload.to_vec())
        }
        _ => panic!("not IP"),
    };
    assert_eq!(payload[..4], [0, 0, 0x65, 0x58], "GRE, no options, transparent Ethernet bridging");
    (dst, payload[4..].to_vec())
}
