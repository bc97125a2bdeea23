//! LOAD: concurrent streams, and unary calls while the table is being loaded.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opof_proto::wire;
use tonic::Code;

use super::{case, Case};
use crate::ctx::{call_failed, Ctx};
use crate::verdict::Finding;
use crate::{ensure, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "LOAD-1.1",
            "LOAD-1",
            "Concurrent streams lose and duplicate nothing",
            "Eight addSession streams at once, 250 new sessions each (fewer if the table is smaller), plus 50 \
             sessions each sent in two of the streams; then getSession of every id.",
            "Each contested session accepted by exactly one stream (the other flags it _SESSION_ALREADY_EXISTS); \
             nothing else flagged; every session in the table.",
            concurrent_streams
        ),
        case!(
            "LOAD-2.1",
            "LOAD-2",
            "Unary calls answer within 100 ms under an add load",
            "While streams of 1,000 new sessions are added back to back (at most 20), 300 getSession calls one \
             after another, each with the 100 ms deadline of the field's C client.",
            "At least 99% answered within the deadline, none with another error; latencies in the report.",
            unary_under_load
        ),
    ]
}

async fn concurrent_streams(cx: Ctx) -> Result<(), Finding> {
    const STREAMS: usize = 8;
    // 250 per stream when the table has room for them, fewer on a small table. A device may
    // reserve room for a stream's new sessions before it commits, so a contested session may
    // hold two places for a while: leave room for both.
    cx.refuses(crate::ctx::Refusal::DuplicateId).await?;
    let cap = cx.capacity().await.map_err(crate::ctx::setup)?;
    let free = cap.saturating_sub(cx.count_sessions().await?);
    let per = (free.saturating_sub(100) / STREAMS).min(250);
    if per < 10 {
        return Err(Finding::Skip(format!("the table has room for {free} sessions; the case needs 180")));
    }
    let contested: Vec<wire::SessionRequest> = cx.flows(50);
    let mut streams: Vec<Vec<wire::SessionRequest>> = (0..STREAMS).map(|_| cx.flows(per)).collect();
    // Contested session i goes into streams i % 8 and (i + 1) % 8, at different positions.
    for (i, r) in contested.iter().enumerate() {
        streams[i % STREAMS].insert(i * 3 % per, r.clone());
        streams[(i + 1) % STREAMS].push(r.clone());
    }
    let calls = streams.iter().map(|s| {
        let cx = cx.clone();
        let s = s.clone();
        async move { cx.add(s).await }
    });
    let answers = futures_util::future::join_all(calls).await;
    let contested_ids: HashSet<u64> = contested.iter().map(|r| r.session_id).collect();
    let mut refusals: HashMap<u64, usize> = HashMap::new();
    for (k, a) in answers.into_iter().enumerate() {
        let a = a?;
        // Refused by either report; how each refusal is reported is ADD-9..11's.
        let refused = super::flagged(&a, &streams[k]);
        for (r, _) in streams[k].iter().zip(refused).filter(|(_, f)| *f) {
            ensure!(
                contested_ids.contains(&r.session_id),
                "stream {k} refused session {}, which no other stream holds",
                r.session_id
            );
            *refusals.entry(r.session_id).or_default() += 1;
        }
    }
    for id in &contested_ids {
        match refusals.get(id) {
            Some(1) => {}
            Some(n) => fail!("session {id}, sent in two streams, was refused by {n}"),
            None => fail!("session {id}, sent in two streams, was accepted by both"),
        }
    }
    for s in &streams {
        super::all_present(&cx, s).await?;
    }
    Ok(())
}

async fn unary_under_load(cx: Ctx) -> Result<(), Finding> {
    let probe = cx.flow_v4();
    cx.setup_add(vec![probe.clone()]).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (cx, stop) = (cx.clone(), stop.clone());
        tokio::spawn(async move {
            let mut streams = 0;
            while !stop.load(Ordering::Relaxed) && streams < 20 {
                // The load is the work of the streams: a stream refused for the table's size
                // (a small table fills at once) is load all the same.
                match cx.add_call(cx.flows(1000)).await {
                    Ok(_) => {}
                    Err(s) if s.code() == Code::ResourceExhausted => {}
                    Err(s) => return Err(call_failed("addSession (the load)", &s)),
                }
                streams += 1;
            }
            Ok::<usize, Finding>(streams)
        })
    };
    let mut latencies = Vec::new();
    let mut missed = 0;
    for _ in 0..300 {
        let mut req = tonic::Request::new(wire::SessionId { session_id: probe.session_id });
        req.set_timeout(Duration::from_millis(100));
        let t = Instant::now();
        match cx.client().get_session(req).await {
            Ok(_) => latencies.push(t.elapsed()),
            Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => missed += 1,
            Err(s) => {
                stop.store(true, Ordering::Relaxed);
                return Err(call_failed("getSession under load", &s));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let streams = load.await.map_err(|e| Finding::Error(format!("load task: {e}")))??;
    latencies.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    if let (Some(min), Some(max)) = (latencies.first(), latencies.last()) {
        cx.measure("latency_ms_min", ms(*min));
        cx.measure("latency_ms_median", ms(latencies[latencies.len() / 2]));
        cx.measure("latency_ms_p99", ms(latencies[latencies.len() * 99 / 100]));
        cx.measure("latency_ms_max", ms(*max));
    }
    cx.measure("deadline_missed", missed);
    cx.measure("add_streams_during_calls", streams);
    ensure!(missed <= 3, "{missed} of 300 getSession calls missed the 100 ms deadline under load (at most 3 allowed)");
    Ok(())
}
