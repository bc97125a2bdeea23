//! The datapath on kernel ports through io_uring: the same scenario (miss path both ways, every
//! action, counters, TCP control segments, FIN/ACK and RST closes, VLAN tags kept, nothing
//! stray) over the UDP wire (no privileges), over TAP devices and over veth pairs with
//! AF_PACKET (as root, in a network namespace the test makes; skipped with the reason
//! otherwise).
//!
//! Waits for expected frames are bounded (a missing frame fails after 5 s); nothing here
//! measures time.

mod frames;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use frames::{decode_copy, frame, Flags};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use opof_device::clock::SystemClock;
use opof_device::control::Device;
use opof_device::datapath::metrics::Metrics;
use opof_device::datapath::parse::MissReason;
use opof_device::datapath::uring::{Logic, UringDatapath};
use opof_device::datapath::{ActionKind, Class, CollectorConfig, DatapathConfig, PortId};
use opof_device::table::{Candidate, TableConfig};
use opof_proto::domain::*;
use opof_traffic::port::{Peer, PortSpec};

type R = Result<Completion, Failed>;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn check(ok: bool, msg: impl Into<String>) -> Result<(), Failed> {
    if ok {
        Ok(())
    } else {
        Err(Failed::from(msg.into()))
    }
}

/// A device running its datapath on a thread, stopped when dropped.
struct Running {
    device: Arc<Device>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Running {
    fn start(ports: &[(PortId, PortSpec)]) -> Result<Running, Failed> {
        let table = TableConfig { capacity: 1024, closed_queue_capacity: 1024, ..TableConfig::default() };
        let device = Device::new(table, Arc::new(SystemClock::new())).unwrap();
        let mut dp = UringDatapath::open(ports, CollectorConfig::default()).map_err(|e| Failed::from(e.to_string()))?;
        let metrics = Arc::new(Metrics::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (d, m, s) = (device.clone(), metrics.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let config = DatapathConfig::default();
            dp.run(Logic::Device { device: &d, config: &config }, &m, &s).map_err(|e| e.to_string())
        });
        Ok(Running { device, metrics, stop, thread: Some(thread) })
    }

    fn finish(mut self) -> Result<(), Failed> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => Err(Failed::from(format!("the datapath failed: {e}"))),
            Some(Err(_)) => Err(Failed::from("the datapath thread panicked")),
            _ => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The test's ends of the five ports, by [`PortId`] index.
struct Peers([Peer; 5]);

impl Peers {
    fn send(&self, p: PortId, f: &[u8]) -> Result<(), Failed> {
        self.0[p.index()].send(f).map_err(|e| Failed::from(e.to_string()))
    }
    fn recv(&self, p: PortId, wait: Duration) -> Result<Option<Vec<u8>>, Failed> {
        self.0[p.index()].recv(wait).map_err(|e| Failed::from(e.to_string()))
    }
    /// The next frame out of `p` must be `want`.
    fn expect(&self, p: PortId, want: &[u8], what: &str) -> Result<(), Failed> {
        match self.recv(p, WAIT)? {
            Some(got) if got == want => Ok(()),
            Some(got) => Err(Failed::from(format!(
                "{what}: {p} sent a different frame ({} bytes, want {})",
                got.len(),
                want.len()
            ))),
            None => Err(Failed::from(format!("{what}: nothing came out of {p}"))),
        }
    }
    fn next(&self, p: PortId, what: &str) -> Result<Vec<u8>, Failed> {
        self.recv(p, WAIT)?.ok_or_else(|| Failed::from(format!("{what}: nothing came out of {p}")))
    }
}

fn v4(a: [u8; 4]) -> IpAddr {
    a.into()
}

fn udp(i: u16) -> FiveTuple {
    FiveTuple::new(Protocol::Udp, v4([10, 0, 0, 1]), 5000 + i, v4([10, 0, 1, 1]), 53).unwrap()
}

fn tcp(i: u16) -> FiveTuple {
    FiveTuple::new(Protocol::Tcp, v4([10, 0, 0, 1]), 40000 + i, v4([10, 0, 1, 1]), 80).unwrap()
}

fn data(t: &FiveTuple, n: usize) -> Vec<u8> {
    frame(t, Flags::default(), n, &[])
}

fn add(d: &Device, id: u64, tuple: FiveTuple, action: Action) -> Result<(), Failed> {
    let spec = SessionSpec { id, tuple, action, in_lif: 0, out_lif: 0, cache_timeout: 0 };
    let out = d.add(&[Candidate::Valid(spec)]);
    check(out.status == AddStatus::Accepted, format!("add {id}: {out:?}"))
}

fn counters(d: &Device, id: u64) -> Result<Counters, Failed> {
    d.get(id).map(|r| r.counters).ok_or_else(|| Failed::from(format!("session {id} missing")))
}

/// The whole scenario against a running device and the peers of its five ports.
fn scenario(run: &Running, peers: &Peers) -> Result<(), Failed> {
    use PortId::*;
    let d = &run.device;
    // The miss path, both sides, and the VNF's way back.
    let m = data(&udp(100), 10);
    peers.send(Ext0, &m)?;
    peers.expect(Vnf0, &m, "no session, from ext0")?;
    peers.send(Ext1, &m)?;
    peers.expect(Vnf1, &m, "no session, from ext1")?;
    peers.send(Vnf0, &m)?;
    peers.expect(Ext0, &m, "from the VNF on vnf0")?;
    peers.send(Vnf1, &m)?;
    peers.expect(Ext1, &m, "from the VNF on vnf1")?;
    let mut arp = m.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    peers.send(Ext1, &arp)?;
    peers.expect(Vnf1, &arp, "not IP")?;

    // FORWARD, both directions, exact counters.
    add(d, 1, udp(1), Action::Forward)?;
    let (a, b) = (data(&udp(1), 200), data(&udp(1).reversed(), 30));
    peers.send(Ext0, &a)?;
    peers.expect(Ext1, &a, "FORWARD from ext0")?;
    peers.send(Ext1, &b)?;
    peers.expect(Ext0, &b, "FORWARD from ext1")?;
    peers.send(Ext1, &b)?;
    peers.expect(Ext0, &b, "FORWARD from ext1, again")?;
    let c = counters(d, 1)?;
    check(
        c == Counters { in_packets: 1, in_bytes: a.len() as u64, out_packets: 2, out_bytes: 2 * b.len() as u64 },
        format!("FORWARD counters {c:?}"),
    )?;

    // VLAN tags (one, and two) are kept as they came.
    for tags in [vec![7u16], vec![300, 7]] {
        let f = frame(&udp(1), Flags::default(), 40, &tags);
        peers.send(Ext0, &f)?;
        peers.expect(Ext1, &f, &format!("FORWARD with VLAN tags {tags:?}"))?;
    }

    // DROP: counted, nothing out (the marker after it from the same port comes out first).
    add(d, 2, udp(2), Action::Drop)?;
    peers.send(Ext0, &data(&udp(2), 50))?;
    peers.send(Ext0, &m)?;
    peers.expect(Vnf0, &m, "the marker after a dropped frame")?;
    check(counters(d, 2)?.in_packets == 1, "DROP counts the frame")?;

    // MIRROR (IPv4 next hop): forwarded, and the whole frame to the collector in GRE.
    let hop4 = v4([198, 51, 100, 7]);
    add(d, 3, udp(3), Action::Mirror { next_hop: hop4 })?;
    let f = data(&udp(3), 300);
    peers.send(Ext0, &f)?;
    peers.expect(Ext1, &f, "MIRROR forwards")?;
    let (dst, inner) = decode_copy(&peers.next(Collector, "MIRROR copy")?);
    check(dst == hop4 && inner == f, "the MIRROR copy is the frame, to the next hop")?;

    // SNOOP (IPv6 next hop): forwarded, the first 128 bytes to the collector.
    let hop6: IpAddr = "2001:db8::c0".parse().unwrap();
    add(d, 4, udp(4), Action::Snoop { next_hop: hop6 })?;
    let f = data(&udp(4).reversed(), 700);
    peers.send(Ext1, &f)?;
    peers.expect(Ext0, &f, "SNOOP forwards")?;
    let (dst, inner) = decode_copy(&peers.next(Collector, "SNOOP copy")?);
    check(dst == hop6 && inner == f[..128], "the SNOOP copy is the first 128 bytes, to the next hop")?;

    // TCP: control segments go to the VNF uncounted; FIN from both sides closes FINACK.
    add(d, 5, tcp(5), Action::Forward)?;
    let syn = frame(&tcp(5), Flags { syn: true, ..Flags::default() }, 0, &[]);
    peers.send(Ext0, &syn)?;
    peers.expect(Vnf0, &syn, "SYN of an offloaded session")?;
    let payload = data(&tcp(5), 100);
    peers.send(Ext0, &payload)?;
    peers.expect(Ext1, &payload, "TCP data")?;
    let fin_a = frame(&tcp(5), Flags { fin: true, ..Flags::default() }, 0, &[]);
    let fin_b = frame(&tcp(5).reversed(), Flags { fin: true, ..Flags::default() }, 0, &[]);
    peers.send(Ext0, &fin_a)?;
    peers.expect(Vnf0, &fin_a, "FIN from ext0")?;
    check(counters(d, 5)?.in_packets == 1, "control segments are not counted")?;
    peers.send(Ext1, &fin_b)?;
    peers.expect(Vnf1, &fin_b, "FIN from ext1")?;
    // RST from ext1 closes RST.
    add(d, 6, tcp(6), Action::Drop)?;
    let rst = frame(&tcp(6).reversed(), Flags { rst: true, ..Flags::default() }, 0, &[]);
    peers.send(Ext1, &rst)?;
    peers.expect(Vnf1, &rst, "RST")?;
    let closed = d.drain_closed(10);
    let got: Vec<(u64, CloseCode, u64)> = closed.iter().map(|c| (c.id, c.close_code, c.counters.in_packets)).collect();
    check(got == vec![(5, CloseCode::FinAck, 1), (6, CloseCode::Rst, 0)], format!("closes {got:?}"))?;
    // The closed flow misses again.
    peers.send(Ext0, &payload)?;
    peers.expect(Vnf0, &payload, "a closed session's flow takes the miss path")?;

    // Nothing stray on any port.
    for p in PortId::ALL {
        if let Some(f) = peers.recv(p, QUIET)? {
            return Err(Failed::from(format!("an unexpected frame of {} bytes came out of {p}", f.len())));
        }
    }
    let s = run.metrics.snapshot();
    check(s.offloaded(ActionKind::Forward) == 6, format!("forwarded {}", s.offloaded(ActionKind::Forward)))?;
    check(s.offloaded(ActionKind::Drop) == 1, "dropped")?;
    check(s.miss(MissReason::NotIp) == 1, "not-IP misses")?;
    check(s.class(Class::Control(None)) == 4, format!("control segments {}", s.class(Class::Control(None))))?;
    Ok(())
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn over_udp() -> R {
    let ends: Vec<(SocketAddr, SocketAddr)> = PortId::ALL.iter().map(|_| (free_udp(), free_udp())).collect();
    let ports: Vec<(PortId, PortSpec)> =
        PortId::ALL.iter().zip(&ends).map(|(&p, &(dev, peer))| (p, PortSpec::Udp { peer, bind: Some(dev) })).collect();
    let run = Running::start(&ports)?;
    let peers: Vec<Peer> = ends.iter().map(|&(dev, peer)| Peer::udp(peer, dev).unwrap()).collect();
    let peers = Peers(peers.try_into().map_err(|_| "five peers").unwrap());
    scenario(&run, &peers)?;
    unreceivable(&run, &peers, &[(vec![0x5a; 5000], "a 5,000-byte frame"), (Vec::new(), "an empty datagram")])?;
    run.finish()?;
    Ok(Completion::Completed)
}

/// Frames the device cannot take (longer than a receive buffer, or empty) sent into ext0 are
/// dropped and counted on ext0, and the frame after each flows as before.
fn unreceivable(run: &Running, peers: &Peers, frames: &[(Vec<u8>, &str)]) -> Result<(), Failed> {
    let m = data(&udp(100), 10);
    for (bad, what) in frames {
        let before = run.metrics.snapshot().ports[PortId::Ext0.index()].rx_dropped;
        peers.send(PortId::Ext0, bad)?;
        peers.send(PortId::Ext0, &m)?;
        peers.expect(PortId::Vnf0, &m, &format!("the frame after {what}"))?;
        let after = run.metrics.snapshot().ports[PortId::Ext0.index()].rx_dropped;
        check(after == before + 1, format!("{what} is one rx drop on ext0 ({before} -> {after})"))?;
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn sh(cmd: &str) -> Result<(), Failed> {
    let out = Command::new("sh").arg("-c").arg(cmd).output().map_err(|e| Failed::from(format!("{cmd}: {e}")))?;
    check(out.status.success(), format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Runs `f` on a thread in a network namespace of its own, with IPv6 off so the kernel sends
/// nothing of its own (router solicitations, MLD) on the interfaces made there. The namespace
/// and its interfaces go away with the thread and the sockets made in it.
fn in_new_netns(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::spawn(move || {
        // SAFETY: unshare affects the calling thread only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(Failed::from(format!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error())));
        }
        for knob in ["all", "default"] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6"), "1")
                .map_err(|e| Failed::from(format!("disabling IPv6 in the namespace: {e}")))?;
        }
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(Failed::from("the namespace thread panicked")))
}

fn over_tap() -> R {
    if !is_root() {
        return Ok(Completion::ignored_with("needs root to make TAP devices in a network namespace (CI runs as root)"));
    }
    in_new_netns(|| {
        let names: Vec<String> = PortId::ALL.iter().map(|p| format!("t{p}")).collect();
        let ports: Vec<(PortId, PortSpec)> =
            PortId::ALL.iter().zip(&names).map(|(&p, n)| (p, PortSpec::Tap(n.clone()))).collect();
        let run = Running::start(&ports)?;
        for n in &names {
            sh(&format!("ip link set {n} up"))?;
        }
        let peers: Vec<Peer> = names.iter().map(|n| Peer::interface(n).unwrap()).collect();
        let peers = Peers(peers.try_into().map_err(|_| "five peers").unwrap());
        scenario(&run, &peers)?;
        run.finish()?;
        Ok(Completion::Completed)
    })
}

/// A running device on veth pairs in the current namespace (the device holds the `dPORT` ends,
/// the test the `pPORT` ends, with the MTU given per port), and the test's peers.
fn on_veths(mtu: impl Fn(PortId) -> u32) -> Result<(Running, Peers), Failed> {
    let mut ports = Vec::new();
    let mut far = Vec::new();
    for p in PortId::ALL {
        let (near, other, mtu) = (format!("d{p}"), format!("p{p}"), mtu(p));
        sh(&format!(
            "ip link add {near} mtu {mtu} type veth peer name {other} mtu {mtu} && ip link set {near} up && ip link set {other} up"
        ))?;
        ports.push((p, PortSpec::AfPacket(near)));
        far.push(other);
    }
    let run = Running::start(&ports)?;
    let peers: Vec<Peer> = far.iter().map(|n| Peer::interface(n).unwrap()).collect();
    Ok((run, Peers(peers.try_into().map_err(|_| "five peers").unwrap())))
}

/// Two datapath workers on veth pairs: each port's AF_PACKET sockets share its frames through a
/// fanout group steered by shard, the sessions are in two shards. Every frame of 64 flows
/// arrives, each flow's frames in the order sent (several of a flow in flight at once), the
/// sessions count every one, both workers received frames, and no batch spanned the shards.
fn two_workers_over_veth() -> R {
    two_workers(false)
}

/// The same on multi-queue TAP devices (one queue per worker, the queues steered by shard with
/// the eBPF form of the program).
fn two_workers_over_tap() -> R {
    two_workers(true)
}

fn two_workers(tap: bool) -> R {
    if !is_root() {
        return Ok(Completion::ignored_with("needs root to make interfaces in a network namespace (CI runs as root)"));
    }
    in_new_netns(move || {
        let mut ports = Vec::new();
        let mut far = Vec::new();
        for p in PortId::ALL {
            if tap {
                let name = format!("t{p}");
                sh(&format!("ip tuntap add dev {name} mode tap multi_queue"))?;
                ports.push((p, PortSpec::Tap(name.clone())));
                far.push(name);
                continue;
            }
            let (near, other) = (format!("d{p}"), format!("p{p}"));
            sh(&format!(
                "ip link add {near} type veth peer name {other} && ip link set {near} up && ip link set {other} up"
            ))?;
            ports.push((p, PortSpec::AfPacket(near)));
            far.push(other);
        }
        let table = TableConfig { capacity: 1024, closed_queue_capacity: 1024, ..TableConfig::default() };
        let device = Device::sharded(table, Arc::new(SystemClock::new()), None, 2).unwrap();
        let workers = UringDatapath::open_workers(&ports, CollectorConfig::default(), 2, Some(device.steering()))
            .map_err(|e| Failed::from(e.to_string()))?;
        if tap {
            for n in &far {
                sh(&format!("ip link set {n} up"))?;
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let metrics: Vec<Arc<Metrics>> = (0..2).map(|_| Arc::new(Metrics::new())).collect();
        let threads: Vec<_> = workers
            .into_iter()
            .zip(&metrics)
            .map(|(mut dp, m)| {
                let (d, m, s) = (device.clone(), m.clone(), stop.clone());
                std::thread::spawn(move || {
                    let config = DatapathConfig::default();
                    dp.run(Logic::Device { device: &d, config: &config }, &m, &s).map_err(|e| e.to_string())
                })
            })
            .collect();
        let peers: Vec<Peer> = far.iter().map(|n| Peer::interface(n).unwrap()).collect();
        let peers = Peers(peers.try_into().map_err(|_| "five peers").unwrap());
        let flow = |i: u16| {
            FiveTuple::new(Protocol::Udp, v4([10, 0, 0, 1 + (i % 7) as u8]), 6000 + i, v4([10, 0, 1, 1]), 53).unwrap()
        };
        for i in 0..64 {
            add(&device, 1 + u64::from(i), flow(i), Action::Forward)?;
        }
        // Rounds of 16 flows x 4 frames, interleaved; a frame's payload length is its number
        // within its flow.
        let result = (|| {
            for round in 0..8u16 {
                let flows: Vec<u16> = (0..16).map(|k| (round * 16 + k) % 64).collect();
                for seq in 0..4 {
                    for &f in &flows {
                        peers.send(PortId::Ext0, &data(&flow(f), 20 + seq))?;
                    }
                }
                let mut last: std::collections::HashMap<u16, usize> = Default::default();
                for _ in 0..64 {
                    let got = peers.next(PortId::Ext1, "a frame forwarded by two workers")?;
                    let sport = u16::from_be_bytes([got[34], got[35]]);
                    let seq = got.len() - data(&flow(0), 20).len();
                    let prev = last.insert(sport - 6000, seq);
                    check(
                        prev.is_none_or(|p| p + 1 == seq),
                        format!("flow {}: frame {seq} after {prev:?}", sport - 6000),
                    )?;
                }
            }
            let total: u64 =
                (1..=64).map(|id| counters(&device, id).map(|c| c.in_packets)).sum::<Result<u64, Failed>>()?;
            check(total == 8 * 64, format!("the sessions counted {total} frames of {}", 8 * 64))?;
            let per_worker: Vec<u64> =
                metrics.iter().map(|m| m.snapshot().ports[PortId::Ext0.index()].rx_frames).collect();
            check(
                per_worker.iter().all(|&n| n > 0),
                format!("ext0's frames by worker: {per_worker:?} (the fanout group spreads flows)"),
            )?;
            check(per_worker.iter().sum::<u64>() == 8 * 64, format!("ext0's frames by worker: {per_worker:?}"))?;
            // Steered by shard: each worker's batches hold the flows of one shard only.
            let across: u64 = metrics.iter().map(|m| m.snapshot().batches_across_shards).sum();
            check(across == 0, format!("{across} batches were looked up in both shards"))
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in threads {
            match t.join() {
                Ok(Err(e)) => return Err(Failed::from(format!("a worker failed: {e}"))),
                Err(_) => return Err(Failed::from("a worker panicked")),
                Ok(Ok(())) => {}
            }
        }
        result?;
        Ok(Completion::Completed)
    })
}

/// The flows the steering tests send: 32 of each kind (IPv4 and IPv6, TCP and UDP), each in
/// both directions.
fn steering_flows() -> Vec<FiveTuple> {
    let mut flows = Vec::new();
    for i in 0..32u16 {
        let (a4, b4) = (v4([10, 1, (i >> 8) as u8, i as u8]), v4([192, 0, 2, 7]));
        let a6: IpAddr = format!("2001:db8::{:x}", 0x100 + i).parse().unwrap();
        let b6: IpAddr = "2001:db8:ffff::9".parse().unwrap();
        for (proto, (a, b)) in [Protocol::Udp, Protocol::Tcp].into_iter().flat_map(|p| [(p, (a4, b4)), (p, (a6, b6))]) {
            flows.push(FiveTuple::new(proto, a, 1024 + i * 7, b, 443).unwrap());
            flows.push(FiveTuple::new(proto, b, 443, a, 1024 + i * 7).unwrap());
        }
    }
    flows
}

/// The kernel's fanout by the steering program agrees with the device's shards: two AF_PACKET
/// sockets of a `PACKET_FANOUT_CBPF` group on one veth end, joined with the program of a device
/// of two shards; frames of 32 flows of each kind (IPv4 and IPv6, TCP and UDP, with and without a
/// VLAN tag, which the kernel takes off before the program runs) sent into the other end each
/// reach the socket whose index is the shard of their session, in both directions; the two
/// fragments of each of 32 IPv4 packets reach one socket.
fn fanout_by_shard_agrees_with_the_table() -> R {
    if !is_root() {
        return Ok(Completion::ignored_with("needs root to make veth pairs in a network namespace (CI runs as root)"));
    }
    in_new_netns(|| {
        sh("ip link add steer0 type veth peer name steer1 && ip link set steer0 up && ip link set steer1 up")?;
        let device = Device::sharded(TableConfig::default(), Arc::new(SystemClock::new()), None, 2).unwrap();
        let program = device.steering().fanout_program(2);
        let members: Vec<Peer> = (0..2).map(|_| Peer::interface("steer0").unwrap()).collect();
        for m in &members {
            opof_traffic::port::join_fanout(m.fd(), 4242, Some(&program))
                .map_err(|e| Failed::from(format!("joining the fanout group with the program: {e}")))?;
        }
        let sender = Peer::interface("steer1").unwrap();
        let flows = steering_flows();
        let mut sent = 0;
        for (n, t) in flows.iter().enumerate() {
            let vlans: &[u16] = if n % 3 == 0 { &[100] } else { &[] };
            sender.send(&frame(t, Flags::default(), 10, vlans)).map_err(|e| Failed::from(e.to_string()))?;
            sent += 1;
        }
        // IPv4 fragments, a packet's first (ports present) and second (none) each: a packet's
        // fragments all reach one socket. Each pair is told by its IP identification.
        for i in 0..32u16 {
            let t = FiveTuple::new(Protocol::Udp, v4([10, 2, 0, i as u8]), 3000 + i, v4([192, 0, 2, 8]), 53).unwrap();
            for offset_and_flags in [0x2000u16, 0x0001] {
                let mut f = frame(&t, Flags::default(), 10, &[]);
                f[18..20].copy_from_slice(&(0xf000 + i).to_be_bytes());
                f[20..22].copy_from_slice(&offset_and_flags.to_be_bytes());
                sender.send(&f).map_err(|e| Failed::from(e.to_string()))?;
                sent += 1;
            }
        }
        let mut got = 0;
        let mut per_member = [0usize; 2];
        let mut fragments: std::collections::HashMap<u16, Vec<usize>> = Default::default();
        for (k, m) in members.iter().enumerate() {
            while let Some(f) = m.recv(QUIET).map_err(|e| Failed::from(e.to_string()))? {
                got += 1;
                per_member[k] += 1;
                match opof_device::datapath::parse::parse(&f) {
                    Err(MissReason::Fragment) => {
                        fragments.entry(u16::from_be_bytes([f[18], f[19]])).or_default().push(k);
                    }
                    Err(e) => return Err(Failed::from(format!("a frame the test sent did not parse: {e:?}"))),
                    Ok(p) => {
                        let shard = device.shard_of(&p.tuple);
                        check(
                            shard == k,
                            format!("{}: received by socket {k}, its session's shard is {shard}", p.tuple),
                        )?;
                    }
                }
            }
        }
        check(got == sent, format!("{got} of {sent} frames received"))?;
        check(fragments.len() == 32, format!("fragments of {} packets received, of 32", fragments.len()))?;
        for (id, at) in &fragments {
            check(at.len() == 2 && at[0] == at[1], format!("packet {id:#x}: its fragments reached sockets {at:?}"))?;
        }
        check(per_member.iter().all(|&n| n > 0), format!("frames per socket: {per_member:?}"))?;
        Ok(Completion::Completed)
    })
}

/// A multi-queue TAP's queue selection by the steering program agrees with the device's
/// shards: two queues of one TAP, the program of a device of two shards set with
/// `TUNSETSTEERINGEBPF`; frames of IPv4 and IPv6, TCP and UDP flows, both directions, sent into
/// the TAP from the host side each come out of the queue whose index is their session's shard.
fn tap_queues_by_shard_agree_with_the_table() -> R {
    if !is_root() {
        return Ok(Completion::ignored_with(
            "needs root to make a TAP device in a network namespace (CI runs as root)",
        ));
    }
    in_new_netns(|| {
        let device = Device::sharded(TableConfig::default(), Arc::new(SystemClock::new()), None, 2).unwrap();
        let queues: Vec<Peer> = (0..2)
            .map(|_| opof_traffic::port::open_tap_queue("tap", "stap", true).map(|fd| Peer::tap(fd, "stap")))
            .collect::<Result<_, _>>()
            .map_err(|e| Failed::from(e.to_string()))?;
        let program = device.steering().tap_program(2);
        opof_traffic::port::set_tap_steering(queues[0].fd(), &program)
            .map_err(|e| Failed::from(format!("TUNSETSTEERINGEBPF: {e}")))?;
        sh("ip link set stap up")?;
        let sender = Peer::interface("stap").unwrap();
        let mut sent = 0;
        for t in steering_flows() {
            sender.send(&frame(&t, Flags::default(), 10, &[])).map_err(|e| Failed::from(e.to_string()))?;
            sent += 1;
        }
        let mut got = 0;
        let mut per_queue = [0usize; 2];
        for (k, q) in queues.iter().enumerate() {
            while let Some(f) = q.recv(QUIET).map_err(|e| Failed::from(e.to_string()))? {
                // The host's own frames on a new link (IPv6 neighbour discovery) are not the test's.
                let Ok(p) = opof_device::datapath::parse::parse(&f) else { continue };
                let shard = device.shard_of(&p.tuple);
                check(shard == k, format!("{}: out of queue {k}, its session's shard is {shard}", p.tuple))?;
                got += 1;
                per_queue[k] += 1;
            }
        }
        check(got == sent, format!("{got} of {sent} frames came out of the queues"))?;
        check(per_queue.iter().all(|&n| n > 0), format!("frames per queue: {per_queue:?}"))?;
        Ok(Completion::Completed)
    })
}

fn over_veth() -> R {
    if !is_root() {
        return Ok(Completion::ignored_with("needs root to make veth pairs in a network namespace (CI runs as root)"));
    }
    in_new_netns(|| {
        // Jumbo frames on ext0's pair: an AF_PACKET port receives them (its buffers hold a
        // host's 64 KiB super-frames), and one that cannot leave on a 1,500-byte link is that
        // link's drop.
        let (run, peers) = on_veths(|p| if p == PortId::Ext0 { 9000 } else { 1500 })?;
        scenario(&run, &peers)?;
        let jumbo = data(&udp(100), 5000 - 42); // 42 bytes of Ethernet, IPv4 and UDP headers
        let port = |p: PortId| run.metrics.snapshot().ports[p.index()];
        let (rx, tx_dropped) = (port(PortId::Ext0).rx_frames, port(PortId::Vnf0).tx_dropped);
        peers.send(PortId::Ext0, &jumbo)?;
        let m = data(&udp(100), 10);
        peers.send(PortId::Ext0, &m)?;
        peers.expect(PortId::Vnf0, &m, "the frame after a jumbo frame")?;
        until("the jumbo frame received on ext0 and dropped on vnf0's 1,500-byte link", || {
            port(PortId::Ext0).rx_frames == rx + 2 && port(PortId::Vnf0).tx_dropped == tx_dropped + 1
        })?;
        run.finish()?;
        Ok(Completion::Completed)
    })
}

/// Polls `f` every 20 ms until it holds, for at most [`WAIT`].
fn until(what: &str, mut f: impl FnMut() -> bool) -> Result<(), Failed> {
    let start = std::time::Instant::now();
    while !f() {
        if start.elapsed() > WAIT {
            return Err(Failed::from(format!("{what}: not within {} s", WAIT.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A link going down and coming back, on the receiving port (ext0) and on the sending port
/// (ext1) of a FORWARD session: the datapath goes on, the port is marked down (metrics), a
/// frame for a down port is counted as a drop, and traffic resumes when the link is up; the
/// session and its counters stay.
fn link_down_and_up() -> R {
    if !is_root() {
        return Ok(Completion::ignored_with("needs root to make veth pairs in a network namespace (CI runs as root)"));
    }
    in_new_netns(|| {
        let (run, peers) = on_veths(|_| 1500)?;
        let t = udp(7);
        add(&run.device, 7, t, Action::Forward)?;
        let f = data(&t, 100);
        peers.send(PortId::Ext0, &f)?;
        peers.expect(PortId::Ext1, &f, "before any link event")?;
        let down = |p: PortId| run.metrics.snapshot().down[p.index()];
        let snap = || run.metrics.snapshot();
        for (port, iface) in [(PortId::Ext1, "dext1"), (PortId::Ext0, "dext0")] {
            let events = snap().ports[port.index()].link_down;
            sh(&format!("ip link set {iface} down"))?;
            until(&format!("{port} marked down"), || down(port))?;
            check(snap().ports[port.index()].link_down == events + 1, format!("{port}: one link-down event"))?;
            if port == PortId::Ext1 {
                // A frame for the down port: counted as its drop, nothing leaves.
                let drops = snap().ports[PortId::Ext1.index()].tx_dropped;
                peers.send(PortId::Ext0, &f)?;
                until("a frame for the down ext1 counted as a drop", || {
                    snap().ports[PortId::Ext1.index()].tx_dropped == drops + 1
                })?;
            }
            std::thread::sleep(Duration::from_millis(300));
            sh(&format!("ip link set {iface} up"))?;
            until(&format!("{port} marked up"), || !down(port))?;
            // Traffic resumes (a veth just set up may take a moment to carry frames).
            let mut crossed = false;
            for _ in 0..20 {
                peers.send(PortId::Ext0, &f)?;
                if let Some(got) = peers.recv(PortId::Ext1, Duration::from_millis(250))? {
                    check(got == f, "the frame after the link came back up")?;
                    crossed = true;
                    break;
                }
            }
            check(crossed, format!("traffic did not resume after {iface} came back up"))?;
            while peers.recv(PortId::Ext1, QUIET)?.is_some() {}
        }
        check(run.device.get(7).is_some(), "the session is still in the table")?;
        check(counters(&run.device, 7)?.in_packets >= 3, "the session counted the frames that crossed")?;
        run.finish()?;
        Ok(Completion::Completed)
    })
}

/// ICMP errors about a UDP-wire port's peer (a firewall rejecting its datagrams with each ICMP
/// destination-unreachable code that Linux reports to a connected UDP socket and iptables can
/// send: 2, 3, 9, 10, 13; codes 0 and 1 are soft errors the kernel does not report, code 4 is
/// not among REJECT's): each is counted by its errno and the port goes on receiving.
fn icmp_errors_on_the_udp_wire() -> R {
    if !is_root() {
        return Ok(Completion::ignored_with("needs root for iptables in a network namespace (CI runs as root)"));
    }
    let iptables = Command::new("iptables").arg("--version").output();
    if !iptables.is_ok_and(|o| o.status.success()) {
        return Err(Failed::from("iptables is needed (Debian's package iptables; .ci/run installs it)"));
    }
    in_new_netns(|| {
        sh("ip link set lo up")?;
        let ends: Vec<(SocketAddr, SocketAddr)> = PortId::ALL.iter().map(|_| (free_udp(), free_udp())).collect();
        let ports: Vec<(PortId, PortSpec)> = PortId::ALL
            .iter()
            .zip(&ends)
            .map(|(&p, &(dev, peer))| (p, PortSpec::Udp { peer, bind: Some(dev) }))
            .collect();
        let run = Running::start(&ports)?;
        let peers: Vec<Peer> = ends.iter().map(|&(dev, peer)| Peer::udp(peer, dev).unwrap()).collect();
        let peers = Peers(peers.try_into().map_err(|_| "five peers").unwrap());
        let t = udp(9);
        add(&run.device, 9, t, Action::Forward)?;
        let f = data(&t, 60);
        let ext1_peer = ends[PortId::Ext1.index()].1.port();
        for (reject, errno) in [
            ("icmp-host-prohibited", "EHOSTUNREACH"),
            ("icmp-admin-prohibited", "EHOSTUNREACH"),
            ("icmp-net-prohibited", "ENETUNREACH"),
            ("icmp-proto-unreachable", "ENOPROTOOPT"),
            ("icmp-port-unreachable", "ECONNREFUSED"),
        ] {
            let kind = opof_device::datapath::metrics::RxError::ALL.into_iter().find(|e| e.name() == errno).unwrap();
            let count = || run.metrics.snapshot().ports[PortId::Ext1.index()].rx_errors[kind as usize];
            let before = count();
            let rule = format!("OUTPUT -p udp --dport {ext1_peer} -j REJECT --reject-with {reject}");
            sh(&format!("iptables -A {rule}"))?;
            // The device forwards into ext1; the firewall answers its datagram with the ICMP
            // error, which the port's connected socket reports on its next receive.
            peers.send(PortId::Ext0, &f)?;
            let counted = until(&format!("{reject} counted as {errno} on ext1"), || count() > before);
            sh(&format!("iptables -D {rule}"))?;
            counted?;
            // The port goes on: ext1 still receives (its frames reach the VNF side).
            let back = data(&udp(500), 30);
            peers.send(PortId::Ext1, &back)?;
            peers.expect(PortId::Vnf1, &back, &format!("ext1 receiving after {reject}"))?;
            peers.send(PortId::Ext0, &f)?;
            peers.expect(PortId::Ext1, &f, &format!("ext0 to ext1 after {reject}"))?;
        }
        run.finish()?;
        Ok(Completion::Completed)
    })
}

/// A MIRROR copy longer than the collector link's MTU (1,500) is not sent, and is counted as
/// not sent (`too_big`), not as a copy; the frame itself crosses; a copy that fits is counted
/// as sent once the kernel took it.
/// A raw IP socket for GRE on the collector's side: the kernel hands it each GRE packet
/// addressed to the host after reassembling its fragments (IPv4: with the IP header; IPv6:
/// the payload), as it does before a GRE tunnel device would see it. Used where the kernel has
/// no gretap device type (as on the machines this suite runs on); the decoding after
/// reassembly is the suite's own.
struct RawGre {
    fd: std::os::fd::OwnedFd,
    v6: bool,
}

impl RawGre {
    fn open(v6: bool) -> Result<RawGre, Failed> {
        use std::os::fd::FromRawFd;
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket call; the result is checked and owned.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 47) };
        check(fd >= 0, format!("raw GRE socket: {}", std::io::Error::last_os_error()))?;
        // SAFETY: a fresh descriptor, owned from here on.
        Ok(RawGre { fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }, v6 })
    }

    /// The Ethernet frame the next whole GRE packet carries (0x6558), within `wait`.
    fn next_frame(&self, wait: Duration) -> Result<Option<Vec<u8>>, Failed> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd that lives across the call.
        if unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) } <= 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 65536];
        // SAFETY: reading into a live buffer of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        check(n >= 0, format!("raw GRE recv: {}", std::io::Error::last_os_error()))?;
        buf.truncate(n as usize);
        let gre = if self.v6 { 0 } else { usize::from(buf[0] & 0x0f) * 4 };
        check(buf.len() >= gre + 4 && buf[gre + 2..gre + 4] == [0x65, 0x58], "a GRE packet of an Ethernet frame")?;
        Ok(Some(buf[gre + 4..].to_vec()))
    }
}

/// A full-size mirrored frame over a collector link of MTU 1,500: its copy leaves as two
/// fragments of the outer IP packet, which the collector host's IP layer reassembles into the
/// whole copy (IPv4 and IPv6 next hops).
fn copies_over_the_collector_mtu() -> R {
    if !is_root() {
        return Ok(Completion::ignored_with("needs root to make veth pairs in a network namespace (CI runs as root)"));
    }
    in_new_netns(|| {
        let (run, peers) = on_veths(|_| 1500)?;
        // The collector's side: the next hops' addresses on the far end of the collector veth.
        sh(&format!(
            "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.p{col}.rp_filter=0 net.ipv6.conf.p{col}.disable_ipv6=0 \
             && ip addr add 198.51.100.7/24 dev p{col} && ip addr add 2001:db8:7::7/64 dev p{col} nodad",
            col = PortId::Collector,
        ))?;
        let snap = || run.metrics.snapshot();
        for (i, hop) in [v4([198, 51, 100, 7]), "2001:db8:7::7".parse().unwrap()].into_iter().enumerate() {
            let end = RawGre::open(hop.is_ipv6())?;
            let t = udp(11 + i as u16);
            add(&run.device, 11 + i as u64, t, Action::Mirror { next_hop: hop })?;
            let before = snap();
            for (n, what) in [(200, "a small frame"), (1514 - 42, "a full-size frame")] {
                let f = data(&t, n);
                peers.send(PortId::Ext0, &f)?;
                peers.expect(PortId::Ext1, &f, &format!("{what} mirrored to {hop}"))?;
                let got = end.next_frame(WAIT)?;
                check(
                    got.as_deref() == Some(&f[..]),
                    format!("{what}'s copy to {hop}: not reassembled whole ({:?} bytes)", got.map(|g| g.len())),
                )?;
            }
            until(&format!("both copies to {hop} counted sent, the full-size one fragmented"), || {
                let s = snap();
                s.copies == before.copies + 2 && s.copies_fragmented == before.copies_fragmented + 1
            })?;
            check(snap().copies_lost == [0; 4], format!("copies not sent: {:?}", snap().copies_lost))?;
            // On the wire: the full-size copy was two packets, none over the MTU.
            let mut sizes = Vec::new();
            while let Some(f) = peers.recv(PortId::Collector, QUIET)? {
                if f.get(12..14) == Some(&[0x08, 0x00]) || f.get(12..14) == Some(&[0x86, 0xdd]) {
                    sizes.push(f.len() - 14);
                }
            }
            // The small copy in one packet, the full-size one in two; none over the MTU.
            check(
                sizes.len() >= 3 && sizes.iter().all(|&s| s <= 1500),
                format!("IP packets on the collector link: {sizes:?}"),
            )?;
        }
        run.finish()?;
        Ok(Completion::Completed)
    })
}

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let trials = vec![
        Trial::ignorable_test("datapath over the UDP wire", over_udp),
        Trial::ignorable_test("datapath over TAP devices", over_tap),
        Trial::ignorable_test("datapath over veth pairs with AF_PACKET", over_veth),
        Trial::ignorable_test("a veth port's link down and up", link_down_and_up),
        Trial::ignorable_test("two workers share veth ports by flow, flows in order", two_workers_over_veth),
        Trial::ignorable_test("two workers share multi-queue TAP ports by flow, flows in order", two_workers_over_tap),
        Trial::ignorable_test(
            "the kernel's fanout by shard agrees with the table",
            fanout_by_shard_agrees_with_the_table,
        ),
        Trial::ignorable_test("a TAP's queues by shard agree with the table", tap_queues_by_shard_agree_with_the_table),
        Trial::ignorable_test(
            "copies over the collector link's MTU arrive as fragments the collector host reassembles",
            copies_over_the_collector_mtu,
        ),
        Trial::ignorable_test("ICMP errors on a UDP-wire port are counted and survived", icmp_errors_on_the_udp_wire),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
