//! The model taxonomy, in one place: a model id's canonical name (the price table's), its
//! family (what family-scoped limits and cooldowns name), and served-model patterns.

use std::borrow::Cow;

/// The model families a rate limit or a cost limit can be scoped to.
pub const FAMILIES: [&str; 3] = ["opus", "sonnet", "haiku"];

/// Reduces a model id to its table name: lower case, no `[1m]` marker, no `-latest`, no
/// `-YYYYMMDD` snapshot date. Borrows from `model` unless it has upper-case letters (the ids
/// clients send do not): it runs several times per request.
pub fn canonical(model: &str) -> Cow<'_, str> {
    let trimmed = model.trim();
    if trimmed.bytes().any(|byte| byte.is_ascii_uppercase()) {
        Cow::Owned(strip_markers(&trimmed.to_ascii_lowercase()).to_owned())
    } else {
        Cow::Borrowed(strip_markers(trimmed))
    }
}

/// [`canonical`] of a lower-case id.
fn strip_markers(mut name: &str) -> &str {
    if let Some(stripped) = name.strip_suffix("[1m]") {
        name = stripped;
    }
    if let Some(stripped) = name.strip_suffix("-latest") {
        name = stripped;
    }
    if let Some((head, tail)) = name.rsplit_once('-') {
        if tail.len() == 8 && tail.bytes().all(|byte| byte.is_ascii_digit()) {
            name = head;
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
            name = &name[..name.len() - 11];
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
    let starts_with = |text: &str, prefix: &str| {
        text.len() >= prefix.len()
            && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    };
    match pattern.strip_suffix('*') {
        Some(prefix) => starts_with(&canonical, prefix) || starts_with(model, prefix),
        None => canonical.eq_ignore_ascii_case(pattern) || model.eq_ignore_ascii_case(pattern),
    }
}
