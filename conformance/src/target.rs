//! Targets: what the suite certifies, chosen at run time.
//!
//! - `embedded` (default): the reference device in this process, served over real gRPC on
//!   loopback (plaintext, plus a second mutual-TLS listener for the CONN cases), in virtual time.
//! - `endpoint`: any SessionTable endpoint (`OPOF_ENDPOINT=host:port`), plaintext or TLS, flavour
//!   given or detected by its paths.
//! - `image`: a Docker image (`OPOF_IMAGE=name:tag`) started with testcontainers, with mutual
//!   TLS material made for the run copied in and seccomp relaxed (io_uring).
//!
//! Every setting can come from the environment (for `cargo test`) or from `opof certify`'s
//! options; [`TargetConfig::from_env`] documents the variable names.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opof_device::clock::ManualClock;
use opof_device::control::{self, Device, ServeOptions};
use opof_device::faults::Faults;
use opof_device::table::TableConfig;
use opof_device::tls::{self, ClientTls, ServerTls};
use opof_proto::client::{detect_flavours, ApiChoice, Flavour};
use opof_proto::domain::Timestamp;
use opof_vnf::activation::{ActivationFault, ActivationService, Registry};
use serde::Serialize;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

use crate::traffic::Traffic;
use crate::verdict::Profile;
use opof_device::datapath::mem::MemDatapath;
use opof_device::datapath::{DatapathConfig, PortId};
use opof_traffic::port::PortSpec;

/// The virtual clock of the embedded target starts here (2025-06-15T15:06:40Z).
pub const EMBEDDED_T0: Timestamp = Timestamp(1_750_000_000_000_000_000);

/// Capacity of the embedded device: small enough that the capacity cases fill it quickly.
pub const EMBEDDED_CAPACITY: usize = 65_536;

/// What the `image` target tells the reference device's image: its capacity and default
/// timeouts (short, so that the real-time cases are quick).
pub const REFERENCE_IMAGE_CAPACITY: usize = 65_536;
pub const REFERENCE_IMAGE_TCP_TIMEOUT: u32 = 3;
pub const REFERENCE_IMAGE_UDP_TIMEOUT: u32 = 2;

/// The command the `image` target gives the reference device's image (TLS material at /tls).
pub fn reference_image_cmd() -> Vec<String> {
    format!(
        "device --listen 0.0.0.0:50151 --capacity {REFERENCE_IMAGE_CAPACITY} --tcp-timeout {REFERENCE_IMAGE_TCP_TIMEOUT} \
         --udp-timeout {REFERENCE_IMAGE_UDP_TIMEOUT} --tls-dir /tls"
    )
    .split_whitespace()
    .map(String::from)
    .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Embedded,
    Endpoint,
    Image,
}

impl std::str::FromStr for TargetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "embedded" => Ok(TargetKind::Embedded),
            "endpoint" => Ok(TargetKind::Endpoint),
            "image" => Ok(TargetKind::Image),
            _ => Err(format!("unknown target {s:?}: embedded, endpoint or image")),
        }
    }
}

/// What to certify and what the suite may assume about it.
#[derive(Clone, Debug)]
pub struct TargetConfig {
    pub kind: TargetKind,
    /// `host:port` of the endpoint target.
    pub endpoint: Option<String>,
    pub api: ApiChoice,
    /// A folder with `ca.pem`, `client.pem`, `client.key` (as `opof certs` makes): mutual TLS.
    pub tls_dir: Option<PathBuf>,
    /// TLS: the CA to trust; with `cert` and `key`, mutual TLS.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name the server certificate must carry (default: the endpoint's host).
    pub server_name: Option<String>,
    /// Image of the image target.
    pub image: Option<String>,
    /// Command for the image (default: [`reference_image_cmd`]); its listening port.
    pub image_cmd: Option<Vec<String>>,
    pub image_port: u16,
    /// The table's capacity, when the vendor states it; otherwise learned by filling.
    pub capacity: Option<usize>,
    /// Most sessions the suite adds to learn an unknown capacity.
    pub fill_limit: usize,
    /// Advertised default timeouts (cacheTimeout 0), seconds.
    pub tcp_timeout: Option<u32>,
    pub udp_timeout: Option<u32>,
    /// Largest cacheTimeout the device accepts.
    pub max_cache_timeout: u32,
    /// Largest gRPC message the device accepts.
    pub max_message_bytes: usize,
    /// Lateness allowed to an idle close in real time.
    pub tolerance: Duration,
    pub profiles: Vec<Profile>,
    /// Embedded only: the reference device imitates these defects.
    pub faults: Faults,
    /// A VNF's Activation server to certify (the ACT cases): `host:port` (plaintext) or
    /// `https://host:port` (with the run's TLS material). The embedded target has its own.
    pub activation_endpoint: Option<String>,
    /// Embedded only: the project's Activation server imitates this defect.
    pub activation_fault: Option<ActivationFault>,
    /// The suite's ends of an external device's ports (the DP cases and the TMO cases with
    /// traffic); the embedded target has its in-memory wire.
    pub ports: Option<Vec<(PortId, PortSpec)>>,
    /// Where the DP cases' pcapng captures go (a folder per case, a file per port).
    pub evidence_dir: Option<PathBuf>,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            kind: TargetKind::Embedded,
            endpoint: None,
            api: ApiChoice::Auto,
            tls_dir: None,
            ca: None,
            cert: None,
            key: None,
            server_name: None,
            image: None,
            image_cmd: None,
            image_port: 50151,
            capacity: None,
            fill_limit: 2_000_000,
            tcp_timeout: None,
            udp_timeout: None,
            max_cache_timeout: TableConfig::default().max_cache_timeout,
            max_message_bytes: 4 * 1024 * 1024,
            tolerance: Duration::from_millis(1000),
            profiles: Vec::new(),
            faults: Faults::NONE,
            activation_endpoint: None,
            activation_fault: None,
            ports: None,
            evidence_dir: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{name}={value:?}: {reason}")]
    Env { name: &'static str, value: String, reason: String },
    #[error("{0}")]
    Config(String),
    #[error("cannot reach {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("Docker: {0}")]
    Docker(String),
    #[error("TLS material: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("embedded device: {0}")]
    Embedded(String),
}

fn env(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_parse<T: std::str::FromStr>(name: &'static str) -> Result<Option<T>, TargetError>
where
    T::Err: std::fmt::Display,
{
    env(name)
        .map(|v| {
            v.trim().parse().map_err(|e: T::Err| TargetError::Env { name, value: v.clone(), reason: e.to_string() })
        })
        .transpose()
}

impl TargetConfig {
    /// The configuration in the environment:
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `OPOF_TARGET` | `embedded`, `endpoint` or `image` (default: `endpoint` when `OPOF_ENDPOINT` is set, `image` when `OPOF_IMAGE` is, else `embedded`) |
    /// | `OPOF_ENDPOINT` | `host:port` |
    /// | `OPOF_API` | `v1`, `v2`, `v1alpha5` or `auto` (default) |
    /// | `OPOF_TLS_DIR` | mutual TLS: `ca.pem`, `client.pem`, `client.key` |
    /// | `OPOF_CA`, `OPOF_CERT`, `OPOF_KEY` | TLS: CA to trust; client certificate and key |
    /// | `OPOF_SERVER_NAME` | name to verify in the server certificate |
    /// | `OPOF_IMAGE`, `OPOF_IMAGE_CMD`, `OPOF_IMAGE_PORT` | image target |
    /// | `OPOF_CAPACITY`, `OPOF_FILL_LIMIT` | capacity, or how far to fill to learn it |
    /// | `OPOF_TCP_TIMEOUT`, `OPOF_UDP_TIMEOUT`, `OPOF_MAX_CACHE_TIMEOUT` | advertised timeouts, s |
    /// | `OPOF_MAX_MESSAGE_BYTES` | advertised gRPC message limit |
    /// | `OPOF_TMO_TOLERANCE_MS` | lateness allowed to idle closes in real time (default 1000) |
    /// | `OPOF_PROFILES` | comma-separated field-variant profiles |
    /// | `OPOF_FAULT` | embedded only: the device imitates these defects (comma-separated) |
    /// | `OPOF_ACTIVATION_ENDPOINT` | a VNF's Activation server (`host:port` or `https://host:port`) |
    /// | `OPOF_ACTIVATION_FAULT` | embedded only: the project's Activation server imitates this defect |
    /// | `OPOF_PORTS` | traffic access to an external device: `ext0=SPEC,ext1=SPEC,vnf0=SPEC,vnf1=SPEC[,collector=SPEC]`, the suite's ends (`afpacket:IF`, `tap:NAME`, `udp:DEVICE,bind=LOCAL`) |
    /// | `OPOF_EVIDENCE_DIR` | where the DP cases' pcapng captures go |
    pub fn from_env() -> Result<Self, TargetError> {
        let mut c = TargetConfig {
            endpoint: env("OPOF_ENDPOINT"),
            tls_dir: env("OPOF_TLS_DIR").map(PathBuf::from),
            ca: env("OPOF_CA").map(PathBuf::from),
            cert: env("OPOF_CERT").map(PathBuf::from),
            key: env("OPOF_KEY").map(PathBuf::from),
            server_name: env("OPOF_SERVER_NAME"),
            image: env("OPOF_IMAGE"),
            image_cmd: env("OPOF_IMAGE_CMD").map(|v| v.split_whitespace().map(String::from).collect()),
            capacity: env_parse("OPOF_CAPACITY")?,
            tcp_timeout: env_parse("OPOF_TCP_TIMEOUT")?,
            udp_timeout: env_parse("OPOF_UDP_TIMEOUT")?,
            faults: env_parse("OPOF_FAULT")?.unwrap_or_default(),
            activation_endpoint: env("OPOF_ACTIVATION_ENDPOINT"),
            activation_fault: env_parse("OPOF_ACTIVATION_FAULT")?,
            evidence_dir: env("OPOF_EVIDENCE_DIR").map(PathBuf::from),
            ..TargetConfig::default()
        };
        if let Some(v) = env("OPOF_PORTS") {
            c.ports = Some(crate::traffic::parse_ports(&v).map_err(|reason| TargetError::Env {
                name: "OPOF_PORTS",
                value: v.clone(),
                reason,
            })?);
        }
        if let Some(api) = env_parse("OPOF_API")? {
            c.api = api;
        }
        if let Some(p) = env_parse("OPOF_IMAGE_PORT")? {
            c.image_port = p;
        }
        if let Some(n) = env_parse("OPOF_FILL_LIMIT")? {
            c.fill_limit = n;
        }
        if let Some(n) = env_parse("OPOF_MAX_CACHE_TIMEOUT")? {
            c.max_cache_timeout = n;
        }
        if let Some(n) = env_parse("OPOF_MAX_MESSAGE_BYTES")? {
            c.max_message_bytes = n;
        }
        if let Some(ms) = env_parse::<u64>("OPOF_TMO_TOLERANCE_MS")? {
            c.tolerance = Duration::from_millis(ms);
        }
        if let Some(v) = env("OPOF_PROFILES") {
            c.profiles = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().map_err(|e| TargetError::Env { name: "OPOF_PROFILES", value: v.clone(), reason: e }))
                .collect::<Result<_, _>>()?;
        }
        c.kind = match env_parse("OPOF_TARGET")? {
            Some(k) => k,
            None if c.endpoint.is_some() => TargetKind::Endpoint,
            None if c.image.is_some() => TargetKind::Image,
            None => TargetKind::Embedded,
        };
        Ok(c)
    }

    fn client_tls(&self) -> Result<Option<ClientTls>, TargetError> {
        let mut t = match (&self.tls_dir, &self.ca) {
            (Some(d), _) => ClientTls::from_dir(d)?,
            (None, Some(ca)) => {
                let pair = match (&self.cert, &self.key) {
                    (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                    (None, None) => None,
                    _ => {
                        return Err(TargetError::Config(
                            "a client certificate needs both OPOF_CERT and OPOF_KEY".into(),
                        ))
                    }
                };
                ClientTls::from_files(ca, pair)?
            }
            (None, None) => return Ok(None),
        };
        t.domain = self.server_name.clone();
        Ok(Some(t))
    }
}

/// TLS as the suite reaches it: where, trusting what, with which client certificate.
#[derive(Clone, Debug)]
pub struct TlsAccess {
    pub address: String,
    pub client: ClientTls,
    /// Whether the server requires a client certificate.
    pub mutual: bool,
}

/// What the run knows about its target; part of the report.
#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    pub kind: TargetKind,
    /// Address (or image) certified.
    pub address: String,
    /// Flavour the cases speak.
    pub flavour: String,
    /// Flavours whose paths the endpoint serves.
    pub served_flavours: Vec<String>,
    pub tls: bool,
    pub mutual_tls: bool,
    pub capacity: Option<usize>,
    /// Whether `capacity` was learned by filling the table rather than stated.
    pub capacity_learned: bool,
    pub tcp_timeout: Option<u32>,
    pub udp_timeout: Option<u32>,
    pub max_cache_timeout: u32,
    pub max_message_bytes: usize,
    pub virtual_time: bool,
    pub profiles: Vec<Profile>,
    /// The Activation server certified by the ACT cases, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// How the suite reaches the device's ports, or why it cannot.
    pub traffic: String,
}

impl TargetInfo {
    /// What is known of a target the suite could not reach: what it was told.
    pub fn unreached(c: &TargetConfig) -> TargetInfo {
        TargetInfo {
            kind: c.kind,
            address: match c.kind {
                TargetKind::Embedded => "embedded".into(),
                TargetKind::Endpoint => c.endpoint.clone().unwrap_or_default(),
                TargetKind::Image => c.image.clone().unwrap_or_default(),
            },
            flavour: c.api.to_string(),
            served_flavours: Vec::new(),
            tls: c.tls_dir.is_some() || c.ca.is_some(),
            mutual_tls: c.tls_dir.is_some() || c.cert.is_some(),
            capacity: c.capacity,
            capacity_learned: false,
            tcp_timeout: c.tcp_timeout,
            udp_timeout: c.udp_timeout,
            max_cache_timeout: c.max_cache_timeout,
            max_message_bytes: c.max_message_bytes,
            virtual_time: c.kind == TargetKind::Embedded,
            profiles: c.profiles.clone(),
            activation: c.activation_endpoint.clone(),
            image: c.image.clone().filter(|_| c.kind == TargetKind::Image),
            fault: (!c.faults.is_empty()).then(|| c.faults.to_string()),
            traffic: "not reached".into(),
        }
    }
}

/// How time passes for the target.
#[derive(Clone)]
pub enum Time {
    /// The embedded device's virtual clock: the suite moves it and closes what is due.
    Virtual {
        clock: Arc<ManualClock>,
        device: Arc<Device>,
    },
    Real,
}

/// A running target: the channel to it and what keeps it alive.
pub struct Target {
    pub info: TargetInfo,
    pub config: TargetConfig,
    pub channel: Channel,
    /// Address of `channel`, and its TLS (`None`: plaintext).
    pub address: String,
    pub main_tls: Option<ClientTls>,
    pub flavour: Flavour,
    /// Where and how the suite reaches the target over TLS (the CONN cases), when it can.
    pub tls: Option<TlsAccess>,
    /// The Activation server the ACT cases certify, when there is one.
    pub activation: Option<Channel>,
    pub time: Time,
    /// Access to the device's ports, or why there is none (the reason DP cases are SKIP).
    pub traffic: Result<Arc<Traffic>, String>,
    _keep: Keep,
}

enum Keep {
    Nothing,
    Embedded { stop: Vec<oneshot::Sender<()>>, _dir: tempfile::TempDir },
    Image { _container: Box<testcontainers::ContainerAsync<testcontainers::GenericImage>>, _dir: tempfile::TempDir },
}

impl Drop for Keep {
    fn drop(&mut self) {
        if let Keep::Embedded { stop, .. } = self {
            for s in stop.drain(..) {
                let _ = s.send(());
            }
        }
    }
}

async fn connect(address: &str, tls: Option<&ClientTls>) -> Result<Channel, TargetError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let err = |reason: String| TargetError::Connect { address: address.to_string(), reason };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| err(format!("not an address: {e}")))?
        .tcp_nodelay(true)
        .initial_connection_window_size(16 << 20)
        .initial_stream_window_size(4 << 20)
        .connect_timeout(Duration::from_secs(5));
    if let Some(t) = tls {
        ep = ep.tls_config(t.to_tonic()).map_err(|e| err(format!("TLS configuration: {e}")))?;
    }
    ep.connect().await.map_err(|e| err(error_chain(&e)))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

async fn run(cmd: &str) -> Result<String, TargetError> {
    let c = cmd.to_string();
    let out = tokio::task::spawn_blocking(move || std::process::Command::new("sh").arg("-c").arg(c).output())
        .await
        .map_err(|e| TargetError::Docker(format!("{cmd}: {e}")))?
        .map_err(|e| TargetError::Docker(format!("{cmd}: {e}")))?;
    if !out.status.success() {
        return Err(TargetError::Docker(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Gives the container one end of a veth pair per port, named as the port (ext0, ..., up, in
/// its network namespace); the suite keeps the other ends, in its own namespace, up and with
/// IPv6 off so the kernel adds no chatter. The pairs go away with the container. Returns the
/// suite's ends.
async fn wire_ports(container: &str) -> Result<Vec<(PortId, String)>, TargetError> {
    let pid = run(&format!("docker inspect -f '{{{{.State.Pid}}}}' {container}")).await?;
    if pid.parse::<u32>().map_or(true, |p| p == 0) {
        return Err(TargetError::Docker(format!("the container {container} is not running (pid {pid:?})")));
    }
    let tag: String = container.chars().take(6).collect();
    let mut ends = Vec::new();
    for (i, p) in PortId::ALL.into_iter().enumerate() {
        let mine = format!("ocf{tag}s{i}");
        run(&format!(
            "ip link add {mine} type veth peer name {p} netns {pid} && \
             (sysctl -qw net.ipv6.conf.{mine}.disable_ipv6=1 || true) && ip link set {mine} up && \
             nsenter -t {pid} -n ip link set {p} up"
        ))
        .await?;
        ends.push((p, mine));
    }
    Ok(ends)
}

/// Waits for the device in the container to say it serves (after its ports appeared).
async fn wait_serving(c: &testcontainers::ContainerAsync<testcontainers::GenericImage>) -> Result<(), TargetError> {
    let start = std::time::Instant::now();
    loop {
        let mut log = c.stdout_to_vec().await.unwrap_or_default();
        log.extend(c.stderr_to_vec().await.unwrap_or_default());
        let text = String::from_utf8_lossy(&log);
        if text.contains("serving") {
            return Ok(());
        }
        if !c.is_running().await.unwrap_or(false) || start.elapsed() > Duration::from_secs(60) {
            return Err(TargetError::Docker(format!(
                "the device in the container did not start serving: {}",
                text.trim()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let m = x.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = x.source();
    }
    s
}

/// The endpoint could not be reached: why, in words (see [`crate::diagnose`]).
async fn unreachable(address: &str, tls: Option<&ClientTls>, error: &str) -> TargetError {
    let reason =
        crate::diagnose::explain(address, tls.is_some(), tls.is_some_and(|t| t.identity.is_some()), error).await;
    TargetError::Connect { address: address.to_string(), reason }
}

/// A channel to `address` with the given TLS (for cases that connect differently).
pub async fn channel(address: &str, tls: Option<&ClientTls>) -> Result<Channel, TargetError> {
    connect(address, tls).await
}

impl Target {
    /// Starts (embedded, image) or reaches (endpoint) the target and learns what it can.
    pub async fn start(config: TargetConfig) -> Result<Target, TargetError> {
        if (!config.faults.is_empty() || config.activation_fault.is_some()) && config.kind != TargetKind::Embedded {
            return Err(TargetError::Config(
                "OPOF_FAULT and OPOF_ACTIVATION_FAULT apply to the embedded target only".into(),
            ));
        }
        match config.kind {
            TargetKind::Embedded => Self::embedded(config).await,
            TargetKind::Endpoint => Self::endpoint(config).await,
            TargetKind::Image => Self::image(config).await,
        }
    }

    async fn embedded(mut config: TargetConfig) -> Result<Target, TargetError> {
        let table = TableConfig {
            capacity: config.capacity.unwrap_or(EMBEDDED_CAPACITY),
            closed_queue_capacity: config.capacity.unwrap_or(EMBEDDED_CAPACITY),
            tcp_timeout: config.tcp_timeout.unwrap_or(TableConfig::default().tcp_timeout),
            udp_timeout: config.udp_timeout.unwrap_or(TableConfig::default().udp_timeout),
            max_cache_timeout: config.max_cache_timeout,
            ..TableConfig::default()
        };
        config.capacity = Some(table.capacity);
        config.tcp_timeout = Some(table.tcp_timeout);
        config.udp_timeout = Some(table.udp_timeout);
        let clock = Arc::new(ManualClock::new(EMBEDDED_T0));
        let device = Device::with_fault(table, clock.clone(), config.faults)
            .map_err(|e| TargetError::Embedded(e.to_string()))?;
        let dir = tempfile::tempdir().map_err(|e| TargetError::Embedded(format!("temporary folder: {e}")))?;
        tls::generate(dir.path(), &[], false)?;
        let mut stop = Vec::new();
        let mut addrs = Vec::new();
        for tls in [None, Some(ServerTls::from_dir(dir.path())?)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| TargetError::Embedded(format!("loopback listener: {e}")))?;
            addrs.push(listener.local_addr().map_err(|e| TargetError::Embedded(e.to_string()))?);
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            let options = ServeOptions { tls, max_message_bytes: config.max_message_bytes, ..ServeOptions::default() };
            tokio::spawn(control::serve(device.clone(), listener, options, async {
                let _ = rx.await;
            }));
        }
        // The project's own Activation server (the VNF side), for the ACT cases.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| TargetError::Embedded(format!("loopback listener: {e}")))?;
        let act_addr = listener.local_addr().map_err(|e| TargetError::Embedded(e.to_string()))?;
        let (tx, rx) = oneshot::channel::<()>();
        stop.push(tx);
        let registry = Arc::new(parking_lot::Mutex::new(Registry::with_fault(config.activation_fault)));
        let service = ActivationService::new(registry).into_server();
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = rx.await;
            },
        ));
        config.activation_endpoint = Some(act_addr.to_string());
        let address = addrs[0].to_string();
        let channel = connect(&address, None).await?;
        let tls = TlsAccess { address: addrs[1].to_string(), client: ClientTls::from_dir(dir.path())?, mutual: true };
        let dp = MemDatapath::virtual_time(device.clone(), DatapathConfig::default(), clock.clone());
        let traffic = Ok(Arc::new(Traffic::in_memory(dp, clock.clone())));
        let time = Time::Virtual { clock, device };
        Self::finish(config, address, channel, None, Some(tls), time, traffic, Keep::Embedded { stop, _dir: dir }).await
    }

    async fn endpoint(config: TargetConfig) -> Result<Target, TargetError> {
        let address = config
            .endpoint
            .clone()
            .ok_or_else(|| TargetError::Config("the endpoint target needs OPOF_ENDPOINT=host:port".into()))?;
        // `http://` or `https://` in front is the user saying which they mean: it must agree
        // with the TLS material given (OPOF_TLS_DIR / OPOF_CA), and is not part of the address.
        let parsed = opof_proto::client::Endpoint::parse(&address).map_err(TargetError::Config)?;
        parsed
            .check_tls(config.client_tls()?.is_some(), "OPOF_TLS_DIR / OPOF_CA, or --tls-dir / --ca")
            .map_err(TargetError::Config)?;
        let address = parsed.address.to_string();
        Self::remote(config, address, Keep::Nothing, None).await
    }

    /// A target reached over the network in real time, with the run's TLS material if any.
    /// `no_ports`: why there is no traffic access, when the generic reason does not fit.
    async fn remote(
        config: TargetConfig,
        address: String,
        keep: Keep,
        no_ports: Option<String>,
    ) -> Result<Target, TargetError> {
        let client_tls = config.client_tls()?;
        // The ports first: TAP devices the suite holds must exist before a device that waits
        // for them (`--wait-for-ports`) starts serving.
        let traffic = match &config.ports {
            None if no_ports.is_some() => Err(no_ports.unwrap_or_default()),
            None => Err("no traffic access to the device's ports: name the suite's ends with OPOF_PORTS \
                         (or --ports), e.g. ext0=afpacket:veth0p,ext1=afpacket:veth1p,vnf0=...,vnf1=...,collector=..."
                .to_string()),
            Some(specs) => {
                Ok(Arc::new(Traffic::ports(specs).map_err(|e| TargetError::Config(format!("traffic access: {e}")))?))
            }
        };
        // A device given its ports just now may need a moment before it listens.
        let patience = if config.ports.is_some() { Duration::from_secs(5) } else { Duration::ZERO };
        let started = std::time::Instant::now();
        let channel = loop {
            match connect(&address, client_tls.as_ref()).await {
                Ok(c) => break c,
                Err(_) if started.elapsed() < patience => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(TargetError::Connect { reason, .. }) => {
                    return Err(unreachable(&address, client_tls.as_ref(), &reason).await)
                }
                Err(e) => return Err(e),
            }
        };
        let tls = client_tls.clone().map(|client| TlsAccess {
            address: address.clone(),
            mutual: client.identity.is_some(),
            client,
        });
        Self::finish(config, address, channel, client_tls, tls, Time::Real, traffic, keep).await
    }

    async fn image(mut config: TargetConfig) -> Result<Target, TargetError> {
        use testcontainers::core::{IntoContainerPort, WaitFor};
        use testcontainers::runners::AsyncRunner;
        use testcontainers::{GenericImage, ImageExt};

        let image = config
            .image
            .clone()
            .ok_or_else(|| TargetError::Config("the image target needs OPOF_IMAGE=name:tag".into()))?;
        let (name, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
        let dir = tempfile::tempdir().map_err(|e| TargetError::Docker(format!("temporary folder: {e}")))?;
        let reference = config.image_cmd.is_none();
        let mut cmd = config.image_cmd.clone().unwrap_or_else(reference_image_cmd);
        // The reference image gets ports when the suite can wire them: veth pairs whose far
        // ends the suite keeps (see `wire_ports`). The device waits for them to appear.
        // Another image, or ports the user named: nothing to wire (`remote` says why without).
        let unwired = !reference || config.ports.is_some();
        let wire = !unwired && is_root();
        let no_ports = (!unwired && !wire)
            .then(|| "the image target wires the container's ports to veth pairs, which needs root".to_string());
        if wire {
            for p in PortId::ALL {
                cmd.extend(["--port".to_string(), format!("{p}=afpacket:{p}")]);
            }
            cmd.extend(["--wait-for-ports".to_string(), "60".to_string()]);
        }
        let wait = if wire { WaitFor::Nothing } else { WaitFor::message_on_either_std("serving") };
        let mut request = GenericImage::new(name, tag)
            .with_exposed_port(config.image_port.tcp())
            .with_wait_for(wait)
            .with_security_opt("seccomp=unconfined")
            .with_cmd(cmd)
            .with_startup_timeout(Duration::from_secs(60));
        if reference {
            // The reference image is told its capacity and timeouts (reference_image_cmd), and
            // gets mutual TLS material made for this run.
            config.capacity = config.capacity.or(Some(REFERENCE_IMAGE_CAPACITY));
            config.tcp_timeout = config.tcp_timeout.or(Some(REFERENCE_IMAGE_TCP_TIMEOUT));
            config.udp_timeout = config.udp_timeout.or(Some(REFERENCE_IMAGE_UDP_TIMEOUT));
            let g = tls::generate(dir.path(), &[], false)?;
            for f in &g.files {
                let file = f.file_name().unwrap_or_default().to_string_lossy().to_string();
                request = request.with_copy_to(format!("/tls/{file}"), f.clone());
            }
            config.tls_dir = Some(dir.path().to_path_buf());
            config.server_name = Some("localhost".into());
        }
        let container = request.start().await.map_err(|e| TargetError::Docker(format!("starting {image}: {e}")))?;
        if wire {
            let ends = wire_ports(container.id()).await?;
            wait_serving(&container).await?;
            config.ports = Some(ends.into_iter().map(|(p, n)| (p, PortSpec::AfPacket(n))).collect());
        }
        let port = container
            .get_host_port_ipv4(config.image_port.tcp())
            .await
            .map_err(|e| TargetError::Docker(format!("port of {image}: {e}")))?;
        let keep = Keep::Image { _container: Box::new(container), _dir: dir };
        Self::remote(config, format!("127.0.0.1:{port}"), keep, no_ports).await
    }

    #[allow(clippy::too_many_arguments)] // one private constructor: every part of a Target
    async fn finish(
        config: TargetConfig,
        address: String,
        channel: Channel,
        main_tls: Option<ClientTls>,
        tls: Option<TlsAccess>,
        time: Time,
        traffic: Result<Arc<Traffic>, String>,
        keep: Keep,
    ) -> Result<Target, TargetError> {
        let activation = match &config.activation_endpoint {
            None => None,
            Some(a) => Some(match a.strip_prefix("https://") {
                Some(rest) => connect(rest, main_tls.as_ref()).await?,
                None => connect(a.strip_prefix("http://").unwrap_or(a), None).await?,
            }),
        };
        let served = match detect_flavours(channel.clone()).await {
            Ok(s) => s,
            Err(s) => return Err(unreachable(&address, main_tls.as_ref(), &error_chain(&s)).await),
        };
        let flavour = match config.api {
            ApiChoice::Fixed(f) => f,
            ApiChoice::Auto => *served.first().ok_or_else(|| TargetError::Connect {
                address: address.clone(),
                reason: "no SessionTable flavour is served (every v1, v2 and v1alpha5 path answers UNIMPLEMENTED)"
                    .into(),
            })?,
        };
        let info = TargetInfo {
            kind: config.kind,
            address: if config.kind == TargetKind::Embedded { "embedded".into() } else { address.clone() },
            flavour: flavour.to_string(),
            served_flavours: served.iter().map(|f| f.to_string()).collect(),
            tls: tls.is_some(),
            mutual_tls: tls.as_ref().is_some_and(|t| t.mutual),
            capacity: config.capacity,
            capacity_learned: false,
            tcp_timeout: config.tcp_timeout,
            udp_timeout: config.udp_timeout,
            max_cache_timeout: config.max_cache_timeout,
            max_message_bytes: config.max_message_bytes,
            virtual_time: matches!(time, Time::Virtual { .. }),
            profiles: config.profiles.clone(),
            activation: config.activation_endpoint.as_ref().map(|a| {
                if config.kind == TargetKind::Embedded {
                    "embedded".into()
                } else {
                    a.clone()
                }
            }),
            image: config.image.clone().filter(|_| config.kind == TargetKind::Image),
            fault: (!config.faults.is_empty()).then(|| config.faults.to_string()),
            traffic: match &traffic {
                Ok(t) => t.description.clone(),
                Err(why) => why.clone(),
            },
        };
        Ok(Target { info, config, channel, address, main_tls, flavour, tls, activation, time, traffic, _keep: keep })
    }
}
