//! `port::set_socket_buffer`: the send and receive buffers of the port sockets opened after it,
//! and the sizes it refuses. A test binary of its own: the setting is the whole process's.

use std::os::fd::{AsRawFd, OwnedFd};

use opof_traffic::port::{self, PortSpec, DEFAULT_SOCKET_BUFFER};

fn buffer(fd: &OwnedFd, opt: i32) -> u64 {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: v and len outlive the call and len is v's size.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, &mut v as *mut i32 as *mut _, &mut len) };
    assert_eq!(r, 0, "getsockopt: {}", std::io::Error::last_os_error());
    v as u64
}

fn sysctl(name: &str) -> u64 {
    let path = format!("/proc/sys/net/core/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().parse().expect("a number")
}

/// What the kernel keeps for `asked` bytes: twice them; capped by the sysctl limit for a
/// process without CAP_NET_ADMIN (the forced option needs it).
fn kept(asked: u32, limit: &str) -> u64 {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    2 * if root { u64::from(asked) } else { u64::from(asked).min(sysctl(limit)) }
}

fn udp_port() -> OwnedFd {
    let spec = PortSpec::Udp { peer: "127.0.0.1:9".parse().unwrap(), bind: None };
    port::open_kernel_fd(&spec, true).expect("a UDP port on loopback").fd
}

#[test]
fn port_sockets_get_the_buffers_set_for_the_process() {
    let fd = udp_port();
    assert_eq!(buffer(&fd, libc::SO_RCVBUF), kept(DEFAULT_SOCKET_BUFFER, "rmem_max"));
    assert_eq!(buffer(&fd, libc::SO_SNDBUF), kept(DEFAULT_SOCKET_BUFFER, "wmem_max"));

    let asked = 24 << 20;
    port::set_socket_buffer(asked).expect("24 MiB is in range");
    let fd = udp_port();
    assert_eq!(buffer(&fd, libc::SO_RCVBUF), kept(asked, "rmem_max"));
    assert_eq!(buffer(&fd, libc::SO_SNDBUF), kept(asked, "wmem_max"));

    for bad in [0, 1000, (64 << 10) - 1, (1 << 30) + 1, u32::MAX] {
        let e = port::set_socket_buffer(bad).expect_err("out of range");
        assert!(e.contains(&format!("{bad} bytes")) && e.contains("65536 to 1073741824"), "{e}");
    }
    // What was refused changed nothing.
    let fd = udp_port();
    assert_eq!(buffer(&fd, libc::SO_RCVBUF), kept(asked, "rmem_max"));
}
