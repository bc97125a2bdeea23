//! The model-based property test of the session table, driven through gRPC: random sequences of
//! addSession / getSession / deleteSession / getAllSessions / getClosedSessions and clock steps
//! go to the reference device over a real loopback connection (alternating the v1 and v2
//! paths), and every answer, as it comes off the wire, equals what the plain model of
//! SEMANTICS.md (`opof_device::table::model`) says, converted by the one conversion layer.

use std::sync::Arc;

use opof_device::clock::ManualClock;
use opof_device::control::{self, Device, ServeOptions};
use opof_device::table::model::{strategy::arb_candidate, Model};
use opof_device::table::{Candidate, TableConfig};
use opof_proto::client::{Flavour, SessionTableClient};
use opof_proto::convert::nonexistent_response;
use opof_proto::domain::{PageArgs, Timestamp};
use opof_proto::wire;
use proptest::prelude::*;

const T0: u64 = 1_750_000_000_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    Add(Vec<Candidate>),
    Get(u64),
    Delete(u64),
    Page(PageArgs),
    Closed(u32),
    /// Milliseconds.
    Advance(u64),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(arb_candidate(), 0..7).prop_map(Op::Add),
        2 => (0u64..12).prop_map(Op::Get),
        2 => (0u64..12).prop_map(Op::Delete),
        2 => (0u32..4, 0u32..4, 0u64..12)
            .prop_map(|(page_size, page, start_session)| Op::Page(PageArgs { page_size, page, start_session, follow: false })),
        2 => (0u32..4).prop_map(Op::Closed),
        3 => (0u64..3000).prop_map(Op::Advance),
    ]
}

/// The wire form of a candidate: invalid ones carry protocol 1.
fn request(c: &Candidate) -> wire::SessionRequest {
    match c {
        Candidate::Valid(s) => s.into(),
        Candidate::Invalid(id) => wire::SessionRequest { session_id: *id, protocol_id: 1, ..Default::default() },
    }
}

async fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let cfg = TableConfig {
        capacity: 5,
        max_cache_timeout: 4,
        tcp_timeout: 2,
        udp_timeout: 3,
        closed_queue_capacity: 4,
        max_page: 3,
    };
    let clock = Arc::new(ManualClock::new(Timestamp(T0)));
    let device = Device::new(cfg.clone(), clock.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(control::serve(device.clone(), listener, ServeOptions::default(), async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut model = Model::new(cfg, Timestamp(T0));
    for (i, op) in ops.into_iter().enumerate() {
        let mut c = SessionTableClient::new(channel.clone(), if i % 2 == 0 { Flavour::V1 } else { Flavour::V2 });
        let now = model.now;
        match op {
            Op::Add(reqs) if reqs.len() > model.cfg.capacity => {
                // The wire layer's own rule: a stream longer than the table can ever hold is
                // refused whole, before the table sees it.
                let wire_reqs: Vec<_> = reqs.iter().map(request).collect();
                let got = c.add_session(tokio_stream::iter(wire_reqs)).await.unwrap_err();
                prop_assert_eq!(got.code(), tonic::Code::ResourceExhausted);
            }
            Op::Add(reqs) => {
                let wire_reqs: Vec<_> = reqs.iter().map(request).collect();
                let got = c.add_session(tokio_stream::iter(wire_reqs)).await.unwrap().into_inner();
                let want: wire::AddSessionResponse = (&model.add(&reqs, now)).into();
                prop_assert_eq!(got, want);
            }
            Op::Get(id) => {
                let got = c.get_session(wire::SessionId { session_id: id }).await.unwrap().into_inner();
                let want = model.get(id, now).map_or_else(|| nonexistent_response(id), |r| (&r).into());
                prop_assert_eq!(got, want);
            }
            Op::Delete(id) => {
                let got = c.delete_session(wire::SessionId { session_id: id }).await.unwrap().into_inner();
                let want = model.delete(id, now).map_or_else(|| nonexistent_response(id), |r| (&r).into());
                prop_assert_eq!(got, want);
            }
            Op::Page(a) => {
                let got = c.get_all_sessions(wire::SessionRequestArgs::from(&a)).await.unwrap().into_inner();
                let want: wire::SessionResponses = (&model.page(&a, now)).into();
                prop_assert_eq!(got, want);
            }
            Op::Closed(page_size) => {
                let args = wire::SessionRequestArgs { page_size, ..Default::default() };
                let mut s = c.get_closed_sessions(args).await.unwrap().into_inner();
                let mut got = Vec::new();
                while let Some(r) = s.message().await.unwrap() {
                    got.push(r);
                }
                let max = if page_size == 0 { usize::MAX } else { page_size as usize };
                let want: Vec<wire::SessionResponse> = model.take_closed(max, now).iter().map(Into::into).collect();
                prop_assert_eq!(got, want);
            }
            Op::Advance(ms) => {
                clock.advance_nanos(ms * 1_000_000);
                device.advance();
                model.advance(now + ms * 1_000_000);
            }
        }
        prop_assert_eq!(device.stats().sessions, model.sessions.len());
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn the_device_over_grpc_agrees_with_the_model(ops in proptest::collection::vec(arb_op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(check(ops))?;
    }
}
