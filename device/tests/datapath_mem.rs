//! The datapath on the in-memory wire, in virtual time: every action in both directions with
//! exact counters, the miss path by reason, TCP control segments, FIN/ACK and RST closes,
//! aging and keep-alive, and the collector's GRE copies decoded back.

use std::net::IpAddr;
use std::sync::Arc;

use etherparse::PacketBuilder;
use opof_device::clock::ManualClock;
use opof_device::control::Device;
use opof_device::datapath::mem::MemDatapath;
use opof_device::datapath::parse::MissReason;
use opof_device::datapath::{ActionKind, Class, DatapathConfig, PortId};
use opof_device::table::{Candidate, TableConfig};
use opof_proto::domain::*;

mod frames;

use frames::{decode_copy, frame, Flags};

const T0: u64 = 1_000;

struct Rig {
    clock: Arc<ManualClock>,
    dp: MemDatapath,
}

fn rig_with(config: DatapathConfig) -> Rig {
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(T0)));
    let table = TableConfig { capacity: 1024, closed_queue_capacity: 1024, ..TableConfig::default() };
    let device = Device::new(table, clock.clone()).unwrap();
    Rig { dp: MemDatapath::virtual_time(device, config, clock.clone()), clock }
}

fn rig() -> Rig {
    rig_with(DatapathConfig::default())
}

fn v4(a: [u8; 4]) -> IpAddr {
    a.into()
}

fn udp4() -> FiveTuple {
    FiveTuple::new(Protocol::Udp, v4([10, 0, 0, 1]), 5001, v4([10, 0, 1, 1]), 5002).unwrap()
}

fn tcp6() -> FiveTuple {
    FiveTuple::new(Protocol::Tcp, "fd00::1".parse().unwrap(), 40000, "2001:db8::80".parse().unwrap(), 443).unwrap()
}

fn data(t: &FiveTuple, payload: usize) -> Vec<u8> {
    frame(t, Flags::default(), payload, &[])
}

fn add(r: &Rig, id: u64, t: FiveTuple, action: Action, cache_timeout: u32) {
    let out = r.dp.device().add(&[Candidate::Valid(SessionSpec {
        id,
        tuple: t,
        action,
        in_lif: 0,
        out_lif: 0,
        cache_timeout,
    })]);
    assert_eq!(out.status, AddStatus::Accepted, "{out:?}");
}

/// Sends one frame in on `port` at the clock's time.
fn send(r: &mut Rig, port: PortId, f: &[u8]) {
    r.dp.receive(port, &[f]);
}

/// What came out of each port since the last call.
fn outputs(r: &mut Rig) -> [Vec<Vec<u8>>; 5] {
    PortId::ALL.map(|p| r.dp.take(p))
}

fn only_on(r: &mut Rig, port: Option<PortId>, expected: &[u8]) {
    let out = outputs(r);
    for p in PortId::ALL {
        if Some(p) == port {
            assert_eq!(out[p.index()], vec![expected.to_vec()], "expected the frame on {p}");
        } else if p != PortId::Collector {
            assert!(out[p.index()].is_empty(), "nothing expected on {p}, got {}", out[p.index()].len());
        }
    }
}

fn counters(r: &Rig, id: u64) -> Counters {
    r.dp.device().get(id).expect("session present").counters
}

#[test]
fn forward_both_directions_counts_whole_frames_per_direction() {
    let mut r = rig();
    for (id, t) in [(1, udp4()), (2, tcp6())] {
        add(&r, id, t, Action::Forward, 0);
        let a = data(&t, 100);
        let b = data(&t.reversed(), 20);
        send(&mut r, PortId::Ext0, &a);
        only_on(&mut r, Some(PortId::Ext1), &a);
        send(&mut r, PortId::Ext1, &b);
        only_on(&mut r, Some(PortId::Ext0), &b);
        send(&mut r, PortId::Ext1, &b);
        only_on(&mut r, Some(PortId::Ext0), &b);
        assert_eq!(
            counters(&r, id),
            Counters { in_packets: 1, in_bytes: a.len() as u64, out_packets: 2, out_bytes: 2 * b.len() as u64 }
        );
    }
    let m = r.dp.metrics().snapshot();
    assert_eq!(m.offloaded(ActionKind::Forward), 6);
    assert_eq!(m.misses(), 0);
}

#[test]
fn direction_is_by_the_session_not_by_the_port() {
    // A session added as seen from ext1's side: packets from ext0 travel "out".
    let mut r = rig();
    let t = udp4();
    add(&r, 1, t.reversed(), Action::Forward, 0);
    let a = data(&t, 10);
    send(&mut r, PortId::Ext0, &a);
    only_on(&mut r, Some(PortId::Ext1), &a);
    let c = counters(&r, 1);
    assert_eq!((c.in_packets, c.out_packets, c.out_bytes), (0, 1, a.len() as u64));
}

#[test]
fn drop_discards_and_counts() {
    let mut r = rig();
    let t = udp4();
    add(&r, 7, t, Action::Drop, 0);
    let a = data(&t, 50);
    send(&mut r, PortId::Ext0, &a);
    only_on(&mut r, None, &a);
    send(&mut r, PortId::Ext1, &data(&t.reversed(), 50));
    only_on(&mut r, None, &a);
    let c = counters(&r, 7);
    assert_eq!((c.in_packets, c.out_packets), (1, 1));
    assert_eq!(r.dp.metrics().snapshot().offloaded(ActionKind::Drop), 2);
}

#[test]
fn mirror_forwards_and_sends_an_exact_copy_to_the_next_hop() {
    for hop in ["198.51.100.7", "2001:db8::c0"] {
        let mut r = rig();
        let hop: IpAddr = hop.parse().unwrap();
        let t = udp4();
        add(&r, 3, t, Action::Mirror { next_hop: hop }, 0);
        for (port, f) in [(PortId::Ext0, data(&t, 600)), (PortId::Ext1, data(&t.reversed(), 60))] {
            send(&mut r, port, &f);
            let out = outputs(&mut r);
            let across = if port == PortId::Ext0 { PortId::Ext1 } else { PortId::Ext0 };
            assert_eq!(out[across.index()], vec![f.clone()]);
            assert_eq!(out[PortId::Collector.index()].len(), 1);
            let (dst, inner) = decode_copy(&out[PortId::Collector.index()][0]);
            assert_eq!(dst, hop);
            assert_eq!(inner, f, "a MIRROR copy is the whole frame");
        }
        let c = counters(&r, 3);
        assert_eq!((c.in_packets, c.out_packets), (1, 1));
        assert_eq!(r.dp.metrics().snapshot().copies, 2);
    }
}

#[test]
fn snoop_copies_only_the_headers() {
    let mut cfg = DatapathConfig::default();
    for snoop_bytes in [128, 100] {
        cfg.snoop_bytes = snoop_bytes;
        let mut r = rig_with(cfg.clone());
        let hop: IpAddr = "198.51.100.8".parse().unwrap();
        let t = tcp6();
        add(&r, 4, t, Action::Snoop { next_hop: hop }, 0);
        let big = data(&t, 1000);
        send(&mut r, PortId::Ext0, &big);
        let out = outputs(&mut r);
        assert_eq!(out[PortId::Ext1.index()], vec![big.clone()]);
        let (_, inner) = decode_copy(&out[PortId::Collector.index()][0]);
        assert_eq!(inner, big[..snoop_bytes].to_vec());
        // A frame shorter than the cut is copied whole.
        let small = data(&t.reversed(), 0);
        assert!(small.len() < snoop_bytes);
        send(&mut r, PortId::Ext1, &small);
        let (_, inner) = decode_copy(&outputs(&mut r)[PortId::Collector.index()][0]);
        assert_eq!(inner, small);
    }
}

#[test]
fn misses_go_to_the_vnf_of_their_side_and_back() {
    let mut r = rig();
    let t = udp4();
    let a = data(&t, 10);
    send(&mut r, PortId::Ext0, &a);
    only_on(&mut r, Some(PortId::Vnf0), &a);
    send(&mut r, PortId::Ext1, &a);
    only_on(&mut r, Some(PortId::Vnf1), &a);
    // What the VNF sends leaves on the external port of the same side, even for a session.
    add(&r, 1, t, Action::Drop, 0);
    send(&mut r, PortId::Vnf0, &a);
    only_on(&mut r, Some(PortId::Ext0), &a);
    send(&mut r, PortId::Vnf1, &a);
    only_on(&mut r, Some(PortId::Ext1), &a);
    assert_eq!(counters(&r, 1), Counters::default(), "VNF traffic is not counted on sessions");
    // The collector port receives nothing for the datapath.
    send(&mut r, PortId::Collector, &a);
    only_on(&mut r, None, &a);
    let m = r.dp.metrics().snapshot();
    assert_eq!(m.class(Class::NoSession), 2);
    assert_eq!(m.class(Class::FromVnf), 2);
    assert_eq!(m.class(Class::AtCollector), 1);
}

#[test]
fn unmatchable_frames_take_the_miss_path_by_reason() {
    let mut r = rig();
    let t = udp4();
    add(&r, 1, t, Action::Drop, 0);
    let good = data(&t, 40);
    let mut arp = good.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 0, 0, 1], [10, 0, 1, 1], 9)
        .icmpv4_echo_request(1, 1)
        .write(&mut icmp, b"ping")
        .unwrap();
    let mut frag = good.clone();
    frag[14 + 6] = 0x20; // more fragments
    let truncated = good[..30].to_vec();
    let mut malformed = good.clone();
    malformed[14] = 0x43; // IHL 3
    let cases = [
        (arp, MissReason::NotIp),
        (icmp, MissReason::OtherProtocol),
        (frag, MissReason::Fragment),
        (truncated, MissReason::Truncated),
        (malformed, MissReason::Malformed),
    ];
    for (f, _) in &cases {
        send(&mut r, PortId::Ext1, f);
        only_on(&mut r, Some(PortId::Vnf1), f);
    }
    let m = r.dp.metrics().snapshot();
    for (_, reason) in &cases {
        assert_eq!(m.miss(*reason), 1, "{reason:?}");
    }
    assert_eq!(counters(&r, 1), Counters::default(), "none of them is counted on the DROP session");
    // Arbitrary short frames, including empty ones, are misses too.
    for len in 0..60 {
        let f = vec![0x55u8; len];
        send(&mut r, PortId::Ext0, &f);
        only_on(&mut r, Some(PortId::Vnf0), &f);
    }
}

#[test]
fn vlan_tagged_frames_match_their_session_and_keep_their_tags() {
    let mut r = rig();
    let t = udp4();
    add(&r, 1, t, Action::Forward, 0);
    for tags in [vec![10], vec![100, 20]] {
        let f = frame(&t, Flags::default(), 30, &tags);
        send(&mut r, PortId::Ext0, &f);
        only_on(&mut r, Some(PortId::Ext1), &f);
    }
    let c = counters(&r, 1);
    assert_eq!(c.in_packets, 2);
    let untagged = data(&t, 30).len() as u64;
    assert_eq!(c.in_bytes, 2 * untagged + 4 + 8, "bytes are whole frames as received, tags included");
}

#[test]
fn tcp_control_segments_go_to_the_vnf_uncounted() {
    let mut r = rig();
    let t = FiveTuple::new(Protocol::Tcp, v4([10, 0, 0, 1]), 40000, v4([10, 0, 1, 1]), 80).unwrap();
    add(&r, 1, t, Action::Drop, 0);
    let syn = frame(&t, Flags { syn: true, ..Flags::default() }, 0, &[]);
    send(&mut r, PortId::Ext0, &syn);
    only_on(&mut r, Some(PortId::Vnf0), &syn);
    let fin = frame(&t.reversed(), Flags { fin: true, ..Flags::default() }, 0, &[]);
    send(&mut r, PortId::Ext1, &fin);
    only_on(&mut r, Some(PortId::Vnf1), &fin);
    assert_eq!(counters(&r, 1), Counters::default());
    let rec = r.dp.device().get(1).unwrap();
    assert_eq!(rec.state, SessionState::Closing1, "one FIN seen");
    assert_eq!(r.dp.metrics().snapshot().class(Class::Control(None)), 2);
}

#[test]
fn fin_from_both_sides_closes_finack_and_the_flow_misses_again() {
    let mut r = rig();
    let t = FiveTuple::new(Protocol::Tcp, v4([10, 0, 0, 1]), 40000, v4([10, 0, 1, 1]), 80).unwrap();
    add(&r, 9, t, Action::Forward, 0);
    let d = data(&t, 10);
    send(&mut r, PortId::Ext0, &d);
    r.clock.advance_secs(2);
    // Two FINs from the same side are one side.
    for _ in 0..2 {
        send(&mut r, PortId::Ext0, &frame(&t, Flags { fin: true, ..Flags::default() }, 0, &[]));
    }
    assert!(r.dp.device().get(9).is_some());
    r.clock.advance_secs(1);
    send(&mut r, PortId::Ext1, &frame(&t.reversed(), Flags { fin: true, ..Flags::default() }, 0, &[]));
    assert!(r.dp.device().get(9).is_none(), "closed sessions leave the table at once");
    let closed = r.dp.device().drain_closed(10);
    assert_eq!(closed.len(), 1);
    let c = closed[0];
    assert_eq!((c.id, c.close_code, c.state), (9, CloseCode::FinAck, SessionState::Closed));
    assert_eq!(c.counters.in_packets, 1);
    assert_eq!(c.end, Some(Timestamp::from_secs(T0 + 3)));
    outputs(&mut r);
    send(&mut r, PortId::Ext0, &d);
    only_on(&mut r, Some(PortId::Vnf0), &d);
}

#[test]
fn rst_from_either_side_closes_rst() {
    for from_ext1 in [false, true] {
        let mut r = rig();
        let t = FiveTuple::new(Protocol::Tcp, v4([10, 0, 0, 1]), 40000, v4([10, 0, 1, 1]), 80).unwrap();
        add(&r, 5, t, Action::Mirror { next_hop: v4([198, 51, 100, 1]) }, 0);
        let (port, tt) = if from_ext1 { (PortId::Ext1, t.reversed()) } else { (PortId::Ext0, t) };
        let rst = frame(&tt, Flags { rst: true, ..Flags::default() }, 0, &[]);
        send(&mut r, port, &rst);
        let out = outputs(&mut r);
        assert!(out[PortId::Collector.index()].is_empty(), "control segments are not mirrored");
        let closed = r.dp.device().drain_closed(10);
        assert_eq!(closed.iter().map(|c| (c.id, c.close_code)).collect::<Vec<_>>(), vec![(5, CloseCode::Rst)]);
        assert_eq!(r.dp.device().stats().closed_rst, 1);
    }
}

#[test]
fn timeout_only_mode_ignores_fin_and_rst() {
    let mut r = rig_with(DatapathConfig { close_on_tcp_flags: false, ..DatapathConfig::default() });
    let t = FiveTuple::new(Protocol::Tcp, v4([10, 0, 0, 1]), 40000, v4([10, 0, 1, 1]), 80).unwrap();
    add(&r, 5, t, Action::Forward, 10);
    send(&mut r, PortId::Ext0, &frame(&t, Flags { fin: true, ..Flags::default() }, 0, &[]));
    send(&mut r, PortId::Ext1, &frame(&t.reversed(), Flags { fin: true, ..Flags::default() }, 0, &[]));
    send(&mut r, PortId::Ext1, &frame(&t.reversed(), Flags { rst: true, ..Flags::default() }, 0, &[]));
    assert!(r.dp.device().get(5).is_some());
    r.clock.advance_secs(10);
    r.dp.device().advance();
    let closed = r.dp.device().drain_closed(10);
    assert_eq!(closed[0].close_code, CloseCode::Timeout);
}

#[test]
fn every_action_ages_and_offloaded_packets_keep_sessions_alive_in_virtual_time() {
    let mut r = rig();
    let hop = v4([198, 51, 100, 1]);
    let actions = [Action::Drop, Action::Forward, Action::Mirror { next_hop: hop }, Action::Snoop { next_hop: hop }];
    let flows: Vec<FiveTuple> = (0..4u16)
        .map(|i| FiveTuple::new(Protocol::Udp, v4([10, 0, 0, 1]), 6000 + i, v4([10, 0, 1, 1]), 53).unwrap())
        .collect();
    for (i, (t, a)) in flows.iter().zip(actions).enumerate() {
        add(&r, i as u64, *t, a, 10);
    }
    // Flow 1 sees a packet at +6 s (from ext1), so it lives until +16 s; the others end at +10 s.
    let t0 = Timestamp::from_secs(T0);
    let keep = data(&flows[1].reversed(), 5);
    r.dp.receive_at(&[(Timestamp(t0.0 + 6_000_000_000), PortId::Ext1, &keep)]);
    // The packet-driven clock alone closes the others, exactly at their deadline.
    let probe = data(&flows[0], 5);
    r.dp.receive_at(&[(Timestamp(t0.0 + 9_999_999_999), PortId::Ext0, &probe)]);
    assert_eq!(r.dp.device().stats().sessions, 4, "nothing closes before its deadline");
    let later = data(&FiveTuple::new(Protocol::Udp, v4([1, 1, 1, 1]), 1, v4([2, 2, 2, 2]), 2).unwrap(), 1);
    r.dp.receive_at(&[(Timestamp(t0.0 + 10_000_000_000), PortId::Ext0, &later)]);
    let closed = r.dp.device().drain_closed(10);
    // Flow 0 saw a packet at +9.999999999 s, so it is alive too.
    assert_eq!(
        closed.iter().map(|c| (c.id, c.close_code)).collect::<Vec<_>>(),
        vec![(2, CloseCode::Timeout), (3, CloseCode::Timeout)]
    );
    assert_eq!(closed[0].end, Some(Timestamp::from_secs(T0 + 10)), "closed exactly at the deadline");
    r.dp.receive_at(&[(Timestamp::from_secs(T0 + 20), PortId::Ext0, &later)]);
    let closed = r.dp.device().drain_closed(10);
    assert_eq!(
        closed.iter().map(|c| (c.id, c.end)).collect::<Vec<_>>(),
        vec![(1, Some(Timestamp::from_secs(T0 + 16))), (0, Some(Timestamp(t0.0 + 19_999_999_999))),]
    );
    assert_eq!(closed[1].counters.in_packets, 1);
}

#[test]
fn control_segments_do_not_keep_a_session_alive() {
    let mut r = rig();
    let t = FiveTuple::new(Protocol::Tcp, v4([10, 0, 0, 1]), 40000, v4([10, 0, 1, 1]), 80).unwrap();
    add(&r, 1, t, Action::Forward, 5);
    let syn = frame(&t, Flags { syn: true, ..Flags::default() }, 0, &[]);
    r.dp.receive_at(&[(Timestamp::from_secs(T0 + 4), PortId::Ext0, &syn)]);
    r.dp.receive_at(&[(Timestamp::from_secs(T0 + 5), PortId::Ext0, &syn)]);
    let closed = r.dp.device().drain_closed(10);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].end, Some(Timestamp::from_secs(T0 + 5)));
}

mod batch {
    use super::*;
    use opof_device::datapath::{decide, decide_batch, Batch};
    use opof_device::table::SessionTable;
    use proptest::prelude::*;

    fn flows() -> Vec<FiveTuple> {
        let mut v: Vec<FiveTuple> = (0..3u16)
            .map(|i| FiveTuple::new(Protocol::Tcp, v4([10, 0, 0, 1]), 40000 + i, v4([10, 0, 1, 1]), 80).unwrap())
            .collect();
        v.push(udp4());
        v.push(tcp6());
        // A flow with no session.
        v.push(FiveTuple::new(Protocol::Udp, v4([10, 9, 9, 9]), 1, v4([10, 8, 8, 8]), 2).unwrap());
        v
    }

    fn table() -> SessionTable {
        let mut t =
            SessionTable::new(TableConfig { capacity: 64, closed_queue_capacity: 64, ..TableConfig::default() })
                .unwrap();
        let hop = v4([198, 51, 100, 1]);
        let actions = [
            Action::Forward,
            Action::Drop,
            Action::Mirror { next_hop: hop },
            Action::Snoop { next_hop: hop },
            Action::Forward,
        ];
        let specs: Vec<Candidate> = flows()
            .iter()
            .zip(actions)
            .enumerate()
            .map(|(i, (t, action))| {
                Candidate::Valid(SessionSpec {
                    id: i as u64,
                    tuple: *t,
                    action,
                    in_lif: 0,
                    out_lif: 0,
                    cache_timeout: 0,
                })
            })
            .collect();
        t.add(&specs, Timestamp::from_secs(T0));
        t
    }

    proptest! {
        /// A batch decides exactly as frame-by-frame decisions do, closes included (a FIN or RST
        /// early in the batch makes its flow's later frames misses), and leaves the table in
        /// the same state.
        #[test]
        fn a_batch_decides_as_frame_by_frame(
            seq in proptest::collection::vec((0usize..3, 0usize..6, 0u8..6, 0usize..40), 1..120)
        ) {
            let flows = flows();
            let frames: Vec<(PortId, Vec<u8>)> = seq
                .iter()
                .map(|&(port, flow, kind, len)| {
                    let port = [PortId::Ext0, PortId::Ext1, PortId::Vnf0][port];
                    let t = if port == PortId::Ext1 { flows[flow].reversed() } else { flows[flow] };
                    let f = match kind {
                        0 | 1 => frame(&t, Flags::default(), len, &[]),
                        2 => frame(&t, Flags { fin: true, ..Flags::default() }, 0, &[]),
                        3 => frame(&t, Flags { rst: true, ..Flags::default() }, 0, &[]),
                        4 => frame(&t, Flags::default(), len, &[7]),
                        _ => vec![0x42; len],
                    };
                    (port, f)
                })
                .collect();
            let cfg = DatapathConfig::default();
            let now = Timestamp::from_secs(T0 + 1);
            let (mut one, mut many) = (table(), table());
            let singles: Vec<_> = frames.iter().map(|(p, f)| decide(&mut one, &cfg, *p, f, now)).collect();
            let mut batched = Vec::new();
            decide_batch(&mut many, &cfg, frames.iter().map(|(p, f)| (*p, f.as_slice())), now, &mut Batch::default(), &mut batched);
            prop_assert_eq!(singles, batched);
            for id in 0..6 {
                prop_assert_eq!(one.get(id, now), many.get(id, now));
            }
            prop_assert_eq!(one.closed().take(100), many.closed().take(100));
        }

        /// Any bytes on any port: a decision, never a panic; a frame from an external port
        /// goes to the VNF of its side unless a session handled it.
        #[test]
        fn any_bytes_on_any_port_are_decided(bytes in proptest::collection::vec(any::<u8>(), 0..200), port in 0usize..5) {
            let mut t = table();
            let port = PortId::ALL[port];
            let d = decide(&mut t, &DatapathConfig::default(), port, &bytes, Timestamp::from_secs(T0));
            if matches!(d.class, Class::Miss(_) | Class::NoSession) {
                prop_assert_eq!(d.out, Some(if port == PortId::Ext0 { PortId::Vnf0 } else { PortId::Vnf1 }));
            }
        }
    }
}
