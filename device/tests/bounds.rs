//! The gRPC server's bounds against hostile clients, over real loopback connections: a client
//! that connects and sends nothing is closed after the handshake timeout; one that completes the
//! HTTP/2 handshake and then answers no PING is closed by keepalive; the per-connection stream
//! limit is what the server advertises. Waits are bounded (10 s); nothing measures time.

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
    let text = opof_device::conn::prometheus();
    let silent_count: u64 = text
        .lines()
        .find(|l| l.starts_with("opof_grpc_connections_silent_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(silent_count >= 1, "{text}");
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
