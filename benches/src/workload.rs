//! A datapath workload: a session table filled with a mix of sessions, and frames of those
//! sessions as they arrive on the external ports. Shared by the criterion benchmark
//! (`benches/datapath.rs`) and `opof bench datapath`.
//!
//! Sessions: a quarter IPv6, half TCP, actions 80% FORWARD, 10% DROP, 5% MIRROR, 5% SNOOP.
//! Frames: a session drawn at random for each, either direction (ext0 as added, ext1 reversed),
//! 60% untagged, 30% one VLAN tag, 10% two; 0–64 bytes of payload; TCP segments carry ACK only
//! (data, so they are counted and handled by the action).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use opof_device::datapath::PortId;
use opof_device::table::{Candidate, SessionTable, TableConfig};
use opof_proto::domain::{Action, FiveTuple, Protocol, SessionSpec, Timestamp};
use opof_traffic::gen::Rng;

/// The 5-tuple of session `i` (unique for i < 2^24).
pub fn tuple(i: u64) -> FiveTuple {
    let (src, dst): (IpAddr, IpAddr) = if i % 4 == 3 {
        (
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, (i >> 16) as u16, i as u16).into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x80 + (i % 16) as u16).into(),
        )
    } else {
        (
            Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8).into(),
            Ipv4Addr::new(192, 0, 2, 1 + (i % 200) as u8).into(),
        )
    };
    let protocol = if i.is_multiple_of(2) { Protocol::Tcp } else { Protocol::Udp };
    FiveTuple::new(protocol, src, 1024 + (i % 60_000) as u16, dst, if protocol == Protocol::Tcp { 443 } else { 53 })
        .expect("one family")
}

fn action(i: u64) -> Action {
    let hop = IpAddr::from([198, 51, 100, 1]);
    match i % 20 {
        0 | 1 => Action::Drop,
        2 => Action::Mirror { next_hop: hop },
        3 => Action::Snoop { next_hop: hop },
        _ => Action::Forward,
    }
}

/// Session `i` of the workload.
pub fn spec(i: u64) -> Candidate {
    Candidate::Valid(SessionSpec { id: i, tuple: tuple(i), action: action(i), in_lif: 0, out_lif: 0, cache_timeout: 0 })
}

/// The configuration of a table for `sessions` sessions (at least 1).
pub fn config(sessions: u64) -> TableConfig {
    let capacity = sessions.max(1) as usize;
    TableConfig { capacity, closed_queue_capacity: capacity, ..TableConfig::default() }
}

/// A table of capacity `sessions` holding sessions `0..sessions`, added at `now`.
pub fn table(sessions: u64, now: Timestamp) -> SessionTable {
    let mut t = SessionTable::new(config(sessions)).expect("a valid configuration");
    let all: Vec<u64> = (0..sessions).collect();
    for chunk in all.chunks(10_000) {
        let batch: Vec<Candidate> = chunk.iter().map(|&i| spec(i)).collect();
        t.add(&batch, now);
    }
    t
}

/// An Ethernet frame of `t` (as it travels: src → dst) with `tags` VLAN tags and `payload`
/// bytes; ACK only for TCP.
pub fn frame(t: &FiveTuple, tags: usize, payload: usize) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    for k in 0..tags {
        let tpid: u16 = if k == 0 && tags == 2 { 0x88a8 } else { 0x8100 };
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + k as u16).to_be_bytes());
    }
    let l4_len = payload + if t.protocol() == Protocol::Tcp { 20 } else { 8 };
    let proto = if t.protocol() == Protocol::Tcp { 6u8 } else { 17 };
    match (t.src(), t.dst()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0, 64, proto, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => unreachable!("a FiveTuple holds one family"),
    }
    f.extend_from_slice(&t.src_port().to_be_bytes());
    f.extend_from_slice(&t.dst_port().to_be_bytes());
    if t.protocol() == Protocol::Tcp {
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.resize(f.len() + payload, 0x5a);
    f
}

/// `n` frames of random sessions among `0..sessions` that are all of one kind: IPv4 TCP
/// sessions whose action is FORWARD (those numbered 4, 6, ..., 18 modulo 20, two fifths of the
/// table; `sessions` at least 20), untagged, without payload, all in the direction the session
/// was added, on one port. Against [`frames`] (the same sessions' table, every kind mixed) it
/// shows what the mix of kinds costs a batch.
pub fn frames_of_one_kind(sessions: u64, n: usize, seed: u64) -> Vec<(PortId, Vec<u8>)> {
    let mut rng = Rng::new(seed);
    let rounds = (sessions / 20).max(1);
    (0..n)
        .map(|_| {
            let i = rng.below(rounds) * 20 + 4 + 2 * rng.below(8);
            (PortId::Ext0, frame(&tuple(i), 0, 0))
        })
        .collect()
}

/// `n` frames of random sessions among `0..sessions`, with the port each arrives on.
pub fn frames(sessions: u64, n: usize, seed: u64) -> Vec<(PortId, Vec<u8>)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let t = tuple(rng.below(sessions.max(1)));
            let tags = match rng.below(10) {
                0..=5 => 0,
                6..=8 => 1,
                _ => 2,
            };
            let payload = rng.below(65) as usize;
            if rng.below(2) == 0 {
                (PortId::Ext0, frame(&t, tags, payload))
            } else {
                (PortId::Ext1, frame(&t.reversed(), tags, payload))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opof_device::datapath::{decide, parse, ActionKind, Class, DatapathConfig};

    /// Frames of one kind are what they say: IPv4 TCP, untagged, on ext0, each of a FORWARD
    /// session of the table, and they reach sessions of every residue that kind has.
    #[test]
    fn frames_of_one_kind_are_forwarded_ipv4_tcp_of_many_sessions() {
        let sessions = 2_000;
        let now = Timestamp(1_000);
        let mut t = table(sessions, now);
        let frames = frames_of_one_kind(sessions, 4_000, 3);
        let numbers: std::collections::HashMap<FiveTuple, u64> = (0..sessions).map(|i| (tuple(i), i)).collect();
        let mut residues = std::collections::BTreeSet::new();
        for (port, f) in &frames {
            assert_eq!(*port, PortId::Ext0);
            let p = parse::parse(f).expect("a parseable frame");
            assert!(p.tuple.is_ipv4() && p.tuple.protocol() == Protocol::Tcp && p.vlan_tags == 0);
            let d = decide(&mut t, &DatapathConfig::default(), *port, f, now);
            assert_eq!(d.class, Class::Offloaded(ActionKind::Forward));
            let i = numbers.get(&p.tuple).expect("a session of the table");
            residues.insert(i % 20);
        }
        assert_eq!(residues.into_iter().collect::<Vec<_>>(), vec![4, 6, 8, 10, 12, 14, 16, 18]);
    }
}
