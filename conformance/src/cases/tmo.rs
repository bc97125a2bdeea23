//! TMO: idle timeouts of sessions without traffic. Exact in virtual time (embedded); in real
//! time within the run's tolerance, with the measured lateness in the report.

use std::time::Duration;

use opof_proto::wire;

use super::{case, check_add, Case, ACCEPTED};
use crate::ctx::{Ctx, Lookup};
use crate::verdict::Finding;
use crate::{ensure, ensure_eq, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "TMO-1.1",
            "TMO-1",
            "An idle session closes _TIMEOUT after cacheTimeout, whatever its action",
            "Add four sessions (DROP, FORWARD, MIRROR, SNOOP) with cacheTimeout 2 s and send them no traffic; \
             in virtual time look just before 2 s, then at 2 s; in real time read getClosedSessions every 20 ms.",
            "Each closes _TIMEOUT; endTime - startTime is 2 s (exactly in virtual time; within the tolerance in \
             real time, also as observed by the suite); none closes early.",
            idle_close
        ),
        case!(
            "TMO-2.1",
            "TMO-2",
            "cacheTimeout 0 uses the advertised default of the protocol",
            "Add a TCP and a UDP session with cacheTimeout 0; wait for their closes.",
            "Each closes after the advertised default of its protocol (OPOF_TCP_TIMEOUT, OPOF_UDP_TIMEOUT). SKIP \
             when the defaults are not known.",
            default_timeout
        ),
        case!(
            "TMO-3.1",
            "TMO-3",
            "A timed-out session has left the table and can be added anew",
            "Add a session with cacheTimeout 1 s; let it close; getSession; add the same request again.",
            "getSession no longer finds it; the second add is _SESSION_ACCEPTED.",
            gone_and_again
        ),
    ]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn lifetime(r: &wire::SessionResponse) -> Option<Duration> {
    let (s, e) = (r.start_time?, r.end_time?);
    let ns = (e.seconds - s.seconds) as i128 * 1_000_000_000 + i128::from(e.nanos - s.nanos);
    u64::try_from(ns).ok().map(Duration::from_nanos)
}

/// Adds `reqs`, waits for them to close after `t`, and checks each record's lifetime.
async fn closes_after(cx: &Ctx, reqs: Vec<wire::SessionRequest>, t: Duration, what: &str) -> Result<(), Finding> {
    let resp = cx.add(reqs.clone()).await?;
    check_add("addSession", &resp, &reqs, ACCEPTED, &[])?;
    let ids: Vec<u64> = reqs.iter().map(|r| r.session_id).collect();
    let tol = cx.config().tolerance;
    if cx.virtual_time() {
        cx.elapse(t - Duration::from_millis(1)).await;
        for &id in &ids {
            if !matches!(cx.get(id).await?, Lookup::Found(_)) {
                fail!("{what}: session {id} closed before its timeout of {} s", secs(t));
            }
        }
        cx.elapse(Duration::from_millis(1)).await;
    }
    let w = cx.wait_closed(&ids, t + tol + Duration::from_secs(5)).await?;
    let mut late = Vec::new();
    for r in &reqs {
        let Some((rec, seen)) = w.records.get(&r.session_id) else {
            fail!("{what}: session {} was not reported closed within {} s", r.session_id, secs(t + tol))
        };
        ensure_eq!(rec.session_close_code, wire::SessionCloseCode::Timeout as i32, "{what}: sessionCloseCode");
        let Some(lived) = lifetime(rec) else { fail!("{what}: record without startTime/endTime: {rec:?}") };
        ensure!(
            lived >= t,
            "{what}: session {} closed after {} s, before its timeout of {} s",
            r.session_id,
            secs(lived),
            secs(t)
        );
        if cx.virtual_time() {
            ensure_eq!(lived, t, "{what}: endTime - startTime in virtual time");
        } else {
            ensure!(
                lived <= t + tol,
                "{what}: endTime - startTime is {} s, more than the timeout {} s + tolerance {} s",
                secs(lived),
                secs(t),
                secs(tol)
            );
            // Seen by the suite: counted from after the add's answer, read every 20 ms.
            let observed = seen.saturating_sub(t);
            ensure!(
                observed <= tol + Duration::from_millis(100),
                "{what}: session {} was reported {} s after its timeout (tolerance {} s)",
                r.session_id,
                secs(observed),
                secs(tol)
            );
            late.push((lived - t).as_secs_f64() * 1e3);
        }
    }
    if !late.is_empty() {
        late.sort_by(f64::total_cmp);
        cx.measure(&format!("{what}: lateness_ms (endTime - startTime - timeout)"), late);
    }
    Ok(())
}

async fn idle_close(cx: Ctx) -> Result<(), Finding> {
    let reqs: Vec<_> =
        [wire::ActionType::Drop, wire::ActionType::Forward, wire::ActionType::Mirror, wire::ActionType::Snoop]
            .into_iter()
            .map(|a| {
                let hop = if a as i32 >= 2 { opof_proto::convert::ipv4_to_wire([192, 0, 2, 9].into()) } else { 0 };
                wire::SessionRequest {
                    cache_timeout: 2,
                    action: Some(wire::ActionParameters {
                        action_type: a as i32,
                        action_next_hop: hop,
                        ..Default::default()
                    }),
                    ..cx.flow_v4()
                }
            })
            .collect();
    closes_after(&cx, reqs, Duration::from_secs(2), "cacheTimeout 2").await
}

async fn default_timeout(cx: Ctx) -> Result<(), Finding> {
    let (Some(tcp), Some(udp)) = (cx.config().tcp_timeout, cx.config().udp_timeout) else {
        return Err(Finding::Skip(
            "the advertised default timeouts are not known: set OPOF_TCP_TIMEOUT and OPOF_UDP_TIMEOUT".into(),
        ));
    };
    let tcp_req = wire::SessionRequest { cache_timeout: 0, ..cx.flow_v4() };
    let udp_req = wire::SessionRequest { cache_timeout: 0, protocol_id: wire::ProtocolId::Udp as i32, ..cx.flow_v4() };
    let (first, second) = if tcp <= udp {
        ((tcp_req, tcp, "TCP"), (udp_req, udp, "UDP"))
    } else {
        ((udp_req, udp, "UDP"), (tcp_req, tcp, "TCP"))
    };
    // The shorter first, then the longer: each measured against its own default.
    closes_after(&cx, vec![first.0], Duration::from_secs(first.1.into()), &format!("{} cacheTimeout 0", first.2))
        .await?;
    closes_after(&cx, vec![second.0], Duration::from_secs(second.1.into()), &format!("{} cacheTimeout 0", second.2))
        .await
}

async fn gone_and_again(cx: Ctx) -> Result<(), Finding> {
    let r = wire::SessionRequest { cache_timeout: 1, ..cx.flow_v4() };
    closes_after(&cx, vec![r.clone()], Duration::from_secs(1), "cacheTimeout 1").await?;
    cx.absent(r.session_id).await?;
    let resp = cx.add(vec![r.clone()]).await?;
    check_add("the same request after its timeout", &resp, &[r], ACCEPTED, &[])
}
