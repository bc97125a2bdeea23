//! The datapath's counters and their Prometheus text form.
//!
//! A port loop counts into a plain [`Tally`] while it handles a batch and adds it to the shared
//! [`Metrics`] (relaxed atomics) once per batch; readers take a [`Metrics::snapshot`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::parse::MissReason;
use super::{ActionKind, Class, PortId};
use crate::table::TableStats;

/// Counters of one port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTally {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames the port could not send (kernel queue full, nobody on the UDP wire, no room in
    /// the device's send queue, port not configured).
    pub tx_dropped: u64,
    /// Frames lost on receive: longer than a receive buffer, or dropped by the kernel because
    /// the port's socket queue was full (AF_PACKET; read every 100 ms).
    pub rx_dropped: u64,
    /// Errors a receive reported and the port went on after, by [`RxError`] (on the UDP wire:
    /// ICMP errors about the peer, which a connected socket reports on its next receive).
    pub rx_errors: [u64; RX_ERRORS],
    /// Times the port's link went down.
    pub link_down: u64,
    /// Super-frames (a host's TCP/UDP segmentation offload) received and cut into the packets
    /// the wire carries; `rx_frames` counts those packets.
    pub rx_superframes: u64,
    /// Frames received with a checksum left to "the hardware" (a host's checksum offload),
    /// completed by the port.
    pub rx_checksums_completed: u64,
}

/// Why a collector copy was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyLoss {
    /// Too long for the collector link even in fragments (more than a copy may take, or the
    /// kernel refused it: EMSGSIZE).
    TooBig,
    /// No room in the socket or device queue, or every copy slot in flight.
    QueueFull,
    /// No collector port, or its link is down.
    NoCollector,
    Other,
}

pub const COPY_LOSSES: usize = 4;

impl CopyLoss {
    pub const ALL: [CopyLoss; COPY_LOSSES] =
        [CopyLoss::TooBig, CopyLoss::QueueFull, CopyLoss::NoCollector, CopyLoss::Other];

    pub fn of(errno: i32) -> CopyLoss {
        match errno {
            libc::EMSGSIZE => CopyLoss::TooBig,
            libc::ENOBUFS | libc::EAGAIN => CopyLoss::QueueFull,
            libc::ENETDOWN | libc::ENXIO | libc::EIO | libc::ECONNREFUSED => CopyLoss::NoCollector,
            _ => CopyLoss::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CopyLoss::TooBig => "too_big",
            CopyLoss::QueueFull => "queue_full",
            CopyLoss::NoCollector => "no_collector",
            CopyLoss::Other => "other",
        }
    }
}

/// Kinds of receive errors counted.
pub const RX_ERRORS: usize = 7;

/// A receive error a port survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxError {
    HostUnreachable,
    NetUnreachable,
    ProtocolUnreachable,
    PortUnreachable,
    MessageTooLong,
    NetworkDown,
    Other,
}

impl RxError {
    pub const ALL: [RxError; RX_ERRORS] = [
        RxError::HostUnreachable,
        RxError::NetUnreachable,
        RxError::ProtocolUnreachable,
        RxError::PortUnreachable,
        RxError::MessageTooLong,
        RxError::NetworkDown,
        RxError::Other,
    ];

    /// The kind of a receive error, if the port survives it: ICMP errors (destination
    /// unreachable codes 0-4, 9, 10, 13: host, net, protocol, port unreachable, fragmentation
    /// needed, administratively prohibited), the link going down, a reset or refused peer.
    pub fn of(errno: i32) -> Option<RxError> {
        Some(match errno {
            libc::EHOSTUNREACH | libc::EHOSTDOWN | libc::EACCES => RxError::HostUnreachable,
            libc::ENETUNREACH => RxError::NetUnreachable,
            libc::ENOPROTOOPT | libc::EPROTO => RxError::ProtocolUnreachable,
            libc::ECONNREFUSED | libc::ECONNRESET => RxError::PortUnreachable,
            libc::EMSGSIZE => RxError::MessageTooLong,
            libc::ENETDOWN => RxError::NetworkDown,
            libc::ETIMEDOUT | libc::EPERM => RxError::Other,
            _ => return None,
        })
    }

    /// The errno name, as the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            RxError::HostUnreachable => "EHOSTUNREACH",
            RxError::NetUnreachable => "ENETUNREACH",
            RxError::ProtocolUnreachable => "ENOPROTOOPT",
            RxError::PortUnreachable => "ECONNREFUSED",
            RxError::MessageTooLong => "EMSGSIZE",
            RxError::NetworkDown => "ENETDOWN",
            RxError::Other => "other",
        }
    }
}

const PORT_FIELDS: usize = 9 + RX_ERRORS;

impl PortTally {
    fn fields(&self) -> [u64; PORT_FIELDS] {
        let mut f = [0; PORT_FIELDS];
        f[..9].copy_from_slice(&[
            self.rx_frames,
            self.rx_bytes,
            self.tx_frames,
            self.tx_bytes,
            self.tx_dropped,
            self.rx_dropped,
            self.link_down,
            self.rx_superframes,
            self.rx_checksums_completed,
        ]);
        f[9..].copy_from_slice(&self.rx_errors);
        f
    }
    fn from_fields(f: [u64; PORT_FIELDS]) -> Self {
        PortTally {
            rx_frames: f[0],
            rx_bytes: f[1],
            tx_frames: f[2],
            tx_bytes: f[3],
            tx_dropped: f[4],
            rx_dropped: f[5],
            link_down: f[6],
            rx_superframes: f[7],
            rx_checksums_completed: f[8],
            rx_errors: std::array::from_fn(|i| f[9 + i]),
        }
    }

    /// Counts a receive error the port went on after.
    pub fn rx_error(&mut self, e: RxError) {
        self.rx_errors[e as usize] += 1;
    }
}

/// Kinds of [`Class`] counted: 5 miss reasons, no session, control, 4 actions, from the VNF,
/// at the collector.
pub const CLASSES: usize = 13;

/// The counter slot of a class.
pub fn class_index(c: Class) -> usize {
    match c {
        Class::Miss(r) => r as usize,
        Class::NoSession => 5,
        Class::Control(_) => 6,
        Class::Offloaded(a) => 7 + a as usize,
        Class::FromVnf => 11,
        Class::AtCollector => 12,
    }
}

/// Counters of the datapath, plain (one loop's batch, or a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub ports: [PortTally; 5],
    pub classes: [u64; CLASSES],
    /// Copies sent to the collector (MIRROR and SNOOP): counted once the kernel took them.
    pub copies: u64,
    /// Copies not sent, by [`CopyLoss`].
    pub copies_lost: [u64; COPY_LOSSES],
    /// Copies sent as more than one IP fragment (longer than the collector link's MTU).
    pub copies_fragmented: u64,
    /// Batches whose looked-up packets lay in more than one shard of the session table (each
    /// took more than one shard's lock); few when the ports steer flows by shard.
    pub batches_across_shards: u64,
    /// Ports whose link is down now (a state, in snapshots only; `add` ignores it).
    pub down: [bool; 5],
}

impl Tally {
    pub fn port(&mut self, p: PortId) -> &mut PortTally {
        &mut self.ports[p.index()]
    }
    pub fn count(&mut self, c: Class) {
        self.classes[class_index(c)] += 1;
    }
    pub fn class(&self, c: Class) -> u64 {
        self.classes[class_index(c)]
    }
    pub fn miss(&self, r: MissReason) -> u64 {
        self.class(Class::Miss(r))
    }
    pub fn offloaded(&self, a: ActionKind) -> u64 {
        self.class(Class::Offloaded(a))
    }
    /// Frames that took the miss path for any reason (to the VNF).
    pub fn misses(&self) -> u64 {
        self.classes[..7].iter().sum()
    }
}

/// The shared counters of a running datapath.
#[derive(Default)]
pub struct Metrics {
    ports: [[AtomicU64; PORT_FIELDS]; 5],
    down: [std::sync::atomic::AtomicBool; 5],
    classes: [AtomicU64; CLASSES],
    copies: AtomicU64,
    copies_lost: [AtomicU64; COPY_LOSSES],
    copies_fragmented: AtomicU64,
    batches_across_shards: AtomicU64,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch's counts.
    pub fn add(&self, t: &Tally) {
        for (shared, p) in self.ports.iter().zip(&t.ports) {
            for (a, v) in shared.iter().zip(p.fields()) {
                if v != 0 {
                    a.fetch_add(v, Ordering::Relaxed);
                }
            }
        }
        for (a, &v) in self.classes.iter().zip(&t.classes) {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        }
        if t.copies != 0 {
            self.copies.fetch_add(t.copies, Ordering::Relaxed);
        }
        if t.copies_fragmented != 0 {
            self.copies_fragmented.fetch_add(t.copies_fragmented, Ordering::Relaxed);
        }
        if t.batches_across_shards != 0 {
            self.batches_across_shards.fetch_add(t.batches_across_shards, Ordering::Relaxed);
        }
        for (a, &v) in self.copies_lost.iter().zip(&t.copies_lost) {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    pub fn snapshot(&self) -> Tally {
        let mut t = Tally::default();
        for (p, shared) in t.ports.iter_mut().zip(&self.ports) {
            *p = PortTally::from_fields(std::array::from_fn(|i| shared[i].load(Ordering::Relaxed)));
        }
        for (v, a) in t.classes.iter_mut().zip(&self.classes) {
            *v = a.load(Ordering::Relaxed);
        }
        t.copies = self.copies.load(Ordering::Relaxed);
        t.copies_lost = std::array::from_fn(|i| self.copies_lost[i].load(Ordering::Relaxed));
        t.copies_fragmented = self.copies_fragmented.load(Ordering::Relaxed);
        t.batches_across_shards = self.batches_across_shards.load(Ordering::Relaxed);
        t.down = std::array::from_fn(|i| self.down[i].load(Ordering::Relaxed));
        t
    }

    /// Records whether a port's link is down now.
    pub fn set_down(&self, p: PortId, down: bool) {
        self.down[p.index()].store(down, Ordering::Relaxed);
    }
}

/// The Prometheus text exposition (format 0.0.4) of the datapath's and the table's counters.
/// `ports` lists the ports the device runs, with their specs (as a label); the others appear
/// with `spec="none"` (frames sent to a port that is not configured are its drops).
pub fn prometheus(t: &Tally, table: &TableStats, ports: &[(PortId, String)]) -> String {
    let mut o = String::new();
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    type Field = fn(&PortTally) -> u64;
    let port_fields: [(&str, &str, Field); 9] = [
        ("opof_port_rx_frames_total", "Frames received on the port.", |p| p.rx_frames),
        ("opof_port_rx_bytes_total", "Bytes of frames received on the port.", |p| p.rx_bytes),
        ("opof_port_tx_frames_total", "Frames sent out of the port.", |p| p.tx_frames),
        ("opof_port_tx_bytes_total", "Bytes of frames sent out of the port.", |p| p.tx_bytes),
        ("opof_port_tx_dropped_total", "Frames that could not be sent out of the port.", |p| p.tx_dropped),
        ("opof_port_rx_dropped_total", "Frames lost on receive (too long, or the kernel's socket queue full).", |p| {
            p.rx_dropped
        }),
        (
            "opof_port_link_down_total",
            "Times the port's link went down (frames for it are counted as tx drops).",
            |p| p.link_down,
        ),
        (
            "opof_port_rx_superframes_total",
            "Segmentation-offload super-frames received and cut into the packets the wire carries (rx_frames counts the packets).",
            |p| p.rx_superframes,
        ),
        (
            "opof_port_rx_checksums_completed_total",
            "Frames received with a checksum left to the hardware (checksum offload), completed by the port.",
            |p| p.rx_checksums_completed,
        ),
    ];
    for (name, help, get) in port_fields {
        family(&mut o, name, "counter", help);
        for p in PortId::ALL {
            let spec = ports.iter().find(|(q, _)| *q == p).map_or("none", |(_, s)| s.as_str());
            let _ = writeln!(o, "{name}{{port=\"{p}\",spec=\"{spec}\"}} {}", get(&t.ports[p.index()]));
        }
    }
    let spec_of = |p: PortId| ports.iter().find(|(q, _)| *q == p).map_or("none", |(_, s)| s.as_str());
    family(
        &mut o,
        "opof_port_rx_errors_total",
        "counter",
        "Receive errors the port went on after, by errno (ICMP errors on the UDP wire, the link going down).",
    );
    for p in PortId::ALL {
        for e in RxError::ALL {
            let n = t.ports[p.index()].rx_errors[e as usize];
            let _ = writeln!(
                o,
                "opof_port_rx_errors_total{{port=\"{p}\",spec=\"{}\",errno=\"{}\"}} {n}",
                spec_of(p),
                e.name()
            );
        }
    }
    family(&mut o, "opof_port_up", "gauge", "1 while the port's link is up, 0 while it is down.");
    for p in PortId::ALL {
        let _ = writeln!(o, "opof_port_up{{port=\"{p}\",spec=\"{}\"}} {}", spec_of(p), u8::from(!t.down[p.index()]));
    }
    family(&mut o, "opof_datapath_miss_total", "counter", "Frames from an external port sent to the VNF, by reason.");
    for r in MissReason::ALL {
        let _ = writeln!(o, "opof_datapath_miss_total{{reason=\"{}\"}} {}", r.name(), t.miss(r));
    }
    let _ = writeln!(o, "opof_datapath_miss_total{{reason=\"no_session\"}} {}", t.class(Class::NoSession));
    let _ = writeln!(o, "opof_datapath_miss_total{{reason=\"tcp_control\"}} {}", t.class(Class::Control(None)));
    family(&mut o, "opof_datapath_offloaded_total", "counter", "Frames handled by a session, by its action.");
    for a in ActionKind::ALL {
        let _ = writeln!(o, "opof_datapath_offloaded_total{{action=\"{}\"}} {}", a.name(), t.offloaded(a));
    }
    family(&mut o, "opof_datapath_from_vnf_total", "counter", "Frames the VNF sent back to the network.");
    let _ = writeln!(o, "opof_datapath_from_vnf_total {}", t.class(Class::FromVnf));
    family(&mut o, "opof_datapath_collector_copies_total", "counter", "GRE copies sent to the collector.");
    let _ = writeln!(o, "opof_datapath_collector_copies_total {}", t.copies);
    family(
        &mut o,
        "opof_datapath_collector_copies_fragmented_total",
        "counter",
        "GRE copies longer than the collector link's MTU, sent as fragments of the outer IP packet.",
    );
    let _ = writeln!(o, "opof_datapath_collector_copies_fragmented_total {}", t.copies_fragmented);
    family(
        &mut o,
        "opof_datapath_batches_across_shards_total",
        "counter",
        "Batches of received frames whose sessions lay in more than one shard (each took more than one shard's lock; few when the ports steer flows by shard).",
    );
    let _ = writeln!(o, "opof_datapath_batches_across_shards_total {}", t.batches_across_shards);
    family(
        &mut o,
        "opof_datapath_collector_copies_not_sent_total",
        "counter",
        "GRE copies that could not be sent, by reason (too_big: more fragments than a copy may take).",
    );
    for l in CopyLoss::ALL {
        let _ = writeln!(
            o,
            "opof_datapath_collector_copies_not_sent_total{{reason=\"{}\"}} {}",
            l.name(),
            t.copies_lost[l as usize]
        );
    }
    family(&mut o, "opof_sessions", "gauge", "Sessions in the table.");
    let _ = writeln!(o, "opof_sessions {}", table.sessions);
    family(&mut o, "opof_sessions_added_total", "counter", "Sessions added.");
    let _ = writeln!(o, "opof_sessions_added_total {}", table.added);
    family(&mut o, "opof_sessions_deleted_total", "counter", "Sessions deleted by the control plane.");
    let _ = writeln!(o, "opof_sessions_deleted_total {}", table.deleted);
    family(&mut o, "opof_sessions_closed_total", "counter", "Sessions closed by the device, by close code.");
    for (code, n) in [("finack", table.closed_finack), ("rst", table.closed_rst), ("timeout", table.closed_timeout)] {
        let _ = writeln!(o, "opof_sessions_closed_total{{code=\"{code}\"}} {n}");
    }
    family(&mut o, "opof_closed_queue_depth", "gauge", "Closed-session records waiting for getClosedSessions.");
    let _ = writeln!(o, "opof_closed_queue_depth {}", table.closed_queued);
    family(&mut o, "opof_closed_queue_overflow_total", "counter", "Closed-session records lost to a full queue.");
    let _ = writeln!(o, "opof_closed_queue_overflow_total {}", table.closed_overflow);
    family(
        &mut o,
        "opof_closed_records_redelivered_total",
        "counter",
        "Closed-session records put back after a getClosedSessions stream broke before its end (each may reach a reader twice).",
    );
    let _ = writeln!(o, "opof_closed_records_redelivered_total {}", table.closed_redelivered);
    o
}

/// The allocator's view of the process's heap, in the Prometheus text format (glibc only;
/// elsewhere empty): bytes the program holds (in use) and bytes the allocator holds free. Set
/// beside the resident size, it tells growth of the program's data from the allocator's
/// fragmentation.
pub fn heap_prometheus() -> String {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics (glibc ≥ 2.33).
        let m = unsafe { libc::mallinfo2() };
        let mut o = String::new();
        for (name, help, v) in [
            (
                "opof_process_heap_in_use_bytes",
                "Heap bytes the process holds (allocated chunks and mmapped blocks).",
                m.uordblks + m.hblkhd,
            ),
            ("opof_process_heap_free_bytes", "Heap bytes the allocator holds free (fragments).", m.fordblks),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        o
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    String::new()
}

/// Serves the Prometheus text of `render()` at `GET /metrics` (HTTP/1.1, one response per
/// connection) until the task is dropped. A client that sends nothing for 5 s, or more than
/// 8 KiB of request head, is disconnected.
pub async fn serve_http(listener: tokio::net::TcpListener, render: std::sync::Arc<dyn Fn() -> String + Send + Sync>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            // Out of file descriptors, or similar: try again shortly rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            let complete = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if complete != Ok(true) {
                return;
            }
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            let (status, kind, body) = match line.split(|&b| b == b' ').collect::<Vec<_>>()[..] {
                [b"GET", path, _] if path == b"/metrics" || path.starts_with(b"/metrics?") => {
                    ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render())
                }
                [b"GET", _, _] => ("404 Not Found", "text/plain", "only /metrics is served\n".to_string()),
                _ => ("400 Bad Request", "text/plain", "GET /metrics\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_own_slot() {
        let mut classes = vec![Class::NoSession, Class::Control(None), Class::FromVnf, Class::AtCollector];
        classes.extend(MissReason::ALL.map(Class::Miss));
        classes.extend(ActionKind::ALL.map(Class::Offloaded));
        let mut slots: Vec<usize> = classes.iter().map(|&c| class_index(c)).collect();
        slots.sort();
        assert_eq!(slots, (0..CLASSES).collect::<Vec<_>>());
    }

    #[test]
    fn batches_add_up_and_render() {
        let m = Metrics::new();
        let mut t = Tally::default();
        t.port(PortId::Ext0).rx_frames = 3;
        t.count(Class::Offloaded(ActionKind::Mirror));
        t.count(Class::Miss(MissReason::Fragment));
        t.copies = 1;
        m.add(&t);
        m.add(&t);
        let s = m.snapshot();
        assert_eq!(s.ports[0].rx_frames, 6);
        assert_eq!(s.offloaded(ActionKind::Mirror), 2);
        assert_eq!(s.misses(), 2);
        let text = prometheus(&s, &TableStats::default(), &[(PortId::Ext0, "tap:a".into())]);
        assert!(text.contains("opof_port_rx_frames_total{port=\"ext0\",spec=\"tap:a\"} 6\n"), "{text}");
        assert!(text.contains("opof_port_tx_dropped_total{port=\"vnf1\",spec=\"none\"} 0\n"), "{text}");
        assert!(text.contains("opof_datapath_miss_total{reason=\"fragment\"} 2\n"), "{text}");
        assert!(text.contains("opof_datapath_collector_copies_total 2\n"), "{text}");
        // Every sample line is `name{labels} value` or `name value` with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<u64>().unwrap();
        }
    }
}
