//! CONN: reaching the SessionTable — the endpoint answers, its paths, TLS and mutual TLS.

use opof_device::tls::{self, ClientTls};
use opof_proto::client::{from_server, Flavour, SessionTableClient};
use opof_proto::wire;
use tonic::Code;

use super::{case, Case};
use crate::ctx::{call_failed, Ctx};
use crate::target::{channel, error_chain};
use crate::verdict::Finding;

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "CONN-1.1",
            "CONN-1",
            "The endpoint answers gRPC",
            "getAllSessions with pageSize 1 on the flavour of the run.",
            "An OK answer: PASS. A gRPC error: FAIL. No connection: ERROR.",
            reach
        ),
        case!(
            "CONN-2.1",
            "CONN-2",
            "A flavour is served whole, under its exact paths",
            "Each of the five methods, with harmless arguments (an empty addSession stream, an unknown id, \
             pageSize 1), on the paths of every flavour.",
            "The run's flavour answers all five (no UNIMPLEMENTED); every other flavour answers all five or none.",
            paths
        ),
        case!(
            "CONN-3.1",
            "CONN-3",
            "TLS: the server certificate chains to the given CA and names the host",
            "A TLS connection that trusts only the given CA and verifies the server name, then a call.",
            "The handshake and the call succeed. SKIP without TLS material.",
            tls_verified
        ),
        case!(
            "CONN-4.1",
            "CONN-4",
            "Mutual TLS: clients without a trusted certificate are refused",
            "A call with no client certificate; a call with a certificate from a CA made for the case.",
            "Both are refused (handshake or call fails). SKIP unless the target uses mutual TLS.",
            mtls_refusal
        ),
    ]
}

async fn reach(cx: Ctx) -> Result<(), Finding> {
    cx.page(wire::SessionRequestArgs { page_size: 1, ..Default::default() }).await?;
    cx.note(format!("served flavours: {}", cx.target().info.served_flavours.join(", ")));
    Ok(())
}

/// Which of the five methods of `flavour` are served (not UNIMPLEMENTED).
async fn served_methods(cx: &Ctx, flavour: Flavour) -> Result<Vec<(&'static str, bool)>, Finding> {
    let mut c = SessionTableClient::new(cx.target().channel.clone(), flavour);
    let unknown = wire::SessionId { session_id: u64::MAX - 1 };
    let args = wire::SessionRequestArgs { page_size: 1, ..Default::default() };
    // Served: answered OK, or with a status the server sent other than UNIMPLEMENTED. A status
    // the client's own transport made (nothing reached the server) proves nothing: ERROR.
    let served = |r: Result<(), tonic::Status>, what: &str| match r {
        Ok(()) => Ok(true),
        Err(s) if !from_server(&s) => {
            Err(Finding::Error(format!("{what} on the {flavour} paths did not reach the server: {}", error_chain(&s))))
        }
        Err(s) if s.code() == Code::Unimplemented => Ok(false),
        Err(s) if s.code() == Code::Unavailable => Err(call_failed(what, &s)),
        Err(_) => Ok(true),
    };
    let empty: Vec<wire::SessionRequest> = Vec::new();
    Ok(vec![
        ("addSession", served(c.add_session(tokio_stream::iter(empty)).await.map(drop), "addSession")?),
        ("getSession", served(c.get_session(unknown).await.map(drop), "getSession")?),
        ("deleteSession", served(c.delete_session(unknown).await.map(drop), "deleteSession")?),
        ("getAllSessions", served(c.get_all_sessions(args).await.map(drop), "getAllSessions")?),
        ("getClosedSessions", served(c.get_closed_sessions(args).await.map(drop), "getClosedSessions")?),
    ])
}

async fn paths(cx: Ctx) -> Result<(), Finding> {
    let ours = cx.target().flavour;
    for f in Flavour::ALL {
        let methods = served_methods(&cx, f).await?;
        let missing: Vec<_> = methods.iter().filter(|(_, s)| !s).map(|(m, _)| f.path(m)).collect();
        if f == ours && !missing.is_empty() {
            crate::fail!("flavour {f} (the run's) does not serve {}", missing.join(", "));
        }
        if !missing.is_empty() && missing.len() < methods.len() {
            crate::fail!("flavour {f} is served in part: {} answer UNIMPLEMENTED", missing.join(", "));
        }
        cx.note(format!("{f}: {}", if missing.is_empty() { "served" } else { "not served" }));
    }
    Ok(())
}

async fn tls_verified(cx: Ctx) -> Result<(), Finding> {
    let Some(t) = cx.target().tls.clone() else {
        return Err(Finding::Skip("no TLS material given (OPOF_TLS_DIR or OPOF_CA)".into()));
    };
    let ch = channel(&t.address, Some(&t.client))
        .await
        .map_err(|e| Finding::Fail(format!("TLS connection trusting only the given CA: {e}")))?;
    let mut c = SessionTableClient::new(ch, cx.target().flavour);
    c.get_all_sessions(wire::SessionRequestArgs { page_size: 1, ..Default::default() })
        .await
        .map_err(|s| call_failed("getAllSessions over TLS", &s))?;
    cx.note("the server certificate chains to the given CA and names the host (verified by rustls)");
    Ok(())
}

/// Whether a call through a client with this TLS configuration is refused.
async fn refused(cx: &Ctx, address: &str, tls: &ClientTls) -> Result<String, Finding> {
    let ch = match channel(address, Some(tls)).await {
        Ok(ch) => ch,
        // Where a refusal surfaces (handshake or first call) depends on TLS 1.2/1.3 timing.
        Err(_) => return Ok("refused".into()),
    };
    let mut c = SessionTableClient::new(ch, cx.target().flavour);
    match c.get_all_sessions(wire::SessionRequestArgs { page_size: 1, ..Default::default() }).await {
        Ok(_) => Err(Finding::Fail("the call was answered".into())),
        Err(_) => Ok("refused".into()),
    }
}

async fn mtls_refusal(cx: Ctx) -> Result<(), Finding> {
    let Some(t) = cx.target().tls.clone().filter(|t| t.mutual) else {
        return Err(Finding::Skip("the target does not use mutual TLS (no client certificate given)".into()));
    };
    let anonymous = ClientTls { identity: None, ..t.client.clone() };
    match refused(&cx, &t.address, &anonymous).await {
        Ok(how) => cx.note(format!("without a certificate: {how}")),
        Err(Finding::Fail(m)) => crate::fail!("a client without a certificate was served: {m}"),
        Err(e) => return Err(e),
    }
    let dir = tempfile::tempdir().map_err(|e| Finding::Error(format!("temporary folder: {e}")))?;
    tls::generate(dir.path(), &[], false).map_err(|e| Finding::Error(error_chain(&e)))?;
    let stranger = ClientTls::from_dir(dir.path()).map_err(|e| Finding::Error(error_chain(&e)))?;
    let stranger = ClientTls { ca_pem: t.client.ca_pem.clone(), domain: t.client.domain.clone(), ..stranger };
    match refused(&cx, &t.address, &stranger).await {
        Ok(how) => cx.note(format!("with a certificate of another CA: {how}")),
        Err(Finding::Fail(m)) => crate::fail!("a client whose certificate comes from another CA was served: {m}"),
        Err(e) => return Err(e),
    }
    Ok(())
}
