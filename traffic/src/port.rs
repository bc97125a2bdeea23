//! Ports the replayer sends frames out of. Every backend that does I/O does it through
//! io_uring, a batch of frames per submission (one `io_uring_enter` per batch, not a system
//! call per frame):
//!
//! | spec | backend | needs |
//! |---|---|---|
//! | `mem` | in-memory wire (frames kept in order, for in-process use and tests) | nothing |
//! | `udp:PEER[,bind=ADDR]` | UDP wire: one Ethernet frame per datagram | nothing |
//! | `tap:NAME` | a TAP device (created if missing, IFF_TAP, no packet info) | root / CAP_NET_ADMIN |
//! | `afpacket:IF` | AF_PACKET raw socket bound to an interface (e.g. a veth) | root / CAP_NET_RAW |
//!
//! Where io_uring is refused (a container's seccomp profile), opening the port fails with one
//! line naming the cause and the remedy.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use io_uring::{opcode, types, IoUring};

/// Where frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    Mem,
    Udp { peer: SocketAddr, bind: Option<SocketAddr> },
    Tap(String),
    AfPacket(String),
}

impl std::str::FromStr for PortSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "a port is mem, udp:PEER[,bind=ADDR], tap:NAME or afpacket:IF";
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "mem" if rest.is_empty() => Ok(PortSpec::Mem),
            "udp" => {
                let mut parts = rest.split(',');
                let peer = parts.next().unwrap_or_default();
                let peer = peer.parse().map_err(|_| format!("{s:?}: {peer:?} is not an address:port ({usage})"))?;
                let mut bind = None;
                for p in parts {
                    match p.strip_prefix("bind=").map(str::parse) {
                        Some(Ok(a)) => bind = Some(a),
                        _ => return Err(format!("{s:?}: {p:?} is not bind=ADDR:PORT ({usage})")),
                    }
                }
                Ok(PortSpec::Udp { peer, bind })
            }
            "tap" | "afpacket" if !rest.is_empty() && rest.len() < libc::IFNAMSIZ && !rest.contains('/') => {
                Ok(if kind == "tap" { PortSpec::Tap(rest.into()) } else { PortSpec::AfPacket(rest.into()) })
            }
            _ => Err(format!("{s:?}: {usage} (interface names are 1 to 15 characters)")),
        }
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortSpec::Mem => f.write_str("mem"),
            PortSpec::Udp { peer, bind: None } => write!(f, "udp:{peer}"),
            PortSpec::Udp { peer, bind: Some(b) } => write!(f, "udp:{peer},bind={b}"),
            PortSpec::Tap(n) => write!(f, "tap:{n}"),
            PortSpec::AfPacket(n) => write!(f, "afpacket:{n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{port}: {what}")]
    Config { port: String, what: &'static str },
    #[error("{port}: {what}: {source}")]
    Io { port: String, what: &'static str, source: io::Error },
    #[error(
        "{port}: io_uring is refused here ({source}); in a container, run it with \
         --security-opt seccomp=unconfined (or a seccomp profile that allows io_uring_setup, \
         io_uring_enter and io_uring_register)"
    )]
    UringRefused { port: String, source: io::Error },
}

/// What a batch did: frames sent, and frames the kernel refused for lack of room (counted
/// drops, as a NIC's tx drops).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub frames: u64,
    pub bytes: u64,
    pub dropped: u64,
}

/// Somewhere frames can be sent.
pub trait FrameSink {
    fn name(&self) -> String;
    fn send_batch(&mut self, frames: &[&[u8]]) -> Result<Sent, PortError>;
}

/// The in-memory wire: what is sent is kept, in order, for whoever holds the other end.
#[derive(Clone, Default)]
pub struct MemWire(Arc<Mutex<VecDeque<Vec<u8>>>>);

impl MemWire {
    pub fn new() -> Self {
        Self::default()
    }
    /// Takes everything sent so far.
    pub fn drain(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect()
    }
}

impl FrameSink for MemWire {
    fn name(&self) -> String {
        "mem".into()
    }
    fn send_batch(&mut self, frames: &[&[u8]]) -> Result<Sent, PortError> {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = frames.iter().map(|f| f.len() as u64).sum();
        q.extend(frames.iter().map(|f| f.to_vec()));
        Ok(Sent { frames: frames.len() as u64, bytes, dropped: 0 })
    }
}

/// Entries of the ring: the most frames one submission carries.
pub const RING_ENTRIES: u32 = 256;

/// A kernel port (UDP socket, TAP device, AF_PACKET socket) driven through io_uring.
pub struct UringPort {
    name: String,
    fd: OwnedFd,
    ring: IoUring,
    /// TAP is a character device (write); sockets take send.
    is_tap: bool,
}

fn last_os_error(port: &str, what: &'static str) -> PortError {
    PortError::Io { port: port.into(), what, source: io::Error::last_os_error() }
}

/// The index of interface `name` in this network namespace; `None` when there is none.
pub fn interface_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    Some(unsafe { libc::if_nametoindex(c.as_ptr()) }).filter(|i| *i != 0)
}

fn ifindex(port: &str, name: &str) -> Result<u32, PortError> {
    let c = CString::new(name).map_err(|_| PortError::Io {
        port: port.into(),
        what: "interface name",
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(last_os_error(port, "no such interface")),
        i => Ok(i),
    }
}

fn open_tap(port: &str, name: &str) -> Result<OwnedFd, PortError> {
    open_tap_queue(port, name, false)
}

/// `IFF_MULTI_QUEUE`: a TAP file is one of the device's queues; the kernel spreads the frames
/// the host sends by flow over the queues (one flow, one queue).
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

/// Opens a TAP device, as one queue of several with `multi_queue` (a device created without
/// multi_queue refuses that with `EINVAL`).
pub fn open_tap_queue(port: &str, name: &str, multi_queue: bool) -> Result<OwnedFd, PortError> {
    let path = CString::new("/dev/net/tun").expect("no NUL");
    // SAFETY: plain open(2) of a path we own.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_os_error(port, "opening /dev/net/tun"));
    }
    // SAFETY: fd was just returned by open and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short | if multi_queue { IFF_MULTI_QUEUE } else { 0 };
    // SAFETY: TUNSETIFF takes a pointer to an ifreq that lives across the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut ifr) } < 0 {
        return Err(last_os_error(port, "TUNSETIFF (needs CAP_NET_ADMIN)"));
    }
    Ok(fd)
}

fn open_af_packet(port: &str, name: &str) -> Result<OwnedFd, PortError> {
    let index = ifindex(port, name)?;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
    if fd < 0 {
        return Err(last_os_error(port, "AF_PACKET socket (needs CAP_NET_RAW)"));
    }
    // SAFETY: fd was just returned by socket and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zeroed is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: the address points to a sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(last_os_error(port, "binding the AF_PACKET socket"));
    }
    Ok(fd)
}

/// A kernel port's file descriptor, opened for sending and receiving.
pub struct KernelFd {
    pub fd: OwnedFd,
    /// TAP is a character device (read/write); the others are sockets (recv/send).
    pub is_tap: bool,
}

/// Bytes asked for a port socket's send and receive buffers unless
/// [`set_socket_buffer`] says otherwise (root may exceed the sysctl limits).
pub const DEFAULT_SOCKET_BUFFER: u32 = 4 << 20;

/// The least and most [`set_socket_buffer`] takes: 64 KiB, 1 GiB (the kernel keeps twice what
/// is asked, in an int).
pub const SOCKET_BUFFER_RANGE: std::ops::RangeInclusive<u32> = (64 << 10)..=(1 << 30);

static SOCKET_BUFFER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(DEFAULT_SOCKET_BUFFER);

/// Sets the bytes asked for the send and receive buffers of every AF_PACKET and UDP port
/// socket this process opens from now on (a process-wide setting, as the kernel's own
/// `net.core.rmem_default` is; the kernel counts twice as much, for its bookkeeping). A deeper
/// receive buffer absorbs a longer burst before frames are dropped, as a NIC's longer rings
/// do; it costs memory only while frames wait. Root gets what it asks; others are capped by
/// `net.core.rmem_max` and `wmem_max`. Refused outside [`SOCKET_BUFFER_RANGE`].
pub fn set_socket_buffer(bytes: u32) -> Result<(), String> {
    if !SOCKET_BUFFER_RANGE.contains(&bytes) {
        return Err(format!(
            "a socket buffer of {bytes} bytes: it must be {} to {} bytes",
            SOCKET_BUFFER_RANGE.start(),
            SOCKET_BUFFER_RANGE.end()
        ));
    }
    SOCKET_BUFFER.store(bytes, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

fn set_int_opt(fd: &OwnedFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the option value is an int that lives across the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Large socket buffers so bursts are absorbed: the forced variants when privileged, the
/// plain ones (capped by the sysctl limits) otherwise.
fn grow_buffers(fd: &OwnedFd) {
    // In the range set_socket_buffer allows, so within an int.
    let bytes = SOCKET_BUFFER.load(std::sync::atomic::Ordering::Relaxed) as i32;
    for (force, plain) in [(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF), (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)] {
        if set_int_opt(fd, libc::SOL_SOCKET, force, bytes).is_err() {
            let _ = set_int_opt(fd, libc::SOL_SOCKET, plain, bytes);
        }
    }
}

/// `PACKET_IGNORE_OUTGOING` (Linux 4.20): an AF_PACKET socket does not see the frames its
/// interface sends.
const PACKET_IGNORE_OUTGOING: i32 = 23;

/// How long opening a port waits for an address or TAP device another process still holds.
const HELD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs `open` until it succeeds, fails otherwise than `held` says, or [`HELD_PATIENCE`] has
/// passed. A process that ran ports on io_uring and was killed releases its sockets and TAP
/// devices only when the kernel has torn its ring down, a moment after the process is gone:
/// a device restarted at once (by a supervisor, or an operator's script) would otherwise fail
/// with "Address already in use" for a port nobody uses any more.
fn while_held<T, E>(mut open: impl FnMut() -> Result<T, E>, held: impl Fn(&E) -> bool) -> Result<T, E> {
    let deadline = std::time::Instant::now() + HELD_PATIENCE;
    loop {
        match open() {
            Err(e) if held(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

/// Opens the file descriptor of a kernel port (not the in-memory wire). A UDP port is bound
/// to its `bind` address (loopback, any port, when none is given) and connected to its peer.
/// With `receive`, an AF_PACKET socket is set not to see its interface's outgoing frames.
pub fn open_kernel_fd(spec: &PortSpec, receive: bool) -> Result<KernelFd, PortError> {
    let name = spec.to_string();
    let io_err = |what| move |source| PortError::Io { port: spec.to_string(), what, source };
    Ok(match spec {
        PortSpec::Mem => {
            return Err(PortError::Config {
                port: name,
                what: "mem is the in-memory wire inside one process (opof simulate and the embedded certify target use it); a port of a running device or VNF is udp:PEER,bind=ADDR, tap:NAME or afpacket:IF",
            })
        }
        PortSpec::Udp { peer, bind } => {
            let local = bind.unwrap_or_else(|| {
                if peer.is_ipv4() {
                    SocketAddr::from(([127, 0, 0, 1], 0))
                } else {
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
                }
            });
            let s = while_held(|| UdpSocket::bind(local), |e| e.kind() == io::ErrorKind::AddrInUse)
                .map_err(io_err("binding the UDP socket"))?;
            s.connect(peer).map_err(io_err("connecting the UDP socket"))?;
            let fd = OwnedFd::from(s);
            grow_buffers(&fd);
            KernelFd { fd, is_tap: false }
        }
        PortSpec::Tap(n) => KernelFd {
            fd: while_held(
                || open_tap(&name, n),
                |e| matches!(e, PortError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY)),
            )?,
            is_tap: true,
        },
        PortSpec::AfPacket(n) => {
            let fd = open_af_packet(&name, n)?;
            grow_buffers(&fd);
            if receive {
                set_int_opt(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                    .map_err(io_err("PACKET_IGNORE_OUTGOING (needs Linux 4.20)"))?;
            }
            KernelFd { fd, is_tap: false }
        }
    })
}

/// `PACKET_FANOUT` and its modes: the sockets of one group on an interface share its frames,
/// each flow to one socket; by the kernel's flow hash (the same for both directions), or by
/// what a classic BPF program returns (set with `PACKET_FANOUT_DATA`).
const PACKET_FANOUT: i32 = 18;
const PACKET_FANOUT_HASH: i32 = 0;
const PACKET_FANOUT_CBPF: i32 = 6;
const PACKET_FANOUT_DATA: i32 = 22;

/// Joins an AF_PACKET socket (bound to its interface) to fanout group `group`: spread by the
/// kernel's flow hash, or, given a classic BPF `program`, to the group's socket whose index
/// (order of joining, from 0) the program returns for the frame (modulo the group's size).
/// Every socket of a group must join it the same way.
pub fn join_fanout(fd: &OwnedFd, group: u16, program: Option<&[libc::sock_filter]>) -> io::Result<()> {
    let mode = if program.is_some() { PACKET_FANOUT_CBPF } else { PACKET_FANOUT_HASH };
    set_int_opt(fd, libc::SOL_PACKET, PACKET_FANOUT, i32::from(group) | mode << 16)?;
    match program {
        Some(p) => set_program(fd, libc::SOL_PACKET, PACKET_FANOUT_DATA, p),
        None => Ok(()),
    }
}

/// Gives the `SO_REUSEPORT` group a bound socket belongs to a classic BPF program that returns
/// the index (order of binding, from 0) of the socket to receive each datagram; the program
/// sees the datagram's payload from offset 0 and its IP header at the network offset.
pub fn attach_reuseport_program(fd: &impl AsRawFd, program: &[libc::sock_filter]) -> io::Result<()> {
    set_program(fd, libc::SOL_SOCKET, libc::SO_ATTACH_REUSEPORT_CBPF, program)
}

/// `TUNSETSTEERINGEBPF` (linux/if_tun.h): `_IOR('T', 224, int)`.
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

/// Loads an eBPF socket-filter program (`insns`: linux/bpf.h `struct bpf_insn`s, each as the
/// little-endian word the kernel reads) and makes it the queue selection of the multi-queue TAP
/// `tap` is a queue of: the kernel puts each frame the host sends into the TAP on queue
/// `program(frame) mod queues` (queues numbered in the order they were opened). Needs
/// CAP_BPF or CAP_SYS_ADMIN; the error of a refused program carries the verifier's log.
#[cfg(target_endian = "little")]
pub fn set_tap_steering(tap: &OwnedFd, insns: &[u64]) -> io::Result<()> {
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
    }
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
    let license = b"GPL\0";
    let mut log = vec![0u8; 1 << 16];
    let load = |log_level: u32, log: &mut [u8]| {
        let attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level,
            log_size: if log_level > 0 { log.len() as u32 } else { 0 },
            log_buf: if log_level > 0 { log.as_mut_ptr() as u64 } else { 0 },
        };
        // SAFETY: bpf(2) reads the attribute and the buffers it points to (which live across
        // the call) and writes only into the log buffer, of the size given.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoad,
                std::mem::size_of::<ProgLoad>() as u32,
            )
        }
    };
    let mut fd = load(0, &mut log);
    if fd < 0 {
        let first = io::Error::last_os_error();
        // Again with the verifier's log, to say why.
        fd = load(1, &mut log);
        if fd < 0 {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let why = String::from_utf8_lossy(&log[..end]).trim().to_string();
            let why = if why.is_empty() { String::new() } else { format!("; the verifier says: {why}") };
            return Err(io::Error::new(first.kind(), format!("loading the eBPF program: {first}{why}")));
        }
    }
    // SAFETY: fd was just returned by bpf(2) and is owned here.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let raw = prog.as_raw_fd();
    // SAFETY: TUNSETSTEERINGEBPF reads an int (the program's descriptor) that lives across
    // the call; the TAP keeps its own reference to the program.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETSTEERINGEBPF as _, &raw as *const i32) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// [`set_tap_steering`] where the instructions' encoding here does not fit the machine.
#[cfg(not(target_endian = "little"))]
pub fn set_tap_steering(_tap: &OwnedFd, _insns: &[u64]) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// A socket option whose value is a classic BPF program (the kernel checks it and copies it).
fn set_program(fd: &impl AsRawFd, level: i32, name: i32, program: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let prog = libc::sock_fprog { len, filter: program.as_ptr() as *mut libc::sock_filter };
    // SAFETY: the program and its header live across the call; the kernel only reads them.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &prog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A UDP socket bound to `local` with `SO_REUSEPORT` (several workers bind the same port) and
/// connected to `peer`. The kernel hands a connected socket the datagrams of its peer's
/// address, so one peer's frames reach one worker, in order.
pub fn open_udp_shared(spec: &PortSpec) -> Result<KernelFd, PortError> {
    let PortSpec::Udp { peer, bind: Some(local) } = spec else {
        return Err(PortError::Config { port: spec.to_string(), what: "a shared UDP port needs bind=ADDR:PORT" });
    };
    let io_err = |what| move |source| PortError::Io { port: spec.to_string(), what, source };
    let family = if local.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_os_error(&spec.to_string(), "UDP socket"));
    }
    // SAFETY: fd was just returned by socket and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(io_err("SO_REUSEPORT"))?;
    let r = match local {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in is plain data; zeroed is valid.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: the address points to a sockaddr_in of the size given.
            unsafe {
                libc::bind(fd.as_raw_fd(), &sa as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sa) as u32)
            }
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_in6 is plain data; zeroed is valid.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr.s6_addr = a.ip().octets();
            sa.sin6_scope_id = a.scope_id();
            // SAFETY: the address points to a sockaddr_in6 of the size given.
            unsafe {
                libc::bind(fd.as_raw_fd(), &sa as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sa) as u32)
            }
        }
    };
    if r < 0 {
        return Err(last_os_error(&spec.to_string(), "binding the UDP socket (SO_REUSEPORT)"));
    }
    let s = UdpSocket::from(fd);
    s.connect(peer).map_err(io_err("connecting the UDP socket"))?;
    let fd = OwnedFd::from(s);
    grow_buffers(&fd);
    Ok(KernelFd { fd, is_tap: false })
}

/// Makes an io_uring of `entries`, or the error that names the cause when io_uring is refused.
pub fn new_ring(port: &str, entries: u32) -> Result<IoUring, PortError> {
    IoUring::new(entries).map_err(|source| PortError::UringRefused { port: port.into(), source })
}

impl UringPort {
    pub fn open(spec: &PortSpec) -> Result<Self, PortError> {
        let name = spec.to_string();
        let KernelFd { fd, is_tap } = open_kernel_fd(spec, false)?;
        // A TAP device this port made is down, and writes to a down TAP fail with EIO: bring it
        // up, as a sender expects of an interface it sends out of.
        if let PortSpec::Tap(iface) = spec {
            set_up(iface).map_err(|source| PortError::Io {
                port: name.clone(),
                what: "bringing the TAP device up",
                source,
            })?;
        }
        let ring = new_ring(&name, RING_ENTRIES)?;
        Ok(UringPort { name, fd, ring, is_tap })
    }
}

impl FrameSink for UringPort {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn send_batch(&mut self, frames: &[&[u8]]) -> Result<Sent, PortError> {
        let mut total = Sent::default();
        for chunk in frames.chunks(RING_ENTRIES as usize) {
            {
                let mut sq = self.ring.submission();
                for (i, f) in chunk.iter().enumerate() {
                    let fd = types::Fd(self.fd.as_raw_fd());
                    let len = f.len() as u32;
                    let e = if self.is_tap {
                        opcode::Write::new(fd, f.as_ptr(), len).build()
                    } else {
                        opcode::Send::new(fd, f.as_ptr(), len).build()
                    };
                    // SAFETY: the frame buffers outlive the submission: we wait for every
                    // completion of this chunk below before returning.
                    unsafe { sq.push(&e.user_data(i as u64)) }.expect("the ring has room for a chunk");
                }
            }
            self.ring.submit_and_wait(chunk.len()).map_err(|source| PortError::Io {
                port: self.name.clone(),
                what: "io_uring_enter",
                source,
            })?;
            let mut done = 0;
            while done < chunk.len() {
                let cqes: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
                if cqes.is_empty() {
                    self.ring.submit_and_wait(1).map_err(|source| PortError::Io {
                        port: self.name.clone(),
                        what: "io_uring_enter",
                        source,
                    })?;
                    continue;
                }
                for (i, res) in cqes {
                    done += 1;
                    if res >= 0 {
                        total.frames += 1;
                        total.bytes += chunk[i as usize].len() as u64;
                    } else if [libc::ENOBUFS, libc::EAGAIN, libc::ECONNREFUSED].contains(&-res) {
                        // No room in the socket or device queue, or nobody listening on the
                        // UDP wire: the frame is dropped, as on a real wire, and counted.
                        total.dropped += 1;
                    } else {
                        return Err(PortError::Io {
                            port: self.name.clone(),
                            what: "sending a frame",
                            source: io::Error::from_raw_os_error(-res),
                        });
                    }
                }
            }
        }
        Ok(total)
    }
}

/// Opens any port: the in-memory wire or a kernel port.
pub fn open(spec: &PortSpec) -> Result<Box<dyn FrameSink>, PortError> {
    Ok(match spec {
        PortSpec::Mem => Box::new(MemWire::new()),
        other => Box::new(UringPort::open(other)?),
    })
}

/// Whether the interface `name` of this network namespace is up; `None` when there is none.
pub fn interface_up(name: &str) -> Option<bool> {
    with_flags(name, |_, req| {
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        Ok(unsafe { req.ifr_ifru.ifru_flags } & libc::IFF_UP as libc::c_short != 0)
    })
    .ok()
}

/// An interface's MTU (SIOCGIFMTU), or `None` when there is no such interface.
pub fn interface_mtu(name: &str) -> Option<u32> {
    with_flags(name, |s, req| {
        // SAFETY: SIOCGIFMTU fills the mtu member of the ifreq passed.
        if unsafe { libc::ioctl(s, libc::SIOCGIFMTU, req as *mut libc::ifreq) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFMTU filled the mtu member of the union.
        Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
    })
    .ok()
}

/// Sets an interface up (SIOCSIFFLAGS with IFF_UP added), as `ip link set NAME up` does.
fn set_up(name: &str) -> io::Result<()> {
    with_flags(name, |s, req| {
        // SAFETY: SIOCGIFFLAGS filled the flags; SIOCSIFFLAGS reads the ifreq passed.
        unsafe {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(s, libc::SIOCSIFFLAGS, &*req) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    })
}

/// Reads an interface's flags (SIOCGIFFLAGS, in the caller's network namespace) and hands the
/// socket and request to `f`.
fn with_flags<T>(name: &str, f: impl FnOnce(i32, &mut libc::ifreq) -> io::Result<T>) -> io::Result<T> {
    // SAFETY: a datagram socket used for interface ioctls only, closed by OwnedFd.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` is a fresh descriptor owned from here on.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
    }
    for (d, b) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS writes the flags into the ifreq passed.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    f(s.as_raw_fd(), &mut req)
}

/// `PACKET_AUXDATA` and the `tp_status` bits that say a VLAN tag was taken off.
pub const PACKET_AUXDATA: i32 = 8;
pub const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
pub const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

/// The other end of one of a device's ports, for tests and for the conformance suite: sends
/// frames into the port and receives what the device sends out of it. Blocking, with waits
/// bounded by the caller.
///
/// - UDP wire: a socket bound to the peer address of the device's port, connected to the
///   address the device's port is bound to.
/// - An interface (the kernel side of the device's TAP, or the far end of a veth pair whose
///   near end the device holds with AF_PACKET): an AF_PACKET socket that does not see its own
///   frames, and puts back the VLAN tag receive offload took off (`PACKET_AUXDATA`), so frames
///   read back byte for byte.
pub struct Peer {
    fd: OwnedFd,
    packet: bool,
    /// A TAP device this peer holds: frames are read and written whole on its file.
    tap: bool,
    name: String,
}

impl Peer {
    pub fn udp(local: SocketAddr, device: SocketAddr) -> Result<Peer, PortError> {
        let name = format!("udp:{local}->{device}");
        let io_err = |what| move |source| PortError::Io { port: format!("udp:{local}->{device}"), what, source };
        let s = while_held(|| UdpSocket::bind(local), |e| e.kind() == io::ErrorKind::AddrInUse)
            .map_err(io_err("binding the UDP socket"))?;
        s.connect(device).map_err(io_err("connecting the UDP socket"))?;
        let fd = OwnedFd::from(s);
        grow_buffers(&fd);
        Ok(Peer { fd, packet: false, tap: false, name })
    }

    /// The peer end a spec names, from the peer's side: `udp:DEVICE,bind=LOCAL` (bound to
    /// LOCAL, which the device sends to, sending to DEVICE), `afpacket:IF` (the interface across
    /// from the device's port), `tap:NAME` (a TAP device the peer makes or opens and holds;
    /// the device's port is then an AF_PACKET socket on NAME, which the peer brings up).
    pub fn open(spec: &PortSpec) -> Result<Peer, PortError> {
        match spec {
            PortSpec::Udp { peer, bind: Some(local) } => Peer::udp(*local, *peer),
            PortSpec::Udp { bind: None, .. } => Err(PortError::Io {
                port: spec.to_string(),
                what: "a UDP peer needs bind=ADDR, the address the device's port sends to",
                source: io::Error::from(io::ErrorKind::InvalidInput),
            }),
            PortSpec::AfPacket(iface) => Peer::interface(iface),
            PortSpec::Tap(name) => {
                let KernelFd { fd, .. } = open_kernel_fd(spec, true)?;
                set_up(name).map_err(|source| PortError::Io {
                    port: spec.to_string(),
                    what: "bringing the TAP device up",
                    source,
                })?;
                Ok(Peer::tap(fd, spec.to_string()))
            }
            PortSpec::Mem => Err(PortError::Io {
                port: spec.to_string(),
                what: "the in-memory wire has no peer end to open",
                source: io::Error::from(io::ErrorKind::Unsupported),
            }),
        }
    }

    /// A queue of a TAP device, already opened (one of a multi-queue TAP's, say): frames are
    /// read and written whole on it.
    pub fn tap(fd: OwnedFd, name: impl Into<String>) -> Peer {
        Peer { fd, packet: false, tap: true, name: name.into() }
    }

    pub fn interface(iface: &str) -> Result<Peer, PortError> {
        let name = format!("afpacket:{iface}");
        let fd = open_af_packet(&name, iface)?;
        grow_buffers(&fd);
        for opt in [PACKET_IGNORE_OUTGOING, PACKET_AUXDATA] {
            set_int_opt(&fd, libc::SOL_PACKET, opt, 1).map_err(|source| PortError::Io {
                port: name.clone(),
                what: "AF_PACKET options",
                source,
            })?;
        }
        Ok(Peer { fd, packet: true, tap: false, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The peer's socket or TAP file (to set options on it).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Sends one frame into the device's port.
    pub fn send(&self, frame: &[u8]) -> Result<(), PortError> {
        // SAFETY: the frame is valid for its length during the call.
        let n = unsafe {
            if self.tap {
                libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len())
            } else {
                libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0)
            }
        };
        if n < 0 {
            return Err(last_os_error(&self.name, "sending a frame"));
        }
        Ok(())
    }

    /// The next frame the device sent out of its port, or `None` when none comes within
    /// `wait`.
    pub fn recv(&self, wait: std::time::Duration) -> Result<Option<Vec<u8>>, PortError> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd that lives across the call.
        let r = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().min(i32::MAX as u128) as i32) };
        if r < 0 {
            return Err(last_os_error(&self.name, "poll"));
        }
        if r == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 65536];
        if self.tap {
            // SAFETY: reading into a live buffer of its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Ok(None);
                }
                return Err(PortError::Io { port: self.name.clone(), what: "reading a frame", source: e });
            }
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let mut control = [0u64; 16];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: msghdr is plain data; zeroed is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if self.packet {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
        }
        // SAFETY: every pointer in msg points at a live buffer of the length given.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(PortError::Io { port: self.name.clone(), what: "receiving a frame", source: e });
        }
        buf.truncate(n as usize);
        if self.packet {
            // SAFETY: walking the control messages the kernel wrote into `control`, within
            // msg_controllen, with the libc macros.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == PACKET_AUXDATA {
                        let aux: libc::tpacket_auxdata = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        if aux.tp_status & TP_STATUS_VLAN_VALID != 0 && buf.len() >= 12 {
                            let tpid =
                                if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 { aux.tp_vlan_tpid } else { 0x8100 };
                            let tag = [tpid.to_be_bytes(), aux.tp_vlan_tci.to_be_bytes()].concat();
                            buf.splice(12..12, tag);
                        }
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
        }
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_port_waits_for_an_address_being_released_and_not_for_one_kept() {
        let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = holder.local_addr().unwrap();
        let spec = PortSpec::Udp { peer: "127.0.0.1:9".parse().unwrap(), bind: Some(local) };
        // Released while the port waits (as a killed process's ring lets its sockets go).
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(holder);
        });
        assert!(open_kernel_fd(&spec, true).is_ok());
        release.join().unwrap();
        // Kept: after the patience, the error names the address in use.
        let _kept = UdpSocket::bind("127.0.0.1:0").unwrap();
        let spec = PortSpec::Udp { peer: "127.0.0.1:9".parse().unwrap(), bind: Some(_kept.local_addr().unwrap()) };
        let e = open_kernel_fd(&spec, true).err().expect("the address stays in use");
        assert!(e.to_string().contains("binding the UDP socket") && e.to_string().contains("in use"), "{e}");
    }

    #[test]
    fn specs_parse_and_print() {
        for s in ["mem", "udp:127.0.0.1:4000", "udp:[::1]:4000,bind=[::1]:4001", "tap:opof0", "afpacket:veth1"] {
            let p: PortSpec = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        for bad in [
            "",
            "udp:",
            "udp:nowhere",
            "udp:127.0.0.1:1,bind=x",
            "tap:",
            "tap:a/b",
            "afpacket:0123456789abcdefg",
            "eth0",
        ] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad:?}");
        }
    }
}
