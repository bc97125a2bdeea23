//! TLS and mutual TLS on the control plane, with material made at run time.

mod common;

use common::*;
use opof_device::table::TableConfig;
use opof_device::tls::{self, ClientTls, ServerTls};
use opof_proto::client::{Flavour, SessionTableClient};
use opof_proto::wire;

#[tokio::test]
async fn mutual_tls_serves_certified_clients_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let made = tls::generate(dir.path(), &["device.example".into()], false).unwrap();
    assert_eq!(made.files.len(), 6);
    let dev = TestDevice::start(TableConfig::default(), Some(ServerTls::from_dir(dir.path()).unwrap())).await;

    // A client with a certificate from the CA: served, on both flavours.
    let good = ClientTls::from_dir(dir.path()).unwrap();
    let ch = dev.tls_channel(&good).await.expect("mTLS handshake");
    for f in [Flavour::V1, Flavour::V2] {
        let mut c = SessionTableClient::new(ch.clone(), f);
        let r = add(&mut c, vec![v4(f as u64, 100 + f as u32)]).await;
        assert_eq!(r.request_status, wire::AddSessionStatus::SessionAccepted as i32);
    }

    // A client that trusts the server but has no certificate: refused.
    let anonymous = ClientTls::from_files(&dir.path().join(tls::CA_CERT), None).unwrap();
    let refused = match dev.tls_channel(&anonymous).await {
        Err(_) => true,
        Ok(ch) => {
            SessionTableClient::new(ch, Flavour::V1).get_session(wire::SessionId { session_id: 0 }).await.is_err()
        }
    };
    assert!(refused, "a client without a certificate must be refused when mTLS is on");

    // A plaintext client: refused.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", dev.addr)).unwrap().connect().await;
    if let Ok(ch) = plain {
        let r = SessionTableClient::new(ch, Flavour::V1).get_session(wire::SessionId { session_id: 0 }).await;
        assert!(r.is_err(), "plaintext must not be served on a TLS port");
    }

    // A client certificate from another CA: refused.
    let other = tempfile::tempdir().unwrap();
    tls::generate(other.path(), &[], false).unwrap();
    let mut stranger = ClientTls::from_dir(other.path()).unwrap();
    stranger.ca_pem = good.ca_pem.clone();
    let refused = match dev.tls_channel(&stranger).await {
        Err(_) => true,
        Ok(ch) => {
            SessionTableClient::new(ch, Flavour::V1).get_session(wire::SessionId { session_id: 0 }).await.is_err()
        }
    };
    assert!(refused, "a certificate from another CA must be refused");

    // Still serving the good client.
    let mut c = SessionTableClient::new(ch, Flavour::V1);
    assert_eq!(all_ids(&mut c).await.len(), 2);
    dev.stop().await;
}

#[tokio::test]
async fn server_only_tls_serves_clients_without_certificates() {
    let dir = tempfile::tempdir().unwrap();
    tls::generate(dir.path(), &[], false).unwrap();
    let server =
        ServerTls::from_files(&dir.path().join(tls::SERVER_CERT), &dir.path().join(tls::SERVER_KEY), None).unwrap();
    let dev = TestDevice::start(TableConfig::default(), Some(server)).await;
    let anonymous = ClientTls::from_files(&dir.path().join(tls::CA_CERT), None).unwrap();
    let mut c = SessionTableClient::new(dev.tls_channel(&anonymous).await.unwrap(), Flavour::V2);
    assert_eq!(get(&mut c, 9).await.request_status, wire::RequestStatus::RejectedSessionNonexistent as i32);
    dev.stop().await;
}

#[test]
fn unreadable_or_non_pem_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = ServerTls::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("server.pem"), "{err}");
    std::fs::write(dir.path().join("server.pem"), "not a certificate").unwrap();
    let err = ServerTls::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("server.pem") && err.contains("no PEM"), "{err}");
}

/// `opof certs`' files: private keys are 0600 from their creation, nothing is overwritten
/// without `force`, and a symbolic link planted where a key goes is never followed.
#[test]
fn generated_material_is_created_safely() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let made = tls::generate(dir.path(), &[], false).unwrap();
    for f in &made.files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        let private = f.extension().is_some_and(|e| e == "key");
        assert_eq!(mode, if private { 0o600 } else { 0o644 }, "{}", f.display());
    }
    let before = std::fs::read(dir.path().join(tls::CA_KEY)).unwrap();
    let e = tls::generate(dir.path(), &[], false).unwrap_err().to_string();
    assert!(e.contains("ca.pem exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(dir.path().join(tls::CA_KEY)).unwrap(), before, "nothing replaced");

    // A link planted at ca.key pointing outside the folder.
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let fresh = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&victim, fresh.path().join(tls::CA_KEY)).unwrap();
    let e = tls::generate(fresh.path(), &[], false).unwrap_err().to_string();
    assert!(e.contains("ca.key exists"), "{e}");
    tls::generate(fresh.path(), &[], true).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "the link was not followed");
    let key = fresh.path().join(tls::CA_KEY);
    assert!(!std::fs::symlink_metadata(&key).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // --force replaces: a new CA.
    tls::generate(dir.path(), &[], true).unwrap();
    assert_ne!(std::fs::read(dir.path().join(tls::CA_KEY)).unwrap(), before);
}
