//! SIM: end to end, on the embedded target. Each sample capture of the project (`pcaps/`,
//! built into the suite) is replayed through the project's VNF simulator and the reference
//! device (imitating the run's fault, if any), in virtual time, under two policies: everything
//! offloaded FORWARD after two packets, and a mix of MIRROR, SNOOP and DROP offloaded after the
//! first packet. Every frame must be accounted for exactly once: seen by the VNF or counted by
//! the device, per flow and per direction, against the capture counted independently.

use opof_device::table::TableConfig;
use opof_traffic::capture::read_all;
use opof_vnf::policy::Policy;
use opof_vnf::sim::{simulate, SimConfig};

use super::{case, Case};
use crate::ctx::Ctx;
use crate::verdict::Finding;

/// The policies each capture is replayed under (the VNF simulator's TOML).
const POLICIES: [(&str, &str); 2] = [
    ("forward after 2 packets", ""),
    (
        "mirror UDP, snoop ports < 1024, drop the rest, after 1 packet",
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
    ),
];

macro_rules! sample {
    ($f:ident, $file:literal) => {
        async fn $f(cx: Ctx) -> Result<(), Finding> {
            replay(cx, $file, include_bytes!(concat!("../../../pcaps/", $file))).await
        }
    };
}

sample!(ipv6_vlan, "ipv6-vlan.pcap");
sample!(long_flows, "long-flows.pcap");
sample!(mixed, "mixed.pcapng");
sample!(real_http_dns, "real-http-dns.pcap");
sample!(short_flows, "short-flows.pcapng");

pub fn cases() -> Vec<Case> {
    const PROC: &str = "Replay the capture through the VNF simulator and the device in virtual time, under each \
                        policy (forward after 2 packets; mirror/snoop/drop after 1).";
    const EXPECT: &str = "Every frame is handled exactly once, by the VNF or by the device's sessions: per flow and \
                          per direction, capture = VNF + device in packets and bytes.";
    vec![
        case!("SIM-1.1", "SIM-1", "ipv6-vlan.pcap: every packet accounted for exactly once", PROC, EXPECT, ipv6_vlan),
        case!("SIM-1.2", "SIM-1", "long-flows.pcap: every packet accounted for exactly once", PROC, EXPECT, long_flows),
        case!("SIM-1.3", "SIM-1", "mixed.pcapng: every packet accounted for exactly once", PROC, EXPECT, mixed),
        case!(
            "SIM-1.4",
            "SIM-1",
            "real-http-dns.pcap: every packet accounted for exactly once",
            PROC,
            EXPECT,
            real_http_dns
        ),
        case!(
            "SIM-1.5",
            "SIM-1",
            "short-flows.pcapng: every packet accounted for exactly once",
            PROC,
            EXPECT,
            short_flows
        ),
    ]
}

async fn replay(cx: Ctx, name: &str, bytes: &'static [u8]) -> Result<(), Finding> {
    if !cx.virtual_time() {
        return Err(Finding::Skip(
            "SIM replays captures through the project's VNF simulator and the reference device in virtual time: \
             embedded target only"
                .into(),
        ));
    }
    let fault = cx.config().faults;
    let name = name.to_string();
    let outcome = tokio::task::spawn_blocking(move || -> Result<Vec<(String, serde_json::Value)>, Finding> {
        let dir = tempfile::tempdir().map_err(|e| Finding::Error(format!("a temporary folder: {e}")))?;
        let path = dir.path().join(&name);
        std::fs::write(&path, bytes).map_err(|e| Finding::Error(format!("{}: {e}", path.display())))?;
        let frames = read_all(&path).map_err(|e| Finding::Error(format!("{name}: {e}")))?;
        let mut measured = Vec::new();
        for (label, text) in POLICIES {
            let policy = Policy::parse(text).map_err(|e| Finding::Error(format!("policy {label:?}: {e}")))?;
            let config = SimConfig {
                policy,
                table: TableConfig { capacity: 65_536, ..TableConfig::default() },
                fault,
                ..SimConfig::default()
            };
            let r =
                simulate(frames.clone(), &config, |_| {}).map_err(|e| Finding::Error(format!("simulation: {e}")))?;
            if !r.balanced || r.flows.iter().any(|f| !f.balanced) {
                let bad: Vec<String> = r
                    .flows
                    .iter()
                    .filter(|f| !f.balanced)
                    .take(3)
                    .map(|f| {
                        format!(
                            "{} {} → {}: capture {:?}, VNF {:?}, device {:?}",
                            f.protocol, f.client, f.server, f.capture, f.vnf, f.device
                        )
                    })
                    .collect();
                return Err(Finding::Fail(format!(
                    "{name}, policy {label:?}: not every packet is accounted for exactly once: {}; {}",
                    r.problems.join("; "),
                    bad.join("; ")
                )));
            }
            measured.push((
                format!("{label}: frames / offloaded flows / device frames"),
                serde_json::json!([r.totals.frames, r.totals.flows_offloaded, r.totals.device_frames]),
            ));
        }
        Ok(measured)
    })
    .await
    .map_err(|e| Finding::Error(format!("the simulation task failed: {e}")))??;
    for (k, v) in outcome {
        cx.measure(&k, v);
    }
    Ok(())
}
