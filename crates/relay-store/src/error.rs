//! Errors of the storage layer.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} '{name}' already exists")]
    Conflict { what: &'static str, name: String },
    #[error("the sealed {what} of '{row}' does not open with the current master key")]
    Unsealable { what: &'static str, row: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Refused(String),
    #[error("cannot open database at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: sqlx::Error,
    },
}

impl StoreError {
    /// Maps a unique-constraint violation to [`StoreError::Conflict`].
    pub(crate) fn from_insert(error: sqlx::Error, what: &'static str, name: &str) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict {
                what,
                name: name.to_owned(),
            },
            _ => Self::Database(error),
        }
    }
}
