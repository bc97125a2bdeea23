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
use opof_device::faults::Faults;
use opof_vnf::activation::ActivationFault;

/// One run at a time: the load cases measure latency, which parallel runs would disturb.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The embedded device with `fault`; a small capacity keeps the filling cases quick.
fn config(faults: Faults, profiles: Vec<Profile>) -> TargetConfig {
    TargetConfig { kind: TargetKind::Embedded, capacity: Some(2048), faults, profiles, ..TargetConfig::default() }
}

fn run(faults: Faults, profiles: Vec<Profile>) -> Report {
    run_with(config(faults, profiles))
}

fn run_with(config: TargetConfig) -> Report {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let all = cases::all();
    rt.block_on(certify(config, &all, |_, _| {})).expect("the embedded target starts")
}

/// Every case that did not PASS, with its verdict.
fn flagged(faults: Faults, profiles: Vec<Profile>) -> BTreeSet<(String, Verdict)> {
    not_passed(&run(faults, profiles), faults)
}

fn not_passed(report: &Report, faults: Faults) -> BTreeSet<(String, Verdict)> {
    for c in &report.cases {
        if c.verdict != Verdict::Pass {
            eprintln!("{faults}: {} {} {}", c.id, c.verdict, c.details);
        }
        // An ERROR is always explained: a set-up step that another clause's cases check, or
        // an endpoint that stopped answering; never a failure of the suite itself.
        if c.verdict == Verdict::Error {
            assert!(
                c.details.starts_with("set-up: ") || c.details.contains("stopped answering"),
                "{faults}: {} is ERROR for another reason: {}",
                c.id,
                c.details
            );
        }
    }
    report.cases.iter().filter(|c| c.verdict != Verdict::Pass).map(|c| (c.id.clone(), c.verdict)).collect()
}

fn fails(ids: &[&str]) -> BTreeSet<(String, Verdict)> {
    ids.iter().map(|id| (id.to_string(), Verdict::Fail)).collect()
}

/// What a defect must do to a run: FAIL exactly the cases of the clauses it breaks; ERROR the
/// cases that need, as a set-up step, what it breaks (see SPEC.md "What a case relies on");
/// PASS every other case.
struct Expect {
    fail: &'static [&'static str],
    error: Errors,
}

enum Errors {
    None,
    These(&'static [&'static str]),
    /// Every case from this one on (the endpoint stopped answering there).
    From(&'static str),
    /// Every case neither in `fail` nor here (a device that stores nothing: nearly every case
    /// needs a session in the table as a set-up step).
    AllBut(&'static [&'static str]),
}

impl Expect {
    fn verdicts(&self) -> BTreeSet<(String, Verdict)> {
        let mut v = fails(self.fail);
        let ids: Vec<&str> = cases::all().iter().map(|c| c.id).collect();
        let errors: Vec<&str> = match &self.error {
            Errors::None => vec![],
            Errors::These(e) => e.to_vec(),
            Errors::From(first) => ids.iter().copied().skip_while(|id| id != first).collect(),
            Errors::AllBut(pass) => {
                ids.iter().copied().filter(|id| !pass.contains(id) && !self.fail.contains(id)).collect()
            }
        };
        v.extend(errors.into_iter().map(|id| (id.to_string(), Verdict::Error)));
        v
    }
}

const fn only(fail: &'static [&'static str]) -> Expect {
    Expect { fail, error: Errors::None }
}

/// The cases each defect must be caught by: those whose clause the defect breaks.
fn expected(f: Fault) -> Expect {
    match f {
        // GET-2 and DEL-2 require the in-band _REJECTED_SESSION_NONEXISTENT.
        Fault::NotFoundStatus => only(&["GET-2.1", "DEL-2.1"]),
        // ADD-10 checks the codes of invalid and duplicate requests, ADD-12 those of a full table.
        Fault::GrpcCodesInResponseError => only(&["ADD-10.1", "ADD-12.1"]),
        Fault::PartialInsertWhenFull => only(&["ADD-12.1"]),
        Fault::PageSizeIgnored => only(&["ALL-3.1"]),
        // Records that never leave the queue: a second read repeats them (CLS-2, CLS-3), reading
        // to the end never ends (CLS-5). CLS-1 runs while nothing has closed yet, and holds.
        Fault::ClosedRepeated => only(&["CLS-2.1", "CLS-3.1", "CLS-5.1"]),
        Fault::MirrorWithoutNextHop => only(&["ADD-6.1"]),
        // Visible on the control plane through the unicast rule for next hops, and on the
        // datapath wherever an IPv4 session must match its packets (IPv6 sessions, the miss path
        // and frames that must not match are untouched).
        Fault::Ipv4WrongByteOrder => only(&[
            "ADD-2.1", "DP-1.1", "DP-2.1", "DP-3.1", "DP-4.1", "DP-6.1", "DP-7.1", "DP-8.1", "DP-9.1", "DP-12.1",
            "DP-13.1", "TMO-4.1", "TMO-4.2",
        ]),
        Fault::IdTruncated32 => only(&["ADD-14.1"]),
        Fault::ClosedEmptyNotFound => only(&["CLS-1.1"]),
        Fault::DeleteQueuesClosed => only(&["DEL-3.1"]),
        // A reset stream is committed (a stream past its deadline is still ended by tonic's own
        // grpc-timeout handling, so BAD-3.2 holds).
        Fault::CancelledStreamInserts => only(&["BAD-3.1"]),
        // Every case that checks a session's counters against what was sent: the DP cases with
        // traffic in a session (not the miss path, DP-5, DP-11), the TMO cases that check their
        // frame was counted "in", and every SIM replay (per-direction balance).
        Fault::WrongDirectionCounted => only(&[
            "DP-1.1", "DP-2.1", "DP-3.1", "DP-4.1", "DP-6.1", "DP-7.1", "DP-8.1", "DP-9.1", "DP-10.1", "DP-12.1",
            "DP-13.1", "TMO-4.1", "TMO-4.2", "SIM-1.1", "SIM-1.2", "SIM-1.3", "SIM-1.4", "SIM-1.5",
        ]),
        // The cases where a DROP session must age: without traffic (TMO-1.1) and after it (TMO-4.2).
        Fault::DropNeverAges => only(&["TMO-1.1", "TMO-4.2"]),
        Fault::MirrorAsDrop => only(&["DP-3.1"]),
        // The cases that send SYN, FIN or RST into a session and check its counters, and the SIM
        // replays (a control segment is then both seen by the VNF and counted by the device).
        Fault::ControlCounted => {
            only(&["DP-6.1", "DP-7.1", "DP-8.1", "SIM-1.1", "SIM-1.2", "SIM-1.3", "SIM-1.4", "SIM-1.5"])
        }
        // A stub: every case whose clause is about storing, refusing or finding sessions FAILs;
        // every case that needs a session in the table to check something else is ERROR
        // (set-up, ADD-1's finding). What holds without sessions passes: reaching it, an empty
        // closed queue, the miss path, bad input, and the SIM and ACT cases, which run on the
        // project's own VNF simulator and Activation server.
        Fault::StoresNothing => Expect {
            fail: &[
                "ADD-1.1", "ADD-1.2", "ADD-1.3", "ADD-1.4", "ADD-3.1", "ADD-4.2", "ADD-5.3", "ADD-5.4", "ADD-6.1",
                "ADD-7.1", "ADD-7.2", "ADD-7.3", "ADD-7.4", "ADD-14.1", "GET-2.1", "DEL-2.1",
            ],
            error: Errors::AllBut(&[
                "CONN-1.1", "CONN-2.1", "CONN-3.1", "CONN-4.1", "ADD-13.1", "CLS-1.1", "DP-5.1", "SIM-1.1", "SIM-1.2",
                "SIM-1.3", "SIM-1.4", "SIM-1.5", "ACT-1.1", "ACT-2.1", "ACT-3.1", "ACT-4.1", "BAD-1.1", "BAD-2.1",
                "BAD-3.1", "BAD-3.2",
            ]),
        },
        // requestStatus is ADD-11's clause, and ADD-12's _SESSION_TABLE_FULL; nothing else reads it.
        Fault::RequestStatusNeverSet => only(&["ADD-11.1", "ADD-11.2", "ADD-12.1"]),
        // errorStatus is ADD-9's clause; every other case reads refusals from either report.
        Fault::RefusalsOnlyInResponseError => only(&["ADD-9.1"]),
        Fault::DuplicateCheckIgnoresIpv6 => only(&["ADD-5.4"]),
        // ADD-4 fails; the cases that need a refused duplicate to check something else cannot.
        Fault::DuplicateIdsAllowed => Expect {
            fail: &["ADD-4.1", "ADD-4.2"],
            error: Errors::These(&["ADD-8.1", "ADD-10.1", "ADD-11.1", "ADD-11.2", "LOAD-1.1"]),
        },
        Fault::StartSessionIgnored => only(&["ALL-1.1", "ALL-4.1", "ALL-5.1"]),
        Fault::PageSizeIgnoredOnClosed => only(&["CLS-3.1"]),
        Fault::CloseCodeAlwaysTimeout => only(&["DP-7.1", "DP-8.1"]),
        // Validation is ADD-3, ADD-6 and ADD-7's; ADD-2 reads the byte order from validation (a
        // set-up it cannot have), and the cases that need a refused invalid request cannot run.
        Fault::NoValidation => Expect {
            fail: &["ADD-3.1", "ADD-6.1", "ADD-7.1", "ADD-7.2", "ADD-7.3", "ADD-7.4"],
            error: Errors::These(&["ADD-2.1", "ADD-8.1", "ADD-9.1", "ADD-10.1", "ADD-11.2", "ADD-12.1"]),
        },
        // CLS-5.1 reads more than 64 records with pageSize 0: the endpoint dies there.
        Fault::CrashOnLargePage => Expect { fail: &[], error: Errors::From("CLS-5.1") },
        // Every case about when a session closes; TMO-3 needs a close as a set-up step. The CLS
        // cases wait for their records as long as it takes, and hold.
        Fault::TimeoutsDoubled => Expect {
            fail: &["TMO-1.1", "TMO-1.2", "TMO-2.1", "TMO-4.1", "TMO-4.2"],
            error: Errors::These(&["TMO-3.1"]),
        },
    }
}

/// The reference device passes every case, and its report is the snapshot under
/// `tests/snapshots/` with times, durations and measurements redacted: any change of what the
/// suite checks or of what the device answers shows up in review.
#[test]
fn the_reference_device_passes_every_case() {
    let evidence = tempfile::tempdir().unwrap();
    let report =
        run_with(TargetConfig { evidence_dir: Some(evidence.path().to_path_buf()), ..config(Faults::NONE, vec![]) });
    assert_eq!(not_passed(&report, Faults::NONE), BTreeSet::new());
    assert!(report.certified());
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

/// Every fault of `Fault::ALL` (and `expected` names the verdicts of each, its match being
/// exhaustive) is FAIL in exactly its cases, ERROR (set-up, or the endpoint gone) in exactly
/// the cases that need what it breaks, PASS in all the others. Run in two halves, so that a
/// defect found in one names itself sooner.
fn faults_are_caught(faults: &[Fault]) {
    let mut wrong = Vec::new();
    for &fault in faults {
        let got = flagged(fault.into(), vec![]);
        let want = expected(fault).verdicts();
        if got != want {
            let extra: Vec<_> = got.difference(&want).collect();
            let missing: Vec<_> = want.difference(&got).collect();
            wrong.push(format!("{fault}: unexpected {extra:?}; expected but not seen {missing:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_fault_is_caught_by_exactly_its_cases_first_half() {
    faults_are_caught(&Fault::ALL[..13]);
}

#[test]
fn every_fault_is_caught_by_exactly_its_cases_second_half() {
    faults_are_caught(&Fault::ALL[13..]);
}

/// Two defects at once are each found under its own clause: getClosedSessions ignoring
/// pageSize is found by CLS-3 although the timeouts are wrong too (CLS-3 waits for the closes
/// as long as it takes; when is TMO's clause).
#[test]
fn two_faults_are_each_found_under_their_own_clause() {
    let both: Faults = [Fault::PageSizeIgnoredOnClosed, Fault::TimeoutsDoubled].into_iter().collect();
    let mut want = expected(Fault::TimeoutsDoubled).verdicts();
    want.extend(expected(Fault::PageSizeIgnoredOnClosed).verdicts());
    assert_eq!(flagged(both, vec![]), want);
}

/// The Activation server (the VNF side) imitating a defect is caught by the ACT case about it.
#[test]
fn activation_faults_are_caught() {
    for (fault, want) in
        [(ActivationFault::SecondActivationAllowed, "ACT-2.1"), (ActivationFault::DeregisterKeepsActive, "ACT-3.1")]
    {
        let report = run_with(TargetConfig { activation_fault: Some(fault), ..config(Faults::NONE, vec![]) });
        assert_eq!(not_passed(&report, Faults::NONE), fails(&[want]), "{fault:?}");
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
        let want: BTreeSet<_> = expected(fault).fail.iter().map(|id| (id.to_string(), Verdict::NonStrict)).collect();
        assert_eq!(flagged(fault.into(), vec![profile]), want, "{fault:?} under {profile}");
    }
    // A profile changes nothing for a device that does not need it.
    assert_eq!(flagged(Faults::NONE, Profile::ALL.to_vec()), BTreeSet::new());
}

/// A profile tolerates its own difference even when another defect is in the same answers:
/// with requestStatus never set and gRPC codes in responseError, ADD-10 (the codes) is
/// NON-STRICT under response-error-codes, while ADD-11 and ADD-12 still FAIL for the status,
/// ADD-12 reporting every difference it found.
#[test]
fn a_profile_tolerates_its_difference_beside_another_defect() {
    let both: Faults = [Fault::RequestStatusNeverSet, Fault::GrpcCodesInResponseError].into_iter().collect();
    let report = run(both, vec![Profile::ResponseErrorCodes]);
    let got = not_passed(&report, both);
    let mut want = fails(&["ADD-11.1", "ADD-11.2", "ADD-12.1"]);
    want.insert(("ADD-10.1".into(), Verdict::NonStrict));
    assert_eq!(got, want);
    let add12 = report.cases.iter().find(|c| c.id == "ADD-12.1").unwrap();
    assert!(add12.findings.len() >= 2, "{:?}", add12.findings);
    assert!(add12.tolerated.iter().any(|t| t.profile == Profile::ResponseErrorCodes), "{:?}", add12.tolerated);
}

/// A correct device with a small table (19 sessions) is not failed for its size: the cases
/// that need more sessions at once are SKIP with the reason, everything else passes.
#[test]
fn a_small_table_skips_what_does_not_fit_and_fails_nothing() {
    let report = run_with(TargetConfig { capacity: Some(19), ..config(Faults::NONE, vec![]) });
    let mut want: BTreeSet<(String, Verdict)> = ["ADD-1.3", "ADD-1.4", "ADD-9.1", "ALL-2.1", "TMO-1.2", "LOAD-1.1"]
        .iter()
        .map(|id| (id.to_string(), Verdict::Skip))
        .collect();
    assert_eq!(not_passed(&report, Faults::NONE), std::mem::take(&mut want));
    for c in report.cases.iter().filter(|c| c.verdict == Verdict::Skip) {
        assert!(c.details.contains("19"), "{}: {}", c.id, c.details);
    }
    // Skips do not stop a whole run from certifying; they are counted next to the verdict.
    assert!(report.certified());
    assert!(report.verdict.contains("6 SKIP"), "{}", report.verdict);
}
