//! Shared by the tests of the `opof` binary: running it, and starting `opof device` on a free
//! loopback port.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStderr, Command, Stdio};

pub fn opof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_opof"))
}

/// Starts `opof ARGS` with info logs on a pipe; returns it, the address of its first
/// `listen=` log line, and the rest of its log.
fn spawn_listening(args: &[&str]) -> (Child, String, Lines<BufReader<ChildStderr>>) {
    let mut child = opof()
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("exited before listening").unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().trim_matches('"').to_string();
        }
    };
    (child, addr, lines)
}

/// Starts `opof device --listen 127.0.0.1:0` with `extra` options; returns the process, the
/// port it listens on (read from its log), and the rest of its log.
pub fn start_device(extra: &[&str]) -> (Child, String, Lines<BufReader<ChildStderr>>) {
    let (d, addr, lines) = spawn_listening(&[&["device", "--listen", "127.0.0.1:0"], extra].concat());
    let port = addr.rsplit(':').next().unwrap().to_string();
    (d, port, lines)
}

/// A process killed when dropped (also when a test fails half way).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `opof ARGS` and returns it with the address of its first `listen=` log line; the
/// rest of its log is read and dropped.
pub fn start_listening(args: &[&str]) -> (Killed, String) {
    let (child, addr, lines) = spawn_listening(args);
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), addr)
}

/// The Prometheus text served at `http://ADDR/metrics`.
pub fn scrape(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// The value of the first sample whose line starts with `line_start` (name and labels), 0 when
/// there is none.
pub fn metric(text: &str, line_start: &str) -> u64 {
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

/// Does this test run as root (network namespaces, veth, TAP, Docker)?
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
