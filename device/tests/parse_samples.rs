//! The datapath's parser agrees with etherparse (through the traffic crate's flow accounting)
//! on every frame of every sample capture in `pcaps/`: the same 5-tuple for TCP and UDP, and a
//! miss exactly where there is none (the real capture's ICMPv6).

use opof_device::datapath::parse::parse;
use opof_proto::domain::Protocol;
use opof_traffic::capture::read_all;
use opof_traffic::flows::five_tuple;

#[test]
fn the_parser_agrees_with_etherparse_on_every_sample() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../pcaps");
    let mut frames_seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !(name.ends_with(".pcap") || name.ends_with(".pcapng")) {
            continue;
        }
        for (i, f) in read_all(&p).unwrap().iter().enumerate() {
            frames_seen += 1;
            let ours = parse(&f.data).ok().map(|p| {
                let t = p.tuple;
                let proto = if t.protocol() == Protocol::Tcp { 6 } else { 17 };
                (proto, t.src(), t.src_port(), t.dst(), t.dst_port())
            });
            assert_eq!(ours, five_tuple(&f.data), "{name}, frame {i}");
        }
    }
    assert!(frames_seen > 4000, "{frames_seen} frames");
}
