//! The flow generator: synthetic traffic with its ground truth.
//!
//! N flows arrive at a given rate (exponential gaps); each lasts a given duration and carries a
//! given number of data packets, alternating direction. TCP flows open with a three-way
//! handshake, carry data with consistent sequence and acknowledgement numbers, and close with
//! FIN/ACK from both sides or with a RST; UDP flows are datagrams both ways. A share of flows is
//! IPv6, a share carries one or two VLAN tags. Frame sizes are fixed or IMIX (60, 590 and 1514
//! bytes in the ratio 7:4:1). The same seed gives the same capture, byte for byte.
//!
//! Frames of all flows are merged in time order as they are made (a heap of the flows in
//! progress), so memory follows the flows alive at once, not the capture's size.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;

use etherparse::PacketBuilder;
use serde::Serialize;

use crate::capture::Frame;

/// Frame sizes (bytes, without FCS) of the simple IMIX, and their weights.
pub const IMIX: [(usize, u32); 3] = [(60, 7), (590, 4), (1514, 1)];

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sizes {
    Fixed(usize),
    Imix,
}

impl std::str::FromStr for Sizes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("imix") {
            return Ok(Sizes::Imix);
        }
        match s.parse::<usize>() {
            Ok(n) if (60..=9000).contains(&n) => Ok(Sizes::Fixed(n)),
            _ => Err(format!("{s:?}: a frame size from 60 to 9000 bytes, or imix")),
        }
    }
}

/// What to generate.
#[derive(Clone, Debug, Serialize)]
pub struct GenConfig {
    pub flows: usize,
    pub seed: u64,
    /// Data packets per flow (both directions together).
    pub packets: usize,
    /// Flows starting per second.
    pub rate: f64,
    /// Time from a flow's first frame to its last, seconds.
    pub duration: f64,
    pub sizes: Sizes,
    /// Shares of flows (0 to 1): UDP, IPv6, VLAN-tagged, and of TCP flows closed by RST.
    pub udp_share: f64,
    pub ipv6_share: f64,
    pub vlan_share: f64,
    /// Tags on a tagged flow: 1 (802.1Q) or 2 (802.1ad outer, 802.1Q inner).
    pub vlan_tags: u8,
    pub rst_share: f64,
    /// Time of the first flow's first frame, ns since the epoch.
    pub start_ns: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            flows: 100,
            seed: 1,
            packets: 10,
            rate: 100.0,
            duration: 1.0,
            sizes: Sizes::Imix,
            udp_share: 0.3,
            ipv6_share: 0.2,
            vlan_share: 0.0,
            vlan_tags: 1,
            rst_share: 0.2,
            start_ns: 1_750_000_000_000_000_000,
        }
    }
}

impl GenConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("udp share", self.udp_share),
            ("ipv6 share", self.ipv6_share),
            ("vlan share", self.vlan_share),
            ("rst share", self.rst_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("the {name} must be between 0 and 1, not {v}"));
            }
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err(format!("the flow rate must be positive, not {}", self.rate));
        }
        if !(self.duration >= 0.0 && self.duration < 1e7) {
            return Err(format!("the flow duration must be between 0 and 10^7 s, not {}", self.duration));
        }
        if !(1..=2).contains(&self.vlan_tags) {
            return Err(format!("a tagged flow has 1 or 2 VLAN tags, not {}", self.vlan_tags));
        }
        if self.flows > 100_000_000 || self.packets > 100_000_000 {
            return Err("at most 10^8 flows and 10^8 packets per flow".into());
        }
        Ok(())
    }
}

/// A small, fast, reproducible generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Per-direction ground truth: frames and whole-frame bytes, first and last timestamps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DirTruth {
    pub packets: u64,
    pub bytes: u64,
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
}

impl DirTruth {
    pub fn add(&mut self, ts: u64, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
        self.first_ns.get_or_insert(ts);
        self.last_ns = Some(ts);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowTruth {
    pub id: usize,
    pub protocol: &'static str,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vlan: Vec<u16>,
    /// How the flow ends: `fin`, `rst` or `none` (UDP).
    pub close: &'static str,
    /// Client (src) to server (dst).
    pub forward: DirTruth,
    pub reverse: DirTruth,
}

/// The ground truth of a generated capture.
#[derive(Clone, Debug, Serialize)]
pub struct Truth {
    pub config: GenConfig,
    pub frames: u64,
    pub bytes: u64,
    pub flows: Vec<FlowTruth>,
}

/// Payload bytes of generated frames (no frame is larger than 9,000 bytes).
static TCP_FILL: [u8; 9000] = [0x61; 9000];
static UDP_FILL: [u8; 9000] = [0x62; 9000];

fn filler(fill: &'static [u8; 9000], len: usize) -> &'static [u8] {
    &fill[..len.min(fill.len())]
}

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// One flow being generated: its plan and where it is.
struct FlowGen {
    truth: FlowTruth,
    tcp: bool,
    start_ns: u64,
    step_ns: u64,
    /// Frames planned: (from the client?, TCP flags, payload length).
    plan: Vec<(bool, Flags, usize)>,
    next: usize,
    seq: [u32; 2],
}

#[derive(Clone, Copy, Debug, Default)]
struct Flags {
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    psh: bool,
}

impl FlowGen {
    fn new(id: usize, c: &GenConfig, rng: &mut Rng, start_ns: u64) -> Self {
        let tcp = !rng.chance(c.udp_share);
        let v6 = rng.chance(c.ipv6_share);
        let vlan = if rng.chance(c.vlan_share) {
            (0..c.vlan_tags).map(|_| 1 + rng.below(4094) as u16).collect()
        } else {
            Vec::new()
        };
        let n = id as u32 + 1;
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            let mut s = [0u8; 16];
            s[0] = 0xfd;
            s[12..].copy_from_slice(&n.to_be_bytes());
            let mut d = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            d[15] = 1 + (n % 250) as u8;
            (s.into(), d.into())
        } else {
            ([10, (n >> 16) as u8, (n >> 8) as u8, n as u8].into(), [192, 0, 2, 1 + (n % 250) as u8].into())
        };
        let src_port = 1024 + rng.below(64_000) as u16;
        // UDP goes to ports no common dissector claims (its payload is filler, not DNS or QUIC).
        let dst_port = match (tcp, rng.below(2)) {
            (true, 0) => 80,
            (true, _) => 443,
            (false, 0) => 5001,
            (false, _) => 5002,
        };
        let rst = tcp && rng.chance(c.rst_share);
        let size = |rng: &mut Rng| match c.sizes {
            Sizes::Fixed(n) => n,
            Sizes::Imix => {
                let total: u32 = IMIX.iter().map(|(_, w)| w).sum();
                let mut pick = rng.below(u64::from(total)) as u32;
                IMIX.iter()
                    .find(|(_, w)| {
                        if pick < *w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .map_or(60, |(s, _)| *s)
            }
        };
        let mut plan = Vec::new();
        let f = Flags::default();
        if tcp {
            plan.push((true, Flags { syn: true, ..f }, 0));
            plan.push((false, Flags { syn: true, ack: true, ..f }, 0));
            plan.push((true, Flags { ack: true, ..f }, 0));
        }
        for i in 0..c.packets {
            plan.push((i % 2 == 0, Flags { ack: tcp, psh: tcp, ..f }, size(rng)));
        }
        if rst {
            plan.push((true, Flags { rst: true, ack: true, ..f }, 0));
        } else if tcp {
            plan.push((true, Flags { fin: true, ack: true, ..f }, 0));
            plan.push((false, Flags { fin: true, ack: true, ..f }, 0));
            plan.push((true, Flags { ack: true, ..f }, 0));
        }
        let frames = plan.len().max(1) as u64;
        let step_ns = if frames > 1 { (c.duration * 1e9) as u64 / (frames - 1) } else { 0 };
        let seq = [rng.next_u64() as u32, rng.next_u64() as u32];
        FlowGen {
            truth: FlowTruth {
                id,
                protocol: if tcp { "tcp" } else { "udp" },
                src,
                src_port,
                dst,
                dst_port,
                vlan,
                close: if !tcp {
                    "none"
                } else if rst {
                    "rst"
                } else {
                    "fin"
                },
                forward: DirTruth::default(),
                reverse: DirTruth::default(),
            },
            tcp,
            start_ns,
            step_ns,
            plan,
            next: 0,
            seq,
        }
    }

    fn next_ts(&self) -> Option<u64> {
        (self.next < self.plan.len()).then(|| self.start_ns + self.step_ns * self.next as u64)
    }

    /// Builds the next frame (with the header sizes known, the payload fills the frame size).
    fn next_frame(&mut self) -> Option<Frame> {
        let ts = self.next_ts()?;
        let (client, flags, size) = self.plan[self.next];
        self.next += 1;
        let t = &self.truth;
        let (sa, da, sp, dp, smac, dmac) = if client {
            (t.src, t.dst, t.src_port, t.dst_port, CLIENT_MAC, SERVER_MAC)
        } else {
            (t.dst, t.src, t.dst_port, t.src_port, SERVER_MAC, CLIENT_MAC)
        };
        let mut frame = Vec::with_capacity(size.max(64));
        frame.extend_from_slice(&dmac);
        frame.extend_from_slice(&smac);
        match t.vlan.as_slice() {
            [] => {}
            [one] => {
                frame.extend_from_slice(&0x8100u16.to_be_bytes());
                frame.extend_from_slice(&one.to_be_bytes());
            }
            [outer, inner, ..] => {
                frame.extend_from_slice(&0x88a8u16.to_be_bytes());
                frame.extend_from_slice(&outer.to_be_bytes());
                frame.extend_from_slice(&0x8100u16.to_be_bytes());
                frame.extend_from_slice(&inner.to_be_bytes());
            }
        }
        let ip = match (sa, da) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                frame.extend_from_slice(&0x0800u16.to_be_bytes());
                PacketBuilder::ipv4(s.octets(), d.octets(), 64)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                frame.extend_from_slice(&0x86ddu16.to_be_bytes());
                PacketBuilder::ipv6(s.octets(), d.octets(), 64)
            }
            _ => unreachable!("a flow's addresses share a family"),
        };
        let dir = usize::from(!client);
        let built = if self.tcp {
            let mut b = ip.tcp(sp, dp, self.seq[dir], 64_240);
            if flags.ack {
                b = b.ack(self.seq[1 - dir]);
            }
            if flags.syn {
                b = b.syn();
            }
            if flags.fin {
                b = b.fin();
            }
            if flags.rst {
                b = b.rst();
            }
            if flags.psh {
                b = b.psh();
            }
            let payload = filler(&TCP_FILL, size.saturating_sub(frame.len() + b.size(0)));
            self.seq[dir] = self.seq[dir]
                .wrapping_add(payload.len() as u32)
                .wrapping_add(u32::from(flags.syn) + u32::from(flags.fin));
            b.write(&mut frame, payload)
        } else {
            let b = ip.udp(sp, dp);
            let payload = filler(&UDP_FILL, size.saturating_sub(frame.len() + b.size(0)));
            b.write(&mut frame, payload)
        };
        built.expect("writing into a Vec does not fail");
        // Ethernet's minimum frame (without FCS) is 60 bytes: pad as a NIC would.
        if frame.len() < 60 {
            frame.resize(60, 0);
        }
        let d = if client { &mut self.truth.forward } else { &mut self.truth.reverse };
        d.add(ts, frame.len());
        Some(Frame::new(ts, frame))
    }
}

/// Generates the capture: calls `emit` with each frame in time order; returns the ground truth.
pub fn generate<E>(c: &GenConfig, mut emit: impl FnMut(Frame) -> Result<(), E>) -> Result<Truth, E> {
    let mut rng = Rng::new(c.seed);
    let mut arrival = c.start_ns;
    let mut pending = 0usize;
    let mut active: Vec<Option<FlowGen>> = Vec::new();
    let mut done: Vec<FlowTruth> = Vec::with_capacity(c.flows.min(1 << 20));
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let (mut frames, mut bytes) = (0u64, 0u64);
    loop {
        // Start every flow whose first frame comes before the earliest frame in progress.
        while pending < c.flows && heap.peek().is_none_or(|Reverse((t, _))| arrival <= *t) {
            let f = FlowGen::new(pending, c, &mut rng, arrival);
            if let Some(t) = f.next_ts() {
                heap.push(Reverse((t, active.len())));
            }
            active.push(Some(f));
            pending += 1;
            arrival += (-(1.0 - rng.unit()).ln() / c.rate * 1e9) as u64;
        }
        let Some(Reverse((_, slot))) = heap.pop() else { break };
        let flow = active[slot].as_mut().expect("a flow in the heap is active");
        let frame = flow.next_frame().expect("a flow in the heap has a frame to give");
        frames += 1;
        bytes += frame.data.len() as u64;
        emit(frame)?;
        match flow.next_ts() {
            Some(t) => heap.push(Reverse((t, slot))),
            None => done.push(active[slot].take().expect("active").truth),
        }
    }
    done.sort_by_key(|f| f.id);
    Ok(Truth { config: c.clone(), frames, bytes, flows: done })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!("imix".parse::<Sizes>(), Ok(Sizes::Imix));
        assert_eq!("64".parse::<Sizes>(), Ok(Sizes::Fixed(64)));
        assert!("20".parse::<Sizes>().is_err());
        assert!("x".parse::<Sizes>().is_err());
    }

    #[test]
    fn bad_configs_are_refused() {
        let c = GenConfig { udp_share: 1.5, ..GenConfig::default() };
        assert!(c.validate().unwrap_err().contains("udp share"));
        let c = GenConfig { rate: 0.0, ..GenConfig::default() };
        assert!(c.validate().is_err());
        let c = GenConfig { vlan_tags: 3, ..GenConfig::default() };
        assert!(c.validate().is_err());
    }

    #[test]
    fn frames_come_in_time_order_and_match_the_truth() {
        let c = GenConfig { flows: 50, packets: 6, vlan_share: 0.5, vlan_tags: 2, ..GenConfig::default() };
        let mut last = 0;
        let mut n = 0;
        let truth = generate(&c, |f| {
            assert!(f.ts_ns >= last, "time order");
            assert!(f.data.len() >= 60);
            last = f.ts_ns;
            n += 1;
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(truth.frames, n);
        assert_eq!(truth.flows.len(), 50);
        let per_flow: u64 = truth.flows.iter().map(|f| f.forward.packets + f.reverse.packets).sum();
        assert_eq!(per_flow, n);
        for f in &truth.flows {
            let want = match f.close {
                "fin" => 3 + 6 + 3,
                "rst" => 3 + 6 + 1,
                _ => 6,
            };
            assert_eq!(f.forward.packets + f.reverse.packets, want, "{f:?}");
        }
    }
}
