//! Any bytes as each gRPC request message, through the one conversion layer into the session
//! table: addSession requests (a stream of them), getSession/deleteSession ids and
//! getAllSessions/getClosedSessions arguments. Never a panic; the table's count stays within
//! its capacity and every answer converts back to the wire; the device's own reader of
//! addSession requests (`opof_proto::codec::session_request`) reads each piece as prost does
//! or leaves it to prost.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opof_device::table::{Candidate, SessionTable, TableConfig};
use opof_proto::domain::{PageArgs, SessionSpec, Timestamp};
use opof_proto::wire;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut table =
        SessionTable::new(TableConfig { capacity: 64, closed_queue_capacity: 64, ..TableConfig::default() })
            .expect("config");
    let now = Timestamp::from_secs(1);
    // The input is cut into length-prefixed pieces: each an addSession request, then the
    // last ones read as the other messages.
    let mut pieces = Vec::new();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        pieces.push(&tail[..n]);
        rest = &tail[n..];
    }
    let mut candidates = Vec::new();
    for p in &pieces {
        let decoded = wire::SessionRequest::decode(*p);
        // The device's own reader of addSession requests reads what prost reads, or leaves it.
        if let Some(fast) = opof_proto::codec::session_request(p) {
            assert_eq!(Some(&fast), decoded.as_ref().ok(), "the fast reader and prost differ");
        }
        if let Ok(r) = decoded {
            candidates.push(match SessionSpec::try_from(&r) {
                Ok(spec) => Candidate::Valid(spec),
                Err(_) => Candidate::Invalid(r.session_id),
            });
        }
    }
    let outcome = table.add(&candidates, now);
    let _ = wire::AddSessionResponse::from(&outcome);
    assert!(table.len() <= 64);
    for p in &pieces {
        if let Ok(id) = wire::SessionId::decode(*p) {
            if let Some(r) = table.get(id.session_id, now) {
                let _ = wire::SessionResponse::from(&r);
            }
            let _ = table.delete(id.session_id, now);
        }
        if let Ok(a) = wire::SessionRequestArgs::decode(*p) {
            let page = table.page(&PageArgs::from(&a), now);
            let _ = wire::SessionResponses::from(&page);
            let _ = table.closed().take(a.page_size as usize);
        }
    }
    // Empty again for the next input.
    for c in &candidates {
        let _ = table.delete(c.id(), now);
    }
    let _ = table.closed().take(usize::MAX);
    assert!(table.is_empty(), "sessions left behind: {}", table.len());
});
