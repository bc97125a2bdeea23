//! Capture I/O and the generator: round trips of pcap and pcapng to the nanosecond; bad files
//! refused with the file and offset named; generator determinism; ground truth equal to the
//! capture, packet for packet; tcpdump reads what the generator writes (ignored, with the reason,
//! where tcpdump is not installed; CI installs it).

use std::path::Path;
use std::process::Command;

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use opof_traffic::capture::{read_all, CaptureReader, CaptureWriter, Format, Frame};
use opof_traffic::flows::FlowAccount;
use opof_traffic::gen::{generate, GenConfig, Sizes};
use opof_traffic::port::{self, PortSpec};
use opof_traffic::replay::{replay, replay_virtual, Pace, ReplayOptions};

type R = Result<Completion, Failed>;

fn check(cond: bool, msg: impl Into<String>) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(Failed::from(msg.into()))
    }
}

fn frames() -> Vec<Frame> {
    (0..20u64)
        .map(|i| Frame {
            // Nanosecond digits that a microsecond format would lose.
            ts_ns: 1_750_000_000_123_456_789 + i * 1_000_000_007,
            data: (0..(60 + i as usize * 37)).map(|b| (b as u8).wrapping_mul(i as u8 + 1)).collect(),
            orig_len: 60 + i as u32 * 37,
            interface: 0,
        })
        .collect()
}

fn round_trip(format: Format) -> R {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(if format == Format::PcapNg { "x.pcapng" } else { "x.pcap" });
    let mut w = CaptureWriter::create(&path, &["ext0"]).map_err(|e| Failed::from(e.to_string()))?;
    for f in frames() {
        w.write(&f).map_err(|e| Failed::from(e.to_string()))?;
    }
    w.finish().map_err(|e| Failed::from(e.to_string()))?;
    let back = read_all(&path).map_err(|e| Failed::from(e.to_string()))?;
    check(back == frames(), format!("{format:?}: frames differ after the round trip"))?;
    check(CaptureReader::open(&path).unwrap().format() == format, "format detected")?;
    Ok(Completion::Completed)
}

/// A file made of these bytes must be refused with an error containing each of `want`.
fn refused(name: &str, bytes: &[u8], want: &[&str]) -> Result<(), Failed> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = match CaptureReader::open(&path) {
        Err(e) => e.to_string(),
        Ok(r) => match r.collect::<Result<Vec<_>, _>>() {
            Err(e) => e.to_string(),
            Ok(f) => return Err(Failed::from(format!("{name}: accepted ({} frames)", f.len()))),
        },
    };
    for w in want {
        check(err.contains(w), format!("{name}: error {err:?} lacks {w:?}"))?;
    }
    check(err.contains(name), format!("{name}: error {err:?} does not name the file"))
}

fn pcap_header(linktype: u32) -> Vec<u8> {
    let mut h = vec![0x4d, 0x3c, 0xb2, 0xa1, 2, 0, 4, 0];
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&262_144u32.to_le_bytes());
    h.extend_from_slice(&linktype.to_le_bytes());
    h
}

fn record(len_claimed: u32, data: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&1u32.to_le_bytes());
    r.extend_from_slice(&2u32.to_le_bytes());
    r.extend_from_slice(&len_claimed.to_le_bytes());
    r.extend_from_slice(&len_claimed.to_le_bytes());
    r.extend_from_slice(data);
    r
}

fn bad_files() -> R {
    refused("magic.pcap", b"GIF89a not a capture", &["not a pcap or pcapng file", "47 49 46 38"])?;
    refused("short.pcap", &[0xd4, 0xc3], &["offset 0", "no capture header"])?;
    refused("linktype.pcap", &pcap_header(113), &["link type", "not Ethernet"])?;
    let mut absurd = pcap_header(1);
    absurd.extend(record(60, &[0; 60]));
    absurd.extend(record(0xffff_fff0, &[0; 100]));
    refused("absurd.pcap", &absurd, &["offset 100", "claims 4294967280 bytes"])?;
    let mut truncated = pcap_header(1);
    truncated.extend(record(500, &[0; 100]));
    refused("truncated.pcap", &truncated, &["offset 24", "truncated record: 500 bytes claimed, 100 in the file"])?;
    let mut header_cut = pcap_header(1);
    header_cut.extend_from_slice(&[1, 2, 3]);
    refused("cut.pcap", &header_cut, &["offset 24", "truncated record header"])?;
    // pcapng: a section header, then a block whose length is absurd.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.pcapng");
    let mut w = CaptureWriter::create(&good, &["ext0"]).unwrap();
    w.write(&frames()[0]).unwrap();
    w.finish().unwrap();
    let mut ng = std::fs::read(&good).unwrap();
    let at = ng.len();
    ng.extend_from_slice(&6u32.to_le_bytes());
    ng.extend_from_slice(&0x7fff_fff0u32.to_le_bytes());
    ng.extend_from_slice(&[0; 40]);
    refused("absurd.pcapng", &ng, &[&format!("offset {at}"), "claims 2147483632 bytes"])?;
    let cut = std::fs::read(&good).unwrap();
    refused("cut.pcapng", &cut[..cut.len() - 10], &["truncated block"])?;
    Ok(Completion::Completed)
}

fn generate_to(path: &Path, c: &GenConfig) -> opof_traffic::gen::Truth {
    let mut w = CaptureWriter::create(path, &["ext0"]).unwrap();
    let truth = generate(c, |f| w.write(&f)).unwrap();
    w.finish().unwrap();
    truth
}

fn mixed() -> GenConfig {
    GenConfig { flows: 200, packets: 7, vlan_share: 0.3, vlan_tags: 2, ipv6_share: 0.4, ..GenConfig::default() }
}

fn determinism() -> R {
    let dir = tempfile::tempdir().unwrap();
    for ext in ["pcap", "pcapng"] {
        let (a, b, c) = (
            dir.path().join(format!("a.{ext}")),
            dir.path().join(format!("b.{ext}")),
            dir.path().join(format!("c.{ext}")),
        );
        generate_to(&a, &mixed());
        generate_to(&b, &mixed());
        generate_to(&c, &GenConfig { seed: 2, ..mixed() });
        let (ba, bb, bc) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), std::fs::read(&c).unwrap());
        check(ba == bb, format!("{ext}: the same seed gave different bytes"))?;
        check(ba != bc, format!("{ext}: another seed gave the same bytes"))?;
    }
    Ok(Completion::Completed)
}

fn truth_matches_capture() -> R {
    let dir = tempfile::tempdir().unwrap();
    for sizes in [Sizes::Imix, Sizes::Fixed(64), Sizes::Fixed(1514)] {
        let path = dir.path().join("t.pcapng");
        let c = GenConfig { sizes, ..mixed() };
        let truth = generate_to(&path, &c);
        let mut acc = FlowAccount::default();
        let mut n = 0;
        let mut last = 0;
        for f in CaptureReader::open(&path).unwrap() {
            let f = f.unwrap();
            check(f.ts_ns >= last, "frames in time order")?;
            if let Sizes::Fixed(s) = sizes {
                // Data frames have the size asked; TCP control segments carry no payload.
                let payload =
                    etherparse::SlicedPacket::from_ethernet(&f.data).ok().and_then(|p| p.transport).map_or(0, |t| {
                        match t {
                            etherparse::TransportSlice::Tcp(t) => t.payload().len(),
                            etherparse::TransportSlice::Udp(u) => u.payload().len(),
                            _ => 0,
                        }
                    });
                check(f.data.len() == s || payload == 0, format!("a data frame of {} bytes, want {s}", f.data.len()))?;
            }
            last = f.ts_ns;
            acc.add(&f);
            n += 1;
        }
        check(n == truth.frames, format!("{n} frames in the capture, {} in the truth", truth.frames))?;
        check(acc.other == 0, "frames without a 5-tuple")?;
        check(
            acc.flows.len() == truth.flows.len(),
            format!("{} flows seen, {} in the truth", acc.flows.len(), truth.flows.len()),
        )?;
        for t in &truth.flows {
            let proto = if t.protocol == "tcp" { 6 } else { 17 };
            let key = (proto, t.src, t.src_port, t.dst, t.dst_port);
            let Some((fwd, rev)) = acc.flows.get(&key) else {
                return Err(Failed::from(format!("flow {} ({key:?}) not in the capture", t.id)));
            };
            check(
                fwd == &t.forward && rev == &t.reverse,
                format!("flow {}: capture {fwd:?} {rev:?}, truth {:?} {:?}", t.id, t.forward, t.reverse),
            )?;
        }
        let v6 = truth.flows.iter().filter(|f| f.src.is_ipv6()).count();
        let tagged = truth.flows.iter().filter(|f| f.vlan.len() == 2).count();
        let udp = truth.flows.iter().filter(|f| f.protocol == "udp").count();
        let rst = truth.flows.iter().filter(|f| f.close == "rst").count();
        check(
            v6 > 40 && tagged > 30 && udp > 30 && rst > 10,
            format!("mix: {v6} IPv6, {tagged} tagged, {udp} UDP, {rst} RST of 200"),
        )?;
    }
    Ok(Completion::Completed)
}

/// tcpdump reads the generator's pcap and pcapng and sees every frame, handshakes included.
fn tcpdump_reads_it() -> R {
    if Command::new("tcpdump").arg("--version").output().is_err() {
        return Ok(Completion::ignored_with("tcpdump is not installed (Debian package tcpdump; .ci/run installs it)"));
    }
    let dir = tempfile::tempdir().unwrap();
    for ext in ["pcap", "pcapng"] {
        let path = dir.path().join(format!("g.{ext}"));
        let c = GenConfig { flows: 20, packets: 4, vlan_share: 0.5, ..mixed() };
        let truth = generate_to(&path, &c);
        let out = Command::new("tcpdump").args(["-nn", "-e", "-r"]).arg(&path).output().unwrap();
        check(out.status.success(), format!("tcpdump -r {ext}: {}", String::from_utf8_lossy(&out.stderr)))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let lines = text.lines().count() as u64;
        check(lines == truth.frames, format!("{ext}: tcpdump printed {lines} lines for {} frames", truth.frames))?;
        check(text.contains("Flags [S]") && text.contains("Flags [S.]"), format!("{ext}: no handshake seen"))?;
        check(text.contains("vlan"), format!("{ext}: no VLAN tag decoded"))?;
        // Nanosecond timestamps survive: tcpdump prints them with --nano.
        let nano = Command::new("tcpdump").args(["-nn", "--nano", "-c", "1", "-r"]).arg(&path).output().unwrap();
        let first = String::from_utf8_lossy(&nano.stdout).to_string();
        check(first.split_whitespace().next().is_some_and(|t| t.len() >= 18), format!("{ext}: {first}"))?;
    }
    Ok(Completion::Completed)
}

/// Receives datagrams on a UDP socket until it has been idle for 500 ms.
fn udp_receiver() -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<Vec<u8>>>) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
    let addr = sock.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    });
    (addr, h)
}

fn replay_over_udp(pace: Pace) -> R {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("r.pcap");
    generate_to(&cap, &GenConfig { flows: 12, packets: 4, duration: 0.2, rate: 50.0, ..mixed() });
    let want: Vec<Vec<u8>> = read_all(&cap).unwrap().into_iter().map(|f| f.data).collect();
    let (addr, rx) = udp_receiver();
    let spec: PortSpec = format!("udp:{addr}").parse().unwrap();
    let mut port = port::open(&spec).map_err(|e| Failed::from(e.to_string()))?;
    let rec = dir.path().join("sent.pcapng");
    let mut w = CaptureWriter::create(&rec, &["udp"]).unwrap();
    let opts = ReplayOptions { pace, loops: 2 };
    let s = replay(&cap, port.as_mut(), &opts, Some(&mut w), |_| {}).map_err(|e| Failed::from(e.to_string()))?;
    w.finish().unwrap();
    let got = rx.join().unwrap();
    let twice: Vec<Vec<u8>> = want.iter().chain(want.iter()).cloned().collect();
    check(s.frames == twice.len() as u64 && s.dropped == 0, format!("summary {s:?}, {} frames expected", twice.len()))?;
    check(s.bytes == twice.iter().map(|f| f.len() as u64).sum::<u64>(), "bytes in the summary")?;
    check(
        got == twice,
        format!("{pace:?}: {} datagrams received, {} sent; contents must match in order", got.len(), twice.len()),
    )?;
    let recorded: Vec<Vec<u8>> = read_all(&rec).unwrap().into_iter().map(|f| f.data).collect();
    check(recorded == twice, "the record holds every frame sent")?;
    Ok(Completion::Completed)
}

/// Virtual time: each frame is handed over due exactly at its capture time (relative to the
/// first), passes laid end to end.
fn virtual_time_is_exact() -> R {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("v.pcapng");
    generate_to(&cap, &GenConfig { flows: 30, packets: 5, ..mixed() });
    let frames = read_all(&cap).unwrap();
    let t0 = frames[0].ts_ns;
    let span = frames.last().unwrap().ts_ns - t0;
    let mut seen = Vec::new();
    replay_virtual(&cap, 3, |due, f| {
        seen.push((due, f.ts_ns));
        Ok(())
    })
    .unwrap();
    check(seen.len() == frames.len() * 3, "three passes")?;
    for (i, (due, ts)) in seen.iter().enumerate() {
        let pass = (i / frames.len()) as u64;
        let want = pass * (span + 1_000) + (ts - t0);
        check(*due == want, format!("frame {i}: due {due}, want {want}"))?;
    }
    Ok(Completion::Completed)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn ip(args: &str) -> Result<(), Failed> {
    let out =
        Command::new("ip").args(args.split_whitespace()).output().map_err(|e| Failed::from(format!("ip: {e}")))?;
    check(out.status.success(), format!("ip {args}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Frames arriving on `iface`, read with a raw AF_PACKET socket until idle for 500 ms.
fn sniff(iface: &str) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let index = std::ffi::CString::new(iface).unwrap();
    // SAFETY: plain libc calls on a socket this function owns.
    let fd = unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from((libc::ETH_P_ALL as u16).to_be()));
        assert!(fd >= 0, "AF_PACKET socket");
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = libc::if_nametoindex(index.as_ptr()) as i32;
        assert_eq!(
            libc::bind(fd, &sll as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32),
            0
        );
        let tv = libc::timeval { tv_sec: 0, tv_usec: 500_000 };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        fd
    };
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n <= 0 {
                break;
            }
            got.push(buf[..n as usize].to_vec());
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        got
    })
}

/// Real interfaces: the same capture out of a TAP device and out of one end of a veth pair
/// (AF_PACKET), every frame arriving whole on the other side.
fn kernel_ports() -> R {
    if !is_root() {
        return Ok(Completion::ignored_with("needs root to create TAP and veth interfaces (CI runs as root)"));
    }
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("k.pcap");
    // No VLAN tags: a receiving veth strips the outer tag into packet metadata (rx VLAN
    // offload), so tagged frames would not read back byte for byte on a plain AF_PACKET socket.
    generate_to(&cap, &GenConfig { flows: 10, packets: 4, duration: 0.05, rate: 200.0, vlan_share: 0.0, ..mixed() });
    let want: Vec<Vec<u8>> = read_all(&cap).unwrap().into_iter().map(|f| f.data).collect();
    let opts = ReplayOptions { pace: Pace::RealTime { speed: 1.0 }, loops: 1 };
    let pid = std::process::id();
    // veth: send on one end with AF_PACKET, read on the other.
    let (a, b) = (format!("opofa{}", pid % 100_000), format!("opofb{}", pid % 100_000));
    let _ = ip(&format!("link del {a}"));
    ip(&format!("link add {a} type veth peer name {b}"))?;
    let result = (|| {
        ip(&format!("link set {a} up"))?;
        ip(&format!("link set {b} up"))?;
        let rx = sniff(&b);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut port = port::open(&PortSpec::AfPacket(a.clone())).map_err(|e| Failed::from(e.to_string()))?;
        let s = replay(&cap, port.as_mut(), &opts, None, |_| {}).map_err(|e| Failed::from(e.to_string()))?;
        let got = rx.join().unwrap();
        let ours: Vec<&Vec<u8>> = got.iter().filter(|g| want.contains(g)).collect();
        check(s.frames == want.len() as u64, format!("afpacket summary {s:?}"))?;
        check(ours.len() == want.len(), format!("veth: {} of {} frames arrived whole", ours.len(), want.len()))
    })();
    let _ = ip(&format!("link del {a}"));
    result?;
    // TAP: frames written to the device arrive on its interface.
    let tap = format!("opoft{}", pid % 100_000);
    let result = (|| {
        let mut port = port::open(&PortSpec::Tap(tap.clone())).map_err(|e| Failed::from(e.to_string()))?;
        // The port brings the TAP it made up (a down TAP refuses writes with EIO).
        check(port::interface_up(&tap) == Some(true), format!("{tap} is not up after opening the port"))?;
        let rx = sniff(&tap);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let s = replay(&cap, port.as_mut(), &opts, None, |_| {}).map_err(|e| Failed::from(e.to_string()))?;
        let got = rx.join().unwrap();
        let ours = got.iter().filter(|g| want.contains(g)).count();
        check(s.frames == want.len() as u64, format!("tap summary {s:?}"))?;
        check(ours == want.len(), format!("tap: {ours} of {} frames arrived whole", want.len()))
    })();
    let _ = ip(&format!("link del {tap}"));
    result?;
    Ok(Completion::Completed)
}

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let trials = vec![
        Trial::ignorable_test("pcap round trip to the nanosecond", || round_trip(Format::Pcap)),
        Trial::ignorable_test("pcapng round trip to the nanosecond", || round_trip(Format::PcapNg)),
        Trial::ignorable_test("bad files are refused, naming the file and offset", bad_files),
        Trial::ignorable_test("the generator is reproducible from its seed", determinism),
        Trial::ignorable_test("the ground truth equals the capture packet for packet", truth_matches_capture),
        Trial::ignorable_test("tcpdump reads what the generator writes", tcpdump_reads_it),
        Trial::ignorable_test("replay over the UDP wire in real time, two loops, recorded", || {
            replay_over_udp(Pace::RealTime { speed: 4.0 })
        }),
        Trial::ignorable_test("replay over the UDP wire as fast as possible", || replay_over_udp(Pace::AsFast)),
        Trial::ignorable_test("replay in virtual time is exact", virtual_time_is_exact),
        Trial::ignorable_test("replay out of TAP and veth (AF_PACKET) interfaces", kernel_ports),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
