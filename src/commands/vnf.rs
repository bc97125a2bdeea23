//! `opof vnf`: the simulated VNF as a process (Activation service, bump in the wire, offloads).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use opof_device::clock::SystemClock;
use opof_device::datapath::metrics::Metrics;
use opof_device::datapath::uring::{Logic, UringDatapath};
use opof_device::datapath::{CollectorConfig, PortId};
use opof_traffic::port::PortSpec;
use tracing::{info, warn};

#[derive(Args)]
pub(crate) struct VnfArgs {
    /// Address the Activation service listens on: ADDR:PORT or HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50152", value_parser = super::parse_listen)]
    listen: SocketAddr,
    /// The VNF's two ports, a=SPEC (facing the device's vnf0) and b=SPEC (facing vnf1):
    /// udp:PEER,bind=ADDR, tap:NAME or afpacket:IF.
    #[arg(long = "port", value_name = "a|b=SPEC", value_parser = parse_vnf_port)]
    ports: Vec<(PortId, PortSpec)>,
    #[command(flatten)]
    socket_buffer: super::SocketBufferArg,
    /// The policy (TOML). Default: forward everything, offload after 2 packets.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Activate the first device that registers (the operator's step, done once for you; a
    /// later deactivation stands).
    #[arg(long)]
    auto_activate: bool,
    /// Mutual TLS, a folder made by `opof certs`: the Activation service serves TLS with
    /// server.pem/server.key and admits only clients with a certificate from ca.pem (a name
    /// then belongs to the certificate that registered it); the VNF connects to devices with
    /// client.pem/client.key and verifies each with the CA it registered.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Most devices the Activation service keeps registered.
    #[arg(long, value_name = "N", default_value_t = opof_vnf::activation::Limits::default().devices)]
    max_devices: usize,
    /// Largest CA certificate (PEM bytes) a device may register.
    #[arg(long, value_name = "BYTES", default_value_t = opof_vnf::activation::Limits::default().ca_bytes)]
    max_ca_bytes: usize,
    /// Also write the account (JSON) to this file when stopping.
    #[arg(long)]
    report: Option<PathBuf>,
}

pub(crate) fn parse_vnf_port(s: &str) -> Result<(PortId, PortSpec), String> {
    let (side, spec) = s.split_once('=').ok_or_else(|| format!("{s:?}: a VNF port is a=SPEC or b=SPEC"))?;
    let id = match side {
        "a" => PortId::Ext0,
        "b" => PortId::Ext1,
        _ => return Err(format!("{s:?}: the VNF's ports are a and b")),
    };
    Ok((id, spec.parse()?))
}

pub(crate) async fn run_vnf(a: VnfArgs) -> anyhow::Result<()> {
    use opof_vnf::activation::{ActivationService, Registry};
    use opof_vnf::vnf::{Side, Vnf};
    let mut signals = super::StopSignals::new();
    if a.ports.len() != 2 || a.ports[0].0 == a.ports[1].0 {
        bail!("the VNF needs its two ports: --port a=SPEC --port b=SPEC");
    }
    if let Some(p) = &a.report {
        super::check_report_path(p)?;
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
    a.socket_buffer.apply()?;
    let mut dp = UringDatapath::open(&a.ports, CollectorConfig::default())?;
    let limits = opof_vnf::activation::Limits { devices: a.max_devices.max(1), ca_bytes: a.max_ca_bytes };
    let registry = Arc::new(parking_lot::Mutex::new(Registry::with_limits(limits)));
    let server_tls = match &a.tls_dir {
        Some(d) => Some(opof_device::tls::ServerTls::from_dir(d)?),
        None => None,
    };
    let vnf = Arc::new(parking_lot::Mutex::new(Vnf::new(policy, Vnf::first_id_now())));
    vnf.lock().set_offloading(false);
    let listener =
        tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("listening on {}", a.listen))?;
    info!(listen = %listener.local_addr()?, ports = ?dp.ports(), mtls = server_tls.is_some(), "VNF up: Activation service");
    if server_tls.is_none() && !a.listen.ip().is_loopback() {
        warn!(listen = %a.listen, "the Activation service is plaintext and unauthenticated on an address other hosts can reach: anyone who reaches it can register, activate or deactivate devices; give --tls-dir (made by `opof certs`) for mutual TLS");
    }
    let (_health, health) = opof_proto::introspect::health(&["openoffload.v1alpha5.Activation"]).await;
    // The same HTTP/2 bounds as the device's SessionTable (streams per connection, keepalive,
    // reset-flood guards), and accepting that backs off when descriptors run out.
    let defaults = opof_device::control::ServeOptions::default();
    let mut builder = opof_device::control::with_h2_bounds(
        tonic::transport::Server::builder(),
        defaults.max_streams_per_connection,
        defaults.keepalive,
    );
    if let Some(t) = &server_tls {
        builder = builder
            .tls_config(t.to_tonic().timeout(Duration::from_secs(10)))
            .context("the Activation service's TLS")?;
    }
    let server = builder
        .add_service(ActivationService::new(registry.clone()).into_server())
        .add_service(opof_proto::introspect::reflection_v1())
        .add_service(opof_proto::introspect::reflection_v1alpha())
        .add_service(health)
        .serve_with_incoming(opof_device::conn::incoming_plain(listener));
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
    let which = signals.recv().await;
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
    let refusals = registry.lock().refusals();
    let mut json = serde_json::to_value(&account)?;
    json["activation_refused"] = serde_json::to_value(refusals)?;
    let json = serde_json::to_string_pretty(&json)?;
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
        activation_refused = ?refusals,
        "VNF stopped"
    );
    match dp_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!("datapath stopped: {e}"),
        Err(_) => bail!("the datapath thread panicked"),
    }
}
