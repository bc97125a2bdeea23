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

use common::opof;

fn free() -> std::net::SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Kills the process when dropped (a failed assertion must not leave it running).
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn device_vnf_and_replayer_as_three_processes() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("flows.pcap");
    let out = opof()
        .args(["gen", "--out"])
        .arg(&capture)
        .args([
            "--flows",
            "40",
            "--packets",
            "15",
            "--sizes",
            "64",
            "--udp-share",
            "1",
            "--ipv6-share",
            "0",
            "--seed",
            "5",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sent_frames = 40 * 15;

    // Addresses: the device's four ports and their far ends.
    let (d_ext0, d_ext1, d_vnf0, d_vnf1) = (free(), free(), free(), free());
    let (gen, sink_addr, v_a, v_b) = (free(), free(), free(), free());
    let sink = UdpSocket::bind(sink_addr).unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(3))).unwrap();

    let mut vnf = Guard(
        opof()
            .args(["vnf", "--listen", "127.0.0.1:0", "--auto-activate"])
            .args(["--port", &format!("a=udp:{d_vnf0},bind={v_a}"), "--port", &format!("b=udp:{d_vnf1},bind={v_b}")])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut vnf_log = BufReader::new(vnf.0.stderr.take().unwrap()).lines();
    let activation = loop {
        let line = vnf_log.next().expect("the VNF exited before listening").unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let _device = Guard(
        opof()
            .args(["device", "--listen", "127.0.0.1:0", "--register-with", &activation])
            .args(["--port", &format!("ext0=udp:{gen},bind={d_ext0}")])
            .args(["--port", &format!("ext1=udp:{sink_addr},bind={d_ext1}")])
            .args(["--port", &format!("vnf0=udp:{v_a},bind={d_vnf0}")])
            .args(["--port", &format!("vnf1=udp:{v_b},bind={d_vnf1}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The VNF says when it offloads to the activated device.
    loop {
        let line = vnf_log.next().expect("the VNF exited before the device was activated").unwrap();
        if line.contains("offloading to the activated device") {
            break;
        }
    }
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while sink.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let out = opof()
        .args(["replay"])
        .arg(&capture)
        .args(["--to", &format!("udp:{d_ext0},bind={gen}"), "--speed", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let delivered = receiver.join().unwrap();

    let kill = Command::new("kill").args(["-INT", &vnf.0.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut vnf.0.stdout.take().unwrap(), &mut stdout).unwrap();
    let status = vnf.0.wait().unwrap();
    assert!(status.success(), "the VNF exits 0: {status}");
    let account: serde_json::Value = serde_json::from_str(&stdout).expect("the VNF prints its account as JSON");

    assert_eq!(delivered, sent_frames, "every frame reached ext1's far end");
    let vnf_frames = account["vnf_frames"].as_u64().unwrap();
    let device_frames = account["device_frames"].as_u64().unwrap();
    assert_eq!(vnf_frames + device_frames, sent_frames as u64, "each frame handled once: {account}");
    let stats = &account["stats"];
    let offloads = stats["offload_accepted"].as_u64().unwrap();
    assert_eq!(offloads, 40, "every flow offloaded once (offload after 2 packets): {stats}");
    assert!(device_frames >= 40 * 12, "the device handled most of the traffic: {device_frames}");
    let in_flight = stats["after_offload"].as_u64().unwrap();
    assert!(
        in_flight <= offloads,
        "at most one packet per flow in flight after its session was committed: {in_flight}"
    );
}
