//! `opof bench`: load generators against any SessionTable endpoint, printing one JSON object
//! per run (figure, value, unit, parameters, machine cores).
//!
//! - `add`: sessions *accepted* per wall-clock second through addSession streams.
//! - `get`: getSession calls per second with N in flight, and latency percentiles.
//! - `table-memory`: resident memory per stored session of the reference table, in-process.
//!
//! Requests are built before the clock starts, so the figure is the device and the transport,
//! not the generator's allocation.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use opof_device::tls::ClientTls;
use opof_proto::client::{Flavour, SessionTableClient};
use opof_proto::convert::ipv4_to_wire;
use opof_proto::wire;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// addSession rate: sessions accepted per second.
    Add(AddArgs),
    /// getSession rate and latency.
    Get(GetArgs),
    /// Memory per stored session of the reference session table (in-process, no gRPC).
    TableMemory(MemoryArgs),
    /// Frames per second through the reference datapath on the in-memory wire (one core):
    /// sessions of the benchmark workload, frames of random sessions in batches.
    Datapath(DatapathArgs),
    /// Aging: sessions that expire together; the cost of the wheel when nothing expires (by
    /// table size), the cost per close, and how late the closes are in real time.
    Aging(AgingArgs),
}

#[derive(Args, Debug)]
pub struct AgingArgs {
    /// Sessions that expire at the same instant.
    #[arg(long, default_value_t = 1_000_000)]
    pub sessions: u64,
    /// Their cacheTimeout, in seconds.
    #[arg(long, default_value_t = 2)]
    pub timeout: u32,
    /// How often the aging task looks for due sessions, in milliseconds (`opof device`: 10).
    #[arg(long, default_value_t = 10)]
    pub period_ms: u64,
    /// Shards of the device's table in the real-time part, each aged by a thread of its own
    /// (as `opof device --workers N` does with a task per shard).
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
}

#[derive(Args, Debug)]
pub struct DatapathArgs {
    /// Sessions in the table.
    #[arg(long, default_value_t = 1_000_000)]
    pub sessions: u64,
    /// Distinct frames (drawn over random sessions), replayed round after round.
    #[arg(long, default_value_t = 1 << 16)]
    pub frames: usize,
    /// Frames per batch (as a port loop hands them over).
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Frames to push in all.
    #[arg(long, default_value_t = 20_000_000)]
    pub total: u64,
    /// Workers (threads), each pushing its share of the flows (a flow's frames all to one
    /// worker, chosen by a hash of its endpoints as a NIC's RSS would, not by the table's
    /// shard); the sessions are in as many shards.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Shards of the table (default: as many as workers); `--workers 2 --shards 1` shares one
    /// lock between the workers, for comparison.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Each worker on a device of its own (its own copy of the table, nothing shared): what
    /// the machine lets that many workers do apart, the ceiling of the shared device's figure.
    #[arg(long)]
    pub independent: bool,
    /// How flows are spread over the workers: `shard` (each flow to the worker of its session's
    /// shard, as `opof device` programs its AF_PACKET fanout groups) or `kernel` (a hash of the
    /// flow's endpoints unrelated to the shards, as the kernel's own flow hash).
    #[arg(long, value_name = "HOW", default_value = "shard")]
    pub steer: opof_device::datapath::steer::Spread,
}

#[derive(Args, Debug, Clone)]
pub struct Target {
    /// host:port of the SessionTable endpoint.
    #[arg(long, default_value = "127.0.0.1:50151")]
    pub endpoint: String,
    /// Flavour of the method paths: v1, v2, v1alpha5, or auto (detected from the paths the
    /// endpoint serves; v1 first).
    #[arg(long, default_value = "auto")]
    pub api: ApiChoice,
    /// Mutual TLS with a folder made by `opof certs` (ca.pem, client.pem, client.key).
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// TLS: the CA to trust (without a client certificate unless --tls-dir).
    #[arg(long, conflicts_with = "tls_dir")]
    pub ca: Option<PathBuf>,
}

pub use opof_proto::client::ApiChoice;

impl Target {
    /// The flavour to speak on `channel`: the one asked for, or the first the endpoint serves.
    pub async fn flavour(&self, channel: &Channel) -> anyhow::Result<Flavour> {
        match self.api {
            ApiChoice::Fixed(f) => Ok(f),
            ApiChoice::Auto => opof_proto::client::detect_flavours(channel.clone())
                .await
                .with_context(|| format!("detecting the flavour of {}", self.endpoint))?
                .first()
                .copied()
                .with_context(|| format!("{} serves no SessionTable flavour (v1, v2, v1alpha5)", self.endpoint)),
        }
    }

    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let endpoint = opof_proto::client::Endpoint::parse(&self.endpoint).map_err(anyhow::Error::msg)?;
        let tls = match (&self.tls_dir, &self.ca) {
            (Some(d), _) => Some(ClientTls::from_dir(d)?),
            (None, Some(ca)) => Some(ClientTls::from_files(ca, None)?),
            (None, None) => None,
        };
        endpoint.check_tls(tls.is_some(), "--tls-dir or --ca").map_err(anyhow::Error::msg)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{}", endpoint.address))
            .with_context(|| format!("bad endpoint {:?}", self.endpoint))?
            .tcp_nodelay(true)
            .initial_connection_window_size(16 << 20)
            .initial_stream_window_size(4 << 20)
            .connect_timeout(Duration::from_secs(5));
        if let Some(t) = tls {
            ep = ep.tls_config(t.to_tonic())?;
        }
        ep.connect().await.with_context(|| format!("connecting to {}", self.endpoint))
    }
}

#[derive(Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    pub target: Target,
    /// Sessions to add in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub sessions: u64,
    /// Sessions per addSession stream.
    #[arg(long, default_value_t = 10_000)]
    pub per_stream: u64,
    /// Streams in flight at once (one connection each).
    #[arg(long, default_value_t = 2)]
    pub streams: usize,
    /// First session id (ids and 5-tuples are unique from there on).
    #[arg(long, default_value_t = 0)]
    pub first_id: u64,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: Target,
    /// getSession calls in all.
    #[arg(long, default_value_t = 200_000)]
    pub calls: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Sessions to add first (ids first_id.. first_id+preload) for the calls to find.
    #[arg(long, default_value_t = 10_000)]
    pub preload: u64,
    /// Id of the first preloaded session (far above the ids other loads use, so both can run
    /// against one device).
    #[arg(long, default_value_t = 1 << 40)]
    pub first_id: u64,
    /// Meanwhile, run an addSession load of this many sessions per second on its own
    /// connection (1,000-session streams, paced), to see unary latency under add load.
    /// 0: no add load.
    #[arg(long, default_value_t = 0)]
    pub add_load_rate: u64,
}

#[derive(Args, Debug)]
pub struct MemoryArgs {
    /// Sessions to add to the table before its memory is measured.
    #[arg(long, default_value_t = 1_000_000)]
    pub sessions: u64,
    /// Add IPv6 sessions instead of IPv4.
    #[arg(long)]
    pub ipv6: bool,
    /// Sessions per add batch (as in a stream).
    #[arg(long, default_value_t = 10_000)]
    pub per_stream: u64,
}

/// The i-th session of a load: a unique id and a unique IPv4 5-tuple.
pub fn session(id: u64) -> wire::SessionRequest {
    let n = id & 0xffff_ffff_ffff;
    wire::SessionRequest {
        session_id: id,
        ip_version: wire::IpVersion::Ipv4 as i32,
        source_ip: ipv4_to_wire(Ipv4Addr::from(0x0a00_0000u32.wrapping_add((n >> 16) as u32))),
        destination_ip: ipv4_to_wire(Ipv4Addr::new(192, 168, 0, 1)),
        source_port: (n & 0xffff) as u32,
        destination_port: 443,
        protocol_id: wire::ProtocolId::Tcp as i32,
        action: Some(wire::ActionParameters { action_type: wire::ActionType::Forward as i32, ..Default::default() }),
        cache_timeout: 3600,
        ..Default::default()
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU time the hypervisor has given to something else while this machine's CPUs had work
/// (the `steal` column of /proc/stat's `cpu` line: every CPU together, since boot), in
/// seconds; `None` where there is no such file (not Linux). On a virtual machine it is what
/// moves a timing without the code changing: a benchmark reports what it saw of it.
pub fn host_steal_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf reads a configuration value; no memory is involved.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    steal_ticks(&stat).filter(|_| ticks_per_sec > 0).map(|t| t as f64 / ticks_per_sec as f64)
}

/// The steal ticks of /proc/stat's text: the eighth number of the `cpu` line.
fn steal_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

/// The steal between two readings of [`host_steal_secs`], to the hundredth of a second (the
/// kernel counts it in ticks); null where it could not be read.
fn steal_between(before: Option<f64>, after: Option<f64>) -> serde_json::Value {
    match (before, after) {
        (Some(b), Some(a)) => json!(((a - b).max(0.0) * 100.0).round() / 100.0),
        _ => serde_json::Value::Null,
    }
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let steal = host_steal_secs();
    let mut out = match cmd {
        BenchCommand::Add(a) => bench_add(&a).await?,
        BenchCommand::Get(a) => bench_get(&a).await?,
        BenchCommand::TableMemory(a) => table_memory(&a)?,
        BenchCommand::Datapath(a) => datapath(&a)?,
        BenchCommand::Aging(a) => aging(&a)?,
    };
    // Over the whole command, unless the command measured it over its timed part.
    if let Some(o) = out.as_object_mut() {
        o.entry("host_steal_secs").or_insert_with(|| steal_between(steal, host_steal_secs()));
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

pub async fn bench_add(a: &AddArgs) -> anyhow::Result<serde_json::Value> {
    if a.per_stream == 0 || a.streams == 0 {
        bail!("--per-stream and --streams must be at least 1");
    }
    let batches: Vec<Vec<wire::SessionRequest>> = (0..a.sessions.div_ceil(a.per_stream))
        .map(|b| {
            let lo = a.first_id + b * a.per_stream;
            let hi = (lo + a.per_stream).min(a.first_id + a.sessions);
            (lo..hi).map(session).collect()
        })
        .collect();
    let batches = Arc::new(std::sync::Mutex::new(batches.into_iter()));
    let mut clients = Vec::new();
    let mut flavour = None;
    for _ in 0..a.streams {
        let ch = a.target.connect().await?;
        let f = match flavour {
            Some(f) => f,
            None => *flavour.insert(a.target.flavour(&ch).await?),
        };
        clients.push(SessionTableClient::new(ch, f));
    }
    let flavour = flavour.expect("at least one stream");
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut c in clients {
        let (batches, accepted, refused) = (batches.clone(), accepted.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(batch) = batches.lock().unwrap_or_else(|p| p.into_inner()).next() else { return Ok(()) };
                let n = batch.len() as u64;
                let r = c.add_session(tokio_stream::iter(batch)).await?.into_inner();
                let failed = r.response_error.len() as u64;
                accepted.fetch_add(n - failed.min(n), Ordering::Relaxed);
                refused.fetch_add(failed, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await?.map_err(|s: tonic::Status| anyhow::anyhow!("addSession failed: {s}"))?;
    }
    let secs = started.elapsed().as_secs_f64();
    let acc = accepted.load(Ordering::Relaxed);
    Ok(json!({
        "figure": "add_sessions_accepted_per_second",
        "value": (acc as f64 / secs).round(),
        "unit": "sessions/s",
        "accepted": acc,
        "refused": refused.load(Ordering::Relaxed),
        "seconds": secs,
        "parameters": {"endpoint": a.target.endpoint, "api": flavour.to_string(), "sessions": a.sessions,
                       "per_stream": a.per_stream, "streams": a.streams, "tls": a.target.tls_dir.is_some() || a.target.ca.is_some()},
        "cores": cores(),
    }))
}

pub async fn bench_get(a: &GetArgs) -> anyhow::Result<serde_json::Value> {
    if a.concurrency == 0 || a.preload == 0 || a.connections == 0 {
        bail!("--concurrency, --connections and --preload must be at least 1");
    }
    let first_channel = a.target.connect().await?;
    let flavour = a.target.flavour(&first_channel).await?;
    let mut c = SessionTableClient::new(first_channel, flavour);
    for lo in (0..a.preload).step_by(10_000) {
        let hi = (lo + 10_000).min(a.preload);
        let batch: Vec<_> = (lo..hi).map(|i| session(a.first_id + i)).collect();
        c.add_session(tokio_stream::iter(batch)).await.context("preloading sessions")?;
    }
    let mut channels = Vec::new();
    for _ in 0..a.connections {
        channels.push(a.target.connect().await?);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = if a.add_load_rate > 0 {
        let mut c = SessionTableClient::new(a.target.connect().await?, flavour);
        let stop = stop.clone();
        let period = Duration::from_secs_f64(1000.0 / a.add_load_rate as f64);
        Some(tokio::spawn(async move {
            let mut next_id = 1u64 << 50;
            let mut added = 0u64;
            let mut pace = tokio::time::interval(period);
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                let batch: Vec<_> = (next_id..next_id + 1_000).map(session).collect();
                next_id += 1_000;
                let r = c.add_session(tokio_stream::iter(batch)).await?.into_inner();
                added += 1_000 - r.response_error.len() as u64;
                if r.request_status == wire::AddSessionStatus::SessionTableFull as i32 {
                    break;
                }
            }
            Ok::<u64, tonic::Status>(added)
        }))
    } else {
        None
    };
    let next = Arc::new(AtomicU64::new(0));
    let missing = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let mut c = SessionTableClient::new(channels[w % channels.len()].clone(), flavour);
        let (next, missing, calls, preload, first) = (next.clone(), missing.clone(), a.calls, a.preload, a.first_id);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    return Ok::<_, tonic::Status>(lat);
                }
                let id = first + (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % preload);
                let t = Instant::now();
                let r = c.get_session(wire::SessionId { session_id: id }).await?.into_inner();
                lat.push(t.elapsed());
                if r.request_status != wire::RequestStatus::Accepted as i32 {
                    missing.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?.map_err(|s| anyhow::anyhow!("getSession failed: {s}"))?);
    }
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let background_added = match background {
        Some(t) => Some(t.await?.map_err(|s| anyhow::anyhow!("background addSession failed: {s}"))?),
        None => None,
    };
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Ok(json!({
        "figure": "get_session_calls_per_second",
        "value": (lat.len() as f64 / secs).round(),
        "unit": "calls/s",
        "latency_us": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": pct(1.0)},
        "not_found": missing.load(Ordering::Relaxed),
        "add_load": background_added.map(|n| json!({"sessions_added": n, "rate_per_second": (n as f64 / secs).round()})),
        "seconds": secs,
        "parameters": {"endpoint": a.target.endpoint, "api": flavour.to_string(), "calls": a.calls, "concurrency": a.concurrency, "connections": a.connections, "preload": a.preload,
                       "add_load_rate": a.add_load_rate},
        "cores": cores(),
    }))
}

/// `VmRSS` and `VmHWM` (peak) of this process, bytes.
fn rss() -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .with_context(|| format!("{name} missing from /proc/self/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

pub fn table_memory(a: &MemoryArgs) -> anyhow::Result<serde_json::Value> {
    use opof_device::table::{Candidate, SessionTable, TableConfig};
    use opof_proto::domain::{SessionSpec, Timestamp};
    let mut table = SessionTable::new(TableConfig {
        capacity: (a.sessions as usize).max(1),
        closed_queue_capacity: (a.sessions as usize).max(1),
        ..TableConfig::default()
    })?;
    let specs = |lo: u64, hi: u64| -> Vec<Candidate> {
        (lo..hi)
            .map(|i| {
                let mut r = session(i);
                if a.ipv6 {
                    r.ip_version = wire::IpVersion::Ipv6 as i32;
                    let mut src = [0xfdu8; 16];
                    src[8..].copy_from_slice(&i.to_be_bytes());
                    r.source_ip_v6 = src.to_vec();
                    r.destination_ip_v6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1].to_vec();
                }
                Candidate::Valid(SessionSpec::try_from(&r).expect("generated sessions are valid"))
            })
            .collect()
    };
    let (base, _) = rss()?;
    let started = Instant::now();
    let mut lo = 0;
    while lo < a.sessions {
        let hi = (lo + a.per_stream).min(a.sessions);
        let batch = specs(lo, hi);
        table.add(&batch, Timestamp::from_secs(1_000));
        lo = hi;
    }
    let secs = started.elapsed().as_secs_f64();
    let (after, peak) = rss()?;
    let n = table.len().max(1) as f64;
    Ok(json!({
        "figure": "table_bytes_per_session",
        "value": ((after - base.min(after)) as f64 / n).round(),
        "unit": "bytes/session",
        "peak_over_final": peak.saturating_sub(base) as f64 / after.saturating_sub(base).max(1) as f64,
        "sessions": table.len(),
        "insert_rate_per_second": (n / secs).round(),
        "parameters": {"sessions": a.sessions, "ipv6": a.ipv6, "per_stream": a.per_stream},
        "cores": cores(),
    }))
}

/// What one worker of [`datapath`] did, and when it started and ended (its own clock).
struct WorkerRun {
    pushed: u64,
    offloaded: u64,
    misses: u64,
    started: Instant,
    ended: Instant,
    across: u64,
}

/// `opof bench datapath`: the in-memory datapath's rate. Each batch comes in on one external
/// port (the workload's frames split by port, batches alternating), is decided under one
/// table lock and carried out onto the in-memory wire; the wire is emptied after each batch
/// as a consumer would.
pub fn datapath(a: &DatapathArgs) -> anyhow::Result<serde_json::Value> {
    use opof_device::clock::SystemClock;
    use opof_device::control::Device;
    use opof_device::datapath::mem::MemDatapath;
    use opof_device::datapath::{ActionKind, DatapathConfig, PortId};

    if a.batch == 0 || a.frames == 0 {
        bail!("--batch and --frames must be at least 1");
    }
    if a.workers == 0 || a.workers > 64 {
        bail!("--workers must be 1 to 64");
    }
    let shards = if a.independent { a.shards.unwrap_or(1) } else { a.shards.unwrap_or(a.workers) };
    let ids: Vec<u64> = (0..a.sessions).collect();
    let devices = (0..if a.independent { a.workers } else { 1 })
        .map(|_| {
            let device =
                Device::sharded(crate::workload::config(a.sessions), Arc::new(SystemClock::new()), None, shards)?;
            for chunk in ids.chunks(10_000) {
                let batch: Vec<_> = chunk.iter().map(|&i| crate::workload::spec(i)).collect();
                device.add(&batch);
            }
            Ok(device)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let frames = crate::workload::frames(a.sessions, a.frames, 7);
    // A flow's worker, the same for both directions: its shard's (the device's steering
    // value, which `opof device` has the kernel compute for each frame), or a hash of its
    // endpoints unrelated to the shards (as RSS with a symmetric key, or the kernel's fanout
    // hash).
    let steering = devices[0].steering();
    let worker_of = |f: &[u8]| match opof_device::datapath::parse::parse(f) {
        Ok(p) if a.steer == opof_device::datapath::steer::Spread::Shard => {
            steering.tuple(&p.tuple) as usize % a.workers
        }
        Ok(p) => {
            let (x, y) = ((p.tuple.src(), p.tuple.src_port()), (p.tuple.dst(), p.tuple.dst_port()));
            let pair = if x <= y { (x, y) } else { (y, x) };
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&pair, &mut h);
            std::hash::Hasher::finish(&h) as usize % a.workers
        }
        Err(_) => 0,
    };
    // Per worker: its frames of each external port.
    type Share<'f> = Vec<(PortId, Vec<&'f [u8]>)>;
    let shares: Vec<Share> = (0..a.workers)
        .map(|w| {
            [PortId::Ext0, PortId::Ext1]
                .into_iter()
                .map(|p| {
                    let mine = frames.iter().filter(|(q, f)| *q == p && worker_of(f) == w);
                    (p, mine.map(|(_, f)| f.as_slice()).collect())
                })
                .collect()
        })
        .collect();
    let per_worker = a.total / a.workers as u64;
    let start = std::sync::Barrier::new(a.workers + 1);
    let steal_before = host_steal_secs();
    let (secs, pushed, offloaded, misses, worker_secs, across) = std::thread::scope(|scope| {
        let runs: Vec<_> = shares
            .iter()
            .enumerate()
            .map(|(w, by_port)| {
                let (device, start) = (devices[w % devices.len()].clone(), &start);
                scope.spawn(move || {
                    let batches: Vec<(PortId, &[&[u8]])> =
                        by_port.iter().flat_map(|(p, fs)| fs.chunks(a.batch).map(move |c| (*p, c))).collect();
                    let mut dp = MemDatapath::new(device, DatapathConfig::default());
                    let mut pushed = 0u64;
                    start.wait();
                    let started = Instant::now();
                    'outer: while !batches.is_empty() {
                        for (port, batch) in &batches {
                            dp.receive(*port, batch);
                            dp.clear();
                            pushed += batch.len() as u64;
                            if pushed >= per_worker {
                                break 'outer;
                            }
                        }
                    }
                    let ended = Instant::now();
                    let m = dp.metrics().snapshot();
                    let offloaded = ActionKind::ALL.iter().map(|&k| m.offloaded(k)).sum::<u64>();
                    WorkerRun { pushed, offloaded, misses: m.misses(), started, ended, across: m.batches_across_shards }
                })
            })
            .collect();
        start.wait();
        let counts: Vec<_> = runs.into_iter().map(|r| r.join().expect("a worker panicked")).collect();
        // The run lasts from the first worker's start to the last one's end, as the workers
        // clocked them (not from this thread's wake-up after the barrier, which can come late
        // when the workers hold every core, or after they finished under valgrind).
        let first = counts.iter().map(|c| c.started).min().expect("at least one worker");
        let last = counts.iter().map(|c| c.ended).max().expect("at least one worker");
        let secs = last.duration_since(first).as_secs_f64();
        let sum = |f: fn(&WorkerRun) -> u64| counts.iter().map(f).sum::<u64>();
        let worker_secs: Vec<f64> =
            counts.iter().map(|c| (c.ended.duration_since(c.started).as_secs_f64() * 1e3).round() / 1e3).collect();
        (secs, sum(|c| c.pushed), sum(|c| c.offloaded), sum(|c| c.misses), worker_secs, sum(|c| c.across))
    });
    let steal = steal_between(steal_before, host_steal_secs());
    Ok(json!({
        "figure": "in_memory_datapath",
        "value": (pushed as f64 / secs).round(),
        "unit": "frames/s",
        "ns_per_frame": (secs * 1e9 / pushed as f64 * 10.0).round() / 10.0,
        "frames": pushed,
        "offloaded": offloaded,
        "misses": misses,
        "batches_across_shards": across,
        "longest_lock_hold_ms": devices.iter().map(|d| d.take_longest_hold().as_secs_f64() * 1e3).fold(0.0, f64::max),
        // Each worker's own time: far apart, the figure is the slower one's (a worker held off
        // its core, or sharing one).
        "worker_secs": worker_secs,
        // The hypervisor's steal from every CPU while the workers ran (the sessions' setup
        // left out): a worker that lost its core for 0.1 s took 0.1 s longer.
        "host_steal_secs": steal,
        "parameters": {"sessions": a.sessions, "distinct_frames": a.frames, "batch": a.batch, "workers": a.workers, "shards": devices[0].shards(), "independent": a.independent, "steer": a.steer.to_string()},
        "cores": cores(),
    }))
}

/// A clock that stands still while the sessions are added (so that they all expire at the
/// same instant), then runs as the system clock does.
struct HeldClock {
    real: opof_device::clock::SystemClock,
    held: AtomicU64,
}

impl opof_device::clock::Clock for HeldClock {
    fn now(&self) -> opof_proto::domain::Timestamp {
        match self.held.load(Ordering::SeqCst) {
            0 => self.real.now(),
            t => opof_proto::domain::Timestamp(t),
        }
    }
}

/// Sessions `lo..hi` of the aging load, with `timeout` seconds.
fn aging_specs(lo: u64, hi: u64, timeout: u32) -> Vec<opof_device::table::Candidate> {
    (lo..hi)
        .map(|i| {
            let mut r = session(i);
            r.cache_timeout = timeout;
            opof_device::table::Candidate::Valid(
                opof_proto::domain::SessionSpec::try_from(&r).expect("generated sessions are valid"),
            )
        })
        .collect()
}

/// An empty vector with room for `n` values, its memory written once (mapped now, not faulted
/// in later while something is being measured).
fn touched<T>(n: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    let spare = v.spare_capacity_mut();
    // Not zeros (a zeroing store right after the allocation may become an untouched zeroed
    // allocation): any other byte will do, what matters is that each page is written.
    // SAFETY: writes bytes into the vector's own allocated, unused room; its length stays 0.
    unsafe { std::ptr::write_bytes(spare.as_mut_ptr(), 0x5a, spare.len()) };
    v
}

/// The median, p99 and extremes of `v` (sorted here), in milliseconds from nanoseconds.
fn distribution_ms(v: &mut [u64]) -> serde_json::Value {
    v.sort_unstable();
    let at = |q: f64| v.get(((v.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |&n| n as f64 / 1e6);
    json!({"min": at(0.0), "median": at(0.5), "p99": at(0.99), "max": at(1.0)})
}

/// Aging as the datapath ages under steady expiry, in virtual time on the session table alone:
/// `n` sessions with the default 30 s timeout, added eight at a time across one timeout so that
/// some come due in every millisecond (about n / 30,000 of them), then aged at every batch of
/// 256 frames at 10 M frames/s (every 25.6 µs) for one second of their deadlines. Most batches
/// find nothing due; what is measured is what aging costs a batch on average, closes included.
fn steady_expiry(n: u64) -> anyhow::Result<serde_json::Value> {
    use opof_device::table::{SessionTable, TableConfig};
    use opof_proto::domain::Timestamp;
    const TIMEOUT_S: u32 = 30;
    const BATCH_NS: u64 = 25_600;
    let timeout_ns = u64::from(TIMEOUT_S) * 1_000_000_000;
    let config = TableConfig { capacity: n as usize, closed_queue_capacity: n as usize, ..TableConfig::default() };
    let mut table = SessionTable::new(config)?;
    let t0 = Timestamp::from_secs(1_000);
    let groups = n.div_ceil(8);
    for g in 0..groups {
        let at = Timestamp(t0.0 + g * (timeout_ns / groups));
        table.add(&aging_specs(g * 8, (g * 8 + 8).min(n), TIMEOUT_S), at);
    }
    if table.len() as u64 != n {
        bail!("steady expiry: only {} of {n} sessions were added", table.len());
    }
    table.ready_room();
    let first = t0.0 + timeout_ns;
    table.advance(Timestamp(first));
    let batches = 1_000_000_000 / BATCH_NS;
    let mut closed = 0;
    let started = Instant::now();
    for b in 1..=batches {
        closed += table.advance(Timestamp(first + b * BATCH_NS));
        if b % 4096 == 0 {
            // As a reader would: the records do not pile up in the queue.
            table.closed().take(usize::MAX);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let expected = (n as u128 * u128::from(batches * BATCH_NS) / u128::from(timeout_ns)) as u64;
    if (closed as u64).abs_diff(expected) > 16 {
        bail!("steady expiry: {closed} sessions closed in the second, about {expected} expected");
    }
    Ok(json!({
        "ns_per_batch": (secs * 1e9 / batches as f64 * 10.0).round() / 10.0,
        "batches": batches,
        "closed": closed,
        "ns_per_close": (secs * 1e9 / closed.max(1) as f64).round(),
    }))
}

/// `opof bench aging`. Two parts:
///
/// 1. In virtual time, on the session table alone: the cost of one aging step (one 1 ms tick)
///    when nothing is due, with the sessions in the table and with an empty table — the same
///    if the cost follows what expires rather than the table's size — and the cost of closing
///    them all when they come due together; then, on another table, aging at every batch while
///    sessions come due steadily ([`steady_expiry`]).
/// 2. In real time, as `opof device` runs: the sessions are added under a clock held still, so
///    they share one deadline; an aging step runs every `period_ms` (the device's task). Each
///    record is stamped with the deadline (the session ended then); what is measured is how
///    late after it each record could be read (at the latest: when the aging call that closed
///    it returned), the longest hold of the table's lock (while the datapath and gRPC wait;
///    an aging call holds it for steps of [`opof_device::control::AGING_STEP`] units), and
///    the latency of getSession calls made one after the other meanwhile.
pub fn aging(a: &AgingArgs) -> anyhow::Result<serde_json::Value> {
    use opof_device::control::Device;
    use opof_device::table::{SessionTable, TableConfig};
    use opof_proto::domain::Timestamp;
    if a.sessions == 0 || a.timeout == 0 || a.period_ms == 0 {
        bail!("--sessions, --timeout and --period-ms must be at least 1");
    }
    let n = a.sessions;
    let a_timeout = a.timeout;
    let timeout_ns = u64::from(a.timeout) * 1_000_000_000;
    let config = TableConfig {
        capacity: n as usize,
        closed_queue_capacity: n as usize,
        max_cache_timeout: a.timeout.max(TableConfig::default().max_cache_timeout),
        ..TableConfig::default()
    };

    // Part 1: virtual time.
    // Ticks before the deadline: nothing is due in any of them.
    let idle_ticks = (timeout_ns / 1_000_000 - 1).min(20_000);
    let t0 = Timestamp::from_secs(1_000);
    let idle_ns_per_tick = |table: &mut SessionTable| {
        let started = Instant::now();
        for k in 1..=idle_ticks {
            table.advance(Timestamp(t0.0 + k * 1_000_000));
        }
        started.elapsed().as_nanos() as f64 / idle_ticks as f64
    };
    let mut empty = SessionTable::new(config.clone())?;
    empty.advance(t0);
    let idle_empty = idle_ns_per_tick(&mut empty);
    drop(empty);
    let mut table = SessionTable::new(config.clone())?;
    for lo in (0..n).step_by(10_000) {
        table.add(&aging_specs(lo, (lo + 10_000).min(n), a.timeout), t0);
    }
    if table.len() as u64 != n {
        bail!("only {} of {n} sessions were added", table.len());
    }
    // Room for an expiry of every session, as the device's room maker makes it ready once the
    // sessions stop growing (`Device::spawn_room_maker`).
    table.ready_room();
    let idle_full = idle_ns_per_tick(&mut table);
    if table.len() as u64 != n {
        bail!("virtual time: sessions closed before their deadline");
    }
    let started = Instant::now();
    let closed = table.advance(Timestamp(t0.0 + timeout_ns + 1_000_000));
    let expire_secs = started.elapsed().as_secs_f64();
    if closed as u64 != n {
        bail!("virtual time: {closed} of {n} sessions closed at their deadline");
    }
    drop(table);
    let steady = steady_expiry(n)?;

    // Part 2: real time.
    let clock = Arc::new(HeldClock { real: opof_device::clock::SystemClock::new(), held: AtomicU64::new(0) });
    let held_at = opof_device::clock::Clock::now(&*clock);
    clock.held.store(held_at.0, Ordering::SeqCst);
    if a.shards == 0 || a.shards > 64 {
        bail!("--shards must be 1 to 64");
    }
    let device = Device::sharded(config, clock.clone(), None, a.shards)?;
    for lo in (0..n).step_by(10_000) {
        device.add(&aging_specs(lo, (lo + 10_000).min(n), a.timeout));
    }
    clock.held.store(0, Ordering::SeqCst);
    let deadline = held_at.0 + timeout_ns;
    device.take_longest_hold();
    // getSession as a VNF would call it meanwhile: one after the other, random ids, timed.
    let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let (device, reading) = (device.clone(), reading.clone());
        std::thread::spawn(move || {
            // Room written once before the expiry: the harness's own page faults would take
            // the cores the device's aging runs on.
            let mut latencies = touched(1 << 24);
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            while reading.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let started = Instant::now();
                std::hint::black_box(device.get(x % n));
                latencies.push(started.elapsed().as_nanos() as u64);
            }
            latencies
        })
    };
    // getClosedSessions as a VNF would call it meanwhile: records taken as soon as they can
    // be, each stamped with when its reader got it.
    let read = Arc::new(AtomicU64::new(0));
    let collector = {
        let (device, clock, read) = (device.clone(), clock.clone(), read.clone());
        std::thread::spawn(move || {
            // What is kept of a record: its end, and when it was read (a VNF's reader would
            // hand each record on; this one keeps 16 bytes of it rather than copy it whole).
            let mut got: Vec<(Option<Timestamp>, u64)> = touched(n as usize);
            let give_up = Instant::now() + Duration::from_secs(u64::from(a_timeout) + 60);
            while (got.len() as u64) < n && Instant::now() < give_up {
                let batch = device.take_closed(65_536);
                let at = opof_device::clock::Clock::now(&*clock).0;
                if batch.is_empty() {
                    std::thread::sleep(Duration::from_micros(200));
                }
                got.extend(batch.iter().map(|r| (r.end, at)));
                read.store(got.len() as u64, Ordering::Relaxed);
            }
            got
        })
    };
    // Room for the expiry made on idle CPU, as `opof device` makes it (`spawn_aging`).
    let _room = device.spawn_room_maker(Duration::from_millis(a.period_ms));
    // One aging thread per shard, as the device has a task per shard.
    let give_up = Instant::now() + Duration::from_secs(u64::from(a.timeout) + 60);
    let done = std::sync::atomic::AtomicBool::new(false);
    let agers: Vec<(Duration, usize)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..device.shards())
            .map(|k| {
                let (device, done) = (&device, &done);
                scope.spawn(move || {
                    let (mut longest, mut steps) = (Duration::ZERO, 0);
                    while !done.load(Ordering::Relaxed) && Instant::now() < give_up {
                        std::thread::sleep(Duration::from_millis(a.period_ms));
                        let started = Instant::now();
                        if device.advance_shard(k) > 0 {
                            longest = longest.max(started.elapsed());
                            steps += 1;
                        }
                    }
                    (longest, steps)
                })
            })
            .collect();
        // Until the collector has every record. (Not `device.stats()`: like every call that
        // needs the table current, it would age the shards itself, a third thread in the
        // expiry that the device's aging tasks and a VNF's reader do not have.)
        while read.load(Ordering::Relaxed) < n && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(a.period_ms));
        }
        done.store(true, Ordering::Relaxed);
        threads.into_iter().map(|t| t.join().expect("an aging thread panicked")).collect()
    });
    let closed = device.stats().closed_timeout;
    if closed < n {
        bail!("real time: only {closed} of {n} sessions closed within a minute of their deadline");
    }
    let longest_step = agers.iter().map(|a| a.0).max().unwrap_or_default();
    let steps: usize = agers.iter().map(|a| a.1).sum();
    let longest_hold = device.take_longest_hold();
    reading.store(false, Ordering::Relaxed);
    let mut get_latencies = reader.join().map_err(|_| anyhow::anyhow!("the getSession thread panicked"))?;
    let records = collector.join().map_err(|_| anyhow::anyhow!("the getClosedSessions thread panicked"))?;
    if records.len() as u64 != n || records.iter().any(|&(end, _)| end != Some(Timestamp(deadline))) {
        bail!("real time: expected {n} records ended at the deadline, got {}", records.len());
    }
    // How late after its deadline each session's record was read.
    let mut late: Vec<u64> = records.iter().map(|&(_, at)| at.saturating_sub(deadline)).collect();
    Ok(json!({
        "figure": "aging",
        "value": (expire_secs * 1e9 / n as f64 * 10.0).round() / 10.0,
        "unit": "ns/close",
        "idle_tick_ns": {"empty_table": idle_empty.round(), "with_sessions": idle_full.round()},
        "expire_all_ms": (expire_secs * 1e4).round() / 10.0,
        "steady_expiry": steady,
        "real_time": {
            "readable_after_deadline_ms": distribution_ms(&mut late),
            "longest_aging_call_ms": (longest_step.as_secs_f64() * 1e4).round() / 10.0,
            "longest_lock_hold_ms": (longest_hold.as_secs_f64() * 1e4).round() / 10.0,
            "aging_calls_with_closes": steps,
            "get_session_ms": distribution_ms(&mut get_latencies),
            "get_sessions": get_latencies.len(),
        },
        "parameters": {"sessions": n, "timeout_s": a.timeout, "period_ms": a.period_ms, "shards": a.shards},
        "cores": cores(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory benchmark's figure covers every worker's whole run: frames over the run's
    /// time, where the run spans each worker's own clocked time (its rate never exceeds what
    /// the slowest worker's time allows), and every frame pushed is accounted for.
    #[test]
    fn datapath_rate_spans_every_workers_time() {
        for workers in [1, 2] {
            let args = DatapathArgs {
                sessions: 2_000,
                frames: 4_096,
                batch: 64,
                total: 40_000,
                workers,
                shards: None,
                independent: false,
                steer: opof_device::datapath::steer::Spread::Shard,
            };
            let v = datapath(&args).expect("the benchmark runs");
            let frames = v["frames"].as_u64().unwrap();
            assert!(frames >= 40_000, "each worker pushes at least its share: {v}");
            assert_eq!(v["offloaded"].as_u64().unwrap() + v["misses"].as_u64().unwrap(), frames, "{v}");
            assert_eq!(v["misses"].as_u64().unwrap(), 0, "every frame is of a session: {v}");
            let run_secs = frames as f64 / v["value"].as_f64().unwrap();
            let slowest = v["worker_secs"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).fold(0.0, f64::max);
            assert_eq!(v["worker_secs"].as_array().unwrap().len(), workers, "{v}");
            // worker_secs are rounded to the millisecond.
            assert!(
                run_secs + 0.0005 >= slowest,
                "the run ({run_secs} s) is shorter than a worker's ({slowest} s): {v}"
            );
            // Linux has /proc/stat: the steal is read, not left out.
            let steal = v["host_steal_secs"].as_f64();
            assert!(cfg!(not(target_os = "linux")) || steal.is_some_and(|s| s >= 0.0), "{v}");
        }
    }

    /// The steal column is the eighth number of the `cpu` line (user, nice, system, idle,
    /// iowait, irq, softirq, steal), not of a single CPU's line; a file without it gives none.
    #[test]
    fn steal_is_read_from_the_cpu_line() {
        let stat = "cpu  10 0 20 300 4 0 5 17 0 0\ncpu0 5 0 10 150 2 0 3 9 0 0\ncpu1 5 0 10 150 2 0 2 8 0 0\n";
        assert_eq!(steal_ticks(stat), Some(17));
        assert_eq!(steal_ticks("cpu0 5 0 10 150 2 0 3 9 0 0\n"), None);
        assert_eq!(steal_ticks("cpu  10 0 20 300\n"), None, "an old kernel's line without the column");
        assert_eq!(steal_between(Some(1.0), Some(1.25)), json!(0.25));
        assert_eq!(steal_between(None, Some(1.0)), serde_json::Value::Null);
    }
}
