//! `opof`: the OpenOffload toolkit's command line. Thin: each subcommand parses its options
//! and calls into the workspace's crates.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod commands;

use commands::*;

#[derive(Parser)]
#[command(
    name = "opof",
    version,
    about = "OpenOffload toolkit: reference SmartNIC device, VNF simulator, conformance suite, traffic tools, load generators, TLS material"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the reference device: the SessionTable gRPC server (v1, v2 and v1alpha5 paths) and,
    /// with --port, the datapath on io_uring.
    Device(Box<device::DeviceArgs>),
    /// Make a CA, a server certificate (with subjectAltName) and a client certificate.
    Certs(certs::CertsArgs),
    /// Load generators against any SessionTable endpoint; print JSON results.
    #[command(subcommand)]
    Bench(opof_benches::load::BenchCommand),
    /// Run the conformance suite against a target; print a summary, write report.json,
    /// junit.xml, report.md and report.html. Exit status: 0 no FAIL or ERROR (CERTIFIED for the
    /// whole suite), 1 a FAIL or ERROR, 2 a usage error, 3 the target cannot be reached.
    Certify(Box<certify::CertifyArgs>),
    /// Docker image of the reference device, built from a binary without any registry.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Generate synthetic traffic (TCP and UDP flows) into a pcap or pcapng file, with its
    /// ground truth as JSON.
    Gen(gen::GenArgs),
    /// Send a capture's frames out of a port (UDP wire, TAP, AF_PACKET; io_uring), in real
    /// time, faster, or as fast as possible; print a summary (JSON on stdout).
    Replay(replay::ReplayArgs),
    /// Offload every flow of a capture to a SessionTable endpoint (one session per flow, in
    /// addSession streams of 10,000), so a replay of the capture meets offloaded sessions;
    /// print a summary (JSON on stdout).
    Offload(offload::OffloadArgs),
    /// Run a capture through the reference device and the VNF simulator in one process, on the
    /// in-memory wire, in virtual time; print the account per flow and in total, checked
    /// against the capture (every packet handled exactly once).
    Simulate(simulate::SimulateArgs),
    /// Run the simulated VNF as its own process: the Activation service devices register
    /// with, and a bump in the wire on two real ports that offloads flows to the activated
    /// device by its policy. On stop it withdraws its sessions and prints its account (JSON).
    Vnf(vnf::VnfArgs),
    /// Look at a SessionTable endpoint's sessions from the shell (any flavour): get, list,
    /// closed, delete; a table, or JSON lines with --json.
    Session(Box<session::SessionArgs>),
    /// The VNF operator's step: list the devices registered with a VNF's Activation service,
    /// see which is active, activate or deactivate one.
    Activation(activation::ActivationArgs),
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opof: error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, leaving out a cause whose text its parent already
/// quotes (most of ours name their cause in their message).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    let mut last = line.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !last.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        last = text;
    }
    line
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    match cli.command {
        Command::Device(a) => rt.block_on(device::run_device(*a)),
        Command::Certs(a) => certs::run(a),
        Command::Bench(b) => rt.block_on(opof_benches::load::run(b)),
        Command::Certify(a) => {
            let code = rt.block_on(certify::certify(*a))?;
            // The runtime may hold an embedded device's tasks: end them before exiting.
            rt.shutdown_timeout(Duration::from_secs(1));
            std::process::exit(code);
        }
        Command::Gen(a) => gen::gen(a),
        Command::Replay(a) => replay::replay(a),
        Command::Offload(a) => rt.block_on(offload::offload(a)),
        Command::Simulate(a) => simulate::simulate(a),
        Command::Vnf(a) => rt.block_on(vnf::run_vnf(a)),
        Command::Activation(a) => rt.block_on(activation::run_activation(a)),
        Command::Image(c) => image::run(c),
        Command::Session(a) => rt.block_on(session::run(*a)),
    }
}
