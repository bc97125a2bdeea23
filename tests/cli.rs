//! The `opof` binary as a user runs it: `opof certs`, `opof device` with mutual TLS, a client,
//! then Ctrl-C (SIGINT) and a clean exit.

mod common;

use std::process::Command;

use common::{opof, start_device};

use opof_device::tls::ClientTls;
use opof_proto::client::{Flavour, SessionTableClient};
use opof_proto::wire;

#[tokio::test]
async fn device_with_mtls_serves_and_stops_cleanly_on_ctrl_c() {
    serve_then_stop_with("-INT").await;
}

/// SIGTERM is what `docker stop` and systemd send.
#[tokio::test]
async fn device_stops_cleanly_on_sigterm() {
    serve_then_stop_with("-TERM").await;
}

async fn serve_then_stop_with(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let out = opof().args(["certs", "--out"]).arg(&tls).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"] {
        assert!(tls.join(f).exists(), "{f} written");
    }

    let (mut device, port, lines) = start_device(&["--capacity", "1000", "--tls-dir", tls.to_str().unwrap()]);

    let channel = tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(ClientTls::from_dir(&tls).unwrap().to_tonic())
        .unwrap()
        .connect()
        .await
        .expect("mTLS connection to opof device");
    let mut c = SessionTableClient::new(channel, Flavour::V2);
    let r = c.get_session(wire::SessionId { session_id: 1 }).await.unwrap().into_inner();
    assert_eq!(r.request_status, wire::RequestStatus::RejectedSessionNonexistent as i32);

    // Ctrl-C while the client still holds its connection: the device stops anyway (after
    // finishing in-flight calls, within its grace period).
    let kill = Command::new("kill").args([signal, &device.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || device.wait().unwrap()).await.unwrap();
    drop(c);
    assert!(status.success(), "opof device exits 0 on {signal}, got {status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}

#[test]
fn bad_options_are_refused_with_a_clear_message() {
    let out = opof().args(["device", "--capacity", "0", "--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("capacity 0 is out of range"), "{err}");

    let out = opof().args(["device", "--tls-dir", "/nonexistent/tls"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/tls/server.pem"), "{err}");

    for cmd in ["device", "vnf"] {
        for size in ["1000", "2147483648", "64M"] {
            let out = opof().args([cmd, "--socket-buffer", size, "--listen", "127.0.0.1:0"]).output().unwrap();
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("--socket-buffer") && err.contains(size), "{cmd}: {err}");
        }
    }

    let out = opof().args(["bench", "add", "--api", "v3"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown API flavour") && err.contains("or auto"), "{err}");
}

/// `opof gen` then `opof replay` over the UDP wire: every frame arrives, in order, and the
/// summary (JSON on stdout) says so.
#[test]
fn gen_then_replay_over_the_udp_wire() {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("g.pcapng");
    let out = opof()
        .args(["gen", "--flows", "20", "--packets", "4", "--duration", "0.05", "--out"])
        .arg(&cap)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{}.truth.json", cap.display())).unwrap()).unwrap();
    let frames = truth["frames"].as_u64().unwrap();

    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
    let port = sink.local_addr().unwrap().port();
    let recv = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        while sink.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let out = opof()
        .arg("replay")
        .arg(&cap)
        .args(["--to", &format!("udp:127.0.0.1:{port}"), "--speed", "5", "--loops", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["frames"].as_u64(), Some(2 * frames), "{summary}");
    assert_eq!(summary["dropped"].as_u64(), Some(0));
    assert_eq!(recv.join().unwrap(), 2 * frames);
}

#[test]
fn replay_refuses_bad_captures_and_ports_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a capture\n").unwrap();
    let out = opof().arg("replay").arg(&text).args(["--to", "udp:127.0.0.1:9"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pcap or pcapng file"));
    let out = opof().args(["replay", "x.pcap", "--to", "eth0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a port is mem, udp:"));
}

/// `opof device` with its five ports on the UDP wire and Prometheus metrics: a session added
/// over gRPC forwards a frame ext0 → ext1 and counts it; a frame of no session goes to vnf0;
/// the metrics endpoint says so.
#[tokio::test]
async fn device_with_ports_forwards_offloaded_flows_and_serves_metrics() {
    use std::net::UdpSocket;
    use std::time::Duration;
    let free = || UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let names = ["ext0", "ext1", "vnf0", "vnf1", "collector"];
    let ends: Vec<_> = names.iter().map(|_| (free(), free())).collect();
    let args: Vec<String> = names
        .iter()
        .zip(&ends)
        .flat_map(|(n, (dev, peer))| ["--port".to_string(), format!("{n}=udp:{peer},bind={dev}")])
        .chain(["--metrics".to_string(), "127.0.0.1:0".to_string()])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut device, port, mut lines) = start_device(&args);
    let metrics_url = loop {
        let line = lines.next().expect("device exited before serving metrics").unwrap();
        if let Some(rest) = line.split("url=http://").nth(1) {
            break rest.split_whitespace().next().unwrap().trim_end_matches("/metrics").to_string();
        }
    };
    let peers: Vec<UdpSocket> = ends
        .iter()
        .map(|(dev, peer)| {
            let s = UdpSocket::bind(peer).unwrap();
            s.connect(dev).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        })
        .collect();

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
    let mut c = SessionTableClient::new(channel, Flavour::V2);
    let tuple = opof_proto::domain::FiveTuple::new(
        opof_proto::domain::Protocol::Udp,
        [10, 0, 0, 1].into(),
        5001,
        [10, 0, 1, 1].into(),
        5002,
    )
    .unwrap();
    let spec = opof_proto::domain::SessionSpec {
        id: 1,
        tuple,
        action: opof_proto::domain::Action::Forward,
        in_lif: 0,
        out_lif: 0,
        cache_timeout: 0,
    };
    let r = c.add_session(tokio_stream::iter(vec![wire::SessionRequest::from(&spec)])).await.unwrap().into_inner();
    assert_eq!(r.request_status, wire::AddSessionStatus::SessionAccepted as i32, "{r:?}");

    // Ethernet / IPv4 / UDP 10.0.0.1:5001 -> 10.0.1.1:5002, 20 bytes of payload.
    let udp_frame = |sport: u16| {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 48, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 1, 1]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&[0x13, 0x8a, 0, 28, 0, 0]);
        f.extend_from_slice(&[0x5a; 20]);
        f
    };
    let offloaded = udp_frame(5001);
    let missed = udp_frame(6000);
    let result = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 2048];
        peers[0].send(&offloaded).unwrap();
        let n = peers[1].recv(&mut buf).expect("the offloaded frame comes out of ext1");
        assert_eq!(&buf[..n], &offloaded[..]);
        peers[0].send(&missed).unwrap();
        let n = peers[2].recv(&mut buf).expect("the frame of no session comes out of vnf0");
        assert_eq!(&buf[..n], &missed[..]);
    })
    .await;
    let got = c.get_session(wire::SessionId { session_id: 1 }).await.unwrap().into_inner();
    let metrics = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&metrics_url).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    })
    .await
    .unwrap();
    let _ = Command::new("kill").args(["-INT", &device.id().to_string()]).status();
    let _ = device.wait();
    result.unwrap();
    assert_eq!((got.in_packets, got.in_bytes), (1, 62), "{got:?}");
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(metrics.contains("opof_datapath_offloaded_total{action=\"forward\"} 1\n"), "{metrics}");
    assert!(metrics.contains("opof_datapath_miss_total{reason=\"no_session\"} 1\n"), "{metrics}");
    assert!(metrics.contains("opof_sessions 1\n"), "{metrics}");
}

#[test]
fn bad_ports_are_refused_with_a_clear_message() {
    for (port, says) in [
        ("ext9=udp:127.0.0.1:9,bind=127.0.0.1:0", "is not a port"),
        ("ext0", "a port is PORT=SPEC"),
        ("ext0=udp:127.0.0.1:9", "needs bind=ADDR:PORT"),
        ("ext0=serial:ttyS0", "a port is mem, udp:"),
    ] {
        let out = opof().args(["device", "--listen", "127.0.0.1:0", "--port", port]).output().unwrap();
        assert!(!out.status.success(), "{port}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{port}: {err}");
    }
}

/// `opof simulate` on a sample capture: a balanced account in text and in JSON; a bad policy
/// file is refused naming the rule.
#[test]
fn simulate_prints_a_balanced_account() {
    let capture = concat!(env!("CARGO_MANIFEST_DIR"), "/pcaps/mixed.pcapng");
    let out = opof().args(["simulate", capture]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("balanced: every one of the"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[defaults]\noffload_after = 1\n[[rule]]\nprotocol = \"udp\"\naction = \"drop\"\n")
        .unwrap();
    let out = opof().args(["simulate", capture, "--json", "--policy"]).arg(&policy).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["balanced"], true);
    let t = &r["totals"];
    assert_eq!(
        t["frames"].as_u64().unwrap(),
        t["delivered"].as_u64().unwrap() + t["device_dropped"].as_u64().unwrap() + t["vnf_dropped"].as_u64().unwrap()
    );
    assert!(t["device_dropped"].as_u64().unwrap() > 0, "{t}");

    std::fs::write(&policy, "[[rule]]\naction = \"snoop\"\n").unwrap();
    let out = opof().args(["simulate", capture, "--policy"]).arg(&policy).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rule 1: mirror and snoop need next_hop"), "{err}");
}

/// `opof bench aging` closes every session it added, in virtual and in real time, and says
/// what each part cost (the figures themselves are for benches/README.md, not asserted).
#[test]
fn bench_aging_closes_every_session_and_reports_its_parts() {
    let out = opof().args(["bench", "aging", "--sessions", "3000", "--timeout", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["figure"], "aging");
    assert_eq!(r["parameters"]["sessions"], 3000);
    assert!(r["value"].as_f64().unwrap() > 0.0, "{r}");
    for part in ["empty_table", "with_sessions"] {
        assert!(r["idle_tick_ns"][part].as_f64().is_some(), "{r}");
    }
    let real = &r["real_time"];
    assert!(real["readable_after_deadline_ms"]["max"].as_f64().is_some(), "{r}");
    assert!(real["longest_lock_hold_ms"].as_f64().is_some(), "{r}");
    assert!(real["get_session_ms"]["p99"].as_f64().is_some(), "{r}");
    assert!(real["get_sessions"].as_u64().unwrap() >= 1, "{r}");

    let out = opof().args(["bench", "aging", "--sessions", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be at least 1"));
}

/// `opof session` reads and deletes sessions of a running device from the shell: a table for
/// people, JSON lines for scripts, a clear failure for a session that is not there.
#[test]
fn session_commands_read_and_delete() {
    let (mut device, port, _lines) = start_device(&["--capacity", "100"]);
    let endpoint = format!("127.0.0.1:{port}");
    let run = |args: &[&str]| {
        let out = opof().arg("session").args(["--endpoint", &endpoint]).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // An endpoint written as a URL reaches the same device; `https://` without TLS material
    // is refused in words before any connection is tried.
    let url = format!("http://127.0.0.1:{port}/");
    let add = opof()
        .args(["bench", "add", "--endpoint", &url, "--sessions", "5", "--per-stream", "5", "--streams", "1"])
        .args(["--first-id", "100"])
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    let https = opof().args(["session", "--endpoint", &format!("https://127.0.0.1:{port}"), "list"]).output().unwrap();
    let err = String::from_utf8_lossy(&https.stderr);
    assert!(!https.status.success() && err.contains("asks for TLS, but no TLS material"), "{err}");

    let (code, out, err) = run(&["list", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let ids: Vec<u64> =
        out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [100, 101, 102, 103, 104], "{out}");
    let (code, out, _) = run(&["list", "--from", "102", "--page-size", "2"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("ID "), "a table with its header: {out}");
    assert_eq!(out.lines().count(), 1 + 3, "{out}");

    let (code, out, err) = run(&["get", "101", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["id"].as_u64(), v["state"].as_str(), v["close_code"].as_str()),
        (Some(101), Some("established"), Some("-"))
    );

    let (code, _, err) = run(&["delete", "101"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&["get", "101"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("session 101: no such session"), "{err}");
    let (code, out, _) = run(&["list", "--json"]);
    assert_eq!((code, out.lines().count()), (Some(0), 4));

    let (code, out, err) = run(&["closed"]);
    assert_eq!((code, out.as_str()), (Some(0), ""), "{err}");
    assert!(err.contains("no closed sessions queued"), "{err}");
    let _ = device.kill();
    let _ = device.wait();
}

/// Usage errors are exit status 2 with the form to use: an endpoint without a port, and a
/// reports folder that cannot be written, before anything runs.
#[test]
fn certify_refuses_what_cannot_work_before_running() {
    let out = opof().args(["certify", "--endpoint", "127.0.0.1", "--out"]).arg(std::env::temp_dir()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("has no port") && err.contains("HOST:PORT"), "{err}");
    let out = opof().args(["certify", "--case", "ADD-1", "--out", "/proc/opof-cannot-write-here"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot write the reports"), "{err}");
}

/// A process a shell starts in the background begins with SIGINT ignored, and a supervisor may
/// stop a device that is still starting. A Ctrl-C while the device waits for its port's
/// interface (which never comes) stops it then, cleanly; it is not lost with the device left
/// running until someone kills it.
#[test]
fn a_stop_while_starting_is_kept() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut cmd = opof();
    cmd.args(["device", "--listen", "127.0.0.1:0", "--wait-for-ports", "30", "--port", "ext0=afpacket:opof-absent0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: between fork and exec the closure only calls signal(), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = common::Killed(cmd.spawn().unwrap());
    let mut lines = std::io::BufReader::new(child.0.stderr.take().unwrap()).lines();
    let waiting = lines.by_ref().map_while(Result::ok).any(|l| l.contains("waiting for the interface to appear"));
    assert!(waiting, "the device did not wait for its interface");
    // SAFETY: kill() on the child's pid, which this test owns and has not reaped.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) }, 0);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}: {rest:?}");
    assert!(rest.iter().any(|l| l.contains("Ctrl-C while waiting for the ports' interfaces")), "{rest:?}");
}
