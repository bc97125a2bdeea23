//! The device at its file-descriptor limit: a flood of connections uses up its descriptors, the
//! accept loop backs off (a few failed accepts a second, not a spinning core), and once the
//! flood is gone the device serves gRPC again. The device runs under `prlimit --nofile=64`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{metric, opof, scrape, Killed};

#[test]
fn at_the_descriptor_limit_accepting_backs_off_and_then_serves_again() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let mut device = Killed(
        Command::new("prlimit")
            .args(["--nofile=64", "--", env!("CARGO_BIN_EXE_opof")])
            .args(["device", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(device.0.stderr.take().unwrap()).lines();
    let (mut grpc, mut metrics) = (None, None);
    while grpc.is_none() || metrics.is_none() {
        let line = lines.next().expect("the device exited before listening").unwrap();
        if let Some(rest) = line.split("url=http://").nth(1) {
            metrics = Some(rest.split_whitespace().next().unwrap().trim_end_matches("/metrics").to_string());
        } else if let Some(rest) = line.split("listen=").nth(1) {
            grpc = Some(rest.split_whitespace().next().unwrap().trim_matches('"').to_string());
        }
    }
    let (grpc, metrics) = (grpc.unwrap(), metrics.unwrap());
    // Keep reading the log so the device never blocks on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));

    // 150 connections: the device accepts until its descriptors run out; the rest wait in the
    // backlog while accepting fails.
    let flood: Vec<_> = (0..150).map(|_| std::net::TcpStream::connect(&grpc).unwrap()).collect();
    std::thread::sleep(Duration::from_secs(2));
    drop(flood);
    // The device closes what it accepted (the peers are gone) and gets its descriptors back:
    // a gRPC call then succeeds (bounded wait: the back-off is at most 1 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = opof().args(["session", "--endpoint", &grpc, "list", "--json"]).output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the device does not serve after the flood: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = scrape(&metrics).unwrap();
    let errors = metric(&text, "opof_grpc_accept_errors_total");
    assert!(errors >= 1, "the flood ran the device out of descriptors: {text}");
    // Backing off from 5 ms to 1 s makes about ten failed accepts in those two seconds; a loop
    // that retried at once would have made hundreds of thousands.
    assert!(errors < 200, "accepting was retried without backing off: {errors} failures");
    let accepted = metric(&text, "opof_grpc_connections_total");
    assert!(accepted > 1, "{text}");
}
