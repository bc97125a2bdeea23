//! Kernel ports driven by io_uring rings: the device's real datapath. Each datapath worker
//! ([`UringDatapath::open_workers`]) has a ring and a file per port of its own and its share
//! of each port's traffic by flow; what follows is one worker.
//!
//! Each port (UDP wire, TAP device, AF_PACKET socket on an interface) has a provided buffer
//! ring of its own and one multishot receive armed on it (`RecvMulti` on sockets, `ReadMulti` on
//! TAP, `RecvMsgMulti` on AF_PACKET so the VLAN tag the kernel took off is known); the kernel
//! fills buffers and posts a completion per frame without a system call per frame. One loop
//! turn reaps every completion, decides the received frames as one batch (one lock per shard
//! of the session table it touches), and queues the sends: a frame leaves from the very buffer it arrived in (no copy), a
//! collector copy as two pieces (GRE header, frame) of one message. A buffer goes back to its
//! ring when its last send completes. One `io_uring_enter` per turn submits and waits.
//!
//! Sends never wait: sockets are sent with `MSG_DONTWAIT`, and a frame the kernel has no room
//! for is dropped and counted (`tx_dropped`), as a NIC does, so an overloaded device keeps
//! receiving rather than stalling (no receive livelock behind a full queue).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use opof_traffic::offload::{self, Segments, VnetHdr, PACKET_VNET_HDR, VNET_HDR_LEN};
use opof_traffic::port::{
    join_fanout, new_ring, open_kernel_fd, open_tap_queue, open_udp_shared, KernelFd, PortError, PortSpec,
    PACKET_AUXDATA, TP_STATUS_VLAN_TPID_VALID, TP_STATUS_VLAN_VALID,
};
use tracing::{info, warn};

use super::metrics::{CopyLoss, Metrics, RxError, Tally};
use super::{gre, Batch, Class, DatapathConfig, Decision, PortId};
use crate::control::Device;

/// Receive buffers per port (a power of two).
pub const RX_BUFFERS: u16 = 1024;
/// Bytes per receive buffer of a UDP-wire or TAP port: frames up to about 4,000 bytes (an MTU
/// of 1,500 with room to spare, not jumbo frames). A longer frame is dropped and counted
/// (`rx_dropped`).
pub const RX_BUFFER_BYTES: usize = 4096;
/// Bytes per receive buffer of an AF_PACKET port: room for a host's segmentation super-frame
/// (64 KiB and its headers). Pages of a buffer are touched only as far as frames reach, so
/// ports carrying ordinary frames keep a few pages of each resident.
pub const PACKET_BUFFER_BYTES: usize = 68 * 1024;
/// Room in front of a frame in every buffer, for the `virtio_net_hdr` an AF_PACKET port sends
/// in front of each frame.
const HEADROOM: usize = 16;
/// Buffers for the packets super-frames are cut into, and their size (packets of at most
/// about 4,000 bytes, as frames of the other ports). A super-frame that finds too few free is
/// dropped and counted (`rx_dropped`).
const SEGMENTS: usize = 8192;
const SEGMENT_BYTES: usize = RX_BUFFER_BYTES;
/// The owner of a segment buffer, where a port index would name a receive buffer's port.
const POOL: usize = 0xff;
/// The `virtio_net_hdr` sent in front of each frame on an AF_PACKET port: no offload asked
/// (every frame leaves complete).
static NO_OFFLOAD: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
/// Submission queue entries of the ring.
const SQ_ENTRIES: u32 = 4096;
/// Collector copies in flight at once; beyond that a copy is dropped and counted.
const COPY_SLOTS: usize = 1024;
/// How often the kernel's receive drops are read.
const KERNEL_DROPS_EVERY: Duration = Duration::from_millis(100);
/// How long a turn waits for completions before looking at the stop flag.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// `user_data` layout: operation in bits 56..63, receiving port in 48..55, sending port in
/// 40..47, copy slot in 16..31, buffer id in 0..15.
const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;
const OP_COPY: u64 = 3;

fn user_data(op: u64, rx: usize, tx: usize, slot: usize, bid: u16) -> u64 {
    op << 56 | (rx as u64) << 48 | (tx as u64) << 40 | (slot as u64) << 16 | u64::from(bid)
}

/// A provided buffer ring: the ring of buffer descriptors the kernel takes from, and the
/// buffers themselves.
struct BufRing {
    /// Ring of `RX_BUFFERS` descriptors (mmap'd, page aligned, shared with the kernel).
    ring: *mut types::BufRingEntry,
    ring_bytes: usize,
    /// The buffers, `size` bytes each; the kernel writes each from `headroom` on.
    bufs: Box<[u8]>,
    size: usize,
    headroom: usize,
    /// Our tail (descriptors added), published to the kernel by [`BufRing::publish`].
    tail: u16,
}

impl BufRing {
    fn new(size: usize, headroom: usize) -> io::Result<Self> {
        let ring_bytes = usize::from(RX_BUFFERS) * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: anonymous private mapping; checked for failure below.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut r = BufRing {
            ring: ring.cast(),
            ring_bytes,
            bufs: vec![0u8; usize::from(RX_BUFFERS) * size].into_boxed_slice(),
            size,
            headroom,
            tail: 0,
        };
        for bid in 0..RX_BUFFERS {
            r.push(bid);
        }
        Ok(r)
    }

    /// Hands buffer `bid` back to the kernel (visible after [`BufRing::publish`]).
    fn push(&mut self, bid: u16) {
        let addr = self.bufs[usize::from(bid) * self.size + self.headroom..].as_mut_ptr() as u64;
        // SAFETY: the index is masked into the ring's `RX_BUFFERS` descriptors.
        let e = unsafe { &mut *self.ring.add(usize::from(self.tail & (RX_BUFFERS - 1))) };
        e.set_addr(addr);
        e.set_len((self.size - self.headroom) as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first descriptor of the mapping; the kernel reads
        // it with acquire ordering, so a release store publishes the descriptors written before.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn buf(&self, bid: u16) -> &[u8] {
        &self.bufs[usize::from(bid) * self.size..][..self.size]
    }

    fn buf_mut(&mut self, bid: u16) -> &mut [u8] {
        &mut self.bufs[usize::from(bid) * self.size..][..self.size]
    }
}

/// Buffers for the packets of super-frames, handed out and given back like receive buffers.
struct SegmentPool {
    bufs: Box<[u8]>,
    free: Vec<u16>,
    refs: Vec<u16>,
}

impl SegmentPool {
    fn new() -> Self {
        SegmentPool {
            bufs: vec![0u8; SEGMENTS * SEGMENT_BYTES].into_boxed_slice(),
            free: (0..SEGMENTS as u16).rev().collect(),
            refs: vec![0; SEGMENTS],
        }
    }

    fn buf(&self, bid: u16) -> &[u8] {
        &self.bufs[usize::from(bid) * SEGMENT_BYTES..][..SEGMENT_BYTES]
    }

    fn buf_mut(&mut self, bid: u16) -> &mut [u8] {
        &mut self.bufs[usize::from(bid) * SEGMENT_BYTES..][..SEGMENT_BYTES]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the ring that used it is gone (the
        // datapath drops its ring before its ports).
        unsafe { libc::munmap(self.ring.cast(), self.ring_bytes) };
    }
}

/// How a port receives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A UDP socket: `recv`, one frame per datagram.
    Udp,
    /// A TAP device: `read`.
    Tap,
    /// AF_PACKET: `recvmsg` with `PACKET_AUXDATA`, to put back a VLAN tag the kernel took off,
    /// and `PACKET_VNET_HDR`, to learn of checksums left to complete and super-frames to cut.
    Packet,
}

struct Port {
    id: PortId,
    spec: PortSpec,
    kind: Kind,
    fd: OwnedFd,
    bgid: u16,
    bufs: BufRing,
    /// Sends still using each buffer.
    refs: Vec<u16>,
    /// Is the multishot receive armed?
    armed: bool,
    /// Does this worker receive on the port (false: it only sends to it, on a copy of the
    /// file another worker receives on)?
    receive: bool,
    /// The AF_PACKET fanout group the port's sockets share among workers.
    fanout: Option<Fanout>,
    /// Does this worker log and count the link's events (the first worker does; every worker
    /// follows the link)?
    reports_links: bool,
    /// For `Kind::Packet`: the msghdr template of the multishot recvmsg (control room only).
    msghdr: Box<libc::msghdr>,
    /// The interface (AF_PACKET and TAP ports), whose link state the loop follows.
    iface: Option<String>,
    /// Its index when the socket was bound (AF_PACKET): a new index means a new interface of
    /// the same name, and the socket is opened again.
    ifindex: u32,
    /// Since when the link is down (frames for the port are then counted as drops, and no
    /// receive is armed), or gone.
    down: Option<std::time::Instant>,
    /// The link's MTU: the interface's (AF_PACKET, TAP) or `--collector-mtu` (UDP wire). A
    /// collector copy over it is sent in fragments.
    mtu: usize,
}

impl Port {
    /// The link went down: the port is marked down (one log line, one event counted).
    fn mark_down(&mut self, tally: &mut Tally) {
        self.down = Some(std::time::Instant::now());
        if !self.reports_links {
            return;
        }
        tally.port(self.id).link_down += 1;
        warn!(port = %self.id, interface = ?self.iface, "link down: frames for this port are counted as drops until it is up");
    }
}

/// Warnings of one kind at most once a second, saying how many were held back.
#[derive(Default)]
struct Limiter {
    last: std::collections::HashMap<(usize, i32), (std::time::Instant, u64)>,
}

impl Limiter {
    /// Whether to log now, and how many of the same were held back since the last line.
    fn allow(&mut self, port: usize, code: i32) -> Option<u64> {
        let now = std::time::Instant::now();
        match self.last.get_mut(&(port, code)) {
            Some((at, held)) if now.duration_since(*at) < std::time::Duration::from_secs(1) => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                *at = now;
                Some(std::mem::take(held))
            }
            None => {
                self.last.insert((port, code), (now, 0));
                Some(0)
            }
        }
    }
}

/// How often the loop looks at the links of AF_PACKET and TAP ports.
const LINK_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// How long an AF_PACKET port's interface may be gone (deleted) before the datapath gives up.
pub const PORT_LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

fn ifindex_of(name: &str) -> u32 {
    opof_traffic::port::interface_index(name).unwrap_or(0)
}

/// The options of an AF_PACKET port's socket: VLAN tags and offload metadata with each frame.
fn set_packet_options(fd: &OwnedFd, name: &str) -> Result<(), PortError> {
    for (opt, what) in [(PACKET_AUXDATA, "PACKET_AUXDATA"), (PACKET_VNET_HDR, "PACKET_VNET_HDR")] {
        let one: i32 = 1;
        // SAFETY: the option value is an int that lives across the call.
        let r = unsafe {
            libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, opt, &one as *const i32 as *const libc::c_void, 4)
        };
        if r < 0 {
            return Err(io(name, what)(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The MTU of a port's link (see [`Port::mtu`]).
fn link_mtu(spec: &PortSpec, udp_mtu: usize) -> usize {
    match spec {
        PortSpec::AfPacket(n) | PortSpec::Tap(n) => opof_traffic::port::interface_mtu(n).map_or(1500, |m| m as usize),
        _ => udp_mtu,
    }
}

/// A collector copy in flight: its packets (the whole copy, or its fragments: outer headers,
/// and the message pointing at headers and frame piece of each), how many are not yet sent,
/// and why one failed.
struct CopySlot {
    headers: [gre::Header; gre::MAX_FRAGMENTS],
    iovs: [[libc::iovec; 3]; gre::MAX_FRAGMENTS],
    msgs: [libc::msghdr; gre::MAX_FRAGMENTS],
    pending: usize,
    failed: Option<CopyLoss>,
}

/// A received frame waiting to be decided: the port it came in on, the buffer holding it
/// (`owner`: that port's receive buffers, or [`POOL`] for a packet cut from a super-frame),
/// where the frame starts and its length.
#[derive(Clone, Copy)]
struct Rx {
    port: usize,
    owner: usize,
    bid: u16,
    start: usize,
    len: usize,
}

/// What runs the ports: the device's table and configuration, or nothing at all (the bare
/// forwarder that measures the I/O path's own ceiling: ext0 ⇄ ext1, no parsing, no lookup).
pub enum Logic<'a> {
    Device {
        device: &'a Device,
        config: &'a DatapathConfig,
    },
    Bare,
    /// Any other forwarding decision, frame by frame: the port a frame leaves on, or `None` to
    /// drop it (the VNF simulator's bump in the wire runs on this).
    Custom(&'a mut (dyn FnMut(PortId, &[u8]) -> Option<PortId> + Send)),
}

/// The device's ports on one io_uring ring. Field order matters: the ring is dropped (and the
/// kernel lets go of every buffer) before the buffers.
pub struct UringDatapath {
    ring: IoUring,
    ports: Vec<Port>,
    by_id: [Option<usize>; 5],
    slots: Box<[CopySlot]>,
    free_slots: Vec<usize>,
    rx: Vec<Rx>,
    decisions: Vec<Decision>,
    scratch: Batch,
    collector: super::CollectorConfig,
    /// The collector copies' outer headers, per next hop.
    templates: gre::Templates,
    warnings: Limiter,
    lost_after: std::time::Duration,
    segments: SegmentPool,
    /// Identification of the next fragmented copy.
    fragment_id: u32,
}

// SAFETY: the raw pointers (buffer ring mapping, iovecs, msghdrs) point into memory this value
// owns; it is moved to the datapath thread as a whole and used there only.
unsafe impl Send for UringDatapath {}

/// The AF_PACKET fanout group a port's sockets share among workers, and the steering program
/// they join it with (`None`: the kernel's flow hash).
#[derive(Clone)]
struct Fanout {
    group: u16,
    program: Option<Arc<[libc::sock_filter]>>,
}

impl Fanout {
    fn join(&self, fd: &OwnedFd, name: &str) -> Result<(), PortError> {
        let what = match self.program {
            Some(_) => "joining the PACKET_FANOUT group with the steering program (`--steer kernel` does without it)",
            None => "joining the PACKET_FANOUT group",
        };
        join_fanout(fd, self.group, self.program.as_deref()).map_err(io(name, what))
    }
}

fn io<'a>(port: &'a str, what: &'static str) -> impl FnOnce(io::Error) -> PortError + 'a {
    move |source| PortError::Io { port: port.into(), what, source }
}

impl UringDatapath {
    /// Opens the ports. A UDP port must name the address it receives on (`bind=`).
    pub fn open(ports: &[(PortId, PortSpec)], collector: super::CollectorConfig) -> Result<Self, PortError> {
        let mut one = Self::open_workers(ports, collector, 1, None)?;
        Ok(one.pop().expect("one worker"))
    }

    /// Opens the ports for `workers` datapath workers, each with a ring and a file of its own
    /// per port, sharing each port's traffic by flow: AF_PACKET sockets in one fanout group
    /// (`PACKET_FANOUT_HASH`, the kernel's flow hash, the same for both directions; or by shard,
    /// below), one TAP
    /// queue per worker (`IFF_MULTI_QUEUE`), UDP sockets bound with `SO_REUSEPORT`. A TAP
    /// created without multi_queue is received by the first worker only (the others send to it
    /// on a copy of its file), with a warning.
    ///
    /// With `steer` (the device's [`super::steer::SteerKeys`], whose shards are as many as the
    /// workers), the AF_PACKET fanout groups spread flows by shard instead of by the kernel's
    /// flow hash: worker k (the k-th to join each group) receives the flows whose sessions are
    /// in shard k, so its batches take one shard's lock; a multi-queue TAP gets the same
    /// program in eBPF as its queue selection (`TUNSETSTEERINGEBPF`; where loading it is not
    /// permitted, a warning and the kernel's spread). UDP sockets are spread as above whatever
    /// `steer` says.
    pub fn open_workers(
        ports: &[(PortId, PortSpec)],
        collector: super::CollectorConfig,
        workers: usize,
        steer: Option<super::steer::SteerKeys>,
    ) -> Result<Vec<Self>, PortError> {
        let workers = workers.max(1);
        let mut seen = [false; 5];
        let program: Option<Arc<[libc::sock_filter]>> = steer.map(|k| k.fanout_program(workers as u32).into());
        // Per port, per worker: the file, whether the worker receives on it, the fanout group.
        let mut files: Vec<Vec<(KernelFd, bool, Option<Fanout>)>> = (0..workers).map(|_| Vec::new()).collect();
        for (i, (id, spec)) in ports.iter().enumerate() {
            let name = format!("{id}={spec}");
            if std::mem::replace(&mut seen[id.index()], true) {
                return Err(PortError::Config { port: name, what: "the port is given twice" });
            }
            if let PortSpec::Udp { bind: None, .. } = spec {
                return Err(PortError::Config {
                    port: name,
                    what: "a device's UDP port needs bind=ADDR:PORT to receive on",
                });
            }
            if workers == 1 {
                files[0].push((open_kernel_fd(spec, true)?, true, None));
                continue;
            }
            match spec {
                PortSpec::AfPacket(_) => {
                    // One group per device process and port (ids are per network namespace).
                    let group = (std::process::id() as u16).wrapping_mul(8).wrapping_add(i as u16);
                    let fanout = Fanout { group, program: program.clone() };
                    for f in files.iter_mut() {
                        f.push((open_kernel_fd(spec, true)?, true, Some(fanout.clone())));
                    }
                }
                PortSpec::Tap(iface) => match open_tap_queue(&name, iface, true) {
                    Ok(first) => {
                        // Queue k is worker k's (queues are numbered in the order opened): steered
                        // by shard, the kernel puts each flow on its shard's worker's queue.
                        if let Some(keys) = steer {
                            let program = keys.tap_program(workers as u32);
                            if let Err(e) = opof_traffic::port::set_tap_steering(&first, &program) {
                                warn!(port = %id, interface = %iface, error = %e, "the TAP's queues cannot be steered by shard (needs CAP_BPF or CAP_SYS_ADMIN): the kernel spreads its flows by its own hash");
                            }
                        }
                        files[0].push((KernelFd { fd: first, is_tap: true }, true, None));
                        for f in files.iter_mut().skip(1) {
                            f.push((KernelFd { fd: open_tap_queue(&name, iface, true)?, is_tap: true }, true, None));
                        }
                    }
                    Err(PortError::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                        warn!(port = %id, interface = %iface, workers, "the TAP was created without multi_queue: the first worker receives all of its frames (create it with `ip tuntap add dev {iface} mode tap multi_queue` to spread them)");
                        let KernelFd { fd, is_tap } = open_kernel_fd(spec, true)?;
                        for f in files.iter_mut().skip(1) {
                            let copy = fd.try_clone().map_err(io(&name, "duplicating the TAP file"))?;
                            f.push((KernelFd { fd: copy, is_tap }, false, None));
                        }
                        files[0].push((KernelFd { fd, is_tap }, true, None));
                    }
                    Err(e) => return Err(e),
                },
                _ => {
                    for f in files.iter_mut() {
                        f.push((open_udp_shared(spec)?, true, None));
                    }
                }
            }
        }
        files.into_iter().enumerate().map(|(w, f)| Self::with_files(ports, f, collector.clone(), w == 0)).collect()
    }

    /// One worker's datapath on files already opened, one per port.
    fn with_files(
        ports: &[(PortId, PortSpec)],
        files: Vec<(KernelFd, bool, Option<Fanout>)>,
        collector: super::CollectorConfig,
        reports_links: bool,
    ) -> Result<Self, PortError> {
        let label = ports.iter().map(|(id, s)| format!("{id}={s}")).collect::<Vec<_>>().join(" ");
        let ring = new_ring(&label, SQ_ENTRIES)?;
        let mut by_id = [None; 5];
        let mut opened = Vec::new();
        for (i, ((id, spec), (KernelFd { fd, is_tap }, receive, fanout))) in ports.iter().zip(files).enumerate() {
            let name = format!("{id}={spec}");
            let kind = match spec {
                PortSpec::Udp { .. } => Kind::Udp,
                PortSpec::AfPacket(_) => Kind::Packet,
                _ if is_tap => Kind::Tap,
                _ => Kind::Udp,
            };
            if kind == Kind::Packet {
                set_packet_options(&fd, &name)?;
                if let Some(f) = &fanout {
                    f.join(&fd, &name)?;
                }
            }
            let iface = match spec {
                PortSpec::AfPacket(n) | PortSpec::Tap(n) => Some(n.clone()),
                _ => None,
            };
            let bufs = match kind {
                Kind::Packet => BufRing::new(PACKET_BUFFER_BYTES, 0),
                _ => BufRing::new(RX_BUFFER_BYTES, HEADROOM),
            }
            .map_err(io(&name, "mapping the buffer ring"))?;
            // SAFETY: the ring memory stays mapped until the port is dropped, after the ring.
            unsafe { ring.submitter().register_buf_ring_with_flags(bufs.ring as u64, RX_BUFFERS, i as u16, 0) }
                .map_err(io(&name, "registering the buffer ring (needs Linux 5.19)"))?;
            bufs.publish();
            // SAFETY: msghdr is plain data; zeroed is valid.
            let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
            // SAFETY: CMSG_SPACE is a pure computation.
            msghdr.msg_controllen =
                unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::tpacket_auxdata>() as u32) } as _;
            by_id[id.index()] = Some(i);
            opened.push(Port {
                id: *id,
                spec: spec.clone(),
                kind,
                fd,
                bgid: i as u16,
                bufs,
                refs: vec![0; usize::from(RX_BUFFERS)],
                armed: false,
                receive,
                fanout,
                reports_links,
                msghdr,
                ifindex: iface.as_deref().map_or(0, ifindex_of),
                iface,
                down: None,
                mtu: link_mtu(spec, collector.udp_mtu),
            });
        }
        let slots = (0..COPY_SLOTS)
            .map(|_| CopySlot {
                headers: [gre::header(&collector, std::net::Ipv4Addr::UNSPECIFIED.into(), 0); gre::MAX_FRAGMENTS],
                iovs: [[libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 3]; gre::MAX_FRAGMENTS],
                // SAFETY: msghdr is plain data; zeroed is valid.
                msgs: std::array::from_fn(|_| unsafe { std::mem::zeroed() }),
                pending: 0,
                failed: None,
            })
            .collect();
        Ok(UringDatapath {
            ring,
            ports: opened,
            by_id,
            slots,
            free_slots: (0..COPY_SLOTS).rev().collect(),
            rx: Vec::new(),
            decisions: Vec::new(),
            scratch: Batch::default(),
            collector,
            templates: gre::Templates::default(),
            warnings: Limiter::default(),
            lost_after: PORT_LOST_AFTER,
            segments: SegmentPool::new(),
            fragment_id: 0,
        })
    }

    /// How long a port's interface may be gone before the datapath stops with an error.
    pub fn set_lost_after(&mut self, d: std::time::Duration) {
        self.lost_after = d;
    }

    /// Follows the links of AF_PACKET and TAP ports: a link that went down marks its port down
    /// (one log line; its frames are counted as drops); a link back up re-arms its receive,
    /// on a socket opened again if the interface is a new one of the same name. An interface
    /// gone for longer than `lost_after` ends the datapath with a clear error.
    fn check_links(&mut self, tally: &mut Tally) -> Result<(), PortError> {
        for i in 0..self.ports.len() {
            let Some(iface) = self.ports[i].iface.clone() else { continue };
            let p = &mut self.ports[i];
            let up = match (p.kind, opof_traffic::port::interface_up(&iface)) {
                // A TAP whose kernel side was moved to another network namespace is not seen
                // by name here, yet its file still carries frames: it is not down.
                (Kind::Tap, None) => Some(true),
                (_, up) => up,
            };
            match (up, p.down) {
                // The MTU matters for copies only: the collector's is followed.
                (Some(true), None) if p.id == PortId::Collector => p.mtu = link_mtu(&p.spec, self.collector.udp_mtu),
                (Some(true), None) => {}
                (Some(true), Some(since)) => {
                    let index = ifindex_of(&iface);
                    if p.kind == Kind::Packet && index != p.ifindex {
                        let name = format!("{}={}", p.id, p.spec);
                        let KernelFd { fd, .. } = open_kernel_fd(&p.spec, true)?;
                        set_packet_options(&fd, &name)?;
                        if let Some(f) = &p.fanout {
                            f.join(&fd, &name)?;
                        }
                        p.fd = fd;
                        p.ifindex = index;
                        p.armed = false;
                        info!(port = %p.id, interface = %iface, "a new interface of the same name: the port is bound to it");
                    }
                    p.down = None;
                    p.mtu = link_mtu(&p.spec, self.collector.udp_mtu);
                    if p.reports_links {
                        info!(port = %p.id, interface = %iface, after_ms = since.elapsed().as_millis() as u64, "link up: the port carries traffic again");
                    }
                }
                (Some(false) | None, None) => p.mark_down(tally),
                (None, Some(since)) if since.elapsed() > self.lost_after => {
                    return Err(PortError::Config {
                        port: format!("{}={}", p.id, p.spec),
                        what: "its interface is gone and did not come back (see --port-patience)",
                    });
                }
                (Some(false) | None, Some(_)) => {}
            }
        }
        Ok(())
    }

    /// The ports, as `(id, spec)`.
    pub fn ports(&self) -> Vec<(PortId, String)> {
        self.ports.iter().map(|p| (p.id, p.spec.to_string())).collect()
    }

    fn push(&mut self, e: squeue::Entry) -> Result<(), PortError> {
        loop {
            // SAFETY: every entry pushed points at memory this datapath owns and keeps until
            // its completion (buffers are held by `refs`, copy slots until freed).
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return Ok(());
            }
            self.ring.submit().map_err(io("io_uring", "io_uring_enter"))?;
        }
    }

    fn arm(&mut self, i: usize) -> Result<(), PortError> {
        let p = &self.ports[i];
        let fd = types::Fd(p.fd.as_raw_fd());
        let e = match p.kind {
            Kind::Udp => opcode::RecvMulti::new(fd, p.bgid).build(),
            Kind::Tap => opcode::ReadMulti::new(fd, 0, p.bgid).build(),
            Kind::Packet => opcode::RecvMsgMulti::new(fd, &*p.msghdr as *const _, p.bgid).build(),
        };
        self.push(e.user_data(user_data(OP_RECV, i, 0, 0, 0)))?;
        self.ports[i].armed = true;
        Ok(())
    }

    /// Gives a buffer back (to its port's ring, or to the segment pool) once no send uses it.
    fn release(&mut self, owner: usize, bid: u16) {
        if owner == POOL {
            let r = &mut self.segments.refs[usize::from(bid)];
            *r = r.saturating_sub(1);
            if *r == 0 {
                self.segments.free.push(bid);
            }
            return;
        }
        let p = &mut self.ports[owner];
        let r = &mut p.refs[usize::from(bid)];
        *r = r.saturating_sub(1);
        if *r == 0 {
            p.bufs.push(bid);
        }
    }

    /// One more send uses a buffer.
    fn hold(&mut self, owner: usize, bid: u16) {
        if owner == POOL {
            self.segments.refs[usize::from(bid)] += 1;
        } else {
            self.ports[owner].refs[usize::from(bid)] += 1;
        }
    }

    /// The buffer a received frame is in.
    fn buffer(&self, r: &Rx) -> &[u8] {
        buffer_of(&self.ports, &self.segments, r)
    }

    fn buffer_mut(&mut self, r: &Rx) -> &mut [u8] {
        if r.owner == POOL {
            self.segments.buf_mut(r.bid)
        } else {
            self.ports[r.owner].bufs.buf_mut(r.bid)
        }
    }

    /// Runs until `stop` is set: receive, decide, send. Counts go to `metrics` once per turn.
    pub fn run(&mut self, mut logic: Logic<'_>, metrics: &Metrics, stop: &AtomicBool) -> Result<(), PortError> {
        info!(ports = ?self.ports(), "datapath running on io_uring");
        let ts = types::Timespec::from(IDLE_WAIT);
        let args = types::SubmitArgs::new().timespec(&ts);
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(8192);
        let mut kernel_drops_read = std::time::Instant::now();
        let mut links_checked = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            for i in 0..self.ports.len() {
                if !self.ports[i].armed && self.ports[i].receive && self.ports[i].down.is_none() {
                    self.arm(i)?;
                }
            }
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) || e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(io("io_uring", "io_uring_enter")(e)),
            }
            cqes.clear();
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            let mut tally = Tally::default();
            self.rx.clear();
            for &(ud, res, flags) in &cqes {
                self.complete(ud, res, flags, &mut tally)?;
            }
            if !self.rx.is_empty() {
                self.handle_batch(&mut logic, &mut tally)?;
            }
            for p in &self.ports {
                p.bufs.publish();
            }
            if kernel_drops_read.elapsed() >= KERNEL_DROPS_EVERY {
                kernel_drops_read = std::time::Instant::now();
                self.kernel_drops(&mut tally);
            }
            if links_checked.elapsed() >= LINK_CHECK_EVERY {
                links_checked = std::time::Instant::now();
                self.check_links(&mut tally)?;
                for p in &self.ports {
                    metrics.set_down(p.id, p.down.is_some());
                }
            }
            metrics.add(&tally);
        }
        Ok(())
    }

    /// Frames the kernel dropped on receive since the last call (an AF_PACKET socket's queue
    /// was full), counted as `rx_dropped`. Read every [`KERNEL_DROPS_EVERY`]; the kernel
    /// resets the count on each read.
    fn kernel_drops(&self, tally: &mut Tally) {
        for p in self.ports.iter().filter(|p| p.kind == Kind::Packet) {
            // SAFETY: tpacket_stats is plain data; zeroed is valid.
            let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
            // SAFETY: the option value points at a tpacket_stats of the length given.
            let r = unsafe {
                libc::getsockopt(
                    p.fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_STATISTICS,
                    &mut st as *mut libc::tpacket_stats as *mut libc::c_void,
                    &mut len,
                )
            };
            if r == 0 {
                tally.port(p.id).rx_dropped += u64::from(st.tp_drops);
            }
        }
    }

    /// One completion: a received frame (queued in `self.rx`) or a finished send.
    fn complete(&mut self, ud: u64, res: i32, flags: u32, tally: &mut Tally) -> Result<(), PortError> {
        let op = ud >> 56;
        let rx_port = ((ud >> 48) & 0xff) as usize;
        let tx_port = ((ud >> 40) & 0xff) as usize;
        let bid = (ud & 0xffff) as u16;
        match op {
            OP_RECV => {
                let more = cqueue::more(flags);
                if !more {
                    self.ports[rx_port].armed = false;
                }
                let Some(bid) = cqueue::buffer_select(flags) else {
                    if res < 0 && ![libc::ENOBUFS, libc::EAGAIN, libc::EINTR].contains(&-res) {
                        let p = &mut self.ports[rx_port];
                        let Some(kind) = RxError::of(-res) else {
                            return Err(PortError::Io {
                                port: format!("{}={}", p.id, p.spec),
                                what: "receiving",
                                source: io::Error::from_raw_os_error(-res),
                            });
                        };
                        // An ICMP error about the peer (UDP wire), or the link going down: counted,
                        // and the port goes on (a link that is down is followed by `check_links`).
                        tally.port(p.id).rx_error(kind);
                        if kind == RxError::NetworkDown && p.iface.is_some() && p.down.is_none() {
                            p.mark_down(tally);
                        } else if let Some(held) = self.warnings.allow(rx_port, -res) {
                            let p = &self.ports[rx_port];
                            warn!(port = %p.id, error = %io::Error::from_raw_os_error(-res), held_back = held, "receive error; the port goes on");
                        }
                        return Ok(());
                    }
                    if res == 0 {
                        // An empty datagram (UDP wire) takes no buffer and ends the multishot
                        // receive: an empty frame, dropped and counted.
                        tally.port(self.ports[rx_port].id).rx_dropped += 1;
                    }
                    // Out of buffers (the ring is refilled this turn) or a transient error:
                    // re-armed at the next turn.
                    return Ok(());
                };
                let p = &mut self.ports[rx_port];
                let len = res.max(0) as usize;
                let size = p.bufs.size;
                let (start, len, meta) = match p.kind {
                    Kind::Packet => match read_packet(p.bufs.buf_mut(bid), len, &p.msghdr) {
                        Some(r) => r,
                        None => (0, size, VnetHdr::default()),
                    },
                    _ => (HEADROOM, len, VnetHdr::default()),
                };
                let id = p.id;
                if len >= size - start || len == 0 {
                    // Cut short by the buffer's size (or empty): dropped and counted.
                    tally.port(id).rx_dropped += 1;
                    p.bufs.push(bid);
                    return Ok(());
                }
                if meta.is_gso() {
                    self.cut(rx_port, bid, start, len, &meta, tally);
                    self.ports[rx_port].bufs.push(bid);
                    return Ok(());
                }
                if meta.needs_csum() {
                    let frame = &mut p.bufs.buf_mut(bid)[start..start + len];
                    let (at, off) = (usize::from(meta.csum_start), usize::from(meta.csum_offset));
                    if let Err(e) = offload::complete_checksum(frame, at, off) {
                        tally.port(id).rx_dropped += 1;
                        p.bufs.push(bid);
                        self.warn_offload(rx_port, e);
                        return Ok(());
                    }
                    tally.port(id).rx_checksums_completed += 1;
                }
                let t = tally.port(id);
                t.rx_frames += 1;
                t.rx_bytes += len as u64;
                self.rx.push(Rx { port: rx_port, owner: rx_port, bid, start, len });
            }
            OP_SEND | OP_COPY => {
                let out = self.ports[tx_port].id;
                // A copy counts as sent once the kernel took all its packets; one refused is
                // counted by why.
                if op == OP_COPY {
                    let slot = &mut self.slots[((ud >> 16) & 0xffff) as usize];
                    if res < 0 {
                        slot.failed.get_or_insert(CopyLoss::of(-res));
                    }
                    slot.pending -= 1;
                    if slot.pending == 0 {
                        match slot.failed.take() {
                            None => tally.copies += 1,
                            Some(why) => tally.copies_lost[why as usize] += 1,
                        }
                        self.free_slots.push(((ud >> 16) & 0xffff) as usize);
                    }
                }
                let extra = if self.ports[tx_port].kind == Kind::Packet { VNET_HDR_LEN as u64 } else { 0 };
                let t = tally.port(out);
                if res >= 0 {
                    t.tx_frames += 1;
                    t.tx_bytes += (res as u64).saturating_sub(extra);
                } else if [libc::ENOBUFS, libc::EAGAIN, libc::ECONNREFUSED, libc::ENETDOWN, libc::ENXIO, libc::EIO]
                    .contains(&-res)
                    || (op == OP_COPY && res == -libc::EMSGSIZE)
                {
                    // No room in the socket or device queue, nobody on the UDP wire, the
                    // interface down: the frame is lost, as on a wire, and counted.
                    t.tx_dropped += 1;
                } else {
                    t.tx_dropped += 1;
                    if let Some(held) = self.warnings.allow(tx_port, -res) {
                        warn!(port = %out, error = %io::Error::from_raw_os_error(-res), held_back = held, "send failed");
                    }
                }
                self.release(rx_port, bid);
            }
            _ => {}
        }
        Ok(())
    }

    /// Decides every frame of `self.rx` (one lock per shard the batch touches) and queues the sends.
    fn handle_batch(&mut self, logic: &mut Logic<'_>, tally: &mut Tally) -> Result<(), PortError> {
        self.decisions.clear();
        match logic {
            Logic::Device { device, config } => {
                let (ports, segments) = (&self.ports, &self.segments);
                let (rx, decisions, scratch) = (&self.rx, &mut self.decisions, &mut self.scratch);
                let frames =
                    rx.iter().map(|r| (ports[r.port].id, &buffer_of(ports, segments, r)[r.start..r.start + r.len]));
                device.decide_batch(config, frames, scratch, decisions);
                tally.batches_across_shards += scratch.take_across_shards();
            }
            Logic::Custom(f) => {
                for r in &self.rx {
                    let out = f(self.ports[r.port].id, &self.buffer(r)[r.start..r.start + r.len]);
                    self.decisions.push(Decision { out, copy: None, class: Class::FromVnf });
                }
            }
            Logic::Bare => {
                for r in &self.rx {
                    let out = match self.ports[r.port].id {
                        PortId::Ext0 => Some(PortId::Ext1),
                        PortId::Ext1 => Some(PortId::Ext0),
                        _ => None,
                    };
                    self.decisions.push(Decision { out, copy: None, class: Class::FromVnf });
                }
            }
        }
        for k in 0..self.rx.len() {
            let r = self.rx[k];
            let d = self.decisions[k];
            if matches!(logic, Logic::Device { .. }) {
                tally.count(d.class);
            }
            // Hold the buffer while we queue its sends.
            self.hold(r.owner, r.bid);
            if let Some(out) = d.out {
                self.send(r, out, tally)?;
            }
            if let Some(c) = d.copy {
                self.send_copy(r, c, tally)?;
            }
            self.release(r.owner, r.bid);
        }
        Ok(())
    }

    fn send(&mut self, r: Rx, out: PortId, tally: &mut Tally) -> Result<(), PortError> {
        let Some(o) = self.by_id[out.index()].filter(|&o| self.ports[o].down.is_none()) else {
            tally.port(out).tx_dropped += 1;
            return Ok(());
        };
        let kind = self.ports[o].kind;
        let fd = types::Fd(self.ports[o].fd.as_raw_fd());
        let buf = self.buffer_mut(&r);
        let e = match kind {
            Kind::Tap => opcode::Write::new(fd, buf[r.start..].as_ptr(), r.len as u32).build(),
            Kind::Udp => opcode::Send::new(fd, buf[r.start..].as_ptr(), r.len as u32).flags(libc::MSG_DONTWAIT).build(),
            Kind::Packet => {
                // The frame leaves complete: "no offload" in front of it, in the room every
                // buffer keeps there.
                let from = r.start - VNET_HDR_LEN;
                buf[from..r.start].copy_from_slice(&NO_OFFLOAD);
                opcode::Send::new(fd, buf[from..].as_ptr(), (r.len + VNET_HDR_LEN) as u32)
                    .flags(libc::MSG_DONTWAIT)
                    .build()
            }
        };
        self.hold(r.owner, r.bid);
        self.push(e.user_data(user_data(OP_SEND, r.owner, o, 0, r.bid)))
    }

    fn send_copy(&mut self, r: Rx, c: super::CopyOrder, tally: &mut Tally) -> Result<(), PortError> {
        let collector = self.by_id[PortId::Collector.index()].filter(|&o| self.ports[o].down.is_none());
        let Some(o) = collector else {
            tally.port(PortId::Collector).tx_dropped += 1;
            tally.copies_lost[CopyLoss::NoCollector as usize] += 1;
            return Ok(());
        };
        let Some(&slot) = self.free_slots.last() else {
            tally.port(PortId::Collector).tx_dropped += 1;
            tally.copies_lost[CopyLoss::QueueFull as usize] += 1;
            return Ok(());
        };
        let (kind, mtu) = (self.ports[o].kind, self.ports[o].mtu);
        let id = self.fragment_id;
        let to = self.templates.get(&self.collector, c.next_hop);
        let Some(n) = gre::fragments(to, c.len, mtu, id, &mut self.slots[slot].headers) else {
            tally.port(PortId::Collector).tx_dropped += 1;
            tally.copies_lost[CopyLoss::TooBig as usize] += 1;
            return Ok(());
        };
        self.free_slots.pop();
        if n > 1 {
            self.fragment_id = id.wrapping_add(1);
            tally.copies_fragmented += 1;
        }
        let frame = self.buffer(&r)[r.start..].as_ptr();
        let fd = types::Fd(self.ports[o].fd.as_raw_fd());
        let s = &mut self.slots[slot];
        s.pending = n;
        s.failed = None;
        for k in 0..n {
            let h = &s.headers[k];
            let iov = &mut s.iovs[k];
            // An AF_PACKET port takes "no offload" in front of each packet.
            let mut count = 0;
            if kind == Kind::Packet {
                iov[0] = libc::iovec { iov_base: NO_OFFLOAD.as_ptr() as *mut _, iov_len: VNET_HDR_LEN };
                count = 1;
            }
            // SAFETY: the piece lies inside the frame (`fragments` splits `c.len` bytes, and
            // `c.len` is at most the frame's length).
            let piece = unsafe { frame.add(h.inner_from) };
            iov[count] = libc::iovec { iov_base: h.as_bytes().as_ptr() as *mut _, iov_len: h.as_bytes().len() };
            iov[count + 1] = libc::iovec { iov_base: piece as *mut _, iov_len: h.inner_len };
            s.msgs[k].msg_iov = iov.as_mut_ptr();
            s.msgs[k].msg_iovlen = count + 2;
        }
        for k in 0..n {
            let s = &self.slots[slot];
            let e = if kind == Kind::Tap {
                opcode::Writev::new(fd, s.iovs[k].as_ptr(), s.msgs[k].msg_iovlen as u32).build()
            } else {
                opcode::SendMsg::new(fd, &s.msgs[k] as *const _).flags(libc::MSG_DONTWAIT as u32).build()
            };
            self.hold(r.owner, r.bid);
            self.push(e.user_data(user_data(OP_COPY, r.owner, o, slot, r.bid)))?;
        }
        Ok(())
    }

    /// Cuts a super-frame into the packets the wire carries (segment buffers), each decided and
    /// counted as a frame of its own.
    fn cut(&mut self, port: usize, bid: u16, start: usize, len: usize, meta: &VnetHdr, tally: &mut Tally) {
        let frame = &self.ports[port].bufs.buf(bid)[start..start + len];
        let id = self.ports[port].id;
        let segs = match Segments::new(frame, meta) {
            Ok(s) if s.max_len() + HEADROOM > SEGMENT_BYTES => Err(offload::OffloadError::SegmentTooLong),
            other => other,
        };
        let segs = match segs {
            Ok(s) if s.count() <= self.segments.free.len() => s,
            Ok(_) => {
                // Every segment buffer is in flight: the super-frame is lost, as a NIC drops
                // what arrives while its queues are full.
                tally.port(id).rx_dropped += 1;
                return;
            }
            Err(e) => {
                tally.port(id).rx_dropped += 1;
                self.warn_offload(port, e);
                return;
            }
        };
        for i in 0..segs.count() {
            let b = self.segments.free.pop().expect("counted above");
            let out = &mut self.segments.buf_mut(b)[HEADROOM..];
            let n = segs.write(frame, i, out).expect("sized above");
            self.rx.push(Rx { port, owner: POOL, bid: b, start: HEADROOM, len: n });
        }
        let t = tally.port(id);
        t.rx_superframes += 1;
        t.rx_frames += segs.count() as u64;
        t.rx_bytes += segs.wire_bytes() as u64;
    }

    fn warn_offload(&mut self, port: usize, e: offload::OffloadError) {
        if let Some(held) = self.warnings.allow(port, -1) {
            warn!(port = %self.ports[port].id, error = %e, held_back = held, "a frame's offload metadata could not be acted on; dropped");
        }
    }
}

/// The buffer a received frame is in: its port's receive buffer, or a segment buffer.
fn buffer_of<'a>(ports: &'a [Port], segments: &'a SegmentPool, r: &Rx) -> &'a [u8] {
    if r.owner == POOL {
        segments.buf(r.bid)
    } else {
        ports[r.owner].bufs.buf(r.bid)
    }
}

/// An AF_PACKET frame received by multishot recvmsg: the buffer holds a header, the control
/// data, the offload metadata (`virtio_net_hdr`), then the frame. When the kernel took a VLAN
/// tag off (receive VLAN offload, as on a veth), it is put back in front of the frame's
/// ethertype, using the room in front of the frame (the metadata's offsets move with it).
/// Returns where the frame starts in the buffer, its length and its metadata; `None` when the
/// buffer cannot be read (a frame longer than the buffer).
fn read_packet(buf: &mut [u8], res: usize, msghdr: &libc::msghdr) -> Option<(usize, usize, VnetHdr)> {
    let res = res.min(buf.len());
    let out = types::RecvMsgOut::parse(&buf[..res], msghdr).ok()?;
    if out.is_payload_truncated() {
        return None;
    }
    let mut meta = VnetHdr::parse(out.payload_data())?;
    let payload_len = out.payload_data().len() - VNET_HDR_LEN;
    let control = out.control_data();
    let mut tag = None;
    if control.len() >= std::mem::size_of::<libc::cmsghdr>() {
        // SAFETY: cmsghdr is plain data; read unaligned from bytes the kernel wrote.
        let c: libc::cmsghdr = unsafe { std::ptr::read_unaligned(control.as_ptr().cast()) };
        let data_at = std::mem::size_of::<libc::cmsghdr>();
        if c.cmsg_level == libc::SOL_PACKET
            && c.cmsg_type == PACKET_AUXDATA
            && control.len() >= data_at + std::mem::size_of::<libc::tpacket_auxdata>()
        {
            // SAFETY: as above, for the auxdata that follows the cmsghdr.
            let aux: libc::tpacket_auxdata = unsafe { std::ptr::read_unaligned(control[data_at..].as_ptr().cast()) };
            if aux.tp_status & TP_STATUS_VLAN_VALID != 0 {
                let tpid = if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 { aux.tp_vlan_tpid } else { 0x8100 };
                tag = Some((tpid, aux.tp_vlan_tci));
            }
        }
    }
    let start = res - payload_len;
    match tag {
        Some((tpid, tci)) if start >= 4 + VNET_HDR_LEN && payload_len >= 12 => {
            // Move the MAC addresses 4 bytes earlier and write the tag between them and the
            // ethertype.
            buf.copy_within(start..start + 12, start - 4);
            buf[start + 8..start + 10].copy_from_slice(&tpid.to_be_bytes());
            buf[start + 10..start + 12].copy_from_slice(&tci.to_be_bytes());
            if meta.needs_csum() || meta.is_gso() {
                meta.csum_start = meta.csum_start.saturating_add(4);
            }
            Some((start - 4, payload_len + 4, meta))
        }
        _ => Some((start, payload_len, meta)),
    }
}
