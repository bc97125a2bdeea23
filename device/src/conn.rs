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
//! the handshake timeout is closed (a half-open or silent client holds nothing for long), and
//! so is one that carries no call for the idle timeout ([`CallsLayer`] counts each
//! connection's calls in flight, a streaming call until its response ends). Counts go to
//! [`prometheus`].

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
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
    held: Mutex<Held>,
    /// Calls in flight, and since when there are none.
    calls: Mutex<Calls>,
}

#[derive(Default)]
struct Held {
    records: VecDeque<SessionRecord>,
    /// The connection ended: a stream that ends later (its body is sent by a task of its own,
    /// which can outlive the connection) gives its records back at once instead.
    gone: bool,
}

#[derive(Default)]
struct Calls {
    open: usize,
    /// `Some` while no call is in flight: since when.
    idle_since: Option<tokio::time::Instant>,
    /// The connection's reader, woken when the last call ends (to arm the idle timer).
    reader: Option<Waker>,
}

impl ConnState {
    fn new(device: Arc<Device>) -> Self {
        ConnState {
            device,
            held: Mutex::new(Held::default()),
            calls: Mutex::new(Calls { idle_since: Some(tokio::time::Instant::now()), ..Calls::default() }),
        }
    }

    fn call_started(&self) {
        let mut c = self.calls.lock();
        c.open += 1;
        c.idle_since = None;
        CALLS_OPEN.fetch_add(1, Ordering::Relaxed);
    }

    fn call_ended(&self) {
        let mut c = self.calls.lock();
        c.open -= 1;
        CALLS_OPEN.fetch_sub(1, Ordering::Relaxed);
        if c.open == 0 {
            c.idle_since = Some(tokio::time::Instant::now());
            if let Some(w) = c.reader.take() {
                w.wake();
            }
        }
    }

    /// Records a stream on this connection delivered up to its end: held until the reader
    /// comes back or the connection ends.
    pub(crate) fn hold(&self, records: impl IntoIterator<Item = SessionRecord>) {
        let mut held = self.held.lock();
        if !held.gone {
            held.records.extend(records);
            return;
        }
        drop(held);
        let back: VecDeque<SessionRecord> = records.into_iter().collect();
        if !back.is_empty() {
            let n = back.len();
            self.device.restore_closed(back, n);
        }
    }

    /// The reader came back (a new getClosedSessions call on this connection): what earlier
    /// streams delivered was read.
    pub(crate) fn release(&self) {
        self.held.lock().records.clear();
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
static IDLE: AtomicU64 = AtomicU64::new(0);
static CALLS_OPEN: AtomicU64 = AtomicU64::new(0);

/// Why the server refused an addSession stream before its end.
#[derive(Clone, Copy)]
pub(crate) enum Refusal {
    /// Open streams together would hold more requests than `max_pending_requests`.
    PendingRequests,
    /// One stream held more requests than the table's capacity.
    OverCapacity,
    /// The client's deadline passed before the stream's end.
    Deadline,
}

impl Refusal {
    const ALL: [Refusal; 3] = [Refusal::PendingRequests, Refusal::OverCapacity, Refusal::Deadline];
    fn name(self) -> &'static str {
        match self {
            Refusal::PendingRequests => "pending_requests",
            Refusal::OverCapacity => "stream_over_capacity",
            Refusal::Deadline => "deadline",
        }
    }
}

static REFUSED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Counts an addSession stream refused for `why`.
pub(crate) fn refused(why: Refusal) {
    REFUSED[why as usize].fetch_add(1, Ordering::Relaxed);
}

/// The connection counts in the Prometheus text format.
pub fn prometheus() -> String {
    let mut o = String::new();
    o.push_str(
        "# HELP opof_grpc_add_streams_refused_total addSession streams refused before their end, by bound.\n\
         # TYPE opof_grpc_add_streams_refused_total counter\n",
    );
    for r in Refusal::ALL {
        o.push_str(&format!(
            "opof_grpc_add_streams_refused_total{{reason=\"{}\"}} {}\n",
            r.name(),
            REFUSED[r as usize].load(Ordering::Relaxed)
        ));
    }
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
            "opof_grpc_connections_idle_closed_total",
            "counter",
            "Connections closed because they carried no call for the idle timeout.",
            IDLE.load(Ordering::Relaxed),
        ),
        ("opof_grpc_calls_open", "gauge", "gRPC calls in flight (streams until their response ends).", {
            CALLS_OPEN.load(Ordering::Relaxed)
        }),
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
    /// How long the connection may carry no call (`None`: for ever), and the timer for it.
    idle_timeout: Option<Duration>,
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TrackedIo {
    /// Pending reads only: true when the connection has carried no call for the idle timeout
    /// (otherwise the timer is armed for the deadline, or the reader registered to be woken
    /// when the last call ends).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.idle_timeout else { return false };
        let since = {
            let mut c = self.state.calls.lock();
            match c.idle_since {
                Some(since) => since,
                None => {
                    c.reader = Some(cx.waker().clone());
                    return false;
                }
            }
        };
        let deadline = since + timeout;
        let timer = self.idle_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

impl Drop for TrackedIo {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
        let held = {
            let mut h = self.state.held.lock();
            h.gone = true;
            std::mem::take(&mut h.records)
        };
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
        if r.is_pending() && self.idle_expired(cx) {
            IDLE.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection carried no call for the idle timeout",
            )));
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
    idle_timeout: Option<Duration>,
) -> impl Stream<Item = io::Result<TrackedIo>> + Send {
    futures_util::stream::unfold((listener, device, None), move |(l, d, mut warned)| async move {
        let io = accept(&l, &mut warned).await;
        let state = Arc::new(ConnState::new(d.clone()));
        let first_bytes_by = Some(Box::pin(tokio::time::sleep(handshake_timeout)));
        let io = TrackedIo { io, state, first_bytes_by, idle_timeout, idle_timer: None };
        Some((Ok(io), (l, d, warned)))
    })
}

/// The connections of a listener, untracked, with accept errors backed off (for servers
/// without closed records to hold: the VNF's Activation service). Counted in [`prometheus`]
/// like the device's.
pub fn incoming_plain(listener: TcpListener) -> impl Stream<Item = io::Result<PlainIo>> + Send {
    futures_util::stream::unfold((listener, None), |(l, mut warned)| async move {
        let io = accept(&l, &mut warned).await;
        Some((Ok(PlainIo(io)), (l, warned)))
    })
}

/// A connection of [`incoming_plain`]: counted open until dropped.
pub struct PlainIo(TcpStream);

impl Drop for PlainIo {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for PlainIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PlainIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for PlainIo {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

/// The next connection of `l`. Accepting that fails (out of descriptors or memory, a
/// connection that died in the backlog) is retried after a wait growing from 5 ms to 1 s,
/// never at once; a warning at most once a second (`warned`: when the last one was).
async fn accept(l: &TcpListener, warned: &mut Option<std::time::Instant>) -> TcpStream {
    let mut backoff = Duration::from_millis(5);
    loop {
        match l.accept().await {
            Ok((io, _)) => {
                let _ = io.set_nodelay(true);
                ACCEPTED.fetch_add(1, Ordering::Relaxed);
                OPEN.fetch_add(1, Ordering::Relaxed);
                return io;
            }
            Err(e) => {
                ACCEPT_ERRORS.fetch_add(1, Ordering::Relaxed);
                if warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(1)) {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accepting a connection failed");
                    *warned = Some(std::time::Instant::now());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// A tower layer that counts each connection's calls in flight: a call from its request until
/// its response body ends or is dropped (a streaming response counts as long as it streams).
#[derive(Clone, Copy, Default)]
pub struct CallsLayer;

impl<S> tower_layer::Layer<S> for CallsLayer {
    type Service = CountCalls<S>;
    fn layer(&self, inner: S) -> CountCalls<S> {
        CountCalls(inner)
    }
}

#[derive(Clone)]
pub struct CountCalls<S>(S);

/// One call in flight on a connection, until dropped.
struct CallGuard(Arc<ConnState>);

impl CallGuard {
    fn new(state: Arc<ConnState>) -> Self {
        state.call_started();
        CallGuard(state)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.call_ended();
    }
}

impl<S, B, RB> tonic::codegen::Service<tonic::codegen::http::Request<B>> for CountCalls<S>
where
    S: tonic::codegen::Service<tonic::codegen::http::Request<B>, Response = tonic::codegen::http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = tonic::codegen::http::Response<Counted<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let guard = req.extensions().get::<ConnInfo>().map(|c| CallGuard::new(c.0.clone()));
        let call = self.0.call(req);
        Box::pin(async move {
            let response = call.await?;
            Ok(response.map(|body| Counted { body, _guard: guard }))
        })
    }
}

/// A response body that holds its call's place until it ends.
pub struct Counted<B> {
    body: B,
    _guard: Option<CallGuard>,
}

impl<B: tonic::codegen::Body + Unpin> tonic::codegen::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
