//! Durable storage: the database behind keys, accounts, admins and usage records — an embedded
//! SQLite file by default, or PostgreSQL when several instances share one database.
//!
//! *Architecture Invariant*: nothing on the proxy path awaits this crate. Keys and accounts are
//! read into in-memory snapshots (see `relay-core::snapshot`); usage is handed to the
//! [`UsageWriter`] through a channel and written in batches.
//!
//! Every mutation of `relay_keys` or `accounts` bumps the single `revision` row and writes a row
//! of the change feed through triggers, so a running server notices a change made by any process
//! (the CLI, another instance) by reading one integer, and reads only what changed; on
//! PostgreSQL the trigger also sends a notification.

mod error;
mod records;
mod schema;
mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod usage_writer;

pub use error::StoreError;
pub use records::{
    AccountEvent, AccountRow, AdminRow, KeyMeta, KeyRow, KeySpend, NewAccount, NewKey, SealedField,
    SealedValue, UsageFilter, UsageRecord, UsageTotals,
};
pub use store::{
    redact_url, Backend, Change, ChangedEntity, CopyReport, Rows, Store, StoreStats, COPIED_TABLES,
    OWN_TABLES,
};
pub use usage_writer::{UsageSink, UsageWriter, UsageWriterHandle};
