//! `opof`: the OpenOffload toolkit's command line. Thin: each subcommand parses its options
//! and calls into the workspace's crates.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use opof_conformance::target::{TargetConfig, TargetError, TargetKind};
use opof_conformance::verdict::Profile;
use opof_device::clock::SystemClock;
use opof_device::control::{self, Device, ServeOptions};
use opof_device::datapath::metrics::{self, Metrics};
use opof_device::datapath::uring::{Logic, UringDatapath};
use opof_device::datapath::{CollectorConfig, DatapathConfig, PortId};
use opof_device::table::TableConfig;
use opof_device::tls::{self, ServerTls};
use opof_proto::client::ApiChoice;
use opof_traffic::port::PortSpec;
use tracing::{info, warn};

/// How long Ctrl-C waits for open calls to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "opof",
    version,
    about = "OpenOffload toolkit: reference SmartNIC device, VNF simulator, conformance suite, traffic tools, load generators, TLS material"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the reference device: the SessionTable gRPC server (v1, v2 and v1alpha5 paths) and,
    /// with --port, the datapath on io_uring.
    Device(Box<DeviceArgs>),
    /// Make a CA, a server certificate (with subjectAltName) and a client certificate.
    Certs(CertsArgs),
    /// Load generators against any SessionTable endpoint; print JSON results.
    #[command(subcommand)]
    Bench(opof_benches::load::BenchCommand),
    /// Run the conformance suite against a target; print a summary, write report.json,
    /// junit.xml, report.md and report.html. Exit status: 0 no FAIL or ERROR (CERTIFIED for the
    /// whole suite), 1 a FAIL or ERROR, 2 a usage error, 3 the target cannot be reached.
    Certify(Box<CertifyArgs>),
    /// Docker image of the reference device, built from a binary without any registry.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Generate synthetic traffic (TCP and UDP flows) into a pcap or pcapng file, with its
    /// ground truth as JSON.
    Gen(GenArgs),
    /// Send a capture's frames out of a port (UDP wire, TAP, AF_PACKET; io_uring), in real
    /// time, faster, or as fast as possible; print a summary (JSON on stdout).
    Replay(ReplayArgs),
    /// Offload every flow of a capture to a SessionTable endpoint (one session per flow, in
    /// addSession streams of 10,000), so a replay of the capture meets offloaded sessions;
    /// print a summary (JSON on stdout).
    Offload(OffloadArgs),
    /// Run a capture through the reference device and the VNF simulator in one process, on the
    /// in-memory wire, in virtual time; print the account per flow and in total, checked
    /// against the capture (every packet handled exactly once).
    Simulate(SimulateArgs),
    /// Run the simulated VNF as its own process: the Activation service devices register
    /// with, and a bump in the wire on two real ports that offloads flows to the activated
    /// device by its policy. On stop it withdraws its sessions and prints its account (JSON).
    Vnf(VnfArgs),
    /// The VNF operator's step: list the devices registered with a VNF's Activation service,
    /// see which is active, activate or deactivate one.
    Activation(ActivationArgs),
}

#[derive(Args)]
struct VnfArgs {
    /// Address the Activation service listens on.
    #[arg(long, default_value = "127.0.0.1:50152")]
    listen: SocketAddr,
    /// The VNF's two ports, a=SPEC (facing the device's vnf0) and b=SPEC (facing vnf1):
    /// udp:PEER,bind=ADDR, tap:NAME or afpacket:IF.
    #[arg(long = "port", value_name = "a|b=SPEC", value_parser = parse_vnf_port)]
    ports: Vec<(PortId, PortSpec)>,
    /// The policy (TOML). Default: forward everything, offload after 2 packets.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Activate the first device that registers (the operator's step, done once for you; a
    /// later deactivation stands).
    #[arg(long)]
    auto_activate: bool,
    /// The VNF's client identity for mutual TLS to devices: a folder made by `opof certs`
    /// (client.pem, client.key). The device is verified with the CA it registered.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Also write the account (JSON) to this file when stopping.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Args)]
struct ActivationArgs {
    /// The VNF's Activation service (HOST:PORT or a URI).
    #[arg(long, default_value = "127.0.0.1:50152", global = true)]
    vnf: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: ActivationAction,
}

#[derive(Subcommand)]
enum ActivationAction {
    /// The registered devices (the active one marked with *).
    List,
    /// The active device, if any (exit 0 either way).
    Active,
    /// Activate a registered device by name (refused while another is active).
    Activate { name: String },
    /// Deactivate the active device (or the one named, which must be the active one).
    Deactivate { name: Option<String> },
}

async fn run_activation(a: ActivationArgs) -> anyhow::Result<()> {
    use opof_vnf::operator::{device_json, device_table, Operator};
    let mut op = Operator::connect(&a.vnf, Duration::from_secs(5)).await?;
    match a.action {
        ActivationAction::List => {
            let devices = op.list().await?;
            let active = op.active().await?.map(|d| d.name);
            if a.json {
                let all: Vec<_> =
                    devices.iter().map(|d| device_json(d, active.as_deref() == Some(d.name.as_str()))).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", device_table(&devices, active.as_deref()));
            }
        }
        ActivationAction::Active => match op.active().await? {
            Some(d) if a.json => println!("{}", serde_json::to_string_pretty(&device_json(&d, true))?),
            Some(d) => print!("{}", device_table(std::slice::from_ref(&d), Some(&d.name))),
            None if a.json => println!("null"),
            None => println!("no device is active"),
        },
        ActivationAction::Activate { name } => {
            let d = op.activate(&name).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&device_json(&d, true))?);
            } else {
                println!("activated {}", d.name);
            }
        }
        ActivationAction::Deactivate { name } => {
            let d = op.deactivate(name.as_deref()).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&device_json(&d, false))?);
            } else {
                println!("deactivated {}", d.name);
            }
        }
    }
    Ok(())
}

fn parse_vnf_port(s: &str) -> Result<(PortId, PortSpec), String> {
    let (side, spec) = s.split_once('=').ok_or_else(|| format!("{s:?}: a VNF port is a=SPEC or b=SPEC"))?;
    let id = match side {
        "a" => PortId::Ext0,
        "b" => PortId::Ext1,
        _ => return Err(format!("{s:?}: the VNF's ports are a and b")),
    };
    Ok((id, spec.parse()?))
}

async fn run_vnf(a: VnfArgs) -> anyhow::Result<()> {
    use opof_vnf::activation::{ActivationService, Registry};
    use opof_vnf::vnf::{Side, Vnf};
    if a.ports.len() != 2 || a.ports[0].0 == a.ports[1].0 {
        bail!("the VNF needs its two ports: --port a=SPEC --port b=SPEC");
    }
    let policy = match &a.policy {
        Some(p) => opof_vnf::policy::Policy::load(p).map_err(anyhow::Error::msg)?,
        None => opof_vnf::policy::Policy::default(),
    };
    let identity = match &a.tls_dir {
        Some(d) => Some((
            std::fs::read_to_string(d.join("client.pem"))
                .with_context(|| format!("reading {}/client.pem", d.display()))?,
            std::fs::read_to_string(d.join("client.key"))
                .with_context(|| format!("reading {}/client.key", d.display()))?,
        )),
        None => None,
    };
    let mut dp = UringDatapath::open(&a.ports, CollectorConfig::default())?;
    let registry = Arc::new(parking_lot::Mutex::new(Registry::with_fault(None)));
    let vnf = Arc::new(parking_lot::Mutex::new(Vnf::new(policy, 1)));
    vnf.lock().set_offloading(false);
    let listener =
        tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("listening on {}", a.listen))?;
    info!(listen = %listener.local_addr()?, ports = ?dp.ports(), "VNF up: Activation service");
    let server = tonic::transport::Server::builder()
        .add_service(ActivationService::new(registry.clone()).into_server())
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server = tokio::spawn(server);
    let last_device = opof_vnf::offload::LastDevice::default();
    let offloader =
        tokio::spawn(opof_vnf::offload::run(registry.clone(), vnf.clone(), identity.clone(), last_device.clone()));
    let activator = a.auto_activate.then(|| {
        let registry = registry.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut r = registry.lock();
                if let Some(first) = r.list().into_iter().next() {
                    if r.activate(&first).is_ok() {
                        info!(device = %first.name, "activated (--auto-activate)");
                        // Once: from here on the operator decides (a deactivation stands).
                        return;
                    }
                }
            }
        })
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dp_metrics = Arc::new(Metrics::new());
    let dp_thread = {
        let (vnf, stop, metrics) = (vnf.clone(), stop.clone(), dp_metrics.clone());
        std::thread::Builder::new().name("vnf-datapath".into()).spawn(move || {
            let clock = SystemClock::new();
            let mut decide = |port: PortId, frame: &[u8]| -> Option<PortId> {
                use opof_device::clock::Clock;
                let (side, other) =
                    if port == PortId::Ext0 { (Side::A, PortId::Ext1) } else { (Side::B, PortId::Ext0) };
                vnf.lock().frame(side, frame, clock.now()).then_some(other)
            };
            dp.run(Logic::Custom(&mut decide), &metrics, &stop)
        })?
    };
    let which = stop_signal().await;
    info!("{which}: withdrawing the offloaded sessions, then stopping");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let dp_result = dp_thread.join();
    if let Some(t) = activator {
        t.abort();
    }
    offloader.abort();
    // Bounded: a device that does not answer must not keep the VNF from stopping.
    let withdrawn =
        tokio::time::timeout(Duration::from_secs(10), opof_vnf::offload::withdraw_all(&last_device, &vnf, &identity))
            .await
            .unwrap_or_else(|_| {
                warn!("the device did not answer the withdrawal within 10 s; its sessions' counters are missing");
                0
            });
    server.abort();
    let account = vnf.lock().account();
    let json = serde_json::to_string_pretty(&account)?;
    if let Some(p) = &a.report {
        std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{json}");
    info!(
        withdrawn,
        vnf_frames = account.vnf_frames,
        device_frames = account.device_frames,
        offloads = account.stats.offload_accepted,
        after_offload = account.stats.after_offload,
        "VNF stopped"
    );
    match dp_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!("datapath stopped: {e}"),
        Err(_) => bail!("the datapath thread panicked"),
    }
}

#[derive(Args)]
struct SimulateArgs {
    /// The capture (pcap or pcapng, Ethernet).
    capture: PathBuf,
    /// The VNF's policy (TOML; see vnf-sim/src/policy.rs). Default: forward everything,
    /// offload after 2 packets.
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
    /// Device defaults for cacheTimeout 0, seconds.
    #[arg(long, default_value_t = TableConfig::default().tcp_timeout)]
    tcp_timeout: u32,
    #[arg(long, default_value_t = TableConfig::default().udp_timeout)]
    udp_timeout: u32,
    /// Close on idle timeout only (ignore TCP FIN and RST), as `opof device --timeout-only`.
    #[arg(long)]
    timeout_only: bool,
}

fn simulate(a: SimulateArgs) -> anyhow::Result<()> {
    use opof_vnf::sim::{simulate, SimConfig};
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
fn sim_text(capture: &std::path::Path, r: &opof_vnf::sim::SimReport, show: usize) -> String {
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

#[derive(Args)]
struct OffloadArgs {
    /// The capture (pcap or pcapng, Ethernet) whose flows to offload.
    capture: PathBuf,
    #[command(flatten)]
    target: opof_benches::load::Target,
    /// drop, forward, mirror:NEXT_HOP or snoop:NEXT_HOP.
    #[arg(long, default_value = "forward", value_parser = parse_action)]
    action: opof_proto::domain::Action,
    /// cacheTimeout of the sessions, seconds (0: the device's default).
    #[arg(long, default_value_t = 0)]
    cache_timeout: u32,
    /// Id of the first session (the others follow).
    #[arg(long, default_value_t = 1)]
    first_id: u64,
}

fn parse_action(s: &str) -> Result<opof_proto::domain::Action, String> {
    use opof_proto::domain::Action;
    let hop = |h: &str| h.parse::<std::net::IpAddr>().map_err(|_| format!("{h:?} is not an IP address"));
    match s.split_once(':') {
        None if s == "drop" => Ok(Action::Drop),
        None if s == "forward" => Ok(Action::Forward),
        Some(("mirror", h)) => Ok(Action::Mirror { next_hop: hop(h)? }),
        Some(("snoop", h)) => Ok(Action::Snoop { next_hop: hop(h)? }),
        _ => Err(format!("{s:?}: an action is drop, forward, mirror:NEXT_HOP or snoop:NEXT_HOP")),
    }
}

async fn offload(a: OffloadArgs) -> anyhow::Result<()> {
    use opof_proto::domain::{FiveTuple, Protocol, SessionSpec};
    use opof_proto::wire;
    let mut flows = opof_traffic::flows::FlowAccount::default();
    for f in opof_traffic::capture::CaptureReader::open(&a.capture)? {
        flows.add(&f?);
    }
    let mut keys: Vec<_> = flows.flows.keys().copied().collect();
    keys.sort();
    let requests: Vec<wire::SessionRequest> = keys
        .iter()
        .zip(a.first_id..)
        .filter_map(|(&(proto, src, sport, dst, dport), id)| {
            let protocol = if proto == 6 { Protocol::Tcp } else { Protocol::Udp };
            let tuple = FiveTuple::new(protocol, src, sport, dst, dport)?;
            let spec =
                SessionSpec { id, tuple, action: a.action, in_lif: 0, out_lif: 0, cache_timeout: a.cache_timeout };
            Some(wire::SessionRequest::from(&spec))
        })
        .collect();
    let channel = a.target.connect().await?;
    let mut client = opof_proto::client::SessionTableClient::new(channel.clone(), a.target.flavour(&channel).await?);
    let (mut accepted, mut refused) = (0u64, 0u64);
    for chunk in requests.chunks(10_000) {
        let r = client
            .add_session(tokio_stream::iter(chunk.to_vec()))
            .await
            .with_context(|| format!("addSession to {}", a.target.endpoint))?
            .into_inner();
        refused += r.response_error.len() as u64;
        accepted += chunk.len() as u64 - r.response_error.len() as u64;
    }
    println!(
        "{}",
        serde_json::json!({"capture": a.capture, "flows": keys.len(), "other_frames": flows.other,
                           "accepted": accepted, "refused": refused, "first_id": a.first_id})
    );
    if refused > 0 {
        bail!("{refused} of {} sessions refused", requests.len());
    }
    Ok(())
}

#[derive(Args)]
struct ReplayArgs {
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

#[derive(Args)]
struct GenArgs {
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

#[derive(Args)]
struct CertifyArgs {
    /// embedded (the reference device in this process, virtual time), endpoint or image.
    /// Default: endpoint with --endpoint, image with --image, else embedded. [env: OPOF_TARGET]
    #[arg(long)]
    target: Option<TargetKind>,
    /// host:port of the endpoint to certify. [env: OPOF_ENDPOINT]
    #[arg(long)]
    endpoint: Option<String>,
    /// Flavour to speak: v1, v2, v1alpha5, or auto (detected by the paths served). [env: OPOF_API]
    #[arg(long)]
    api: Option<ApiChoice>,
    /// Mutual TLS: a folder with ca.pem, client.pem, client.key. [env: OPOF_TLS_DIR]
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// TLS: the CA to trust. [env: OPOF_CA]
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (with --key) for mutual TLS. [env: OPOF_CERT]
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key. [env: OPOF_KEY]
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Name the server certificate must carry (default: the endpoint's host). [env: OPOF_SERVER_NAME]
    #[arg(long)]
    server_name: Option<String>,
    /// Docker image to start and certify (image target). [env: OPOF_IMAGE]
    #[arg(long)]
    image: Option<String>,
    /// The table's capacity, if known (otherwise learned by filling). [env: OPOF_CAPACITY]
    #[arg(long)]
    capacity: Option<usize>,
    /// Advertised default TCP timeout (cacheTimeout 0), s. [env: OPOF_TCP_TIMEOUT]
    #[arg(long)]
    tcp_timeout: Option<u32>,
    /// Advertised default UDP timeout, s. [env: OPOF_UDP_TIMEOUT]
    #[arg(long)]
    udp_timeout: Option<u32>,
    /// Largest cacheTimeout the device accepts, s (default 86400). [env: OPOF_MAX_CACHE_TIMEOUT]
    #[arg(long)]
    max_cache_timeout: Option<u32>,
    /// Lateness allowed to idle closes in real time, ms (default 1000). [env: OPOF_TMO_TOLERANCE_MS]
    #[arg(long)]
    tmo_tolerance_ms: Option<u64>,
    /// A field variant to tolerate (NON-STRICT instead of FAIL); repeatable. [env: OPOF_PROFILES]
    #[arg(long = "profile")]
    profiles: Vec<Profile>,
    /// Embedded target only: the reference device imitates this defect; repeatable (several
    /// defects at once). [env: OPOF_FAULT, comma-separated]
    #[arg(long = "fault", value_name = "NAME")]
    faults: Vec<opof_device::faults::Fault>,
    /// A VNF's Activation server for the ACT cases: host:port or https://host:port.
    /// [env: OPOF_ACTIVATION_ENDPOINT]
    #[arg(long)]
    activation_endpoint: Option<String>,
    /// Traffic access to an external device's ports, for the DP and TMO-4 cases: the suite's
    /// ends, ext0=SPEC,ext1=SPEC,vnf0=SPEC,vnf1=SPEC[,collector=SPEC] with SPEC afpacket:IF (the
    /// interface across from the device's port, or the kernel side of the device's TAP),
    /// tap:NAME (a TAP the suite holds) or udp:DEVICE_ADDR,bind=LOCAL_ADDR. [env: OPOF_PORTS]
    #[arg(long, value_parser = parse_ports)]
    ports: Option<PortList>,
    /// Only these: a case (ADD-4.2), a clause (ADD-4) or a family (ADD); repeatable.
    #[arg(long = "case")]
    cases: Vec<String>,
    /// Folder for report.json, junit.xml, report.md, report.html and the DP cases' captures
    /// (evidence/CASE/PORT.pcapng).
    #[arg(long, default_value = "opof-report")]
    out: PathBuf,
    /// List the cases (id, clause, title) and exit.
    #[arg(long)]
    list: bool,
    /// List the profiles and the injectable faults, and exit.
    #[arg(long)]
    list_profiles: bool,
}

/// The `--ports` list of `opof certify`.
#[derive(Clone, Debug)]
struct PortList(Vec<(opof_device::datapath::PortId, opof_traffic::port::PortSpec)>);

fn parse_ports(s: &str) -> Result<PortList, String> {
    opof_conformance::traffic::parse_ports(s).map(PortList)
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Pack a binary of opof and the libraries it links into an image (`docker import`).
    Build {
        /// The opof binary to pack (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Image name and tag.
        #[arg(long, default_value = "opof-device:dev")]
        tag: String,
        /// Keep debug information in the image's binary.
        #[arg(long)]
        no_strip: bool,
    },
}

#[derive(Args)]
struct DeviceArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50151")]
    listen: SocketAddr,
    /// Most sessions held at once.
    #[arg(long, default_value_t = TableConfig::default().capacity)]
    capacity: usize,
    /// Default idle timeout of TCP sessions (cacheTimeout 0), seconds.
    #[arg(long, default_value_t = TableConfig::default().tcp_timeout)]
    tcp_timeout: u32,
    /// Default idle timeout of UDP sessions (cacheTimeout 0), seconds.
    #[arg(long, default_value_t = TableConfig::default().udp_timeout)]
    udp_timeout: u32,
    /// Largest cacheTimeout accepted, seconds.
    #[arg(long, default_value_t = TableConfig::default().max_cache_timeout)]
    max_cache_timeout: u32,
    /// Mutual TLS from a folder made by `opof certs` (server.pem, server.key, ca.pem).
    #[arg(long, conflicts_with_all = ["cert", "key", "client_ca"])]
    tls_dir: Option<PathBuf>,
    /// Server certificate (PEM); with --key, TLS.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to; with --cert/--key, mutual TLS.
    #[arg(long, requires = "cert")]
    client_ca: Option<PathBuf>,
    /// Imitate a known defect, to check that the conformance suite catches it (never in
    /// production). Names: see `opof certify --list-profiles`.
    #[arg(long = "fault", value_name = "NAME")]
    faults: Vec<opof_device::faults::Fault>,
    /// A datapath port, PORT=SPEC, repeated: PORT is ext0, ext1, vnf0, vnf1 or collector; SPEC
    /// is udp:PEER,bind=ADDR (one frame per datagram), tap:NAME or afpacket:IF. Without ports
    /// the device runs its control plane only.
    #[arg(long = "port", value_name = "PORT=SPEC", value_parser = parse_port)]
    ports: Vec<(PortId, PortSpec)>,
    /// Wait up to this many seconds for the interfaces of afpacket ports to appear (in a
    /// container whose interfaces are moved in after it starts), instead of failing at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    wait_for_ports: u64,
    /// A port whose link goes down is marked down (its frames are counted as drops) and
    /// carries traffic again when the link is back; one whose interface is deleted and does
    /// not come back within this many seconds stops the device.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    port_patience: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (ports, misses by reason, actions,
    /// table size, closes by code, closed-queue depth and overflow).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Close sessions on idle timeout only, ignoring TCP FIN and RST (as the BlueField daemon).
    #[arg(long)]
    timeout_only: bool,
    /// Bytes of a frame a SNOOP copy keeps.
    #[arg(long, default_value_t = DatapathConfig::default().snoop_bytes)]
    snoop_bytes: usize,
    /// Destination MAC of collector copies (the collector, or the gateway to the next hops).
    #[arg(long, value_name = "MAC", value_parser = parse_mac, default_value = "ff:ff:ff:ff:ff:ff")]
    collector_mac: [u8; 6],
    /// MTU of the collector link when the collector port is a UDP wire (an interface's own MTU
    /// is read from it): a copy longer than this leaves as fragments of its outer IP packet.
    #[arg(long, value_name = "BYTES", default_value_t = 1500, value_parser = clap::value_parser!(u16).range(576..))]
    collector_mtu: u16,
    /// Source address of collector copies, one per family (defaults 192.0.2.1 and 2001:db8::1).
    #[arg(long, value_name = "ADDR")]
    collector_source: Vec<std::net::IpAddr>,
    /// Benchmarking only: forward ext0 <-> ext1 with no parsing and no lookup, to measure the
    /// I/O path's own ceiling on these ports.
    #[arg(long, requires = "ports")]
    bare: bool,
    /// Register with the VNF's Activation service at ADDR (host:port, or http:// / https://
    /// URI), retrying until it answers; deregister on stop.
    #[arg(long, value_name = "ADDR")]
    register_with: Option<String>,
    /// The name to register under (default: opof-device-PORT).
    #[arg(long, requires = "register_with")]
    name: Option<String>,
    /// The SessionTable endpoint to register (default: http:// or https:// and the address
    /// listened on; 127.0.0.1 when listening on every address).
    #[arg(long, value_name = "URI", requires = "register_with")]
    advertise: Option<String>,
    /// The CA certificate (PEM) to register for verifying this device (default with
    /// --tls-dir: its ca.pem).
    #[arg(long, value_name = "PEM", requires = "register_with")]
    advertise_ca: Option<PathBuf>,
}

fn parse_port(s: &str) -> Result<(PortId, PortSpec), String> {
    let (id, spec) = s.split_once('=').ok_or_else(|| format!("{s:?}: a port is PORT=SPEC, e.g. ext0=tap:opof0"))?;
    Ok((id.parse()?, spec.parse()?))
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?} is not a MAC address"))?;
    parts.try_into().map_err(|_| format!("{s:?} is not a MAC address (six hex bytes)"))
}

#[derive(Args)]
struct CertsArgs {
    /// Folder to write ca.pem, ca.key, server.pem, server.key, client.pem, client.key into.
    #[arg(long, default_value = "tls")]
    out: PathBuf,
    /// Extra names or addresses for the server certificate (localhost, 127.0.0.1, ::1 always).
    #[arg(long = "host")]
    hosts: Vec<String>,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opof: error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, leaving out a cause whose text its parent already
/// quotes (most of ours name their cause in their message).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    let mut last = line.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !last.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        last = text;
    }
    line
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    match cli.command {
        Command::Device(a) => rt.block_on(run_device(*a)),
        Command::Certs(a) => {
            let g = tls::generate(&a.out, &a.hosts)?;
            for f in &g.files {
                println!("{}", f.display());
            }
            eprintln!(
                "mutual TLS: opof device --tls-dir {0}   (clients use {0}/ca.pem, client.pem, client.key)",
                g.dir.display()
            );
            Ok(())
        }
        Command::Bench(b) => rt.block_on(opof_benches::load::run(b)),
        Command::Certify(a) => {
            let code = rt.block_on(certify(*a))?;
            // The runtime may hold an embedded device's tasks: end them before exiting.
            rt.shutdown_timeout(Duration::from_secs(1));
            std::process::exit(code);
        }
        Command::Gen(a) => gen(a),
        Command::Replay(a) => replay(a),
        Command::Offload(a) => rt.block_on(offload(a)),
        Command::Simulate(a) => simulate(a),
        Command::Vnf(a) => rt.block_on(run_vnf(a)),
        Command::Activation(a) => rt.block_on(run_activation(a)),
        Command::Image(ImageCommand::Build { binary, tag, no_strip }) => {
            let binary = match binary {
                Some(b) => b,
                None => std::env::current_exe().context("locating this binary")?,
            };
            eprintln!("packing {} into {tag}...", binary.display());
            let id = opof_conformance::image::build_image(&binary, &tag, !no_strip)?;
            println!("{tag} {id}");
            Ok(())
        }
    }
}

fn progress_bar(total: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit} {{eta}}"))
        .expect("a valid template");
    bar.set_style(style);
    bar
}

fn replay(a: ReplayArgs) -> anyhow::Result<()> {
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
        "{}: {} frames ({} bytes) out of {} in {:.3} s: {:.0} frames/s, {:.1} Mbit/s, {} dropped",
        a.capture.display(),
        summary.frames,
        summary.bytes,
        summary.port,
        summary.seconds,
        summary.frames_per_second,
        summary.bits_per_second / 1e6,
        summary.dropped
    );
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn gen(a: GenArgs) -> anyhow::Result<()> {
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

/// Runs the suite; the process's exit code: 0 certified, 1 a FAIL or ERROR.
async fn certify(a: CertifyArgs) -> anyhow::Result<i32> {
    use std::io::Write;
    let all = opof_conformance::cases::all();
    // Listings may go to a pager or `head`: a closed pipe ends them quietly.
    let mut out = std::io::stdout().lock();
    if a.list {
        for c in &all {
            let _ = writeln!(out, "{:<9} {:<7} {}", c.id, c.clause, c.title);
        }
        return Ok(0);
    }
    if a.list_profiles {
        let _ = writeln!(out, "profiles (--profile NAME: a FAIL of exactly that difference becomes NON-STRICT):");
        for p in Profile::ALL {
            let _ = writeln!(out, "  {:<24} {}", p.name(), p.description());
        }
        let _ = writeln!(
            out,
            "faults (--fault NAME, embedded target or `opof device --fault`: the device imitates a defect):"
        );
        for f in opof_device::faults::Fault::ALL {
            let _ = writeln!(out, "  {:<30} {}", f.name(), f.description());
        }
        return Ok(0);
    }
    drop(out);
    let mut c = TargetConfig::from_env()?;
    let explicit_kind = a.target.or_else(|| std::env::var("OPOF_TARGET").ok().and_then(|v| v.parse().ok()));
    if a.endpoint.is_some() {
        c.endpoint = a.endpoint;
    }
    if a.image.is_some() {
        c.image = a.image;
    }
    c.kind = explicit_kind.unwrap_or(if c.endpoint.is_some() {
        TargetKind::Endpoint
    } else if c.image.is_some() {
        TargetKind::Image
    } else {
        TargetKind::Embedded
    });
    macro_rules! set {
        ($($field:ident),*) => { $( if a.$field.is_some() { c.$field = a.$field; } )* };
    }
    set!(tls_dir, ca, cert, key, server_name, capacity, tcp_timeout, udp_timeout, activation_endpoint);
    if !a.faults.is_empty() {
        c.faults = a.faults.iter().copied().collect();
    }
    if let Some(PortList(p)) = a.ports {
        c.ports = Some(p);
    }
    c.evidence_dir = Some(a.out.join("evidence"));
    if let Some(api) = a.api {
        c.api = api;
    }
    if let Some(m) = a.max_cache_timeout {
        c.max_cache_timeout = m;
    }
    if let Some(ms) = a.tmo_tolerance_ms {
        c.tolerance = Duration::from_millis(ms);
    }
    if !a.profiles.is_empty() {
        c.profiles = a.profiles;
    }
    let cases = opof_conformance::runner::select(all, &a.cases);
    if cases.is_empty() {
        bail!("no case matches {:?} (see --list)", a.cases);
    }
    eprintln!("certifying the {:?} target: {} cases", c.kind, cases.len());
    let n = cases.len();
    let whole = a.cases.is_empty();
    let config = c.clone();
    let started = opof_conformance::runner::certify_selection(c, &cases, whole, |i, r| {
        eprintln!("[{:>3}/{n}] {:<9} {:<10} {:>9.1} ms  {}", i + 1, r.id, r.verdict, r.duration_ms, r.title);
    })
    .await;
    // A target that cannot be reached is one ERROR with the reason, in the reports as well
    // (CI reads junit.xml), and exit status 3; a configuration mistake is a usage error (2).
    let (report, code) = match started {
        Ok(r) => {
            let code = if r.passed() { EXIT_CERTIFIED } else { EXIT_NOT_CERTIFIED };
            (r, code)
        }
        Err(e @ (TargetError::Connect { .. } | TargetError::Docker(_) | TargetError::Embedded(_))) => {
            eprintln!("ERROR: {e}");
            (opof_conformance::runner::unreached(&config, &cases, whole, &e), EXIT_UNREACHABLE)
        }
        Err(e) => return Err(anyhow::Error::new(e).context("the target configuration")),
    };
    let _ = write!(std::io::stdout(), "{}", report.summary_table());
    let files = report.write(&a.out).with_context(|| format!("writing the reports into {}", a.out.display()))?;
    for f in files {
        eprintln!("wrote {}", f.display());
    }
    Ok(code)
}

/// `opof certify` exit statuses: the whole suite (or the selection) passed; a case is FAIL or
/// ERROR; the target could not be reached (or started). A usage error is 2 (clap's).
const EXIT_CERTIFIED: i32 = 0;
const EXIT_NOT_CERTIFIED: i32 = 1;
const EXIT_UNREACHABLE: i32 = 3;

/// Waits for Ctrl-C (SIGINT) or SIGTERM (what `docker stop` and systemd send); names it.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Waits for the interfaces of the afpacket ports to exist and be up (whoever makes them brings
/// them up a moment later), for at most `patience`.
async fn wait_for_interfaces(ports: &[(PortId, PortSpec)], patience: Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    // Asked of the kernel (not /sys, which shows the namespace it was mounted in).
    let up = |iface: &str| opof_traffic::port::interface_up(iface) == Some(true);
    for (port, spec) in ports {
        let PortSpec::AfPacket(iface) = spec else { continue };
        let mut told = false;
        while !up(iface) && start.elapsed() < patience {
            if !told {
                info!(%port, interface = %iface, "waiting for the interface to appear");
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if told {
            match opof_traffic::port::interface_up(iface) {
                Some(true) => info!(%port, interface = %iface, "interface up"),
                _ => warn!(%port, interface = %iface, "the interface is still missing or down"),
            }
        }
    }
    Ok(())
}

async fn run_device(a: DeviceArgs) -> anyhow::Result<()> {
    let config = TableConfig {
        capacity: a.capacity,
        tcp_timeout: a.tcp_timeout,
        udp_timeout: a.udp_timeout,
        max_cache_timeout: a.max_cache_timeout,
        closed_queue_capacity: a.capacity,
        ..TableConfig::default()
    };
    let tls = match (&a.tls_dir, &a.cert, &a.key) {
        (Some(dir), _, _) => Some(ServerTls::from_dir(dir)?),
        (None, Some(cert), Some(key)) => Some(ServerTls::from_files(cert, key, a.client_ca.as_deref())?),
        (None, None, None) => None,
        _ => bail!("--cert and --key go together"),
    };
    let device = Device::with_fault(
        config,
        Arc::new(SystemClock::new()),
        a.faults.iter().copied().collect::<opof_device::faults::Faults>(),
    )
    .context("device configuration")?;
    let mut collector = CollectorConfig {
        dst_mac: a.collector_mac,
        udp_mtu: usize::from(a.collector_mtu),
        ..CollectorConfig::default()
    };
    for ip in &a.collector_source {
        match ip {
            std::net::IpAddr::V4(v4) => collector.src_v4 = *v4,
            std::net::IpAddr::V6(v6) => collector.src_v6 = *v6,
        }
    }
    let dp_config = DatapathConfig { close_on_tcp_flags: !a.timeout_only, snoop_bytes: a.snoop_bytes, collector };
    wait_for_interfaces(&a.ports, Duration::from_secs(a.wait_for_ports)).await?;
    // Ports are opened before anything listens, so a wrong port is a one-line error at once.
    let datapath = match a.ports.is_empty() {
        true => None,
        false => {
            let mut dp = UringDatapath::open(&a.ports, dp_config.collector.clone())?;
            dp.set_lost_after(Duration::from_secs(a.port_patience));
            Some(dp)
        }
    };
    let port_list = datapath.as_ref().map(|d| d.ports()).unwrap_or_default();
    let dp_metrics = Arc::new(Metrics::new());
    let listener =
        tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("listening on {}", a.listen))?;
    info!(listen = %listener.local_addr()?, capacity = a.capacity, ports = port_list.len(), bare = a.bare, "reference device up");
    let metrics_task = match a.metrics {
        Some(addr) => {
            let l =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("metrics: listening on {addr}"))?;
            info!(url = %format!("http://{}/metrics", l.local_addr()?), "Prometheus metrics");
            let (d, m, ports) = (device.clone(), dp_metrics.clone(), port_list.clone());
            let render: Arc<dyn Fn() -> String + Send + Sync> =
                Arc::new(move || metrics::prometheus(&m.snapshot(), &d.stats(), &ports));
            Some(tokio::spawn(metrics::serve_http(l, render)))
        }
        None => None,
    };
    let aging = device.spawn_aging(Duration::from_millis(10));
    // Fault crash-on-large-page: the process dies as the field's server does.
    {
        let device = device.clone();
        tokio::spawn(async move {
            device.crashed().await;
            eprintln!("FAULT INJECTION: the device process exits (crash-on-large-page)");
            std::process::exit(134);
        });
    }
    let registration = match &a.register_with {
        None => None,
        Some(vnf) => {
            let local = listener.local_addr()?;
            let host = if local.ip().is_unspecified() { "127.0.0.1".to_string() } else { local.ip().to_string() };
            let host = if local.is_ipv6() && !local.ip().is_unspecified() { format!("[{host}]") } else { host };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let endpoint = a.advertise.clone().unwrap_or_else(|| format!("{scheme}://{host}:{}", local.port()));
            let ca_file = a.advertise_ca.clone().or_else(|| a.tls_dir.as_ref().map(|d| d.join("ca.pem")));
            let ca = match ca_file {
                Some(f) => Some(std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?),
                None => None,
            };
            let name = a.name.clone().unwrap_or_else(|| format!("opof-device-{}", local.port()));
            let d = opof_device::register::description(&name, device.config(), &endpoint, ca);
            let (to, d2) = (vnf.clone(), d.clone());
            tokio::spawn(async move { opof_device::register::register_until_accepted(&to, &d2).await });
            Some((vnf.clone(), d))
        }
    };
    // The datapath runs on a thread of its own; it stops when `dp_stop` is set, and a port that
    // fails ends the device with its error.
    let dp_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (dp_failed_tx, dp_failed) = tokio::sync::oneshot::channel::<String>();
    let dp_thread = datapath.map(|mut dp| {
        let (device, metrics, stop, bare) = (device.clone(), dp_metrics.clone(), dp_stop.clone(), a.bare);
        std::thread::Builder::new()
            .name("datapath".into())
            .spawn(move || {
                let logic = if bare { Logic::Bare } else { Logic::Device { device: &device, config: &dp_config } };
                if let Err(e) = dp.run(logic, &metrics, &stop) {
                    let _ = dp_failed_tx.send(e.to_string());
                }
            })
            .expect("spawning the datapath thread")
    });
    let stopping = Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let stopping = stopping.clone();
        async move {
            let which = stop_signal().await;
            info!("{which}: finishing in-flight calls (at most {} s), then stopping", SHUTDOWN_GRACE.as_secs());
            stopping.notify_one();
        }
    };
    let server = control::serve(device.clone(), listener, ServeOptions { tls, ..Default::default() }, shutdown);
    tokio::pin!(server);
    // A VNF keeps its connection and a follow-mode closed-session stream open for ever, so a
    // graceful stop alone could wait for ever: after the grace period, or a second signal, stop.
    let forced = async {
        stopping.notified().await;
        tokio::select! {
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => warn!("calls still open after the grace period; closing them"),
            which = stop_signal() => warn!("second {which}; closing open calls"),
        }
    };
    let dp_error = async {
        match dp_failed.await {
            Ok(e) => e,
            Err(_) => std::future::pending().await,
        }
    };
    let failed = tokio::select! {
        r = &mut server => { r?; None }
        _ = forced => None,
        e = dp_error => Some(e),
    };
    aging.abort();
    if let Some((vnf, d)) = &registration {
        opof_device::register::deregister(vnf, d).await;
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    dp_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = dp_thread {
        let _ = t.join();
    }
    if !port_list.is_empty() {
        let m = dp_metrics.snapshot();
        for (p, spec) in &port_list {
            let t = m.ports[p.index()];
            info!(port = %p, %spec, rx = t.rx_frames, tx = t.tx_frames, tx_dropped = t.tx_dropped, rx_dropped = t.rx_dropped, "port totals");
        }
    }
    if let Some(e) = failed {
        bail!("datapath stopped: {e}");
    }
    let s = device.stats();
    info!(sessions = s.sessions, added = s.added, refused = s.refused, closed_queued = s.closed_queued, "stopped");
    Ok(())
}
