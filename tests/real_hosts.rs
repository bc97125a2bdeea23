//! Real hosts through the device: two network namespaces with Linux's default offloads left on
//! (checksum offload, TSO/GSO on their veths), `opof device` and `opof vnf` as processes between
//! them on AF_PACKET ports, python's http.server on one side and curl on the other.
//!
//!   ns h1 (10.77.0.1, fd77::1) ── hA|dA ── device ext0     device ext1 ── dB|hB ── ns h2 (.2, ::2)
//!                                          device vnf0/vnf1 ── dv0|va, dv1|vb ── opof vnf
//!                                          device collector ── dc|pc (198.51.100.7, the copies' next hop)
//!
//! - 4 MB downloads over IPv4 and IPv6 arrive intact, offloaded (the device carries > 90 % of
//!   the frames), the sessions close `_FINACK`, and the device's counters plus the VNF's own
//!   equal what tcpdump counted on the client's interface, packets and bytes.
//! - A UDP flow (plain datagrams and UDP segmentation offload): every datagram reaches the
//!   receiving socket, which verifies checksums (the kernel's UDP InCsumErrors stays 0).
//! - A MIRROR download over a collector link of MTU 1,500: every copy arrives, reassembled
//!   by the collector host's IP layer where it was fragmented, one per packet the device carried.
//! - All of the above with the device's two datapath workers, their fanout groups steering
//!   flows by shard (the batches that spanned both shards are reported; with a download or two
//!   at a time a batch seldom holds two flows, so device/tests/datapath_ports.rs is where that
//!   count is asserted).
//!
//! As root only (reported as ignored with the reason otherwise; CI runs as root). Waits are
//! bounded; nothing here measures time.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::metric;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

type R<T = ()> = Result<T, Failed>;

fn fail(msg: impl Into<String>) -> Failed {
    Failed::from(msg.into())
}

fn check(ok: bool, msg: impl Into<String>) -> R {
    if ok {
        Ok(())
    } else {
        Err(fail(msg))
    }
}

fn sh(cmd: &str) -> R<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output().map_err(|e| fail(format!("{cmd}: {e}")))?;
    check(out.status.success(), format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Named namespaces of this run, removed with every process left in them.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = sh(&format!("ip netns pids {ns} | xargs -r kill -9"));
            let _ = sh(&format!("ip netns del {ns}"));
        }
    }
}

/// A process killed when dropped, its stderr lines read on a thread (so waits are bounded).
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    name: &'static str,
}

impl Proc {
    fn start(name: &'static str, cmd: &mut Command) -> R<Proc> {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("starting {name}: {e}")))?;
        let (tx, lines) = mpsc::channel();
        let err = BufReader::new(child.stderr.take().expect("piped"));
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Ok(Proc { child, lines, name })
    }

    /// The first line of stderr containing `what` (at most 30 s).
    fn wait_for(&self, what: &str) -> R<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.contains(what) => return Ok(l),
                Ok(_) => {}
                Err(_) => return Err(fail(format!("{}: no {what:?} in its log within 30 s", self.name))),
            }
        }
    }

    /// Stops the process with SIGINT and returns its stdout (killed after 30 s).
    fn interrupt(mut self) -> R<String> {
        let pid = self.child.id().to_string();
        sh(&format!("kill -INT {pid}"))?;
        let watchdog = pid.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(30));
            let _ = Command::new("kill").args(["-9", &watchdog]).status();
        });
        let mut out = String::new();
        self.child.stdout.take().expect("piped").read_to_string(&mut out).map_err(|e| fail(e.to_string()))?;
        let status = self.child.wait().map_err(|e| fail(e.to_string()))?;
        check(status.success(), format!("{} exited with {status}", self.name))?;
        Ok(out)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw IP socket for GRE in the switch's namespace: the kernel hands it each copy addressed
/// to 198.51.100.7 after reassembling its fragments (with the IPv4 header).
fn raw_gre() -> R<OwnedFd> {
    // SAFETY: plain socket call; the result is checked and owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 47) };
    check(fd >= 0, format!("raw GRE socket: {}", std::io::Error::last_os_error()))?;
    // SAFETY: a fresh descriptor, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size: i32 = 64 << 20;
    // SAFETY: an int option value that lives across the call.
    unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&size as *const i32).cast(), 4);
    }
    Ok(fd)
}

/// Reads copies until none comes for 2 s: the inner frames.
fn read_copies(fd: OwnedFd) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one pollfd that lives across the call.
            if unsafe { libc::poll(&mut pfd, 1, 2000) } <= 0 {
                return got;
            }
            // SAFETY: reading into a live buffer of its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                return got;
            }
            let p = &buf[..n as usize];
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if p.len() > ihl + 4 && p[ihl + 2..ihl + 4] == [0x65, 0x58] {
                got.push(p[ihl + 4..].to_vec());
            }
        }
    })
}

/// Packets and bytes per direction tcpdump wrote for the TCP flow with client port `port`.
fn tcpdump_count(capture: &std::path::Path, port: u16) -> R<(u64, u64)> {
    let out = sh(&format!("tcpdump -nn -r {} -e 'tcp port {port}' 2>/dev/null | wc -l", capture.display()))?;
    let packets: u64 = out.trim().parse().map_err(|_| fail(format!("tcpdump count: {out}")))?;
    // Frame lengths: `-e` prints "length N:" for the frame first.
    let lens = sh(&format!("tcpdump -nn -r {} -e 'tcp port {port}' 2>/dev/null", capture.display()))?;
    let bytes =
        lens.lines().filter_map(|l| l.split(", length ").nth(1)?.split(':').next()?.trim().parse::<u64>().ok()).sum();
    Ok((packets, bytes))
}

fn metrics(addr: &str) -> R<String> {
    common::scrape(addr).map_err(|e| fail(format!("metrics: {e}")))
}

fn until(what: &str, mut f: impl FnMut() -> R<bool>) -> R {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(fail(format!("{what}: not within 20 s")))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

const UDP_RECEIVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("10.77.0.2", 9999))
print("ready", flush=True)
s.settimeout(3)
n = bad = 0
try:
    while True:
        d = s.recv(65536)
        n += 1
        if len(d) != 1000 or d != bytes([d[0]]) * 1000:
            bad += 1
except socket.timeout:
    pass
print(n, bad, flush=True)
"#;

const UDP_SENDER: &str = r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.77.0.1", 42001))
s.connect(("10.77.0.2", 9999))
for i in range(100):
    s.send(bytes([i % 256]) * 1000)
    time.sleep(0.002)
# UDP segmentation offload: one send of ten datagrams, cut by "the hardware".
s.setsockopt(socket.SOL_UDP, 103, 1000)
for i in range(20):
    s.send(b"".join(bytes([(100 + 10 * i + k) % 256]) * 1000 for k in range(10)))
    time.sleep(0.01)
"#;

fn real_hosts() -> R<Completion> {
    if !common::is_root() {
        return Ok(Completion::ignored_with("needs root for network namespaces and veth pairs (CI runs as root)"));
    }
    for tool in ["tcpdump", "curl", "python3", "ip"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Err(fail(format!("needs {tool} (.ci/run installs it)")));
        }
    }
    std::thread::spawn(|| -> R<Completion> {
        // SAFETY: unshare affects this thread only (and the processes it starts).
        check(unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0, "unshare(CLONE_NEWNET)")?;
        run_hosts()
    })
    .join()
    .unwrap_or_else(|_| Err(fail("the namespace thread panicked")))
}

fn run_hosts() -> R<Completion> {
    let tag = std::process::id();
    let (h1, h2) = (format!("opof-h1-{tag}"), format!("opof-h2-{tag}"));
    let _ns = Namespaces(vec![h1.clone(), h2.clone()]);
    // The switch's namespace (this thread's): no IPv6 chatter of its own on the device's links.
    sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 && ip link set lo up")?;
    sh(&format!("ip netns add {h1} && ip netns add {h2}"))?;
    sh(&format!(
        "ip link add dA type veth peer name hA netns {h1} && ip link add dB type veth peer name hB netns {h2} \
         && ip link add dv0 type veth peer name va && ip link add dv1 type veth peer name vb \
         && ip link add dc type veth peer name pc \
         && for i in dA dB dv0 va dv1 vb dc pc; do ip link set $i up; done \
         && ip addr add 198.51.100.7/24 dev pc"
    ))?;
    for (ns, i, n) in [(&h1, "hA", 1), (&h2, "hB", 2)] {
        sh(&format!(
            "ip -n {ns} link set lo up && ip netns exec {ns} sysctl -qw net.ipv6.conf.{i}.disable_ipv6=0 \
             && ip -n {ns} addr add 10.77.0.{n}/24 dev {i} && ip -n {ns} addr add fd77::{n}/64 dev {i} nodad \
             && ip -n {ns} link set {i} up"
        ))?;
    }
    let offloads = sh(&format!(
        "ip netns exec {h2} ethtool -k hB 2>/dev/null | grep -E '^(tx-checksumming|tcp-segmentation-offload)' || true"
    ))?;
    eprintln!("server side offloads (defaults, left on):\n{offloads}");

    let dir = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nprotocol = \"tcp\"\ndst_ports = \"8081\"\naction = \"mirror\"\nnext_hop = \"198.51.100.7\"\n",
    )
    .map_err(|e| fail(e.to_string()))?;
    let vnf = Proc::start(
        "opof vnf",
        common::opof().args(["vnf", "--listen", "127.0.0.1:0", "--auto-activate", "--policy"]).arg(&policy).args([
            "--port",
            "a=afpacket:va",
            "--port",
            "b=afpacket:vb",
        ]),
    )?;
    let listen = vnf.wait_for("listen=")?;
    let activation = listen.split("listen=").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("").to_string();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let device = Proc::start(
        "opof device",
        common::opof()
            .args(["device", "--listen", "127.0.0.1:0", "--register-with", &activation, "--metrics", &metrics_addr])
            // Two workers, their AF_PACKET fanout groups steered by shard.
            .args(["--workers", "2"])
            .args(["--port", "ext0=afpacket:dA", "--port", "ext1=afpacket:dB"])
            .args(["--port", "vnf0=afpacket:dv0", "--port", "vnf1=afpacket:dv1", "--port", "collector=afpacket:dc"]),
    )?;
    vnf.wait_for("offloading to the activated device")?;

    // The server side: a 4 MB file of varied bytes, served on 8080 (forwarded) and 8081
    // (mirrored), both families.
    let www = dir.path().join("www");
    std::fs::create_dir(&www).map_err(|e| fail(e.to_string()))?;
    let blob: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(www.join("blob"), &blob).map_err(|e| fail(e.to_string()))?;
    let mut servers = Vec::new();
    for port in ["8080", "8081"] {
        servers.push(Proc::start(
            "http.server",
            Command::new("ip")
                .args(["netns", "exec", &h2, "python3", "-m", "http.server", port, "--bind", "::", "--directory"])
                .arg(&www),
        )?);
        let probe =
            format!("ip netns exec {h2} python3 -c 'import socket; socket.create_connection((\"::1\", {port}))'");
        until(&format!("http.server on {port}"), || Ok(sh(&probe).is_ok()))?;
    }

    // tcpdump on the client's interface.
    let capture = dir.path().join("client.pcap");
    let tcpdump = Proc::start(
        "tcpdump",
        Command::new("ip").args(["netns", "exec", &h1, "tcpdump", "-i", "hA", "-U", "-w"]).arg(&capture).arg("tcp"),
    )?;
    tcpdump.wait_for("listening on")?;

    let copies_fd = raw_gre()?;
    let downloads =
        [("10.77.0.2", 8080u16, 41001u16, false), ("[fd77::2]", 8080, 41002, false), ("10.77.0.2", 8081, 41003, true)];
    let mut copies = None;
    for &(host, port, local, mirrored) in &downloads {
        if mirrored {
            copies = Some(read_copies(copies_fd.try_clone().map_err(|e| fail(e.to_string()))?));
        }
        let out = dir.path().join(format!("got-{local}"));
        let mut curl = Command::new("ip");
        curl.args(["netns", "exec", &h1, "curl", "-sS", "--max-time", "60", "--local-port", &local.to_string(), "-o"])
            .arg(&out)
            .arg(format!("http://{host}:{port}/blob"));
        if mirrored {
            // Paced, so the copies' reader keeps up.
            curl.args(["--limit-rate", "8M"]);
        }
        let r = curl.output().map_err(|e| fail(e.to_string()))?;
        check(r.status.success(), format!("curl {host}:{port}: {}", String::from_utf8_lossy(&r.stderr)))?;
        let got = std::fs::read(&out).map_err(|e| fail(e.to_string()))?;
        check(got == blob, format!("download from {host}:{port}: {} bytes, not the file's {}", got.len(), blob.len()))?;
    }
    until("three sessions closed _FINACK", || {
        Ok(metric(&metrics(&metrics_addr)?, "opof_sessions_closed_total{code=\"finack\"}") >= 3)
    })?;

    // UDP: plain datagrams and a segmentation-offload send, checked by the receiving socket.
    let receiver =
        Proc::start("udp receiver", Command::new("ip").args(["netns", "exec", &h2, "python3", "-c", UDP_RECEIVER]))?;
    let mut rx_out = receiver;
    {
        let mut line = String::new();
        let mut out = BufReader::new(rx_out.child.stdout.take().expect("piped"));
        out.read_line(&mut line).map_err(|e| fail(e.to_string()))?;
        check(line.trim() == "ready", format!("udp receiver: {line}"))?;
        sh(&format!("ip netns exec {h1} python3 -c '{UDP_SENDER}'"))?;
        line.clear();
        out.read_line(&mut line).map_err(|e| fail(e.to_string()))?;
        let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        check(v == [300, 0], format!("the UDP receiver got (datagrams, bad ones) = {v:?}, want [300, 0]"))?;
    }
    let _ = rx_out.child.wait();
    let snmp = sh(&format!("ip netns exec {h2} cat /proc/net/snmp"))?;
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    let at = udp[0].split_whitespace().position(|f| f == "InCsumErrors").ok_or_else(|| fail("no InCsumErrors"))?;
    let csum_errors: u64 = udp[1].split_whitespace().nth(at).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
    check(csum_errors == 0, format!("UDP checksum errors at the receiver: {csum_errors}"))?;

    let copies = copies.expect("the mirrored download ran").join().map_err(|_| fail("copies reader"))?;
    let text = metrics(&metrics_addr)?;
    let _ = tcpdump.interrupt();
    let account: serde_json::Value =
        serde_json::from_str(&vnf.interrupt()?).map_err(|e| fail(format!("the VNF's account: {e}")))?;
    drop(device);

    let flows = account["flows"].as_array().ok_or_else(|| fail("no flows in the account"))?;
    let sum = |v: &serde_json::Value, k: &str| {
        v[k].as_array().map_or(0, |a| a.iter().filter_map(|x| x.as_u64()).sum::<u64>())
    };
    let find = |port: u16| flows.iter().find(|f| f["flow"].as_str().is_some_and(|s| s.contains(&format!(":{port} "))));
    let mut report = Vec::new();
    for &(host, port, local, mirrored) in &downloads {
        let f = find(local).ok_or_else(|| fail(format!("no flow of client port {local} in the VNF's account")))?;
        let (vnf_p, dev_p) = (sum(&f["vnf"], "packets"), sum(&f["device"], "packets"));
        let (vnf_b, dev_b) = (sum(&f["vnf"], "bytes"), sum(&f["device"], "bytes"));
        let (dump_p, dump_b) = tcpdump_count(&capture, local)?;
        report.push(format!(
            "{host}:{port}: tcpdump {dump_p} packets {dump_b} bytes; device {dev_p}/{dev_b}, VNF {vnf_p}/{vnf_b}"
        ));
        check(f["closes"]["finack"] == 1, format!("{host}:{port}: the session closed _FINACK once: {f}"))?;
        check(
            vnf_p + dev_p == dump_p && vnf_b + dev_b == dump_b,
            format!("{host}:{port}: device + VNF ({dev_p} + {vnf_p} packets, {dev_b} + {vnf_b} bytes) = tcpdump ({dump_p}, {dump_b})"),
        )?;
        check(
            dev_p * 10 > dump_p * 9,
            format!("{host}:{port}: the device carried {dev_p} of {dump_p} frames (> 90 %)"),
        )?;
        if mirrored {
            // Inner frames are Ethernet + IPv4 + TCP: the client's port is the source or the
            // destination port.
            let lp = local.to_be_bytes();
            let ours =
                copies.iter().filter(|c| c.get(34..38).is_some_and(|p| p[..2] == lp || p[2..] == lp)).count() as u64;
            check(
                ours == dev_p,
                format!("{host}:{port}: {ours} copies arrived whole for the {dev_p} packets the device mirrored"),
            )?;
        }
    }
    let udp_flow = find(42001).ok_or_else(|| fail("no UDP flow in the VNF's account"))?;
    let udp_total = sum(&udp_flow["vnf"], "packets") + sum(&udp_flow["device"], "packets");
    check(udp_total == 300, format!("UDP flow: device + VNF packets {udp_total}, want 300: {udp_flow}"))?;
    let superframes = metric(&text, "opof_port_rx_superframes_total{port=\"ext1\"");
    let completed: u64 = ["ext0", "ext1"]
        .iter()
        .map(|p| metric(&text, &format!("opof_port_rx_checksums_completed_total{{port=\"{p}\"")))
        .sum();
    let fragmented = metric(&text, "opof_datapath_collector_copies_fragmented_total");
    let across = metric(&text, "opof_datapath_batches_across_shards_total");
    report.push(format!(
        "server super-frames {superframes}, checksums completed {completed}, copies fragmented {fragmented}, batches across shards {across}"
    ));
    eprintln!("{}", report.join("\n"));
    check(superframes > 0, "no super-frame came from the server: were its offloads on?")?;
    check(completed > 0, "no checksum was left to complete: were the hosts' offloads on?")?;
    check(fragmented > 0, "no copy was fragmented over the collector's MTU of 1,500")?;
    drop(servers);
    Ok(Completion::Completed)
}

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let trials = vec![Trial::ignorable_test("real hosts with default offloads through device and VNF", real_hosts)];
    libtest_mimic::run(&args, trials).exit_code()
}
