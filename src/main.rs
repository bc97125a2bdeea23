//! `opof`: the OpenOffload toolkit's command line. Thin: each subcommand parses its options
//! and calls into the workspace's crates.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use opof_device::clock::SystemClock;
use opof_device::control::{self, Device, ServeOptions};
use opof_device::table::TableConfig;
use opof_device::tls::{self, ServerTls};
use tracing::{info, warn};

/// How long Ctrl-C waits for open calls to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "opof",
    version,
    about = "OpenOffload toolkit: reference SmartNIC device, load generator, TLS material"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the reference device: the SessionTable gRPC server (v1, v2 and v1alpha5 paths).
    Device(DeviceArgs),
    /// Make a CA, a server certificate (with subjectAltName) and a client certificate.
    Certs(CertsArgs),
    /// Load generators against any SessionTable endpoint; print JSON results.
    #[command(subcommand)]
    Bench(opof_benches::load::BenchCommand),
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
    /// production). Names: see `opof certify --list-faults`.
    #[arg(long, value_name = "NAME")]
    fault: Option<opof_device::faults::Fault>,
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    match cli.command {
        Command::Device(a) => rt.block_on(run_device(a)),
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
    }
}

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
    let device = Device::with_fault(config, Arc::new(SystemClock::new()), a.fault).context("device configuration")?;
    let listener =
        tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("listening on {}", a.listen))?;
    info!(listen = %listener.local_addr()?, capacity = a.capacity, "reference device up (control plane only; no ports yet)");
    let aging = device.spawn_aging(Duration::from_millis(10));
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
    tokio::select! {
        r = &mut server => r?,
        _ = forced => {}
    }
    aging.abort();
    let s = device.stats();
    info!(sessions = s.sessions, added = s.added, refused = s.refused, closed_queued = s.closed_queued, "stopped");
    Ok(())
}
