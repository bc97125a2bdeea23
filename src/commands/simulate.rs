//! `opof simulate`: device and VNF in one process on the in-memory wire, in virtual time.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use opof_device::datapath::DatapathConfig;
use opof_device::table::TableConfig;

use super::progress_bar;

#[derive(Args)]
pub(crate) struct SimulateArgs {
    /// The capture (pcap or pcapng, Ethernet).
    capture: PathBuf,
    /// The VNF's policy (TOML: defaults and rules, first match wins; the format is in the
    /// README, under `opof simulate`). Default: forward everything, offload after 2 packets.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Flows listed in the text report (all of them in JSON).
    #[arg(long, default_value_t = 40)]
    show_flows: usize,
    /// Virtual time from the VNF's decision to offload to the device's commit, microseconds.
    #[arg(long, default_value_t = 1000)]
    offload_latency_us: u64,
    /// The device's idle timeout of TCP sessions added with cacheTimeout 0, seconds.
    #[arg(long, default_value_t = TableConfig::default().tcp_timeout)]
    tcp_timeout: u32,
    /// The device's idle timeout of UDP sessions added with cacheTimeout 0, seconds.
    #[arg(long, default_value_t = TableConfig::default().udp_timeout)]
    udp_timeout: u32,
    /// Close on idle timeout only (ignore TCP FIN and RST), as `opof device --timeout-only`.
    #[arg(long)]
    timeout_only: bool,
}

pub(crate) fn simulate(a: SimulateArgs) -> anyhow::Result<()> {
    use opof_vnf::sim::{simulate, SimConfig};
    if let Some(p) = &a.report {
        super::check_report_path(p)?;
    }
    let policy = match &a.policy {
        Some(p) => opof_vnf::policy::Policy::load(p).map_err(anyhow::Error::msg)?,
        None => opof_vnf::policy::Policy::default(),
    };
    let base = SimConfig::default();
    let config = SimConfig {
        policy,
        table: TableConfig { tcp_timeout: a.tcp_timeout, udp_timeout: a.udp_timeout, ..base.table },
        datapath: DatapathConfig { close_on_tcp_flags: !a.timeout_only, ..base.datapath },
        offload_latency_ns: a.offload_latency_us.saturating_mul(1000),
        fault: Default::default(),
    };
    let bar = if std::io::stderr().is_terminal() {
        progress_bar(opof_traffic::capture::CaptureReader::open(&a.capture)?.count() as u64, "frames")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut read_error = None;
    let frames = opof_traffic::capture::CaptureReader::open(&a.capture)?.map_while(|f| match f {
        Ok(f) => Some(f),
        Err(e) => {
            read_error = Some(e);
            None
        }
    });
    let report = simulate(frames, &config, |n| bar.set_position(n)).map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    if let Some(e) = read_error {
        bail!("{e}");
    }
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &a.report {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        println!("{json}");
    } else {
        print!("{}", sim_text(&a.capture, &report, a.show_flows));
    }
    if !report.balanced {
        bail!("the account does not balance: {}", report.problems.join("; "));
    }
    Ok(())
}

/// The text form of a simulation report.
pub(crate) fn sim_text(capture: &std::path::Path, r: &opof_vnf::sim::SimReport, show: usize) -> String {
    use std::fmt::Write as _;
    let t = &r.totals;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}: {} frames ({} bytes, {} of no TCP/UDP flow), {} flows over {:.3} s of capture, simulated in {:.3} s",
        capture.display(),
        t.frames,
        t.bytes,
        t.other_frames,
        t.flows,
        t.capture_seconds,
        t.wall_seconds
    );
    let _ = writeln!(
        o,
        "\n{:<5} {:<45} {:<45} {:>9} {:>9} {:>9} {:>8} {:<20} {:>3} {:>4} {:>4} {:>4} {:>4}",
        "proto",
        "client",
        "server",
        "capture",
        "vnf",
        "device",
        "balanced",
        "action",
        "off",
        "tmo",
        "fin",
        "rst",
        "del"
    );
    for f in r.flows.iter().take(show) {
        let _ = writeln!(
            o,
            "{:<5} {:<45} {:<45} {:>9} {:>9} {:>9} {:>8} {:<20} {:>3} {:>4} {:>4} {:>4} {:>4}",
            f.protocol,
            f.client,
            f.server,
            f.capture.total_packets(),
            f.vnf.total_packets(),
            f.device.total_packets(),
            if f.balanced { "yes" } else { "NO" },
            f.action,
            f.offloads,
            f.closes.timeout,
            f.closes.finack,
            f.closes.rst,
            f.closes.deleted
        );
    }
    if r.flows.len() > show {
        let _ = writeln!(o, "... and {} more flows (--show-flows N, or --json for all)", r.flows.len() - show);
    }
    let _ = writeln!(o, "\ntotal");
    let _ = writeln!(o, "  frames handled by the VNF      {:>12}", t.vnf_frames + t.other_frames);
    let _ = writeln!(
        o,
        "  frames handled by the device   {:>12}  (forwarded {}, dropped {}, mirrored {}, snooped {}; {} collector copies)",
        t.device_frames, t.device_forwarded, t.device_dropped, t.device_mirrored, t.device_snooped, t.collector_copies
    );
    let _ = writeln!(o, "  delivered (ext0 + ext1)        {:>12}", t.delivered);
    let _ = writeln!(o, "  dropped by the VNF             {:>12}", t.vnf_dropped);
    let _ = writeln!(
        o,
        "  flows offloaded                {:>12}  (requests {}, accepted {}, table full {}, already existing {}, rejected {})",
        t.flows_offloaded,
        r.vnf.offload_requests,
        r.vnf.offload_accepted,
        r.vnf.table_full,
        r.vnf.already_exists,
        r.vnf.rejected
    );
    let _ = writeln!(
        o,
        "  closes                         timeout {}, finack {}, rst {}, deleted at the end {}",
        t.closes.timeout, t.closes.finack, t.closes.rst, t.closes.deleted
    );
    if r.balanced {
        let _ = writeln!(
            o,
            "\nbalanced: every one of the {} frames was handled exactly once ({} by the VNF, {} by the device)",
            t.frames,
            t.vnf_frames + t.other_frames,
            t.device_frames
        );
    } else {
        let _ = writeln!(o, "\nNOT BALANCED:");
        for p in &r.problems {
            let _ = writeln!(o, "  {p}");
        }
    }
    o
}
