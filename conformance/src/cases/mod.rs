//! The cases: data (id, clause, title, procedure, verdict rule) plus the code that checks.
//!
//! Ids are `CLAUSE.n`: one clause of `SPEC.md` may have several cases. A case returns `Ok(())`
//! when every check held (PASS, or NON-STRICT if it tolerated a field variant through a selected
//! profile) and a [`Finding`] otherwise. Cases clean up nothing themselves: the runner deletes
//! every session a case added and drains getClosedSessions between cases.

use std::future::Future;
use std::pin::Pin;

use opof_proto::wire;

use crate::ctx::Ctx;
use crate::verdict::Finding;

mod act;
mod add;
mod all;
mod bad;
mod cls;
mod conn;
mod dp;
mod load;
mod one;
mod sim;
mod tmo;

pub type CaseFuture = Pin<Box<dyn Future<Output = Result<(), Finding>> + Send>>;

/// One conformance case.
pub struct Case {
    /// `CLAUSE.n`, e.g. `ADD-4.2`.
    pub id: &'static str,
    /// The clause of SPEC.md it checks.
    pub clause: &'static str,
    pub title: &'static str,
    /// What the case sends.
    pub procedure: &'static str,
    /// What it expects, and how the verdict follows.
    pub expect: &'static str,
    pub run: fn(Ctx) -> CaseFuture,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.id, self.title)
    }
}

/// Declares a case whose code is `async fn $f(cx: Ctx) -> Result<(), Finding>`.
macro_rules! case {
    ($id:literal, $clause:literal, $title:literal, $procedure:expr, $expect:expr, $f:path) => {
        $crate::cases::Case {
            id: $id,
            clause: $clause,
            title: $title,
            procedure: $procedure,
            expect: $expect,
            run: |cx| Box::pin($f(cx)),
        }
    };
}
pub(crate) use case;

/// Every case, in the order a run takes them (SPEC.md's order).
pub fn all() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(conn::cases());
    v.extend(add::cases());
    v.extend(one::cases());
    v.extend(all::cases());
    v.extend(cls::cases());
    v.extend(tmo::cases());
    v.extend(dp::cases());
    v.extend(sim::cases());
    v.extend(act::cases());
    v.extend(load::cases());
    v.extend(bad::cases());
    v
}

pub(crate) const ACCEPTED: i32 = wire::AddSessionStatus::SessionAccepted as i32;
pub(crate) const REJECTED: i32 = wire::AddSessionStatus::SessionRejected as i32;
pub(crate) const TABLE_FULL: i32 = wire::AddSessionStatus::SessionTableFull as i32;
pub(crate) const ALREADY_EXISTS: i32 = wire::AddSessionStatus::SessionAlreadyExists as i32;

/// Which requests of a stream an answer flags as failed, by either of its reports: bit *i* of
/// `errorStatus` (*i* < 64), or an entry of `responseError`. An entry is matched to a position
/// of its session id: one whose bit is set if there is such, else the last one not matched yet
/// (a device refuses the later of two requests that share an id).
pub(crate) fn flagged(r: &wire::AddSessionResponse, reqs: &[wire::SessionRequest]) -> Vec<bool> {
    let bit = |i: usize| i < 64 && r.error_status & (1 << i) != 0;
    let mut f: Vec<bool> = (0..reqs.len()).map(bit).collect();
    let mut matched = vec![false; reqs.len()];
    for e in &r.response_error {
        let same: Vec<usize> = (0..reqs.len()).filter(|&i| reqs[i].session_id == e.session_id && !matched[i]).collect();
        if let Some(&i) = same.iter().find(|&&i| bit(i)).or(same.last()) {
            matched[i] = true;
            f[i] = true;
        }
    }
    f
}

/// The whole answer to a stream (ADD-1, ADD-9 style): its requestStatus, `errorStatus` bits
/// (first 64) and `responseError` ids (stream order) must all say that exactly the requests at
/// `failed` failed. Every difference is named, not only the first.
pub(crate) fn check_add(
    what: &str,
    r: &wire::AddSessionResponse,
    reqs: &[wire::SessionRequest],
    status: i32,
    failed: &[usize],
) -> Result<(), Finding> {
    let mut wrong = Vec::new();
    if r.request_status != status {
        wrong.push(format!(
            "requestStatus {} ({}), want {} ({})",
            r.request_status,
            status_name(r.request_status),
            status,
            status_name(status)
        ));
    }
    let bits = failed.iter().filter(|&&i| i < 64).fold(0u64, |b, &i| b | 1 << i);
    if r.error_status != bits {
        wrong.push(format!("errorStatus {:#x}, want {bits:#x}", r.error_status));
    }
    let got: Vec<u64> = r.response_error.iter().map(|e| e.session_id).collect();
    let want: Vec<u64> = failed.iter().map(|&i| reqs[i].session_id).collect();
    if got != want {
        wrong.push(format!("responseError lists ids {got:?}, want {want:?} (stream order)"));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(Finding::Fail(format!("{what}: {}", wrong.join("; "))))
    }
}

/// Which requests were refused, by either report (see [`flagged`]): exactly those at `failed`.
/// How the refusal is reported (requestStatus, bits, codes) is left to ADD-9 … ADD-11.
pub(crate) fn check_refusals(
    what: &str,
    r: &wire::AddSessionResponse,
    reqs: &[wire::SessionRequest],
    failed: &[usize],
) -> Result<(), Finding> {
    let f = flagged(r, reqs);
    let mut wrong = Vec::new();
    for (i, req) in reqs.iter().enumerate() {
        match (f[i], failed.contains(&i)) {
            (true, false) => wrong.push(format!("request {i} (session {}) was refused", req.session_id)),
            (false, true) => wrong.push(format!(
                "request {i} (session {}) was not refused (neither errorStatus nor responseError flags it; \
                 requestStatus {})",
                req.session_id, r.request_status
            )),
            _ => {}
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(Finding::Fail(format!("{what}: {}", wrong.join("; "))))
    }
}

pub(crate) fn status_name(s: i32) -> &'static str {
    wire::AddSessionStatus::try_from(s).map(|s| s.as_str_name()).unwrap_or("not an ADD_SESSION_STATUS")
}

/// Sessions in `reqs` must all be present: every one missing is named.
pub(crate) async fn all_present(cx: &Ctx, reqs: &[wire::SessionRequest]) -> Result<(), Finding> {
    let mut missing = Vec::new();
    for r in reqs {
        if let Err(e) = cx.present(r.session_id).await {
            match e {
                Finding::Fail(m) => missing.push(m),
                other => return Err(other),
            }
        }
    }
    match missing.len() {
        0 => Ok(()),
        1 => Err(Finding::Fail(missing.remove(0))),
        n => Err(Finding::Fail(format!(
            "{n} of {} sessions are not in the table; the first: {}",
            reqs.len(),
            missing[0]
        ))),
    }
}
