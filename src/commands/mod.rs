//! One module per `opof` subcommand: its options and what runs it. `main.rs` only parses
//! and dispatches.

use std::time::Duration;

pub mod activation;
pub mod certify;
pub mod certs;
pub mod device;
pub mod gen;
pub mod image;
pub mod offload;
pub mod replay;
pub mod session;
pub mod simulate;
pub mod vnf;

/// How long Ctrl-C waits for open calls to finish.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub(crate) fn progress_bar(total: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit} {{eta}}"))
        .expect("a valid template");
    bar.set_style(style);
    bar
}

/// Ctrl-C (SIGINT) and SIGTERM (what `docker stop` and systemd send), listened for from the
/// moment this is made. Made first thing, so that a stop asked for while the command is still
/// starting (opening ports, binding its listener) is kept and acted on once it runs: a
/// process a shell starts in the background begins with SIGINT ignored, so a Ctrl-C that came
/// before any listener existed would be lost, and the process would run on.
pub(crate) struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Listens from now on (within a Tokio runtime).
    pub(crate) fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        StopSignals { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
    }

    /// The next stop signal since this was made (or since the last one returned); names it.
    pub(crate) async fn recv(&mut self) -> &'static str {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            // A signal that could not be listened for (or whose stream ended) never comes.
            if let Some(s) = s {
                if s.recv().await.is_some() {
                    return;
                }
            }
            std::future::pending().await
        }
        tokio::select! {
            _ = next(&mut self.int) => "Ctrl-C",
            _ = next(&mut self.term) => "SIGTERM",
        }
    }
}

/// A listen address: ADDR:PORT, or a host name and port (resolved, the first address used),
/// e.g. `localhost:50151`.
/// `--socket-buffer`, of every command that runs ports through io_uring (the device, the VNF).
#[derive(clap::Args)]
pub(crate) struct SocketBufferArg {
    /// Bytes asked for the receive and send buffers of each AF_PACKET and UDP port socket (the
    /// kernel counts twice as much): how long a burst the port absorbs while the datapath is
    /// busy before the kernel drops frames. A TAP port's queue is its interface's txqueuelen.
    #[arg(long = "socket-buffer", value_name = "BYTES", default_value_t = opof_traffic::port::DEFAULT_SOCKET_BUFFER,
          value_parser = clap::value_parser!(u32).range(*opof_traffic::port::SOCKET_BUFFER_RANGE.start() as i64..=*opof_traffic::port::SOCKET_BUFFER_RANGE.end() as i64))]
    bytes: u32,
}

impl SocketBufferArg {
    /// Sets it for the ports this process opens from now on.
    pub(crate) fn apply(&self) -> anyhow::Result<()> {
        opof_traffic::port::set_socket_buffer(self.bytes).map_err(anyhow::Error::msg)
    }
}

pub(crate) fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(format!("{s:?} has no port: give HOST:PORT, e.g. 127.0.0.1:50151"));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// Checks, before a run, that a report can be written at `path` (its folder exists and takes
/// files), so a long run does not end in "cannot write the report".
pub(crate) fn check_report_path(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("cannot write the report to {}", path.display()))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
