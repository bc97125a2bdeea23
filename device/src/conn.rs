//! The device's own accept loop and connection tracking, for closed-record delivery.
//!
//! A getClosedSessions stream that ran to its end has handed every record to the HTTP/2
//! layer, but the reader's application may not have read them: a client library keeps up to
//! its receive window (megabytes) in its own buffers, and a reader that dies loses what is
//! there, whatever its kernel then tells the device. The confirmation a reader gives is coming
//! back: a reader calls getClosedSessions again only after it read the previous stream to its
//! end. So the records of a cleanly ended stream are held by the connection that carried them,
//! and
//!
//! - released (delivered) when that connection makes its next getClosedSessions call;
//! - given back to the head of the queue, counted as redelivered, when the connection ends
//!   first (the reader went away: killed, crashed, or done without asking again).
//!
//! A reader that follows (the VNF) opens stream after stream, so all it read is released by
//! its next call, and a crash costs a second delivery of the last segment, never a loss.
//!
//! The accept loop also backs off when accepting fails (out of file descriptors, ...) instead
//! of spinning, and logs that at most once a second; a connection that sends nothing within
//! the handshake timeout is closed (a half-open or silent client holds nothing for long).
//! Counts go to [`prometheus`].

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use opof_proto::domain::SessionRecord;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::Stream;
use tracing::warn;

use crate::control::Device;

/// What a connection knows about itself, shared with the calls it carries.
pub struct ConnState {
    device: Arc<Device>,
    /// Records of cleanly ended getClosedSessions streams, not yet known to be read.
    held: Mutex<VecDeque<SessionRecord>>,
}

impl ConnState {
    /// Records a stream on this connection delivered up to its end: held until the reader
    /// comes back or the connection ends.
    pub(crate) fn hold(&self, records: impl IntoIterator<Item = SessionRecord>) {
        self.held.lock().extend(records);
    }

    /// The reader came back (a new getClosedSessions call on this connection): what earlier
    /// streams delivered was read.
    pub(crate) fn release(&self) {
        self.held.lock().clear();
    }
}

/// The connection info tonic puts in each request's extensions.
#[derive(Clone)]
pub struct ConnInfo(pub Arc<ConnState>);

/// Connection counts of this process (all listeners).
static OPEN: AtomicU64 = AtomicU64::new(0);
static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static SILENT: AtomicU64 = AtomicU64::new(0);
static ACCEPT_ERRORS: AtomicU64 = AtomicU64::new(0);

/// The connection counts in the Prometheus text format.
pub fn prometheus() -> String {
    let mut o = String::new();
    for (name, kind, help, v) in [
        ("opof_grpc_connections_open", "gauge", "gRPC connections open now.", OPEN.load(Ordering::Relaxed)),
        ("opof_grpc_connections_total", "counter", "gRPC connections accepted.", ACCEPTED.load(Ordering::Relaxed)),
        (
            "opof_grpc_connections_silent_total",
            "counter",
            "Connections closed because they sent nothing within the handshake timeout.",
            SILENT.load(Ordering::Relaxed),
        ),
        (
            "opof_grpc_accept_errors_total",
            "counter",
            "Failed accepts (out of file descriptors, ...), each followed by a back-off.",
            ACCEPT_ERRORS.load(Ordering::Relaxed),
        ),
    ] {
        o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
    }
    o
}

/// A TCP connection that, when it ends, gives back the records it still holds.
pub struct TrackedIo {
    io: TcpStream,
    state: Arc<ConnState>,
    /// Until the peer's first bytes: when the connection is given up.
    first_bytes_by: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Drop for TrackedIo {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
        let held = std::mem::take(&mut *self.state.held.lock());
        if !held.is_empty() {
            let n = held.len();
            self.state.device.restore_closed(held, n);
        }
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.first_bytes_by.is_some() {
            if matches!(r, Poll::Ready(_)) && buf.filled().len() > before {
                self.first_bytes_by = None;
            } else if r.is_pending() && self.first_bytes_by.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready()) {
                SILENT.fetch_add(1, Ordering::Relaxed);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing within the handshake timeout",
                )));
            }
        }
        r
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TrackedIo {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        ConnInfo(self.state.clone())
    }
}

/// The connections of a listener, tracked; accept errors are backed off.
pub fn incoming(
    listener: TcpListener,
    device: Arc<Device>,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<TrackedIo>> + Send {
    futures_util::stream::unfold((listener, device, None::<std::time::Instant>), move |(l, d, mut warned)| async move {
        let mut backoff = Duration::from_millis(5);
        loop {
            match l.accept().await {
                Ok((io, _)) => {
                    let _ = io.set_nodelay(true);
                    let state = Arc::new(ConnState { device: d.clone(), held: Mutex::new(VecDeque::new()) });
                    ACCEPTED.fetch_add(1, Ordering::Relaxed);
                    OPEN.fetch_add(1, Ordering::Relaxed);
                    let first_bytes_by = Some(Box::pin(tokio::time::sleep(handshake_timeout)));
                    return Some((Ok(TrackedIo { io, state, first_bytes_by }), (l, d, warned)));
                }
                Err(e) => {
                    ACCEPT_ERRORS.fetch_add(1, Ordering::Relaxed);
                    // Out of descriptors or memory, or a connection that died in the backlog:
                    // wait (growing to 1 s) instead of trying again at once.
                    if warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(1)) {
                        warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accepting a connection failed");
                        warned = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    })
}
