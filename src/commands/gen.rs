//! `opof gen`: synthetic flows into a capture, with their ground truth.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::progress_bar;

#[derive(Args)]
pub(crate) struct GenArgs {
    /// Capture to write: .pcapng for pcapng, anything else classic pcap (nanosecond).
    #[arg(long)]
    out: PathBuf,
    /// Ground truth to write (default: the capture's name + .truth.json).
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Number of flows.
    #[arg(long, default_value_t = 100)]
    flows: usize,
    /// Seed: the same seed and options give the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Data packets per flow, both directions together (TCP adds its handshake and close).
    #[arg(long, default_value_t = 10)]
    packets: usize,
    /// Flows starting per second (exponential gaps).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds from a flow's first frame to its last.
    #[arg(long, default_value_t = 1.0)]
    duration: f64,
    /// Frame size in bytes (60 to 9000), or imix (60/590/1514 in the ratio 7:4:1).
    #[arg(long, default_value = "imix")]
    sizes: opof_traffic::gen::Sizes,
    /// Share of UDP flows (0 to 1).
    #[arg(long, default_value_t = 0.3)]
    udp_share: f64,
    /// Share of IPv6 flows.
    #[arg(long, default_value_t = 0.2)]
    ipv6_share: f64,
    /// Share of VLAN-tagged flows.
    #[arg(long, default_value_t = 0.0)]
    vlan_share: f64,
    /// Tags on a tagged flow: 1 (802.1Q) or 2 (802.1ad + 802.1Q).
    #[arg(long, default_value_t = 1)]
    vlan_tags: u8,
    /// Share of TCP flows that end with a RST instead of FINs.
    #[arg(long, default_value_t = 0.2)]
    rst_share: f64,
}

pub(crate) fn gen(a: GenArgs) -> anyhow::Result<()> {
    use opof_traffic::capture::CaptureWriter;
    use opof_traffic::gen::{generate, GenConfig};
    let c = GenConfig {
        flows: a.flows,
        seed: a.seed,
        packets: a.packets,
        rate: a.rate,
        duration: a.duration,
        sizes: a.sizes,
        udp_share: a.udp_share,
        ipv6_share: a.ipv6_share,
        vlan_share: a.vlan_share,
        vlan_tags: a.vlan_tags,
        rst_share: a.rst_share,
        ..GenConfig::default()
    };
    c.validate().map_err(anyhow::Error::msg)?;
    let truth_path = a.truth.unwrap_or_else(|| {
        let mut p = a.out.clone().into_os_string();
        p.push(".truth.json");
        PathBuf::from(p)
    });
    let mut w = CaptureWriter::create(&a.out, &["opof-gen"])?;
    let started = std::time::Instant::now();
    // Frames a flow makes: its data packets, plus the handshake and close of TCP (at most 6).
    let most = (a.flows as u64).saturating_mul(a.packets as u64 + 6);
    let bar = if std::io::stderr().is_terminal() {
        progress_bar(most, "frames (at most)")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut n = 0u64;
    let truth = generate(&c, |f| {
        n += 1;
        if n.is_multiple_of(1024) {
            bar.set_position(n);
        }
        w.write(&f)
    })?;
    w.finish()?;
    bar.finish_and_clear();
    let json = serde_json::to_string_pretty(&truth)?;
    std::fs::write(&truth_path, json).with_context(|| format!("writing {}", truth_path.display()))?;
    let span = truth
        .flows
        .iter()
        .flat_map(|f| [f.forward.last_ns, f.reverse.last_ns])
        .flatten()
        .max()
        .map_or(0.0, |last| (last - c.start_ns) as f64 / 1e9);
    eprintln!(
        "{}: {} frames, {} bytes, {} flows over {span:.3} s of capture time (made in {:.2} s); truth in {}",
        a.out.display(),
        truth.frames,
        truth.bytes,
        truth.flows.len(),
        started.elapsed().as_secs_f64(),
        truth_path.display()
    );
    Ok(())
}
