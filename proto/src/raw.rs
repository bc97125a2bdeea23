//! gRPC calls with raw message bytes: what a conformance check or a bad-input test needs to
//! send bytes no well-behaved client would (undecodable, oversized), on any path.

use bytes::{Buf, BufMut, Bytes};
use tokio_stream::Stream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Status;

/// Field 1 with wire type 7, which does not exist: no protobuf decoder accepts these bytes.
pub const UNDECODABLE: &[u8] = &[0x0f, 0xff, 0xff, 0xff];

/// Sends and receives message bytes as they are.
#[derive(Default, Clone, Copy, Debug)]
pub struct RawCodec;

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

async fn grpc(ch: &Channel) -> Result<tonic::client::Grpc<Channel>, Status> {
    let mut g = tonic::client::Grpc::new(ch.clone()).max_encoding_message_size(usize::MAX);
    g.ready().await.map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    Ok(g)
}

fn path(p: &str) -> Result<http::uri::PathAndQuery, Status> {
    p.parse().map_err(|_| Status::invalid_argument(format!("not a gRPC path: {p:?}")))
}

/// A unary call with `body` as the request message.
pub async fn unary(ch: &Channel, p: &str, body: Bytes) -> Result<Bytes, Status> {
    grpc(ch).await?.unary(tonic::Request::new(body), path(p)?, RawCodec).await.map(|r| r.into_inner())
}

/// A client-streaming call sending `bodies` and then ending the stream.
pub async fn client_stream(ch: &Channel, p: &str, bodies: Vec<Bytes>) -> Result<Bytes, Status> {
    client_stream_from(ch, p, tokio_stream::iter(bodies)).await
}

/// A client-streaming call fed by any stream of message bytes.
pub async fn client_stream_from(
    ch: &Channel,
    p: &str,
    bodies: impl Stream<Item = Bytes> + Send + 'static,
) -> Result<Bytes, Status> {
    grpc(ch).await?.client_streaming(tonic::Request::new(bodies), path(p)?, RawCodec).await.map(|r| r.into_inner())
}

/// A server-streaming call; every message until the end of the stream.
pub async fn server_stream(ch: &Channel, p: &str, body: Bytes) -> Result<Vec<Bytes>, Status> {
    let mut s = grpc(ch).await?.server_streaming(tonic::Request::new(body), path(p)?, RawCodec).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.push(m);
    }
    Ok(out)
}
