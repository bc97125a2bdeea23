//! The `image` target in CI: a Docker image of the reference device is built from this
//! build's `opof` binary (no registry, `docker import`), started with testcontainers (mutual
//! TLS material copied in, seccomp relaxed), and the whole suite runs against it in real time.
//! Without a Docker engine the test is reported as ignored, with the reason.

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use opof_conformance::target::{TargetConfig, TargetKind};
use opof_conformance::verdict::Verdict;

const TAG: &str = "opof-device:conformance-test";

fn image_target() -> Result<Completion, Failed> {
    if let Err(e) = opof_conformance::image::docker_available() {
        return Ok(Completion::ignored_with(format!("needs a Docker engine: {e}")));
    }
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_opof"));
    let id = opof_conformance::image::build_image(bin, TAG, true).map_err(|e| Failed::from(e.to_string()))?;
    eprintln!("built {TAG} ({id})");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = TargetConfig { kind: TargetKind::Image, image: Some(TAG.into()), ..TargetConfig::default() };
    let cases = opof_conformance::cases::all();
    let report = rt
        .block_on(opof_conformance::runner::certify(config, &cases, |_, r| eprintln!("{} {}", r.id, r.verdict)))
        .map_err(|e| Failed::from(format!("starting the image target: {e}")))?;
    print!("{}", report.summary_table());
    let not_pass: Vec<String> = report
        .cases
        .iter()
        // The ACT cases certify a VNF's Activation server, not the device: SKIP here.
        .filter(|c| c.verdict != Verdict::Pass && !(c.clause.starts_with("ACT") && c.verdict == Verdict::Skip))
        .map(|c| format!("{} {}: {}", c.id, c.verdict, c.details))
        .collect();
    if !not_pass.is_empty() {
        return Err(Failed::from(not_pass.join("\n")));
    }
    if !(report.target.mutual_tls && report.target.kind == TargetKind::Image) {
        return Err(Failed::from(format!("unexpected target: {:?}", report.target)));
    }
    Ok(Completion::Completed)
}

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let trials = vec![Trial::ignorable_test("the reference device image passes every case", image_target)];
    libtest_mimic::run(&args, trials).exit_code()
}
