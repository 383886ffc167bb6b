//! The schema of each backend, as migrations applied in order at open. Both backends reach the
//! same tables and columns at the same version (a test compares them); a version is appended to
//! both lists, never edited once shipped.

pub(crate) mod postgres;
pub(crate) mod sqlite;
