//! A bare HTTP/2 client (plaintext or TLS), for what a well-behaved gRPC client cannot do on
//! purpose: reset a request stream half way (RST_STREAM CANCEL), or keep a stream open past its
//! own deadline without giving up on it.

use std::sync::Arc;

use bytes::Bytes;
use opof_device::tls::ClientTls;
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::verdict::Finding;

fn error(what: &str, e: impl std::fmt::Display) -> Finding {
    Finding::Error(format!("raw HTTP/2 client: {what}: {e}"))
}

fn tls_config(t: &ClientTls) -> Result<rustls::ClientConfig, Finding> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(t.ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| error("CA certificate", e))?).map_err(|e| error("CA certificate", e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| error("TLS versions", e))?
        .with_root_certificates(roots);
    let mut cfg = match &t.identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| error("client certificate", e))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| error("client key", e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| error("client certificate", e))?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// One gRPC message frame: uncompressed flag, length, bytes.
pub fn frame(m: &impl Message) -> Bytes {
    let body = m.encode_to_vec();
    let mut f = Vec::with_capacity(body.len() + 5);
    f.push(0);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&body);
    Bytes::from(f)
}

/// Opens a client-streaming call on `path` of `address` and sends `messages` without ending the
/// stream; the caller decides how it ends (reset, end, or nothing).
pub async fn open_stream(
    address: &str,
    tls: Option<&ClientTls>,
    path: &str,
    grpc_timeout: Option<&str>,
    messages: &[Bytes],
) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), Finding> {
    let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| error("connect", e))?;
    tcp.set_nodelay(true).map_err(|e| error("nodelay", e))?;
    let send = match tls {
        None => {
            let (send, conn) = h2::client::handshake(tcp).await.map_err(|e| error("HTTP/2 handshake", e))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            send
        }
        Some(t) => {
            let host = t.domain.clone().unwrap_or_else(|| address.rsplit_once(':').map_or(address, |(h, _)| h).into());
            let name = ServerName::try_from(host.clone()).map_err(|e| error(&format!("server name {host:?}"), e))?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(t)?));
            let stream = connector.connect(name, tcp).await.map_err(|e| error("TLS handshake", e))?;
            let (send, conn) = h2::client::handshake(stream).await.map_err(|e| error("HTTP/2 handshake", e))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            send
        }
    };
    let mut send = send.ready().await.map_err(|e| error("HTTP/2 ready", e))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("{scheme}://{address}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = grpc_timeout {
        req = req.header("grpc-timeout", t);
    }
    let req = req.body(()).map_err(|e| error("request", e))?;
    let (response, mut body) = send.send_request(req, false).map_err(|e| error("send request", e))?;
    for m in messages {
        body.send_data(m.clone(), false).map_err(|e| error("send message", e))?;
    }
    Ok((response, body))
}

/// The grpc-status of a response: from its headers (trailers-only answer) or its trailers.
pub async fn grpc_status(response: http::Response<h2::RecvStream>) -> Result<Option<i32>, Finding> {
    let status = |h: &http::HeaderMap| h.get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok());
    if let Some(s) = status(response.headers()) {
        return Ok(Some(s));
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| error("response body", e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.map_err(|e| error("trailers", e))?;
    Ok(trailers.as_ref().and_then(status))
}
