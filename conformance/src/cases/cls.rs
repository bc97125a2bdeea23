//! CLS: getClosedSessions — empty, exactly once in order, pageSize, record content, retention.

use std::time::Duration;

use opof_proto::wire;

use super::{case, Case};
use crate::ctx::{setup, Ctx};
use crate::verdict::{Finding, Profile};
use crate::{ensure, ensure_eq, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "CLS-1.1",
            "CLS-1",
            "Nothing queued: an empty OK stream",
            "Read getClosedSessions to the end until it is empty; then once more.",
            "The last call ends at once with OK and no record. gRPC NOT_FOUND: NON-STRICT under profile \
             closed-empty-not-found.",
            empty
        ),
        case!(
            "CLS-2.1",
            "CLS-2",
            "Each closed session once, oldest first",
            "Add three sessions with cacheTimeout 3, 1 and 2 s (in that order); let 3 s pass; read \
             getClosedSessions; read it again.",
            "The three records in closing order (1 s, 2 s, 3 s) and none of them on the second read.",
            once_in_order
        ),
        case!(
            "CLS-3.1",
            "CLS-3",
            "pageSize bounds a read; the rest stays queued",
            "Add five sessions with cacheTimeout 1 s; let them close; read with pageSize 2 three times, then \
             with pageSize 0.",
            "2, 2 and 1 records, all different, all five seen; the last read has none of them.",
            page_size
        ),
        case!(
            "CLS-4.1",
            "CLS-4",
            "A closed record carries state, code, counters and times",
            "Add a session with cacheTimeout 1 s; let it close; read getClosedSessions.",
            "_CLOSED, _TIMEOUT, zero counters, _ACCEPTED, the add's startTime, an endTime at least 1 s later.",
            record
        ),
        case!(
            "CLS-5.1",
            "CLS-5",
            "Records are kept, as many as the capacity, while nobody reads",
            "Fill the table with sessions of cacheTimeout 1 s and do not read getClosedSessions until they have \
             all closed; then read it to the end.",
            "One record for every session of the fill, each exactly once.",
            retention
        ),
    ]
}

/// How long to wait, in real time, for closes due after `secs`.
fn patience(cx: &Ctx, secs: u64) -> Duration {
    Duration::from_secs(secs) + cx.config().tolerance + Duration::from_secs(5)
}

async fn empty(cx: Ctx) -> Result<(), Finding> {
    cx.drain_closed(64).await?;
    let c = cx.closed(0).await?;
    ensure!(c.records.is_empty(), "{} records after reading the queue to its end", c.records.len());
    if c.not_found {
        cx.tolerate(
            Profile::ClosedEmptyNotFound,
            "getClosedSessions with nothing queued answered gRPC NOT_FOUND instead of an empty OK stream".into(),
        )?;
    }
    Ok(())
}

async fn add_with_timeouts(cx: &Ctx, timeouts: &[u32]) -> Result<Vec<wire::SessionRequest>, Finding> {
    let reqs: Vec<_> = timeouts.iter().map(|&t| wire::SessionRequest { cache_timeout: t, ..cx.flow_v4() }).collect();
    cx.setup_add(reqs.clone()).await?;
    Ok(reqs)
}

/// Longest the CLS cases wait past a close's due time before they give up on it. Closing on
/// time is TMO's clause: a CLS case only needs the records to come, late or not.
const LATE: Duration = Duration::from_secs(30);

/// Set-up: lets time pass until getClosedSessions has delivered a record for each of `ids`,
/// due `due` after the add (virtual time: moved in 1 s steps past the due time; real time:
/// read every 20 ms), at most [`LATE`] past it. Records of these ids come back in the order
/// read, each once; a repeated one is kept as well, for the caller to judge.
async fn closed_records(cx: &Ctx, ids: &[u64], due: Duration) -> Result<Vec<wire::SessionResponse>, Finding> {
    let wanted: std::collections::HashSet<u64> = ids.iter().copied().collect();
    let mut got: Vec<wire::SessionResponse> = Vec::new();
    let mut unique = std::collections::HashSet::new();
    cx.elapse(due).await;
    let deadline = std::time::Instant::now() + patience(cx, 0) + LATE;
    let mut virtual_waited = Duration::ZERO;
    loop {
        for r in cx.closed(0).await?.records.into_iter().filter(|r| wanted.contains(&r.session_id)) {
            unique.insert(r.session_id);
            got.push(r);
        }
        if unique.len() == wanted.len() {
            return Ok(got);
        }
        if cx.virtual_time() {
            if virtual_waited >= LATE {
                break;
            }
            cx.elapse(Duration::from_secs(1)).await;
            virtual_waited += Duration::from_secs(1);
        } else if std::time::Instant::now() > deadline {
            break;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Err(Finding::Error(format!(
        "set-up: {} of {} sessions were not reported closed within {} s of their cacheTimeout (TMO-1's finding)",
        wanted.len() - unique.len(),
        wanted.len(),
        LATE.as_secs()
    )))
}

async fn once_in_order(cx: Ctx) -> Result<(), Finding> {
    let reqs = add_with_timeouts(&cx, &[3, 1, 2]).await?;
    let ids: Vec<u64> = reqs.iter().map(|r| r.session_id).collect();
    let want = vec![ids[1], ids[2], ids[0]];
    let got = closed_records(&cx, &ids, Duration::from_secs(3)).await?;
    let order: Vec<u64> = got.iter().map(|r| r.session_id).collect();
    for id in &ids {
        let n = order.iter().filter(|x| *x == id).count();
        ensure!(n == 1, "session {id} was reported {n} times");
    }
    ensure_eq!(order, want, "sessions reported by getClosedSessions (want closing order)");
    let again: Vec<u64> =
        cx.closed(0).await?.records.iter().map(|r| r.session_id).filter(|i| ids.contains(i)).collect();
    ensure!(again.is_empty(), "sessions {again:?} were reported again by a second read");
    Ok(())
}

/// Set-up: waits until none of `ids` is in the table any more (without reading
/// getClosedSessions), at most [`LATE`] past `due`.
async fn until_gone(cx: &Ctx, ids: &[u64], due: Duration) -> Result<(), Finding> {
    cx.elapse(due).await;
    let deadline = std::time::Instant::now() + patience(cx, 0) + LATE;
    let mut virtual_waited = Duration::ZERO;
    loop {
        let mut left = 0;
        for &id in ids {
            if let crate::ctx::Lookup::Found(_) = cx.get(id).await? {
                left += 1;
            }
        }
        if left == 0 {
            return Ok(());
        }
        if cx.virtual_time() && virtual_waited < LATE {
            cx.elapse(Duration::from_secs(1)).await;
            virtual_waited += Duration::from_secs(1);
        } else if !cx.virtual_time() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            return Err(Finding::Error(format!(
                "set-up: {left} of {} sessions still in the table {} s after their cacheTimeout (TMO-1's finding)",
                ids.len(),
                LATE.as_secs()
            )));
        }
    }
}

async fn page_size(cx: Ctx) -> Result<(), Finding> {
    let reqs = add_with_timeouts(&cx, &[1; 5]).await?;
    let ids: Vec<u64> = reqs.iter().map(|r| r.session_id).collect();
    until_gone(&cx, &ids, Duration::from_secs(1)).await?;
    let mut seen = Vec::new();
    for want in [2, 2, 1] {
        let got = cx.closed(2).await?.records;
        ensure!(got.len() <= 2, "a read with pageSize 2 sent {} records", got.len());
        let ours: Vec<u64> = got.iter().map(|r| r.session_id).filter(|i| ids.contains(i)).collect();
        for id in &ours {
            ensure!(!seen.contains(id), "session {id} was sent again by a later read with pageSize 2");
        }
        ensure_eq!(ours.len(), want, "records of the case in a read with pageSize 2");
        seen.extend(ours);
    }
    let rest: Vec<u64> = cx.closed(0).await?.records.iter().map(|r| r.session_id).filter(|i| ids.contains(i)).collect();
    ensure!(rest.is_empty(), "sessions {rest:?} were sent again after all five had been read");
    Ok(())
}

async fn record(cx: Ctx) -> Result<(), Finding> {
    let reqs = add_with_timeouts(&cx, &[1]).await?;
    let id = reqs[0].session_id;
    let got = closed_records(&cx, &[id], Duration::from_secs(1)).await?;
    let r = &got[0];
    cx.expect(r.session_state == wire::SessionState::Closed as i32, || {
        format!("sessionState {}, want _CLOSED", r.session_state)
    });
    cx.expect(r.session_close_code == wire::SessionCloseCode::Timeout as i32, || {
        format!("sessionCloseCode {}, want _TIMEOUT", r.session_close_code)
    });
    let counters = (r.in_packets, r.out_packets, r.in_bytes, r.out_bytes);
    cx.expect(counters == (0, 0, 0, 0), || format!("counters {counters:?}, want 0"));
    cx.expect(r.request_status == wire::RequestStatus::Accepted as i32, || {
        format!("requestStatus {}, want _ACCEPTED", r.request_status)
    });
    let (Some(s), Some(e)) = (r.start_time, r.end_time) else { fail!("startTime or endTime missing: {r:?}") };
    let lived = (e.seconds - s.seconds) as f64 + f64::from(e.nanos - s.nanos) / 1e9;
    ensure!(lived >= 1.0, "endTime is {lived} s after startTime, less than the cacheTimeout of 1 s");
    Ok(())
}

async fn retention(cx: Ctx) -> Result<(), Finding> {
    // Records that never leave the queue are this clause's own finding (each delivered once).
    cx.drain_closed(64).await?;
    let fill = cx.fill_with(1).await.map_err(setup)?;
    cx.note(format!("{} sessions of cacheTimeout 1 s", fill.ids.len()));
    let got = closed_records(&cx, &fill.ids, Duration::from_secs(1)).await?;
    let mut ids: Vec<u64> = got.iter().map(|r| r.session_id).collect();
    let reported = ids.len();
    ids.sort_unstable();
    ids.dedup();
    ensure_eq!(ids.len(), fill.ids.len(), "sessions of the fill reported closed");
    ensure_eq!(reported - ids.len(), 0, "records of the fill reported more than once");
    Ok(())
}
