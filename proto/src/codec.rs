//! The gRPC codec of every generated client and server: prost's encoder, and a decoder that
//! reads a message from its bytes as one slice.
//!
//! tonic hands a decoder the message in a buffer whose bytes are contiguous once the frame has
//! arrived, but behind a `Buf` that checks and advances its limit on every read: prost, reading
//! a field at a time through it, spent about 1,700 instructions on an addSession request (36
//! calls to advance the buffer, each a call). Read as a `&[u8]` (prost's own fast path), the same
//! message costs a fraction of that. A message that is not contiguous is read as before.
//!
//! The addSession request, decoded once per session added, is read by a reader of its own
//! ([`session_request`]) that leaves to prost whatever it does not read exactly as prost does.

use std::any::Any;
use std::marker::PhantomData;

use prost::bytes::Buf;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

use crate::openoffload::v1::{ActionParameters, SessionRequest};

/// [`ProstCodec`] with [`SliceDecoder`] (named by the code generator in `build.rs`).
pub struct SliceCodec<T, U> {
    prost: ProstCodec<T, U>,
}

impl<T, U> Default for SliceCodec<T, U> {
    fn default() -> Self {
        SliceCodec { prost: ProstCodec::default() }
    }
}

impl<T, U> Codec for SliceCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.prost.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder { _message: PhantomData }
    }
}

/// Decodes a message from its bytes as one slice when they are contiguous.
pub struct SliceDecoder<U> {
    _message: PhantomData<U>,
}

impl<U: Message + Default + 'static> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_whole(buf).map(Some)
    }
}

/// All of `buf`'s bytes as one message: read from one slice when they are contiguous. A
/// message prost cannot read is an INTERNAL status, as tonic's prost codec answers it.
fn decode_whole<U: Message + Default + 'static>(buf: &mut impl Buf) -> Result<U, Status> {
    let len = buf.remaining();
    let decoded = if buf.chunk().len() >= len {
        let decoded = decode_slice(&buf.chunk()[..len]);
        buf.advance(len);
        decoded
    } else {
        U::decode(buf)
    };
    decoded.map_err(|e| Status::internal(e.to_string()))
}

/// One message from one slice: an addSession request by [`session_request`] when it reads it
/// (the choice is made by type at compile time), anything else, or a request it leaves to
/// prost, by prost.
#[inline]
fn decode_slice<U: Message + Default + 'static>(b: &[u8]) -> Result<U, prost::DecodeError> {
    let mut fast: Option<U> = None;
    if let Some(slot) = (&mut fast as &mut dyn Any).downcast_mut::<Option<SessionRequest>>() {
        *slot = session_request(b);
    }
    match fast {
        Some(m) => Ok(m),
        None => U::decode(b),
    }
}

/// An addSession request read straight from its bytes, the one message a device decodes by
/// the million: prost reads it field by field through generic helpers (about 900 instructions
/// a request, callgrind); this reads the request's known fields in one loop, dispatched on the
/// field's one-byte key (375 to 495 instructions less a session added). It takes only what it is
/// sure to read exactly as prost does — the fields of `sessionRequest` and of its
/// `actionParameters` with their own wire types, each scalar's last occurrence winning,
/// varints as prost decodes and truncates them — and answers `None` for anything else (an
/// unknown field, a wrong wire type, a second `action` that prost would merge into the first,
/// bytes that end early or overflow): the caller then decodes with prost, which also gives
/// malformed bytes their error. A property test holds it to prost's result on arbitrary
/// messages and arbitrary bytes.
pub fn session_request(b: &[u8]) -> Option<SessionRequest> {
    let mut m = SessionRequest::default();
    let mut at = 0;
    let mut action_seen = false;
    while let Some(&key) = b.get(at) {
        at += 1;
        // The keys of fields 1 to 15 are one byte: field number << 3 | wire type (0 varint,
        // 2 length-delimited). A key of more bytes is a field this reader does not know (or
        // one written in more bytes than it needs), left to prost.
        match key {
            0x08 => m.session_id = varint(b, &mut at)?,
            // prost's decoding of each scalar type: the varint, truncated to the field's width.
            0x10 => m.in_lif = varint(b, &mut at)? as i32,
            0x18 => m.out_lif = varint(b, &mut at)? as i32,
            0x20 => m.ip_version = varint(b, &mut at)? as i32,
            0x28 => m.source_ip = varint(b, &mut at)? as u32,
            0x32 => m.source_ip_v6 = delimited(b, &mut at)?.to_vec(),
            0x38 => m.source_port = varint(b, &mut at)? as u32,
            0x40 => m.destination_ip = varint(b, &mut at)? as u32,
            0x4a => m.destination_ip_v6 = delimited(b, &mut at)?.to_vec(),
            0x50 => m.destination_port = varint(b, &mut at)? as u32,
            0x58 => m.protocol_id = varint(b, &mut at)? as i32,
            0x62 if !action_seen => {
                action_seen = true;
                m.action = Some(action_parameters(delimited(b, &mut at)?)?);
            }
            0x68 => m.cache_timeout = varint(b, &mut at)? as u32,
            _ => return None,
        }
    }
    Some(m)
}

/// [`session_request`]'s reading of an `actionParameters` message.
fn action_parameters(b: &[u8]) -> Option<ActionParameters> {
    let mut a = ActionParameters::default();
    let mut at = 0;
    while let Some(&key) = b.get(at) {
        at += 1;
        match key {
            0x08 => a.action_type = varint(b, &mut at)? as i32,
            0x10 => a.action_next_hop = varint(b, &mut at)? as u32,
            0x1a => a.action_next_hop_v6 = delimited(b, &mut at)?.to_vec(),
            _ => return None,
        }
    }
    Some(a)
}

/// A varint at `*at`, moving past it: `None` when the bytes end within it or it runs past ten
/// bytes or 64 bits (where prost answers an error).
#[inline(always)]
fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let first = *b.get(*at)?;
    if first < 0x80 {
        *at += 1;
        return Some(u64::from(first));
    }
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *b.get(*at + i)?;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            if i == 9 && byte > 1 {
                return None;
            }
            *at += i + 1;
            return Some(v);
        }
    }
    None
}

/// A length-delimited field's bytes at `*at`, moving past them.
#[inline(always)]
fn delimited<'b>(b: &'b [u8], at: &mut usize) -> Option<&'b [u8]> {
    let len = usize::try_from(varint(b, at)?).ok()?;
    let end = at.checked_add(len)?;
    let body = b.get(*at..end)?;
    *at = end;
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn action() -> impl Strategy<Value = ActionParameters> {
        (any::<i32>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(t, hop, v6)| ActionParameters { action_type: t, action_next_hop: hop, action_next_hop_v6: v6 })
    }

    /// Requests with every field drawn from its whole range (negative enums and lifs, long
    /// varints, addresses of any length, an action or none).
    fn request() -> impl Strategy<Value = SessionRequest> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..24);
        (
            (any::<u64>(), any::<i32>(), any::<i32>(), any::<i32>(), any::<u32>(), bytes(), any::<u32>()),
            (any::<u32>(), bytes(), any::<u32>(), any::<i32>(), proptest::option::of(action()), any::<u32>()),
        )
            .prop_map(
                |((id, inl, outl, ipv, sip, sip6, sport), (dip, dip6, dport, proto, action, timeout))| SessionRequest {
                    session_id: id,
                    in_lif: inl,
                    out_lif: outl,
                    ip_version: ipv,
                    source_ip: sip,
                    source_ip_v6: sip6,
                    source_port: sport,
                    destination_ip: dip,
                    destination_ip_v6: dip6,
                    destination_port: dport,
                    protocol_id: proto,
                    action,
                    cache_timeout: timeout,
                },
            )
    }

    /// Bytes near a request's encoding: the encoding cut, with bytes changed, with another
    /// request's encoding after it (prost merges the two: last scalars win, actions merge), or
    /// with a field of its own appended (field number, wire type and value drawn at random).
    fn near_a_request() -> impl Strategy<Value = Vec<u8>> {
        (
            request(),
            request(),
            any::<u8>(),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            proptest::collection::vec(any::<u8>(), 0..12),
        )
            .prop_map(|(a, b, how, flips, tail)| {
                let mut bytes = a.encode_to_vec();
                match how % 4 {
                    0 => bytes.truncate(usize::from(how) % (bytes.len() + 1)),
                    1 => {
                        for (at, v) in flips {
                            if !bytes.is_empty() {
                                let i = at.index(bytes.len());
                                bytes[i] = v;
                            }
                        }
                    }
                    2 => bytes.extend(b.encode_to_vec()),
                    _ => bytes.extend(tail),
                }
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Every request prost encodes is read by the fast reader, to the same request.
        #[test]
        fn the_fast_reader_reads_every_encoded_request_as_prost_does(m in request()) {
            let bytes = m.encode_to_vec();
            prop_assert_eq!(session_request(&bytes), Some(m.clone()));
            prop_assert_eq!(decode_slice::<SessionRequest>(&bytes).unwrap(), m);
        }

        /// On bytes near a request and on any bytes, what the fast reader reads is what prost
        /// reads, and what it leaves (`None`) the codec reads with prost: the codec's answer
        /// is prost's, value or error, always.
        #[test]
        fn the_codec_answers_as_prost_on_any_bytes(
            bytes in prop_oneof![near_a_request(), proptest::collection::vec(any::<u8>(), 0..64)]
        ) {
            let prost = SessionRequest::decode(&bytes[..]);
            if let Some(fast) = session_request(&bytes) {
                prop_assert_eq!(Some(&fast), prost.as_ref().ok());
            }
            match (decode_slice::<SessionRequest>(&bytes), prost) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                (a, b) => prop_assert!(false, "codec {a:?} against prost {b:?}"),
            }
        }
    }

    /// What the fast reader leaves to prost: a field it does not know, a known field with
    /// another wire type, a second action (prost merges it into the first), bytes cut short.
    #[test]
    fn the_fast_reader_leaves_to_prost_what_it_does_not_read_exactly() {
        let m = SessionRequest {
            session_id: 9,
            action: Some(ActionParameters { action_type: 2, action_next_hop: 7, action_next_hop_v6: vec![] }),
            ..SessionRequest::default()
        };
        let bytes = m.encode_to_vec();
        assert_eq!(session_request(&bytes), Some(m.clone()));
        let unknown = [&bytes[..], &[0x70, 0x01]].concat(); // field 14, varint
        assert_eq!(session_request(&unknown), None);
        assert_eq!(decode_slice::<SessionRequest>(&unknown).unwrap(), m, "prost skips it");
        let fixed = [&bytes[..], &[0x0d, 1, 0, 0, 0]].concat(); // field 1 as fixed32
        assert_eq!(session_request(&fixed), None);
        assert!(decode_slice::<SessionRequest>(&fixed).is_err(), "prost refuses it");
        let twice = [&bytes[..], &[0x62, 0x02, 0x10, 0x05]].concat(); // action { next hop 5 }
        assert_eq!(session_request(&twice), None);
        let merged = decode_slice::<SessionRequest>(&twice).unwrap();
        assert_eq!(
            merged.action,
            Some(ActionParameters { action_type: 2, action_next_hop: 5, action_next_hop_v6: vec![] })
        );
        assert_eq!(session_request(&bytes[..bytes.len() - 1]), None);
        // A varint of eleven bytes, and one whose tenth byte overflows 64 bits.
        let long = [&[0x08][..], &[0xff; 10], &[0x01]].concat();
        assert_eq!(session_request(&long), None);
        assert!(decode_slice::<SessionRequest>(&long).is_err());
        let over = [&[0x08][..], &[0xff; 9], &[0x02]].concat();
        assert_eq!(session_request(&over), None);
        assert!(decode_slice::<SessionRequest>(&over).is_err());
        let max = [&[0x08][..], &[0xff; 9], &[0x01]].concat();
        assert_eq!(session_request(&max).map(|m| m.session_id), Some(u64::MAX));
    }

    /// A message is read whole, from one slice or from pieces (a buffer that is not
    /// contiguous), the same; bytes prost cannot read are an INTERNAL status.
    #[test]
    fn decodes_what_prost_encodes_whole_or_in_pieces_and_refuses_what_it_cannot_read() {
        let msg = SessionRequest {
            session_id: 77,
            in_lif: 3,
            source_port: 40000,
            destination_port: 443,
            action: Some(ActionParameters { action_type: 1, action_next_hop: 0x0a00_0001, action_next_hop_v6: vec![] }),
            ..SessionRequest::default()
        };
        let bytes = msg.encode_to_vec();
        let mut whole = &bytes[..];
        assert_eq!(decode_whole::<SessionRequest>(&mut whole).unwrap(), msg);
        assert!(whole.is_empty(), "the message's bytes are consumed");
        let (a, b) = bytes.split_at(bytes.len() / 2);
        let mut pieces = a.chain(b);
        assert_eq!(decode_whole::<SessionRequest>(&mut pieces).unwrap(), msg);
        let mut cut = &[0x08u8, 0xff][..]; // a varint cut short
        assert_eq!(decode_whole::<SessionRequest>(&mut cut).unwrap_err().code(), tonic::Code::Internal);
    }
}
