//! DP: what the device does with packets. The suite adds sessions over gRPC, sends its own
//! frames into the device's ports and compares, byte for byte, what comes out of every port
//! with what SEMANTICS.md says, and the session counters with what it sent. Needs traffic
//! access (the embedded target's in-memory wire, or OPOF_PORTS); SKIP with the reason without.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use opof_proto::convert::ipv4_to_wire;
use opof_proto::wire;

use super::{case, Case};
use crate::ctx::{Ctx, Lookup};
use crate::frames::{self, Flow, ACK, FIN, RST, SYN};
use crate::traffic::{gre_inner, Outputs, PortId};
use crate::verdict::Finding;
use crate::{ensure, ensure_eq, fail};

use PortId::{Collector, Ext0, Ext1, Vnf0, Vnf1};

const DATA_PORTS: [PortId; 4] = [Ext0, Ext1, Vnf0, Vnf1];
const ALL_PORTS: [PortId; 5] = [Ext0, Ext1, Vnf0, Vnf1, Collector];

/// Next hops of the suite's MIRROR and SNOOP sessions (documentation addresses).
const HOP_V4: [u8; 4] = [198, 51, 100, 7];
const HOP_V6: &str = "2001:db8::c0";

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "DP-1.1",
            "DP-1",
            "FORWARD crosses ext0 ⇄ ext1 unchanged, counted per direction",
            "Add a FORWARD session (IPv4 TCP); send 3 data segments of different sizes into ext0 (as added) and 2 \
             into ext1 (reverse).",
            "The 3 leave ext1 and the 2 leave ext0, byte for byte and in order; nothing reaches vnf0, vnf1 or the \
             collector; getSession: inPackets 3, outPackets 2, inBytes/outBytes the sums of the frame lengths.",
            forward
        ),
        case!(
            "DP-2.1",
            "DP-2",
            "DROP discards the session's packets and counts them",
            "Add a DROP session (IPv4 UDP); send 2 frames into ext0 and 2 into ext1.",
            "Nothing leaves any port; getSession counts 2 and 2 with their bytes.",
            drop_case
        ),
        case!(
            "DP-3.1",
            "DP-3",
            "MIRROR forwards and sends an exact GRE copy to the next hop (IPv4 and IPv6 next hops)",
            "Add two MIRROR sessions, next hop 198.51.100.7 and 2001:db8::c0; send a frame of each into ext0 and \
             one into ext1.",
            "Each frame crosses unchanged and one copy per frame leaves the collector: GRE (protocol 0x6558) to the \
             session's next hop, whose inner frame equals the original; counters as sent.",
            mirror
        ),
        case!(
            "DP-4.1",
            "DP-4",
            "SNOOP forwards and sends the headers of each frame to the next hop",
            "Add a SNOOP session (next hop 198.51.100.7); send a 1,000-byte frame into ext0 and a 600-byte one \
             into ext1.",
            "Each frame crosses unchanged; one GRE copy per frame at the collector, to the next hop, whose inner \
             frame is a prefix of the original covering its Ethernet, IP and TCP headers and shorter than it.",
            snoop
        ),
        case!(
            "DP-5.1",
            "DP-5",
            "The miss path: no session → the VNF of that side; the VNF's frames → the external port",
            "With no session for the flow, send a frame into ext0 and one into ext1; then send a frame into vnf0 \
             and one into vnf1 (as the VNF would).",
            "ext0's frame leaves vnf0, ext1's leaves vnf1, vnf0's leaves ext0, vnf1's leaves ext1, each unchanged; \
             nothing else anywhere.",
            miss_path
        ),
        case!(
            "DP-6.1",
            "DP-6",
            "TCP SYN, FIN and RST segments of a session go to the VNF and are not counted",
            "Add a FORWARD TCP session; send SYN into ext0, SYN+ACK into ext1, a data segment into ext0; then \
             check; (FIN and RST are sent by DP-7.1 and DP-8.1, which check the same).",
            "SYN leaves vnf0 and SYN+ACK leaves vnf1, unchanged; the data segment crosses to ext1; counters count \
             the data segment only (inPackets 1, outPackets 0).",
            control_segments
        ),
        case!(
            "DP-7.1",
            "DP-7",
            "FIN from both sides closes the session _FINACK",
            "Add a FORWARD TCP session; send 2 data segments into ext0, 1 into ext1, then FIN+ACK into ext0 and \
             FIN+ACK into ext1; read getClosedSessions; send one more data segment into ext0.",
            "Each FIN goes to the VNF of its side, uncounted; the session is reported closed _FINACK with counters \
             2 / 1 and their bytes; it has left the table, and the later segment takes the miss path (vnf0).",
            finack
        ),
        case!(
            "DP-8.1",
            "DP-8",
            "RST closes the session _RST",
            "Add a FORWARD TCP session; send a data segment into ext1, then RST+ACK into ext1; read \
             getClosedSessions; send a data segment into ext0.",
            "The RST goes to vnf1, uncounted; the session is reported closed _RST with counters 0 / 1; the later \
             segment takes the miss path (vnf0).",
            rst
        ),
        case!(
            "DP-9.1",
            "DP-9",
            "VLAN-tagged frames (802.1Q, and 802.1ad over 802.1Q) match their session and keep their tags",
            "Add a FORWARD session; send into ext0 a frame with one 802.1Q tag (VLAN 100) and one with 802.1ad \
             (VLAN 10) over 802.1Q (VLAN 20); send one 802.1Q frame into ext1.",
            "Each crosses unchanged, tags included; counters 2 / 1, bytes of the tagged frames as sent.",
            vlan
        ),
        case!(
            "DP-10.1",
            "DP-10",
            "IPv6 sessions: forwarded both ways, also past an extension header, counted",
            "Add an IPv6 UDP FORWARD session; send into ext0 a frame and one with a hop-by-hop options header; send \
             one into ext1.",
            "Each crosses unchanged; counters 2 / 1 with their bytes.",
            ipv6
        ),
        case!(
            "DP-11.1",
            "DP-11",
            "Fragments, malformed headers and other protocols take the miss path, uncounted",
            "Add a FORWARD UDP session (IPv4) and one IPv6 UDP session; send into ext0, with the sessions' \
             addresses (and ports where there are any): an IPv4 first fragment, a later fragment, an IPv4 header \
             length below 20, a transport header cut short, ICMP, ARP, and an IPv6 fragment.",
            "Each leaves vnf0 unchanged and nothing crosses to ext1; both sessions' counters stay 0.",
            unmatchable
        ),
        case!(
            "DP-12.1",
            "DP-12",
            "Once addSession has answered, the flow's packets stop reaching the VNF",
            "Send 3 data frames of a flow with no session into ext0; add a FORWARD session for it; then send 5 more. \
             In real time, also send a paced stream of 200 frames of a second flow while its addSession is on its \
             way.",
            "The 3 frames before reach vnf0; none of those sent after the answer does, all 5 cross to ext1 and are \
             counted. Of the paced stream, no frame sent after the answer reaches the VNF; frames sent before it \
             (in flight) may, and their number is reported.",
            in_flight
        ),
        case!(
            "DP-13.1",
            "DP-13",
            "Counters equal what was sent, for many flows at once",
            "Add 8 FORWARD sessions (4 IPv4 TCP, 4 IPv6 UDP); send an interleaved mix of 1-6 frames per flow and \
             direction, of 60-1,400 bytes (fixed seed).",
            "Every frame crosses to the other external port, unchanged; each session's getSession counters equal \
             the frames and bytes sent in each direction.",
            many_flows
        ),
    ]
}

// ----- helpers -----

fn with_action(r: wire::SessionRequest, a: wire::ActionType, hop: Option<IpAddr>) -> wire::SessionRequest {
    let (v4, v6) = match hop {
        Some(IpAddr::V4(h)) => (ipv4_to_wire(h), Vec::new()),
        Some(IpAddr::V6(h)) => (0, h.octets().to_vec()),
        None => (0, Vec::new()),
    };
    wire::SessionRequest {
        action: Some(wire::ActionParameters { action_type: a as i32, action_next_hop: v4, action_next_hop_v6: v6 }),
        ..r
    }
}

fn udp(r: wire::SessionRequest) -> wire::SessionRequest {
    wire::SessionRequest { protocol_id: wire::ProtocolId::Udp as i32, ..r }
}

async fn add_ok(cx: &Ctx, reqs: &[wire::SessionRequest]) -> Result<(), Finding> {
    cx.setup_add(reqs.to_vec()).await.map(drop)
}

/// No frames (one direction of [`Sent::of`]).
const NONE: [&[u8]; 0] = [];

/// Frames sent, for expected counters: (packets, bytes) in and out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sent {
    in_p: u64,
    in_b: u64,
    out_p: u64,
    out_b: u64,
}

impl Sent {
    fn of(ins: &[impl AsRef<[u8]>], outs: &[impl AsRef<[u8]>]) -> Sent {
        Sent {
            in_p: ins.len() as u64,
            in_b: ins.iter().map(|f| f.as_ref().len() as u64).sum(),
            out_p: outs.len() as u64,
            out_b: outs.iter().map(|f| f.as_ref().len() as u64).sum(),
        }
    }
}

fn counters_of(r: &wire::SessionResponse) -> Sent {
    Sent { in_p: r.in_packets, in_b: r.in_bytes, out_p: r.out_packets, out_b: r.out_bytes }
}

fn show(c: &Sent) -> String {
    format!("in {} packets / {} bytes, out {} packets / {} bytes", c.in_p, c.in_b, c.out_p, c.out_b)
}

/// getSession's counters of `id` must be `want`. In real time a device may count a moment
/// after forwarding: read again for up to a second before concluding.
async fn expect_counters(cx: &Ctx, id: u64, want: Sent, what: &str) -> Result<(), Finding> {
    let start = Instant::now();
    loop {
        let got = counters_of(&cx.present(id).await?);
        if got == want {
            return Ok(());
        }
        if cx.virtual_time() || start.elapsed() > Duration::from_secs(1) {
            fail!("{what}: getSession counts {}; the suite sent {}", show(&got), show(&want));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The frames out of `port` must be exactly `want`, in order.
/// Exactly the frames `want` left `port`: each flow's frames in the order sent (DP-1: "in
/// order"); frames of different flows may interleave in any order, as they do on a device with
/// several queues or workers.
fn same(out: &Outputs, port: PortId, want: &[impl AsRef<[u8]>], what: &str) -> Result<(), Finding> {
    let got = out.on(port);
    if got.len() != want.len() {
        fail!("{what}: {} frame(s) left {port}, want {} (everything out: {})", got.len(), want.len(), out.summary());
    }
    let want: Vec<&[u8]> = want.iter().map(|w| w.as_ref()).collect();
    // Per flow, the next frame sent that has not been matched yet.
    let mut next: std::collections::HashMap<Vec<u8>, std::collections::VecDeque<&[u8]>> = Default::default();
    for w in &want {
        next.entry(flow_key(w)).or_default().push_back(w);
    }
    for (i, g) in got.iter().enumerate() {
        let k = flow_key(g);
        let Some(w) = next.get_mut(&k).and_then(|q| q.pop_front()) else {
            fail!("{what}: frame {} out of {port} ({} bytes) is not of a flow sent there", i + 1, g.len());
        };
        if g.as_slice() != w {
            fail!(
                "{what}: frame {} out of {port} differs from the one sent ({} bytes, want {}){}",
                i + 1,
                g.len(),
                w.len(),
                first_difference(g, w)
            );
        }
    }
    Ok(())
}

/// The flow a frame belongs to, for the order check: its VLAN tags, then protocol, addresses
/// and ports as the frame travels; the whole frame when it is not IP. The tags are part of it:
/// frames of one session under different tag stacks are different flows to a NIC's or a
/// kernel's queue selection (which may not parse a double tag, or hashes the tags), so a device
/// with several queues may deliver them in either order.
fn flow_key(f: &[u8]) -> Vec<u8> {
    let word = |at: usize| f.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut at = 12;
    let mut ether = word(at);
    let mut tags = Vec::new();
    while matches!(ether, Some(0x8100 | 0x88a8 | 0x9100)) {
        tags.extend_from_slice(f.get(at..at + 4).unwrap_or_default());
        at += 4;
        ether = word(at);
    }
    let l3 = at + 2;
    let (proto, addrs, l4) = match ether {
        Some(0x0800) if f.len() >= l3 + 20 => (f[l3 + 9], &f[l3 + 12..l3 + 20], l3 + usize::from(f[l3] & 0x0f) * 4),
        Some(0x86dd) if f.len() >= l3 + 40 => (f[l3 + 6], &f[l3 + 8..l3 + 40], l3 + 40),
        _ => return f.to_vec(),
    };
    let mut k = tags;
    k.push(proto);
    k.extend_from_slice(addrs);
    if matches!(proto, 6 | 17) {
        k.extend_from_slice(f.get(l4..l4 + 4).unwrap_or_default());
    }
    k
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("; first difference at byte {i}: {:#04x}, want {:#04x}", a[i], b[i]),
        None => String::new(),
    }
}

/// Nothing of the suite's left the ports in `ports`.
fn nothing_on(out: &Outputs, ports: &[PortId], what: &str) -> Result<(), Finding> {
    for &p in ports {
        ensure!(
            out.on(p).is_empty(),
            "{what}: {} frame(s) left {p}, want none (everything out: {})",
            out.on(p).len(),
            out.summary()
        );
    }
    Ok(())
}

// ----- cases -----

async fn forward(cx: Ctx) -> Result<(), Finding> {
    cx.traffic(&DATA_PORTS)?;
    let r = cx.flow_v4();
    add_ok(&cx, std::slice::from_ref(&r)).await?;
    let f = Flow::of(&r);
    let ins = [64, 500, 1400].iter().enumerate().map(|(i, &n)| f.a_to_b().payload(n).seq(i as u32).build()).collect();
    let outs = [10, 900].iter().enumerate().map(|(i, &n)| f.b_to_a().payload(n).seq(i as u32).build()).collect();
    crosses(&cx, r.session_id, ins, outs, "FORWARD").await
}

/// Sends `ins` into ext0 and `outs` into ext1, frames of the forwarding session `id`: each must
/// cross to the other external port unchanged and in order, nothing else may leave, and the
/// session must count them in their directions.
async fn crosses(cx: &Ctx, id: u64, ins: Vec<Vec<u8>>, outs: Vec<Vec<u8>>, what: &str) -> Result<(), Finding> {
    let sent = ins.iter().map(|x| (Ext0, x.clone())).chain(outs.iter().map(|x| (Ext1, x.clone()))).collect();
    let out = cx.exchange(sent, &[(Ext1, ins.len()), (Ext0, outs.len())]).await?;
    same(&out, Ext1, &ins, &format!("{what}, from ext0"))?;
    same(&out, Ext0, &outs, &format!("{what}, from ext1"))?;
    nothing_on(&out, &[Vnf0, Vnf1, Collector], what)?;
    expect_counters(cx, id, Sent::of(&ins, &outs), what).await
}

async fn drop_case(cx: Ctx) -> Result<(), Finding> {
    cx.traffic(&DATA_PORTS)?;
    let r = with_action(udp(cx.flow_v4()), wire::ActionType::Drop, None);
    add_ok(&cx, std::slice::from_ref(&r)).await?;
    let f = Flow::of(&r);
    let ins = [f.a_to_b().seq(1).build(), f.a_to_b().seq(2).payload(300).build()];
    let outs = [f.b_to_a().seq(1).build(), f.b_to_a().payload(700).build()];
    let sent: Vec<_> = ins.iter().map(|x| (Ext0, x.clone())).chain(outs.iter().map(|x| (Ext1, x.clone()))).collect();
    let out = cx.exchange(sent, &[]).await?;
    nothing_on(&out, &ALL_PORTS, "DROP")?;
    expect_counters(&cx, r.session_id, Sent::of(&ins, &outs), "DROP").await
}

/// Checks that the collector's frames are one GRE copy per original, in order, each to `hop`,
/// with an inner frame that `inner_ok` accepts.
fn copies(
    out: &Outputs,
    originals: &[(&Vec<u8>, IpAddr)],
    what: &str,
    inner_ok: impl Fn(&[u8], &[u8]) -> Result<(), String>,
) -> Result<(), Finding> {
    let got = out.on(Collector);
    ensure!(
        got.len() == originals.len(),
        "{what}: {} copies left the collector port, want {} (one per frame)",
        got.len(),
        originals.len()
    );
    // Copies of one flow come in the order of its frames; flows may interleave (see `same`).
    let mut next: std::collections::HashMap<Vec<u8>, std::collections::VecDeque<(&Vec<u8>, IpAddr)>> =
        Default::default();
    for &(orig, hop) in originals {
        next.entry(flow_key(orig)).or_default().push_back((orig, hop));
    }
    for (i, g) in got.iter().enumerate() {
        let Some(c) = gre_inner(g) else {
            fail!("{what}: copy {} is not GRE in IPv4 or IPv6 ({} bytes)", i + 1, g.len())
        };
        let Some((orig, hop)) = next.get_mut(&flow_key(&c.inner)).and_then(|q| q.pop_front()) else {
            fail!("{what}: copy {}: its inner frame is of no flow sent ({} bytes)", i + 1, c.inner.len())
        };
        ensure_eq!(c.protocol, 0x6558, "{what}: copy {}: GRE protocol (transparent Ethernet bridging)", i + 1);
        ensure_eq!(c.next_hop, hop, "{what}: copy {}: outer destination (the session's next hop)", i + 1);
        inner_ok(&c.inner, orig).map_err(|e| Finding::Fail(format!("{what}: copy {}: {e}", i + 1)))?;
    }
    Ok(())
}

async fn mirror(cx: Ctx) -> Result<(), Finding> {
    cx.traffic(&ALL_PORTS)?;
    let hop6: IpAddr =
        HOP_V6.parse::<std::net::Ipv6Addr>().map(IpAddr::V6).map_err(|e| Finding::Error(e.to_string()))?;
    let a = with_action(cx.flow_v4(), wire::ActionType::Mirror, Some(IpAddr::from(HOP_V4)));
    let b = with_action(udp(cx.flow_v4()), wire::ActionType::Mirror, Some(hop6));
    add_ok(&cx, &[a.clone(), b.clone()]).await?;
    let (fa, fb) = (Flow::of(&a), Flow::of(&b));
    let a_in = fa.a_to_b().payload(800).build();
    let b_in = fb.a_to_b().payload(200).build();
    let a_out = fa.b_to_a().payload(90).build();
    let out = cx
        .exchange(
            vec![(Ext0, a_in.clone()), (Ext0, b_in.clone()), (Ext1, a_out.clone())],
            &[(Ext1, 2), (Ext0, 1), (Collector, 3)],
        )
        .await?;
    same(&out, Ext1, &[&a_in, &b_in], "MIRROR, as added")?;
    same(&out, Ext0, &[&a_out], "MIRROR, reverse")?;
    nothing_on(&out, &[Vnf0, Vnf1], "MIRROR")?;
    let exact = |inner: &[u8], orig: &[u8]| {
        if inner == orig {
            Ok(())
        } else {
            Err(format!(
                "the inner frame ({} bytes) is not the original ({} bytes){}",
                inner.len(),
                orig.len(),
                first_difference(inner, orig)
            ))
        }
    };
    copies(&out, &[(&a_in, IpAddr::from(HOP_V4)), (&b_in, hop6), (&a_out, IpAddr::from(HOP_V4))], "MIRROR", exact)?;
    expect_counters(&cx, a.session_id, Sent::of(&[&a_in], &[&a_out]), "MIRROR (IPv4 next hop)").await?;
    expect_counters(&cx, b.session_id, Sent::of(&[&b_in], &NONE), "MIRROR (IPv6 next hop)").await
}

async fn snoop(cx: Ctx) -> Result<(), Finding> {
    cx.traffic(&ALL_PORTS)?;
    let r = with_action(cx.flow_v4(), wire::ActionType::Snoop, Some(IpAddr::from(HOP_V4)));
    add_ok(&cx, std::slice::from_ref(&r)).await?;
    let f = Flow::of(&r);
    // 14 + 20 + 20 + payload.
    let a = f.a_to_b().payload(1000 - 54).build();
    let b = f.b_to_a().payload(600 - 54).build();
    let out = cx.exchange(vec![(Ext0, a.clone()), (Ext1, b.clone())], &[(Ext1, 1), (Ext0, 1), (Collector, 2)]).await?;
    same(&out, Ext1, &[&a], "SNOOP, as added")?;
    same(&out, Ext0, &[&b], "SNOOP, reverse")?;
    nothing_on(&out, &[Vnf0, Vnf1], "SNOOP")?;
    let headers = |inner: &[u8], orig: &[u8]| {
        if inner.len() < 54 {
            Err(format!(
                "the inner frame has {} bytes, less than the 54 of its Ethernet, IPv4 and TCP headers",
                inner.len()
            ))
        } else if inner.len() >= orig.len() {
            Err(format!("the inner frame is the whole frame ({} bytes): SNOOP sends the headers only", inner.len()))
        } else if orig[..inner.len()] != *inner {
            Err(format!("the inner frame is not the start of the original{}", first_difference(inner, orig)))
        } else {
            Ok(())
        }
    };
    copies(&out, &[(&a, IpAddr::from(HOP_V4)), (&b, IpAddr::from(HOP_V4))], "SNOOP", headers)?;
    if let Some(c) = out.on(Collector).first().and_then(|g| gre_inner(g)) {
        cx.measure("snoop_bytes", c.inner.len());
    }
    expect_counters(&cx, r.session_id, Sent::of(&[&a], &[&b]), "SNOOP").await
}

async fn miss_path(cx: Ctx) -> Result<(), Finding> {
    cx.traffic(&DATA_PORTS)?;
    let f = Flow::of(&cx.flow_v4());
    let (a, b) = (f.a_to_b().seq(1).build(), f.b_to_a().seq(2).build());
    let out = cx.exchange(vec![(Ext0, a.clone()), (Ext1, b.clone())], &[(Vnf0, 1), (Vnf1, 1)]).await?;
    same(&out, Vnf0, &[&a], "a frame of no session from ext0")?;
    same(&out, Vnf1, &[&b], "a frame of no session from ext1")?;
    nothing_on(&out, &[Ext0, Ext1, Collector], "the miss path")?;
    let (c, d) = (f.a_to_b().seq(3).build(), f.b_to_a().seq(4).build());
    let out = cx.exchange(vec![(Vnf0, c.clone()), (Vnf1, d.clone())], &[(Ext0, 1), (Ext1, 1)]).await?;
    same(&out, Ext0, &[&c], "a frame the VNF sent on vnf0")?;
    same(&out, Ext1, &[&d], "a frame the VNF sent on vnf1")?;
    nothing_on(&out, &[Vnf0, Vnf1, Collector], "frames from the VNF")
}

async fn control_segments(cx: Ctx) -> Result<(), Finding> {
    cx.traffic(&DATA_PORTS)?;
    let r = cx.flow_v4();
    add_ok(&cx, std::slice::from_ref(&r)).await?;
    let f = Flow::of(&r);
    let syn = f.a_to_b().flags(SYN).payload(0).build();
    let syn_ack = f.b_to_a().flags(SYN | ACK).payload(0).build();
    let data = f.a_to_b().seq(1).build();
    let out = cx.exchange(vec![(Ext0, syn.clone()), (Ext1, syn_ack.clone())], &[(Vnf0, 1), (Vnf1, 1)]).await?;
    same(&out, Vnf0, &[&syn], "SYN from ext0")?;
    same(&out, Vnf1, &[&syn_ack], "SYN+ACK from ext1")?;
    nothing_on(&out, &[Ext0, Ext1, Collector], "SYN and SYN+ACK")?;
    let out = cx.exchange(vec![(Ext0, data.clone())], &[(Ext1, 1)]).await?;
    same(&out, Ext1, &[&data], "the data segment after the handshake")?;
    expect_counters(&cx, r.session_id, Sent::of(&[&data], &NONE), "after SYN, SYN+ACK and one data segment").await
}

/// The record of `id` on getClosedSessions (waiting for it in real time).
async fn closed_record(cx: &Ctx, id: u64, what: &str) -> Result<wire::SessionResponse, Finding> {
    let w = cx.wait_closed(&[id], Duration::from_secs(3)).await?;
    match w.records.get(&id) {
        Some((r, _)) => Ok(*r),
        None => fail!("{what}: session {id} was not reported on getClosedSessions"),
    }
}

/// Traffic access for a case that checks a close code: without it, say what goes unchecked.
fn close_traffic(cx: &Ctx) -> Result<(), Finding> {
    cx.traffic(&DATA_PORTS).map(drop).map_err(|e| match e {
        Finding::Skip(m) => Finding::Skip(format!(
            "{m}; without it the close codes _FINACK and _RST are not checked (a device that reports every close \
             as _TIMEOUT is not found)"
        )),
        other => other,
    })
}

async fn finack(cx: Ctx) -> Result<(), Finding> {
    close_traffic(&cx)?;
    let r = cx.flow_v4();
    add_ok(&cx, std::slice::from_ref(&r)).await?;
    let f = Flow::of(&r);
    let ins = [f.a_to_b().seq(1).build(), f.a_to_b().seq(2).payload(333).build()];
    let outs = [f.b_to_a().seq(1).payload(21).build()];
    let sent: Vec<_> = ins.iter().map(|x| (Ext0, x.clone())).chain(outs.iter().map(|x| (Ext1, x.clone()))).collect();
    cx.exchange(sent, &[(Ext1, 2), (Ext0, 1)]).await?;
    let fin_a = f.a_to_b().flags(FIN | ACK).payload(0).seq(3).build();
    let out = cx.exchange(vec![(Ext0, fin_a.clone())], &[(Vnf0, 1)]).await?;
    same(&out, Vnf0, &[&fin_a], "FIN+ACK from ext0")?;
    nothing_on(&out, &[Ext0, Ext1, Collector], "FIN+ACK from ext0")?;
    let fin_b = f.b_to_a().flags(FIN | ACK).payload(0).seq(2).build();
    let out = cx.exchange(vec![(Ext1, fin_b.clone())], &[(Vnf1, 1)]).await?;
    same(&out, Vnf1, &[&fin_b], "FIN+ACK from ext1")?;
    nothing_on(&out, &[Ext0, Ext1, Collector], "FIN+ACK from ext1")?;
    let rec = closed_record(&cx, r.session_id, "after FIN from both sides").await?;
    ensure_eq!(
        rec.session_close_code,
        wire::SessionCloseCode::Finack as i32,
        "sessionCloseCode after FIN from both sides"
    );
    let want = Sent::of(&ins, &outs);
    ensure!(
        counters_of(&rec) == want,
        "the _FINACK record counts {}; the suite sent {} (FINs uncounted)",
        show(&counters_of(&rec)),
        show(&want)
    );
    after_close(&cx, &r, &f).await
}

/// A closed session has left the table: getSession does not find it and its flow's next
/// segment takes the miss path.
async fn after_close(cx: &Ctx, r: &wire::SessionRequest, f: &Flow) -> Result<(), Finding> {
    if let Lookup::Found(_) = cx.get(r.session_id).await? {
        fail!("session {} is still in the table after it was reported closed", r.session_id);
    }
    let later = f.a_to_b().seq(9).build();
    let out = cx.exchange(vec![(Ext0, later.clone())], &[(Vnf0, 1)]).await?;
    same(&out, Vnf0, &[&later], "a segment of the flow after the close (the miss path)")?;
    nothing_on(&out, &[Ext1, Collector], "a segment of the flow after the close")
}

async fn rst(cx: Ctx) -> Result<(), Finding> {
    close_traffic(&cx)?;
    let r = cx.flow_v4();
    add_ok(&cx, std::slice::from_ref(&r)).await?;
    let f = Flow::of(&r);
    let data = f.b_to_a().seq(1).payload(77).build();
    cx.exchange(vec![(Ext1, data.clone())], &[(Ext0, 1)]).await?;
    let reset = f.b_to_a().flags(RST | ACK).payload(0).seq(2).build();
    let out = cx.exchange(vec![(Ext1, reset.clone())], &[(Vnf1, 1)]).await?;
    same(&out, Vnf1, &[&reset], "RST+ACK from ext1")?;
    nothing_on(&out, &[Ext0, Ext1, Collector], "RST+ACK")?;
    let rec = closed_record(&cx, r.session_id, "after RST").await?;
    ensure_eq!(rec.session_close_code, wire::SessionCloseCode::Rst as i32, "sessionCloseCode after RST");
    let want = Sent::of(&NONE, &[&data]);
    ensure!(
        counters_of(&rec) == want,
        "the _RST record counts {}; the suite sent {} (RST uncounted)",
        show(&counters_of(&rec)),
        show(&want)
    );
    after_close(&cx, &r, &f).await
}

async fn vlan(cx: Ctx) -> Result<(), Finding> {
    cx.traffic(&DATA_PORTS)?;
    let r = cx.flow_v4();
    add_ok(&cx, std::slice::from_ref(&r)).await?;
    let f = Flow::of(&r);
    let one = f.a_to_b().vlan(0x8100, 100).seq(1).build();
    let two = f.a_to_b().vlan(0x88a8, 10).vlan(0x8100, 20).seq(2).payload(200).build();
    let back = f.b_to_a().vlan(0x8100, 100).seq(3).build();
    crosses(&cx, r.session_id, vec![one, two], vec![back], "VLAN-tagged frames of a FORWARD session").await
}

async fn ipv6(cx: Ctx) -> Result<(), Finding> {
    cx.traffic(&DATA_PORTS)?;
    let r = cx.flow_v6();
    add_ok(&cx, std::slice::from_ref(&r)).await?;
    let f = Flow::of(&r);
    let plain = f.a_to_b().seq(1).build();
    let ext = f.a_to_b().hop_by_hop().seq(2).payload(500).build();
    let back = f.b_to_a().seq(3).payload(1200).build();
    crosses(&cx, r.session_id, vec![plain, ext], vec![back], "IPv6 frames of a FORWARD session").await
}

async fn unmatchable(cx: Ctx) -> Result<(), Finding> {
    cx.traffic(&DATA_PORTS)?;
    let r4 = udp(cx.flow_v4());
    let r6 = cx.flow_v6();
    add_ok(&cx, &[r4.clone(), r6.clone()]).await?;
    let mut frames = frames::unmatchable_v4(&Flow::of(&r4));
    frames.push(("an IPv6 fragment", frames::v6_fragment(&Flow::of(&r6))));
    for (what, frame) in &frames {
        let out = cx.exchange(vec![(Ext0, frame.clone())], &[(Vnf0, 1)]).await?;
        same(&out, Vnf0, &[frame], what)?;
        nothing_on(&out, &[Ext0, Ext1, Vnf1, Collector], what)?;
    }
    expect_counters(&cx, r4.session_id, Sent::default(), "the IPv4 session after unmatchable frames").await?;
    expect_counters(&cx, r6.session_id, Sent::default(), "the IPv6 session after an IPv6 fragment").await
}

async fn in_flight(cx: Ctx) -> Result<(), Finding> {
    let t = cx.traffic(&DATA_PORTS)?;
    let r = cx.flow_v4();
    let f = Flow::of(&r);
    let before: Vec<Vec<u8>> = (0..3).map(|i| f.a_to_b().seq(i).build()).collect();
    let out = cx.exchange(before.iter().map(|x| (Ext0, x.clone())).collect(), &[(Vnf0, 3)]).await?;
    same(&out, Vnf0, &before, "frames before the session was added")?;
    add_ok(&cx, std::slice::from_ref(&r)).await?;
    let after: Vec<Vec<u8>> = (3..8).map(|i| f.a_to_b().seq(i).build()).collect();
    let out = cx.exchange(after.iter().map(|x| (Ext0, x.clone())).collect(), &[(Ext1, 5)]).await?;
    nothing_on(&out, &[Vnf0, Vnf1], "frames sent after addSession answered")?;
    same(&out, Ext1, &after, "frames sent after addSession answered")?;
    expect_counters(&cx, r.session_id, Sent::of(&after, &NONE), "frames after the answer").await?;
    if t.is_virtual() {
        // Nothing is in flight in virtual time: the second part is the first one again.
        return Ok(());
    }
    // A paced stream while the addSession of its flow is on its way.
    let r2 = cx.flow_v4();
    let f2 = Flow::of(&r2);
    let stream: Vec<Vec<u8>> = (0..200).map(|i| f2.a_to_b().seq(i).build()).collect();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pacer = {
        let (t, stream, sent, cx) = (t.clone(), stream.clone(), sent.clone(), cx.clone());
        tokio::task::spawn_blocking(move || {
            let mut log = Vec::new();
            let r = t.send_paced(Ext0, &stream, Duration::from_micros(500), &sent, &mut log);
            cx.keep_evidence(log);
            r
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before_add = sent.load(std::sync::atomic::Ordering::SeqCst);
    add_ok(&cx, std::slice::from_ref(&r2)).await?;
    let answered_at = sent.load(std::sync::atomic::Ordering::SeqCst);
    pacer.await.map_err(|e| Finding::Error(e.to_string()))?.map_err(Finding::Error)?;
    let out = cx.collect(&[]).await?;
    let seq = |fr: &Vec<u8>| -> Option<u32> {
        let at = 14 + 20 + 20;
        fr.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    // The stream's frames by their addresses and ports (bytes 26..38 of an untagged IPv4 frame).
    let mut to_vnf: Vec<u32> =
        out.on(Vnf0).iter().filter(|fr| fr.get(26..38) == stream[0].get(26..38)).filter_map(seq).collect();
    to_vnf.sort_unstable();
    // Frame `answered_at` may have been on its way out as the answer came (it is counted once
    // sent): only later ones were surely sent after the answer.
    let late: Vec<u32> = to_vnf.iter().copied().filter(|&s| s as usize > answered_at).collect();
    let mut crossed: Vec<u32> =
        out.on(Ext1).iter().filter(|fr| fr.get(26..38) == stream[0].get(26..38)).filter_map(seq).collect();
    let mut all: Vec<u32> = to_vnf.iter().chain(&crossed).copied().collect();
    all.sort_unstable();
    crossed.sort_unstable();
    ensure!(
        all == (0..stream.len() as u32).collect::<Vec<_>>(),
        "the paced stream of {} frames came out {} times ({} at vnf0, {} at ext1): each frame must leave exactly once",
        stream.len(),
        all.len(),
        to_vnf.len(),
        crossed.len()
    );
    // Frames sent before addSession was called may still wait in the device's receive queue
    // when the session is inserted (a loaded host, a slow reader): they then cross, as packets
    // in a NIC's queue meet the rule that lands. DP-12 allows it; the case's first part (frames
    // of a flow with no session go to the VNF) is where a device that forwards unknown flows
    // fails. Their number is reported.
    let early_crossed = crossed.iter().filter(|&&s| (s as usize) < before_add).count();
    cx.measure("paced stream: frames sent before addSession was called that crossed", early_crossed);
    cx.measure("paced stream: frames sent before the answer", answered_at);
    cx.measure("paced stream: frames that reached the VNF", to_vnf.len());
    ensure!(
        late.is_empty(),
        "{} frame(s) of the paced stream sent after addSession answered reached the VNF (sequence numbers {:?}; {} had been sent when it answered)",
        late.len(),
        &late[..late.len().min(10)],
        answered_at
    );
    Ok(())
}

/// A small fixed-seed generator (the frames must be the same on every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

async fn many_flows(cx: Ctx) -> Result<(), Finding> {
    cx.traffic(&DATA_PORTS)?;
    let reqs: Vec<wire::SessionRequest> = (0..8).map(|i| if i < 4 { cx.flow_v4() } else { cx.flow_v6() }).collect();
    add_ok(&cx, &reqs).await?;
    let mut rng = Lcg(0x0f0f_2026);
    let mut plan: Vec<(usize, bool)> = Vec::new();
    for i in 0..reqs.len() {
        for reverse in [false, true] {
            for _ in 0..1 + rng.next(6) {
                plan.push((i, reverse));
            }
        }
    }
    // Interleaved: shuffled with the same generator.
    for k in (1..plan.len()).rev() {
        plan.swap(k, rng.next(k as u64 + 1) as usize);
    }
    let flows: Vec<Flow> = reqs.iter().map(Flow::of).collect();
    let mut sent = vec![Sent::default(); reqs.len()];
    let mut frames = Vec::new();
    let (mut to_ext1, mut to_ext0) = (Vec::new(), Vec::new());
    for (n, &(i, reverse)) in plan.iter().enumerate() {
        let size = 60 + rng.next(1341) as usize;
        let overhead = if i < 4 { 54 } else { 62 };
        let p = if reverse { flows[i].b_to_a() } else { flows[i].a_to_b() };
        let fr = p.payload(size.saturating_sub(overhead).max(4)).seq(n as u32).build();
        let s = &mut sent[i];
        if reverse {
            s.out_p += 1;
            s.out_b += fr.len() as u64;
            to_ext0.push(fr.clone());
            frames.push((Ext1, fr));
        } else {
            s.in_p += 1;
            s.in_b += fr.len() as u64;
            to_ext1.push(fr.clone());
            frames.push((Ext0, fr));
        }
    }
    let out = cx.exchange(frames, &[(Ext1, to_ext1.len()), (Ext0, to_ext0.len())]).await?;
    nothing_on(&out, &[Vnf0, Vnf1, Collector], "frames of FORWARD sessions")?;
    // Across ports the order may differ in real time; per port each frame once, unchanged.
    for (port, want) in [(Ext1, &to_ext1), (Ext0, &to_ext0)] {
        let mut got = out.on(port).to_vec();
        let mut want = want.clone();
        got.sort();
        want.sort();
        ensure!(
            got == want,
            "{} frame(s) left {port}, want {} (the frames sent the other way, each once and unchanged)",
            got.len(),
            want.len()
        );
    }
    for (r, s) in reqs.iter().zip(&sent) {
        expect_counters(&cx, r.session_id, *s, &format!("session {}", r.session_id)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP/IPv4 frame of one 5-tuple under the VLAN tags `tags`, told apart by `mark`.
    fn frame(tags: &[(u16, u16)], mark: u8) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        for (tpid, tci) in tags {
            f.extend(tpid.to_be_bytes());
            f.extend(tci.to_be_bytes());
        }
        f.extend([0x08, 0x00, 0x45, 0, 0, 29, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend([0x03, 0xe8, 0, 53, 0, 9, 0, 0, mark]);
        f
    }

    fn out(frames: &[&Vec<u8>]) -> Outputs {
        Outputs { ports: [(PortId::Ext1, frames.iter().map(|f| f.to_vec()).collect())].into(), foreign: 0 }
    }

    /// Frames of one session under different tag stacks may come out in either order (a device
    /// with several queues spreads them apart); under one tag stack, only in the order sent.
    #[test]
    fn order_is_kept_per_flow_and_tag_stack() {
        let one = frame(&[(0x8100, 100)], 1);
        let two = frame(&[(0x88a8, 10), (0x8100, 20)], 2);
        assert!(same(&out(&[&two, &one]), PortId::Ext1, &[&one, &two], "swapped stacks").is_ok());
        assert!(same(&out(&[&one, &two]), PortId::Ext1, &[&one, &two], "in order").is_ok());
        let again = frame(&[(0x8100, 100)], 3);
        assert!(same(&out(&[&again, &one]), PortId::Ext1, &[&one, &again], "swapped in one stack").is_err());
        let changed = frame(&[(0x8100, 100)], 9);
        assert!(same(&out(&[&changed]), PortId::Ext1, &[&one], "changed").is_err());
    }
}
