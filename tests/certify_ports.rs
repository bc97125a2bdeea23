//! `opof certify` with traffic access, end to end: the reference device runs as its own process
//! with real ports, and the suite, as another process, sends its frames through the far ends
//! named by `--ports` (or `OPOF_PORTS`) and certifies the DP and TMO cases in real time.
//!
//! - over the UDP wire on loopback (any user), target and ports given in the environment as
//!   `cargo test -p opof-conformance` takes them (`OPOF_ENDPOINT`, `OPOF_PORTS`, ...);
//! - over TAP devices the device holds, the suite on their kernel side through AF_PACKET,
//! - over veth pairs, the device on one end and the suite on the other, and
//! - over TAP devices the suite holds (`tap:NAME`), which the device takes with AF_PACKET,
//!
//! the last three each in a network namespace the test makes (as root; ignored with the reason
//! otherwise; CI runs as root). Each run must certify with every DP and TMO case PASS (none
//! skipped), and leave a readable pcapng per port for every DP case, linked from report.json
//! and report.md.

mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

const PORTS: [&str; 5] = ["ext0", "ext1", "vnf0", "vnf1", "collector"];

fn sh(cmd: &str) -> Result<(), Failed> {
    let out = Command::new("sh").arg("-c").arg(cmd).output().map_err(|e| Failed::from(format!("{cmd}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Failed::from(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr))))
    }
}

/// The device process; killed when dropped.
struct Device(Child);

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `opof device` with these ports and short default timeouts; returns it and the
/// address it serves on.
fn device(ports: &[String]) -> Result<(Device, String), Failed> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opof"));
    cmd.args(["device", "--listen", "127.0.0.1:0", "--capacity", "4096", "--tcp-timeout", "1", "--udp-timeout", "1"]);
    for p in ports {
        cmd.args(["--port", p]);
    }
    let mut child =
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1").stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let mut log = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
    let dev = Device(child);
    let mut seen = Vec::new();
    let addr = loop {
        let line = match log.next() {
            Some(Ok(l)) => l,
            _ => return Err(Failed::from(format!("the device stopped before serving: {}", seen.join(" | ")))),
        };
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap_or_default().to_string();
        }
        seen.push(line);
    };
    // Keep reading its log so the device never blocks on a full pipe.
    std::thread::spawn(move || for _ in log {});
    Ok((dev, addr))
}

/// How `opof certify` is told the target and its ports.
#[derive(Clone, Copy)]
enum Given {
    Options,
    /// `OPOF_ENDPOINT`, `OPOF_PORTS`, ...: what `cargo test -p opof-conformance` reads too.
    Environment,
}

/// Runs `opof certify` against `addr` with `ports` (the suite's ends), DP and TMO cases only,
/// and checks the outcome and the evidence.
fn certify(addr: &str, ports: &str, given: Given) -> Result<(), Failed> {
    let out = tempfile::tempdir()?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opof"));
    cmd.arg("certify");
    match given {
        Given::Options => {
            cmd.args(["--endpoint", addr, "--capacity", "4096", "--tcp-timeout", "1", "--udp-timeout", "1"]);
            cmd.args(["--ports", ports]);
        }
        Given::Environment => {
            cmd.env("OPOF_ENDPOINT", addr).env("OPOF_PORTS", ports).env("OPOF_CAPACITY", "4096");
            cmd.env("OPOF_TCP_TIMEOUT", "1").env("OPOF_UDP_TIMEOUT", "1");
        }
    }
    let run = cmd.args(["--case", "DP", "--case", "TMO", "--out"]).arg(out.path()).output()?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    if !run.status.success() {
        return Err(Failed::from(format!(
            "opof certify exited {:?}:\n{stdout}\n{}",
            run.status.code(),
            String::from_utf8_lossy(&run.stderr)
        )));
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.path().join("report.json"))?)?;
    let cases = report["cases"].as_array().ok_or("report.json has no cases")?;
    let ids: Vec<&str> = cases.iter().filter_map(|c| c["id"].as_str()).collect();
    if ids.iter().filter(|id| id.starts_with("DP-")).count() != 13 || !ids.contains(&"TMO-4.2") {
        return Err(Failed::from(format!("unexpected cases: {ids:?}")));
    }
    let md = std::fs::read_to_string(out.path().join("report.md"))?;
    for c in cases {
        let id = c["id"].as_str().unwrap_or_default();
        if c["verdict"] != "PASS" {
            return Err(Failed::from(format!("{id}: {} {}\n{stdout}", c["verdict"], c["details"])));
        }
        if !id.starts_with("DP-") {
            continue;
        }
        let files: Vec<&str> =
            c["evidence"].as_array().map(|v| v.iter().filter_map(|f| f.as_str()).collect()).unwrap_or_default();
        if files.len() != PORTS.len() {
            return Err(Failed::from(format!("{id}: evidence {files:?}, want one pcapng per port")));
        }
        let mut frames = 0;
        for f in &files {
            if Path::new(f).is_absolute() || !md.contains(f) {
                return Err(Failed::from(format!("{id}: {f} is not a link relative to the report in report.md")));
            }
            frames += opof_traffic::capture::read_all(out.path().join(f)).map_err(|e| format!("{id}: {f}: {e}"))?.len();
        }
        if frames == 0 {
            return Err(Failed::from(format!("{id}: the captures hold no frame")));
        }
    }
    Ok(())
}

/// Runs `f` on a thread in a new network namespace (lo up, IPv6 off so the kernel sends nothing
/// of its own on the interfaces); processes it starts live in the namespace too.
fn in_netns(f: impl FnOnce() -> Result<(), Failed> + Send + 'static) -> Result<(), Failed> {
    std::thread::spawn(move || {
        // SAFETY: unshare affects the calling thread only; children it spawns inherit it.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(Failed::from(format!("unshare: {}", std::io::Error::last_os_error())));
        }
        for knob in ["all", "default"] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6"), "1")?;
        }
        sh("ip link set lo up")?;
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(Failed::from("the namespace thread panicked")))
}

fn over_udp() -> Result<Completion, Failed> {
    // Two loopback addresses per port: the device's and the suite's.
    let free = || -> Result<String, Failed> { Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.to_string()) };
    let mut dev_ports = Vec::new();
    let mut suite_ports = Vec::new();
    for p in PORTS {
        let (d, s) = (free()?, free()?);
        dev_ports.push(format!("{p}=udp:{s},bind={d}"));
        suite_ports.push(format!("{p}=udp:{d},bind={s}"));
    }
    let (_dev, addr) = device(&dev_ports)?;
    certify(&addr, &suite_ports.join(","), Given::Environment)?;
    Ok(Completion::Completed)
}

fn over_tap() -> Result<Completion, Failed> {
    if !common::is_root() {
        return Ok(Completion::ignored_with("needs root to make TAP devices in a network namespace (CI runs as root)"));
    }
    in_netns(|| {
        let dev_ports: Vec<String> = PORTS.iter().map(|p| format!("{p}=tap:t{p}")).collect();
        let (_dev, addr) = device(&dev_ports)?;
        for p in PORTS {
            sh(&format!("ip link set t{p} up"))?;
        }
        let suite: Vec<String> = PORTS.iter().map(|p| format!("{p}=afpacket:t{p}")).collect();
        certify(&addr, &suite.join(","), Given::Options)
    })?;
    Ok(Completion::Completed)
}

/// The suite holds the TAP devices (`--ports ext0=tap:...`), and the device takes them with
/// AF_PACKET once they appear (`--wait-for-ports`); it serves only then, so the suite opens its
/// ports before it connects.
fn over_suite_taps() -> Result<Completion, Failed> {
    if !common::is_root() {
        return Ok(Completion::ignored_with("needs root to make TAP devices in a network namespace (CI runs as root)"));
    }
    in_netns(|| {
        // A namespace of its own: a fixed port is free.
        let addr = "127.0.0.1:50151";
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_opof"));
        cmd.args(["device", "--listen", addr, "--capacity", "4096", "--tcp-timeout", "1", "--udp-timeout", "1"]);
        for p in PORTS {
            cmd.arg("--port").arg(format!("{p}=afpacket:q{p}"));
        }
        let log = tempfile::NamedTempFile::new()?;
        let dev = cmd.args(["--wait-for-ports", "30"]).env("NO_COLOR", "1").stdout(Stdio::null());
        let _dev = Device(dev.stderr(log.reopen()?).spawn()?);
        let suite: Vec<String> = PORTS.iter().map(|p| format!("{p}=tap:q{p}")).collect();
        certify(addr, &suite.join(","), Given::Options).map_err(|e| {
            let log = std::fs::read_to_string(log.path()).unwrap_or_default();
            Failed::from(format!("{}\nthe device's log:\n{log}", e.message().unwrap_or_default()))
        })
    })?;
    Ok(Completion::Completed)
}

fn over_veth() -> Result<Completion, Failed> {
    if !common::is_root() {
        return Ok(Completion::ignored_with("needs root to make veth pairs in a network namespace (CI runs as root)"));
    }
    in_netns(|| {
        for p in PORTS {
            sh(&format!("ip link add d{p} type veth peer name s{p} && ip link set d{p} up && ip link set s{p} up"))?;
        }
        let dev_ports: Vec<String> = PORTS.iter().map(|p| format!("{p}=afpacket:d{p}")).collect();
        let (_dev, addr) = device(&dev_ports)?;
        let suite: Vec<String> = PORTS.iter().map(|p| format!("{p}=afpacket:s{p}")).collect();
        certify(&addr, &suite.join(","), Given::Options)
    })?;
    Ok(Completion::Completed)
}

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let trials = vec![
        Trial::ignorable_test("certify DP and TMO over the UDP wire (target and ports from the environment)", over_udp),
        Trial::ignorable_test("certify DP and TMO over TAP devices in a network namespace", over_tap),
        Trial::ignorable_test("certify DP and TMO over veth pairs in a network namespace", over_veth),
        Trial::ignorable_test(
            "certify DP and TMO over TAP devices the suite holds, in a network namespace",
            over_suite_taps,
        ),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
