//! `opof simulate`: reference device, VNF and replayer in one process, on the in-memory wire,
//! in virtual time driven by the capture's timestamps.
//!
//! Each frame of the capture enters the device on ext0 when it travels as its flow's first
//! frame did (the client's side) and on ext1 otherwise (frames of no TCP/UDP flow enter on
//! ext0). What the device sends to the VNF is handed to the [`Vnf`]; what the VNF lets through
//! goes back into the device on the other VNF port and leaves on the other external port.
//! addSession streams reach the device `offload_latency` after the VNF decided them (virtual
//! time), so frames in flight meanwhile still go through the VNF, as on a real control plane.
//! Closed sessions are handed to the VNF as the device closes them; at the end every session
//! left is deleted and its final counters handed over too.
//!
//! The account is then checked against the capture itself, counted independently (per flow,
//! per direction, by `opof_traffic::flows`): every frame must have been handled exactly once,
//! by the VNF or by the device.

use std::collections::HashMap;
use std::sync::Arc;

use opof_device::clock::{Clock, ManualClock};
use opof_device::control::Device;
use opof_device::datapath::mem::MemDatapath;
use opof_device::datapath::{ActionKind, DatapathConfig, PortId};
use opof_device::table::{Candidate, TableConfig};
use opof_proto::domain::{SessionSpec, Timestamp};
use opof_traffic::capture::Frame;
use opof_traffic::flows::{five_tuple, FlowAccount, Key};
use serde::Serialize;

use crate::policy::Policy;
use crate::vnf::{Closes, Counts, Side, Vnf, VnfStats};

/// How a simulation runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub policy: Policy,
    pub table: TableConfig,
    pub datapath: DatapathConfig,
    /// Time from the VNF's decision to offload to the device's commit, nanoseconds.
    pub offload_latency_ns: u64,
    /// The device imitates this defect (to show the conformance suite's SIM cases catch it).
    pub fault: opof_device::faults::Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            policy: Policy::default(),
            table: TableConfig { capacity: 1 << 20, ..TableConfig::default() },
            datapath: DatapathConfig::default(),
            offload_latency_ns: 1_000_000,
            fault: opof_device::faults::Faults::NONE,
        }
    }
}

/// One flow's account.
#[derive(Clone, Debug, Serialize)]
pub struct FlowReport {
    pub protocol: &'static str,
    pub client: String,
    pub server: String,
    /// What the capture holds, per direction [client → server, server → client].
    pub capture: Counts,
    /// What the VNF handled itself.
    pub vnf: Counts,
    /// What the device handled (its sessions' final counters, summed).
    pub device: Counts,
    pub action: String,
    pub offloads: u32,
    pub closes: Closes,
    /// capture == vnf + device, packets and bytes, both directions.
    pub balanced: bool,
}

/// Totals of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub frames: u64,
    pub bytes: u64,
    /// Frames of no TCP/UDP flow (not part of any flow's account).
    pub other_frames: u64,
    pub flows: usize,
    pub flows_offloaded: usize,
    /// Frames the VNF handled / the device handled by its sessions.
    pub vnf_frames: u64,
    pub device_frames: u64,
    pub device_forwarded: u64,
    pub device_dropped: u64,
    pub device_mirrored: u64,
    pub device_snooped: u64,
    pub collector_copies: u64,
    /// Frames that left on ext0 or ext1, and frames dropped by the VNF.
    pub delivered: u64,
    pub vnf_dropped: u64,
    pub closes: Closes,
    /// Capture duration and the wall time the simulation took, seconds.
    pub capture_seconds: f64,
    pub wall_seconds: f64,
}

/// The outcome of a simulation.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    pub totals: Totals,
    pub vnf: VnfStats,
    pub flows: Vec<FlowReport>,
    /// Every frame accounted for exactly once: each flow balanced, and frames in = delivered +
    /// dropped by the device + dropped by the VNF.
    pub balanced: bool,
    /// What does not balance, if anything.
    pub problems: Vec<String>,
}

/// A pending addSession stream: when it reaches the device, and what it holds.
struct InFlight {
    due: u64,
    specs: Vec<SessionSpec>,
}

/// Runs the capture's frames (in time order) through device and VNF. `progress` is called with
/// the number of frames handled so far, now and then.
pub fn simulate(
    frames: impl IntoIterator<Item = Frame>,
    config: &SimConfig,
    mut progress: impl FnMut(u64),
) -> Result<SimReport, String> {
    let started = std::time::Instant::now();
    let clock = Arc::new(ManualClock::new(Timestamp(0)));
    let device = Device::with_fault(config.table.clone(), clock.clone(), config.fault).map_err(|e| e.to_string())?;
    let mut dp = MemDatapath::virtual_time(device.clone(), config.datapath.clone(), clock.clone());
    let mut vnf = Vnf::new(config.policy.clone(), 1);
    let mut truth = FlowAccount::default();
    let mut client_side: HashMap<Key, bool> = HashMap::new();
    let mut in_flight: Vec<InFlight> = Vec::new();
    let mut totals = Totals::default();
    let (mut first_ts, mut last_ts) = (None, 0u64);
    for frame in frames {
        let ts = frame.ts_ns;
        first_ts.get_or_insert(ts);
        last_ts = last_ts.max(ts);
        truth.add(&frame);
        totals.frames += 1;
        totals.bytes += frame.data.len() as u64;
        commit_due(&device, &mut vnf, &mut in_flight, ts, &clock);
        // Sessions idle past their timeout by now close before this frame arrives, and the VNF
        // hears of it at once (the follow-mode closed-session stream).
        clock.set(Timestamp(ts));
        device.advance();
        for r in device.drain_closed(usize::MAX) {
            vnf.closed(&r);
        }
        // The side it enters on: ext0 for the flow's first direction.
        let port = match five_tuple(&frame.data) {
            Some(k) => {
                let rev = (k.0, k.3, k.4, k.1, k.2);
                if client_side.contains_key(&rev) {
                    PortId::Ext1
                } else {
                    client_side.entry(k).or_insert(true);
                    PortId::Ext0
                }
            }
            None => {
                totals.other_frames += 1;
                PortId::Ext0
            }
        };
        dp.receive_at(&[(Timestamp(ts), port, &frame.data)]);
        // The VNF's side: what it gets on A goes back in on vnf1, on B on vnf0.
        for (from, side, back) in [(PortId::Vnf0, Side::A, PortId::Vnf1), (PortId::Vnf1, Side::B, PortId::Vnf0)] {
            for f in dp.take(from) {
                if vnf.frame(side, &f, Timestamp(ts)) {
                    dp.receive_at(&[(Timestamp(ts), back, &f)]);
                } else {
                    totals.vnf_dropped += 1;
                }
            }
        }
        totals.delivered += (dp.sent(PortId::Ext0).len() + dp.sent(PortId::Ext1).len()) as u64;
        totals.collector_copies += dp.sent(PortId::Collector).len() as u64;
        dp.clear();
        for r in device.drain_closed(usize::MAX) {
            vnf.closed(&r);
        }
        let specs = vnf.take_offloads();
        if !specs.is_empty() {
            in_flight.push(InFlight { due: ts + config.offload_latency_ns, specs });
        }
        if totals.frames.is_multiple_of(4096) {
            progress(totals.frames);
        }
    }
    progress(totals.frames);
    // The end: what is still on its way reaches the device, then every session left is deleted
    // (its final counters join the VNF's account), after any that closed first.
    commit_due(&device, &mut vnf, &mut in_flight, u64::MAX, &clock);
    for r in device.drain_closed(usize::MAX) {
        vnf.closed(&r);
    }
    for id in vnf.offloaded() {
        if let Some(r) = device.delete(id) {
            vnf.closed(&r);
        }
    }
    let m = dp.metrics().snapshot();
    totals.device_forwarded = m.offloaded(ActionKind::Forward);
    totals.device_dropped = m.offloaded(ActionKind::Drop);
    totals.device_mirrored = m.offloaded(ActionKind::Mirror);
    totals.device_snooped = m.offloaded(ActionKind::Snoop);
    totals.capture_seconds = first_ts.map_or(0.0, |f| (last_ts - f) as f64 / 1e9);
    Ok(report(truth, &vnf, totals, started))
}

/// Commits the streams due by `now` (in the order they were decided), each as one addSession.
fn commit_due(device: &Device, vnf: &mut Vnf, in_flight: &mut Vec<InFlight>, now: u64, clock: &ManualClock) {
    while let Some(first) = in_flight.first() {
        if first.due > now {
            break;
        }
        let s = in_flight.remove(0);
        if s.due != u64::MAX && now != u64::MAX {
            clock.set(Timestamp(s.due));
        }
        let candidates: Vec<Candidate> = s.specs.iter().map(|&spec| Candidate::Valid(spec)).collect();
        let outcome = device.add(&candidates);
        let at = clock.now();
        vnf.added(&s.specs, &outcome, at, |id| device.get(id));
    }
}

/// The policy's verdict for a flow, as written in a policy file.
fn verdict_name(v: &crate::policy::Verdict) -> String {
    use opof_proto::domain::Action;
    match v {
        crate::policy::Verdict::Inspect => "inspect".into(),
        crate::policy::Verdict::Offload(Action::Drop) => "drop".into(),
        crate::policy::Verdict::Offload(Action::Forward) => "forward".into(),
        crate::policy::Verdict::Offload(Action::Mirror { next_hop }) => format!("mirror:{next_hop}"),
        crate::policy::Verdict::Offload(Action::Snoop { next_hop }) => format!("snoop:{next_hop}"),
    }
}

fn report(truth: FlowAccount, vnf: &Vnf, mut totals: Totals, started: std::time::Instant) -> SimReport {
    let mut problems = Vec::new();
    let mut flows = Vec::new();
    let known: HashMap<Key, usize> = vnf
        .flows()
        .iter()
        .enumerate()
        .map(|(i, f)| ((f.key.protocol() as u8, f.key.src(), f.key.src_port(), f.key.dst(), f.key.dst_port()), i))
        .collect();
    let mut keys: Vec<&Key> = truth.flows.keys().collect();
    keys.sort();
    for key in keys {
        let (fwd, rev) = &truth.flows[key];
        let capture = Counts { packets: [fwd.packets, rev.packets], bytes: [fwd.bytes, rev.bytes] };
        let proto_num = if key.0 == 6 { opof_proto::domain::Protocol::Tcp } else { opof_proto::domain::Protocol::Udp };
        let f = known.get(&(proto_num as u8, key.1, key.2, key.3, key.4)).map(|&i| &vnf.flows()[i]);
        let (seen, device, action, offloads, closes) = match f {
            Some(f) => (f.seen, f.device, verdict_name(&f.treatment.verdict), f.offloads, f.closes),
            None => (Counts::default(), Counts::default(), "none".into(), 0, Closes::default()),
        };
        let balanced = (0..2).all(|d| {
            capture.packets[d] == seen.packets[d] + device.packets[d]
                && capture.bytes[d] == seen.bytes[d] + device.bytes[d]
        });
        let sock = |a: std::net::IpAddr, p: u16| if a.is_ipv4() { format!("{a}:{p}") } else { format!("[{a}]:{p}") };
        let r = FlowReport {
            protocol: if key.0 == 6 { "tcp" } else { "udp" },
            client: sock(key.1, key.2),
            server: sock(key.3, key.4),
            capture,
            vnf: seen,
            device,
            action,
            offloads,
            closes,
            balanced,
        };
        if !balanced {
            problems.push(format!(
                "{} {} -> {}: capture {:?} packets, VNF {:?} + device {:?}",
                r.protocol, r.client, r.server, capture.packets, seen.packets, device.packets
            ));
        }
        totals.vnf_frames += seen.total_packets();
        totals.device_frames += device.total_packets();
        totals.flows_offloaded += usize::from(offloads > 0);
        totals.closes.timeout += closes.timeout;
        totals.closes.finack += closes.finack;
        totals.closes.rst += closes.rst;
        totals.closes.deleted += closes.deleted;
        flows.push(r);
    }
    totals.flows = flows.len();
    // Frames of no flow went through the VNF too.
    let flow_frames = totals.frames - totals.other_frames;
    if totals.vnf_frames + totals.device_frames != flow_frames {
        problems.push(format!(
            "flow frames: capture {flow_frames}, VNF {} + device {}",
            totals.vnf_frames, totals.device_frames
        ));
    }
    if totals.delivered + totals.device_dropped + totals.vnf_dropped != totals.frames {
        problems.push(format!(
            "frames in {} != delivered {} + dropped by the device {} + dropped by the VNF {}",
            totals.frames, totals.delivered, totals.device_dropped, totals.vnf_dropped
        ));
    }
    let device_handled =
        totals.device_forwarded + totals.device_dropped + totals.device_mirrored + totals.device_snooped;
    if device_handled != totals.device_frames {
        problems.push(format!(
            "the device's datapath handled {device_handled} frames by session, its sessions counted {}",
            totals.device_frames
        ));
    }
    if totals.collector_copies != totals.device_mirrored + totals.device_snooped {
        problems.push(format!(
            "collector copies {} != mirrored {} + snooped {}",
            totals.collector_copies, totals.device_mirrored, totals.device_snooped
        ));
    }
    totals.wall_seconds = started.elapsed().as_secs_f64();
    SimReport { balanced: problems.is_empty(), problems, totals, vnf: vnf.stats, flows }
}
