//! Runs cases against a started target, one at a time (they share the target's table), each in
//! its own task with a time limit, and cleans up after each: the sessions it added are deleted
//! and getClosedSessions is drained, so the next case starts from the same table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cases::Case;
use crate::ctx::{Ctx, RunState};
use crate::report::Report;
use crate::target::{Target, TargetConfig, TargetError};
use crate::verdict::{Finding, Profile, Verdict};

/// Longest a case may take before it is stopped with ERROR (a hung endpoint must not hang the
/// run). Generous: filling a table of a million sessions over a slow link fits in it.
pub const CASE_LIMIT: Duration = Duration::from_secs(600);

/// A difference a profile tolerated.
#[derive(Clone, Debug, Serialize)]
pub struct Tolerated {
    pub profile: Profile,
    pub what: String,
}

/// The result of one case; one entry of `report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    pub id: String,
    pub clause: String,
    pub title: String,
    pub verdict: Verdict,
    pub duration_ms: f64,
    /// Why the verdict is not PASS: the failed checks, the reason to skip, the error.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
    /// Every failed check of a FAIL with more than one (`details` joins them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerated: Vec<Tolerated>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub measurements: serde_json::Map<String, serde_json::Value>,
    /// pcapng captures of the device's ports during the case (DP cases), one file per port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
    pub procedure: String,
    pub expect: String,
}

/// Runs one case and cleans up after it. Once the endpoint has stopped answering, later cases
/// are not run: each is ERROR with the case at which it stopped.
pub async fn run_case(run: &Arc<RunState>, case: &Case) -> CaseReport {
    if let Some(at) = run.gone_at.lock().clone() {
        return CaseReport {
            id: case.id.into(),
            clause: case.clause.into(),
            title: case.title.into(),
            verdict: Verdict::Error,
            duration_ms: 0.0,
            details: format!("not run: the endpoint stopped answering at case {at}"),
            findings: Vec::new(),
            notes: Vec::new(),
            tolerated: Vec::new(),
            measurements: Default::default(),
            evidence: Vec::new(),
            procedure: case.procedure.into(),
            expect: case.expect.into(),
        };
    }
    let cx = Ctx::new(run.clone());
    // Records left by earlier cases (or by anyone) would confuse the closed-session checks.
    let _ = cx.drain_closed(16).await;
    let started = Instant::now();
    let task = tokio::spawn((case.run)(cx.clone()));
    let abort = task.abort_handle();
    let result = match tokio::time::timeout(CASE_LIMIT, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if e.is_panic() => Err(Finding::Error(format!("the case panicked: {}", panic_message(e)))),
        Ok(Err(e)) => Err(Finding::Error(format!("the case was stopped: {e}"))),
        Err(_) => {
            abort.abort();
            Err(Finding::Error(format!("the case did not finish within {} s", CASE_LIMIT.as_secs())))
        }
    };
    let duration = started.elapsed();
    let log = cx.take_log();
    let cleanup = Ctx::new(run.clone());
    let mut notes = log.notes;
    let mut evidence = Vec::new();
    if log.used_traffic {
        match &run.target.config.evidence_dir {
            Some(dir) => match write_evidence(&dir.join(case.id), &log.captured) {
                Ok(files) => evidence = files,
                Err(e) => notes.push(format!("evidence: {e}")),
            },
            None => notes.push("evidence: no folder given for the captures (OPOF_EVIDENCE_DIR)".into()),
        }
    }
    // An id a case sent more than once (duplicate-id checks) needs one delete.
    let mut added = log.added;
    added.sort_unstable();
    added.dedup();
    if let Err(e) = cleanup.delete_many(added).await {
        notes.push(format!("clean-up: deleting the case's sessions failed: {}", e.message()));
    }
    let _ = cleanup.drain_closed(16).await;
    // Every failed check of the case, in the order found (those recorded as it went on, then
    // the one that ended it).
    let mut findings = log.findings;
    let (mut verdict, mut details) = match result {
        Ok(()) if !findings.is_empty() => (Verdict::Fail, String::new()),
        Ok(()) if log.tolerated.is_empty() => (Verdict::Pass, String::new()),
        Ok(()) => (Verdict::NonStrict, "every check held or differed as a selected profile tolerates".into()),
        Err(Finding::Fail(m)) => {
            findings.push(m);
            (Verdict::Fail, String::new())
        }
        Err(f) => {
            if !findings.is_empty() {
                notes.push(format!("checks that failed before the case stopped: {}", findings.join("; ")));
                findings.clear();
            }
            (f.verdict(), f.message().to_string())
        }
    };
    if verdict == Verdict::Fail {
        details = findings.join("; ");
    }
    // Is the endpoint still there? A case that saw it go is ERROR whatever it concluded, and
    // the run says once where it went.
    // (Once it has gone, no later case gets here: see the top of this function.)
    if endpoint_gone(&cleanup).await {
        *run.gone_at.lock() = Some(case.id.to_string());
        eprintln!("the endpoint stopped answering at case {}", case.id);
        notes.extend(findings.drain(..).map(|f| format!("before the endpoint went: {f}")));
        let so_far = if details.is_empty() { format!("it had reached {verdict}") } else { details };
        details = format!("the endpoint stopped answering during this case ({so_far})");
        verdict = Verdict::Error;
    }
    CaseReport {
        id: case.id.into(),
        clause: case.clause.into(),
        title: case.title.into(),
        verdict,
        duration_ms: (duration.as_secs_f64() * 1e6).round() / 1e3,
        details,
        findings: if findings.len() > 1 { findings } else { Vec::new() },
        notes,
        tolerated: log.tolerated.into_iter().map(|(profile, what)| Tolerated { profile, what }).collect(),
        measurements: log.measurements.into_iter().collect(),
        evidence,
        procedure: case.procedure.into(),
        expect: case.expect.into(),
    }
}

/// Writes one pcapng per port into `dir`: what the suite sent into the port (inbound) and what
/// the device put out of it (outbound), in time order.
fn write_evidence(dir: &std::path::Path, captured: &[crate::traffic::Captured]) -> Result<Vec<String>, String> {
    use opof_traffic::capture::{CaptureWriter, Frame};
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for port in crate::traffic::PortId::ALL {
        let path = dir.join(format!("{port}.pcapng"));
        let mut w = CaptureWriter::create(&path, &[port.name()]).map_err(|e| e.to_string())?;
        let mut frames: Vec<&crate::traffic::Captured> = captured.iter().filter(|c| c.port == port).collect();
        frames.sort_by_key(|c| c.ts_ns);
        for c in frames {
            w.write_directed(&Frame::new(c.ts_ns, c.data.clone()), c.inbound).map_err(|e| e.to_string())?;
        }
        w.finish().map_err(|e| e.to_string())?;
        files.push(path.display().to_string());
    }
    Ok(files)
}

/// Whether the endpoint stopped answering: a cheap call (getSession of an id no case adds)
/// fails in the transport, or is answered UNAVAILABLE, twice in a row.
async fn endpoint_gone(cx: &Ctx) -> bool {
    for attempt in 0..2 {
        let mut c = cx.client();
        let mut req = tonic::Request::new(opof_proto::wire::SessionId { session_id: u64::MAX - 3 });
        req.set_timeout(Duration::from_secs(5));
        match c.get_session(req).await {
            Ok(_) => return false,
            Err(s) if s.code() == tonic::Code::Unavailable || !opof_proto::client::from_server(&s) => {}
            Err(_) => return false,
        }
        if attempt == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    true
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let p = e.into_panic();
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

/// Cases named by `filters` (all when empty): a case id (`ADD-4.2`), a clause (`ADD-4`, its
/// cases) or a family (`ADD`, every ADD clause).
pub fn select(cases: Vec<Case>, filters: &[String]) -> Vec<Case> {
    if filters.is_empty() {
        return cases;
    }
    let family = |c: &Case| c.clause.rsplit_once('-').map_or(c.clause, |(f, _)| f);
    cases.into_iter().filter(|c| filters.iter().any(|f| c.id == f || c.clause == f || family(c) == f)).collect()
}

/// Starts the target, runs `cases` in order, and returns the report. `progress` sees each
/// case as it ends.
/// `whole`: whether `cases` is the whole suite (only such a run can certify).
pub async fn certify(
    config: TargetConfig,
    cases: &[Case],
    progress: impl FnMut(usize, &CaseReport),
) -> Result<Report, TargetError> {
    let whole = cases.len() == crate::cases::all().len();
    certify_selection(config, cases, whole, progress).await
}

/// [`certify`], saying whether the cases are the whole suite.
pub async fn certify_selection(
    config: TargetConfig,
    cases: &[Case],
    whole: bool,
    mut progress: impl FnMut(usize, &CaseReport),
) -> Result<Report, TargetError> {
    let started = std::time::SystemTime::now();
    let clock = Instant::now();
    let target = Target::start(config).await?;
    let mut info = target.info.clone();
    let run = RunState::new(target);
    let mut reports = Vec::with_capacity(cases.len());
    for (i, case) in cases.iter().enumerate() {
        let r = run_case(&run, case).await;
        progress(i, &r);
        reports.push(r);
    }
    if info.capacity.is_none() && run.capacity().is_some() {
        (info.capacity, info.capacity_learned) = (run.capacity(), true);
    }
    // The target (server or container) stops when the last reference goes.
    drop(run);
    Ok(Report::new(info, started, clock.elapsed(), reports).selection(whole))
}

/// The report of a run that could not reach its target: one ERROR (CONN-1.1) that says why,
/// so that CI systems reading report.json or junit.xml show it; no other case ran.
pub fn unreached(config: &TargetConfig, cases: &[Case], whole: bool, error: &TargetError) -> Report {
    let conn = crate::cases::all().into_iter().find(|c| c.id == "CONN-1.1").expect("CONN-1.1 exists");
    let report = CaseReport {
        id: conn.id.into(),
        clause: conn.clause.into(),
        title: conn.title.into(),
        verdict: Verdict::Error,
        duration_ms: 0.0,
        details: error.to_string(),
        findings: Vec::new(),
        notes: vec![format!("the run stopped here: none of its {} cases was run", cases.len())],
        tolerated: Vec::new(),
        measurements: Default::default(),
        evidence: Vec::new(),
        procedure: conn.procedure.into(),
        expect: conn.expect.into(),
    };
    let info = crate::target::TargetInfo::unreached(config);
    Report::new(info, std::time::SystemTime::now(), Duration::ZERO, vec![report]).selection(whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_cases_clauses_and_families() {
        let ids = |f: &[&str]| -> Vec<&'static str> {
            let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            select(crate::cases::all(), &f).iter().map(|c| c.id).collect()
        };
        assert_eq!(ids(&["ADD-1"]), ["ADD-1.1", "ADD-1.2", "ADD-1.3", "ADD-1.4"]);
        assert_eq!(ids(&["ADD-10.1", "GET-2"]), ["ADD-10.1", "GET-2.1"]);
        assert_eq!(ids(&["ALL"]).len(), 5);
        assert!(ids(&["NOPE"]).is_empty());
        assert_eq!(ids(&[]).len(), crate::cases::all().len());
    }
}
