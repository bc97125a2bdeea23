//! `opof`: the OpenOffload toolkit's command line. Thin: each subcommand parses its options
//! and calls into the workspace's crates.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

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
    /// Log lines as text, or as JSON objects (one per line, for log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More log detail: -v shows the embedded device's and libraries' logs during `opof
    /// certify` (quiet otherwise) and debug logs elsewhere; -vv more still. RUST_LOG, when
    /// set, decides instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout, e.g.
    /// `opof completions bash > /etc/bash_completion.d/opof`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout, or write one page per command into a folder.
    Man {
        /// Write opof.1 and opof-COMMAND.1 into this folder instead of printing opof.1.
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
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
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Completions { .. } | Command::Man { .. } | Command::Session(_) | Command::Activation(_)
    ) {
        // Commands that only print: a reader that goes away (`| head`) ends them quietly, as
        // it ends any filter. (Servers keep ignoring SIGPIPE: a peer that left is an error
        // on its connection, not the end of the process.)
        // SAFETY: setting a signal's disposition to the default before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // `opof certify` prints its own progress: the embedded device's and the libraries' logs
    // would interleave with it, so they stay quiet unless asked for.
    let quiet = matches!(cli.command, Command::Certify(_));
    let level = match (quiet, cli.verbose) {
        (true, 0) => "error",
        (false, 0) | (true, 1) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
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
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "opof", &mut script);
            to_stdout(&script)
        }
        Command::Man { out } => man(out.as_deref()),
    }
}

/// Writes to stdout; a reader that went away (`| head`) ends the output quietly.
fn to_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// The man pages: opof.1 on stdout, or opof.1 and one page per command (opof-device.1, ...)
/// into a folder.
fn man(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    let Some(dir) = out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        return to_stdout(&page);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    let mut pages = vec![("opof".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("opof-{}", sub.get_name());
        // The page's own name (a &'static str clap can hold): the process ends soon after.
        let title: &'static str = Box::leak(name.clone().into_boxed_str());
        pages.push((name, sub.clone().name(title)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut f = std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        clap_mangen::Man::new(page).render(&mut f)?;
        println!("{}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option and argument of every command says what it is for (`--help` answers).
    #[test]
    fn every_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if ["help", "version"].contains(&id) {
                    continue;
                }
                let has = a.get_help().is_some_and(|h| !h.to_string().trim().is_empty())
                    || a.get_long_help().is_some_and(|h| !h.to_string().trim().is_empty());
                if !has {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for s in cmd.get_subcommands() {
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "opof", &mut missing);
        assert!(missing.is_empty(), "options without help: {missing:#?}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
