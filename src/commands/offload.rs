//! `opof offload`: one session per flow of a capture, added to any SessionTable endpoint.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

#[derive(Args)]
pub(crate) struct OffloadArgs {
    /// The capture (pcap or pcapng, Ethernet) whose flows to offload.
    capture: PathBuf,
    #[command(flatten)]
    target: opof_benches::load::Target,
    /// drop, forward, mirror:NEXT_HOP or snoop:NEXT_HOP.
    #[arg(long, default_value = "forward", value_parser = parse_action)]
    action: opof_proto::domain::Action,
    /// cacheTimeout of the sessions, seconds (0: the device's default).
    #[arg(long, default_value_t = 0)]
    cache_timeout: u32,
    /// Id of the first session (the others follow).
    #[arg(long, default_value_t = 1)]
    first_id: u64,
    /// Print which id is which flow (`ID PROTO SRC -> DST`, one per line, or JSON lines with
    /// --json) on stdout before the summary.
    #[arg(long)]
    list: bool,
    /// With --list: JSON lines instead of text.
    #[arg(long, requires = "list")]
    json: bool,
}

/// An addSession error status in words.
fn refusal(status: i32) -> &'static str {
    match status {
        1 => "rejected",
        2 => "table full",
        3 => "table unavailable",
        4 => "already exists",
        _ => "unknown status",
    }
}

pub(crate) fn parse_action(s: &str) -> Result<opof_proto::domain::Action, String> {
    use opof_proto::domain::Action;
    let hop = |h: &str| h.parse::<std::net::IpAddr>().map_err(|_| format!("{h:?} is not an IP address"));
    match s.split_once(':') {
        None if s == "drop" => Ok(Action::Drop),
        None if s == "forward" => Ok(Action::Forward),
        Some(("mirror", h)) => Ok(Action::Mirror { next_hop: hop(h)? }),
        Some(("snoop", h)) => Ok(Action::Snoop { next_hop: hop(h)? }),
        _ => Err(format!("{s:?}: an action is drop, forward, mirror:NEXT_HOP or snoop:NEXT_HOP")),
    }
}

pub(crate) async fn offload(a: OffloadArgs) -> anyhow::Result<()> {
    use opof_proto::domain::{FiveTuple, Protocol, SessionSpec};
    use opof_proto::wire;
    let mut flows = opof_traffic::flows::FlowAccount::default();
    for f in opof_traffic::capture::CaptureReader::open(&a.capture)? {
        flows.add(&f?);
    }
    let mut keys: Vec<_> = flows.flows.keys().copied().collect();
    keys.sort();
    let specs: Vec<SessionSpec> = keys
        .iter()
        .zip(a.first_id..)
        .filter_map(|(&(proto, src, sport, dst, dport), id)| {
            let protocol = if proto == 6 { Protocol::Tcp } else { Protocol::Udp };
            let tuple = FiveTuple::new(protocol, src, sport, dst, dport)?;
            Some(SessionSpec { id, tuple, action: a.action, in_lif: 0, out_lif: 0, cache_timeout: a.cache_timeout })
        })
        .collect();
    if a.list {
        for s in &specs {
            if a.json {
                println!("{}", serde_json::json!({"id": s.id, "flow": s.tuple.to_string()}));
            } else {
                println!("{:<20} {}", s.id, s.tuple);
            }
        }
    }
    let flow_of: std::collections::HashMap<u64, String> = specs.iter().map(|s| (s.id, s.tuple.to_string())).collect();
    let requests: Vec<wire::SessionRequest> = specs.iter().map(wire::SessionRequest::from).collect();
    let channel = a.target.connect().await?;
    let mut client = opof_proto::client::SessionTableClient::new(channel.clone(), a.target.flavour(&channel).await?);
    let (mut accepted, mut refused) = (0u64, 0u64);
    let mut reasons: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut told = 0;
    for chunk in requests.chunks(10_000) {
        let r = client
            .add_session(tokio_stream::iter(chunk.to_vec()))
            .await
            .with_context(|| format!("addSession to {}", a.target.endpoint))?
            .into_inner();
        refused += r.response_error.len() as u64;
        for e in &r.response_error {
            let why = refusal(e.error_status);
            *reasons.entry(why).or_default() += 1;
            // The first refusals by name; the rest are in the counts by reason.
            if told < 20 {
                let flow = flow_of.get(&e.session_id).map_or("?", String::as_str);
                eprintln!("session {} ({flow}): {why}", e.session_id);
                told += 1;
            }
        }
        accepted += chunk.len() as u64 - r.response_error.len() as u64;
    }
    println!(
        "{}",
        serde_json::json!({"capture": a.capture, "flows": keys.len(), "other_frames": flows.other,
                           "accepted": accepted, "refused": refused, "refused_by_reason": reasons,
                           "first_id": a.first_id})
    );
    if refused > 0 {
        bail!("{refused} of {} sessions refused", requests.len());
    }
    Ok(())
}
