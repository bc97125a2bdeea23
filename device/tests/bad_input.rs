//! Bad input on every RPC: undecodable bytes, absurd sizes, invalid values, cancelled and
//! timed-out streams. Each gets a clear status, the table is unchanged, and the server keeps
//! serving.

mod common;

use bytes::Bytes;
use common::*;
use opof_device::table::TableConfig;
use opof_proto::client::Flavour;
use opof_proto::wire;
use tonic::Code;

use opof_proto::raw::{
    client_stream as raw_client_stream, server_stream as raw_server_stream, unary as raw_unary, UNDECODABLE as GARBAGE,
};

#[tokio::test]
async fn undecodable_bytes_on_every_rpc_change_nothing() {
    let dev = TestDevice::start(TableConfig::default(), None).await;
    let mut c = dev.client(Flavour::V1).await;
    add(&mut c, vec![v4(1, 1)]).await;
    let ch = dev.channel().await;
    for f in Flavour::ALL {
        for m in ["getSession", "deleteSession", "getAllSessions"] {
            let st = raw_unary(&ch, &f.path(m), Bytes::from_static(GARBAGE)).await.unwrap_err();
            assert_eq!(st.code(), Code::Internal, "{f} {m}: {st:?}");
            assert!(st.message().contains("decode"), "{f} {m}: {st:?}");
        }
        let st = raw_server_stream(&ch, &f.path("getClosedSessions"), Bytes::from_static(GARBAGE)).await.unwrap_err();
        assert_eq!(st.code(), Code::Internal, "{f}: {st:?}");
        // A stream whose third message is undecodable inserts none of the first two.
        let good = |id| Bytes::from(prost::Message::encode_to_vec(&v4(id, 100 + id as u32)));
        let st = raw_client_stream(&ch, &f.path("addSession"), vec![good(10), good(11), Bytes::from_static(GARBAGE)])
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::Internal, "{f}: {st:?}");
        assert!(st.message().contains("nothing was inserted"), "{f}: {st:?}");
    }
    assert_eq!(all_ids(&mut c).await, vec![1], "the table is unchanged");
    dev.stop().await;
}

#[tokio::test]
async fn absurd_sizes_are_refused() {
    let dev =
        TestDevice::start(TableConfig { capacity: 100, closed_queue_capacity: 100, ..Default::default() }, None).await;
    let ch = dev.channel().await;
    // A message over the 4 MiB limit.
    let st = raw_unary(&ch, &Flavour::V2.path("getSession"), Bytes::from(vec![0u8; 5 << 20])).await.unwrap_err();
    assert_eq!(st.code(), Code::OutOfRange, "{st:?}");
    // A stream longer than the table can ever hold.
    let mut c = dev.client(Flavour::V1).await;
    let st = c.add_session(tokio_stream::iter((0..101).map(|i| v4(i, i as u32)))).await.unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(st.message().contains("capacity"), "{st:?}");
    assert!(all_ids(&mut c).await.is_empty());
    // Still serving.
    assert_eq!(add(&mut c, vec![v4(1, 1)]).await.request_status, wire::AddSessionStatus::SessionAccepted as i32);
    dev.stop().await;
}

#[tokio::test]
async fn invalid_values_refuse_only_their_request() {
    let dev = TestDevice::start(TableConfig::default(), None).await;
    let mut c = dev.client(Flavour::V2).await;
    let mut short_v6 = v6(1, 1);
    short_v6.destination_ip_v6 = vec![0; 15];
    let mut mirror = v4(2, 2);
    mirror.action = Some(wire::ActionParameters { action_type: wire::ActionType::Mirror as i32, ..Default::default() });
    let mut port = v4(3, 3);
    port.source_port = 70_000;
    let mut proto = v4(4, 4);
    proto.protocol_id = 1;
    let mut version = v4(5, 5);
    version.ip_version = 7;
    let mut action = v4(6, 6);
    action.action = Some(wire::ActionParameters { action_type: 9, ..Default::default() });
    for r in [short_v6, mirror, port, proto, version, action] {
        let id = r.session_id;
        let out = add(&mut c, vec![r]).await;
        assert_eq!(out.request_status, wire::AddSessionStatus::SessionRejected as i32, "request {id}");
        assert_eq!(out.error_status, 1);
        assert_eq!(out.response_error.len(), 1);
        assert_eq!(out.response_error[0].session_id, id);
        assert_eq!(out.response_error[0].error_status, wire::AddSessionStatus::SessionRejected as i32);
    }
    assert!(all_ids(&mut c).await.is_empty());
    dev.stop().await;
}

#[tokio::test]
async fn a_stream_cut_short_inserts_nothing() {
    let dev = TestDevice::start(TableConfig::default(), None).await;
    let mut c = dev.client(Flavour::V1).await;

    // Deadline: the stream stays open past its grpc-timeout; the device must answer
    // DEADLINE_EXCEEDED on its own, and the end of stream sent afterwards must insert nothing.
    let (response, mut body) = raw_add_stream(dev.addr, 3, Some("200m")).await;
    let response = response.await.expect("the device answers before the stream ends");
    let grpc_status = response.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_string());
    // DEADLINE_EXCEEDED from the handler, or CANCELLED "Timeout expired" from tonic's own
    // grpc-timeout layer when it fires first: either way the device ended the call itself.
    assert!(
        matches!(grpc_status.as_deref(), Some("4") | Some("1")),
        "the device ends a call past its deadline, got {:?}",
        response.headers()
    );
    let _ = body.send_data(Bytes::new(), true);

    // Cancellation: the client resets the HTTP/2 stream after five requests.
    let (response, mut body) = raw_add_stream(dev.addr, 5, None).await;
    body.send_reset(h2::Reason::CANCEL);
    let _ = response.await;

    let ids = all_ids(&mut c).await;
    assert!(ids.is_empty(), "nothing inserted by unusable streams: {ids:?}");
    assert_eq!(add(&mut c, vec![v4(1, 1)]).await.request_status, wire::AddSessionStatus::SessionAccepted as i32);
    dev.stop().await;
}

/// Opens an addSession stream on a bare HTTP/2 connection (optionally with a grpc-timeout)
/// and sends `n` requests without ending the stream; the caller decides how it ends.
async fn raw_add_stream(
    addr: std::net::SocketAddr,
    n: u64,
    timeout: Option<&str>,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut h2 = h2.ready().await.unwrap();
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/openoffload.v1.SessionTable/addSession"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        req = req.header("grpc-timeout", t);
    }
    let (response, mut body) = h2.send_request(req.body(()).unwrap(), false).unwrap();
    for i in 0..n {
        let msg = prost::Message::encode_to_vec(&v4(100 + i, 1000 + i as u32));
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(&msg);
        body.send_data(Bytes::from(frame), false).unwrap();
    }
    (response, body)
}
