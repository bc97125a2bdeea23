//! A device whose sessions are cut into shards behaves as one with a single table: random
//! sequences of addSession streams, frames on the datapath (data, FIN, RST, both directions),
//! getSession, deleteSession, getAllSessions, closed-record reads and clock moves, run on a
//! device of one shard and on one of 2, 4 or 8, in virtual time, give the same answers, the
//! same decisions, the same counts and the same closed records.

use std::net::IpAddr;
use std::sync::Arc;

use opof_device::clock::ManualClock;
use opof_device::control::Device;
use opof_device::datapath::{Batch, DatapathConfig, PortId};
use opof_device::table::{Candidate, TableConfig};
use opof_proto::domain::*;
use proptest::prelude::*;

/// The flows the ops pick from: 6 IPv4 and 3 IPv6 endpoint pairs, TCP and UDP.
fn flow(i: usize) -> FiveTuple {
    let (a, b): (IpAddr, IpAddr) = if i % 3 == 2 {
        (
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1].into(),
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2 + i as u8].into(),
        )
    } else {
        ([10, 0, 0, 1].into(), [10, 0, 1, i as u8].into())
    };
    let proto = if i.is_multiple_of(2) { Protocol::Tcp } else { Protocol::Udp };
    FiveTuple::new(proto, a, 1000 + i as u16, b, 80).unwrap()
}

/// An Ethernet frame of `t` (reversed when `back`) with TCP flags (FIN = 1, RST = 4).
fn frame(t: &FiveTuple, back: bool, flags: u8) -> Vec<u8> {
    let t = if back { t.reversed() } else { *t };
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    let l4_len = if t.protocol() == Protocol::Tcp { 20 } else { 8 };
    let mut l4 = vec![0u8; l4_len + 10];
    l4[0..2].copy_from_slice(&t.src_port().to_be_bytes());
    l4[2..4].copy_from_slice(&t.dst_port().to_be_bytes());
    if t.protocol() == Protocol::Tcp {
        l4[12] = 5 << 4;
        l4[13] = flags | 0x10;
    } else {
        let n = l4.len() as u16;
        l4[4..6].copy_from_slice(&n.to_be_bytes());
    }
    let proto = if t.protocol() == Protocol::Tcp { 6 } else { 17 };
    match (t.src(), t.dst()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend([0x08, 0x00, 0x45, 0]);
            f.extend(((20 + l4.len()) as u16).to_be_bytes());
            f.extend([0, 0, 0x40, 0, 64, proto, 0, 0]);
            f.extend(s.octets());
            f.extend(d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend((l4.len() as u16).to_be_bytes());
            f.extend([proto, 64]);
            f.extend(s.octets());
            f.extend(d.octets());
        }
        _ => unreachable!("one family"),
    }
    f.extend(l4);
    f
}

#[derive(Clone, Debug)]
enum Op {
    /// A stream of (id, flow, action kind, cacheTimeout, valid).
    Add(Vec<(u64, usize, u8, u32, bool)>),
    /// Frames of one batch: (flow, backwards, TCP flags).
    Frames(Vec<(usize, bool, u8)>),
    Get(u64),
    Delete(u64),
    Page(u32, u32, u64),
    Closed(usize),
    Advance(u64),
}

fn arb_op() -> impl Strategy<Value = Op> {
    let req = (0u64..12, 0usize..9, 0u8..4, 0u32..5, proptest::bool::weighted(0.9));
    prop_oneof![
        4 => proptest::collection::vec(req, 0..8).prop_map(Op::Add),
        4 => proptest::collection::vec((0usize..9, any::<bool>(), prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(4u8)]), 1..24).prop_map(Op::Frames),
        2 => (0u64..12).prop_map(Op::Get),
        1 => (0u64..12).prop_map(Op::Delete),
        1 => (0u32..4, 0u32..4, 0u64..12).prop_map(|(s, p, k)| Op::Page(s, p, k)),
        2 => (1usize..6).prop_map(Op::Closed),
        3 => (0u64..2500).prop_map(Op::Advance),
    ]
}

fn candidate(&(id, f, kind, timeout, valid): &(u64, usize, u8, u32, bool)) -> Candidate {
    if !valid {
        return Candidate::Invalid(id);
    }
    let action = match kind {
        0 => Action::Drop,
        1 => Action::Forward,
        2 => Action::Mirror { next_hop: IpAddr::from([192, 0, 2, 9]) },
        _ => Action::Snoop { next_hop: IpAddr::from([192, 0, 2, 10]) },
    };
    Candidate::Valid(SessionSpec { id, tuple: flow(f), action, in_lif: 1, out_lif: 2, cache_timeout: timeout })
}

/// Closed records in a canonical order (shards merge their queues by end time, then id; a
/// single table's ties between closes at the same instant may differ, and an id may come back
/// after its session closed, so the whole record breaks ties).
fn canonical(mut r: Vec<SessionRecord>) -> Vec<SessionRecord> {
    r.sort_by_key(|r| (r.end, r.id, format!("{r:?}")));
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn a_sharded_device_answers_as_one_table(shards in prop_oneof![Just(2usize), Just(4), Just(8)], ops in proptest::collection::vec(arb_op(), 1..50)) {
        let config = TableConfig { capacity: 6, max_cache_timeout: 4, tcp_timeout: 2, udp_timeout: 3, ..TableConfig::default() };
        let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000_000)));
        let one = Device::new(config.clone(), clock.clone()).unwrap();
        let many = Device::sharded(config, clock.clone(), None, shards).unwrap();
        prop_assert_eq!(many.shards(), shards);
        let cfg = DatapathConfig::default();
        let (mut b1, mut b2) = (Batch::default(), Batch::default());
        let (mut one_closed, mut many_closed) = (Vec::new(), Vec::new());
        for op in ops {
            match op {
                Op::Add(reqs) => {
                    let reqs: Vec<_> = reqs.iter().map(candidate).collect();
                    prop_assert_eq!(one.add(&reqs), many.add(&reqs));
                }
                Op::Frames(fs) => {
                    let frames: Vec<(PortId, Vec<u8>)> = fs
                        .iter()
                        .map(|&(f, back, flags)| (if back { PortId::Ext1 } else { PortId::Ext0 }, frame(&flow(f), back, flags)))
                        .collect();
                    let (mut d1, mut d2) = (Vec::new(), Vec::new());
                    one.decide_batch(&cfg, frames.iter().map(|(p, f)| (*p, f.as_slice())), &mut b1, &mut d1);
                    many.decide_batch(&cfg, frames.iter().map(|(p, f)| (*p, f.as_slice())), &mut b2, &mut d2);
                    prop_assert_eq!(d1, d2);
                }
                Op::Get(id) => prop_assert_eq!(one.get(id), many.get(id)),
                Op::Delete(id) => prop_assert_eq!(one.delete(id), many.delete(id)),
                Op::Page(page_size, page, start_session) => {
                    let a = PageArgs { page_size, page, start_session, follow: false };
                    prop_assert_eq!(one.page(&a), many.page(&a));
                }
                Op::Closed(n) => {
                    one_closed.extend(one.drain_closed(n));
                    many_closed.extend(many.drain_closed(n));
                    // The same number taken; which ones may differ only among ties.
                    prop_assert_eq!(one_closed.len(), many_closed.len());
                }
                Op::Advance(ms) => {
                    clock.advance_nanos(ms * 1_000_000);
                    prop_assert_eq!(one.advance(), many.advance());
                }
            }
            let (s1, s2) = (one.stats(), many.stats());
            prop_assert_eq!(s1, s2);
        }
        one_closed.extend(one.drain_closed(usize::MAX));
        many_closed.extend(many.drain_closed(usize::MAX));
        prop_assert_eq!(canonical(one_closed), canonical(many_closed));
    }
}

/// The capacity is the device's, not a shard's: a sharded device takes exactly `capacity`
/// sessions, refuses the next stream whole, and takes one more after a delete.
#[test]
fn capacity_is_the_devices_across_shards() {
    let config = TableConfig { capacity: 1000, ..TableConfig::default() };
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1)));
    let d = Device::sharded(config, clock, None, 4).unwrap();
    let spec = |id: u64| {
        let t =
            FiveTuple::new(Protocol::Udp, [10, 1, (id >> 8) as u8, id as u8].into(), 5000, [10, 2, 0, 1].into(), 53)
                .unwrap();
        Candidate::Valid(SessionSpec { id, tuple: t, action: Action::Forward, in_lif: 0, out_lif: 0, cache_timeout: 0 })
    };
    let first: Vec<_> = (1..=1000).map(spec).collect();
    assert_eq!(d.add(&first).status, AddStatus::Accepted);
    assert_eq!(d.stats().sessions, 1000);
    let out = d.add(&[spec(1001), spec(1002)]);
    assert_eq!(out.status, AddStatus::TableFull);
    assert_eq!(out.errors.len(), 2);
    assert!(d.delete(7).is_some());
    assert_eq!(d.add(&[spec(1001)]).status, AddStatus::Accepted);
    // A duplicate id is refused whichever shard its tuple names.
    let dup = d.add(&[spec(1001)]);
    assert_eq!(dup.status, AddStatus::AlreadyExists);
    let page = d.page(&PageArgs { page_size: 0, page: 0, start_session: 0, follow: false });
    let ids: Vec<u64> = page.records.iter().map(|r| r.id).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "getAllSessions pages ids in order across shards");
    assert_eq!(ids.len(), 1000);
}

/// An id already in the device is refused with any other tuple, whether the new tuple's shard
/// is the one holding the id or another, and the refusal leaves nothing behind: each tuple
/// tried is free for a new id afterwards.
#[test]
fn a_taken_id_is_refused_in_its_own_shard_and_in_the_others() {
    let config = TableConfig { capacity: 1000, ..TableConfig::default() };
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1)));
    let d = Device::sharded(config, clock, None, 4).unwrap();
    let spec = |id: u64, host: u8| {
        let t = FiveTuple::new(Protocol::Tcp, [10, 9, 0, host].into(), 4000, [10, 8, 0, 1].into(), 443).unwrap();
        Candidate::Valid(SessionSpec { id, tuple: t, action: Action::Drop, in_lif: 0, out_lif: 0, cache_timeout: 0 })
    };
    assert_eq!(d.add(&[spec(5000, 0)]).status, AddStatus::Accepted);
    // 64 other tuples over 4 shards: about 16 in the id's own shard, the rest elsewhere.
    for host in 1..=64 {
        let out = d.add(&[spec(5000, host)]);
        assert_eq!(out.status, AddStatus::AlreadyExists, "tuple {host}");
    }
    assert_eq!(d.stats().sessions, 1);
    let fresh: Vec<_> = (1..=64).map(|host| spec(6000 + u64::from(host), host)).collect();
    assert_eq!(d.add(&fresh).status, AddStatus::Accepted);
    assert_eq!(d.stats().sessions, 65);
    // And a stream that repeats an id among its own requests keeps the first only.
    let out = d.add(&[spec(7000, 100), spec(7000, 101)]);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(d.stats().sessions, 66);
}

/// A batch longer than the lists a sharded device makes at a time (an in-memory caller may hand
/// over thousands of frames at once) is decided as one table decides it, in order: data frames
/// of every flow, then a FIN each way and an RST partway through, so later frames of closed
/// flows must be misses.
#[test]
fn a_batch_of_thousands_of_frames_is_decided_as_one_table_decides_it() {
    let config = TableConfig { capacity: 64, ..TableConfig::default() };
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000)));
    let one = Device::new(config.clone(), clock.clone()).unwrap();
    let many = Device::sharded(config, clock, None, 4).unwrap();
    let reqs: Vec<_> = (0..9).map(|f| candidate(&(f as u64, f, (f % 4) as u8, 30, true))).collect();
    assert_eq!(one.add(&reqs), many.add(&reqs));
    let mut frames: Vec<(PortId, Vec<u8>)> = Vec::new();
    for i in 0..3_000usize {
        let (f, back) = (i % 9, i % 2 == 1);
        // Flow 0 (TCP) gets a FIN each way around the middle (frames 1,503 and 1,512 are its
        // backward and forward ones), flow 4 (TCP) an RST (frame 1,507).
        let flags = match i {
            1_503 | 1_512 => 1,
            1_507 => 4,
            _ => 0,
        };
        frames.push((if back { PortId::Ext1 } else { PortId::Ext0 }, frame(&flow(f), back, flags)));
    }
    let cfg = DatapathConfig::default();
    let (mut b1, mut b2) = (Batch::default(), Batch::default());
    let (mut d1, mut d2) = (Vec::new(), Vec::new());
    one.decide_batch(&cfg, frames.iter().map(|(p, f)| (*p, f.as_slice())), &mut b1, &mut d1);
    many.decide_batch(&cfg, frames.iter().map(|(p, f)| (*p, f.as_slice())), &mut b2, &mut d2);
    assert_eq!(d1.len(), 3_000);
    assert_eq!(d1, d2);
    let s = many.stats();
    assert_eq!(one.stats(), s);
    assert_eq!((s.closed_finack, s.closed_rst), (1, 1));
    // The same scratch then serves a short batch.
    let short = &frames[..10];
    let (mut e1, mut e2) = (Vec::new(), Vec::new());
    one.decide_batch(&cfg, short.iter().map(|(p, f)| (*p, f.as_slice())), &mut b1, &mut e1);
    many.decide_batch(&cfg, short.iter().map(|(p, f)| (*p, f.as_slice())), &mut b2, &mut e2);
    assert_eq!(e1, e2);
}
