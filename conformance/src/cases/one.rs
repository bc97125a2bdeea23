//! GET and DEL: one session by id.

use opof_proto::wire;

use super::{case, Case};
use crate::ctx::{setup, Ctx, Lookup};
use crate::verdict::{Finding, Profile};
use crate::{ensure, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "GET-1.1",
            "GET-1",
            "getSession returns the whole record",
            "Add a session; getSession of its id.",
            "Its id, zero counters, _ESTABLISHED, _NOT_CLOSED, _ACCEPTED, a startTime (its value is ADD-15's), no \
             endTime.",
            record
        ),
        case!(
            "GET-2.1",
            "GET-2",
            "getSession of an unknown id: _REJECTED_SESSION_NONEXISTENT",
            "getSession of an id never added.",
            "OK with requestStatus _REJECTED_SESSION_NONEXISTENT. gRPC NOT_FOUND or UNKNOWN: NON-STRICT under \
             profile not-found-status.",
            get_unknown
        ),
        case!(
            "DEL-1.1",
            "DEL-1",
            "deleteSession removes the session and returns its final record",
            "Add a session; deleteSession of its id; getSession of it.",
            "The delete answers the id, _CLOSED, _NOT_CLOSED, _ACCEPTED, a startTime and an endTime; the session \
             is gone.",
            delete_record
        ),
        case!(
            "DEL-2.1",
            "DEL-2",
            "deleteSession of an unknown id: _REJECTED_SESSION_NONEXISTENT",
            "deleteSession of an id never added.",
            "OK with requestStatus _REJECTED_SESSION_NONEXISTENT. gRPC NOT_FOUND or UNKNOWN: NON-STRICT under \
             profile not-found-status.",
            delete_unknown
        ),
        case!(
            "DEL-3.1",
            "DEL-3",
            "A deleted session is not reported as closed",
            "Add three sessions, delete them, read getClosedSessions to the end.",
            "None of the three ids among the closed records.",
            delete_not_closed
        ),
    ]
}

async fn record(cx: Ctx) -> Result<(), Finding> {
    let reqs = vec![cx.flow_v4()];
    cx.setup_add(reqs.clone()).await?;
    let r = cx.present(reqs[0].session_id).await?;
    let counters = (r.in_packets, r.out_packets, r.in_bytes, r.out_bytes);
    cx.expect(counters == (0, 0, 0, 0), || format!("counters of a session without traffic: {counters:?}, want 0"));
    let state_ok = [wire::SessionState::Established, wire::SessionState::Closing1, wire::SessionState::Closing2]
        .iter()
        .any(|s| *s as i32 == r.session_state);
    cx.expect(state_ok, || format!("sessionState {}, want _ESTABLISHED (or _CLOSING_*)", r.session_state));
    cx.expect(r.session_close_code == wire::SessionCloseCode::NotClosed as i32, || {
        format!("sessionCloseCode {}, want _NOT_CLOSED", r.session_close_code)
    });
    cx.expect(r.request_status == wire::RequestStatus::Accepted as i32, || {
        format!("requestStatus {}, want _ACCEPTED", r.request_status)
    });
    cx.expect(r.start_time.is_some(), || "no startTime".into());
    cx.expect(r.end_time.is_none(), || format!("an open session has endTime {:?}", r.end_time));
    Ok(())
}

/// The not-found answer for an unknown id, as GET-2 and DEL-2 require it.
fn nonexistent(cx: &Ctx, what: &str, l: Lookup) -> Result<(), Finding> {
    match l {
        Lookup::Nonexistent => Ok(()),
        Lookup::NotFoundStatus(code) => cx.tolerate(
            Profile::NotFoundStatus,
            format!("{what} of an unknown id answered gRPC {code:?} instead of OK with _REJECTED_SESSION_NONEXISTENT"),
        ),
        Lookup::Found(r) => fail!("{what} of an unknown id found a session: {r:?}"),
        Lookup::Other(r) => fail!(
            "{what} of unknown id {UNKNOWN} answered OK with the record of session {} instead of \
             _REJECTED_SESSION_NONEXISTENT",
            r.session_id
        ),
    }
}

/// An id no case adds.
const UNKNOWN: u64 = 999_999_937;

async fn get_unknown(cx: Ctx) -> Result<(), Finding> {
    let l = cx.get(UNKNOWN).await?;
    nonexistent(&cx, "getSession", l)
}

async fn delete_unknown(cx: Ctx) -> Result<(), Finding> {
    let l = cx.delete(UNKNOWN).await?;
    nonexistent(&cx, "deleteSession", l)
}

async fn delete_record(cx: Ctx) -> Result<(), Finding> {
    let reqs = vec![cx.flow_v4()];
    cx.setup_add(reqs.clone()).await?;
    let id = reqs[0].session_id;
    let r = match cx.delete(id).await? {
        Lookup::Found(r) => r,
        other => fail!("deleteSession of a session in the table: {other:?}"),
    };
    cx.expect(r.session_state == wire::SessionState::Closed as i32, || {
        format!("sessionState after delete {}, want _CLOSED", r.session_state)
    });
    cx.expect(r.session_close_code == wire::SessionCloseCode::NotClosed as i32, || {
        format!("sessionCloseCode after delete {}, want _NOT_CLOSED", r.session_close_code)
    });
    cx.expect(r.start_time.is_some(), || "the delete's record has no startTime".into());
    cx.expect(r.end_time.is_some(), || "the delete's record has no endTime".into());
    cx.absent(id).await
}

async fn delete_not_closed(cx: Ctx) -> Result<(), Finding> {
    let reqs = cx.flows(3);
    cx.setup_add(reqs.clone()).await?;
    for r in &reqs {
        if !matches!(cx.delete(r.session_id).await?, Lookup::Found(_)) {
            return Err(setup(Finding::Fail(format!(
                "deleteSession of session {} in the table did not find it (DEL-1's finding)",
                r.session_id
            ))));
        }
    }
    let closed = cx.drain_closed(64).await.map_err(setup)?;
    let again: Vec<u64> =
        closed.iter().map(|c| c.session_id).filter(|id| reqs.iter().any(|r| r.session_id == *id)).collect();
    ensure!(again.is_empty(), "deleted sessions {again:?} were also reported by getClosedSessions");
    Ok(())
}
