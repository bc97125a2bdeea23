//! Steering by shard: which worker a flow's frames go to, chosen by the same hash that places
//! its session in a shard of the table.
//!
//! A device with N workers keeps its sessions in N shards, each behind its own lock. The kernel
//! spreads a port's frames over the workers by flow; when that spread is unrelated to the
//! shards, each worker's batch holds packets of every shard, takes every shard's lock and is
//! looked up in as many runs (the tenth session measured 6.7 % of one worker's rate for a batch
//! split in two). With steering, the kernel computes the shard itself: the AF_PACKET sockets
//! of a port join their fanout group in `PACKET_FANOUT_CBPF` mode with the classic BPF program
//! [`SteerKeys::fanout_program`], which returns the shard of the frame's flow, so that the
//! socket at index k of the group (worker k) receives the flows of shard k and its batches
//! take one lock and one run — what a NIC's RSS indirection table does for the per-core
//! tables of DPDK or VPP. A multi-queue TAP gets the same program translated to eBPF
//! ([`SteerKeys::tap_program`]) as its queue selection (`TUNSETSTEERINGEBPF`).
//!
//! The hash is the device's choice of shard ([`crate::table::shards::ShardMap`]), so it must be
//! computable by a classic BPF program (32-bit words, multiply, xor, shifts) and give the same
//! value for both directions of a flow. Per endpoint (address words in network order, then the
//! port), `h = start; h = (h ^ w) * word` for each 32-bit word of the address, `h = (h ^ port) *
//! port_key; h ^= h >> 16`; the flow's value is `x = (src ^ dst) * finish; x ^ (x >> 16)`, and its
//! shard `x mod shards` (the shards are a power of two). The four multipliers are random and
//! odd, drawn per device, so crafted traffic cannot aim at one shard without knowing them.
//! Ports are those of TCP and UDP; for other protocols and for IPv4 fragments (the first one
//! too, so that all of a packet's fragments reach one worker) they count as 0 in the kernel's
//! program (the datapath looks up neither: they take the miss path whatever their shard).
//!
//! Steering is a matter of speed, never of correctness: each worker still finds each packet's
//! shard itself, so a frame steered elsewhere (an IPv6 packet with extension headers, a second
//! VLAN tag, a fanout group whose sockets re-joined in another order after an interface came
//! back) costs a batch split in two, as without steering, and a flow's frames still go to one
//! worker (the program is a function of the frame's addresses and ports).

use opof_proto::domain::FiveTuple;

/// How a device's ports spread flows over its workers (`opof device --steer`, `opof bench
/// datapath --steer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spread {
    /// Each flow to the worker of the shard holding its session (this module).
    #[default]
    Shard,
    /// By the kernel's own flow hash, unrelated to the shards.
    Kernel,
}

impl std::str::FromStr for Spread {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shard" => Ok(Spread::Shard),
            "kernel" => Ok(Spread::Kernel),
            _ => Err(format!("{s:?}: expected shard or kernel")),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Spread::Shard => "shard",
            Spread::Kernel => "kernel",
        })
    }
}

/// The random multipliers of the steering hash (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteerKeys {
    start: u32,
    word: u32,
    port: u32,
    finish: u32,
}

impl SteerKeys {
    /// Fresh random keys (odd, so no multiply loses bits).
    pub fn random() -> Self {
        use std::hash::BuildHasher;
        let r = std::collections::hash_map::RandomState::new();
        let k = |i: u32| (r.hash_one(i) as u32) | 1;
        SteerKeys { start: k(0), word: k(1), port: k(2), finish: k(3) }
    }

    /// Keys given (tests).
    #[cfg(test)]
    pub fn new(start: u32, word: u32, port: u32, finish: u32) -> Self {
        SteerKeys { start, word: word | 1, port: port | 1, finish: finish | 1 }
    }

    /// One endpoint: its address as 32-bit words in network order, and its port.
    #[inline(always)]
    pub fn endpoint<const N: usize>(&self, words: [u32; N], port: u16) -> u32 {
        let mut h = self.start;
        for w in words {
            h = (h ^ w).wrapping_mul(self.word);
        }
        h = (h ^ u32::from(port)).wrapping_mul(self.port);
        h ^ (h >> 16)
    }

    /// A flow's value from its endpoints' (the same either way round).
    #[inline(always)]
    pub fn finish(&self, a: u32, b: u32) -> u32 {
        let x = (a ^ b).wrapping_mul(self.finish);
        x ^ (x >> 16)
    }

    /// A 5-tuple's value (what the table computes for the session's shard).
    pub fn tuple(&self, t: &FiveTuple) -> u32 {
        crate::table::steer_value(t, self)
    }

    /// The classic BPF program of a `PACKET_FANOUT_CBPF` group of `members` sockets: the
    /// frame's flow value modulo `members` (the kernel takes that socket of the group). It
    /// reads the network header where the kernel's receive path put it (after any VLAN tag the
    /// kernel took off), and sends frames that are neither IPv4 nor IPv6 to the first socket.
    pub fn fanout_program(&self, members: u32) -> Vec<libc::sock_filter> {
        let mut a = Asm::default();
        let members = members.max(1);
        a.op(LD | W | ABS, PROTOCOL);
        a.jeq(0x0800, "v4", "not_v4");
        a.label("not_v4");
        a.jeq(0x86dd, "v6", "other");

        a.label("v4");
        tcp_or_udp(&mut a, NET + 9, "v4_l4", "v4_addrs");
        a.label("v4_l4");
        a.op(LD | H | ABS, NET + 6);
        // Any fragment, the first too, by its addresses alone: all of a packet's fragments
        // then reach one worker (the kernel's own flow hash does the same).
        a.jset(0x3fff, "v4_addrs", "v4_ports");
        a.label("v4_ports");
        a.op(LD | B | ABS, NET);
        a.op(ALU | AND | K, 0xf);
        a.op(ALU | LSH | K, 2);
        a.op(MISC | TAX, 0);
        ports(&mut a, LD | H | IND, NET);
        a.label("v4_addrs");
        self.endpoint_asm(&mut a, &[NET + 12], SRC_PORT);
        a.op(ST, SRC);
        self.endpoint_asm(&mut a, &[NET + 16], DST_PORT);
        a.ja("finish");

        a.label("v6");
        tcp_or_udp(&mut a, NET + 6, "v6_ports", "v6_addrs");
        a.label("v6_ports");
        ports(&mut a, LD | H | ABS, NET + 40);
        a.label("v6_addrs");
        self.endpoint_asm(&mut a, &[NET + 8, NET + 12, NET + 16, NET + 20], SRC_PORT);
        a.op(ST, SRC);
        self.endpoint_asm(&mut a, &[NET + 24, NET + 28, NET + 32, NET + 36], DST_PORT);

        // A holds the destination endpoint's value, scratch SRC the source's.
        a.label("finish");
        a.op(LDX | MEM, SRC);
        a.op(ALU | XOR | X, 0);
        a.op(ALU | MUL | K, self.finish);
        a.op(MISC | TAX, 0);
        a.op(ALU | RSH | K, 16);
        a.op(ALU | XOR | X, 0);
        a.op(ALU | MOD | K, members);
        a.op(RET | RET_A, 0);

        a.label("other");
        a.op(RET | K, 0);
        a.finish()
    }

    /// The same program for a multi-queue TAP's queue selection (`TUNSETSTEERINGEBPF`: an eBPF
    /// socket-filter program whose result, modulo the queues, is the queue a frame the host sends
    /// into the TAP is put on): [`SteerKeys::fanout_program`] translated to eBPF, instruction by
    /// instruction, skb->protocol read from the program's context; each instruction as the
    /// little-endian word the kernel reads (see `EbpfInsn::encode`).
    pub fn tap_program(&self, queues: u32) -> Vec<u64> {
        to_ebpf(&self.fanout_program(queues)).into_iter().map(EbpfInsn::encode).collect()
    }

    /// `A = endpoint(words at those offsets, port in scratch word port)`.
    fn endpoint_asm(&self, a: &mut Asm, words: &[u32], port: u32) {
        for (i, &at) in words.iter().enumerate() {
            if i > 0 {
                a.op(MISC | TAX, 0);
            }
            a.op(LD | W | ABS, at);
            if i == 0 {
                a.op(ALU | XOR | K, self.start);
            } else {
                a.op(ALU | XOR | X, 0);
            }
            a.op(ALU | MUL | K, self.word);
        }
        a.op(MISC | TAX, 0);
        a.op(LD | MEM, port);
        a.op(ALU | XOR | X, 0);
        a.op(ALU | MUL | K, self.port);
        a.op(MISC | TAX, 0);
        a.op(ALU | RSH | K, 16);
        a.op(ALU | XOR | X, 0);
    }
}

/// An IPv6 address as four 32-bit words in network order (as a BPF program loads them).
#[inline(always)]
pub fn be_words(a: [u8; 16]) -> [u32; 4] {
    let x = u128::from_be_bytes(a);
    [(x >> 96) as u32, (x >> 64) as u32, (x >> 32) as u32, x as u32]
}

/// The network header's bytes in a classic BPF load (the kernel's negative offset for them).
const NET: u32 = (-0x0010_0000i32) as u32;
/// The program's scratch words: the two ports, the source endpoint's value.
const SRC_PORT: u32 = 0;
const DST_PORT: u32 = 1;
const SRC: u32 = 2;

/// Both ports 0, then to `yes` when the IP protocol byte at `at` is TCP or UDP, else to `no`.
fn tcp_or_udp(a: &mut Asm, at: u32, yes: &'static str, no: &'static str) {
    a.op(LD | IMM, 0);
    a.op(ST, SRC_PORT);
    a.op(ST, DST_PORT);
    a.op(LD | B | ABS, at);
    a.jeq(6, yes, NEXT);
    a.jeq(17, yes, no);
}

/// The two ports (16 bits each, source first) loaded with `load` from `at` into scratch.
fn ports(a: &mut Asm, load: u16, at: u32) {
    a.op(load, at);
    a.op(ST, SRC_PORT);
    a.op(load, at + 2);
    a.op(ST, DST_PORT);
}

/// The classic BPF ancillary word holding skb->protocol (`SKF_AD_OFF + SKF_AD_PROTOCOL`).
const PROTOCOL: u32 = (-0x1000i32) as u32;

// Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const IMM: u16 = 0x00;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const MUL: u16 = 0x20;
const AND: u16 = 0x50;
const LSH: u16 = 0x60;
const RSH: u16 = 0x70;
const MOD: u16 = 0x90;
const XOR: u16 = 0xa0;
const JA: u16 = 0x00;
const JEQ: u16 = 0x10;
const JSET: u16 = 0x40;
const K: u16 = 0x00;
const X: u16 = 0x08;
const RET_A: u16 = 0x10;
const TAX: u16 = 0x00;

/// The label of the instruction after a jump (its way on without jumping).
const NEXT: &str = "";

/// A classic BPF program being written, with forward jumps to named labels.
#[derive(Default)]
struct Asm {
    code: Vec<libc::sock_filter>,
    labels: Vec<(&'static str, usize)>,
    /// Jumps to fix: (instruction, target of jt or of `ja`, target of jf).
    jumps: Vec<(usize, &'static str, Option<&'static str>)>,
}

impl Asm {
    fn op(&mut self, code: u16, k: u32) {
        self.code.push(libc::sock_filter { code, jt: 0, jf: 0, k });
    }
    fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.code.len()));
    }
    fn jeq(&mut self, k: u32, yes: &'static str, no: &'static str) {
        self.jumps.push((self.code.len(), yes, Some(no)));
        self.op(JMP | JEQ | K, k);
    }
    fn jset(&mut self, k: u32, yes: &'static str, no: &'static str) {
        self.jumps.push((self.code.len(), yes, Some(no)));
        self.op(JMP | JSET | K, k);
    }
    fn ja(&mut self, to: &'static str) {
        self.jumps.push((self.code.len(), to, None));
        self.op(JMP | JA, 0);
    }
    /// The program, its jumps resolved (all forward: classic BPF has no other kind).
    fn finish(mut self) -> Vec<libc::sock_filter> {
        let labels = &self.labels;
        for &(i, yes, no) in &self.jumps {
            let at = |name: &str| match name {
                NEXT => i + 1,
                _ => labels.iter().find(|(n, _)| *n == name).map(|&(_, at)| at).expect("a label defined"),
            };
            let offset = |to: usize| to.checked_sub(i + 1).expect("a forward jump");
            match no {
                None => self.code[i].k = offset(at(yes)) as u32,
                Some(no) => {
                    self.code[i].jt = u8::try_from(offset(at(yes))).expect("a short jump");
                    self.code[i].jf = u8::try_from(offset(at(no))).expect("a short jump");
                }
            }
        }
        self.code
    }
}

/// One eBPF instruction (linux/bpf.h `struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EbpfInsn {
    code: u8,
    /// Destination register in the low nibble, source in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

/// The classic program's registers in eBPF: A in R0 (the result), X in R7, the context (the
/// socket buffer) in R6 as the legacy packet loads want it, scratch word k on the stack.
const R_A: u8 = 0;
const R_X: u8 = 7;
const R_CTX: u8 = 6;
const R_FP: u8 = 10;

impl EbpfInsn {
    /// As the kernel reads it from memory (on a little-endian machine, the struct's bytes).
    fn encode(self) -> u64 {
        let [o0, o1] = self.off.to_le_bytes();
        let [i0, i1, i2, i3] = self.imm.to_le_bytes();
        u64::from_le_bytes([self.code, self.regs, o0, o1, i0, i1, i2, i3])
    }
}

fn ebpf(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> EbpfInsn {
    EbpfInsn { code, regs: dst | src << 4, off, imm }
}

/// Translates the classic programs of this module (the subset [`Asm`] writes) to eBPF.
fn to_ebpf(prog: &[libc::sock_filter]) -> Vec<EbpfInsn> {
    const ALU64: u8 = 0x07;
    const MOV: u8 = 0xb0;
    const END_TO_BE: u8 = 0xd8;
    const EXIT: u8 = 0x90;
    let scratch = |k: u32| -4 * (k as i16 + 1);
    // Each classic instruction's eBPF instructions; jumps are fixed up afterwards.
    let mut out: Vec<EbpfInsn> = vec![
        ebpf(ALU64 | MOV | X as u8, R_CTX, 1, 0, 0),
        ebpf(ALU as u8 | MOV, R_X, 0, 0, 0),
        ebpf(ALU as u8 | MOV, R_A, 0, 0, 0),
    ];
    let mut start = Vec::with_capacity(prog.len() + 1);
    // (eBPF position, classic target) of each jump to fix.
    let mut fix: Vec<(usize, usize)> = Vec::new();
    for (i, f) in prog.iter().enumerate() {
        start.push(out.len());
        let (code, k) = (f.code, f.k);
        match code & 0x07 {
            LD if code == LD | W | ABS && k == PROTOCOL => {
                // skb->protocol is the fifth word of the context (struct __sk_buff), in
                // network order: to host order as the ancillary load gives it.
                out.push(ebpf(LDX as u8 | MEM as u8, R_A, R_CTX, 16, 0));
                out.push(ebpf(ALU as u8 | END_TO_BE, R_A, 0, 0, 16));
            }
            LD => match code & 0xe0 {
                ABS => out.push(ebpf(code as u8, 0, 0, 0, k as i32)),
                IND => out.push(ebpf(code as u8, 0, R_X, 0, k as i32)),
                IMM => out.push(ebpf(ALU as u8 | MOV, R_A, 0, 0, k as i32)),
                MEM => out.push(ebpf(LDX as u8 | MEM as u8, R_A, R_FP, scratch(k), 0)),
                _ => unreachable!("a load this module does not write"),
            },
            LDX => out.push(ebpf(LDX as u8 | MEM as u8, R_X, R_FP, scratch(k), 0)),
            ST => out.push(ebpf(0x03 | MEM as u8, R_FP, R_A, scratch(k), 0)),
            ALU if code & X != 0 => out.push(ebpf(code as u8, R_A, R_X, 0, 0)),
            ALU => out.push(ebpf(code as u8, R_A, 0, 0, k as i32)),
            MISC if code == MISC | TAX => out.push(ebpf(ALU as u8 | MOV | X as u8, R_X, R_A, 0, 0)),
            JMP if code == JMP | JA => {
                fix.push((out.len(), i + 1 + k as usize));
                out.push(ebpf(JMP as u8, 0, 0, 0, 0));
            }
            JMP => {
                fix.push((out.len(), i + 1 + usize::from(f.jt)));
                out.push(ebpf(code as u8, R_A, 0, 0, k as i32));
                if f.jf != 0 {
                    fix.push((out.len(), i + 1 + usize::from(f.jf)));
                    out.push(ebpf(JMP as u8, 0, 0, 0, 0));
                }
            }
            RET => {
                if code & RET_A == 0 {
                    out.push(ebpf(ALU as u8 | MOV, R_A, 0, 0, k as i32));
                }
                out.push(ebpf(JMP as u8 | EXIT, 0, 0, 0, 0));
            }
            _ => unreachable!("an instruction class this module does not write"),
        }
    }
    start.push(out.len());
    for (at, target) in fix {
        out[at].off = i16::try_from(start[target] as isize - at as isize - 1).expect("a short jump");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Both directions of a flow steer alike.
        #[test]
        fn the_same_both_ways(keys in any::<[u32; 4]>(), a in any::<[u8; 16]>(), b in any::<[u8; 16]>(), p in any::<u16>(), q in any::<u16>()) {
            use opof_proto::domain::Protocol;
            use std::net::IpAddr;
            let k = SteerKeys::new(keys[0], keys[1], keys[2], keys[3]);
            let (a4, b4): (IpAddr, IpAddr) = ([a[0], a[1], a[2], a[3]].into(), [b[0], b[1], b[2], b[3]].into());
            let (a6, b6): (IpAddr, IpAddr) = (a.into(), b.into());
            for (x, y) in [(a4, b4), (a6, b6)] {
                let there = FiveTuple::new(Protocol::Udp, x, p, y, q).unwrap();
                let back = FiveTuple::new(Protocol::Udp, y, q, x, p).unwrap();
                prop_assert_eq!(k.tuple(&there), k.tuple(&back));
            }
        }
    }

    /// The table places a session in the shard its steering value names (what the kernel's
    /// program computes), for both families and both directions.
    #[test]
    fn the_table_places_sessions_by_the_steering_value() {
        use opof_proto::domain::Protocol;
        let map = crate::table::shards::ShardMap::new(4);
        let k = map.steering();
        let mut shards = [0usize; 4];
        for i in 0..256u16 {
            let (a, b): (std::net::IpAddr, std::net::IpAddr) = if i % 2 == 0 {
                ([10, 0, (i >> 8) as u8, i as u8].into(), [192, 0, 2, 1].into())
            } else {
                (format!("2001:db8::{i:x}").parse().unwrap(), "2001:db8::1".parse().unwrap())
            };
            let t = FiveTuple::new(Protocol::Tcp, a, 2000 + i, b, 80).unwrap();
            let back = FiveTuple::new(Protocol::Tcp, b, 80, a, 2000 + i).unwrap();
            assert_eq!(map.of(&t), k.tuple(&t) as usize % 4, "{t}");
            assert_eq!(map.of(&back), map.of(&t), "{t}");
            shards[map.of(&t)] += 1;
        }
        assert!(shards.iter().all(|&n| n > 0), "{shards:?}");
    }

    /// Flows spread evenly over shards: 64 k random flows into 2, 4 and 64 shards, each shard
    /// within five standard deviations of its share (a fair spread misses that about once in
    /// 25,000 runs; the keys are random, so every run tries others).
    #[test]
    fn flows_spread_evenly() {
        let k = SteerKeys::random();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for shards in [2usize, 4, 64] {
            let mut count = vec![0usize; shards];
            let n = 65_536;
            for _ in 0..n {
                let (r, s) = (next(), next());
                let (a, b) = ((r as u32).to_be_bytes(), (s as u32).to_be_bytes());
                let t = FiveTuple::new(opof_proto::domain::Protocol::Tcp, a.into(), (r >> 32) as u16, b.into(), 80)
                    .unwrap();
                let v = k.tuple(&t);
                count[v as usize % shards] += 1;
            }
            let share = n / shards;
            let bound = 5.0 * (share as f64).sqrt();
            assert!(count.iter().all(|&c| (c.abs_diff(share) as f64) <= bound), "{shards} shards: {count:?}");
        }
    }

    /// The program's jumps all land inside it and it ends in returns (what the kernel's
    /// checker asks; the kernel itself runs it in tests/datapath_ports.rs).
    #[test]
    fn the_program_is_well_formed() {
        let prog = SteerKeys::random().fanout_program(2);
        assert!(prog.len() < 4096);
        for (i, f) in prog.iter().enumerate() {
            if f.code & 0x07 == JMP {
                let targets =
                    if f.code == JMP | JA { vec![f.k as usize] } else { vec![usize::from(f.jt), usize::from(f.jf)] };
                assert!(targets.iter().all(|t| i + 1 + t < prog.len()), "jump at {i} out of the program");
            }
        }
        assert_eq!(prog.last().expect("instructions").code & 0x07, RET);
    }

    /// The kernel runs the program and computes what the table computes. Two UDP sockets of one
    /// `SO_REUSEPORT` group on loopback, the program attached (`SO_ATTACH_REUSEPORT_CBPF`, no
    /// root needed: the program sees the datagram's IP header at the network offset, so a
    /// datagram is a flow whose ports are its UDP ports); datagrams from 64 source ports each
    /// reach the socket `steer(flow) mod 2`, over IPv4 and over IPv6.
    #[test]
    fn the_kernel_runs_the_program_as_the_table_hashes() {
        use std::net::{SocketAddr, UdpSocket};
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let local: SocketAddr = local.parse().unwrap();
            let keys = SteerKeys::random();
            let reuse = |at: SocketAddr| {
                let family = if at.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
                let s = socket2_like(family);
                let one: i32 = 1;
                // SAFETY: an int option that lives across the call, on a socket owned here.
                let r = unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&s),
                        libc::SOL_SOCKET,
                        libc::SO_REUSEPORT,
                        &one as *const i32 as *const libc::c_void,
                        4,
                    )
                };
                assert_eq!(r, 0, "SO_REUSEPORT");
                let s = UdpSocket::from(s);
                bind(&s, at);
                s
            };
            let first = reuse(local);
            let group = first.local_addr().unwrap();
            let second = reuse(group);
            opof_traffic::port::attach_reuseport_program(&first, &keys.fanout_program(2))
                .expect("the kernel accepts the program");
            let members = [first, second];
            for m in &members {
                m.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
            }
            let mut want = Vec::new();
            for i in 0..64u8 {
                let client = UdpSocket::bind(SocketAddr::new(local.ip(), 0)).unwrap();
                client.send_to(&[i], group).unwrap();
                let sport = client.local_addr().unwrap().port();
                let flow =
                    FiveTuple::new(opof_proto::domain::Protocol::Udp, local.ip(), sport, group.ip(), group.port())
                        .unwrap();
                want.push(keys.tuple(&flow) as usize % 2);
            }
            let mut got = [None; 64];
            for (k, m) in members.iter().enumerate() {
                let mut buf = [0u8; 4];
                while let Ok((1, _)) = m.recv_from(&mut buf) {
                    got[usize::from(buf[0])] = Some(k);
                }
            }
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    *g,
                    Some(*w),
                    "datagram {i} over {local}: received by socket {g:?}, the table's shard is {w}"
                );
            }
            assert!(want.contains(&0) && want.contains(&1), "64 flows all in one shard");
        }
    }

    fn socket2_like(family: i32) -> std::os::fd::OwnedFd {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) with constant arguments; the descriptor is owned from here on.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "UDP socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd was just returned by socket and is owned here.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    }

    fn bind(s: &std::net::UdpSocket, at: std::net::SocketAddr) {
        use std::os::fd::AsRawFd;
        let r = match at {
            std::net::SocketAddr::V4(a) => {
                // SAFETY: sockaddr_in is plain data; zeroed is valid.
                let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_port = a.port().to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                // SAFETY: the address points to a sockaddr_in of the size given.
                unsafe {
                    libc::bind(
                        s.as_raw_fd(),
                        &sa as *const _ as *const libc::sockaddr,
                        std::mem::size_of_val(&sa) as u32,
                    )
                }
            }
            std::net::SocketAddr::V6(a) => {
                // SAFETY: sockaddr_in6 is plain data; zeroed is valid.
                let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_port = a.port().to_be();
                sa.sin6_addr.s6_addr = a.ip().octets();
                // SAFETY: the address points to a sockaddr_in6 of the size given.
                unsafe {
                    libc::bind(
                        s.as_raw_fd(),
                        &sa as *const _ as *const libc::sockaddr,
                        std::mem::size_of_val(&sa) as u32,
                    )
                }
            }
        };
        assert_eq!(r, 0, "bind {at}: {}", std::io::Error::last_os_error());
    }
}
