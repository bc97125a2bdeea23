//! Closed records are delivered at least once, never lost: 50,000 records, readers that go away
//! at 20 random points (in the middle of a stream, right after a stream's end, and one that
//! stops reading), then a reader that reads on to the end. Every record reaches some reader;
//! a record is seen twice only if a reader went away holding it, and the device counts those.
//! Real gRPC over loopback; a reader going away drops its connection with whatever its client
//! library had buffered, as a killed process does.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use opof_device::table::TableConfig;
use opof_proto::client::{Flavour, SessionTableClient};
use opof_proto::wire;
use tokio_stream::StreamExt;

const RECORDS: u64 = 50_000;

/// A small deterministic generator (the points are random, the run reproducible).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn args(follow: bool) -> wire::SessionRequestArgs {
    wire::SessionRequestArgs { page_size: 0, page: 0, start_session: 0, follow }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_records_survive_readers_that_go_away() {
    let config = TableConfig { capacity: 65_536, closed_queue_capacity: 65_536, ..TableConfig::default() };
    let dev = TestDevice::start(config, None).await;
    let mut c = dev.client(Flavour::V1).await;
    for lo in (1..=RECORDS).step_by(10_000) {
        let batch: Vec<_> = (lo..lo + 10_000).map(|id| v4(id, id as u32)).collect();
        assert_eq!(add(&mut c, batch).await.request_status, wire::AddSessionStatus::SessionAccepted as i32);
    }
    dev.clock.advance_secs(1_000_000);
    dev.device.advance();
    assert_eq!(dev.device.stats().closed_queued, RECORDS as usize);
    drop(c);

    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut rng = Lcg(0x5eed);
    for reader in 0..20 {
        let mut c = SessionTableClient::new(dev.channel().await, Flavour::V1);
        let follow = reader % 2 == 0;
        let mut s = c.get_closed_sessions(args(follow)).await.unwrap().into_inner();
        match reader % 5 {
            // Stops reading: its stream holds what the window let through, then it goes away.
            4 => tokio::time::sleep(Duration::from_millis(100)).await,
            // Reads a stream to its end, then goes away without asking again.
            3 => {
                while let Some(r) = s.next().await {
                    *seen.entry(r.unwrap().session_id).or_default() += 1;
                }
            }
            // Goes away in the middle, after a random number of records.
            _ => {
                let k = rng.below(4_000);
                for _ in 0..k {
                    // Records held anywhere come back within moments; a wait this long means
                    // some were lost (a hold nobody gives back), not a slow machine.
                    let next = tokio::time::timeout(Duration::from_secs(20), s.next()).await;
                    match next.expect("a closed-records stream waited 20 s while records were held somewhere") {
                        Some(r) => *seen.entry(r.unwrap().session_id).or_default() += 1,
                        None => {
                            // A follow segment ended: the next one, as a follower does.
                            s = c.get_closed_sessions(args(follow)).await.unwrap().into_inner();
                        }
                    }
                }
            }
        }
        drop(s);
        drop(c);
    }

    // A reader that reads on until every record was seen (what the readers above left goes
    // back to the queue as their connections end).
    let mut c = SessionTableClient::new(dev.channel().await, Flavour::V1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (seen.len() as u64) < RECORDS && tokio::time::Instant::now() < deadline {
        let mut s = c.get_closed_sessions(args(false)).await.unwrap().into_inner();
        let mut got = 0;
        while let Some(r) = s.next().await {
            *seen.entry(r.unwrap().session_id).or_default() += 1;
            got += 1;
        }
        if got == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let lost: Vec<u64> = (1..=RECORDS).filter(|id| !seen.contains_key(id)).take(10).collect();
    assert!(lost.is_empty(), "{} records lost, e.g. {lost:?}", RECORDS - seen.len() as u64);
    let duplicates: u64 = seen.values().map(|&n| u64::from(n - 1)).sum();
    let redelivered = dev.device.stats().closed_redelivered;
    eprintln!("{RECORDS} records: 0 lost, {duplicates} seen twice, {redelivered} counted as redelivered by the device");
    assert!(duplicates <= redelivered, "a duplicate the device did not count: {duplicates} > {redelivered}");
    assert!(redelivered > 0, "readers went away holding records: some must have been redelivered");
    drop(c);
    dev.stop().await;
}
