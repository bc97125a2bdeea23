//! BAD: bad input — undecodable bytes, oversized messages, streams that end badly. Each gets a
//! status, changes nothing, and the server keeps serving.

use std::time::Duration;

use bytes::Bytes;
use opof_proto::raw;
use opof_proto::wire;
use prost::Message;
use tonic::Code;

use super::{case, Case};
use crate::ctx::Ctx;
use crate::rawh2;
use crate::verdict::Finding;
use crate::{ensure, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "BAD-1.1",
            "BAD-1",
            "Undecodable message bytes get an error status and change nothing",
            "Bytes no protobuf decoder accepts, as the request of getSession, deleteSession, getAllSessions and \
             getClosedSessions, and as the third message of an addSession stream after two valid sessions; then \
             a valid call.",
            "Each answered with a non-OK status; the two sessions not inserted; the session count unchanged; \
             the valid call answered.",
            undecodable
        ),
        case!(
            "BAD-2.1",
            "BAD-2",
            "A message over the size limit is refused",
            "An addSession stream whose one request is just over the advertised limit \
             (OPOF_MAX_MESSAGE_BYTES, default 4 MiB), and a getAllSessions request as large; then a valid call.",
            "Both answered with a non-OK status; nothing inserted; the valid call answered.",
            oversized
        ),
        case!(
            "BAD-3.1",
            "BAD-3",
            "A cancelled addSession stream inserts nothing",
            "Open an addSession stream, send ten valid sessions, then reset the HTTP/2 stream (RST_STREAM \
             CANCEL) instead of ending it.",
            "None of the ten is ever in the table.",
            cancelled
        ),
        case!(
            "BAD-3.2",
            "BAD-3",
            "An addSession stream past its deadline inserts nothing",
            "An addSession call with grpc-timeout 300 ms; send ten valid sessions and keep the stream open until \
             the device answers; then end the stream.",
            "The call ends with DEADLINE_EXCEEDED (or CANCELLED); none of the ten is in the table, then or later.",
            past_deadline
        ),
    ]
}

fn encode(r: &wire::SessionRequest) -> Bytes {
    // Message bytes only: the raw calls add the gRPC framing.
    Bytes::from(r.encode_to_vec())
}

/// The endpoint still answers a valid call.
async fn still_serving(cx: &Ctx) -> Result<(), Finding> {
    cx.page(wire::SessionRequestArgs { page_size: 1, ..Default::default() })
        .await
        .map(drop)
        .map_err(|e| Finding::Fail(format!("after the bad input, a valid call failed: {}", e.message())))
}

async fn undecodable(cx: Ctx) -> Result<(), Finding> {
    let before = cx.count_sessions().await?;
    let ch = cx.target().channel.clone();
    let f = cx.target().flavour;
    let garbage = || Bytes::from_static(raw::UNDECODABLE);
    for m in ["getSession", "deleteSession", "getAllSessions"] {
        match raw::unary(&ch, &f.path(m), garbage()).await {
            Ok(_) => fail!("{m} answered OK to undecodable bytes"),
            Err(s) => cx.note(format!("{m}: {:?}", s.code())),
        }
    }
    match raw::server_stream(&ch, &f.path("getClosedSessions"), garbage()).await {
        Ok(_) => fail!("getClosedSessions answered OK to undecodable bytes"),
        Err(s) => cx.note(format!("getClosedSessions: {:?}", s.code())),
    }
    let good = cx.flows(2);
    cx.track_ids(good.iter().map(|r| r.session_id));
    let bodies = vec![encode(&good[0]), encode(&good[1]), garbage()];
    match raw::client_stream(&ch, &f.path("addSession"), bodies).await {
        Ok(_) => fail!("addSession answered OK to a stream with undecodable bytes"),
        Err(s) => cx.note(format!("addSession: {:?}", s.code())),
    }
    for r in &good {
        cx.absent(r.session_id).await?;
    }
    still_serving(&cx).await?;
    let after = cx.count_sessions().await?;
    ensure!(after == before, "the session count went from {before} to {after}");
    Ok(())
}

async fn oversized(cx: Ctx) -> Result<(), Finding> {
    let limit = cx.config().max_message_bytes;
    let ch = cx.target().channel.clone();
    let f = cx.target().flavour;
    let mut big = cx.flow_v6();
    // Grow a bytes field until the encoded message is just over the limit.
    big.source_ip_v6 = vec![0; limit.saturating_sub(64)];
    while big.encoded_len() <= limit {
        big.source_ip_v6.push(0);
    }
    cx.track_ids([big.session_id]);
    match raw::client_stream(&ch, &f.path("addSession"), vec![encode(&big)]).await {
        Ok(_) => fail!("addSession answered OK to a message of {} bytes (limit {limit})", big.encoded_len()),
        Err(s) => cx.note(format!("addSession over the limit: {:?}", s.code())),
    }
    // getAllSessions arguments padded with an unknown field (number 15, bytes) over the limit.
    let mut args = wire::SessionRequestArgs { page_size: 1, ..Default::default() }.encode_to_vec();
    let pad = limit + 1;
    args.push((15 << 3) | 2);
    let mut n = pad as u64;
    while n >= 0x80 {
        args.push((n as u8) | 0x80);
        n >>= 7;
    }
    args.push(n as u8);
    args.resize(args.len() + pad, 0);
    match raw::unary(&ch, &f.path("getAllSessions"), Bytes::from(args)).await {
        Ok(_) => fail!("getAllSessions answered OK to a message over the limit ({limit} bytes)"),
        Err(s) => cx.note(format!("getAllSessions over the limit: {:?}", s.code())),
    }
    cx.absent(big.session_id).await?;
    still_serving(&cx).await
}

/// The ten sessions must stay out of the table: checked now, and again after a pause so that
/// a late commit would show.
async fn never_inserted(cx: &Ctx, ids: &[u64]) -> Result<(), Finding> {
    for round in 0..2 {
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for &id in ids {
            if let crate::ctx::Lookup::Found(_) = cx.get(id).await? {
                fail!("session {id} of a stream that did not end cleanly is in the table");
            }
        }
    }
    Ok(())
}

async fn cancelled(cx: Ctx) -> Result<(), Finding> {
    let reqs = cx.flows(10);
    cx.track_ids(reqs.iter().map(|r| r.session_id));
    let t = cx.target();
    let frames: Vec<Bytes> = reqs.iter().map(rawh2::frame).collect();
    let path = t.flavour.path("addSession");
    let (response, mut body) = rawh2::open_stream(&t.address, t.main_tls.as_ref(), &path, None, &frames).await?;
    // Let the ten messages reach the server, then reset the stream as a cancelling client does.
    tokio::time::sleep(Duration::from_millis(200)).await;
    body.send_reset(h2::Reason::CANCEL);
    let _ = response.await;
    let ids: Vec<u64> = reqs.iter().map(|r| r.session_id).collect();
    never_inserted(&cx, &ids).await?;
    still_serving(&cx).await
}

async fn past_deadline(cx: Ctx) -> Result<(), Finding> {
    let reqs = cx.flows(10);
    cx.track_ids(reqs.iter().map(|r| r.session_id));
    let t = cx.target();
    let frames: Vec<Bytes> = reqs.iter().map(rawh2::frame).collect();
    let path = t.flavour.path("addSession");
    let (response, mut body) =
        rawh2::open_stream(&t.address, t.main_tls.as_ref(), &path, Some("300m"), &frames).await?;
    // The stream stays open: the device must end the call itself when the deadline passes.
    let answer = tokio::time::timeout(Duration::from_secs(10), response).await;
    let _ = body.send_data(Bytes::new(), true);
    let response = match answer {
        Err(_) => fail!("the device did not end the call within 10 s of its 300 ms deadline"),
        Ok(Err(e)) => return Err(Finding::Error(format!("the call failed at the HTTP/2 level: {e}"))),
        Ok(Ok(r)) => r,
    };
    match rawh2::grpc_status(response).await? {
        Some(s) if s == Code::DeadlineExceeded as i32 || s == Code::Cancelled as i32 => cx.measure("grpc_status", s),
        other => fail!("the call past its deadline ended with grpc-status {other:?}, want 4 (DEADLINE_EXCEEDED)"),
    }
    let ids: Vec<u64> = reqs.iter().map(|r| r.session_id).collect();
    never_inserted(&cx, &ids).await?;
    still_serving(&cx).await
}
