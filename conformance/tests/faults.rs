//! The suite must be able to fail: the reference device imitating each named defect is flagged
//! (FAIL) by exactly the cases that check what the defect breaks, and by no other; with the
//! profile of a field variant selected, that variant's FAILs become NON-STRICT and nothing else
//! changes.

use std::collections::BTreeSet;
use std::sync::Mutex;

use opof_conformance::cases;
use opof_conformance::report::Report;
use opof_conformance::runner::certify;
use opof_conformance::target::{TargetConfig, TargetKind};
use opof_conformance::verdict::{Profile, Verdict};
use opof_conformance::Fault;
use opof_vnf::activation::ActivationFault;

/// One run at a time: the load cases measure latency, which parallel runs would disturb.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The embedded device with `fault`; a small capacity keeps the filling cases quick.
fn config(fault: Option<Fault>, profiles: Vec<Profile>) -> TargetConfig {
    TargetConfig { kind: TargetKind::Embedded, capacity: Some(2048), fault, profiles, ..TargetConfig::default() }
}

fn run(fault: Option<Fault>, profiles: Vec<Profile>) -> Report {
    run_with(config(fault, profiles))
}

fn run_with(config: TargetConfig) -> Report {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let all = cases::all();
    rt.block_on(certify(config, &all, |_, _| {})).expect("the embedded target starts")
}

/// Every case that did not PASS, with its verdict.
fn flagged(fault: Option<Fault>, profiles: Vec<Profile>) -> BTreeSet<(String, Verdict)> {
    not_passed(&run(fault, profiles), fault)
}

fn not_passed(report: &Report, fault: Option<Fault>) -> BTreeSet<(String, Verdict)> {
    for c in &report.cases {
        if c.verdict != Verdict::Pass {
            eprintln!("{fault:?}: {} {} {}", c.id, c.verdict, c.details);
        }
    }
    report.cases.iter().filter(|c| c.verdict != Verdict::Pass).map(|c| (c.id.clone(), c.verdict)).collect()
}

fn fails(ids: &[&str]) -> BTreeSet<(String, Verdict)> {
    ids.iter().map(|id| (id.to_string(), Verdict::Fail)).collect()
}

/// The cases each defect must be caught by: those whose clause the defect breaks.
fn expected(f: Fault) -> &'static [&'static str] {
    match f {
        // GET-2 and DEL-2 require the in-band _REJECTED_SESSION_NONEXISTENT.
        Fault::NotFoundStatus => &["GET-2.1", "DEL-2.1"],
        // ADD-10 checks the codes of invalid and duplicate requests, ADD-12 those of a full table.
        Fault::GrpcCodesInResponseError => &["ADD-10.1", "ADD-12.1"],
        Fault::PartialInsertWhenFull => &["ADD-12.1"],
        Fault::PageSizeIgnored => &["ALL-3.1"],
        // Records that never leave the queue: a second read repeats them (CLS-2, CLS-3), reading
        // to the end never ends (CLS-5). CLS-1 runs while nothing has closed yet, and holds.
        Fault::ClosedRepeated => &["CLS-2.1", "CLS-3.1", "CLS-5.1"],
        Fault::MirrorWithoutNextHop => &["ADD-6.1"],
        // Visible on the control plane through the unicast rule for next hops, and on the
        // datapath wherever an IPv4 session must match its packets (IPv6 sessions, the miss path
        // and frames that must not match are untouched).
        Fault::Ipv4WrongByteOrder => &[
            "ADD-2.1", "DP-1.1", "DP-2.1", "DP-3.1", "DP-4.1", "DP-6.1", "DP-7.1", "DP-8.1", "DP-9.1", "DP-12.1",
            "DP-13.1", "TMO-4.1", "TMO-4.2",
        ],
        Fault::IdTruncated32 => &["ADD-14.1"],
        Fault::ClosedEmptyNotFound => &["CLS-1.1"],
        Fault::DeleteQueuesClosed => &["DEL-3.1"],
        // A reset stream is committed (a stream past its deadline is still ended by tonic's own
        // grpc-timeout handling, so BAD-3.2 holds).
        Fault::CancelledStreamInserts => &["BAD-3.1"],
        // Every case that checks a session's counters against what was sent: the DP cases with
        // traffic in a session (not the miss path, DP-5, DP-11), the TMO cases that check their
        // frame was counted "in", and every SIM replay (per-direction balance).
        Fault::WrongDirectionCounted => &[
            "DP-1.1", "DP-2.1", "DP-3.1", "DP-4.1", "DP-6.1", "DP-7.1", "DP-8.1", "DP-9.1", "DP-10.1", "DP-12.1",
            "DP-13.1", "TMO-4.1", "TMO-4.2", "SIM-1.1", "SIM-1.2", "SIM-1.3", "SIM-1.4", "SIM-1.5",
        ],
        // The cases where a DROP session must age: without traffic (TMO-1.1) and after it (TMO-4.2).
        Fault::DropNeverAges => &["TMO-1.1", "TMO-4.2"],
        Fault::MirrorAsDrop => &["DP-3.1"],
        // The cases that send SYN, FIN or RST into a session and check its counters, and the SIM
        // replays (a control segment is then both seen by the VNF and counted by the device).
        Fault::ControlCounted => &["DP-6.1", "DP-7.1", "DP-8.1", "SIM-1.1", "SIM-1.2", "SIM-1.3", "SIM-1.4", "SIM-1.5"],
    }
}

/// The reference device passes every case, and its report is the snapshot under
/// `tests/snapshots/` with times, durations and measurements redacted: any change of what the
/// suite checks or of what the device answers shows up in review.
#[test]
fn the_reference_device_passes_every_case() {
    let evidence = tempfile::tempdir().unwrap();
    let report = run_with(TargetConfig { evidence_dir: Some(evidence.path().to_path_buf()), ..config(None, vec![]) });
    assert_eq!(not_passed(&report, None), BTreeSet::new());
    assert!(report.passed());
    // Every case that used the ports left a readable capture per port; DP-1.1's ext1 capture
    // holds the 2 frames sent into ext1 and the 3 that left it, with their directions.
    let with_evidence: Vec<&str> =
        report.cases.iter().filter(|c| !c.evidence.is_empty()).map(|c| c.id.as_str()).collect();
    assert!(with_evidence.iter().filter(|id| id.starts_with("DP-")).count() == 13, "{with_evidence:?}");
    for c in report.cases.iter().filter(|c| !c.evidence.is_empty()) {
        assert_eq!(c.evidence.len(), 5, "{}", c.id);
        for f in &c.evidence {
            opof_traffic::capture::read_all(f).unwrap_or_else(|e| panic!("{}: {f}: {e}", c.id));
        }
    }
    let dp1 = report.cases.iter().find(|c| c.id == "DP-1.1").unwrap();
    let ext1 = dp1.evidence.iter().find(|f| f.ends_with("ext1.pcapng")).unwrap();
    assert_eq!(opof_traffic::capture::read_all(ext1).unwrap().len(), 5);
    let mut v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    v["started"] = "[started]".into();
    v["duration_ms"] = "[duration]".into();
    for c in v["cases"].as_array_mut().unwrap() {
        c["duration_ms"] = "[duration]".into();
        if let Some(e) = c.get_mut("evidence") {
            for p in e.as_array_mut().unwrap() {
                let rel = p.as_str().unwrap().strip_prefix(evidence.path().to_str().unwrap()).unwrap().to_string();
                *p = format!("[evidence]{rel}").into();
            }
        }
        if let Some(m) = c.get_mut("measurements") {
            for (_, x) in m.as_object_mut().unwrap() {
                *x = "[measured]".into();
            }
        }
    }
    insta::assert_snapshot!("embedded_report", serde_json::to_string_pretty(&v).unwrap());
}

/// Every fault of `Fault::ALL` (and `expected` names the cases of each, its match being
/// exhaustive) is FAIL in exactly its cases, PASS in all the others.
#[test]
fn every_fault_is_caught_by_exactly_its_cases() {
    let mut wrong = Vec::new();
    for fault in Fault::ALL {
        let got = flagged(Some(fault), vec![]);
        if got != fails(expected(fault)) {
            wrong.push(format!("{fault}: flagged {got:?}, want {:?}", expected(fault)));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The Activation server (the VNF side) imitating a defect is caught by the ACT case about it.
#[test]
fn activation_faults_are_caught() {
    for (fault, want) in
        [(ActivationFault::SecondActivationAllowed, "ACT-2.1"), (ActivationFault::DeregisterKeepsActive, "ACT-3.1")]
    {
        let report = run_with(TargetConfig { activation_fault: Some(fault), ..config(None, vec![]) });
        assert_eq!(not_passed(&report, None), fails(&[want]), "{fault:?}");
    }
}

/// A field variant under its profile: NON-STRICT in exactly the cases that tolerate it.
#[test]
fn profiles_turn_field_variants_into_non_strict() {
    for (fault, profile) in [
        (Fault::NotFoundStatus, Profile::NotFoundStatus),
        (Fault::GrpcCodesInResponseError, Profile::ResponseErrorCodes),
        (Fault::ClosedEmptyNotFound, Profile::ClosedEmptyNotFound),
    ] {
        let want: BTreeSet<_> = expected(fault).iter().map(|id| (id.to_string(), Verdict::NonStrict)).collect();
        assert_eq!(flagged(Some(fault), vec![profile]), want, "{fault:?} under {profile}");
    }
    // A profile changes nothing for a device that does not need it.
    assert_eq!(flagged(None, Profile::ALL.to_vec()), BTreeSet::new());
}
