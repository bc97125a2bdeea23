//! Device, VNF and replayer as three processes over the UDP wire: the device registers with
//! the VNF, the VNF activates it and offloads by its policy, the replayer sends a capture into
//! ext0, and everything arrives at ext1's far end. The VNF's account (its own frames plus the
//! device's final counters, withdrawn at the end) adds up to what was sent, and after a
//! session was committed at most one packet per flow was still in flight to the VNF.

mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{metric, opof, scrape};

/// A UDP port nobody used a moment ago, and never handed out before in this run: the tests run
/// in parallel, and the kernel may give a port just released to another test's probe, whose
/// processes would then bind it too (the device's ports share theirs with SO_REUSEPORT, so a
/// clash splits traffic silently or keeps a process from starting).
fn free() -> std::net::SocketAddr {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        if GIVEN.lock().unwrap().insert(a.port()) {
            return a;
        }
    }
}

/// Kills the process when dropped (a failed assertion must not leave it running); when the
/// process logs to a file, a failing test prints that log, so the failure says what it did.
struct Guard(std::process::Child, Option<tempfile::NamedTempFile>);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let (true, Some(log)) = (std::thread::panicking(), &self.1) {
            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
            eprintln!("--- log of process {} ---\n{text}--- end of log ---", self.0.id());
        }
    }
}

/// The addresses of a three-process run: the device's four ports and their far ends.
#[derive(Clone, Copy)]
struct Wires {
    d_ext0: std::net::SocketAddr,
    d_ext1: std::net::SocketAddr,
    d_vnf0: std::net::SocketAddr,
    d_vnf1: std::net::SocketAddr,
    gen: std::net::SocketAddr,
    sink: std::net::SocketAddr,
    v_a: std::net::SocketAddr,
    v_b: std::net::SocketAddr,
}

impl Wires {
    fn new() -> Self {
        Wires {
            d_ext0: free(),
            d_ext1: free(),
            d_vnf0: free(),
            d_vnf1: free(),
            gen: free(),
            sink: free(),
            v_a: free(),
            v_b: free(),
        }
    }

    /// Starts `opof vnf`; returns it, its Activation address, and its log.
    fn vnf(&self, extra: &[&str]) -> (Guard, String, Log) {
        self.vnf_with(&[&["--auto-activate"], extra].concat())
    }

    /// Starts `opof vnf` with exactly `extra` (no --auto-activate unless given).
    fn vnf_with(&self, extra: &[&str]) -> (Guard, String, Log) {
        self.vnf_at("127.0.0.1:0", extra)
    }

    /// Starts `opof vnf` listening on `listen`, with exactly `extra`.
    fn vnf_at(&self, listen: &str, extra: &[&str]) -> (Guard, String, Log) {
        let mut vnf = Guard(
            opof()
                .args(["vnf", "--listen", listen])
                .args(extra)
                .args(["--port", &format!("a=udp:{},bind={}", self.d_vnf0, self.v_a)])
                .args(["--port", &format!("b=udp:{},bind={}", self.d_vnf1, self.v_b)])
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            None,
        );
        let mut log = BufReader::new(vnf.0.stderr.take().unwrap()).lines();
        let activation = loop {
            let line = log.next().expect("the VNF exited before listening").unwrap();
            if let Some(rest) = line.split("listen=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        (vnf, activation, log_lines(log))
    }

    /// Starts `opof device` listening on `listen`, registering with `activation`; its log
    /// goes to a file that a failing test prints.
    fn device(&self, listen: &str, activation: &str, extra: &[&str]) -> Guard {
        let log = tempfile::NamedTempFile::new().unwrap();
        let stderr = log.reopen().unwrap();
        Guard(
            opof()
                .args(["device", "--listen", listen, "--register-with", activation])
                .args(extra)
                .args(["--port", &format!("ext0=udp:{},bind={}", self.gen, self.d_ext0)])
                .args(["--port", &format!("ext1=udp:{},bind={}", self.sink, self.d_ext1)])
                .args(["--port", &format!("vnf0=udp:{},bind={}", self.v_a, self.d_vnf0)])
                .args(["--port", &format!("vnf1=udp:{},bind={}", self.v_b, self.d_vnf1)])
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap(),
            Some(log),
        )
    }

    fn replay(&self, capture: &std::path::Path, speed: &str) {
        let out = opof()
            .args(["replay"])
            .arg(capture)
            .args(["--to", &format!("udp:{},bind={}", self.d_ext0, self.gen), "--speed", speed])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The VNF's log lines, read on a thread of their own so waits can be bounded.
type Log = std::sync::mpsc::Receiver<String>;

fn log_lines(lines: std::io::Lines<BufReader<std::process::ChildStderr>>) -> Log {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line of the log containing `what` (at most 30 s; the lines read are printed,
/// so a failure shows what the VNF said).
fn wait_for(log: &mut Log, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match log.recv_timeout(left) {
            Ok(line) => {
                eprintln!("vnf: {line}");
                if line.contains(what) {
                    return;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("no {what:?} from the VNF within 30 s"),
            Err(_) => panic!("the VNF exited before: {what}"),
        }
    }
}

/// Stops the VNF with Ctrl-C and reads the account it prints.
fn stop_vnf(mut vnf: Guard) -> serde_json::Value {
    let pid = vnf.0.id().to_string();
    let kill = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(kill.success());
    // A VNF that does not stop within 30 s is killed (the test then fails on its exit status).
    let watchdog = pid.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        let _ = Command::new("kill").args(["-9", &watchdog]).status();
    });
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut vnf.0.stdout.take().unwrap(), &mut stdout).unwrap();
    let status = vnf.0.wait().unwrap();
    assert!(status.success(), "the VNF exits 0: {status}");
    serde_json::from_str(&stdout).expect("the VNF prints its account as JSON")
}

fn generate(
    dir: &std::path::Path,
    name: &str,
    flows: u32,
    packets: u32,
    seed: u32,
    duration: &str,
) -> std::path::PathBuf {
    let capture = dir.join(name);
    let out = opof()
        .args(["gen", "--out"])
        .arg(&capture)
        .args(["--flows", &flows.to_string(), "--packets", &packets.to_string(), "--sizes", "64"])
        .args(["--udp-share", "1", "--ipv6-share", "0", "--seed", &seed.to_string(), "--duration", duration])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    capture
}

/// Each flow of an account: (offloads, frames the VNF handled, frames the device handled).
fn per_flow(account: &serde_json::Value) -> Vec<(u64, u64, u64)> {
    let sum = |c: &serde_json::Value| c["packets"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum();
    account["flows"]
        .as_array()
        .expect("the account lists its flows")
        .iter()
        .map(|f| (f["offloads"].as_u64().unwrap(), sum(&f["vnf"]), sum(&f["device"])))
        .collect()
}

/// Counts what reaches ext1's far end until nothing comes for 3 s.
fn count_at_sink(addr: std::net::SocketAddr) -> std::thread::JoinHandle<u64> {
    let sink = UdpSocket::bind(addr).unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while sink.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    })
}

/// The common run: 10 UDP flows of 10 frames (`seed`) through a device (`device_args`) the
/// VNF (`vnf_args`, auto-activating) offloads to; every frame must reach ext1's far end.
/// Returns the VNF's account.
fn ten_flows(seed: u32, vnf_args: &[&str], device_args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let capture = generate(dir.path(), "flows.pcap", 10, 10, seed, "0.3");
    let w = Wires::new();
    let (vnf, activation, mut log) = w.vnf(vnf_args);
    let _device = w.device("127.0.0.1:0", &activation, device_args);
    wait_for(&mut log, "offloading to the activated device");
    let receiver = count_at_sink(w.sink);
    w.replay(&capture, "2");
    assert_eq!(receiver.join().unwrap(), 100, "every frame reached ext1's far end");
    stop_vnf(vnf)
}

#[test]
fn device_vnf_and_replayer_as_three_processes() {
    let dir = tempfile::tempdir().unwrap();
    let capture = generate(dir.path(), "flows.pcap", 40, 15, 5, "1");
    let sent_frames = 40 * 15;
    let w = Wires::new();
    let (vnf, activation, mut log) = w.vnf(&[]);
    let _device = w.device("127.0.0.1:0", &activation, &[]);
    wait_for(&mut log, "offloading to the activated device");
    let receiver = count_at_sink(w.sink);
    w.replay(&capture, "2");
    let delivered = receiver.join().unwrap();
    let account = stop_vnf(vnf);

    assert_eq!(delivered, sent_frames, "every frame reached ext1's far end");
    let vnf_frames = account["vnf_frames"].as_u64().unwrap();
    let device_frames = account["device_frames"].as_u64().unwrap();
    assert_eq!(vnf_frames + device_frames, sent_frames, "each frame handled once: {account}");
    let stats = &account["stats"];
    let offloads = stats["offload_accepted"].as_u64().unwrap();
    assert_eq!(offloads, 40, "every flow offloaded once (offload after 2 packets): {stats}");
    // 13 of each flow's 15 frames when every addSession is answered before the flow's next
    // packet; a loaded machine may leave one or two more with the VNF.
    assert!(device_frames >= 40 * 10, "the device handled most of the traffic: {device_frames}");
    // Per flow, exactly: offloaded once, its 15 frames handled once, at least its first two
    // by the VNF.
    let flows = per_flow(&account);
    assert_eq!(flows.len(), 40, "{account}");
    assert!(flows.iter().all(|&(o, v, d)| o == 1 && v + d == 15 && v >= 2), "{flows:?}");
    let in_flight = stats["after_offload"].as_u64().unwrap();
    assert!(
        in_flight <= offloads,
        "at most one packet per flow in flight after its session was committed: {in_flight}"
    );
}

/// The VNF is killed (SIGKILL) after a run and started again on the same address: the device
/// notices the new VNF does not list it and registers again, the new VNF activates it, finds the
/// dead VNF's sessions, withdraws them with their counters (orphans), and offloads anew. Nothing
/// the device counted is counted by nobody.
#[test]
fn offloading_resumes_after_the_vnf_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let capture = generate(dir.path(), "flows.pcap", 20, 10, 13, "0.5");
    let w = Wires::new();
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (first, activation, mut log) = w.vnf_at(&listen, &["--auto-activate"]);
    assert_eq!(activation, listen);
    let _device = w.device("127.0.0.1:0", &activation, &[]);
    wait_for(&mut log, "offloading to the activated device");
    let receiver = count_at_sink(w.sink);
    w.replay(&capture, "2");
    drop(first); // SIGKILL: no withdrawal, its sessions stay on the device
    let (second, _, mut log) = w.vnf_at(&listen, &["--auto-activate"]);
    wait_for(&mut log, "offloading to the activated device");
    w.replay(&capture, "2");
    let delivered = receiver.join().unwrap();
    let account = stop_vnf(second);
    let stats = &account["stats"];
    assert_eq!(delivered, 400, "both passes delivered");
    // The dead VNF offloaded every flow; the new one withdrew each, with its counters.
    assert_eq!(stats["orphans"].as_u64().unwrap(), 20, "{stats}");
    let orphan_packets = stats["orphan_packets"].as_u64().unwrap();
    assert!((20 * 6..=20 * 8).contains(&orphan_packets), "the first pass's device share: {orphan_packets}");
    assert_eq!(stats["offload_accepted"].as_u64().unwrap(), 20, "every flow offloaded again: {stats}");
    // The second pass is the new VNF's, each frame once.
    let vnf_frames = account["vnf_frames"].as_u64().unwrap();
    let device_frames = account["device_frames"].as_u64().unwrap();
    assert_eq!(vnf_frames + device_frames, 200, "{account}");
}

/// `kill -9` of the VNF in the middle of a replay, and the VNF started again on the same address
/// while the traffic goes on: the device registers again, the new VNF withdraws the dead one's
/// sessions with their counters (orphans) and offloads the flows anew. The account balances on
/// the device's side: every frame that reached ext1 was handled by a session or sent back by a
/// VNF, and every packet a session counted is in the new VNF's account (withdrawn orphans, or its
/// own sessions); nothing the device counted is counted by nobody.
#[test]
fn offloading_resumes_after_the_vnf_is_killed_mid_replay() {
    let dir = tempfile::tempdir().unwrap();
    // 20 flows of 30 frames over 3 s: the kill lands while the flows still send.
    let capture = generate(dir.path(), "flows.pcap", 20, 30, 17, "3");
    let w = Wires::new();
    let tcp = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (listen, metrics) = (tcp(), tcp());
    let (first, activation, mut log) = w.vnf_at(&listen, &["--auto-activate"]);
    let _device = w.device("127.0.0.1:0", &activation, &["--metrics", &metrics]);
    wait_for(&mut log, "offloading to the activated device");
    let receiver = count_at_sink(w.sink);
    let replay = {
        let capture = capture.clone();
        std::thread::spawn(move || w.replay(&capture, "1"))
    };
    // Kill once the first VNF has offloaded a few flows (at most 30 s of waiting).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(&scrape(&metrics).unwrap_or_default(), "opof_sessions_added_total") < 5 {
        assert!(std::time::Instant::now() < deadline, "the first VNF offloaded nothing within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(first); // SIGKILL mid-replay: its sessions stay on the device, its account dies with it
    let (second, _, mut log) = w.vnf_at(&listen, &["--auto-activate"]);
    wait_for(&mut log, "offloading to the activated device");
    replay.join().expect("the first pass was replayed");
    let first_pass = receiver.join().unwrap();
    // A second pass of the same flows, with the new VNF in charge from its start.
    let receiver = count_at_sink(w.sink);
    w.replay(&capture, "2");
    let second_pass = receiver.join().unwrap();
    let account = stop_vnf(second);
    let text = scrape(&metrics).unwrap();
    let stats = &account["stats"];

    assert_eq!(second_pass, 600, "every frame of the second pass reached ext1");
    // The dead VNF's sessions were found and withdrawn.
    let orphans = stats["orphans"].as_u64().unwrap();
    assert!(orphans >= 5, "the dead VNF's sessions were withdrawn: {stats}");
    // Offloading resumed: every flow has a session of the new VNF's.
    let flows = per_flow(&account);
    assert_eq!(flows.len(), 20, "{account}");
    assert!(flows.iter().all(|&(o, _, _)| o >= 1), "every flow offloaded again: {flows:?}");
    // The device's side of the account.
    let by_sessions = metric(&text, "opof_datapath_offloaded_total{action=\"forward\"}");
    let from_vnfs = metric(&text, "opof_datapath_from_vnf_total");
    assert_eq!(first_pass + second_pass, by_sessions + from_vnfs, "what reached ext1 was handled by sessions or VNFs");
    let device_frames = account["device_frames"].as_u64().unwrap();
    let orphan_packets = stats["orphan_packets"].as_u64().unwrap();
    eprintln!(
        "first pass {first_pass} of 600 delivered; sessions handled {by_sessions}, VNFs {from_vnfs}; \
         orphans {orphans} ({orphan_packets} packets); the new VNF's sessions {device_frames} packets"
    );
    assert_eq!(
        by_sessions,
        orphan_packets + device_frames,
        "every packet a session counted is in the new VNF's account: {stats}"
    );
    assert_eq!(stats["duplicate_closed"].as_u64().unwrap(), 0, "{stats}");
}

/// The device is killed in the middle of a run and started again: the VNF handles the flows
/// itself meanwhile, reconnects, finds the sessions gone, offloads the flows anew, and counts
/// nothing twice (what the dead device counted is lost, never counted again).
#[test]
fn the_vnf_recovers_from_a_device_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Two captures of the same 20 flows (same seed): before and after the restart.
    let before = generate(dir.path(), "before.pcap", 20, 10, 9, "0.5");
    let w = Wires::new();
    let (vnf, activation, mut log) = w.vnf(&[]);
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let device = w.device(&listen, &activation, &[]);
    wait_for(&mut log, "offloading to the activated device");
    let receiver = count_at_sink(w.sink);
    w.replay(&before, "1");
    drop(device); // SIGKILL: no deregistration, the sessions and their counters are gone.
    wait_for(&mut log, "device unreachable");
    let _device = w.device(&listen, &activation, &[]);
    wait_for(&mut log, "sessions lost by the device");
    w.replay(&before, "1");
    let delivered = receiver.join().unwrap();
    let account = stop_vnf(vnf);
    let stats = &account["stats"];
    assert_eq!(stats["lost_sessions"].as_u64().unwrap(), 20, "{stats}");
    assert_eq!(stats["offload_accepted"].as_u64().unwrap(), 40, "every flow offloaded again: {stats}");
    let vnf_frames = account["vnf_frames"].as_u64().unwrap();
    let device_frames = account["device_frames"].as_u64().unwrap();
    // The second pass is fully accounted; the first pass's device share died with it.
    assert!(vnf_frames + device_frames <= 400, "nothing counted twice: {vnf_frames} + {device_frames}");
    assert!(device_frames >= 20 * 8, "the new device's counters arrived: {device_frames}");
    // At least the two packets per flow and pass before each offload (a few more when a
    // packet met the VNF while its addSession was on its way: timing, not a defect).
    assert!(vnf_frames >= 20 * 2 * 2, "the VNF saw two packets per flow per pass: {account}");
    // Per flow: offloaded once per pass, the VNF's two packets of each pass at least.
    let flows = per_flow(&account);
    assert_eq!(flows.len(), 20, "{account}");
    assert!(flows.iter().all(|&(o, v, _)| o == 2 && v >= 4), "{flows:?}");
    assert_eq!(delivered, 400, "every frame was delivered (the device was back before the second pass)");
}

/// The same over mutual TLS: the device registers its https endpoint and the CA that signed
/// its certificate; the VNF verifies it with that CA and shows its own client certificate.
#[test]
fn the_vnf_offloads_over_mutual_tls_with_the_registered_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let out = opof().args(["certs", "--out"]).arg(&tls).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tls = tls.to_str().unwrap();
    let account = ten_flows(4, &["--tls-dir", tls], &["--tls-dir", tls]);
    assert_eq!(account["stats"]["offload_accepted"].as_u64().unwrap(), 10, "{account}");
    let total = account["vnf_frames"].as_u64().unwrap() + account["device_frames"].as_u64().unwrap();
    assert_eq!(total, 100, "{account}");
}

/// The Activation service with --tls-dir admits only clients with a certificate from its CA:
/// the device registers over mutual TLS, the operator lists with its certificate, and a client
/// without one, or with another CA's, is refused.
#[test]
fn the_activation_service_admits_only_certified_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, other) = (dir.path().join("tls"), dir.path().join("other"));
    for d in [&tls, &other] {
        let out = opof().args(["certs", "--out"]).arg(d).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (tls, other) = (tls.to_str().unwrap(), other.to_str().unwrap());
    let w = Wires::new();
    let (vnf, addr, mut log) = w.vnf_with(&["--tls-dir", tls]);
    let _device = w.device("127.0.0.1:0", &addr, &["--tls-dir", tls, "--name", "dpu-mtls"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let (ok, out, err) = activation(&addr, &["--tls-dir", tls, "--json", "list"]);
        if ok && out.contains("dpu-mtls") {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "the device never appeared: {out} {err}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(listed.contains("dpu-mtls"), "{listed}");
    let (ok, _, err) = activation(&addr, &["list"]);
    assert!(!ok, "a plaintext client is refused: {err}");
    let (ok, _, err) = activation(&addr, &["--tls-dir", other, "list"]);
    assert!(!ok, "a client certificate from another CA is refused: {err}");
    let (ok, out, err) = activation(&addr, &["--tls-dir", tls, "activate", "dpu-mtls"]);
    assert!(ok, "{out} {err}");
    wait_for(&mut log, "offloading to the activated device");
    drop(vnf);
}

/// The operator deactivates the device: the VNF stops offloading (new flows stay on the VNF),
/// while the sessions already on the device keep being handled and counted there.
#[tokio::test(flavor = "multi_thread")]
async fn after_deactivation_the_vnf_stops_offloading() {
    use opof_proto::openoffload::v1alpha5::{activation_client::ActivationClient, Empty};
    let dir = tempfile::tempdir().unwrap();
    let first = generate(dir.path(), "first.pcap", 10, 10, 21, "0.3");
    let second = generate(dir.path(), "second.pcap", 10, 10, 22, "0.3");
    let w = Wires::new();
    let (vnf, activation, mut log) = w.vnf(&[]);
    let _device = w.device("127.0.0.1:0", &activation, &[]);
    let mut log = tokio::task::spawn_blocking(move || {
        wait_for(&mut log, "offloading to the activated device");
        log
    })
    .await
    .unwrap();
    let receiver = count_at_sink(w.sink);
    let (wires, capture) = (std::sync::Arc::new(w), first.clone());
    let w2 = wires.clone();
    tokio::task::spawn_blocking(move || w2.replay(&capture, "2")).await.unwrap();

    let mut operator = ActivationClient::connect(format!("http://{activation}")).await.unwrap();
    let active = operator.get_activated_offload(Empty {}).await.unwrap().into_inner();
    assert!(!active.name.is_empty());
    operator.deactivate_offload(active).await.unwrap();
    let log = tokio::task::spawn_blocking(move || {
        wait_for(&mut log, "device deactivated");
        log
    })
    .await
    .unwrap();
    let w2 = wires.clone();
    tokio::task::spawn_blocking(move || w2.replay(&second, "2")).await.unwrap();
    let delivered = tokio::task::spawn_blocking(move || receiver.join().unwrap()).await.unwrap();
    let account = tokio::task::spawn_blocking(move || stop_vnf(vnf)).await.unwrap();
    drop(log);
    assert_eq!(delivered, 200);
    let stats = &account["stats"];
    assert_eq!(stats["offload_accepted"].as_u64().unwrap(), 10, "only the first flows were offloaded: {stats}");
    let total = account["vnf_frames"].as_u64().unwrap() + account["device_frames"].as_u64().unwrap();
    assert_eq!(total, 200, "{account}");
    // Exactly, per flow: the ten first flows were offloaded once and handled once (at least
    // their first two frames by the VNF); the ten second flows stayed wholly on the VNF.
    let flows = per_flow(&account);
    let (first, second): (Vec<_>, Vec<_>) = flows.iter().partition(|f| f.0 == 1);
    assert_eq!((first.len(), second.len()), (10, 10), "{flows:?}");
    assert!(first.iter().all(|&&(_, v, d)| v + d == 10 && v >= 2), "{flows:?}");
    assert!(second.iter().all(|&&f| f == (0, 10, 0)), "the second flows stayed on the VNF: {flows:?}");
}

/// Runs `opof activation --vnf VNF ARGS...`; answers (success, stdout, stderr).
fn activation(vnf: &str, args: &[&str]) -> (bool, String, String) {
    let out = opof().args(["activation", "--vnf", vnf]).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The operator's step by hand: without --auto-activate the VNF keeps every flow until the
/// operator activates the registered device with `opof activation`; refusals are clear errors.
#[test]
fn the_operator_activates_the_device_with_opof_activation() {
    let dir = tempfile::tempdir().unwrap();
    let capture = generate(dir.path(), "flows.pcap", 10, 10, 31, "0.3");
    let w = Wires::new();
    let (vnf, addr, mut log) = w.vnf_with(&[]);
    let _device = w.device("127.0.0.1:0", &addr, &["--name", "dpu-under-test"]);
    wait_for(&mut log, "device registered");

    let (ok, out, err) = activation(&addr, &["list"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "a header and the device: {out}");
    assert!(lines[1].starts_with("   dpu-under-test "), "registered, not active: {out}");
    assert!(lines[1].contains("http://127.0.0.1:") && lines[1].contains("v1+v2"), "{out}");
    assert_eq!(activation(&addr, &["active"]).1, "no device is active\n");

    let (ok, _, err) = activation(&addr, &["activate", "nobody"]);
    assert!(!ok && err.contains("activateOffload refused") && err.contains("NotFound"), "{err}");
    let (ok, out, err) = activation(&addr, &["activate", "dpu-under-test"]);
    assert!(ok && out == "activated dpu-under-test\n", "{out}{err}");
    wait_for(&mut log, "offloading to the activated device");

    let receiver = count_at_sink(w.sink);
    w.replay(&capture, "2");
    assert_eq!(receiver.join().unwrap(), 100);

    let (ok, out, err) = activation(&addr, &["--json", "list"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "dpu-under-test");
    assert_eq!(list[0]["active"], true, "{list}");
    let (ok, out, err) = activation(&addr, &["deactivate"]);
    assert!(ok && out == "deactivated dpu-under-test\n", "{out}{err}");
    let (ok, _, err) = activation(&addr, &["deactivate"]);
    assert!(!ok && err.contains("no device is active"), "{err}");
    assert_eq!(activation(&addr, &["--json", "active"]).1.trim(), "null");

    let account = stop_vnf(vnf);
    assert_eq!(account["stats"]["offload_accepted"].as_u64().unwrap(), 10, "{account}");
    let total = account["vnf_frames"].as_u64().unwrap() + account["device_frames"].as_u64().unwrap();
    assert_eq!(total, 100, "{account}");

    // The VNF is gone: the operator is told it cannot be reached, and why.
    let (ok, _, err) = activation(&addr, &["list"]);
    assert!(!ok && err.contains("cannot reach the VNF's Activation service"), "{err}");
}

/// A device whose table is full answers `_SESSION_TABLE_FULL` for the requests beyond its
/// capacity: the VNF keeps those flows (backing off before it asks again), and every frame is
/// still delivered and accounted for once.
#[test]
fn a_full_device_table_leaves_the_rest_of_the_flows_on_the_vnf() {
    let account = ten_flows(41, &[], &["--capacity", "4"]);
    let stats = &account["stats"];
    assert_eq!(stats["offload_accepted"].as_u64().unwrap(), 4, "the capacity: {stats}");
    assert!(stats["table_full"].as_u64().unwrap() >= 6, "the other six were refused as table full: {stats}");
    assert_eq!(stats["rejected"].as_u64().unwrap(), 0, "{stats}");
    let (vnf_frames, device_frames) =
        (account["vnf_frames"].as_u64().unwrap(), account["device_frames"].as_u64().unwrap());
    assert_eq!(vnf_frames + device_frames, 100, "{account}");
    // Four flows offloaded after their second packet: at most 8 frames each on the device
    // (fewer only if a frame was still on its way to the VNF when the session was committed).
    assert!(device_frames > 0 && device_frames <= 4 * 8, "{account}");
}

/// A session the device rejects (here: MIRROR to a multicast next hop, which the reference
/// device refuses as `_SESSION_REJECTED`) stays on the VNF for good: its frames are forwarded
/// by the VNF and counted there, none is lost, none is offered again.
#[test]
fn a_session_the_device_rejects_stays_on_the_vnf() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[defaults]\naction = \"mirror\"\nnext_hop = \"224.0.0.9\"\noffload_after = 2\n").unwrap();
    let account = ten_flows(42, &["--policy", policy.to_str().unwrap()], &[]);
    let stats = &account["stats"];
    assert_eq!(stats["rejected"].as_u64().unwrap(), 10, "each flow's session was rejected once: {stats}");
    assert_eq!(stats["offload_accepted"].as_u64().unwrap(), 0, "{stats}");
    assert_eq!(account["vnf_frames"].as_u64().unwrap(), 100, "{account}");
    assert_eq!(account["device_frames"].as_u64().unwrap(), 0, "{account}");
}
