//! This node's ledger and the replicas it holds, read through the ledger writer.

use fab_client::types as api;

use super::*;

pub(super) async fn ledger_heads(State(st): State<Arc<NodeState>>) -> ApiResult<api::Feeds> {
    let (entries, head) = st.ledger.head().await;
    let replicas = st
        .ledger
        .replica_heads()
        .await
        .map_err(|e| ApiError::new(ErrorKind::LedgerError, e))?;
    let mut own = api::Feed {
        feed: Some(st.key.public().peer_id()),
        own: true,
        size: entries,
        head,
        trusted_size: None,
        trusted_root: None,
        known_size: None,
        lag_entries: None,
        last_entry_ms: None,
        last_entry_age_ms: None,
    };
    // The replication core's view (known sizes, last entry times): no ledger reads per feed.
    let view: std::collections::HashMap<[u8; 32], (u64, Option<u64>)> = st
        .replication
        .borrow()
        .iter()
        .map(|h| (h.feed.to_bytes(), (h.known_size, h.last_time_ms)))
        .collect();
    let now = now_ms();
    let own_last = match entries {
        0 => None,
        n => st
            .ledger
            .range(n - 1, 1)
            .await
            .ok()
            .and_then(|r| r.into_iter().next()),
    };
    own.last_entry_ms = own_last.and_then(|(_, b)| entry_time(&b));
    let mut feeds = vec![own];
    for (key, size, note) in replicas {
        let feed = fab_ledger::PublicKey::from_bytes(&key);
        let cp = feed
            .zip(note)
            .and_then(|(f, n)| fab_ledger::checkpoint::Checkpoint::verify(&n, &f, None).ok());
        let (known, last) = view.get(&key).copied().unwrap_or((size, None));
        let known_size = known.max(size);
        feeds.push(api::Feed {
            feed: feed.map(|f| f.peer_id()),
            own: false,
            size,
            head: None,
            trusted_size: Some(cp.as_ref().map(|c| c.size)),
            trusted_root: Some(cp.as_ref().map(|c| hex::encode(c.root))),
            known_size: Some(known_size),
            lag_entries: Some(known_size - size),
            last_entry_ms: last,
            last_entry_age_ms: Some(last.map(|t| now.saturating_sub(t))),
        });
    }
    Ok(axum::Json(api::Feeds { feeds }))
}

/// The signed time of a stored entry.
pub(super) fn entry_time(bytes: &[u8]) -> Option<u64> {
    SignedEntry::decode_verified(bytes)
        .ok()
        .map(|e| e.body().time_ms)
}

pub(super) async fn entry_at(st: &NodeState, seq: u64) -> Result<Option<SignedEntry>, ApiError> {
    let rows = st
        .ledger
        .range(seq, 1)
        .await
        .map_err(|e| ApiError::new(ErrorKind::LedgerError, e))?;
    match rows.into_iter().next() {
        Some((s, bytes)) if s == seq => decode_stored(s, &bytes).map(Some),
        _ => Ok(None),
    }
}

pub(super) fn decode_stored(seq: u64, bytes: &[u8]) -> Result<SignedEntry, ApiError> {
    SignedEntry::decode_verified(bytes).map_err(|e| {
        ApiError::new(
            ApiCode::LedgerCorrupt,
            format!("stored entry {seq} does not verify: {e}; run `fabnode ledger verify`"),
        )
    })
}

pub(super) async fn ledger_head(State(st): State<Arc<NodeState>>) -> ApiResult<api::LedgerHead> {
    let (entries, head) = st.ledger.head().await;
    Ok(axum::Json(api::LedgerHead {
        feed: st.key.public().peer_id(),
        entries,
        head,
    }))
}

#[derive(Deserialize)]
pub(super) struct RangeQuery {
    #[serde(default)]
    from: u64,
    #[serde(default = "default_limit")]
    limit: usize,
}

pub(super) fn default_limit() -> usize {
    100
}

pub(super) async fn ledger_entries(
    State(st): State<Arc<NodeState>>,
    Query(q): Query<RangeQuery>,
) -> ApiResult<api::EntryPage> {
    if q.limit == 0 || q.limit > READ_ENTRIES_MAX {
        return Err(ApiError::new(
            ApiCode::BadLimit,
            format!("limit must be 1 to {READ_ENTRIES_MAX}"),
        ));
    }
    let rows = st
        .ledger
        .range(q.from, q.limit)
        .await
        .map_err(|e| ApiError::new(ErrorKind::LedgerError, e))?;
    let entries = rows
        .iter()
        .map(|(seq, bytes)| decode_stored(*seq, bytes).map(|e| crate::views::entry(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    let (total, _) = st.ledger.head().await;
    let next = rows.last().map(|(s, _)| s + 1).filter(|n| *n < total);
    Ok(axum::Json(api::EntryPage {
        feed: st.key.public().peer_id(),
        total,
        next,
        entries,
    }))
}

pub(super) async fn ledger_entry(
    State(st): State<Arc<NodeState>>,
    Path(seq): Path<String>,
) -> ApiResult<api::Entry> {
    let seq: u64 = seq
        .parse()
        .map_err(|_| ApiError::new(ApiCode::BadSeq, "seq is a non-negative integer"))?;
    let entry = entry_at(&st, seq)
        .await?
        .ok_or_else(|| ApiError::new(ApiCode::UnknownEntry, format!("no entry {seq}")))?;
    Ok(axum::Json(crate::views::entry(&entry)))
}
