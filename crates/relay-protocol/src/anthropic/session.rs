//! Which conversation a Messages request belongs to, for sticky routing (prompt caches live per
//! upstream account, so a conversation should stay on one).

use serde::Deserialize;
use serde_json::value::RawValue;

/// The pieces of a request the session identity is read from.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionSource<'a> {
    /// `metadata.user_id`.
    pub user_id: Option<&'a str>,
    /// `system`, as sent.
    pub system: Option<&'a RawValue>,
    /// The first entry of `messages`, as sent.
    pub first_message: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ClaudeCodeUserId<'a> {
    #[serde(borrow)]
    session_id: Option<&'a str>,
}

/// What identifies a conversation, borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionIdentity<'a> {
    /// Claude Code's session id.
    Session(&'a str),
    /// A system prompt with cache-marked content, and the first message.
    Cached {
        system: &'a str,
        first: &'a str,
    },
    System(&'a str),
    First(&'a str),
}

impl SessionIdentity<'_> {
    /// The identity's parts, tagged by kind so that different rungs never collide.
    pub fn parts(&self) -> (&'static str, &str, &str) {
        match *self {
            Self::Session(id) => ("session", id, ""),
            Self::Cached { system, first } => ("cached", system, first),
            Self::System(system) => ("system", system, ""),
            Self::First(first) => ("first", first, ""),
        }
    }
}

/// A stable identity for the conversation, by the first rung that applies:
/// 1. Claude Code's session id from `metadata.user_id` (its JSON form, or the older
///    `user_<hash>_account_<uuid>_session_<uuid>` form);
/// 2. the system prompt with cache-marked content, together with the first message (the part
///    of the prompt a conversation keeps from turn to turn);
/// 3. the system prompt;
/// 4. the first message.
///
/// Returns `None` when the request has none of these (no stickiness). Nothing is copied.
pub fn session_identity<'a>(source: &SessionSource<'a>) -> Option<SessionIdentity<'a>> {
    if let Some(user_id) = source.user_id {
        if let Ok(parsed) = serde_json::from_str::<ClaudeCodeUserId<'a>>(user_id) {
            if let Some(session) = parsed.session_id.filter(|id| !id.is_empty()) {
                return Some(SessionIdentity::Session(session));
            }
        }
        if let Some((_, session)) = user_id.rsplit_once("_session_") {
            if !session.is_empty() {
                return Some(SessionIdentity::Session(session));
            }
        }
    }
    let system = source.system.map(RawValue::get);
    let first = source.first_message.map(RawValue::get);
    match (system, first) {
        (Some(system), Some(first)) if system.contains("cache_control") => {
            Some(SessionIdentity::Cached { system, first })
        }
        (Some(system), _) => Some(SessionIdentity::System(system)),
        (None, Some(first)) => Some(SessionIdentity::First(first)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn claude_code_session_ids_win_in_both_forms() {
        let json_form = r#"{"device_id":"ab","account_uuid":"","session_id":"98879252-0084"}"#;
        let identity = session_identity(&SessionSource {
            user_id: Some(json_form),
            ..SessionSource::default()
        });
        assert_eq!(identity, Some(SessionIdentity::Session("98879252-0084")));
        let old_form = "user_abc123_account__session_5f2e-77";
        let identity = session_identity(&SessionSource {
            user_id: Some(old_form),
            ..SessionSource::default()
        });
        assert_eq!(identity, Some(SessionIdentity::Session("5f2e-77")));
    }

    #[test]
    fn without_a_session_id_the_prompt_identifies_the_conversation() {
        let cached =
            raw(r#"[{"type":"text","text":"be brief","cache_control":{"type":"ephemeral"}}]"#);
        let plain = raw(r#""be brief""#);
        let first = raw(r#"{"role":"user","content":"hi"}"#);
        let with_cache = session_identity(&SessionSource {
            user_id: None,
            system: Some(&cached),
            first_message: Some(&first),
        })
        .unwrap();
        assert!(matches!(with_cache, SessionIdentity::Cached { .. }));
        let system_only = session_identity(&SessionSource {
            user_id: Some("not-a-session"),
            system: Some(&plain),
            first_message: Some(&first),
        })
        .unwrap();
        assert!(matches!(system_only, SessionIdentity::System(_)));
        let first_only = session_identity(&SessionSource {
            first_message: Some(&first),
            ..SessionSource::default()
        })
        .unwrap();
        assert!(matches!(first_only, SessionIdentity::First(_)));
        assert_eq!(session_identity(&SessionSource::default()), None);
    }
}
