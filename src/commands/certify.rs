//! `opof certify`: the conformance suite against a target, with its reports and exit status.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use opof_conformance::target::{TargetConfig, TargetError, TargetKind};
use opof_conformance::verdict::Profile;
use opof_proto::client::ApiChoice;

#[derive(Args)]
pub(crate) struct CertifyArgs {
    /// embedded (the reference device in this process, virtual time), endpoint or image.
    /// Default: endpoint with --endpoint, image with --image, else embedded. [env: OPOF_TARGET]
    #[arg(long)]
    target: Option<TargetKind>,
    /// host:port of the endpoint to certify (http:// or https:// in front must agree with the TLS
    /// options). [env: OPOF_ENDPOINT]
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
    /// One of the suite's port ends, NAME=SPEC (as `opof device --port`), repeatable: the same
    /// as --ports, one port at a time.
    #[arg(long = "port", value_name = "NAME=SPEC", value_parser = parse_ports)]
    port: Vec<PortList>,
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
pub(crate) struct PortList(Vec<(opof_device::datapath::PortId, opof_traffic::port::PortSpec)>);

pub(crate) fn parse_ports(s: &str) -> Result<PortList, String> {
    opof_conformance::traffic::parse_ports(s).map(PortList)
}

/// Runs the suite; the process's exit code: 0 certified, 1 a FAIL or ERROR.
pub(crate) async fn certify(a: CertifyArgs) -> anyhow::Result<i32> {
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
    if let Some(e) = &c.endpoint {
        if let Err(why) = opof_proto::client::Endpoint::parse(e) {
            eprintln!("opof: error: {why}");
            return Ok(EXIT_USAGE);
        }
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
    let mut given: Vec<_> = a.ports.into_iter().chain(a.port).flat_map(|PortList(p)| p).collect();
    given.sort_by_key(|(id, _)| id.index());
    if let Some(w) = given.windows(2).find(|w| w[0].0 == w[1].0) {
        eprintln!("opof: error: port {} is given twice (--ports and --port together name each port once)", w[0].0);
        return Ok(EXIT_USAGE);
    }
    if !given.is_empty() {
        c.ports = Some(given);
    }
    // The reports' folder is checked before a run of minutes, not after it.
    if let Err(e) = writable(&a.out) {
        eprintln!("opof: error: cannot write the reports into {}: {e:#} (--out)", a.out.display());
        return Ok(EXIT_USAGE);
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
pub(crate) const EXIT_CERTIFIED: i32 = 0;
pub(crate) const EXIT_NOT_CERTIFIED: i32 = 1;
pub(crate) const EXIT_USAGE: i32 = 2;
pub(crate) const EXIT_UNREACHABLE: i32 = 3;

/// Makes `dir` if needed and checks that a file can be written in it.
fn writable(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    super::check_report_path(&dir.join(".opof-write-check"))
}
