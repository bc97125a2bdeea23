//! A SessionTable client that speaks any flavour: the same calls, sent to the v1
//! (`/openoffload.v1.SessionTable/addSession`), v2 (`/openoffload.v2.SessionTable/AddSession`)
//! or v1alpha5 paths. Requests and responses are the wire messages, untouched, so callers that
//! judge a device (the conformance suite) see exactly what it sent.

use std::fmt;
use std::str::FromStr;

use tonic::codegen::tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{IntoRequest, IntoStreamingRequest, Response, Status, Streaming};

use crate::openoffload::{v1, v1alpha5, v2};
use crate::wire;

/// An endpoint as a user writes it: `host:port`, or `http://host:port` / `https://host:port`
/// (the scheme says whether the user means TLS; a trailing `/` is allowed). Channels are made
/// from [`Endpoint::address`] with the scheme the caller's TLS settings decide, so a scheme
/// given here must agree with them (see [`Endpoint::check_tls`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint<'a> {
    /// `host:port` (`[v6]:port` for an IPv6 literal).
    pub address: &'a str,
    /// `Some(true)` for `https://`, `Some(false)` for `http://`, `None` without a scheme.
    pub tls: Option<bool>,
}

impl<'a> Endpoint<'a> {
    /// Parses `e`; the error says what is wrong in words.
    pub fn parse(e: &'a str) -> Result<Self, String> {
        let (tls, rest) = match e.split_once("://") {
            None => (None, e),
            Some(("http", r)) => (Some(false), r),
            Some(("https", r)) => (Some(true), r),
            Some((other, _)) => {
                return Err(format!("endpoint {e:?}: scheme {other:?} is not http or https; give HOST:PORT"))
            }
        };
        let address = rest.strip_suffix('/').unwrap_or(rest);
        if address.contains('/') {
            return Err(format!("endpoint {e:?} has a path; give HOST:PORT, e.g. 127.0.0.1:50151"));
        }
        let port = match address.strip_prefix('[') {
            Some(v6) => v6.split_once(']').and_then(|(_, p)| p.strip_prefix(':')),
            None => address.rsplit_once(':').filter(|(h, _)| !h.contains(':')).map(|(_, p)| p),
        };
        match port.map(|p| p.parse::<u16>()) {
            Some(Ok(p)) if p > 0 => Ok(Endpoint { address, tls }),
            Some(_) => Err(format!("endpoint {e:?}: the port is not a number from 1 to 65535")),
            None => Err(format!("endpoint {e:?} has no port: give HOST:PORT, e.g. 127.0.0.1:50151 or [::1]:50151")),
        }
    }

    /// Checks the scheme against whether the caller has TLS settings (`with_tls`): `https://`
    /// without them, or `http://` with them, is a contradiction to point out, not to guess at.
    pub fn check_tls(&self, with_tls: bool, how: &str) -> Result<(), String> {
        match self.tls {
            Some(true) if !with_tls => {
                Err(format!("endpoint https://{} asks for TLS, but no TLS material was given ({how})", self.address))
            }
            Some(false) if with_tls => Err(format!(
                "endpoint http://{} asks for plaintext, but TLS material was given ({how}); drop one of them",
                self.address
            )),
            _ => Ok(()),
        }
    }
}

/// Which SessionTable method paths a peer serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// `openoffload.v1`, lower camelCase methods (AT&T clients and servers, BlueField daemon).
    V1,
    /// `openoffload.v2`, PascalCase methods (OPI).
    V2,
    /// `openoffload.v1alpha5`, lower camelCase methods (the release with Activation).
    V1alpha5,
}

impl Flavour {
    pub const ALL: [Flavour; 3] = [Flavour::V1, Flavour::V2, Flavour::V1alpha5];

    /// The proto package of the flavour.
    pub fn package(self) -> &'static str {
        match self {
            Flavour::V1 => "openoffload.v1",
            Flavour::V2 => "openoffload.v2",
            Flavour::V1alpha5 => "openoffload.v1alpha5",
        }
    }

    /// The gRPC path of a SessionTable method, given by its v1 name (`addSession`, ...).
    pub fn path(self, v1_method: &str) -> String {
        let method = match self {
            Flavour::V2 => {
                let mut m = v1_method.to_string();
                if let Some(first) = m.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                m
            }
            Flavour::V1 | Flavour::V1alpha5 => v1_method.to_string(),
        };
        format!("/{}.SessionTable/{method}", self.package())
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavour::V1 => "v1",
            Flavour::V2 => "v2",
            Flavour::V1alpha5 => "v1alpha5",
        })
    }
}

impl FromStr for Flavour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v1" => Ok(Flavour::V1),
            "v2" => Ok(Flavour::V2),
            "v1alpha5" => Ok(Flavour::V1alpha5),
            other => Err(format!("unknown API flavour {other:?}: expected v1, v2 or v1alpha5")),
        }
    }
}

/// Which flavours an endpoint serves, found from its paths: a getSession (read-only) of an
/// unlikely id is sent on each flavour's path; a gRPC server answers a path it does not serve
/// with UNIMPLEMENTED, and anything else (an answer, NOT_FOUND, ...) means the path is served.
/// Order of the result: v1, v2, v1alpha5. A transport failure is returned as is.
pub async fn detect_flavours(channel: Channel) -> Result<Vec<Flavour>, Status> {
    let mut served = Vec::new();
    for f in Flavour::ALL {
        let mut c = SessionTableClient::new(channel.clone(), f);
        match c.get_session(wire::SessionId { session_id: u64::MAX }).await {
            Ok(_) => served.push(f),
            Err(s) if !from_server(&s) => return Err(s),
            Err(s) if s.code() == tonic::Code::Unimplemented => {}
            Err(_) => served.push(f),
        }
    }
    Ok(served)
}

/// Whether a status was answered by the server (a `grpc-status` it sent), as opposed to made
/// by the client's own transport (connection refused or reset, TLS or HTTP/2 failure), which
/// tonic reports with the underlying error as the status's source.
pub fn from_server(s: &Status) -> bool {
    std::error::Error::source(s).is_none()
}

/// A flavour to speak, or `auto`: the first the endpoint serves (see [`detect_flavours`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiChoice {
    Auto,
    Fixed(Flavour),
}

impl std::str::FromStr for ApiChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            Ok(ApiChoice::Auto)
        } else {
            s.parse().map(ApiChoice::Fixed).map_err(|e| format!("{e}, or auto"))
        }
    }
}

impl fmt::Display for ApiChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiChoice::Auto => f.write_str("auto"),
            ApiChoice::Fixed(x) => x.fmt(f),
        }
    }
}

/// A SessionTable client bound to one flavour.
#[derive(Clone, Debug)]
pub enum SessionTableClient {
    V1(v1::session_table_client::SessionTableClient<Channel>),
    V2(v2::session_table_client::SessionTableClient<Channel>),
    V1alpha5(v1alpha5::session_table_client::SessionTableClient<Channel>),
}

macro_rules! each_flavour {
    ($self:ident, $c:ident => $e:expr) => {
        match $self {
            SessionTableClient::V1($c) => $e,
            SessionTableClient::V2($c) => $e,
            SessionTableClient::V1alpha5($c) => $e,
        }
    };
}

impl SessionTableClient {
    pub fn new(channel: Channel, flavour: Flavour) -> Self {
        match flavour {
            Flavour::V1 => SessionTableClient::V1(v1::session_table_client::SessionTableClient::new(channel)),
            Flavour::V2 => SessionTableClient::V2(v2::session_table_client::SessionTableClient::new(channel)),
            Flavour::V1alpha5 => {
                SessionTableClient::V1alpha5(v1alpha5::session_table_client::SessionTableClient::new(channel))
            }
        }
    }

    pub fn flavour(&self) -> Flavour {
        match self {
            SessionTableClient::V1(_) => Flavour::V1,
            SessionTableClient::V2(_) => Flavour::V2,
            SessionTableClient::V1alpha5(_) => Flavour::V1alpha5,
        }
    }

    pub async fn add_session<S>(
        &mut self,
        requests: impl IntoStreamingRequest<Stream = S, Message = wire::SessionRequest>,
    ) -> Result<Response<wire::AddSessionResponse>, Status>
    where
        S: Stream<Item = wire::SessionRequest> + Send + 'static,
    {
        each_flavour!(self, c => c.add_session(requests).await)
    }

    pub async fn get_session(
        &mut self,
        id: impl IntoRequest<wire::SessionId>,
    ) -> Result<Response<wire::SessionResponse>, Status> {
        each_flavour!(self, c => c.get_session(id).await)
    }

    pub async fn delete_session(
        &mut self,
        id: impl IntoRequest<wire::SessionId>,
    ) -> Result<Response<wire::SessionResponse>, Status> {
        each_flavour!(self, c => c.delete_session(id).await)
    }

    pub async fn get_all_sessions(
        &mut self,
        args: impl IntoRequest<wire::SessionRequestArgs>,
    ) -> Result<Response<wire::SessionResponses>, Status> {
        each_flavour!(self, c => c.get_all_sessions(args).await)
    }

    pub async fn get_closed_sessions(
        &mut self,
        args: impl IntoRequest<wire::SessionRequestArgs>,
    ) -> Result<Response<Streaming<wire::SessionResponse>>, Status> {
        each_flavour!(self, c => c.get_closed_sessions(args).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_each_flavour() {
        assert_eq!(Flavour::V1.path("addSession"), "/openoffload.v1.SessionTable/addSession");
        assert_eq!(Flavour::V2.path("getClosedSessions"), "/openoffload.v2.SessionTable/GetClosedSessions");
        assert_eq!(Flavour::V1alpha5.path("getSession"), "/openoffload.v1alpha5.SessionTable/getSession");
        for f in Flavour::ALL {
            assert_eq!(f.to_string().parse::<Flavour>(), Ok(f));
        }
    }

    #[test]
    fn endpoints_are_host_and_port_with_an_optional_scheme() {
        for (e, address, tls) in [
            ("127.0.0.1:50151", "127.0.0.1:50151", None),
            ("localhost:1", "localhost:1", None),
            ("[::1]:50151", "[::1]:50151", None),
            ("http://dpu.example:443", "dpu.example:443", Some(false)),
            ("https://[2001:db8::1]:9/", "[2001:db8::1]:9", Some(true)),
        ] {
            assert_eq!(Endpoint::parse(e), Ok(Endpoint { address, tls }), "{e}");
        }
        for (bad, says) in [
            ("127.0.0.1", "has no port"),
            ("dpu.example", "has no port"),
            ("::1", "has no port"),
            ("[::1]", "has no port"),
            ("http://127.0.0.1", "has no port"),
            ("127.0.0.1:http", "not a number"),
            ("127.0.0.1:0", "not a number"),
            ("grpc://127.0.0.1:50151", "is not http or https"),
            ("http://127.0.0.1:50151/openoffload", "has a path"),
        ] {
            let e = Endpoint::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_scheme_must_agree_with_the_tls_settings() {
        let plain = Endpoint::parse("http://127.0.0.1:1").unwrap();
        let tls = Endpoint::parse("https://127.0.0.1:1").unwrap();
        let bare = Endpoint::parse("127.0.0.1:1").unwrap();
        assert!(plain.check_tls(false, "").is_ok() && tls.check_tls(true, "").is_ok());
        assert!(bare.check_tls(false, "").is_ok() && bare.check_tls(true, "").is_ok());
        assert!(plain.check_tls(true, "--ca").unwrap_err().contains("asks for plaintext"));
        assert!(tls.check_tls(false, "--ca").unwrap_err().contains("no TLS material"));
    }
}
