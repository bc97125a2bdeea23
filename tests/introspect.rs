//! grpcurl-style introspection of `opof device` and `opof vnf` as processes: gRPC server
//! reflection (v1 and v1alpha) lists and describes every service they serve, and the health
//! service reports each SERVING — checked with the reflection and health clients of the
//! standard gRPC protos, over a real loopback connection.

mod common;

use prost::Message;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

/// The services reflection v1 lists, and the file that defines `symbol`, decoded.
async fn reflect_v1(ch: Channel, symbol: &str) -> (Vec<String>, Vec<prost_types::FileDescriptorProto>) {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut c = ServerReflectionClient::new(ch);
    let asks = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        },
    ];
    let mut answers = c.server_reflection_info(tokio_stream::iter(asks)).await.unwrap().into_inner();
    let (mut services, mut files) = (Vec::new(), Vec::new());
    while let Some(a) = answers.message().await.unwrap() {
        match a.message_response.unwrap() {
            MessageResponse::ListServicesResponse(l) => services.extend(l.service.into_iter().map(|s| s.name)),
            MessageResponse::FileDescriptorResponse(f) => files.extend(
                f.file_descriptor_proto.iter().map(|b| prost_types::FileDescriptorProto::decode(&b[..]).unwrap()),
            ),
            MessageResponse::ErrorResponse(e) => panic!("reflection error for {symbol}: {}", e.error_message),
            _ => {}
        }
    }
    (services, files)
}

/// The services reflection v1alpha lists (the version older tools ask first).
async fn list_v1alpha(ch: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    let mut c = ServerReflectionClient::new(ch);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = c.server_reflection_info(tokio_stream::iter(vec![ask])).await.unwrap().into_inner();
    let mut services = Vec::new();
    while let Some(a) = answers.message().await.unwrap() {
        if let Some(MessageResponse::ListServicesResponse(l)) = a.message_response {
            services.extend(l.service.into_iter().map(|s| s.name));
        }
    }
    services
}

async fn health(ch: Channel, service: &str) -> Result<ServingStatus, tonic::Code> {
    HealthClient::new(ch)
        .check(HealthCheckRequest { service: service.into() })
        .await
        .map(|r| r.into_inner().status())
        .map_err(|s| s.code())
}

#[tokio::test]
async fn the_device_serves_reflection_and_health() {
    let (_device, addr) = common::start_listening(&["device", "--listen", "127.0.0.1:0"]);
    let ch = channel(&addr).await;
    let (services, files) = reflect_v1(ch.clone(), "openoffload.v2.SessionTable").await;
    for s in [
        "openoffload.v1.SessionTable",
        "openoffload.v2.SessionTable",
        "openoffload.v1alpha5.SessionTable",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(services.iter().any(|x| x == s), "{s} not listed: {services:?}");
    }
    // `describe`: the file defining the v2 service has its methods, as a client would call them.
    let v2 = files.iter().find(|f| f.package() == "openoffload.v2").expect("the v2 file");
    let svc = v2.service.iter().find(|s| s.name() == "SessionTable").unwrap();
    let methods: Vec<&str> = svc.method.iter().map(|m| m.name()).collect();
    for m in ["AddSession", "GetSession", "DeleteSession", "GetAllSessions", "GetClosedSessions"] {
        assert!(methods.contains(&m), "{m} not in {methods:?}");
    }
    let old = list_v1alpha(ch.clone()).await;
    assert!(old.iter().any(|s| s == "openoffload.v1.SessionTable"), "{old:?}");
    for s in ["", "openoffload.v1.SessionTable", "openoffload.v2.SessionTable", "openoffload.v1alpha5.SessionTable"] {
        assert_eq!(health(ch.clone(), s).await, Ok(ServingStatus::Serving), "health of {s:?}");
    }
    assert_eq!(health(ch, "no.such.Service").await, Err(tonic::Code::NotFound));
}

#[tokio::test]
async fn the_vnf_serves_reflection_and_health() {
    let free = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (a, b) = (format!("a=udp:{},bind={}", free(), free()), format!("b=udp:{},bind={}", free(), free()));
    let (_vnf, addr) = common::start_listening(&["vnf", "--listen", "127.0.0.1:0", "--port", &a, "--port", &b]);
    let ch = channel(&addr).await;
    let (services, files) = reflect_v1(ch.clone(), "openoffload.v1alpha5.Activation").await;
    assert!(services.iter().any(|s| s == "openoffload.v1alpha5.Activation"), "{services:?}");
    let f = files.iter().find(|f| f.package() == "openoffload.v1alpha5").expect("the v1alpha5 file");
    assert!(f.service.iter().any(|s| s.name() == "Activation"));
    assert_eq!(health(ch.clone(), "").await, Ok(ServingStatus::Serving));
    assert_eq!(health(ch, "openoffload.v1alpha5.Activation").await, Ok(ServingStatus::Serving));
}
