//! Every control-plane rule of SEMANTICS.md over a real loopback gRPC connection, for each
//! flavour of method paths (v1 camelCase, v2 PascalCase, v1alpha5).

mod common;

use common::*;
use opof_device::table::TableConfig;
use opof_proto::client::Flavour;
use opof_proto::convert::timestamp_from_wire;
use opof_proto::wire;
use opof_proto::wire::{
    AddSessionStatus as Add, RequestStatus as Req, SessionCloseCode as Close, SessionState as State,
};

fn config() -> TableConfig {
    TableConfig {
        capacity: 8,
        tcp_timeout: 30,
        udp_timeout: 20,
        max_cache_timeout: 86_400,
        closed_queue_capacity: 8,
        max_page: 1000,
    }
}

async fn rules_for(flavour: Flavour) {
    let dev = TestDevice::start(config(), None).await;
    let mut c = dev.client(flavour).await;

    // An empty stream is accepted and inserts nothing.
    let r = add(&mut c, vec![]).await;
    assert_eq!((r.request_status, r.error_status, r.response_error.len()), (Add::SessionAccepted as i32, 0, 0));

    // IPv4 and IPv6 sessions; id 0 and a 64-bit id round-trip.
    let r = add(&mut c, vec![v4(0, 1000), v6(u64::MAX - 1, 1)]).await;
    assert_eq!(r.request_status, Add::SessionAccepted as i32, "{r:?}");
    assert_eq!(r.error_status, 0);
    assert_eq!(timestamp_from_wire(r.start_time.as_ref().unwrap()), T0, "startTime is the commit time");
    let s = get(&mut c, 0).await;
    assert_eq!((s.session_id, s.request_status, s.session_state), (0, Req::Accepted as i32, State::Established as i32));
    assert_eq!((s.in_packets, s.out_packets, s.in_bytes, s.out_bytes), (0, 0, 0, 0));
    assert_eq!(s.session_close_code, Close::NotClosed as i32);
    assert_eq!(timestamp_from_wire(s.start_time.as_ref().unwrap()), T0);
    assert!(s.end_time.is_none());
    assert_eq!(get(&mut c, u64::MAX - 1).await.request_status, Req::Accepted as i32);
    let stored = dev.device.spec(u64::MAX - 1).unwrap();
    assert_eq!(stored.cache_timeout, 10);
    assert_eq!(stored.action.next_hop(), Some("2001:db8::99".parse().unwrap()));

    // Unknown id: OK with _REJECTED_SESSION_NONEXISTENT, on get and on delete.
    let s = get(&mut c, 77).await;
    assert_eq!((s.session_id, s.request_status), (77, Req::RejectedSessionNonexistent as i32));
    let s = c.delete_session(wire::SessionId { session_id: 77 }).await.unwrap().into_inner();
    assert_eq!(s.request_status, Req::RejectedSessionNonexistent as i32);

    // Duplicate id across streams, duplicate 5-tuple in the reverse direction, duplicate
    // within one stream: _SESSION_ALREADY_EXISTS, each flagged.
    let r = add(&mut c, vec![v4(0, 2000), reversed(&v4(1, 1000), 1), v4(2, 3000), v4(2, 3001), v4(3, 3000)]).await;
    assert_eq!(r.request_status, Add::SessionAlreadyExists as i32, "{r:?}");
    assert_eq!(r.error_status, 0b11011);
    let errs: Vec<_> = r.response_error.iter().map(|e| (e.session_id, e.error_status)).collect();
    let dup = Add::SessionAlreadyExists as i32;
    assert_eq!(errs, vec![(0, dup), (1, dup), (2, dup), (3, dup)]);
    assert_eq!(all_ids(&mut c).await, vec![0, 2, u64::MAX - 1]);

    // A mixed stream: exact bitmask positions and responseError entries.
    let mut bad_port = v4(10, 4000);
    bad_port.destination_port = 70_000;
    let mut bad_v6 = v6(11, 2);
    bad_v6.source_ip_v6.pop();
    let mut no_hop = v4(12, 4001);
    no_hop.action = Some(wire::ActionParameters { action_type: wire::ActionType::Snoop as i32, ..Default::default() });
    let mut icmp = v4(13, 4002);
    icmp.protocol_id = 1;
    let mut long = v4(14, 4003);
    long.cache_timeout = 86_401;
    let r = add(&mut c, vec![v4(9, 4004), bad_port, bad_v6, no_hop, icmp, v4(0, 4005), long]).await;
    assert_eq!(r.request_status, Add::SessionRejected as i32, "{r:?}");
    assert_eq!(r.error_status, 0b111_1110);
    let rej = Add::SessionRejected as i32;
    let errs: Vec<_> = r.response_error.iter().map(|e| (e.session_id, e.error_status)).collect();
    assert_eq!(errs, vec![(10, rej), (11, rej), (12, rej), (13, rej), (0, dup), (14, rej)]);
    assert_eq!(all_ids(&mut c).await, vec![0, 2, 9, u64::MAX - 1]);

    // All-or-nothing capacity: 4 held, 8 max; 5 new ones do not fit, so none is inserted.
    let r = add(&mut c, (20..25).map(|i| v4(i, 5000 + i as u32)).collect()).await;
    assert_eq!(r.request_status, Add::SessionTableFull as i32, "{r:?}");
    assert_eq!(r.error_status, 0b11111);
    assert!(r.response_error.iter().all(|e| e.error_status == Add::SessionTableFull as i32));
    assert_eq!(all_ids(&mut c).await.len(), 4);
    // ... unless duplicates among them leave room: 4 fresh + 1 duplicate fit exactly.
    let r = add(&mut c, vec![v4(20, 5020), v4(21, 5021), v4(22, 5022), v4(23, 5023), v4(0, 5024)]).await;
    assert_eq!((r.request_status, r.error_status), (Add::SessionAlreadyExists as i32, 0b10000), "{r:?}");
    assert_eq!(all_ids(&mut c).await, vec![0, 2, 9, 20, 21, 22, 23, u64::MAX - 1]);

    // getAllSessions: pages by nextkey visit every session once, ascending.
    let mut seen = Vec::new();
    let mut start = 0;
    loop {
        let p = c
            .get_all_sessions(wire::SessionRequestArgs { page_size: 3, page: 0, start_session: start, follow: false })
            .await
            .unwrap()
            .into_inner();
        assert!(p.session_info.len() <= 3);
        seen.extend(p.session_info.iter().map(|s| s.session_id));
        if p.nextkey == 0 {
            break;
        }
        start = p.nextkey;
    }
    assert_eq!(seen, vec![0, 2, 9, 20, 21, 22, 23, u64::MAX - 1]);
    let p = c
        .get_all_sessions(wire::SessionRequestArgs { page_size: 3, page: 2, start_session: 0, follow: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.session_info.iter().map(|s| s.session_id).collect::<Vec<_>>(), p.nextkey), (vec![20, 21, 22], 23));
    let p = c
        .get_all_sessions(wire::SessionRequestArgs { page_size: 3, page: 9, start_session: 0, follow: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.session_info.len(), p.nextkey), (0, 0), "a page beyond the end is empty");
    let p = c
        .get_all_sessions(wire::SessionRequestArgs { page_size: 0, page: 0, start_session: 21, follow: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.session_info.len(), 4);

    // deleteSession: final record, and nothing queued on getClosedSessions.
    dev.clock.advance_secs(1);
    let d = c.delete_session(wire::SessionId { session_id: 2 }).await.unwrap().into_inner();
    assert_eq!(
        (d.request_status, d.session_state, d.session_close_code),
        (Req::Accepted as i32, State::Closed as i32, Close::NotClosed as i32)
    );
    assert_eq!(timestamp_from_wire(d.end_time.as_ref().unwrap()), T0.saturating_add_secs(1));
    assert_eq!(get(&mut c, 2).await.request_status, Req::RejectedSessionNonexistent as i32);
    assert!(closed(&mut c, 0).await.is_empty(), "nothing queued: an empty OK stream");

    // Timeouts in virtual time: the IPv6 session (10 s) closes exactly at its deadline.
    dev.clock.advance_secs(9);
    assert_eq!(dev.device.advance(), 1);
    assert_eq!(get(&mut c, u64::MAX - 1).await.request_status, Req::RejectedSessionNonexistent as i32);
    // The rest (TCP default 30 s) close together, queued by deadline then id.
    dev.clock.advance_secs(20);
    assert_eq!(dev.device.advance(), 6);
    let first = closed(&mut c, 2).await;
    assert_eq!(
        first.iter().map(|r| r.session_id).collect::<Vec<_>>(),
        vec![u64::MAX - 1, 0],
        "oldest first, pageSize honoured"
    );
    let r = &first[0];
    assert_eq!(
        (r.session_state, r.session_close_code, r.request_status),
        (State::Closed as i32, Close::Timeout as i32, Req::Accepted as i32)
    );
    assert_eq!(timestamp_from_wire(r.end_time.as_ref().unwrap()), T0.saturating_add_secs(10));
    assert_eq!(timestamp_from_wire(r.start_time.as_ref().unwrap()), T0);
    let rest = closed(&mut c, 0).await;
    assert_eq!(
        rest.iter().map(|r| r.session_id).collect::<Vec<_>>(),
        vec![9, 20, 21, 22, 23],
        "each record exactly once"
    );
    assert!(closed(&mut c, 0).await.is_empty());
    assert!(all_ids(&mut c).await.is_empty());

    // A closed flow can be added anew.
    assert_eq!(add(&mut c, vec![v4(0, 1000)]).await.request_status, Add::SessionAccepted as i32);

    // Follow mode (project extension): the stream stays open and delivers closes as they happen.
    let mut follow = c
        .get_closed_sessions(wire::SessionRequestArgs { page_size: 0, page: 0, start_session: 0, follow: true })
        .await
        .unwrap()
        .into_inner();
    dev.clock.advance_secs(30);
    dev.device.advance();
    let r = follow.message().await.unwrap().expect("a record arrives on the open stream");
    assert_eq!((r.session_id, r.session_close_code), (0, Close::Timeout as i32));
    drop(follow);
    assert!(closed(&mut c, 0).await.is_empty(), "the record was delivered once");
    dev.stop().await;
}

#[tokio::test]
async fn rules_hold_on_v1_paths() {
    rules_for(Flavour::V1).await;
}

#[tokio::test]
async fn rules_hold_on_v2_paths() {
    rules_for(Flavour::V2).await;
}

#[tokio::test]
async fn rules_hold_on_v1alpha5_paths() {
    rules_for(Flavour::V1alpha5).await;
}

/// The three flavours are one table: what one adds, the others see.
#[tokio::test]
async fn flavours_share_one_table() {
    let dev = TestDevice::start(config(), None).await;
    let mut a = dev.client(Flavour::V1).await;
    let mut b = dev.client(Flavour::V2).await;
    assert_eq!(add(&mut a, vec![v4(5, 1)]).await.request_status, Add::SessionAccepted as i32);
    assert_eq!(get(&mut b, 5).await.request_status, Req::Accepted as i32);
    assert_eq!(add(&mut b, vec![v4(5, 2)]).await.request_status, Add::SessionAlreadyExists as i32);
    dev.stop().await;
}

/// Flavour detection by paths: against the reference device (every flavour) and against a
/// server that serves only the v2 paths, as the OPI server does.
#[tokio::test]
async fn flavours_are_detected_by_their_paths() {
    use opof_device::control::SessionTableService;
    use opof_proto::client::detect_flavours;
    use opof_proto::openoffload::v2;

    let dev = TestDevice::start(config(), None).await;
    assert_eq!(detect_flavours(dev.channel().await).await.unwrap(), Flavour::ALL.to_vec());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let only_v2 = v2::session_table_server::SessionTableServer::new(SessionTableService::new(dev.device.clone()));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(only_v2)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    assert_eq!(detect_flavours(ch).await.unwrap(), vec![Flavour::V2]);
    server.abort();
    dev.stop().await;
}
