//! `opof simulate`'s engine on the sample captures and on made-up traffic: every frame is
//! handled exactly once, by the VNF or by the device, for every policy; flows that return after
//! an idle close are offloaded anew; nothing of an offloaded flow reaches the VNF after its
//! session was committed (in virtual time nothing is in flight).

use std::path::Path;

use opof_proto::domain::{FiveTuple, Protocol};
use opof_traffic::capture::{read_all, Frame};
use opof_vnf::policy::Policy;
use opof_vnf::sim::{simulate, SimConfig, SimReport};

fn samples() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pcaps");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .collect();
    v.sort();
    assert!(v.len() >= 5, "the sample captures are in pcaps/");
    v
}

fn run(frames: Vec<Frame>, policy: Policy) -> SimReport {
    simulate(frames, &SimConfig { policy, ..SimConfig::default() }, |_| {}).unwrap()
}

fn assert_balanced(name: &str, r: &SimReport) {
    assert!(r.balanced, "{name}: {:?}", r.problems);
    assert!(r.flows.iter().all(|f| f.balanced), "{name}");
    assert_eq!(r.vnf.after_offload, 0, "{name}: nothing is in flight in virtual time");
    assert_eq!(r.vnf.unknown_closed, 0, "{name}");
}

const POLICIES: [&str; 4] = [
    "",
    "[defaults]\noffload_after = \"handshake\"",
    r#"
    [defaults]
    offload_after = 1
    [[rule]]
    protocol = "udp"
    action = "mirror"
    next_hop = "198.51.100.1"
    [[rule]]
    dst_ports = "0-1023"
    action = "snoop"
    next_hop = "2001:db8::c"
    [[rule]]
    action = "drop"
    "#,
    "[defaults]\naction = \"inspect\"",
];

#[test]
fn every_sample_balances_under_every_policy() {
    let (mut drops, mut copies) = (0, 0);
    for path in samples() {
        let frames = read_all(&path).unwrap();
        for (i, policy) in POLICIES.iter().enumerate() {
            let r = run(frames.clone(), Policy::parse(policy).unwrap());
            let name = format!("{} with policy {i}", path.display());
            assert_balanced(&name, &r);
            let t = &r.totals;
            assert_eq!(t.frames as usize, frames.len(), "{name}");
            match i {
                // Default policy: the device handles most of the traffic of multi-packet flows.
                0 => assert!(t.device_frames > 0 && t.flows_offloaded > 0, "{name}: {t:?}"),
                // Mirror/snoop/drop: copies match the mirrored and snooped frames, and drops
                // happen on both sides.
                2 => {
                    assert_eq!(t.collector_copies, t.device_mirrored + t.device_snooped, "{name}");
                    drops += t.device_dropped + t.vnf_dropped;
                    copies += t.collector_copies;
                }
                // Inspect: nothing offloaded.
                3 => assert_eq!((t.device_frames, t.flows_offloaded, r.vnf.offload_requests), (0, 0, 0), "{name}"),
                _ => {}
            }
        }
    }
    assert!(drops > 0 && copies > 0, "the mixed policy dropped ({drops}) and copied ({copies}) somewhere");
}

/// UDP frames of one flow at the given times (seconds), client to server.
fn udp_flow(times: &[f64], port: u16) -> Vec<Frame> {
    let t = FiveTuple::new(Protocol::Udp, [10, 0, 0, 1].into(), port, [10, 0, 1, 1].into(), 53).unwrap();
    times
        .iter()
        .map(|&s| {
            let mut data = Vec::new();
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4([10, 0, 0, 1], [10, 0, 1, 1], 64)
                .udp(t.src_port(), t.dst_port())
                .write(&mut data, &[0u8; 30])
                .unwrap();
            Frame {
                ts_ns: 1_750_000_000_000_000_000 + (s * 1e9) as u64,
                orig_len: data.len() as u32,
                data,
                interface: 0,
            }
        })
        .collect()
}

#[test]
fn a_flow_that_returns_after_an_idle_close_is_offloaded_anew() {
    // Ten packets a second apart, a 60 s pause (beyond the 10 s cacheTimeout), ten more.
    let mut times: Vec<f64> = (0..10).map(f64::from).collect();
    times.extend((0..10).map(|i| 70.0 + f64::from(i)));
    let policy = Policy::parse("[defaults]\noffload_after = 2\ncache_timeout = 10").unwrap();
    let r = run(udp_flow(&times, 4000), policy);
    assert_balanced("returning flow", &r);
    let f = &r.flows[0];
    assert_eq!(f.offloads, 2, "offloaded, timed out, offloaded again");
    assert_eq!(f.closes.timeout, 1);
    assert_eq!(f.closes.deleted, 1, "the second session is deleted at the end");
    assert_eq!((f.vnf.packets[0], f.device.packets[0]), (4, 16), "2 packets each time before the offload");
}

#[test]
fn a_capture_of_hours_runs_in_virtual_time() {
    // One packet every 10 minutes for 6 hours, cacheTimeout 30 s: 36 sessions, each timing out.
    let times: Vec<f64> = (0..36).map(|i| f64::from(i) * 600.0).collect();
    let policy = Policy::parse("[defaults]\noffload_after = 1").unwrap();
    let r = run(udp_flow(&times, 4001), policy);
    assert_balanced("hours", &r);
    assert!(r.totals.capture_seconds >= 6.0 * 3600.0 - 600.0);
    assert_eq!(r.flows[0].offloads, 36);
    assert_eq!(r.flows[0].closes.timeout, 35);
    assert_eq!(r.flows[0].vnf.packets[0], 36, "each packet was the first of a new offload");
}

/// A device table too small for the traffic: addSession answers `_SESSION_TABLE_FULL`, the VNF
/// keeps those flows, backs off and retries as sessions time out and make room; the account
/// still balances exactly.
#[test]
fn a_full_table_is_handled_and_the_account_still_balances() {
    let mut frames: Vec<Frame> = Vec::new();
    for p in 0..40u16 {
        // Each flow: a packet every 0.5 s for 20 s, flows starting 0.1 s apart.
        let times: Vec<f64> = (0..40).map(|i| f64::from(p) * 0.1 + f64::from(i) * 0.5).collect();
        frames.extend(udp_flow(&times, 5000 + p));
    }
    frames.sort_by_key(|f| f.ts_ns);
    let policy = Policy::parse("[defaults]\noffload_after = 1\ncache_timeout = 2").unwrap();
    let mut config = SimConfig { policy, ..SimConfig::default() };
    config.table.capacity = 8;
    config.table.closed_queue_capacity = 8;
    let r = simulate(frames, &config, |_| {}).unwrap();
    assert_balanced("small table", &r);
    assert!(r.vnf.table_full > 0, "the table filled: {:?}", r.vnf);
    assert!(r.totals.device_frames > 0, "some flows were offloaded");
}

/// IP fragments are frames of no flow for the device and the VNF alike, and for the
/// capture's own account too: a capture with a first fragment (MF set, a UDP header inside)
/// still balances.
#[test]
fn fragments_are_frames_of_no_flow_everywhere() {
    let mut frames = udp_flow(&[0.0, 0.1, 0.2, 0.3], 6000);
    let mut frag = frames[1].clone();
    frag.data[14 + 6] = 0x20; // more fragments, offset 0: the UDP header is there
    frag.ts_ns += 50_000_000;
    frames.insert(2, frag);
    let r = run(frames, Policy::default());
    assert_balanced("fragment", &r);
    assert_eq!(r.totals.other_frames, 1);
}
