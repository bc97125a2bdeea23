//! ADD: addSession — acceptance, encodings, duplicates, validation, the error report, capacity.

use std::net::Ipv4Addr;

use opof_proto::convert::ipv4_to_wire;
use opof_proto::domain::Timestamp;
use opof_proto::wire;
use tonic::Code;

use super::{all_present, case, check_add, Case, ACCEPTED, ALREADY_EXISTS, REJECTED, TABLE_FULL};
use crate::ctx::Ctx;
use crate::target::Time;
use crate::verdict::{Finding, Profile};
use crate::{ensure, ensure_eq, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "ADD-1.1",
            "ADD-1",
            "One IPv4 session is accepted and found",
            "A stream of one valid IPv4 TCP FORWARD session; getSession of its id.",
            "_SESSION_ACCEPTED, errorStatus 0, no responseError; getSession finds it.",
            one_v4
        ),
        case!(
            "ADD-1.2",
            "ADD-1",
            "One IPv6 session is accepted and found",
            "A stream of one valid IPv6 UDP FORWARD session; getSession of its id.",
            "_SESSION_ACCEPTED, errorStatus 0, no responseError; getSession finds it.",
            one_v6
        ),
        case!(
            "ADD-1.3",
            "ADD-1",
            "A stream of 64 sessions is accepted whole",
            "A stream of 64 valid sessions (IPv4 and IPv6 alternating); getSession of each.",
            "_SESSION_ACCEPTED, errorStatus 0; every session found.",
            stream_64
        ),
        case!(
            "ADD-1.4",
            "ADD-1",
            "A stream of 1,000 sessions is accepted whole",
            "A stream of 1,000 valid IPv4 sessions; getSession of each.",
            "_SESSION_ACCEPTED, errorStatus 0, no responseError; every session found.",
            stream_1000
        ),
        case!(
            "ADD-2.1",
            "ADD-2",
            "IPv4 addresses are read as s_addr, little-endian",
            "MIRROR to next hop 10.0.0.224 (sent as 0xE000000A); then MIRROR to next hop 224.0.0.10 (sent as \
             0x0A0000E0). Read the other way round, each is the other address.",
            "The first is accepted, the second (multicast, not a host) refused with _SESSION_REJECTED. The \
             reverse means the device reads IPv4 big-endian.",
            byte_order
        ),
        case!(
            "ADD-3.1",
            "ADD-3",
            "IPv6 addresses of a length other than 16 are refused",
            "Three IPv6 requests, each alone: source of 15 bytes, destination of 17 bytes, source of 4 bytes.",
            "Each _SESSION_REJECTED with bit 0 and its id in responseError; none is in the table.",
            v6_length
        ),
        case!(
            "ADD-4.1",
            "ADD-4",
            "A session id already in the table is refused",
            "Add a session; then a stream of one new flow reusing that id.",
            "_SESSION_ALREADY_EXISTS, bit 0, the id in responseError; the first session is still there.",
            dup_id_across
        ),
        case!(
            "ADD-4.2",
            "ADD-4",
            "A session id repeated within one stream is refused",
            "A stream of two different flows with the same id.",
            "_SESSION_ALREADY_EXISTS for the second (bit 1), the first inserted.",
            dup_id_within
        ),
        case!(
            "ADD-5.1",
            "ADD-5",
            "A 5-tuple already in the table is refused",
            "Add a session; then the same 5-tuple under a new id.",
            "_SESSION_ALREADY_EXISTS, bit 0; the new id is not in the table.",
            dup_tuple_same
        ),
        case!(
            "ADD-5.2",
            "ADD-5",
            "The reverse of a 5-tuple in the table is refused",
            "Add a session; then its reverse (addresses and ports swapped) under a new id.",
            "_SESSION_ALREADY_EXISTS, bit 0; the new id is not in the table.",
            dup_tuple_reversed
        ),
        case!(
            "ADD-5.3",
            "ADD-5",
            "A 5-tuple repeated (reversed) within one stream is refused",
            "A stream of a flow and its reverse under two ids.",
            "_SESSION_ALREADY_EXISTS for the second (bit 1), the first inserted.",
            dup_tuple_within
        ),
        case!(
            "ADD-6.1",
            "ADD-6",
            "MIRROR and SNOOP need a unicast next hop",
            "Each alone: MIRROR and SNOOP with no next hop; MIRROR to 255.255.255.255; SNOOP to ff02::1; \
             MIRROR to ::.",
            "Each _SESSION_REJECTED with bit 0; none is in the table.",
            next_hop_required
        ),
        case!(
            "ADD-7.1",
            "ADD-7",
            "Protocol other than TCP or UDP is refused",
            "Requests alone with protocolId 1 (ICMP) and 0 (HOPOPT).",
            "Each _SESSION_REJECTED with bit 0; not in the table.",
            bad_protocol
        ),
        case!(
            "ADD-7.2",
            "ADD-7",
            "Ports above 65535 are refused",
            "Requests alone with sourcePort 70000 and destinationPort 65536.",
            "Each _SESSION_REJECTED with bit 0; not in the table.",
            bad_port
        ),
        case!(
            "ADD-7.3",
            "ADD-7",
            "Unknown ipVersion and actionType are refused",
            "Requests alone with ipVersion 2 and actionType 4.",
            "Each _SESSION_REJECTED with bit 0; not in the table.",
            bad_enums
        ),
        case!(
            "ADD-7.4",
            "ADD-7",
            "cacheTimeout above the advertised maximum is refused",
            "A request with cacheTimeout one above the maximum (OPOF_MAX_CACHE_TIMEOUT, default 86400), and one \
             at the maximum.",
            "The first _SESSION_REJECTED and not in the table; the second accepted.",
            bad_timeout
        ),
        case!(
            "ADD-8.1",
            "ADD-8",
            "A refused request refuses only itself",
            "A stream: valid, invalid (protocol 1), valid, duplicate id of the first, valid.",
            "_SESSION_REJECTED, bits 1 and 3; the three valid sessions inserted, the others not.",
            mixed_stream
        ),
        case!(
            "ADD-9.1",
            "ADD-9",
            "errorStatus has one bit per request, the first 64 only",
            "A stream of 70 with invalid requests at positions 0, 5, 63, 64 and 69.",
            "errorStatus = bits 0, 5, 63; responseError lists all five ids in order; the 65 others inserted.",
            bitmask_70
        ),
        case!(
            "ADD-10.1",
            "ADD-10",
            "responseError carries ADD_SESSION_STATUS values",
            "A stream: invalid (protocol 1), valid, and a request reusing the valid one's id.",
            "responseError = [{invalid id, 1 _SESSION_REJECTED}, {duplicate id, 4 _SESSION_ALREADY_EXISTS}]. \
             gRPC numbers (3, 6) or REQUEST_STATUS values: NON-STRICT under profile response-error-codes.",
            error_codes
        ),
        case!(
            "ADD-11.1",
            "ADD-11",
            "Only duplicates: _SESSION_ALREADY_EXISTS",
            "Add a session; then a stream of it again and of a new flow under its id.",
            "_SESSION_ALREADY_EXISTS with bits 0 and 1.",
            only_duplicates
        ),
        case!(
            "ADD-11.2",
            "ADD-11",
            "Duplicates and invalid requests: _SESSION_REJECTED",
            "Add a session; then a stream of a duplicate of it and an invalid request.",
            "_SESSION_REJECTED with bits 0 and 1.",
            duplicates_and_invalid
        ),
        case!(
            "ADD-12.1",
            "ADD-12",
            "Capacity is all-or-nothing",
            "Fill the table to its capacity; add a stream of two new sessions; free one place and add a stream \
             of a new session, an invalid one and another new session; then one new session.",
            "Both full streams: _SESSION_TABLE_FULL, every request flagged (codes 2; gRPC 8 NON-STRICT under \
             profile response-error-codes), nothing inserted. The last: accepted.",
            all_or_nothing
        ),
        case!(
            "ADD-13.1",
            "ADD-13",
            "An empty stream is accepted and inserts nothing",
            "An addSession stream with no request; count the sessions before and after.",
            "_SESSION_ACCEPTED, errorStatus 0, no responseError; the count unchanged.",
            empty_stream
        ),
        case!(
            "ADD-14.1",
            "ADD-14",
            "Ids 0 and above 2^32 are kept whole",
            "Sessions with ids 0, 2^32 + 7 and 2^63 + 5; getSession of each; getAllSessions from 2^32 + 7.",
            "Each found under its own id, reported with that id.",
            wide_ids
        ),
        case!(
            "ADD-15.1",
            "ADD-15",
            "startTime is the commit time",
            "A stream of two sessions; getSession of each.",
            "The response has a startTime; each session's startTime equals it (and, in virtual time, the \
             device's clock at the commit).",
            start_time
        ),
    ]
}

async fn accept(cx: &Ctx, reqs: Vec<wire::SessionRequest>) -> Result<(), Finding> {
    let r = cx.add(reqs.clone()).await?;
    check_add("addSession", &r, &reqs, ACCEPTED, &[])?;
    all_present(cx, &reqs).await
}

async fn one_v4(cx: Ctx) -> Result<(), Finding> {
    accept(&cx, vec![cx.flow_v4()]).await
}

async fn one_v6(cx: Ctx) -> Result<(), Finding> {
    accept(&cx, vec![cx.flow_v6()]).await
}

async fn stream_64(cx: Ctx) -> Result<(), Finding> {
    let reqs = (0..64).map(|i| if i % 2 == 0 { cx.flow_v4() } else { cx.flow_v6() }).collect();
    accept(&cx, reqs).await
}

async fn stream_1000(cx: Ctx) -> Result<(), Finding> {
    accept(&cx, cx.flows(1000)).await
}

/// A request that must be refused alone, with `_SESSION_REJECTED`, and not inserted.
async fn refused_alone(cx: &Ctx, what: &str, r: wire::SessionRequest) -> Result<(), Finding> {
    let id = r.session_id;
    let reqs = vec![r];
    let resp = cx.add(reqs.clone()).await?;
    check_add(what, &resp, &reqs, REJECTED, &[0])?;
    cx.absent(id).await.map_err(|e| Finding::Fail(format!("{what}: {}", e.message())))
}

fn mirror(mut r: wire::SessionRequest, v4: u32, v6: Vec<u8>) -> wire::SessionRequest {
    r.action = Some(wire::ActionParameters {
        action_type: wire::ActionType::Mirror as i32,
        action_next_hop: v4,
        action_next_hop_v6: v6,
    });
    r
}

async fn byte_order(cx: Ctx) -> Result<(), Finding> {
    let host = ipv4_to_wire(Ipv4Addr::new(10, 0, 0, 224));
    ensure_eq!(host, 0xE000_000A, "10.0.0.224 on the wire");
    let r = mirror(cx.flow_v4(), host, vec![]);
    let resp = cx.add(vec![r.clone()]).await?;
    if resp.request_status != ACCEPTED {
        fail!(
            "MIRROR to next hop 10.0.0.224 (wire 0xE000000A) was answered requestStatus {}: read big-endian, it \
             is 224.0.0.10, a multicast group; the device reads IPv4 in the wrong byte order",
            resp.request_status
        );
    }
    cx.present(r.session_id).await?;
    let group = ipv4_to_wire(Ipv4Addr::new(224, 0, 0, 10));
    let r = mirror(cx.flow_v4(), group, vec![]);
    let resp = cx.add(vec![r.clone()]).await?;
    if resp.request_status != REJECTED {
        fail!(
            "MIRROR to next hop 224.0.0.10 (wire 0x0A0000E0, multicast) was answered requestStatus {}, not \
             _SESSION_REJECTED: read big-endian it is 10.0.0.224; the device reads IPv4 in the wrong byte order",
            resp.request_status
        );
    }
    cx.absent(r.session_id).await
}

async fn v6_length(cx: Ctx) -> Result<(), Finding> {
    let mut a = cx.flow_v6();
    a.source_ip_v6.pop();
    refused_alone(&cx, "source of 15 bytes", a).await?;
    let mut b = cx.flow_v6();
    b.destination_ip_v6.push(0);
    refused_alone(&cx, "destination of 17 bytes", b).await?;
    let mut c = cx.flow_v6();
    c.source_ip_v6.truncate(4);
    refused_alone(&cx, "source of 4 bytes", c).await
}

async fn dup_id_across(cx: Ctx) -> Result<(), Finding> {
    let a = cx.flow_v4();
    accept(&cx, vec![a.clone()]).await?;
    let b = wire::SessionRequest { session_id: a.session_id, ..cx.flow_v4() };
    let resp = cx.add(vec![b.clone()]).await?;
    check_add("same id again", &resp, &[b], ALREADY_EXISTS, &[0])?;
    cx.present(a.session_id).await.map(drop)
}

async fn dup_id_within(cx: Ctx) -> Result<(), Finding> {
    let a = cx.flow_v4();
    let b = wire::SessionRequest { session_id: a.session_id, ..cx.flow_v4() };
    let reqs = vec![a.clone(), b];
    let resp = cx.add(reqs.clone()).await?;
    check_add("one id twice in a stream", &resp, &reqs, ALREADY_EXISTS, &[1])?;
    cx.present(a.session_id).await.map(drop)
}

fn reversed(r: &wire::SessionRequest, id: u64) -> wire::SessionRequest {
    wire::SessionRequest {
        session_id: id,
        source_ip: r.destination_ip,
        destination_ip: r.source_ip,
        source_ip_v6: r.destination_ip_v6.clone(),
        destination_ip_v6: r.source_ip_v6.clone(),
        source_port: r.destination_port,
        destination_port: r.source_port,
        ..r.clone()
    }
}

async fn dup_tuple(cx: &Ctx, what: &str, reverse: bool) -> Result<(), Finding> {
    let a = cx.flow_v4();
    accept(cx, vec![a.clone()]).await?;
    let id = cx.flow_v4().session_id;
    let b = if reverse { reversed(&a, id) } else { wire::SessionRequest { session_id: id, ..a.clone() } };
    let resp = cx.add(vec![b.clone()]).await?;
    check_add(what, &resp, &[b], ALREADY_EXISTS, &[0])?;
    cx.absent(id).await
}

async fn dup_tuple_same(cx: Ctx) -> Result<(), Finding> {
    dup_tuple(&cx, "the same 5-tuple under a new id", false).await
}

async fn dup_tuple_reversed(cx: Ctx) -> Result<(), Finding> {
    dup_tuple(&cx, "the reversed 5-tuple under a new id", true).await
}

async fn dup_tuple_within(cx: Ctx) -> Result<(), Finding> {
    let a = cx.flow_v4();
    let b = reversed(&a, cx.flow_v4().session_id);
    let reqs = vec![a.clone(), b.clone()];
    let resp = cx.add(reqs.clone()).await?;
    check_add("a flow and its reverse in one stream", &resp, &reqs, ALREADY_EXISTS, &[1])?;
    cx.present(a.session_id).await?;
    cx.absent(b.session_id).await
}

async fn next_hop_required(cx: Ctx) -> Result<(), Finding> {
    for kind in [wire::ActionType::Mirror, wire::ActionType::Snoop] {
        let mut r = cx.flow_v4();
        r.action = Some(wire::ActionParameters { action_type: kind as i32, ..Default::default() });
        refused_alone(&cx, &format!("{} without a next hop", kind.as_str_name()), r).await?;
    }
    refused_alone(&cx, "MIRROR to 255.255.255.255", mirror(cx.flow_v4(), u32::MAX, vec![])).await?;
    let mut all_nodes = vec![0u8; 16];
    all_nodes[0] = 0xff;
    all_nodes[1] = 0x02;
    all_nodes[15] = 1;
    let mut snoop = mirror(cx.flow_v6(), 0, all_nodes);
    snoop.action.as_mut().expect("set above").action_type = wire::ActionType::Snoop as i32;
    refused_alone(&cx, "SNOOP to ff02::1", snoop).await?;
    refused_alone(&cx, "MIRROR to ::", mirror(cx.flow_v6(), 0, vec![0; 16])).await
}

async fn bad_protocol(cx: Ctx) -> Result<(), Finding> {
    for p in [1, 0] {
        let r = wire::SessionRequest { protocol_id: p, ..cx.flow_v4() };
        refused_alone(&cx, &format!("protocolId {p}"), r).await?;
    }
    Ok(())
}

async fn bad_port(cx: Ctx) -> Result<(), Finding> {
    refused_alone(&cx, "sourcePort 70000", wire::SessionRequest { source_port: 70_000, ..cx.flow_v4() }).await?;
    refused_alone(&cx, "destinationPort 65536", wire::SessionRequest { destination_port: 65_536, ..cx.flow_v4() }).await
}

async fn bad_enums(cx: Ctx) -> Result<(), Finding> {
    refused_alone(&cx, "ipVersion 2", wire::SessionRequest { ip_version: 2, ..cx.flow_v4() }).await?;
    let mut r = cx.flow_v4();
    r.action = Some(wire::ActionParameters { action_type: 4, ..Default::default() });
    refused_alone(&cx, "actionType 4", r).await
}

async fn bad_timeout(cx: Ctx) -> Result<(), Finding> {
    let max = cx.config().max_cache_timeout;
    let over = wire::SessionRequest { cache_timeout: max.saturating_add(1), ..cx.flow_v4() };
    refused_alone(&cx, &format!("cacheTimeout {}", max.saturating_add(1)), over).await?;
    accept(&cx, vec![wire::SessionRequest { cache_timeout: max, ..cx.flow_v4() }]).await
}

fn invalid(cx: &Ctx) -> wire::SessionRequest {
    wire::SessionRequest { protocol_id: 1, ..cx.flow_v4() }
}

async fn mixed_stream(cx: Ctx) -> Result<(), Finding> {
    let v0 = cx.flow_v4();
    let reqs = vec![
        v0.clone(),
        invalid(&cx),
        cx.flow_v4(),
        wire::SessionRequest { session_id: v0.session_id, ..cx.flow_v4() },
        cx.flow_v4(),
    ];
    let resp = cx.add(reqs.clone()).await?;
    check_add("mixed stream", &resp, &reqs, REJECTED, &[1, 3])?;
    for i in [0, 2, 4] {
        cx.present(reqs[i].session_id).await?;
    }
    cx.absent(reqs[1].session_id).await
}

async fn bitmask_70(cx: Ctx) -> Result<(), Finding> {
    let bad = [0, 5, 63, 64, 69];
    let reqs: Vec<_> = (0..70).map(|i| if bad.contains(&i) { invalid(&cx) } else { cx.flow_v4() }).collect();
    let resp = cx.add(reqs.clone()).await?;
    check_add("stream of 70", &resp, &reqs, REJECTED, &bad)?;
    for (i, r) in reqs.iter().enumerate() {
        if bad.contains(&i) {
            cx.absent(r.session_id).await?;
        } else {
            cx.present(r.session_id).await?;
        }
    }
    Ok(())
}

/// Checks one responseError code: `want` (an ADD_SESSION_STATUS value), or one of the field's
/// other encodings of the same failure (tolerated by profile response-error-codes).
fn check_code(cx: &Ctx, id: u64, got: i32, want: i32, field: &[(i32, &str)]) -> Result<(), Finding> {
    if got == want {
        return Ok(());
    }
    match field.iter().find(|(v, _)| *v == got) {
        Some((_, name)) => cx.tolerate(
            Profile::ResponseErrorCodes,
            format!("responseError of session {id}: errorStatus {got} ({name}) instead of {want} ({})", {
                super::status_name(want)
            }),
        ),
        None => fail!("responseError of session {id}: errorStatus {got}, want {want} ({})", super::status_name(want)),
    }
}

async fn error_codes(cx: Ctx) -> Result<(), Finding> {
    let x = invalid(&cx);
    let y = cx.flow_v4();
    let z = wire::SessionRequest { session_id: y.session_id, ..cx.flow_v4() };
    let reqs = vec![x.clone(), y, z.clone()];
    let resp = cx.add(reqs.clone()).await?;
    check_add("stream with an invalid request and a duplicate", &resp, &reqs, REJECTED, &[0, 2])?;
    let e = &resp.response_error;
    check_code(
        &cx,
        x.session_id,
        e[0].error_status,
        REJECTED,
        &[(Code::InvalidArgument as i32, "gRPC INVALID_ARGUMENT")],
    )?;
    check_code(
        &cx,
        z.session_id,
        e[1].error_status,
        ALREADY_EXISTS,
        &[(Code::AlreadyExists as i32, "gRPC ALREADY_EXISTS")],
    )
}

async fn only_duplicates(cx: Ctx) -> Result<(), Finding> {
    let a = cx.flow_v4();
    accept(&cx, vec![a.clone()]).await?;
    let reqs = vec![a.clone(), wire::SessionRequest { session_id: a.session_id, ..cx.flow_v4() }];
    let resp = cx.add(reqs.clone()).await?;
    check_add("a stream of duplicates only", &resp, &reqs, ALREADY_EXISTS, &[0, 1])
}

async fn duplicates_and_invalid(cx: Ctx) -> Result<(), Finding> {
    let a = cx.flow_v4();
    accept(&cx, vec![a.clone()]).await?;
    let reqs = vec![a, invalid(&cx)];
    let resp = cx.add(reqs.clone()).await?;
    check_add("a duplicate and an invalid request", &resp, &reqs, REJECTED, &[0, 1])
}

async fn full_stream(cx: &Ctx, what: &str, reqs: Vec<wire::SessionRequest>) -> Result<(), Finding> {
    let resp = cx.add(reqs.clone()).await?;
    let every: Vec<usize> = (0..reqs.len()).collect();
    check_add(what, &resp, &reqs, TABLE_FULL, &every)?;
    for r in &reqs {
        if let crate::ctx::Lookup::Found(_) = cx.get(r.session_id).await? {
            fail!("{what}: session {} was inserted although the stream was answered _SESSION_TABLE_FULL", r.session_id);
        }
    }
    for e in &resp.response_error {
        let fresh = reqs.iter().any(|r| r.session_id == e.session_id && r.protocol_id != 1);
        if fresh {
            check_code(
                cx,
                e.session_id,
                e.error_status,
                TABLE_FULL,
                &[
                    (Code::ResourceExhausted as i32, "gRPC RESOURCE_EXHAUSTED"),
                    (
                        wire::RequestStatus::RejectedSessionTableFull as i32,
                        "REQUEST_STATUS _REJECTED_SESSION_TABLE_FULL",
                    ),
                ],
            )?;
        }
    }
    Ok(())
}

async fn all_or_nothing(cx: Ctx) -> Result<(), Finding> {
    let fill = cx.fill().await?;
    cx.note(format!("filled to the capacity ({} sessions, {} already there)", fill.capacity, fill.existing));
    full_stream(&cx, "two new sessions on a full table", cx.flows(2)).await?;
    let freed = *fill.ids.last().ok_or_else(|| Finding::Error("the table was full before the case".into()))?;
    match cx.delete(freed).await? {
        crate::ctx::Lookup::Found(_) => {}
        other => fail!("deleting session {freed} of the fill: {other:?}"),
    }
    let reqs = vec![cx.flow_v4(), invalid(&cx), cx.flow_v4()];
    full_stream(&cx, "two new sessions and an invalid one, one place free", reqs).await?;
    accept(&cx, vec![cx.flow_v4()]).await
}

async fn empty_stream(cx: Ctx) -> Result<(), Finding> {
    let before = cx.count_sessions().await?;
    let resp = cx.add(vec![]).await?;
    check_add("empty stream", &resp, &[], ACCEPTED, &[])?;
    let after = cx.count_sessions().await?;
    ensure_eq!(after, before, "sessions in the table after an empty stream");
    Ok(())
}

async fn wide_ids(cx: Ctx) -> Result<(), Finding> {
    let ids = [0u64, (1 << 32) + 7, (1 << 63) + 5];
    let reqs: Vec<_> = ids.iter().map(|&id| wire::SessionRequest { session_id: id, ..cx.flow_v4() }).collect();
    let resp = cx.add(reqs.clone()).await?;
    check_add("ids 0, 2^32 + 7, 2^63 + 5", &resp, &reqs, ACCEPTED, &[])?;
    for id in ids {
        let r = cx.present(id).await?;
        ensure_eq!(r.session_id, id, "sessionId reported by getSession({id})");
    }
    let p = cx.page(wire::SessionRequestArgs { page_size: 1, page: 0, start_session: ids[1], follow: false }).await?;
    let first = p.session_info.first().map(|r| r.session_id);
    ensure_eq!(first, Some(ids[1]), "first session of getAllSessions from {}", ids[1]);
    Ok(())
}

async fn start_time(cx: Ctx) -> Result<(), Finding> {
    let reqs = cx.flows(2);
    let resp = cx.add(reqs.clone()).await?;
    check_add("two sessions", &resp, &reqs, ACCEPTED, &[])?;
    let Some(t) = resp.start_time else { fail!("the addSession response has no startTime") };
    for r in &reqs {
        let got = cx.present(r.session_id).await?;
        ensure_eq!(got.start_time, Some(t), "startTime of session {}", r.session_id);
    }
    if let Time::Virtual { clock, .. } = &cx.target().time {
        use opof_device::clock::Clock;
        let now: Timestamp = clock.now();
        ensure!(
            opof_proto::convert::timestamp_from_wire(&t) == now,
            "startTime {t:?} is not the device's clock at the commit ({now:?})"
        );
    }
    Ok(())
}
