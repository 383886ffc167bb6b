//! Usage records: batched inserts, totals, and the sums that seed the limits at start.

use sqlx::{QueryBuilder, Row};

use super::{on_db, to_i64, to_u64, Store};
use crate::records::{KeySpend, UsageFilter, UsageRecord, UsageTotals};
use crate::StoreError;

/// Rows per multi-row usage insert (24 parameters each, well under either backend's limit).
const USAGE_ROWS_PER_STATEMENT: usize = 32;

/// A multi-row insert of these records into a `QueryBuilder` of the backend in scope; its SQL
/// text depends only on how many there are.
macro_rules! usage_insert {
    ($records:expr) => {{
        let mut builder = QueryBuilder::new(
            "INSERT INTO usage_records (request_id, created_at_ms, key_id, account_id, platform,
             endpoint, model, upstream_model, stream, input_tokens, output_tokens,
             cache_creation_5m_tokens, cache_creation_1h_tokens, cache_read_tokens,
             reasoning_tokens, cost_nano_usd, charged_nano_usd, status, outcome, error_kind,
             attempts, latency_ms, ttfb_ms, user_agent) ",
        );
        builder.push_values($records, |mut row, record: &UsageRecord| {
            row.push_bind(&record.request_id)
                .push_bind(record.created_at_ms)
                .push_bind(&record.key_id)
                .push_bind(&record.account_id)
                .push_bind(&record.platform)
                .push_bind(&record.endpoint)
                .push_bind(&record.model)
                .push_bind(&record.upstream_model)
                .push_bind(record.stream)
                .push_bind(to_i64(record.usage.input_tokens))
                .push_bind(to_i64(record.usage.output_tokens))
                .push_bind(to_i64(record.usage.cache_creation_5m_tokens))
                .push_bind(to_i64(record.usage.cache_creation_1h_tokens))
                .push_bind(to_i64(record.usage.cache_read_tokens))
                .push_bind(to_i64(record.usage.reasoning_tokens))
                .push_bind(record.cost_nano_usd)
                .push_bind(record.charged_nano_usd)
                .push_bind(i64::from(record.status))
                .push_bind(&record.outcome)
                .push_bind(&record.error_kind)
                .push_bind(i64::from(record.attempts))
                .push_bind(record.latency_ms)
                .push_bind(record.ttfb_ms)
                .push_bind(&record.user_agent);
        });
        builder
    }};
}

/// Rows per PostgreSQL usage insert (the usage writer sends at most 512).
const POSTGRES_ROWS_PER_STATEMENT: usize = 1024;

/// The PostgreSQL usage insert: every column an array, in [`bind_usage_columns`]'s order.
const POSTGRES_USAGE_INSERT: &str = "INSERT INTO usage_records (request_id, created_at_ms,
     key_id, account_id, platform, endpoint, model, upstream_model, stream, input_tokens,
     output_tokens, cache_creation_5m_tokens, cache_creation_1h_tokens, cache_read_tokens,
     reasoning_tokens, cost_nano_usd, charged_nano_usd, status, outcome, error_kind, attempts,
     latency_ms, ttfb_ms, user_agent)
     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[],
     $6::text[], $7::text[], $8::text[], $9::bool[], $10::int8[], $11::int8[], $12::int8[],
     $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::int8[], $18::int8[], $19::text[],
     $20::text[], $21::int8[], $22::int8[], $23::int8[], $24::text[])";

/// Binds each column of `records` as one array, in [`POSTGRES_USAGE_INSERT`]'s order.
fn bind_usage_columns<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    records: &'q [UsageRecord],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn column<'q, T>(records: &'q [UsageRecord], value: impl Fn(&'q UsageRecord) -> T) -> Vec<T> {
        records.iter().map(value).collect()
    }
    query
        .bind(column(records, |record| record.request_id.as_str()))
        .bind(column(records, |record| record.created_at_ms))
        .bind(column(records, |record| record.key_id.as_str()))
        .bind(column(records, |record| record.account_id.as_deref()))
        .bind(column(records, |record| record.platform.as_str()))
        .bind(column(records, |record| record.endpoint.as_str()))
        .bind(column(records, |record| record.model.as_str()))
        .bind(column(records, |record| record.upstream_model.as_deref()))
        .bind(column(records, |record| record.stream))
        .bind(column(records, |record| to_i64(record.usage.input_tokens)))
        .bind(column(records, |record| to_i64(record.usage.output_tokens)))
        .bind(column(records, |record| {
            to_i64(record.usage.cache_creation_5m_tokens)
        }))
        .bind(column(records, |record| {
            to_i64(record.usage.cache_creation_1h_tokens)
        }))
        .bind(column(records, |record| {
            to_i64(record.usage.cache_read_tokens)
        }))
        .bind(column(records, |record| {
            to_i64(record.usage.reasoning_tokens)
        }))
        .bind(column(records, |record| record.cost_nano_usd))
        .bind(column(records, |record| record.charged_nano_usd))
        .bind(column(records, |record| i64::from(record.status)))
        .bind(column(records, |record| record.outcome.as_str()))
        .bind(column(records, |record| record.error_kind.as_deref()))
        .bind(column(records, |record| i64::from(record.attempts)))
        .bind(column(records, |record| record.latency_ms))
        .bind(column(records, |record| record.ttfb_ms))
        .bind(column(records, |record| record.user_agent.as_deref()))
}

impl Store {
    /// Inserts usage records in one transaction.
    ///
    /// SQLite: rows go in through exactly two statement shapes, a
    /// [`USAGE_ROWS_PER_STATEMENT`]-row insert and a one-row insert, so both stay prepared in
    /// the connection's statement cache. (A statement per batch size would be parsed anew for
    /// every batch, or, if cached, hold a large prepared program per size: that grew the process
    /// by ~100 MiB under load.) PostgreSQL: one statement for any number of rows, each column
    /// bound as an array and unnested — one round trip and one prepared statement per batch,
    /// where the two shapes cost a statement per leftover row.
    pub async fn insert_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        self.timed(async {
            match &self.db {
                super::Db::Sqlite(pool) => {
                    let mut tx = pool.begin().await?;
                    let mut chunks = records.chunks_exact(USAGE_ROWS_PER_STATEMENT);
                    for chunk in chunks.by_ref() {
                        usage_insert!(chunk).build().execute(&mut *tx).await?;
                    }
                    for record in chunks.remainder() {
                        usage_insert!(std::slice::from_ref(record))
                            .build()
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                }
                super::Db::Postgres(pool) => {
                    let mut tx = pool.begin().await?;
                    for chunk in records.chunks(POSTGRES_ROWS_PER_STATEMENT) {
                        bind_usage_columns(sqlx::query(POSTGRES_USAGE_INSERT), chunk)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Totals over the usage records the filter selects.
    pub async fn usage_totals(&self, filter: &UsageFilter) -> Result<UsageTotals, StoreError> {
        on_db!(self, |pool, sql| {
            let mut builder = QueryBuilder::new(format!(
                "SELECT COUNT(*) AS requests,
                        {} AS input_tokens,
                        {} AS output_tokens,
                        {} AS cache_5m,
                        {} AS cache_1h,
                        {} AS cache_read,
                        {} AS cost,
                        {} AS unpriced,
                        {} AS partial,
                        {} AS failed
                 FROM usage_records WHERE 1 = 1",
                sql.safe_sum(&sql.tokens("input_tokens")),
                sql.safe_sum(&sql.tokens("output_tokens")),
                sql.safe_sum(&sql.tokens("cache_creation_5m_tokens")),
                sql.safe_sum(&sql.tokens("cache_creation_1h_tokens")),
                sql.safe_sum(&sql.tokens("cache_read_tokens")),
                sql.safe_sum(&sql.row_cost()),
                count_where("cost_nano_usd IS NULL"),
                count_where("outcome = 'partial'"),
                count_where("outcome NOT IN ('ok', 'partial')"),
            ));
            if let Some(key_id) = &filter.key_id {
                builder.push(" AND key_id = ").push_bind(key_id);
            }
            if let Some(since_ms) = filter.since_ms {
                builder.push(" AND created_at_ms >= ").push_bind(since_ms);
            }
            let row = builder.build().fetch_one(pool).await?;
            let cache_5m: i64 = row.try_get("cache_5m")?;
            let cache_1h: i64 = row.try_get("cache_1h")?;
            Ok(UsageTotals {
                requests: row.try_get("requests")?,
                input_tokens: row.try_get("input_tokens")?,
                output_tokens: row.try_get("output_tokens")?,
                cache_creation_input_tokens: cache_5m.saturating_add(cache_1h),
                cache_creation_5m_input_tokens: cache_5m,
                cache_creation_1h_input_tokens: cache_1h,
                cache_read_input_tokens: row.try_get("cache_read")?,
                cost_nano_usd: row.try_get("cost")?,
                unpriced_requests: row.try_get("unpriced")?,
                partial_requests: row.try_get("partial")?,
                failed_requests: row.try_get("failed")?,
            })
        })
    }

    /// The most recent usage records, newest first (for tests and the CLI's detail view).
    pub async fn recent_usage(
        &self,
        filter: &UsageFilter,
        limit: i64,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        on_db!(self, |pool, sql| {
            let mut builder = QueryBuilder::new(
                "SELECT request_id, created_at_ms, key_id, account_id, platform, endpoint, model,
                        upstream_model, stream, input_tokens, output_tokens,
                        cache_creation_5m_tokens, cache_creation_1h_tokens, cache_read_tokens,
                        reasoning_tokens, cost_nano_usd, charged_nano_usd, status, outcome,
                        error_kind, attempts, latency_ms, ttfb_ms, user_agent
                 FROM usage_records WHERE 1 = 1",
            );
            if let Some(key_id) = &filter.key_id {
                builder.push(" AND key_id = ").push_bind(key_id);
            }
            if let Some(since_ms) = filter.since_ms {
                builder.push(" AND created_at_ms >= ").push_bind(since_ms);
            }
            builder.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
            let rows = builder.build().fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    Ok(UsageRecord {
                        request_id: row.try_get("request_id")?,
                        created_at_ms: row.try_get("created_at_ms")?,
                        key_id: row.try_get("key_id")?,
                        account_id: row.try_get("account_id")?,
                        platform: row.try_get("platform")?,
                        endpoint: row.try_get("endpoint")?,
                        model: row.try_get("model")?,
                        upstream_model: row.try_get("upstream_model")?,
                        stream: row.try_get("stream")?,
                        usage: relay_protocol::Usage {
                            input_tokens: to_u64(row.try_get("input_tokens")?),
                            output_tokens: to_u64(row.try_get("output_tokens")?),
                            cache_creation_5m_tokens: to_u64(
                                row.try_get("cache_creation_5m_tokens")?,
                            ),
                            cache_creation_1h_tokens: to_u64(
                                row.try_get("cache_creation_1h_tokens")?,
                            ),
                            cache_read_tokens: to_u64(row.try_get("cache_read_tokens")?),
                            reasoning_tokens: to_u64(row.try_get("reasoning_tokens")?),
                        },
                        cost_nano_usd: row.try_get("cost_nano_usd")?,
                        charged_nano_usd: row.try_get("charged_nano_usd")?,
                        status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
                        outcome: row.try_get("outcome")?,
                        error_kind: row.try_get("error_kind")?,
                        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                        latency_ms: row.try_get("latency_ms")?,
                        ttfb_ms: row.try_get("ttfb_ms")?,
                        user_agent: row.try_get("user_agent")?,
                    })
                })
                .collect()
        })
    }

    /// Each account's cost since `since_ms`.
    pub async fn account_costs_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        on_db!(self, |pool, sql| {
            let query = format!(
                "SELECT account_id, {} AS cost FROM usage_records
                 WHERE created_at_ms >= $1 AND account_id IS NOT NULL GROUP BY account_id",
                sql.safe_sum(&sql.row_cost())
            );
            let rows = sqlx::query(&query).bind(since_ms).fetch_all(pool).await?;
            rows.iter()
                .map(|row| Ok((row.try_get("account_id")?, row.try_get("cost")?)))
                .collect()
        })
    }

    /// Every key's lifetime spend and first use.
    pub async fn key_spend(&self, key_id: Option<&str>) -> Result<Vec<KeySpend>, StoreError> {
        on_db!(self, |pool, sql| {
            let query = format!(
                "SELECT key_id, {} AS total_cost, {} AS total_tokens,
                        MIN(created_at_ms) AS first_used
                 FROM usage_records WHERE (CAST($1 AS TEXT) IS NULL OR key_id = $1)
                 GROUP BY key_id",
                sql.safe_sum(&sql.row_charged()),
                sql.safe_sum(&sql.row_tokens())
            );
            let rows = sqlx::query(&query).bind(key_id).fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    Ok(KeySpend {
                        key_id: row.try_get("key_id")?,
                        total_cost_nano_usd: row.try_get("total_cost")?,
                        total_tokens: row.try_get("total_tokens")?,
                        first_used_ms: row.try_get("first_used")?,
                    })
                })
                .collect()
        })
    }

    /// `(key_id, at_ms, tokens, cost, model)` of every request since `since_ms`, oldest first:
    /// the history the calendar limits and sliding windows need after a restart.
    pub async fn recent_spend(
        &self,
        since_ms: i64,
        key_id: Option<&str>,
    ) -> Result<Vec<(String, i64, i64, i64, String)>, StoreError> {
        on_db!(self, |pool, sql| {
            let query = format!(
                "SELECT key_id, created_at_ms, {} AS tokens, {} AS cost,
                        COALESCE(upstream_model, model) AS model
                 FROM usage_records
                 WHERE created_at_ms >= $1 AND (CAST($2 AS TEXT) IS NULL OR key_id = $2)
                 ORDER BY created_at_ms",
                sql.row_tokens(),
                sql.row_charged()
            );
            let rows = sqlx::query(&query)
                .bind(since_ms)
                .bind(key_id)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("key_id")?,
                        row.try_get("created_at_ms")?,
                        row.try_get("tokens")?,
                        row.try_get("cost")?,
                        row.try_get("model")?,
                    ))
                })
                .collect()
        })
    }
}

/// How many rows meet `condition`, as an integer on both backends.
fn count_where(condition: &str) -> String {
    format!("COALESCE(SUM(CASE WHEN {condition} THEN 1 ELSE 0 END), 0)")
}
