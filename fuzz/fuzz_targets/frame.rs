//! Any bytes as a frame on any port: the parser and the decision never panic, and a frame from
//! an external port is either looked up or sent to the VNF with a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opof_device::datapath::{decide, Class, DatapathConfig, PortId};
use opof_device::table::{Candidate, SessionTable, TableConfig};
use opof_proto::domain::{Action, FiveTuple, Protocol, SessionSpec, Timestamp};

/// One table for the whole run (making one per input costs more than the input's work); each
/// input first puts back any of its four sessions an earlier input closed.
static TABLE: std::sync::OnceLock<std::sync::Mutex<SessionTable>> = std::sync::OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&first, frame)) = data.split_first() else { return };
    let mut table = TABLE.get_or_init(|| std::sync::Mutex::new(new_table())).lock().unwrap_or_else(|e| e.into_inner());
    let table = &mut *table;
    let now = Timestamp::from_secs(1);
    table.add(&sessions(), now);
    let port = PortId::ALL[usize::from(first) % PortId::ALL.len()];
    let d = decide(table, &DatapathConfig::default(), port, frame, now);
    if matches!(port, PortId::Ext0 | PortId::Ext1) {
        assert!(!matches!(d.class, Class::FromVnf | Class::AtCollector), "{d:?}");
    }
    if let Some(c) = d.copy {
        assert!(c.len <= frame.len());
    }
    let _ = table.closed().take(usize::MAX);
});

fn new_table() -> SessionTable {
    SessionTable::new(TableConfig { capacity: 16, closed_queue_capacity: 16, ..TableConfig::default() })
        .expect("config")
}

fn sessions() -> Vec<Candidate> {
    // A few sessions the fuzzer can hit: 10.0.0.1:1000+i ⇄ 10.0.0.2:80, UDP and TCP.
    (0..4u16)
        .map(|i| {
            let protocol = if i % 2 == 0 { Protocol::Udp } else { Protocol::Tcp };
            let tuple = FiveTuple::new(protocol, [10, 0, 0, 1].into(), 1000 + i, [10, 0, 0, 2].into(), 80).expect("v4");
            let action =
                [Action::Drop, Action::Forward, Action::Mirror { next_hop: [192, 0, 2, 9].into() }][usize::from(i % 3)];
            Candidate::Valid(SessionSpec { id: u64::from(i), tuple, action, in_lif: 0, out_lif: 0, cache_timeout: 0 })
        })
        .collect()
}
