//! CLS: getClosedSessions — empty, exactly once in order, pageSize, record content, retention.

use std::collections::HashSet;
use std::time::Duration;

use opof_proto::wire;

use super::{case, check_add, Case, ACCEPTED};
use crate::ctx::Ctx;
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
    let resp = cx.add(reqs.clone()).await?;
    check_add("addSession", &resp, &reqs, ACCEPTED, &[])?;
    Ok(reqs)
}

async fn once_in_order(cx: Ctx) -> Result<(), Finding> {
    let reqs = add_with_timeouts(&cx, &[3, 1, 2]).await?;
    let ids: Vec<u64> = reqs.iter().map(|r| r.session_id).collect();
    let want = vec![ids[1], ids[2], ids[0]];
    cx.elapse(Duration::from_secs(3)).await;
    let mut order = Vec::new();
    let deadline = std::time::Instant::now() + patience(&cx, 0);
    while order.len() < 3 {
        for r in cx.closed(0).await?.records {
            if ids.contains(&r.session_id) {
                ensure!(!order.contains(&r.session_id), "session {} was reported twice", r.session_id);
                order.push(r.session_id);
            }
        }
        if cx.virtual_time() || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure_eq!(order, want, "sessions reported by getClosedSessions (want closing order)");
    let again: Vec<u64> =
        cx.closed(0).await?.records.iter().map(|r| r.session_id).filter(|i| ids.contains(i)).collect();
    ensure!(again.is_empty(), "sessions {again:?} were reported again by a second read");
    Ok(())
}

/// Waits until none of `ids` is in the table any more (without reading getClosedSessions).
async fn until_gone(cx: &Ctx, ids: &[u64], limit: Duration) -> Result<(), Finding> {
    let start = std::time::Instant::now();
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
        if cx.virtual_time() || start.elapsed() > limit {
            fail!("{left} of {} sessions still in the table after their cacheTimeout", ids.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn page_size(cx: Ctx) -> Result<(), Finding> {
    let reqs = add_with_timeouts(&cx, &[1; 5]).await?;
    let ids: Vec<u64> = reqs.iter().map(|r| r.session_id).collect();
    cx.elapse(Duration::from_secs(1)).await;
    until_gone(&cx, &ids, patience(&cx, 1)).await?;
    let mut seen = Vec::new();
    for want in [2, 2, 1] {
        let got = cx.closed(2).await?.records;
        ensure!(got.len() <= 2, "pageSize 2 sent {} records", got.len());
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
    let start = cx.present(id).await?.start_time;
    cx.elapse(Duration::from_secs(1)).await;
    let w = cx.wait_closed(&[id], patience(&cx, 1)).await?;
    let Some((r, _)) = w.records.get(&id) else { fail!("session {id} was not reported closed") };
    ensure_eq!(r.session_state, wire::SessionState::Closed as i32, "sessionState");
    ensure_eq!(r.session_close_code, wire::SessionCloseCode::Timeout as i32, "sessionCloseCode");
    ensure_eq!((r.in_packets, r.out_packets, r.in_bytes, r.out_bytes), (0, 0, 0, 0), "counters");
    ensure_eq!(r.request_status, wire::RequestStatus::Accepted as i32, "requestStatus");
    ensure_eq!(r.start_time, start, "startTime");
    let (Some(s), Some(e)) = (r.start_time, r.end_time) else { fail!("startTime or endTime missing: {r:?}") };
    let lived = (e.seconds - s.seconds) as f64 + f64::from(e.nanos - s.nanos) / 1e9;
    ensure!(lived >= 1.0, "endTime is {lived} s after startTime, less than the cacheTimeout of 1 s");
    Ok(())
}

async fn retention(cx: Ctx) -> Result<(), Finding> {
    cx.drain_closed(64).await?;
    let fill = cx.fill_with(1).await?;
    cx.note(format!("{} sessions of cacheTimeout 1 s", fill.ids.len()));
    cx.elapse(Duration::from_secs(1)).await;
    let w = cx.wait_closed(&fill.ids, patience(&cx, 1) + Duration::from_secs(30)).await?;
    let ours: HashSet<u64> = fill.ids.iter().copied().collect();
    let repeated = w.others.iter().filter(|r| ours.contains(&r.session_id)).count();
    ensure_eq!(w.records.len(), fill.ids.len(), "sessions of the fill reported closed");
    ensure_eq!(repeated, 0, "records of the fill reported more than once");
    Ok(())
}
