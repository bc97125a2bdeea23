//! Shared set-up of the device's integration tests: a real gRPC server on a loopback port,
//! in virtual time, and clients of any flavour.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use opof_device::clock::ManualClock;
use opof_device::control::{self, Device, ServeOptions};
use opof_device::table::TableConfig;
use opof_device::tls::{ClientTls, ServerTls};
use opof_proto::client::{Flavour, SessionTableClient};
use opof_proto::convert::ipv4_to_wire;
use opof_proto::domain::Timestamp;
use opof_proto::wire;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

pub const T0: Timestamp = Timestamp(1_750_000_000_000_000_000);

pub struct TestDevice {
    pub addr: SocketAddr,
    pub device: Arc<Device>,
    pub clock: Arc<ManualClock>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), control::ServeError>>>,
}

impl TestDevice {
    pub async fn start(config: TableConfig, tls: Option<ServerTls>) -> Self {
        let clock = Arc::new(ManualClock::new(T0));
        let device = Device::new(config, clock.clone()).expect("valid config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let server =
            tokio::spawn(control::serve(device.clone(), listener, ServeOptions { tls, ..Default::default() }, async {
                let _ = rx.await;
            }));
        TestDevice { addr, device, clock, stop: Some(tx), server: Some(server) }
    }

    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    pub async fn tls_channel(&self, tls: &ClientTls) -> Result<Channel, tonic::transport::Error> {
        Endpoint::from_shared(format!("https://localhost:{}", self.addr.port()))
            .unwrap()
            .tls_config(tls.to_tonic())?
            .connect()
            .await
    }

    pub async fn client(&self, flavour: Flavour) -> SessionTableClient {
        SessionTableClient::new(self.channel().await, flavour)
    }

    /// Stops the server and checks it ended cleanly.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.take().unwrap().await.unwrap().expect("server ended cleanly");
    }
}

/// A valid IPv4 FORWARD session: 10.0.x.y:port → 192.0.2.1:80 (TCP).
pub fn v4(id: u64, port: u32) -> wire::SessionRequest {
    wire::SessionRequest {
        session_id: id,
        ip_version: wire::IpVersion::Ipv4 as i32,
        source_ip: ipv4_to_wire(Ipv4Addr::new(10, 0, (port >> 8) as u8, port as u8)),
        destination_ip: ipv4_to_wire(Ipv4Addr::new(192, 0, 2, 1)),
        source_port: port,
        destination_port: 80,
        protocol_id: wire::ProtocolId::Tcp as i32,
        action: Some(wire::ActionParameters { action_type: wire::ActionType::Forward as i32, ..Default::default() }),
        ..Default::default()
    }
}

/// The same flow seen from the other side.
pub fn reversed(r: &wire::SessionRequest, id: u64) -> wire::SessionRequest {
    wire::SessionRequest {
        session_id: id,
        source_ip: r.destination_ip,
        destination_ip: r.source_ip,
        source_port: r.destination_port,
        destination_port: r.source_port,
        source_ip_v6: r.destination_ip_v6.clone(),
        destination_ip_v6: r.source_ip_v6.clone(),
        ..r.clone()
    }
}

pub fn v6(id: u64, last: u8) -> wire::SessionRequest {
    let mut src = vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last];
    src[1] = 1;
    wire::SessionRequest {
        session_id: id,
        ip_version: wire::IpVersion::Ipv6 as i32,
        source_ip_v6: src,
        destination_ip_v6: vec![0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        source_port: 5000,
        destination_port: 53,
        protocol_id: wire::ProtocolId::Udp as i32,
        action: Some(wire::ActionParameters {
            action_type: wire::ActionType::Mirror as i32,
            action_next_hop_v6: vec![0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99],
            ..Default::default()
        }),
        cache_timeout: 10,
        ..Default::default()
    }
}

pub async fn add(c: &mut SessionTableClient, reqs: Vec<wire::SessionRequest>) -> wire::AddSessionResponse {
    c.add_session(tokio_stream::iter(reqs)).await.expect("addSession answers").into_inner()
}

pub async fn get(c: &mut SessionTableClient, id: u64) -> wire::SessionResponse {
    c.get_session(wire::SessionId { session_id: id }).await.expect("getSession answers").into_inner()
}

pub async fn closed(c: &mut SessionTableClient, page_size: u32) -> Vec<wire::SessionResponse> {
    let mut s = c
        .get_closed_sessions(wire::SessionRequestArgs { page_size, ..Default::default() })
        .await
        .expect("getClosedSessions answers")
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await.expect("stream ends cleanly") {
        out.push(r);
    }
    out
}

pub async fn all_ids(c: &mut SessionTableClient) -> Vec<u64> {
    let r = c.get_all_sessions(wire::SessionRequestArgs::default()).await.expect("getAllSessions answers").into_inner();
    assert_eq!(r.nextkey, 0);
    r.session_info.iter().map(|s| s.session_id).collect()
}
