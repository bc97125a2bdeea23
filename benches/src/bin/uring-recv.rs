//! Why the datapath drives io_uring through the `io-uring` crate rather than `tokio-uring`:
//! the receive cost per datagram, measured both ways on the same loopback UDP load.
//!
//! - `tokio-uring`: the crate's natural form, `UdpSocket::recv_from(buf).await` in a loop (one
//!   submission per datagram, the buffer handed to the kernel and back each time), with 1 and
//!   with 64 receives in flight (64 tasks on one socket).
//! - `multishot`: what the datapath does, one multishot receive armed once on a provided buffer
//!   ring; the kernel picks a buffer per datagram and posts a completion, the loop reaps every
//!   completion of a turn and gives the buffers back in one store.
//!
//! A sender thread keeps the receiver's socket full (64-byte datagrams, `sendmmsg` batches) for
//! the whole measurement; the figure is the receiving thread's CPU time (user + system,
//! `RUSAGE_THREAD`) per datagram received, and datagrams received per second. Modes alternate,
//! `REPS` times each; one JSON object per measurement on stdout, medians on stderr.
//!
//! Usage: cargo run --release -p opof-benches --bin uring-recv -- [DATAGRAMS] [REPS]

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Instant;

use io_uring::{cqueue, opcode, types, IoUring};

/// The receiving thread's CPU time so far, nanoseconds.
fn thread_cpu_ns() -> u64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid rusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(u.ru_utime) + ns(u.ru_stime)
}

/// Sends 64-byte datagrams to `to` in batches until `stop`.
fn blast(to: std::net::SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").expect("sender socket");
        s.connect(to).expect("connect");
        let payload = [0x5au8; 64];
        let mut iov: Vec<libc::iovec> =
            (0..64).map(|_| libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() }).collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: mmsghdr is plain data; zeroed is valid.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: every message points at live iovecs and the payload.
            unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
        }
    })
}

fn receiver_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("receiver socket");
    let size: i32 = 8 << 20;
    // SAFETY: an int option value that lives across the call.
    unsafe {
        libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&size as *const i32).cast(), 4);
    }
    s
}

/// Receives `n` datagrams the tokio-uring way, `in_flight` receives at once.
fn tokio_uring_recv(s: UdpSocket, n: u64, in_flight: usize) -> u64 {
    tokio_uring::start(async move {
        let sock = std::rc::Rc::new(tokio_uring::net::UdpSocket::from_std(s));
        let count = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let tasks: Vec<_> = (0..in_flight)
            .map(|_| {
                let (sock, count) = (sock.clone(), count.clone());
                tokio_uring::spawn(async move {
                    let mut buf = vec![0u8; 2048];
                    while count.get() < n {
                        let (r, b) = sock.recv_from(buf).await;
                        buf = b;
                        if r.is_ok() {
                            count.set(count.get() + 1);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        count.get()
    })
}

/// Receives `n` datagrams as the datapath does: a multishot receive on a provided buffer ring.
fn multishot_recv(s: UdpSocket, n: u64) -> u64 {
    const BUFS: u16 = 1024;
    const SIZE: usize = 2048;
    let mut ring = IoUring::new(4096).expect("io_uring");
    let ring_bytes = usize::from(BUFS) * std::mem::size_of::<types::BufRingEntry>();
    // SAFETY: anonymous private mapping, checked below, unmapped at the end.
    let br = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ring_bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(br, libc::MAP_FAILED);
    let br = br.cast::<types::BufRingEntry>();
    let mut bufs = vec![0u8; usize::from(BUFS) * SIZE];
    let mut tail: u16 = 0;
    let mut push = |bid: u16, tail: &mut u16| {
        // SAFETY: the index is masked into the ring's entries.
        let e = unsafe { &mut *br.add(usize::from(*tail & (BUFS - 1))) };
        e.set_addr(bufs[usize::from(bid) * SIZE..].as_mut_ptr() as u64);
        e.set_len(SIZE as u32);
        e.set_bid(bid);
        *tail = tail.wrapping_add(1);
    };
    let publish = |tail: u16| {
        // SAFETY: the tail lives in the first entry; a release store publishes the entries.
        unsafe { (*(types::BufRingEntry::tail(br) as *const AtomicU16)).store(tail, Ordering::Release) };
    };
    for bid in 0..BUFS {
        push(bid, &mut tail);
    }
    publish(tail);
    // SAFETY: the mapping outlives the ring's use of it (the ring is dropped first below).
    unsafe { ring.submitter().register_buf_ring_with_flags(br as u64, BUFS, 0, 0) }.expect("buffer ring");
    let fd = types::Fd(s.as_raw_fd());
    let mut count = 0u64;
    let mut armed = false;
    while count < n {
        if !armed {
            let e = opcode::RecvMulti::new(fd, 0).build().user_data(1);
            // SAFETY: the entry refers to the socket and the registered buffer group only.
            unsafe { ring.submission().push(&e) }.expect("room");
            armed = true;
        }
        ring.submit_and_wait(1).expect("io_uring_enter");
        let done: Vec<(i32, u32)> = ring.completion().map(|c| (c.result(), c.flags())).collect();
        for (res, flags) in done {
            if !cqueue::more(flags) {
                armed = false;
            }
            if let Some(bid) = cqueue::buffer_select(flags) {
                if res > 0 {
                    count += 1;
                }
                push(bid, &mut tail);
            }
        }
        publish(tail);
    }
    drop(ring);
    // SAFETY: the mapping made above; the ring that used it is gone.
    unsafe { libc::munmap(br.cast(), ring_bytes) };
    count
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2_000_000);
    let reps: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let modes = ["tokio-uring x1", "tokio-uring x64", "multishot"];
    let mut results: Vec<(&str, f64, f64)> = Vec::new();
    for _ in 0..reps {
        for mode in modes {
            let s = receiver_socket();
            let stop = Arc::new(AtomicBool::new(false));
            let sender = blast(s.local_addr().expect("address"), stop.clone());
            let (cpu0, t0) = (thread_cpu_ns(), Instant::now());
            let got = match mode {
                "tokio-uring x1" => tokio_uring_recv(s, n, 1),
                "tokio-uring x64" => tokio_uring_recv(s, n, 64),
                _ => multishot_recv(s, n),
            };
            let (cpu, wall) = (thread_cpu_ns() - cpu0, t0.elapsed());
            stop.store(true, Ordering::Relaxed);
            sender.join().expect("sender");
            let per = cpu as f64 / got as f64;
            let rate = got as f64 / wall.as_secs_f64();
            println!(
                "{{\"mode\": \"{mode}\", \"datagrams\": {got}, \"cpu_ns_per_datagram\": {per:.0}, \"datagrams_per_s\": {rate:.0}}}"
            );
            results.push((mode, per, rate));
        }
    }
    for mode in modes {
        let mut per: Vec<f64> = results.iter().filter(|r| r.0 == mode).map(|r| r.1).collect();
        let mut rate: Vec<f64> = results.iter().filter(|r| r.0 == mode).map(|r| r.2).collect();
        per.sort_by(f64::total_cmp);
        rate.sort_by(f64::total_cmp);
        eprintln!(
            "{mode:16} {:>6.0} ns CPU per datagram (range {:.0}-{:.0}), {:>9.0} datagrams/s",
            per[per.len() / 2],
            per[0],
            per[per.len() - 1],
            rate[rate.len() / 2]
        );
    }
}
