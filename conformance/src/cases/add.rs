//! ADD: addSession — acceptance, encodings, duplicates, validation, the error report, capacity.

use std::net::Ipv4Addr;

use opof_proto::convert::ipv4_to_wire;
use opof_proto::domain::Timestamp;
use opof_proto::wire;
use tonic::Code;

use super::{
    all_present, case, check_add, check_refusals, flagged, Case, ACCEPTED, ALREADY_EXISTS, REJECTED, TABLE_FULL,
};
use crate::ctx::{setup, Ctx, Refusal};
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
             0x0A0000E0). Read the other way round, each is the other address. As a control, MIRROR to 0.0.0.0 \
             and to ff00::1, which no reading makes a host.",
            "The first is accepted, the second (multicast, not a host) refused. The reverse means the device reads \
             IPv4 big-endian. A device that also accepts the control validates no next hop (ADD-6's finding): \
             the byte order cannot be read this way (ERROR).",
            byte_order
        ),
        case!(
            "ADD-3.1",
            "ADD-3",
            "IPv6 addresses of a length other than 16 are refused",
            "Three IPv6 requests, each alone: source of 15 bytes, destination of 17 bytes, source of 4 bytes.",
            "Each refused (in errorStatus or responseError); none is in the table.",
            v6_length
        ),
        case!(
            "ADD-4.1",
            "ADD-4",
            "A session id already in the table is refused",
            "Add a session; then a stream of one new flow reusing that id.",
            "The second refused (in errorStatus or responseError); the first session is still there.",
            dup_id_across
        ),
        case!(
            "ADD-4.2",
            "ADD-4",
            "A session id repeated within one stream is refused",
            "A stream of two different flows with the same id.",
            "The second refused, the first inserted.",
            dup_id_within
        ),
        case!(
            "ADD-5.1",
            "ADD-5",
            "A 5-tuple already in the table is refused",
            "Add a session; then the same 5-tuple under a new id.",
            "Refused; the new id is not in the table.",
            dup_tuple_same
        ),
        case!(
            "ADD-5.2",
            "ADD-5",
            "The reverse of a 5-tuple in the table is refused",
            "Add a session; then its reverse (addresses and ports swapped) under a new id.",
            "Refused; the new id is not in the table.",
            dup_tuple_reversed
        ),
        case!(
            "ADD-5.3",
            "ADD-5",
            "A 5-tuple repeated (reversed) within one stream is refused",
            "A stream of a flow and its reverse under two ids.",
            "The second refused, the first inserted.",
            dup_tuple_within
        ),
        case!(
            "ADD-5.4",
            "ADD-5",
            "IPv6 flows that differ only in their addresses are not duplicates",
            "An IPv6 UDP session; then, in a second stream, two more with the same ports and protocol and other \
             addresses (one differing in the source only, one in the destination only).",
            "All three accepted and found: the duplicate check compares the whole 5-tuple, addresses included.",
            v6_addresses_count
        ),
        case!(
            "ADD-6.1",
            "ADD-6",
            "MIRROR and SNOOP need a unicast next hop",
            "Each alone: MIRROR and SNOOP with no next hop; MIRROR to 255.255.255.255; SNOOP to ff02::1; \
             MIRROR to ::.",
            "Each refused (in errorStatus or responseError); none is in the table.",
            next_hop_required
        ),
        case!(
            "ADD-7.1",
            "ADD-7",
            "Protocol other than TCP or UDP is refused",
            "Requests alone with protocolId 1 (ICMP) and 0 (HOPOPT).",
            "Each refused (in errorStatus or responseError); not in the table.",
            bad_protocol
        ),
        case!(
            "ADD-7.2",
            "ADD-7",
            "Ports above 65535 are refused",
            "Requests alone with sourcePort 70000 and destinationPort 65536.",
            "Each refused (in errorStatus or responseError); not in the table.",
            bad_port
        ),
        case!(
            "ADD-7.3",
            "ADD-7",
            "Unknown ipVersion and actionType are refused",
            "Requests alone with ipVersion 2 and actionType 4.",
            "Each refused (in errorStatus or responseError); not in the table.",
            bad_enums
        ),
        case!(
            "ADD-7.4",
            "ADD-7",
            "cacheTimeout above the advertised maximum is refused",
            "A request with cacheTimeout one above the maximum (OPOF_MAX_CACHE_TIMEOUT, default 86400), and one \
             at the maximum.",
            "The first refused and not in the table; the second accepted and found.",
            bad_timeout
        ),
        case!(
            "ADD-8.1",
            "ADD-8",
            "A refused request refuses only itself",
            "A stream: valid, invalid (protocol 1), valid, duplicate id of the first, valid.",
            "Requests 1 and 3 refused, the three valid sessions inserted, the others not.",
            mixed_stream
        ),
        case!(
            "ADD-9.1",
            "ADD-9",
            "errorStatus has one bit per request, the first 64 only",
            "A stream of 70 with invalid requests at positions 0, 5, 63, 64 and 69.",
            "errorStatus = bits 0, 5, 63 exactly; the ids at 64 and 69 in responseError; the 65 others inserted.",
            bitmask_70
        ),
        case!(
            "ADD-10.1",
            "ADD-10",
            "responseError carries ADD_SESSION_STATUS values",
            "A stream: invalid (protocol 1), valid, and a request reusing the valid one's id.",
            "responseError = [{invalid id, 1 _SESSION_REJECTED}, {duplicate id, 4 _SESSION_ALREADY_EXISTS}], in \
             that order. gRPC numbers (3, 6): NON-STRICT under profile response-error-codes.",
            error_codes
        ),
        case!(
            "ADD-11.1",
            "ADD-11",
            "Only duplicates: _SESSION_ALREADY_EXISTS",
            "Add a session; then a stream of it again and of a new flow under its id.",
            "requestStatus _SESSION_ALREADY_EXISTS.",
            only_duplicates
        ),
        case!(
            "ADD-11.2",
            "ADD-11",
            "Duplicates and invalid requests: _SESSION_REJECTED",
            "Add a session; then a stream of a duplicate of it and an invalid request.",
            "requestStatus _SESSION_REJECTED.",
            duplicates_and_invalid
        ),
        case!(
            "ADD-12.1",
            "ADD-12",
            "Capacity is all-or-nothing",
            "Fill the table to its capacity; add a stream of two new sessions; free one place and add a stream \
             of a new session, an invalid one and another new session; then one new session.",
            "Both full streams: _SESSION_TABLE_FULL, every request flagged (codes 2; gRPC 8 NON-STRICT under \
             profile response-error-codes), nothing inserted (a partial insert is named: N of M inserted). The \
             last: accepted.",
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
            "Sessions with ids 0, 2^32 + 7 and 2^63 + 5; getSession of each.",
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

/// ADD-1: the whole answer says accepted, and every session is found.
async fn accept(cx: &Ctx, reqs: Vec<wire::SessionRequest>) -> Result<(), Finding> {
    let r = cx.add(reqs.clone()).await?;
    cx.check(check_add("addSession", &r, &reqs, ACCEPTED, &[]))?;
    all_present(cx, &reqs).await
}

async fn one_v4(cx: Ctx) -> Result<(), Finding> {
    accept(&cx, vec![cx.flow_v4()]).await
}

async fn one_v6(cx: Ctx) -> Result<(), Finding> {
    accept(&cx, vec![cx.flow_v6()]).await
}

async fn stream_64(cx: Ctx) -> Result<(), Finding> {
    cx.need(64).await?;
    let reqs = (0..64).map(|i| if i % 2 == 0 { cx.flow_v4() } else { cx.flow_v6() }).collect();
    accept(&cx, reqs).await
}

async fn stream_1000(cx: Ctx) -> Result<(), Finding> {
    cx.need(1000).await?;
    accept(&cx, cx.flows(1000)).await
}

/// A request that must be refused alone, and not inserted.
async fn refused_alone(cx: &Ctx, what: &str, r: wire::SessionRequest) -> Result<(), Finding> {
    let id = r.session_id;
    let reqs = vec![r];
    let resp = cx.add(reqs.clone()).await?;
    cx.check(check_refusals(what, &resp, &reqs, &[0]))?;
    cx.check(cx.absent(id).await.map_err(|e| Finding::Fail(format!("{what}: {}", e.message()))))
}

fn mirror(mut r: wire::SessionRequest, v4: u32, v6: Vec<u8>) -> wire::SessionRequest {
    r.action = Some(wire::ActionParameters {
        action_type: wire::ActionType::Mirror as i32,
        action_next_hop: v4,
        action_next_hop_v6: v6,
    });
    r
}

/// Whether the device refuses this one request (flagged by either report).
async fn refuses(cx: &Ctx, r: wire::SessionRequest) -> Result<bool, Finding> {
    let reqs = vec![r];
    let resp = cx.add(reqs.clone()).await?;
    Ok(flagged(&resp, &reqs)[0])
}

async fn byte_order(cx: Ctx) -> Result<(), Finding> {
    let host = ipv4_to_wire(Ipv4Addr::new(10, 0, 0, 224));
    ensure_eq!(host, 0xE000_000A, "10.0.0.224 on the wire");
    let group = ipv4_to_wire(Ipv4Addr::new(224, 0, 0, 10));
    let a = mirror(cx.flow_v4(), host, vec![]);
    let b = mirror(cx.flow_v4(), group, vec![]);
    let host_refused = refuses(&cx, a.clone()).await?;
    let group_refused = refuses(&cx, b.clone()).await?;
    // The control: next hops that are not hosts however they are read.
    let mut ff00 = vec![0u8; 16];
    ff00[0] = 0xff;
    ff00[15] = 1;
    let zero_refused = refuses(&cx, mirror(cx.flow_v4(), 0, vec![])).await?;
    let v6_refused = refuses(&cx, mirror(cx.flow_v6(), 0, ff00)).await?;
    if !zero_refused && !v6_refused {
        return Err(Finding::Error(format!(
            "set-up: the device also accepts MIRROR to 0.0.0.0 and to ff00::1, so it validates no next hop \
             (ADD-6's finding); the byte order cannot be read from which next hops it refuses (10.0.0.224 {}, \
             224.0.0.10 {})",
            if host_refused { "refused" } else { "accepted" },
            if group_refused { "refused" } else { "accepted" }
        )));
    }
    match (host_refused, group_refused) {
        (false, true) => {
            cx.present(a.session_id).await?;
            cx.absent(b.session_id).await
        }
        (true, false) => fail!(
            "MIRROR to next hop 10.0.0.224 (wire 0xE000000A) was refused and MIRROR to 224.0.0.10 (wire 0x0A0000E0, \
             multicast) accepted: read big-endian, each is the other address; the device reads IPv4 in the wrong \
             byte order"
        ),
        (true, true) => fail!(
            "MIRROR to next hop 10.0.0.224 (wire 0xE000000A), a host, was refused (and 224.0.0.10 too): a valid \
             next hop is refused"
        ),
        (false, false) => fail!(
            "MIRROR to next hop 224.0.0.10 (wire 0x0A0000E0), a multicast group, was accepted although 0.0.0.0 is \
             refused: multicast next hops are not refused (read big-endian the wire value is 10.0.0.224)"
        ),
    }
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
    cx.setup_add(vec![a.clone()]).await?;
    let b = wire::SessionRequest { session_id: a.session_id, ..cx.flow_v4() };
    let resp = cx.add(vec![b.clone()]).await?;
    cx.check(check_refusals("same id again", &resp, &[b], &[0]))?;
    cx.present(a.session_id).await.map(drop)
}

async fn dup_id_within(cx: Ctx) -> Result<(), Finding> {
    let a = cx.flow_v4();
    let b = wire::SessionRequest { session_id: a.session_id, ..cx.flow_v4() };
    let reqs = vec![a.clone(), b];
    let resp = cx.add(reqs.clone()).await?;
    cx.check(check_refusals("one id twice in a stream", &resp, &reqs, &[1]))?;
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
    cx.setup_add(vec![a.clone()]).await?;
    let id = cx.flow_v4().session_id;
    let b = if reverse { reversed(&a, id) } else { wire::SessionRequest { session_id: id, ..a.clone() } };
    let resp = cx.add(vec![b.clone()]).await?;
    cx.check(check_refusals(what, &resp, &[b], &[0]))?;
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
    cx.check(check_refusals("a flow and its reverse in one stream", &resp, &reqs, &[1]))?;
    cx.present(a.session_id).await?;
    cx.absent(b.session_id).await
}

async fn v6_addresses_count(cx: Ctx) -> Result<(), Finding> {
    let a = cx.flow_v6();
    let resp = cx.add(vec![a.clone()]).await?;
    cx.check(check_refusals("an IPv6 session", &resp, std::slice::from_ref(&a), &[]))?;
    // The same ports and protocol; another source, then another destination.
    let mut b = wire::SessionRequest { session_id: cx.flow_v6().session_id, ..a.clone() };
    b.source_ip_v6[15] ^= 0x5a;
    let mut c = wire::SessionRequest { session_id: cx.flow_v6().session_id, ..a.clone() };
    c.destination_ip_v6[14] ^= 0x5a;
    let reqs = vec![b, c];
    let resp = cx.add(reqs.clone()).await?;
    cx.check(check_refusals(
        "IPv6 sessions with the ports and protocol of one in the table and other addresses",
        &resp,
        &reqs,
        &[],
    ))?;
    all_present(&cx, &[a, reqs[0].clone(), reqs[1].clone()]).await
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
    let at = vec![wire::SessionRequest { cache_timeout: max, ..cx.flow_v4() }];
    let resp = cx.add(at.clone()).await?;
    cx.check(check_refusals(&format!("cacheTimeout {max}"), &resp, &at, &[]))?;
    all_present(&cx, &at).await
}

fn invalid(cx: &Ctx) -> wire::SessionRequest {
    wire::SessionRequest { protocol_id: 1, ..cx.flow_v4() }
}

async fn mixed_stream(cx: Ctx) -> Result<(), Finding> {
    cx.refuses(Refusal::Invalid).await?;
    cx.refuses(Refusal::DuplicateId).await?;
    let v0 = cx.flow_v4();
    let reqs = vec![
        v0.clone(),
        invalid(&cx),
        cx.flow_v4(),
        wire::SessionRequest { session_id: v0.session_id, ..cx.flow_v4() },
        cx.flow_v4(),
    ];
    let resp = cx.add(reqs.clone()).await?;
    cx.check(check_refusals("mixed stream", &resp, &reqs, &[1, 3]))?;
    all_present(&cx, &[reqs[0].clone(), reqs[2].clone(), reqs[4].clone()]).await?;
    cx.absent(reqs[1].session_id).await
}

async fn bitmask_70(cx: Ctx) -> Result<(), Finding> {
    cx.need(65).await?;
    cx.refuses(Refusal::Invalid).await?;
    let bad = [0, 5, 63, 64, 69];
    let reqs: Vec<_> = (0..70).map(|i| if bad.contains(&i) { invalid(&cx) } else { cx.flow_v4() }).collect();
    let resp = cx.add(reqs.clone()).await?;
    let want = (1u64 << 0) | (1 << 5) | (1 << 63);
    cx.expect(resp.error_status == want, || {
        format!("errorStatus {:#x}, want {want:#x} (bits 0, 5 and 63)", resp.error_status)
    });
    let listed: Vec<u64> = resp.response_error.iter().map(|e| e.session_id).collect();
    for i in [64, 69] {
        let id = reqs[i].session_id;
        cx.expect(listed.contains(&id), || {
            format!(
                "request {i} (session {id}), beyond errorStatus's 64 bits, is not in responseError: its refusal is \
                 reported nowhere"
            )
        });
    }
    let good: Vec<_> = reqs.iter().enumerate().filter(|(i, _)| !bad.contains(i)).map(|(_, r)| r.clone()).collect();
    all_present(&cx, &good).await?;
    for i in bad {
        cx.absent(reqs[i].session_id).await?;
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
    cx.refuses(Refusal::Invalid).await?;
    cx.refuses(Refusal::DuplicateId).await?;
    let x = invalid(&cx);
    let y = cx.flow_v4();
    let z = wire::SessionRequest { session_id: y.session_id, ..cx.flow_v4() };
    let reqs = vec![x.clone(), y, z.clone()];
    let resp = cx.add(reqs.clone()).await?;
    // ADD-10 is about responseError alone: requestStatus is ADD-11's, errorStatus ADD-9's.
    let got: Vec<u64> = resp.response_error.iter().map(|e| e.session_id).collect();
    let want = vec![x.session_id, z.session_id];
    ensure_eq!(got, want, "ids in responseError (stream order: the invalid request, then the duplicate)");
    let e = &resp.response_error;
    cx.check(check_code(
        &cx,
        x.session_id,
        e[0].error_status,
        REJECTED,
        &[(Code::InvalidArgument as i32, "gRPC INVALID_ARGUMENT")],
    ))?;
    cx.check(check_code(
        &cx,
        z.session_id,
        e[1].error_status,
        ALREADY_EXISTS,
        &[(Code::AlreadyExists as i32, "gRPC ALREADY_EXISTS")],
    ))
}

/// ADD-11: the stream's requestStatus, the requests' refusal being given (checked by the
/// cases of their own clauses).
fn check_status(what: &str, r: &wire::AddSessionResponse, want: i32) -> Result<(), Finding> {
    ensure!(
        r.request_status == want,
        "{what}: requestStatus {} ({}), want {want} ({})",
        r.request_status,
        super::status_name(r.request_status),
        super::status_name(want)
    );
    Ok(())
}

async fn only_duplicates(cx: Ctx) -> Result<(), Finding> {
    cx.refuses(Refusal::DuplicateId).await?;
    let a = cx.flow_v4();
    cx.setup_add(vec![a.clone()]).await?;
    let reqs = vec![a.clone(), wire::SessionRequest { session_id: a.session_id, ..cx.flow_v4() }];
    let resp = cx.add(reqs.clone()).await?;
    check_status("a stream of duplicates only", &resp, ALREADY_EXISTS)
}

async fn duplicates_and_invalid(cx: Ctx) -> Result<(), Finding> {
    cx.refuses(Refusal::Invalid).await?;
    cx.refuses(Refusal::DuplicateId).await?;
    let a = cx.flow_v4();
    cx.setup_add(vec![a.clone()]).await?;
    let reqs = vec![a, invalid(&cx)];
    let resp = cx.add(reqs.clone()).await?;
    check_status("a duplicate and an invalid request", &resp, REJECTED)
}

/// A stream on a full table: _SESSION_TABLE_FULL, every request flagged, none inserted (what
/// was inserted anyway is counted), codes checked. Every difference is recorded.
async fn full_stream(cx: &Ctx, what: &str, reqs: Vec<wire::SessionRequest>) -> Result<(), Finding> {
    let resp = cx.add(reqs.clone()).await?;
    cx.check(check_status(what, &resp, TABLE_FULL))?;
    let f = flagged(&resp, &reqs);
    let unflagged: Vec<u64> = reqs.iter().zip(&f).filter(|(_, f)| !**f).map(|(r, _)| r.session_id).collect();
    cx.expect(unflagged.is_empty(), || format!("{what}: requests of sessions {unflagged:?} are not flagged as failed"));
    let mut inserted = Vec::new();
    for r in &reqs {
        if let crate::ctx::Lookup::Found(_) = cx.get(r.session_id).await? {
            inserted.push(r.session_id);
        }
    }
    cx.expect(inserted.is_empty(), || {
        format!(
            "{what}: a partial insert: {} of {} requests inserted (sessions {inserted:?}) although the stream did \
             not fit",
            inserted.len(),
            reqs.len()
        )
    });
    for e in &resp.response_error {
        let fresh = reqs.iter().any(|r| r.session_id == e.session_id && r.protocol_id != 1);
        if fresh && !inserted.contains(&e.session_id) {
            cx.check(check_code(
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
            ))?;
        }
    }
    Ok(())
}

async fn all_or_nothing(cx: Ctx) -> Result<(), Finding> {
    cx.refuses(Refusal::Invalid).await?;
    let fill = cx.fill().await?;
    cx.note(format!("filled to the capacity ({} sessions, {} already there)", fill.capacity, fill.existing));
    full_stream(&cx, "two new sessions on a full table", cx.flows(2)).await?;
    let freed = *fill.ids.last().ok_or_else(|| Finding::Error("the table was full before the case".into()))?;
    match cx.delete(freed).await.map_err(setup)? {
        crate::ctx::Lookup::Found(_) => {}
        other => return Err(setup(Finding::Fail(format!("deleting session {freed} of the fill: {other:?} (DEL-1)")))),
    }
    let reqs = vec![cx.flow_v4(), invalid(&cx), cx.flow_v4()];
    full_stream(&cx, "two new sessions and an invalid one, one place free", reqs).await?;
    let last = vec![cx.flow_v4()];
    let resp = cx.add(last.clone()).await?;
    cx.check(check_refusals("one new session, one place free", &resp, &last, &[]))?;
    cx.check(all_present(&cx, &last).await)
}

async fn empty_stream(cx: Ctx) -> Result<(), Finding> {
    let before = cx.count_sessions().await?;
    let resp = cx.add(vec![]).await?;
    cx.check(check_add("empty stream", &resp, &[], ACCEPTED, &[]))?;
    let after = cx.count_sessions().await?;
    ensure_eq!(after, before, "sessions in the table after an empty stream");
    Ok(())
}

async fn wide_ids(cx: Ctx) -> Result<(), Finding> {
    let ids = [0u64, (1 << 32) + 7, (1 << 63) + 5];
    let reqs: Vec<_> = ids.iter().map(|&id| wire::SessionRequest { session_id: id, ..cx.flow_v4() }).collect();
    let resp = cx.add(reqs.clone()).await?;
    cx.check(check_refusals("ids 0, 2^32 + 7, 2^63 + 5", &resp, &reqs, &[]))?;
    for id in ids {
        cx.check(cx.present(id).await.map(drop))?;
    }
    Ok(())
}

async fn start_time(cx: Ctx) -> Result<(), Finding> {
    let reqs = cx.flows(2);
    let resp = cx.setup_add(reqs.clone()).await?;
    let Some(t) = resp.start_time else { fail!("the addSession response has no startTime") };
    for r in &reqs {
        let got = cx.present(r.session_id).await.map_err(setup)?;
        cx.expect(got.start_time == Some(t), || {
            format!("startTime of session {}: got {:?}, want the response's {t:?}", r.session_id, got.start_time)
        });
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
