//! Shared by the tests of the `opof` binary: running it, and starting `opof device` on a free
//! loopback port.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStderr, Command, Stdio};

pub fn opof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_opof"))
}

/// Starts `opof device --listen 127.0.0.1:0` with `extra` options; returns the process, the
/// port it listens on (read from its log), and the rest of its log.
pub fn start_device(extra: &[&str]) -> (Child, String, Lines<BufReader<ChildStderr>>) {
    let mut d = opof()
        .args(["device", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(d.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("device exited before listening").unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let port = addr.rsplit(':').next().unwrap().to_string();
    (d, port, lines)
}
