//! The sample captures of `pcaps/`: each generated one is exactly what its recipe in
//! `pcaps/README.md` makes, and every sample reads cleanly through the project's reader.

use std::path::Path;
use std::process::Command;

use opof_traffic::capture::read_all;
use opof_traffic::flows::FlowAccount;

/// The generated samples and the options of their recipes (as `pcaps/README.md` shows them).
const RECIPES: &[(&str, &str)] = &[
    ("mixed.pcapng", "--flows 100 --packets 8 --seed 1"),
    ("ipv6-vlan.pcap", "--flows 40 --packets 6 --ipv6-share 1 --vlan-share 1 --vlan-tags 2 --sizes 128 --seed 2"),
    ("long-flows.pcap", "--flows 10 --packets 40 --duration 300 --rate 1 --sizes 590 --seed 3"),
    ("short-flows.pcapng", "--flows 500 --packets 2 --duration 0.01 --rate 1000 --sizes 64 --udp-share 0.5 --seed 4"),
];

fn pcaps() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/pcaps"))
}

#[test]
fn generated_samples_are_exactly_what_their_recipes_make() {
    let readme = std::fs::read_to_string(pcaps().join("README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (file, args) in RECIPES {
        assert!(
            readme.contains(&format!("opof gen --out pcaps/{file} {args}")),
            "pcaps/README.md shows the recipe of {file}"
        );
        let out = dir.path().join(file);
        let status = Command::new(env!("CARGO_BIN_EXE_opof"))
            .args(["gen", "--out"])
            .arg(&out)
            .args(args.split_whitespace())
            .status()
            .unwrap();
        assert!(status.success());
        for suffix in ["", ".truth.json"] {
            let made = std::fs::read(format!("{}{suffix}", out.display())).unwrap();
            let kept = std::fs::read(pcaps().join(format!("{file}{suffix}"))).unwrap();
            assert!(made == kept, "{file}{suffix} differs from what its recipe makes");
        }
    }
}

#[test]
fn every_sample_reads_cleanly() {
    for entry in std::fs::read_dir(pcaps()).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !(name.ends_with(".pcap") || name.ends_with(".pcapng")) {
            continue;
        }
        let frames = read_all(&p).unwrap_or_else(|e| panic!("{e}"));
        assert!(!frames.is_empty(), "{name}");
        let mut acc = FlowAccount::default();
        frames.iter().for_each(|f| acc.add(f));
        if name == "real-http-dns.pcap" {
            // DNS over UDP (3 exchanges) and TCP, HTTP over IPv4 and IPv6, and ICMPv6.
            assert!(acc.flows.len() >= 5, "{name}: {} flows", acc.flows.len());
            assert!(acc.other > 0, "{name}: neighbour discovery frames expected");
            assert!(frames.iter().all(|f| f.data.len() <= 1514), "{name}: frames as on a wire");
        } else {
            assert_eq!(acc.other, 0, "{name}");
        }
    }
}
