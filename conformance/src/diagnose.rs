//! Why the suite cannot reach an endpoint, in words a vendor engineer can act on.
//!
//! When the first calls fail in the transport, the suite looks at the endpoint itself: does
//! anything listen, does it speak TLS or plaintext HTTP/2 (a TLS handshake that trusts
//! anything, so that the certificate can be looked at), does it ask for a client certificate,
//! and what the TLS library said about its certificate. The run then stops with one ERROR
//! (CONN-1.1) carrying this diagnosis instead of a FAIL per case.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How to make certificates that work.
const MAKE_CERTS: &str = "`opof certs --out DIR --host NAME` makes a CA, a server certificate naming NAME in \
                          subjectAltName, and a client certificate; start the server with DIR/server.pem and \
                          DIR/server.key and certify with --tls-dir DIR";

/// What a TLS handshake that trusts anything saw of the endpoint.
#[derive(Debug, Default)]
pub struct TlsProbe {
    /// The server asked for a client certificate.
    pub wants_client_cert: bool,
    /// The server's own certificate (DER), when it sent one.
    pub certificate: Option<Vec<u8>>,
    /// Why the handshake failed, if it did.
    pub error: Option<String>,
}

impl TlsProbe {
    /// The endpoint speaks TLS: it sent a certificate in a handshake.
    pub fn speaks_tls(&self) -> bool {
        self.certificate.is_some()
    }
}

/// Accepts any server certificate, keeping it to look at.
#[derive(Debug)]
struct Keep {
    seen: Mutex<Option<Vec<u8>>>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for Keep {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// Notes that the server asked for a client certificate, and offers none.
#[derive(Debug, Default)]
struct NoteRequest(AtomicBool);

impl rustls::client::ResolvesClientCert for NoteRequest {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Opens a TLS connection to `address` that trusts anything, and reports what it saw.
pub async fn probe_tls(address: &str, host: &str) -> TlsProbe {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let keep = Arc::new(Keep {
        seen: Mutex::new(None),
        schemes: provider.signature_verification_algorithms.supported_schemes(),
    });
    let note = Arc::new(NoteRequest::default());
    let config = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(b) => {
            let mut c =
                b.dangerous().with_custom_certificate_verifier(keep.clone()).with_client_cert_resolver(note.clone());
            c.alpn_protocols = vec![b"h2".to_vec()];
            c
        }
        Err(e) => return TlsProbe { error: Some(e.to_string()), ..TlsProbe::default() },
    };
    let name = ServerName::try_from(host.to_string()).unwrap_or(ServerName::try_from("localhost").expect("a name"));
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
        let mut tls =
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
        // A server that wants a client certificate says so after the handshake (TLS 1.3):
        // read a moment for its alert.
        use tokio::io::AsyncReadExt as _;
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_millis(300), tls.read(&mut buf)).await;
        Ok::<(), String>(())
    };
    let r = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()));
    let certificate = keep.seen.lock().take();
    TlsProbe { wants_client_cert: note.0.load(Ordering::Relaxed), certificate, error: r.err() }
}

/// Whether a DER certificate carries a subjectAltName extension (OID 2.5.29.17).
pub fn has_subject_alt_name(der: &[u8]) -> bool {
    der.windows(5).any(|w| w == [0x06, 0x03, 0x55, 0x1d, 0x11])
}

/// Why `address` could not be reached (`error`: what the first attempt said), in words.
pub async fn explain(address: &str, tls_used: bool, client_cert_given: bool, error: &str) -> String {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(address)).await {
        Ok(Err(e)) => return format!("nothing answers on {address}: {e} (is the server running, on this port?)"),
        Err(_) => return format!("{address} does not answer a TCP connection within 5 s"),
        Ok(Ok(_)) => {}
    }
    let p = probe_tls(address, host).await;
    let lower = error.to_ascii_lowercase();
    if !tls_used && p.speaks_tls() {
        return format!(
            "the endpoint speaks TLS and the run connected in plaintext: give the CA that signed its certificate \
             (--ca FILE, or --tls-dir DIR with ca.pem{}) [{error}]",
            if p.wants_client_cert { "; it also asks for a client certificate: client.pem and client.key" } else { "" }
        );
    }
    if tls_used && !p.speaks_tls() {
        return format!(
            "the endpoint does not speak TLS (it answered a TLS handshake with {}): it is plaintext HTTP/2, so \
             leave out --tls-dir / --ca [{error}]",
            p.error.as_deref().unwrap_or("nothing")
        );
    }
    if !tls_used {
        return format!("the endpoint accepts TCP connections but does not answer gRPC over HTTP/2: {error}");
    }
    // TLS on both sides: what was wrong with the handshake.
    if lower.contains("certificaterequired")
        || lower.contains("certificate required")
        || (p.wants_client_cert && !client_cert_given)
    {
        return format!(
            "the server requires a client certificate (mutual TLS) and the run gave none: give --tls-dir DIR \
             with client.pem and client.key, or --cert and --key [{error}]"
        );
    }
    let cert = p.certificate.as_deref();
    let no_san = cert.is_some_and(|c| !has_subject_alt_name(c));
    if lower.contains("notvalidforname") || lower.contains("not valid for name") || no_san {
        if no_san {
            return format!(
                "the server's certificate has no subjectAltName: it names its host only in the Common Name, which \
                 TLS clients (rustls, Go, browsers) no longer read, so no name can match. Make a certificate with \
                 subjectAltName: {MAKE_CERTS} [{error}]"
            );
        }
        return format!(
            "the server's certificate does not name {host} in its subjectAltName: connect by a name it carries, or \
             give that name with --server-name [{error}]"
        );
    }
    if lower.contains("causedasendentity") || lower.contains("ca used as end entity") {
        return format!(
            "the server presents a CA certificate (basicConstraints CA:TRUE, typical of a self-signed certificate \
             made with `openssl req -x509`) as its own; TLS clients refuse that. Sign a server certificate with a \
             CA instead: {MAKE_CERTS} [{error}]"
        );
    }
    if lower.contains("unknownissuer") || lower.contains("unknown issuer") || lower.contains("badsignature") {
        return format!(
            "the server's certificate does not chain to the CA the run trusts: give the CA that signed it (--ca or \
             --tls-dir) [{error}]"
        );
    }
    if lower.contains("unsupportedcertversion") {
        return format!(
            "the server's certificate is X.509 v1; TLS clients need v3 with subjectAltName: {MAKE_CERTS} [{error}]"
        );
    }
    if lower.contains("expired") || lower.contains("notvalidyet") {
        return format!("the server's certificate is outside its validity period [{error}]");
    }
    format!("the TLS connection failed: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_alt_name_is_found_in_certificates_that_have_it() {
        let dir = tempfile::tempdir().unwrap();
        opof_device::tls::generate(dir.path(), &[], false).unwrap();
        let pem = std::fs::read(dir.path().join("server.pem")).unwrap();
        let der: Vec<u8> = {
            use rustls::pki_types::pem::PemObject;
            CertificateDer::pem_slice_iter(&pem).next().unwrap().unwrap().to_vec()
        };
        assert!(has_subject_alt_name(&der));
        let mut no_san = der.clone();
        for w in 0..no_san.len() - 5 {
            if no_san[w..w + 5] == [0x06, 0x03, 0x55, 0x1d, 0x11] {
                no_san[w + 4] = 0x0e;
            }
        }
        assert!(!has_subject_alt_name(&no_san));
    }
}
