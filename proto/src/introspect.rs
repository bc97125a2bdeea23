//! Server reflection and health for the project's gRPC servers.
//!
//! - Reflection (`grpc.reflection.v1.ServerReflection` and the older `v1alpha` that many
//!   tools still ask first) describes every OpenOffload package the project knows (v1, v2,
//!   v1alpha5), so `grpcurl -plaintext HOST:PORT list` and `describe` work without .proto files.
//! - Health (`grpc.health.v1.Health`): `""` (the whole server) and each service served report
//!   SERVING while the server runs.

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The encoded `FileDescriptorSet` of the project's .proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openoffload_descriptor.bin"));

/// The reflection service, v1.
pub fn reflection_v1(
) -> tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the project's own descriptors are valid")
}

/// The reflection service, v1alpha.
pub fn reflection_v1alpha(
) -> tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>
{
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the project's own descriptors are valid")
}

/// The health service, with `services` (fully qualified names) and the whole server reported
/// SERVING. Keep the reporter to report NOT_SERVING on the way down.
pub async fn health(
    services: &[&str],
) -> (HealthReporter, tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>) {
    let (reporter, server) = tonic_health::server::health_reporter();
    for s in services {
        reporter.set_service_status(*s, ServingStatus::Serving).await;
    }
    (reporter, server)
}
