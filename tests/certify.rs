//! `opof certify` as a user runs it against a separate `opof device` process (the endpoint
//! target, real time): over mutual TLS on the v2 paths it certifies; with a device told to
//! imitate a defect, the flavour detected by its paths, it does not, names the case, and exits 1.

mod common;

use std::process::Child;

use common::{opof, start_device};

/// A device process, killed when dropped (also when a test fails half way).
struct Device(Child);

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `opof device` (capacity 4,096, short timeouts) with these extra options.
fn device(extra: &[&str]) -> (Device, String) {
    let mut args = vec!["--capacity", "4096"];
    args.extend_from_slice(extra);
    start(&args)
}

/// Starts `opof device` with short timeouts and these options.
fn start(extra: &[&str]) -> (Device, String) {
    let mut args = vec!["--tcp-timeout", "2", "--udp-timeout", "1"];
    args.extend_from_slice(extra);
    let (d, port, lines) = start_device(&args);
    // Keep reading its log so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (Device(d), port)
}

fn certify(args: &[&str], out: &std::path::Path) -> (std::process::ExitStatus, serde_json::Value, String) {
    let (status, report, stdout, _) = certify_as(args, &["--capacity", "4096"], out);
    (status, report, stdout)
}

/// `opof certify` with the devices' short timeouts stated, `capacity` options as given; also
/// returns its standard error.
fn certify_as(
    args: &[&str],
    capacity: &[&str],
    out: &std::path::Path,
) -> (std::process::ExitStatus, serde_json::Value, String, String) {
    let o = opof()
        .arg("certify")
        .args(args)
        .args(capacity)
        .args(["--tcp-timeout", "2", "--udp-timeout", "1", "--out"])
        .arg(out)
        .env_remove("OPOF_TARGET")
        .env_remove("OPOF_CAPACITY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    let report = std::fs::read_to_string(out.join("report.json")).expect("report.json written");
    for f in ["junit.xml", "report.md", "report.html"] {
        assert!(out.join(f).exists(), "{f} written");
    }
    (o.status, serde_json::from_str(&report).unwrap(), stdout, stderr)
}

/// TLS material made by `opof certs` in `dir/tls`.
fn certs(dir: &std::path::Path) -> std::path::PathBuf {
    let tls = dir.join("tls");
    assert!(opof().args(["certs", "--out"]).arg(&tls).status().unwrap().success());
    tls
}

fn verdicts(report: &serde_json::Value) -> Vec<(String, String)> {
    report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_string(), c["verdict"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn an_endpoint_over_mutual_tls_on_v2_paths_is_certified() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certs(dir.path());
    let (d, port) = device(&["--tls-dir", tls.to_str().unwrap()]);
    let endpoint = format!("localhost:{port}");
    let out = dir.path().join("report");
    let (status, report, stdout) =
        certify(&["--endpoint", &endpoint, "--api", "v2", "--tls-dir", tls.to_str().unwrap()], &out);
    drop(d);
    let v = verdicts(&report);
    // The ACT cases certify a VNF's Activation server, which this run does not name; the DP and
    // TMO-4 cases need traffic access to the device's ports, which it does not give (see
    // tests/certify_ports.rs); SIM runs on the embedded target only. Each of those is SKIP with
    // its reason; everything else passes.
    let skipped_for = |c: &serde_json::Value| -> Option<&'static str> {
        let (id, clause) = (c["id"].as_str().unwrap(), c["clause"].as_str().unwrap());
        match () {
            _ if id.starts_with("ACT-") => Some("OPOF_ACTIVATION_ENDPOINT"),
            _ if id.starts_with("DP-") || clause == "TMO-4" => Some("no traffic access"),
            _ if id.starts_with("SIM-") => Some("embedded target only"),
            _ => None,
        }
    };
    let not_pass: Vec<_> = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| match skipped_for(c) {
            Some(reason) => c["verdict"] != "SKIP" || !c["details"].as_str().unwrap().contains(reason),
            None => c["verdict"] != "PASS",
        })
        .map(|c| format!("{} {} {}", c["id"], c["verdict"], c["details"]))
        .collect();
    assert!(not_pass.is_empty(), "{not_pass:?}\n{stdout}");
    let act: Vec<_> = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["clause"].as_str().unwrap().starts_with("ACT"))
        .collect();
    assert_eq!(act.len(), 4);
    for c in act {
        assert_eq!(c["verdict"], "SKIP");
        assert!(c["details"].as_str().unwrap().contains("OPOF_ACTIVATION_ENDPOINT"), "{c}");
    }
    assert_eq!(v.len(), opof_conformance::cases::all().len());
    assert!(status.success(), "{stdout}");
    assert_eq!(report["target"]["flavour"], "v2");
    assert_eq!(report["target"]["mutual_tls"], true);
    assert_eq!(report["target"]["virtual_time"], false);
    assert!(stdout.contains("CERTIFIED"), "{stdout}");
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("failures=\"0\"") && junit.contains("CONN-4.1"), "{junit}");
}

#[test]
fn a_defective_endpoint_is_not_certified_and_the_case_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (d, port) = device(&["--fault", "page-size-ignored"]);
    let endpoint = format!("127.0.0.1:{port}");
    let out = dir.path().join("report");
    // The ALL family only: the defect is in getAllSessions; the flavour is detected.
    let (status, report, stdout) = certify(&["--endpoint", &endpoint, "--api", "auto", "--case", "ALL"], &out);
    drop(d);
    assert_eq!(status.code(), Some(1), "{stdout}");
    let v = verdicts(&report);
    let failed: Vec<_> = v.iter().filter(|(_, verdict)| verdict == "FAIL").map(|(id, _)| id.as_str()).collect();
    assert_eq!(failed, ["ALL-3.1"], "{stdout}");
    assert_eq!(v.len(), 5);
    assert_eq!(report["target"]["flavour"], "v1");
    // A selection of the suite never says CERTIFIED, and says what it found.
    assert!(stdout.contains("5 cases run: 1 FAIL, 0 ERROR") && !stdout.contains("CERTIFIED"), "{stdout}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("### ALL-3.1") && md.contains("**FAIL**"), "{md}");
}

/// A run that cannot reach its target stops with one ERROR that says why (exit status 3), and
/// still writes its reports, so that CI shows the reason.
fn unreachable(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let (status, report, stdout) = certify(args, &out);
    assert_eq!(status.code(), Some(3), "{stdout}");
    let v = verdicts(&report);
    assert_eq!(v, [("CONN-1.1".to_string(), "ERROR".to_string())], "{stdout}");
    assert!(report["target"]["served_flavours"].as_array().unwrap().is_empty());
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("errors=\"1\"") && junit.contains("<error message="), "{junit}");
    assert!(stdout.contains("NOT CERTIFIED"), "{stdout}");
    report["cases"][0]["details"].as_str().unwrap().to_string()
}

#[test]
fn a_target_that_cannot_be_reached_is_a_clear_error() {
    let why = unreachable(&["--endpoint", "127.0.0.1:1"]);
    assert!(why.contains("cannot reach 127.0.0.1:1") && why.contains("nothing answers"), "{why}");
}

#[test]
fn plaintext_against_a_tls_endpoint_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certs(dir.path());
    let (_d, port) = device(&["--tls-dir", tls.to_str().unwrap()]);
    let why = unreachable(&["--endpoint", &format!("localhost:{port}")]);
    assert!(why.contains("speaks TLS and the run connected in plaintext"), "{why}");
    assert!(why.contains("client certificate"), "mutual TLS is named too: {why}");
}

#[test]
fn tls_against_a_plaintext_endpoint_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certs(dir.path());
    let (_d, port) = device(&[]);
    let why = unreachable(&["--endpoint", &format!("localhost:{port}"), "--tls-dir", tls.to_str().unwrap()]);
    assert!(why.contains("does not speak TLS"), "{why}");
}

#[test]
fn a_server_that_requires_a_client_certificate_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certs(dir.path());
    let (_d, port) = device(&["--tls-dir", tls.to_str().unwrap()]);
    let ca = tls.join("ca.pem");
    let why = unreachable(&["--endpoint", &format!("localhost:{port}"), "--ca", ca.to_str().unwrap()]);
    assert!(why.contains("requires a client certificate"), "{why}");
}

/// The field's servers ship a self-signed certificate without subjectAltName (`openssl req
/// -x509` with a Common Name only): the reason is given in words, with how to make one that
/// works.
#[test]
fn a_certificate_without_subject_alt_name_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match made {
        Ok(o) if o.status.success() => {}
        other => panic!("openssl (Debian's package, installed by .ci/run) could not make a certificate: {other:?}"),
    }
    let (_d, port) = device(&["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    let why = unreachable(&["--endpoint", &format!("localhost:{port}"), "--ca", cert.to_str().unwrap()]);
    assert!(why.contains("subjectAltName") && why.contains("opof certs"), "{why}");
}

/// A device of capacity 1,000 that never sets requestStatus (it reports refusals in errorStatus
/// and responseError only), its capacity not stated: the suite learns 1,000 by filling, and the
/// defect is FAIL under ADD-11 and ADD-12 only (the clauses about requestStatus), nowhere else.
#[test]
fn a_device_that_never_sets_request_status_is_measured_and_failed_only_there() {
    let dir = tempfile::tempdir().unwrap();
    let (d, port) = start(&["--capacity", "1000", "--fault", "request-status-never-set"]);
    let out = dir.path().join("report");
    let started = std::time::Instant::now();
    let (status, report, stdout, _) = certify_as(&["--endpoint", &format!("127.0.0.1:{port}")], &[], &out);
    eprintln!("the run took {:.1} s", started.elapsed().as_secs_f64());
    drop(d);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert_eq!(report["target"]["capacity"], 1000, "{stdout}");
    assert_eq!(report["target"]["capacity_learned"], true);
    let v = verdicts(&report);
    let bad: Vec<&str> =
        v.iter().filter(|(_, verdict)| verdict == "FAIL" || verdict == "ERROR").map(|(id, _)| id.as_str()).collect();
    assert_eq!(bad, ["ADD-11.1", "ADD-11.2", "ADD-12.1"], "{stdout}");
    for id in ["ADD-12.1", "CLS-5.1", "LOAD-1.1", "ADD-1.4"] {
        let c = report["cases"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap();
        assert_ne!(c["verdict"], "SKIP", "{id}: {c}");
    }
    // No TLS material was given: the verdict says the TLS cases did not run.
    assert!(report["verdict"].as_str().unwrap().contains("TLS not checked"), "{}", report["verdict"]);
}

/// A device process that dies in the middle of a run (it exits on a large getClosedSessions
/// page): one line names the case, that case and every later one are ERROR with the reason.
#[test]
fn an_endpoint_that_dies_mid_run_is_named_once_and_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (d, port) = start(&["--capacity", "100", "--fault", "crash-on-large-page"]);
    let out = dir.path().join("report");
    let (status, report, stdout, stderr) = certify_as(
        &["--endpoint", &format!("127.0.0.1:{port}"), "--case", "CLS", "--case", "TMO-1"],
        &["--capacity", "100"],
        &out,
    );
    drop(d);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert_eq!(stderr.matches("the endpoint stopped answering at case CLS-5.1").count(), 1, "{stderr}");
    let v = verdicts(&report);
    let want: Vec<(String, String)> = [
        ("CLS-1.1", "PASS"),
        ("CLS-2.1", "PASS"),
        ("CLS-3.1", "PASS"),
        ("CLS-4.1", "PASS"),
        ("CLS-5.1", "ERROR"),
        ("TMO-1.1", "ERROR"),
        ("TMO-1.2", "ERROR"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(v, want, "{stdout}");
    let later = report["cases"].as_array().unwrap().iter().find(|c| c["id"] == "TMO-1.1").unwrap();
    assert!(later["details"].as_str().unwrap().contains("not run: the endpoint stopped answering at case CLS-5.1"));
}
