//! Traffic access to a target's ports, for the DP and traffic-driven TMO cases.
//!
//! - `embedded`: the reference device's datapath on the in-memory wire, in the run's virtual
//!   time: a frame is handled the moment it is sent, and what comes out is exact.
//! - An external device (`endpoint`, `image`): the suite holds the far end of each of the
//!   device's ports ([`opof_traffic::port::Peer`]: a veth's other end or the kernel side of a
//!   TAP through AF_PACKET, a TAP the suite holds, or a UDP wire socket), named by the user in
//!   `OPOF_PORTS` / `--ports`. Frames travel in real time; the suite waits for what it expects
//!   and then a quiet period for anything more.
//!
//! The suite's frames carry source MACs of its own (`02:0f:0f:...`); anything else seen on a
//! port (the kernel's own chatter on an interface, another host's frames) is foreign: kept in
//! the evidence, left out of the checks. Everything sent and received during a case is kept
//! with its time and written as pcapng per port (see [`crate::runner`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opof_device::clock::{Clock, ManualClock};
use opof_device::datapath::mem::MemDatapath;
pub use opof_device::datapath::PortId;
use opof_traffic::port::{Peer, PortSpec};
use parking_lot::Mutex;

/// Source MAC of the suite's host on network A (behind ext0) and on network B (behind ext1).
pub const MAC_A: [u8; 6] = [0x02, 0x0f, 0x0f, 0x00, 0x00, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0x0f, 0x0f, 0x00, 0x00, 0x0b];

/// How long an external device may take to put out what the suite expects of a step.
pub const WAIT: Duration = Duration::from_secs(3);
/// Quiet time after the expected frames (or after sending, when none is expected) during which
/// anything more the device sends is still collected.
pub const QUIET: Duration = Duration::from_millis(150);

/// Whether a frame is one of the suite's (by its source MAC, or the inner source MAC of a GRE
/// copy).
pub fn ours(frame: &[u8]) -> bool {
    let mine = |f: &[u8]| f.len() >= 12 && f[6..9] == MAC_A[..3];
    mine(frame) || gre_inner(frame).is_some_and(|g| mine(&g.inner))
}

/// A GRE copy taken apart: the outer destination (the next hop) and the encapsulated frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GreCopy {
    pub next_hop: IpAddr,
    pub protocol: u16,
    pub inner: Vec<u8>,
}

/// Decapsulates an Ethernet frame carrying GRE in IPv4 or IPv6 (no GRE options other than
/// checksum, key and sequence, which are skipped). `None` when it is not GRE.
pub fn gre_inner(frame: &[u8]) -> Option<GreCopy> {
    let be16 = |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?])) };
    let mut at = 12;
    let mut ethertype = be16(at)?;
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        at += 4;
        ethertype = be16(at)?;
    }
    at += 2;
    let (next_hop, gre_at) = match ethertype {
        0x0800 => {
            let ip = frame.get(at..at + 20)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4 || ip[9] != 47 || ihl < 20 {
                return None;
            }
            (IpAddr::from(<[u8; 4]>::try_from(&ip[16..20]).ok()?), at + ihl)
        }
        0x86dd => {
            let ip = frame.get(at..at + 40)?;
            if ip[0] >> 4 != 6 || ip[6] != 47 {
                return None;
            }
            (IpAddr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?), at + 40)
        }
        _ => return None,
    };
    let g = frame.get(gre_at..gre_at + 4)?;
    if g[1] & 0x07 != 0 {
        return None; // not GRE version 0
    }
    let options = [0x80u8, 0x20, 0x10].iter().filter(|&&bit| g[0] & bit != 0).count() * 4;
    let protocol = u16::from_be_bytes([g[2], g[3]]);
    let inner = frame.get(gre_at + 4 + options..)?.to_vec();
    Some(GreCopy { next_hop, protocol, inner })
}

/// One frame the case sent into a port (`inbound`) or received from one, with its time.
#[derive(Clone, Debug)]
pub struct Captured {
    pub ts_ns: u64,
    pub port: PortId,
    /// Sent by the suite into the device's port.
    pub inbound: bool,
    pub data: Vec<u8>,
}

/// The suite's frames the device put out during a step, per port, in order of arrival.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    pub ports: BTreeMap<PortId, Vec<Vec<u8>>>,
    /// Frames that were not the suite's (left out of `ports`).
    pub foreign: usize,
}

impl Outputs {
    pub fn on(&self, p: PortId) -> &[Vec<u8>] {
        self.ports.get(&p).map_or(&[], Vec::as_slice)
    }

    /// "ext1: 3, vnf0: 1" (ports with something only).
    pub fn summary(&self) -> String {
        let v: Vec<String> =
            self.ports.iter().filter(|(_, f)| !f.is_empty()).map(|(p, f)| format!("{p}: {}", f.len())).collect();
        if v.is_empty() {
            "nothing".into()
        } else {
            v.join(", ")
        }
    }
}

enum Access {
    /// The embedded device's datapath in virtual time.
    Mem { dp: Mutex<Box<MemDatapath>>, clock: Arc<ManualClock> },
    /// The far ends of an external device's ports.
    Ports { peers: Vec<(PortId, Peer)> },
}

/// Access to a target's ports.
pub struct Traffic {
    access: Access,
    /// What it is, for the report ("in-memory", or the port specs).
    pub description: String,
}

impl Traffic {
    pub fn in_memory(dp: MemDatapath, clock: Arc<ManualClock>) -> Traffic {
        Traffic {
            access: Access::Mem { dp: Mutex::new(Box::new(dp)), clock },
            description: "in-memory wire (embedded)".into(),
        }
    }

    /// Opens the suite's end of each named port.
    pub fn ports(specs: &[(PortId, PortSpec)]) -> Result<Traffic, String> {
        let mut peers = Vec::new();
        for (p, spec) in specs {
            let peer = Peer::open(spec).map_err(|e| format!("port {p} ({spec}): {e}"))?;
            peers.push((*p, peer));
        }
        let description = specs.iter().map(|(p, s)| format!("{p}={s}")).collect::<Vec<_>>().join(",");
        Ok(Traffic { access: Access::Ports { peers }, description })
    }

    /// Whether frames are handled at once, in virtual time.
    pub fn is_virtual(&self) -> bool {
        matches!(self.access, Access::Mem { .. })
    }

    /// The ports the suite can send into and receive from.
    pub fn has(&self, p: PortId) -> bool {
        match &self.access {
            Access::Mem { .. } => true,
            Access::Ports { peers } => peers.iter().any(|(q, _)| *q == p),
        }
    }

    /// Sends `frames` in order, each into its port, and collects the suite's frames the device
    /// puts out: in virtual time, exactly what the frames caused; in real time, until each port
    /// of `expect` has had at least its count (or [`WAIT`] has passed), and then for [`QUIET`].
    /// Everything sent and seen goes to `log`.
    pub fn exchange(
        &self,
        frames: &[(PortId, Vec<u8>)],
        expect: &[(PortId, usize)],
        log: &mut Vec<Captured>,
    ) -> Result<Outputs, String> {
        self.step(frames, expect, true, log)
    }

    /// Collects what the device puts out, as [`Traffic::exchange`] does, without sending and
    /// without setting aside what arrived before (frames sent by [`Traffic::send_paced`]).
    pub fn collect(&self, expect: &[(PortId, usize)], log: &mut Vec<Captured>) -> Result<Outputs, String> {
        self.step(&[], expect, false, log)
    }

    /// Sends `frames` into `port` one every `pace`, counting them in `sent` as they go (so that
    /// another task can tell which were sent before an event). In virtual time the frames are
    /// handled at once, with nothing in flight.
    pub fn send_paced(
        &self,
        port: PortId,
        frames: &[Vec<u8>],
        pace: Duration,
        sent: &std::sync::atomic::AtomicUsize,
        log: &mut Vec<Captured>,
    ) -> Result<(), String> {
        for f in frames {
            match &self.access {
                Access::Mem { .. } => return Err("a paced stream needs real time".into()),
                Access::Ports { peers } => {
                    let x = peers.iter().find(|(q, _)| *q == port).map(|(_, x)| x);
                    let x = x.ok_or_else(|| format!("no access to port {port}"))?;
                    log.push(Captured { ts_ns: wall_ns(), port, inbound: true, data: f.clone() });
                    x.send(f).map_err(|e| e.to_string())?;
                }
            }
            sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(pace);
        }
        Ok(())
    }

    fn step(
        &self,
        frames: &[(PortId, Vec<u8>)],
        expect: &[(PortId, usize)],
        drain: bool,
        log: &mut Vec<Captured>,
    ) -> Result<Outputs, String> {
        let mut out = Outputs::default();
        for p in PortId::ALL {
            out.ports.insert(p, Vec::new());
        }
        match &self.access {
            Access::Mem { dp, clock } => {
                let mut dp = dp.lock();
                let ts = clock.now().0;
                // What is left from before: set aside by a new exchange, collected otherwise.
                for p in PortId::ALL {
                    for data in dp.take(p) {
                        if !drain {
                            keep(&mut out, p, data, ts, log);
                        }
                    }
                }
                for (port, f) in frames {
                    log.push(Captured { ts_ns: ts, port: *port, inbound: true, data: f.clone() });
                    dp.receive(*port, &[f.as_slice()]);
                    for p in PortId::ALL {
                        for data in dp.take(p) {
                            keep(&mut out, p, data, ts, log);
                        }
                    }
                }
            }
            Access::Ports { peers } => {
                let peer = |p: PortId| peers.iter().find(|(q, _)| *q == p).map(|(_, x)| x);
                // Whatever is still arriving from an earlier step is not this step's.
                for (p, x) in peers.iter().filter(|_| drain) {
                    while let Some(data) = x.recv(Duration::ZERO).map_err(|e| e.to_string())? {
                        log.push(Captured { ts_ns: wall_ns(), port: *p, inbound: false, data });
                    }
                }
                for (port, f) in frames {
                    let x = peer(*port).ok_or_else(|| format!("no access to port {port}"))?;
                    log.push(Captured { ts_ns: wall_ns(), port: *port, inbound: true, data: f.clone() });
                    x.send(f).map_err(|e| e.to_string())?;
                }
                let start = Instant::now();
                let mut quiet_from: Option<Instant> = None;
                // Foreign chatter never holds the step open past WAIT and two quiet periods.
                while start.elapsed() < WAIT + 2 * QUIET {
                    let mut got = false;
                    for (p, x) in peers {
                        while let Some(data) = x.recv(Duration::from_millis(1)).map_err(|e| e.to_string())? {
                            got |= keep(&mut out, *p, data, wall_ns(), log);
                        }
                    }
                    let met = expect.iter().all(|(p, n)| out.on(*p).len() >= *n);
                    if met || start.elapsed() >= WAIT {
                        let q = *quiet_from.get_or_insert_with(Instant::now);
                        if got {
                            quiet_from = Some(Instant::now());
                        } else if q.elapsed() >= QUIET {
                            break;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The time of the evidence: the virtual clock, or the wall clock.
    pub fn now_ns(&self) -> u64 {
        match &self.access {
            Access::Mem { clock, .. } => clock.now().0,
            Access::Ports { .. } => wall_ns(),
        }
    }
}

/// Files a received frame: among the outputs when it is the suite's (then `true`), as foreign
/// otherwise; in the evidence either way.
fn keep(out: &mut Outputs, port: PortId, data: Vec<u8>, ts_ns: u64, log: &mut Vec<Captured>) -> bool {
    let mine = ours(&data);
    if mine {
        out.ports.entry(port).or_default().push(data.clone());
    } else {
        out.foreign += 1;
    }
    log.push(Captured { ts_ns, port, inbound: false, data });
    mine
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Parses `OPOF_PORTS` / `--ports`: `ext0=SPEC,ext1=SPEC,...` where SPEC is a port spec from
/// the suite's side (`afpacket:IF`, `tap:NAME`, `udp:DEVICE,bind=LOCAL`); a comma followed by
/// something that is not `PORT=` continues the previous spec (`bind=...`).
pub fn parse_ports(s: &str) -> Result<Vec<(PortId, PortSpec)>, String> {
    let mut items: Vec<String> = Vec::new();
    for piece in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let names_a_port = piece.split_once('=').is_some_and(|(k, _)| k.parse::<PortId>().is_ok());
        match items.last_mut() {
            Some(last) if !names_a_port => {
                last.push(',');
                last.push_str(piece);
            }
            _ => items.push(piece.to_string()),
        }
    }
    let mut out: Vec<(PortId, PortSpec)> = Vec::new();
    for item in items {
        let (name, spec) =
            item.split_once('=').ok_or_else(|| format!("{item:?}: expected PORT=SPEC (e.g. ext0=afpacket:veth1)"))?;
        let port: PortId = name.trim().parse()?;
        let spec: PortSpec = spec.trim().parse().map_err(|e| format!("{port}: {e}"))?;
        if matches!(spec, PortSpec::Mem) {
            return Err(format!("{port}: the in-memory wire is the embedded target's own; name a kernel port"));
        }
        if out.iter().any(|(p, _)| *p == port) {
            return Err(format!("{port} is named twice"));
        }
        out.push((port, spec));
    }
    if out.is_empty() {
        return Err("no port named (ext0=SPEC,ext1=SPEC,vnf0=SPEC,vnf1=SPEC[,collector=SPEC])".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_parse_with_udp_binds() {
        let v =
            parse_ports("ext0=afpacket:p0, ext1=tap:t1,vnf0=udp:127.0.0.1:7000,bind=127.0.0.1:6000,vnf1=afpacket:p3")
                .unwrap();
        let names: Vec<String> = v.iter().map(|(p, s)| format!("{p}={s}")).collect();
        assert_eq!(names.len(), 4);
        assert_eq!(v[2].0, PortId::Vnf0);
        assert!(matches!(v[2].1, PortSpec::Udp { bind: Some(_), .. }), "{:?}", v[2].1);
        assert!(parse_ports("ext0=afpacket:a,ext0=afpacket:b").unwrap_err().contains("twice"));
        assert!(parse_ports("wan=afpacket:a").unwrap_err().contains("not a port"));
        assert!(parse_ports("ext0=mem").is_err());
        assert!(parse_ports("").is_err());
    }

    #[test]
    fn gre_copies_are_taken_apart_and_foreign_frames_told_apart() {
        let inner = {
            let mut f = vec![0xffu8; 6];
            f.extend(MAC_A);
            f.extend([0x08, 0x00, 0x45]);
            f
        };
        let mut outer = vec![0xff; 6];
        outer.extend([0x02, 0, 0x5e, 0, 0, 1, 0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 47, 0, 0, 192, 0, 2, 1, 198, 51, 100, 7];
        ip.extend([0, 0, 0x65, 0x58]);
        outer.extend(ip);
        outer.extend(&inner);
        let g = gre_inner(&outer).unwrap();
        assert_eq!(g.next_hop, IpAddr::from([198, 51, 100, 7]));
        assert_eq!((g.protocol, g.inner.as_slice()), (0x6558, inner.as_slice()));
        assert!(ours(&outer) && ours(&inner));
        assert!(!ours(&[0u8; 60]) && gre_inner(&[0u8; 60]).is_none() && gre_inner(&[]).is_none());
    }
}
