//! `opof vnf` on real interfaces: AF_PACKET on veth pairs in a network namespace the test
//! makes (as root; reported as ignored with the reason otherwise). With no device active the VNF
//! is a plain bump in the wire: every frame sent into side a leaves side b byte for byte, VLAN
//! tags included, and its account says it handled each one itself.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use opof_traffic::port::Peer;

fn sh(cmd: &str) -> Result<(), Failed> {
    let out = Command::new("sh").arg("-c").arg(cmd).output().map_err(|e| Failed::from(format!("{cmd}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Failed::from(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr))))
    }
}

/// An Ethernet/IPv4/UDP frame of flow `i`, `tags` VLAN tags.
fn frame(i: u8, tags: usize) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    for k in 0..tags {
        f.extend_from_slice(&(if k == 0 && tags == 2 { 0x88a8u16 } else { 0x8100 }).to_be_bytes());
        f.extend_from_slice(&(100 + k as u16).to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 48, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, i, 10, 0, 1, 1]);
    f.extend_from_slice(&[0x13, 0x89, 0x13, 0x8a, 0, 28, 0, 0]);
    f.extend_from_slice(&[i; 20]);
    f
}

fn vnf_on_veth() -> Result<Completion, Failed> {
    if !common::is_root() {
        return Ok(Completion::ignored_with("needs root to make veth pairs in a network namespace (CI runs as root)"));
    }
    std::thread::spawn(|| -> Result<Completion, Failed> {
        // SAFETY: unshare affects the calling thread only; the children it spawns inherit it.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(Failed::from(format!("unshare: {}", std::io::Error::last_os_error())));
        }
        std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1").map_err(|e| Failed::from(e.to_string()))?;
        std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1").map_err(|e| Failed::from(e.to_string()))?;
        sh("ip link set lo up && ip link add va type veth peer name pa && ip link add vb type veth peer name pb \
            && ip link set va up && ip link set pa up && ip link set vb up && ip link set pb up")?;
        let mut vnf = Command::new(env!("CARGO_BIN_EXE_opof"))
            .args(["vnf", "--listen", "127.0.0.1:0", "--port", "a=afpacket:va", "--port", "b=afpacket:vb"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Failed::from(e.to_string()))?;
        let mut log = BufReader::new(vnf.stderr.take().unwrap()).lines();
        loop {
            match log.next() {
                Some(Ok(l)) if l.contains("datapath running") => break,
                Some(_) => {}
                None => return Err(Failed::from("the VNF exited before its datapath ran")),
            }
        }
        // Keep reading the log so the VNF never blocks on a full pipe.
        std::thread::spawn(move || for _ in log.by_ref() {});
        let (a, b) = (Peer::interface("pa").unwrap(), Peer::interface("pb").unwrap());
        let sent: Vec<Vec<u8>> = (1..=30u8).map(|i| frame(i, usize::from(i % 3))).collect();
        let mut got = Vec::new();
        for f in &sent {
            a.send(f).map_err(|e| Failed::from(e.to_string()))?;
            match b.recv(Duration::from_secs(5)).map_err(|e| Failed::from(e.to_string()))? {
                Some(g) => got.push(g),
                None => break,
            }
        }
        let _ = Command::new("kill").args(["-INT", &vnf.id().to_string()]).status();
        let mut stdout = String::new();
        std::io::Read::read_to_string(&mut vnf.stdout.take().unwrap(), &mut stdout).unwrap();
        let status = vnf.wait().unwrap();
        if got != sent {
            return Err(Failed::from(format!("{} of {} frames came out of side b unchanged", got.len(), sent.len())));
        }
        let account: serde_json::Value = serde_json::from_str(&stdout).map_err(|e| Failed::from(e.to_string()))?;
        if account["vnf_frames"] != 30 || account["device_frames"] != 0 || !status.success() {
            return Err(Failed::from(format!("exit {status}, account {account}")));
        }
        Ok(Completion::Completed)
    })
    .join()
    .unwrap_or_else(|_| Err(Failed::from("the namespace thread panicked")))
}

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let trials = vec![Trial::ignorable_test("opof vnf forwards on veth ports (AF_PACKET)", vnf_on_veth)];
    libtest_mimic::run(&args, trials).exit_code()
}
