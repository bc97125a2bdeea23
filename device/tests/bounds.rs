//! The gRPC server's bounds against hostile clients, over real loopback connections: a client
//! that connects and sends nothing is closed after the handshake timeout; one that completes the
//! HTTP/2 handshake and then answers no PING is closed by keepalive; the per-connection stream
//! limit is what the server advertises; a connection without calls is closed after the idle
//! timeout, one with a stream open is kept. Waits are bounded (10 s); nothing measures time.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use opof_device::clock::SystemClock;
use opof_device::control::{self, Device, ServeOptions};
use opof_device::table::TableConfig;

async fn serve(options: ServeOptions) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let device =
        Device::new(TableConfig { capacity: 1024, ..TableConfig::default() }, Arc::new(SystemClock::new())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(control::serve(device, listener, options, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

/// Reads until the server closes the connection; `true` if it did within 10 s.
fn closed_by_server(s: &mut std::net::TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_the_handshake_timeout() {
    let (addr, _stop) =
        serve(ServeOptions { handshake_timeout: Duration::from_secs(1), ..ServeOptions::default() }).await;
    let silent = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        closed_by_server(&mut s)
    });
    assert!(silent.await.unwrap(), "a connection that sent nothing is still open after 10 s");
    assert!(sample_labelled("opof_grpc_connections_silent_total ") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_answers_no_ping_is_closed_by_keepalive() {
    let (addr, _stop) = serve(ServeOptions { keepalive: Duration::from_secs(1), ..ServeOptions::default() }).await;
    let mute = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        // A valid HTTP/2 start, then nothing: no SETTINGS ack, no PING ack.
        s.write_all(PREFACE).unwrap();
        s.write_all(&SETTINGS).unwrap();
        closed_by_server(&mut s)
    });
    assert!(mute.await.unwrap(), "a peer that answers no PING is still connected after 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_limit_is_advertised_to_clients() {
    let (addr, _stop) = serve(ServeOptions { max_streams_per_connection: 7, ..ServeOptions::default() }).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // Drive the connection until the server's SETTINGS arrived.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while conn.max_concurrent_send_streams() == usize::MAX && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(50), &mut conn).await;
    }
    assert_eq!(conn.max_concurrent_send_streams(), 7);
    drop(client);
}

/// Open addSession streams together hold at most the configured number of requests: a stream
/// that would go past it is refused at once (RESOURCE_EXHAUSTED), without waiting for its end,
/// and the stream that holds the rest still commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_add_streams_hold_a_bounded_number_of_requests() {
    use opof_proto::client::{Flavour, SessionTableClient};
    use opof_proto::wire;
    let (addr, _stop) = serve(ServeOptions { max_pending_requests: Some(100), ..ServeOptions::default() }).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();

    // Stream A: 80 requests, left open; then streams of 30 more until one is refused (80 + 30
    // > 100). Whichever stream crosses the bound is the one refused, so a B that raced ahead of
    // A's requests can make A the refused one: then the round starts again with fresh ids.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut base = 1u64;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no round ended with B refused and A accepted");
        let (tx, rx) = tokio::sync::mpsc::channel(128);
        for id in base..base + 80 {
            tx.send(udp_forward(id)).await.unwrap();
        }
        let mut a = SessionTableClient::new(channel.clone(), Flavour::V1);
        let a = tokio::spawn(async move { a.add_session(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
        let mut b = SessionTableClient::new(channel.clone(), Flavour::V1);
        let mut next = base + 80;
        let refused = loop {
            if a.is_finished() || tokio::time::Instant::now() >= deadline {
                break None;
            }
            match b.add_session(tokio_stream::iter((next..next + 30).map(udp_forward))).await {
                Err(status) => break Some(status),
                Ok(_) => next += 30,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        drop(tx);
        let a = a.await.unwrap();
        base = next + 30;
        let (Some(refused), Ok(done)) = (refused, a) else { continue };
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("hold 100 requests"), "{}", refused.message());
        assert_eq!(done.into_inner().request_status, wire::AddSessionStatus::SessionAccepted as i32);
        let counted = sample_labelled("opof_grpc_add_streams_refused_total{reason=\"pending_requests\"}");
        assert!(counted >= 1, "the refusal is counted");
        return;
    }
}

/// The rapid-reset flood (CVE-2023-44487): a client that opens streams and resets them at once,
/// thousands in a burst, is answered GOAWAY (ENHANCE_YOUR_CALM) and cut off, instead of making
/// the server start and abandon a call for each. (h2's own limit on streams the peer resets
/// does this whether or not the pending-accept and local-error guards the device sets are on:
/// this checks the behaviour, not which of them acts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_is_cut_off() {
    let (addr, _stop) = serve(ServeOptions::default()).await;
    let goaway = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(PREFACE).unwrap();
        s.write_all(&SETTINGS).unwrap();
        // A HEADERS block for a gRPC call (HPACK: :method POST, :scheme http, :path literal,
        // content-type literal), then RST_STREAM(CANCEL) for the same stream, 5,000 times.
        let path = b"/openoffload.v1.SessionTable/getSession";
        let ctype = b"application/grpc";
        let mut block = vec![0x83, 0x86, 0x04, path.len() as u8];
        block.extend_from_slice(path);
        block.extend_from_slice(&[0x0f, 0x10, ctype.len() as u8]);
        block.extend_from_slice(ctype);
        let mut burst = Vec::new();
        for i in 0..5_000u32 {
            let id = (2 * i + 1).to_be_bytes();
            let len = (block.len() as u32).to_be_bytes();
            // HEADERS, END_HEADERS (0x4), not END_STREAM.
            burst.extend_from_slice(&[len[1], len[2], len[3], 0x1, 0x4, id[0], id[1], id[2], id[3]]);
            burst.extend_from_slice(&block);
            // RST_STREAM, CANCEL (8).
            burst.extend_from_slice(&[0, 0, 4, 0x3, 0, id[0], id[1], id[2], id[3], 0, 0, 0, 8]);
        }
        // The server may cut the connection while the burst is still being written.
        let _ = s.write_all(&burst);
        // Read what the server sent until it closes: look for GOAWAY (type 7).
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let mut at = 0;
        while at + 9 <= got.len() {
            let len = usize::from(got[at]) << 16 | usize::from(got[at + 1]) << 8 | usize::from(got[at + 2]);
            if got[at + 3] == 0x7 && at + 17 <= got.len() {
                return Some(u32::from_be_bytes(got[at + 13..at + 17].try_into().unwrap()));
            }
            at += 9 + len;
        }
        None
    });
    // ENHANCE_YOUR_CALM is 0xb.
    assert_eq!(goaway.await.unwrap(), Some(0xb), "the flood was not cut off with GOAWAY(ENHANCE_YOUR_CALM)");
}

/// A connection that carries no call for the idle timeout is closed (and counted); one with a
/// follow-mode getClosedSessions stream open is kept however long the stream lasts, and closed
/// once it has ended and the timeout passed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_streaming_ones_kept() {
    let (addr, _stop) =
        serve(ServeOptions { idle_timeout: Some(Duration::from_secs(1)), ..ServeOptions::default() }).await;
    // Idle: a complete HTTP/2 handshake (h2 answers PINGs), then no call.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (idle_client, idle_conn) = h2::client::handshake(tcp).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), idle_conn).await;
    assert!(ended.is_ok(), "a connection without calls was still open after 10 s");
    drop(idle_client);
    assert!(sample_labelled("opof_grpc_connections_idle_closed_total ") >= 1);

    // Busy: a follow stream open, well past the idle timeout.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::post(format!("http://{addr}/openoffload.v1.SessionTable/getClosedSessions"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let args =
        prost::Message::encode_to_vec(&opof_proto::wire::SessionRequestArgs { follow: true, ..Default::default() });
    let mut message = vec![0u8];
    message.extend_from_slice(&(args.len() as u32).to_be_bytes());
    message.extend_from_slice(&args);
    send.send_data(bytes::Bytes::from(message), true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert!(sample_labelled("opof_grpc_calls_open ") >= 1, "the follow stream is a call in flight");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!conn.is_finished(), "a connection with a follow stream open was closed as idle");
    // The client cancels the stream (RST_STREAM): the connection has no call left.
    drop(response);
    drop(send);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the connection was not closed after its last call ended");
    drop(client);
}

/// A single addSession stream longer than the table's capacity is refused as soon as it goes
/// past it (RESOURCE_EXHAUSTED), while the client still holds it open: what one stream holds is
/// bounded by the capacity, whatever it sends after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_the_capacity_is_refused_before_its_end() {
    use opof_proto::client::{Flavour, SessionTableClient};
    let (addr, _stop) = serve(ServeOptions { max_pending_requests: Some(1 << 20), ..ServeOptions::default() }).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let feeder = tokio::spawn(async move {
        // 1,500 requests (the capacity is 1,024), then the stream is held open, never ended.
        for id in 1..=1_500u64 {
            if tx.send(udp_forward(id)).await.is_err() {
                return;
            }
        }
        // Keep the stream open until the test ends.
        tx.closed().await;
    });
    let mut client = SessionTableClient::new(channel, Flavour::V1);
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        client.add_session(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("no answer within 20 s to a stream left open past the capacity");
    let status = answer.expect_err("a stream past the capacity is refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("the table's capacity"), "{}", status.message());
    assert!(sample_labelled("opof_grpc_add_streams_refused_total{reason=\"stream_over_capacity\"}") >= 1);
    feeder.abort();
}

/// The value of the device's sample whose line starts with `line_start` (its name, with labels
/// if it has some, or a space after the name if not).
fn sample_labelled(line_start: &str) -> u64 {
    let text = opof_device::conn::prometheus();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in {text}"))
}

/// An addSession request for a UDP session `id` (its own source address and port), FORWARD.
fn udp_forward(id: u64) -> opof_proto::wire::SessionRequest {
    use opof_proto::wire;
    wire::SessionRequest {
        session_id: id,
        ip_version: wire::IpVersion::Ipv4 as i32,
        source_ip: u32::from_le_bytes([10, 0, (id >> 8) as u8, id as u8]),
        destination_ip: u32::from_le_bytes([192, 0, 2, 1]),
        source_port: id as u32,
        destination_port: 80,
        protocol_id: wire::ProtocolId::Udp as i32,
        action: Some(wire::ActionParameters { action_type: wire::ActionType::Forward as i32, ..Default::default() }),
        ..Default::default()
    }
}
