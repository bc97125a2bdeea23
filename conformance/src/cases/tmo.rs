//! TMO: idle timeouts of sessions without traffic. Exact in virtual time (embedded); in real
//! time within the run's tolerance, with the measured lateness in the report.

use std::time::Duration;

use opof_proto::wire;

use super::{all_present, case, check_refusals, Case};
use crate::ctx::{Ctx, Lookup};
use crate::frames::Flow;
use crate::traffic::PortId;
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
            "TMO-1.2",
            "TMO-1",
            "Many idle sessions close on time: the lateness distribution",
            "Add 32 FORWARD sessions with cacheTimeout 2 s in one stream and send them no traffic; wait for their \
             closes.",
            "Each closes _TIMEOUT with endTime - startTime in [2 s, 2 s + tolerance] (exactly 2 s in virtual time); \
             the report gives the lateness (min, median, p99, max) by the device's timestamps and as observed.",
            many_idle
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
        case!(
            "TMO-4.1",
            "TMO-4",
            "Traffic keeps a session alive; it closes cacheTimeout after its last packet",
            "Add a FORWARD session with cacheTimeout 2 s; send a data frame into ext0 at 1.5 s and at 3 s (past the \
             first 2 s); look at 4.999 s and at 5 s (virtual time), or wait for the close (real time).",
            "The frames cross to ext1; the session is still there at 3 s and at 4.999 s; it closes _TIMEOUT 2 s after \
             the last frame (exactly in virtual time, within the tolerance in real time), counting 2 packets in.",
            kept_alive
        ),
        case!(
            "TMO-4.2",
            "TMO-4",
            "Every action ages after traffic, DROP included",
            "Add a DROP, a FORWARD, a MIRROR and a SNOOP session with cacheTimeout 2 s; send each one data frame \
             into ext0 at 1 s; then nothing.",
            "Each closes _TIMEOUT 2 s after its frame (at 3 s: exactly in virtual time, within the tolerance in \
             real time), counting its frame.",
            every_action_ages
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
    cx.setup_add(reqs.clone()).await?;
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
    let (mut late, mut observed) = (Vec::new(), Vec::new());
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
            let observed_late = seen.saturating_sub(t);
            ensure!(
                observed_late <= tol + Duration::from_millis(100),
                "{what}: session {} was reported {} s after its timeout (tolerance {} s)",
                r.session_id,
                secs(observed_late),
                secs(tol)
            );
            late.push((lived - t).as_secs_f64() * 1e3);
            observed.push(observed_late.as_secs_f64() * 1e3);
        }
    }
    if !late.is_empty() {
        cx.measure(&format!("{what}: lateness_ms (endTime - startTime - timeout)"), distribution(&mut late));
        cx.measure(&format!("{what}: observed_lateness_ms (seen on getClosedSessions)"), distribution(&mut observed));
    }
    Ok(())
}

/// n, min, median, p99 and max of milliseconds, rounded to 0.1 ms.
fn distribution(v: &mut [f64]) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        (v[i.min(v.len() - 1)] * 10.0).round() / 10.0
    };
    serde_json::json!({ "n": v.len(), "min": at(0.0), "median": at(0.5), "p99": at(0.99), "max": at(1.0) })
}

async fn many_idle(cx: Ctx) -> Result<(), Finding> {
    cx.need(32).await?;
    let reqs: Vec<_> = (0..32).map(|_| wire::SessionRequest { cache_timeout: 2, ..cx.flow_v4() }).collect();
    closes_after(&cx, reqs, Duration::from_secs(2), "32 sessions, cacheTimeout 2").await
}

/// Sends one data frame of each session into ext0 (its output is not this family's concern).
/// Returns when they were sent ([`Ctx::now`]).
async fn touch(cx: &Ctx, reqs: &[wire::SessionRequest], seq: u32) -> Result<Duration, Finding> {
    let frames: Vec<_> = reqs.iter().map(|r| (PortId::Ext0, Flow::of(r).a_to_b().seq(seq).build())).collect();
    // The frames go out at the start of the exchange, which then waits for anything to come
    // back: the time that counts is before it.
    let sent = cx.now();
    cx.exchange(frames, &[]).await?;
    Ok(sent)
}

/// Waits for the closes of `reqs`, each due `t` after the suite's last frame, which it sent
/// `since_add` after the addSession answer; checks the close code and the lifetime by the
/// device's own timestamps, and reports the lateness.
async fn closes_after_traffic(
    cx: &Ctx,
    reqs: &[wire::SessionRequest],
    since_add: Duration,
    t: Duration,
    what: &str,
) -> Result<(), Finding> {
    let ids: Vec<u64> = reqs.iter().map(|r| r.session_id).collect();
    let tol = cx.config().tolerance;
    if cx.virtual_time() {
        cx.elapse(t - Duration::from_millis(1)).await;
        for &id in &ids {
            if !matches!(cx.get(id).await?, Lookup::Found(_)) {
                fail!("{what}: session {id} closed before cacheTimeout had passed since its last packet");
            }
        }
        cx.elapse(Duration::from_millis(1)).await;
    }
    let w = cx.wait_closed(&ids, t + tol + Duration::from_secs(5)).await?;
    let mut late = Vec::new();
    for id in ids {
        let Some((rec, _)) = w.records.get(&id) else {
            fail!("{what}: session {id} was not reported closed within {} s of its last packet", secs(t + tol))
        };
        ensure_eq!(rec.session_close_code, wire::SessionCloseCode::Timeout as i32, "{what}: sessionCloseCode");
        ensure!(rec.in_packets >= 1, "{what}: session {id} counts no packet: the frame did not reach it");
        let Some(lived) = lifetime(rec) else { fail!("{what}: record without startTime/endTime: {rec:?}") };
        let due = since_add + t;
        if cx.virtual_time() {
            ensure_eq!(lived, due, "{what}: endTime - startTime in virtual time (last packet + cacheTimeout)");
        } else {
            ensure!(
                lived >= due && lived <= due + tol,
                "{what}: session {id} lived {} s; its last packet came {} s after it was added, so it is due at {} s \
                 (tolerance {} s)",
                secs(lived),
                secs(since_add),
                secs(due),
                secs(tol)
            );
            late.push((lived - due).as_secs_f64() * 1e3);
        }
    }
    if !late.is_empty() {
        cx.measure(&format!("{what}: lateness_ms after the last packet + timeout"), distribution(&mut late));
    }
    Ok(())
}

/// Lets time pass until `d` after `from` ([`Ctx::now`]).
async fn until(cx: &Ctx, from: Duration, d: Duration) {
    cx.elapse((from + d).saturating_sub(cx.now())).await;
}

async fn kept_alive(cx: Ctx) -> Result<(), Finding> {
    cx.traffic(&[PortId::Ext0])?;
    let t = Duration::from_secs(2);
    let r = wire::SessionRequest { cache_timeout: 2, ..cx.flow_v4() };
    cx.setup_add(vec![r.clone()]).await?;
    let added = cx.now();
    until(&cx, added, Duration::from_millis(1500)).await;
    let first = touch(&cx, std::slice::from_ref(&r), 1).await?;
    until(&cx, first, Duration::from_millis(1500)).await;
    if !matches!(cx.get(r.session_id).await?, Lookup::Found(_)) {
        fail!("the session closed although a packet came 1.5 s after it was added (cacheTimeout 2 s)");
    }
    let last = touch(&cx, std::slice::from_ref(&r), 2).await?;
    closes_after_traffic(&cx, std::slice::from_ref(&r), last - added, t, "a session kept alive").await?;
    cx.absent(r.session_id).await
}

async fn every_action_ages(cx: Ctx) -> Result<(), Finding> {
    cx.traffic(&[PortId::Ext0])?;
    let t = Duration::from_secs(2);
    let hop = opof_proto::convert::ipv4_to_wire([198, 51, 100, 7].into());
    let reqs: Vec<_> =
        [wire::ActionType::Drop, wire::ActionType::Forward, wire::ActionType::Mirror, wire::ActionType::Snoop]
            .into_iter()
            .map(|a| wire::SessionRequest {
                cache_timeout: 2,
                action: Some(wire::ActionParameters {
                    action_type: a as i32,
                    action_next_hop: if a as i32 >= 2 { hop } else { 0 },
                    ..Default::default()
                }),
                ..cx.flow_v4()
            })
            .collect();
    cx.setup_add(reqs.clone()).await?;
    let added = cx.now();
    until(&cx, added, Duration::from_secs(1)).await;
    let last = touch(&cx, &reqs, 1).await?;
    closes_after_traffic(&cx, &reqs, last - added, t, "DROP, FORWARD, MIRROR, SNOOP after one packet").await
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
    // Closing on time is TMO-1's clause; this one is about what a close leaves behind.
    closes_after(&cx, vec![r.clone()], Duration::from_secs(1), "cacheTimeout 1")
        .await
        .map_err(crate::ctx::setup_of("TMO-1"))?;
    cx.absent(r.session_id).await?;
    let again = vec![r];
    let resp = cx.add(again.clone()).await?;
    check_refusals("the same request after its timeout", &resp, &again, &[])?;
    all_present(&cx, &again).await
}
