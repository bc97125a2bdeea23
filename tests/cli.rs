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
