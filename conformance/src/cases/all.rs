//! ALL: getAllSessions — order, pageSize 0, paging, nextkey, the end.

use opof_proto::wire;

use super::{case, Case};
use crate::ctx::Ctx;
use crate::verdict::Finding;
use crate::{ensure, ensure_eq, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "ALL-1.1",
            "ALL-1",
            "Ascending ids from startSession",
            "Add ten sessions with consecutive ids, in shuffled order; getAllSessions from the fourth, pageSize 0.",
            "Ids ascend; the first is the fourth id; the fourth to the tenth all appear, none of the first three.",
            ascending
        ),
        case!(
            "ALL-2.1",
            "ALL-2",
            "pageSize 0 returns every session",
            "Add 100 sessions; getAllSessions from the first, pageSize 0.",
            "All 100 in the response.",
            no_paging
        ),
        case!(
            "ALL-3.1",
            "ALL-3",
            "pageSize and page select a page",
            "Add ten sessions with consecutive ids; getAllSessions from the first with pageSize 3 and page 1, 2 \
             and 4.",
            "Page 1: ids 1-3; page 2: ids 4-6; page 4 starts with id 10; never more than 3 sessions.",
            paging
        ),
        case!(
            "ALL-4.1",
            "ALL-4",
            "Walking by nextkey visits every session once",
            "Add ten sessions with consecutive ids; walk getAllSessions from the first with pageSize 4, \
             startSession = nextkey, until nextkey is 0.",
            "Each of the ten seen exactly once; each nextkey is above every id returned before it.",
            walk
        ),
        case!(
            "ALL-5.1",
            "ALL-5",
            "Past the last session: empty, nextkey 0",
            "Add a session; getAllSessions from startSession 2^64 - 1 with pageSize 0, then with pageSize 5.",
            "No session and nextkey 0 both times.",
            past_the_end
        ),
    ]
}

/// Adds `n` sessions with consecutive ids (sent in a shuffled order); returns the ids, sorted.
async fn consecutive(cx: &Ctx, n: usize) -> Result<Vec<u64>, Finding> {
    let mut reqs = cx.flows(n);
    let ids: Vec<u64> = reqs.iter().map(|r| r.session_id).collect();
    // A fixed shuffle: reverse the halves and interleave them.
    let back = reqs.split_off(n / 2);
    let mut shuffled = Vec::with_capacity(n);
    let (mut a, mut b) = (reqs.into_iter().rev(), back.into_iter().rev());
    loop {
        match (b.next(), a.next()) {
            (None, None) => break,
            (x, y) => shuffled.extend(x.into_iter().chain(y)),
        }
    }
    cx.setup_add(shuffled).await?;
    Ok(ids)
}

fn ids_of(p: &wire::SessionResponses) -> Vec<u64> {
    p.session_info.iter().map(|r| r.session_id).collect()
}

async fn ascending(cx: Ctx) -> Result<(), Finding> {
    let ids = consecutive(&cx, 10).await?;
    let p = cx.page(wire::SessionRequestArgs { page_size: 0, page: 0, start_session: ids[3], follow: false }).await?;
    let got = ids_of(&p);
    ensure!(got.windows(2).all(|w| w[0] < w[1]), "ids do not ascend: {:?}", &got[..got.len().min(20)]);
    ensure_eq!(got.first().copied(), Some(ids[3]), "first id from startSession {}", ids[3]);
    let ours: Vec<u64> = got.iter().copied().filter(|id| ids.contains(id)).collect();
    ensure_eq!(ours, ids[3..].to_vec(), "the case's sessions from startSession on");
    Ok(())
}

async fn no_paging(cx: Ctx) -> Result<(), Finding> {
    cx.need(100).await?;
    let ids = consecutive(&cx, 100).await?;
    let p = cx.page(wire::SessionRequestArgs { page_size: 0, page: 0, start_session: ids[0], follow: false }).await?;
    let got = ids_of(&p);
    let missing: Vec<u64> = ids.iter().copied().filter(|id| !got.contains(id)).collect();
    ensure!(missing.is_empty(), "pageSize 0 left out {} of 100 sessions (nextkey {})", missing.len(), p.nextkey);
    Ok(())
}

async fn paging(cx: Ctx) -> Result<(), Finding> {
    let ids = consecutive(&cx, 10).await?;
    let page = |page| wire::SessionRequestArgs { page_size: 3, page, start_session: ids[0], follow: false };
    for (n, want) in [(1, &ids[0..3]), (2, &ids[3..6])] {
        let got = ids_of(&cx.page(page(n)).await?);
        ensure_eq!(got, want.to_vec(), "page {n} of pageSize 3");
    }
    let got = ids_of(&cx.page(page(4)).await?);
    ensure!(got.len() <= 3, "page 4 of pageSize 3 holds {} sessions", got.len());
    ensure_eq!(got.first().copied(), Some(ids[9]), "first id of page 4 of pageSize 3");
    Ok(())
}

async fn walk(cx: Ctx) -> Result<(), Finding> {
    let ids = consecutive(&cx, 10).await?;
    let mut seen = Vec::new();
    let mut start = ids[0];
    for _ in 0..1000 {
        let p =
            cx.page(wire::SessionRequestArgs { page_size: 4, page: 0, start_session: start, follow: false }).await?;
        let got = ids_of(&p);
        if let Some(&last) = got.last() {
            ensure!(
                p.nextkey == 0 || p.nextkey > last,
                "nextkey {} is not above the last id returned ({last})",
                p.nextkey
            );
        }
        seen.extend(got.iter().copied().filter(|id| ids.contains(id)));
        if p.nextkey == 0 || seen.last() == ids.last() {
            let twice: Vec<u64> =
                ids.iter().copied().filter(|id| seen.iter().filter(|s| *s == id).count() > 1).collect();
            ensure!(twice.is_empty(), "sessions {twice:?} were returned twice by the walk");
            ensure_eq!(seen, ids, "sessions visited by the walk");
            return Ok(());
        }
        start = p.nextkey;
    }
    fail!("the nextkey walk did not end after 1000 pages")
}

async fn past_the_end(cx: Ctx) -> Result<(), Finding> {
    // A session below the start: a device that ignores startSession shows it.
    cx.setup_add(vec![cx.flow_v4()]).await?;
    for page_size in [0, 5] {
        let p =
            cx.page(wire::SessionRequestArgs { page_size, page: 0, start_session: u64::MAX, follow: false }).await?;
        ensure!(
            p.session_info.is_empty(),
            "pageSize {page_size}: {} sessions from startSession 2^64-1",
            p.session_info.len()
        );
        ensure_eq!(p.nextkey, 0, "nextkey past the end (pageSize {page_size})");
    }
    Ok(())
}
