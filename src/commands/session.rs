//! `opof session`: look at (and delete) sessions of any SessionTable endpoint, any flavour, from
//! the shell: a table for people, `--json` (one object per session, one per line) for scripts.

use anyhow::Context;
use clap::{Args, Subcommand};
use opof_proto::convert::ResponseError;
use opof_proto::domain::{CloseCode, SessionRecord, SessionState};
use opof_proto::wire;
use tokio_stream::StreamExt;

#[derive(Args)]
pub(crate) struct SessionArgs {
    #[command(flatten)]
    target: opof_benches::load::Target,
    /// Print JSON (one object per line) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: SessionAction,
}

#[derive(Subcommand)]
enum SessionAction {
    /// One session by id (getSession).
    Get {
        /// The session id.
        id: u64,
    },
    /// Every session the device holds, in pages (getAllSessions).
    List {
        /// Start from this session id.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Sessions per page asked of the device.
        #[arg(long, default_value_t = 1000)]
        page_size: u32,
        /// Stop after this many sessions (0: all).
        #[arg(long, default_value_t = 0)]
        limit: u64,
    },
    /// Closed sessions the device queued (getClosedSessions). Without --follow the records are
    /// shown and stay queued (this command does not come back for more, which is what confirms
    /// a delivery), so the VNF still gets them; with --follow each segment read is confirmed
    /// by the next, so the records shown are taken from other readers.
    Closed {
        /// Keep the stream open and print records as sessions close, until Ctrl-C (the
        /// project's `follow` extension; a device without it ends the stream as usual).
        #[arg(long)]
        follow: bool,
        /// Records per stream asked of the device (0: all queued).
        #[arg(long, default_value_t = 0)]
        page_size: u32,
    },
    /// Delete one session by id (deleteSession); prints its final record.
    Delete {
        /// The session id.
        id: u64,
    },
}

fn state_name(s: SessionState) -> &'static str {
    match s {
        SessionState::Established => "established",
        SessionState::Closing1 => "closing_1",
        SessionState::Closing2 => "closing_2",
        SessionState::Closed => "closed",
    }
}

fn close_name(c: CloseCode) -> &'static str {
    match c {
        CloseCode::NotClosed => "-",
        CloseCode::FinAck => "finack",
        CloseCode::Rst => "rst",
        CloseCode::Timeout => "timeout",
    }
}

fn json(r: &SessionRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "state": state_name(r.state),
        "close_code": close_name(r.close_code),
        "in_packets": r.counters.in_packets,
        "out_packets": r.counters.out_packets,
        "in_bytes": r.counters.in_bytes,
        "out_bytes": r.counters.out_bytes,
        "start_ns": r.start.nanos(),
        "end_ns": r.end.map(|e| e.nanos()),
    })
}

const HEADER: &str = "ID                    STATE        CLOSE    IN_PKTS    OUT_PKTS   IN_BYTES       OUT_BYTES";

fn row(r: &SessionRecord) -> String {
    format!(
        "{:<21} {:<12} {:<8} {:<10} {:<10} {:<14} {}",
        r.id,
        state_name(r.state),
        close_name(r.close_code),
        r.counters.in_packets,
        r.counters.out_packets,
        r.counters.in_bytes,
        r.counters.out_bytes
    )
}

/// Prints records as they come: JSON lines, or a table whose header comes first.
struct Printer {
    json: bool,
    headed: bool,
    count: u64,
}

impl Printer {
    fn print(&mut self, r: &wire::SessionResponse) -> anyhow::Result<()> {
        let rec =
            SessionRecord::try_from(r).map_err(|e: ResponseError| anyhow::anyhow!("session {}: {e}", r.session_id))?;
        if self.json {
            println!("{}", json(&rec));
        } else {
            if !self.headed {
                println!("{HEADER}");
                self.headed = true;
            }
            println!("{}", row(&rec));
        }
        self.count += 1;
        Ok(())
    }
}

pub(crate) async fn run(a: SessionArgs) -> anyhow::Result<()> {
    let channel = a.target.connect().await?;
    let flavour = a.target.flavour(&channel).await?;
    let mut client = opof_proto::client::SessionTableClient::new(channel, flavour);
    let endpoint = &a.target.endpoint;
    let mut out = Printer { json: a.json, headed: false, count: 0 };
    match a.action {
        SessionAction::Get { id } => {
            let r = client.get_session(wire::SessionId { session_id: id }).await;
            out.print(&found(r.with_context(|| format!("getSession {id} on {endpoint}"))?.into_inner(), id)?)?;
        }
        SessionAction::Delete { id } => {
            let r = client.delete_session(wire::SessionId { session_id: id }).await;
            out.print(&found(r.with_context(|| format!("deleteSession {id} on {endpoint}"))?.into_inner(), id)?)?;
        }
        SessionAction::List { from, page_size, limit } => {
            let mut start = from;
            loop {
                let args = wire::SessionRequestArgs { page_size, start_session: start, ..Default::default() };
                let page = client
                    .get_all_sessions(args)
                    .await
                    .with_context(|| format!("getAllSessions from {start} on {endpoint}"))?
                    .into_inner();
                for r in &page.session_info {
                    if limit > 0 && out.count >= limit {
                        return Ok(());
                    }
                    out.print(r)?;
                }
                // The next page starts after the last id this one held; 0 means nothing is left.
                if page.nextkey == 0 || page.session_info.is_empty() || page.nextkey <= start {
                    break;
                }
                start = page.nextkey;
            }
            if out.count == 0 && !a.json {
                eprintln!("no sessions");
            }
        }
        SessionAction::Closed { follow, page_size } => {
            let args = wire::SessionRequestArgs { page_size, follow, ..Default::default() };
            let mut stream = client
                .get_closed_sessions(args)
                .await
                .with_context(|| format!("getClosedSessions on {endpoint}"))?
                .into_inner();
            loop {
                tokio::select! {
                    next = stream.next() => match next {
                        Some(r) => out.print(&r.with_context(|| format!("getClosedSessions on {endpoint}"))?)?,
                        None => break,
                    },
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
            if out.count == 0 && !a.json {
                eprintln!("no closed sessions queued");
            }
        }
    }
    Ok(())
}

/// The answer about session `id`, or the refusal in words.
fn found(r: wire::SessionResponse, id: u64) -> anyhow::Result<wire::SessionResponse> {
    if r.request_status != wire::RequestStatus::Accepted as i32 {
        anyhow::bail!("session {id}: {} (requestStatus {})", status_text(r.request_status), r.request_status);
    }
    Ok(r)
}

fn status_text(s: i32) -> &'static str {
    match wire::RequestStatus::try_from(s) {
        Ok(wire::RequestStatus::RejectedSessionNonexistent) => "no such session",
        Ok(wire::RequestStatus::Rejected) => "rejected",
        Ok(wire::RequestStatus::RejectedSessionTableFull) => "table full",
        Ok(wire::RequestStatus::RejectedSessionAlreadyExists) => "already exists",
        Ok(wire::RequestStatus::RejectedInternalError) => "internal error",
        _ => "not accepted",
    }
}
