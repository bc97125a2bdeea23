//! `benches/targets.sh` with `PORTS=1`: the kernel-port target (two datapath workers against
//! one, on veth and TAP in network namespaces) measured through benches/datapath-ports.sh, as a
//! user runs it (QUICK=1, the binary under test). The figures are benchmarks' business; the test
//! checks that the part runs, gives both ratios (peaks of paced runs, drain rates) and a verdict
//! for both kinds of port, and tables them. As root only (reported as ignored with the reason otherwise; CI runs as root).

mod common;

use std::process::Command;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

fn kernel_ports_are_measured_and_tabled() -> Result<Completion, Failed> {
    if !common::is_root() {
        return Ok(Completion::ignored_with("needs root for network namespaces, veth and TAP (CI runs as root)"));
    }
    if Command::new("tcpdump").arg("--version").output().is_err() {
        return Err("benches/datapath-ports.sh needs tcpdump (.ci/run installs it)".into());
    }
    let out = Command::new("bash")
        .arg("benches/targets.sh")
        .arg("1")
        .env("QUICK", "1")
        .env("PORTS", "1")
        .env("OPOF", env!("CARGO_BIN_EXE_opof"))
        .env_remove("BENCH_EXE")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("targets.sh failed:\n{stdout}\n{stderr}").into());
    }
    for (port, kind) in [("veth", "ratio"), ("tap", "ratio"), ("veth", "drain_ratio"), ("tap", "drain_ratio")] {
        let target = format!("ports_two_workers_{kind}_{port}");
        let run: serde_json::Value = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["target"] == target.as_str())
            .ok_or_else(|| format!("no {target} line:\n{stdout}\n{stderr}"))?;
        let ratio = run["value"].as_f64().ok_or_else(|| format!("no ratio: {run}"))?;
        if !(ratio.is_finite() && ratio > 0.0) {
            return Err(format!("two workers moved no frames: {run}").into());
        }
        let verdict = run["verdict"].as_str().unwrap_or("");
        // A drain run is never limited by the generator: met or not, never "not judgeable".
        let judged = verdict == "met" || verdict == "not met";
        if !(judged || (kind == "ratio" && verdict.starts_with("not judgeable: "))) {
            return Err(format!("no verdict: {run}").into());
        }
        if run["reps"] != 1 || run["unit"] != "x" || !run["steal_s"].as_f64().is_some_and(|s| s >= 0.0) {
            return Err(format!("{run}").into());
        }
        let name = if port == "tap" { "TAP" } else { "veth" };
        let what = if kind == "ratio" { "peak" } else { "drain rate" };
        let row = format!("| kernel ports ({name}), two workers' {what} / one's | ");
        let line = stderr.lines().find(|l| l.starts_with(&row)).ok_or_else(|| format!("no row {row}:\n{stderr}"))?;
        if !line.ends_with("| n/a (QUICK) |") || line.contains("not measured") {
            return Err(format!("row: {line}").into());
        }
    }
    Ok(Completion::Completed)
}

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let trials = vec![Trial::ignorable_test(
        "targets.sh PORTS=1: two workers against one on kernel ports, measured and tabled",
        kernel_ports_are_measured_and_tabled,
    )];
    libtest_mimic::run(&args, trials).exit_code()
}
