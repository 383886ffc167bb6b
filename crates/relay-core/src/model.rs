//! The model taxonomy, in one place: a model id's canonical name (the price table's), its
//! family (what family-scoped limits and cooldowns name), and served-model patterns.

/// The model families a rate limit or a cost limit can be scoped to.
pub const FAMILIES: [&str; 3] = ["opus", "sonnet", "haiku"];

/// Reduces a model id to its table name: lower case, no `[1m]` marker, no `-latest`, no
/// `-YYYYMMDD` snapshot date.
pub fn canonical(model: &str) -> String {
    let mut name = model.trim().to_ascii_lowercase();
    if let Some(stripped) = name.strip_suffix("[1m]") {
        name = stripped.to_owned();
    }
    if let Some(stripped) = name.strip_suffix("-latest") {
        name = stripped.to_owned();
    }
    if let Some((head, tail)) = name.rsplit_once('-') {
        if tail.len() == 8 && tail.bytes().all(|byte| byte.is_ascii_digit()) {
            name = head.to_owned();
        }
    }
    // OpenAI's snapshots: `gpt-4o-2024-08-06`.
    let bytes = name.as_bytes();
    if bytes.len() > 11 {
        let date = &bytes[bytes.len() - 11..];
        let is_date = date[0] == b'-'
            && date[5] == b'-'
            && date[8] == b'-'
            && date
                .iter()
                .enumerate()
                .all(|(index, byte)| matches!(index, 0 | 5 | 8) || byte.is_ascii_digit());
        if is_date {
            name.truncate(name.len() - 11);
        }
    }
    name
}

/// The family of a model id (`claude-opus-4-8-20261101` → `opus`), if it has one.
pub fn family(model: &str) -> Option<&'static str> {
    let canonical = canonical(model);
    FAMILIES
        .into_iter()
        .find(|family| canonical.contains(family))
}

/// Whether `model` matches `pattern`: an exact id (dated snapshots match their family id) or a
/// prefix ending in `*`, case-insensitively.
pub fn matches(pattern: &str, model: &str) -> bool {
    let canonical = canonical(model);
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_suffix('*') {
        Some(prefix) => {
            canonical.starts_with(prefix) || model.to_ascii_lowercase().starts_with(prefix)
        }
        None => canonical == pattern || model.eq_ignore_ascii_case(&pattern),
    }
}
