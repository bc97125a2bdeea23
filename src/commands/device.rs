//! `opof device`: the reference device (gRPC control plane, datapath on io_uring, metrics).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use opof_device::clock::SystemClock;
use opof_device::control::{self, Device, ServeOptions};
use opof_device::datapath::metrics::{self, Metrics};
use opof_device::datapath::steer::Spread;
use opof_device::datapath::uring::{Logic, UringDatapath};
use opof_device::datapath::{CollectorConfig, DatapathConfig, PortId};
use opof_device::table::TableConfig;
use opof_device::tls::ServerTls;
use opof_traffic::port::PortSpec;
use tracing::{info, warn};

use super::{StopSignals, SHUTDOWN_GRACE};

#[derive(Args)]
pub(crate) struct DeviceArgs {
    /// Address to listen on: ADDR:PORT or HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50151", value_parser = super::parse_listen)]
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
    #[command(flatten)]
    socket_buffer: super::SocketBufferArg,
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
    /// HTTP/2 streams one gRPC connection may have open at once (a client asking for more
    /// waits, or is refused).
    #[arg(long, value_name = "N", default_value_t = ServeOptions::default().max_streams_per_connection)]
    max_streams_per_connection: u32,
    /// HTTP/2 keepalive: a PING after this many idle seconds; a peer that does not answer within
    /// as many is disconnected.
    #[arg(long, value_name = "SECONDS", default_value_t = ServeOptions::default().keepalive.as_secs())]
    keepalive: u64,
    /// A connection that sends nothing (or does not finish its TLS handshake) within this many
    /// seconds is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = ServeOptions::default().handshake_timeout.as_secs())]
    handshake_timeout: u64,
    /// A connection that carries no call for this many seconds is closed (0: never). A
    /// streaming call counts until it ends, so a VNF's follow stream keeps its connection.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    idle_timeout: u64,
    /// Requests that open addSession streams may hold in all (each is held until its stream
    /// ends); a stream that would exceed it is refused with RESOURCE_EXHAUSTED. Default: twice
    /// --capacity (about 150 bytes each).
    #[arg(long, value_name = "N")]
    max_pending_requests: Option<usize>,
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
    /// Datapath workers, each a thread with its own io_uring ring and its share of every port's
    /// traffic by flow (AF_PACKET fanout, one TAP queue each, SO_REUSEPORT on a UDP wire); the
    /// sessions are in as many shards, each with a lock of its own. Default: the cores this
    /// process may run on.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: Option<u16>,
    /// How AF_PACKET and multi-queue TAP ports spread flows over the workers: `shard` (a kernel
    /// program sends each flow to the worker of the shard holding its session, so a batch takes
    /// one shard's lock; used when the workers are a power of two) or `kernel` (the kernel's own
    /// flow hash).
    #[arg(long, value_name = "HOW", default_value = "shard")]
    steer: Spread,
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

pub(crate) fn parse_port(s: &str) -> Result<(PortId, PortSpec), String> {
    let (id, spec) = s.split_once('=').ok_or_else(|| format!("{s:?}: a port is PORT=SPEC, e.g. ext0=tap:opof0"))?;
    Ok((id.parse()?, spec.parse()?))
}

pub(crate) fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?} is not a MAC address"))?;
    parts.try_into().map_err(|_| format!("{s:?} is not a MAC address (six hex bytes)"))
}

/// Waits for the interfaces of the afpacket ports to exist and be up (whoever makes them brings
/// them up a moment later), for at most `patience`.
pub(crate) async fn wait_for_interfaces(ports: &[(PortId, PortSpec)], patience: Duration) -> anyhow::Result<()> {
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

pub(crate) async fn run_device(a: DeviceArgs) -> anyhow::Result<()> {
    let mut signals = StopSignals::new();
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
    let workers = match a.workers {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism().map_or(1, |n| n.get().min(64)),
    };
    let device = Device::sharded(
        config,
        Arc::new(SystemClock::new()),
        a.faults.iter().copied().collect::<opof_device::faults::Faults>(),
        workers,
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
    // A stop while waiting for the ports' interfaces (a container stopped before they were
    // moved in) ends the device at once.
    tokio::select! {
        r = wait_for_interfaces(&a.ports, Duration::from_secs(a.wait_for_ports)) => r?,
        which = signals.recv() => {
            info!("{which} while waiting for the ports' interfaces: stopping");
            return Ok(());
        }
    }
    a.socket_buffer.apply()?;
    // Ports are opened before anything listens, so a wrong port is a one-line error at once.
    // Flows steered by shard only when each worker can have a shard of its own.
    let steered = a.steer == Spread::Shard && device.shards() == workers;
    let datapath = match a.ports.is_empty() {
        true => None,
        false => {
            let steer = steered.then(|| device.steering());
            let mut dps = UringDatapath::open_workers(&a.ports, dp_config.collector.clone(), workers, steer)?;
            for dp in dps.iter_mut() {
                dp.set_lost_after(Duration::from_secs(a.port_patience));
            }
            Some(dps)
        }
    };
    let port_list = datapath.as_ref().and_then(|d| d.first()).map(|d| d.ports()).unwrap_or_default();
    let dp_metrics = Arc::new(Metrics::new());
    let listener =
        tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("listening on {}", a.listen))?;
    let steer = if steered { "shard" } else { "kernel" };
    info!(listen = %listener.local_addr()?, capacity = a.capacity, ports = port_list.len(), workers, shards = device.shards(), steer, bare = a.bare, "reference device up");
    if tls.is_none() && !a.listen.ip().is_loopback() {
        warn!(listen = %a.listen, "plaintext gRPC on an address other hosts can reach: anyone who reaches it can add and delete sessions; give --tls-dir (made by `opof certs`) for mutual TLS");
    }
    let metrics_task = match a.metrics {
        Some(addr) => {
            let l =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("metrics: listening on {addr}"))?;
            info!(url = %format!("http://{}/metrics", l.local_addr()?), "Prometheus metrics");
            let (d, m, ports) = (device.clone(), dp_metrics.clone(), port_list.clone());
            let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
                metrics::prometheus(&m.snapshot(), &d.stats(), &ports)
                    + &opof_device::conn::prometheus()
                    + &metrics::heap_prometheus()
            });
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
            // With --tls-dir the device registers over mutual TLS with its client certificate
            // (the folder `opof certs` made holds it), which binds its name to it at the VNF.
            let client_tls = match &a.tls_dir {
                Some(dir) => Some(opof_device::tls::ClientTls::from_dir(dir)?),
                None => None,
            };
            let keeper_tls = client_tls.clone();
            let (to, d2) = (vnf.clone(), d.clone());
            let keeper = tokio::spawn(async move {
                opof_device::register::keep_registered(&to, &d2, keeper_tls, opof_device::register::RECHECK_EVERY).await
            });
            Some((vnf.clone(), d, keeper, client_tls))
        }
    };
    // The datapath runs on a thread of its own; it stops when `dp_stop` is set, and a port that
    // fails ends the device with its error.
    let dp_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (dp_failed_tx, dp_failed) = tokio::sync::oneshot::channel::<String>();
    let dp_failed_tx = Arc::new(std::sync::Mutex::new(Some(dp_failed_tx)));
    let dp_threads: Vec<_> = datapath
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(w, mut dp)| {
            let (device, metrics, stop, bare) = (device.clone(), dp_metrics.clone(), dp_stop.clone(), a.bare);
            let (config, failed) = (dp_config.clone(), dp_failed_tx.clone());
            std::thread::Builder::new()
                .name(format!("datapath-{w}"))
                .spawn(move || {
                    let logic = if bare { Logic::Bare } else { Logic::Device { device: &device, config: &config } };
                    if let Err(e) = dp.run(logic, &metrics, &stop) {
                        if let Some(tx) = failed.lock().ok().and_then(|mut t| t.take()) {
                            let _ = tx.send(format!("worker {w}: {e}"));
                        }
                    }
                })
                .expect("spawning a datapath thread")
        })
        .collect();
    // The first stop signal ends the server gracefully (in-flight calls finish); see `forced`.
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let options = ServeOptions {
        tls,
        max_streams_per_connection: a.max_streams_per_connection.max(1),
        keepalive: Duration::from_secs(a.keepalive.max(1)),
        handshake_timeout: Duration::from_secs(a.handshake_timeout.max(1)),
        max_pending_requests: a.max_pending_requests,
        idle_timeout: (a.idle_timeout > 0).then(|| Duration::from_secs(a.idle_timeout)),
        ..Default::default()
    };
    let server = control::serve(device.clone(), listener, options, shutdown);
    tokio::pin!(server);
    // A VNF keeps its connection and a follow-mode closed-session stream open for ever, so a
    // graceful stop alone could wait for ever: after the grace period, or a second signal, stop.
    let forced = async {
        let which = signals.recv().await;
        info!("{which}: finishing in-flight calls (at most {} s), then stopping", SHUTDOWN_GRACE.as_secs());
        let _ = stopping.send(());
        tokio::select! {
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => warn!("calls still open after the grace period; closing them"),
            which = signals.recv() => warn!("second {which}; closing open calls"),
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
    if let Some((vnf, d, keeper, client_tls)) = &registration {
        keeper.abort();
        opof_device::register::deregister(vnf, d, client_tls.as_ref()).await;
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    dp_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in dp_threads {
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
