//! `benches/targets.sh`, the one command that measures every performance target, run end to
//! end as a user runs it (QUICK=1: small sizes, on the binary under test): every part runs and
//! gives a figure, the table names each target, and bad arguments are refused with a message.
//! The figures themselves are benchmarks' business, not a test's (no bound is checked here).

use std::collections::BTreeSet;
use std::process::{Command, Output};

fn targets_sh(args: &[&str], opof: &str) -> Output {
    Command::new("bash")
        .arg("benches/targets.sh")
        .args(args)
        .env("QUICK", "1")
        .env("OPOF", opof)
        .env_remove("BENCH_EXE")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("bash runs")
}

#[test]
fn every_target_is_measured_and_tabled() {
    let out = targets_sh(&["1"], env!("CARGO_BIN_EXE_opof"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "targets.sh failed:\n{stdout}\n{stderr}");
    let mut measured = BTreeSet::new();
    for line in stdout.lines() {
        let run: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let value = run["value"].as_f64().unwrap_or_else(|| panic!("no number: {line}"));
        assert!(value.is_finite() && value >= 0.0, "{line}");
        // Rates are positive: a run that moved nothing would read 0.
        if run["unit"].as_str().is_some_and(|u| u.ends_with("/s")) {
            assert!(value > 0.0, "{line}");
        }
        assert_eq!(run["round"], 1, "{line}");
        // What the hypervisor took while the figure was measured (0 on an idle host, or bare metal).
        assert!(run["steal_s"].as_f64().is_some_and(|s| s >= 0.0), "no host steal: {line}");
        measured.insert(run["target"].as_str().expect("a target name").to_string());
    }
    // Every target but the criterion case, which QUICK leaves out without a bench executable.
    let expected = [
        "add_per_stream_10000",
        "add_per_stream_64",
        "aging_get_session_p99",
        "aging_longest_lock_hold",
        "aging_readable_after_deadline",
        "datapath_one_worker",
        "datapath_two_workers_ratio",
        "get_p99_under_add_load",
    ];
    assert_eq!(measured, expected.iter().map(|s| s.to_string()).collect());
    assert!(stderr.contains("NOT comparable"), "QUICK figures are marked as such:\n{stderr}");
    assert!(stderr.contains("| decide_batch, 1 M sessions, per frame | not measured |"), "{stderr}");
    // The kernel-port target runs only when asked (PORTS=1, as root; tests/bench_targets_ports.rs).
    for name in ["veth", "TAP"] {
        for what in ["peak", "drain rate"] {
            let row =
                format!("| kernel ports ({name}), two workers' {what} / one's | not measured (PORTS=1, as root) |");
            assert!(stderr.contains(&row), "{row}:\n{stderr}");
        }
    }
    assert!(stderr.contains("| target | median (range) | bound | host steal | met |"), "{stderr}");
    for row in [
        "| in-memory datapath, one worker | ",
        "| addSession, 64 per stream | ",
        "| getSession p99 under paced adds | ",
    ] {
        let line = stderr.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no row {row}:\n{stderr}"));
        assert!(line.ends_with("| n/a (QUICK) |"), "{line}");
    }
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let out = targets_sh(&["zero"], env!("CARGO_BIN_EXE_opof"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    let out = targets_sh(&["1"], "/nonexistent/opof");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/opof: not found"));
}
