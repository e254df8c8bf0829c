//! The search log: one row per search served, stats over it.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Select,
};

use super::{now, Result, StoreError};
use crate::search_log::{self, Column, Entity as SearchLog, Model, SearchKind};

/// A search to log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSearch {
    pub kind: SearchKind,
    /// The query text of a text search; for the other kinds a file name or id,
    /// if the caller wants one.
    pub query_text: Option<String>,
    pub result_count: i32,
    pub latency_ms: f64,
}

/// Logs a search (timestamped now) and returns the row.
pub async fn log_search(db: &DatabaseConnection, search: NewSearch) -> Result<Model> {
    if !search.latency_ms.is_finite() || search.latency_ms < 0.0 || search.result_count < 0 {
        return Err(StoreError::InvalidArgument(format!(
            "latency {} ms, {} results",
            search.latency_ms, search.result_count
        )));
    }
    let row = search_log::ActiveModel {
        kind: Set(search.kind),
        query_text: Set(search.query_text),
        result_count: Set(search.result_count),
        latency_ms: Set(search.latency_ms),
        created_at: Set(now()),
        ..Default::default()
    };
    Ok(row.insert(db).await?)
}

/// Counts and latencies of the logged searches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SearchStats {
    pub total: u64,
    pub text: u64,
    pub audio: u64,
    pub similar: u64,
    /// Mean latency; `None` without searches.
    pub mean_latency_ms: Option<f64>,
    /// 95th percentile latency (nearest rank: the ⌈0.95·n⌉-th smallest);
    /// `None` without searches.
    pub p95_latency_ms: Option<f64>,
}

impl SearchStats {
    pub fn count(&self, kind: SearchKind) -> u64 {
        match kind {
            SearchKind::Text => self.text,
            SearchKind::Audio => self.audio,
            SearchKind::Similar => self.similar,
        }
    }
}

/// The 0-based position of the p-th percentile (nearest rank) among `n`
/// sorted values, `n > 0`.
fn nearest_rank_offset(n: u64, p: f64) -> u64 {
    let rank = (p * n as f64).ceil() as u64; // 1-based
    rank.clamp(1, n) - 1
}

/// Stats over the searches logged at or after `since` (all if `None`).
///
/// Four small queries, portable between SQLite and PostgreSQL: counts per
/// kind (GROUP BY), mean (AVG), and p95 as the row at offset ⌈0.95·n⌉−1 of
/// the latencies in order.
pub async fn search_stats(
    db: &DatabaseConnection,
    since: Option<DateTime<Utc>>,
) -> Result<SearchStats> {
    let scope = || -> Select<SearchLog> {
        let q = SearchLog::find();
        match since {
            Some(t) => q.filter(Column::CreatedAt.gte(t)),
            None => q,
        }
    };
    let per_kind: Vec<(SearchKind, i64)> = scope()
        .select_only()
        .column(Column::Kind)
        .column_as(Column::Id.count(), "n")
        .group_by(Column::Kind)
        .into_tuple()
        .all(db)
        .await?;
    let mut stats = SearchStats::default();
    for (kind, n) in per_kind {
        let n = u64::try_from(n).unwrap_or(0);
        stats.total += n;
        match kind {
            SearchKind::Text => stats.text = n,
            SearchKind::Audio => stats.audio = n,
            SearchKind::Similar => stats.similar = n,
        }
    }
    if stats.total == 0 {
        return Ok(stats);
    }
    stats.mean_latency_ms = scope()
        .select_only()
        .column_as(Expr::col(Column::LatencyMs).avg(), "mean")
        .into_tuple::<Option<f64>>()
        .one(db)
        .await?
        .flatten();
    stats.p95_latency_ms = scope()
        .select_only()
        .column(Column::LatencyMs)
        .order_by_asc(Column::LatencyMs)
        .offset(nearest_rank_offset(stats.total, 0.95))
        .limit(1)
        .into_tuple::<f64>()
        .one(db)
        .await?;
    Ok(stats)
}

/// The last `limit` searches, newest first.
pub async fn recent_searches(db: &DatabaseConnection, limit: u64) -> Result<Vec<Model>> {
    Ok(SearchLog::find()
        .order_by_desc(Column::CreatedAt)
        .order_by_desc(Column::Id)
        .limit(std::cmp::min(limit, 1000))
        .all(db)
        .await?)
}

/// How many searches are logged.
pub async fn count_searches(db: &DatabaseConnection) -> Result<u64> {
    Ok(SearchLog::find().count(db).await?)
}

#[cfg(test)]
mod tests {
    use super::nearest_rank_offset;

    #[test]
    fn p95_offsets() {
        assert_eq!(nearest_rank_offset(1, 0.95), 0);
        assert_eq!(nearest_rank_offset(2, 0.95), 1);
        assert_eq!(nearest_rank_offset(20, 0.95), 18); // 19th of 20
        assert_eq!(nearest_rank_offset(100, 0.95), 94); // 95th of 100
        assert_eq!(nearest_rank_offset(101, 0.95), 95); // 96th of 101
    }
}
