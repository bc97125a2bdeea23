//! `opof replay`: a capture's frames out of a port, paced or as fast as possible.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use super::progress_bar;

#[derive(Args)]
pub(crate) struct ReplayArgs {
    /// The capture (pcap or pcapng, Ethernet).
    capture: PathBuf,
    /// Port: udp:PEER[,bind=ADDR], tap:NAME or afpacket:IF.
    #[arg(long)]
    to: opof_traffic::port::PortSpec,
    /// Real time, this many times faster (default 1: the capture's own timing).
    #[arg(long, default_value_t = 1.0, conflicts_with = "fast")]
    speed: f64,
    /// As fast as possible, no pacing.
    #[arg(long)]
    fast: bool,
    /// Passes over the capture.
    #[arg(long, default_value_t = 1)]
    loops: u32,
    /// Write every frame sent, with the time it was sent, to this pcapng (evidence).
    #[arg(long)]
    record: Option<PathBuf>,
}

pub(crate) fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    use opof_traffic::capture::{CaptureWriter, Format};
    use opof_traffic::replay::{replay, Pace, ReplayOptions};
    if a.to == opof_traffic::port::PortSpec::Mem {
        bail!("--to mem is the in-process wire; from the command line use udp:, tap: or afpacket:");
    }
    let mut sink = opof_traffic::port::open(&a.to)?;
    let mut record = match &a.record {
        Some(p) => Some(CaptureWriter::create_as(p, Format::PcapNg, &[&a.to.to_string()])?),
        None => None,
    };
    let opts =
        ReplayOptions { pace: if a.fast { Pace::AsFast } else { Pace::RealTime { speed: a.speed } }, loops: a.loops };
    // A progress bar on a terminal (the capture is counted first: a quick pass); nothing otherwise.
    let bar = if std::io::stderr().is_terminal() {
        let per_pass = opof_traffic::capture::CaptureReader::open(&a.capture)?.count() as u64;
        progress_bar(per_pass * u64::from(a.loops), "frames")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let summary = replay(&a.capture, sink.as_mut(), &opts, record.as_mut(), |n| bar.set_position(n))?;
    bar.finish_and_clear();
    if let Some(w) = record {
        w.finish()?;
    }
    eprintln!(
        "{}: {} frames read, {} sent ({} bytes) out of {} in {:.3} s: {:.0} frames/s, {:.1} Mbit/s, {} dropped",
        a.capture.display(),
        summary.read,
        summary.frames,
        summary.bytes,
        summary.port,
        summary.seconds,
        summary.frames_per_second,
        summary.bits_per_second / 1e6,
        summary.dropped
    );
    println!("{}", serde_json::to_string(&summary)?);
    if summary.frames == 0 && summary.read > 0 {
        bail!(
            "none of the {} frames read left {}: the port dropped every one (is the interface up, the peer listening?)",
            summary.read,
            summary.port
        );
    }
    Ok(())
}
