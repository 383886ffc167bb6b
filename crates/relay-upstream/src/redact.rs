//! The one way an upstream response body is ever quoted into an error, a log line, an event or
//! an API answer: [`excerpt`], which removes anything token-like first.
//!
//! A body is not ours: a token endpoint answering with an unexpected shape, or an upstream
//! echoing a credential, would otherwise carry secrets into places operators copy from.

use serde_json::Value;

/// Excerpts are at most this many characters.
pub const EXCERPT_CHARS: usize = 200;
/// Only this much of a body is looked at.
const SCANNED_BYTES: usize = 16 * 1024;
/// A run of credential characters this long, with letters and digits, is taken for a secret.
const TOKEN_RUN: usize = 16;
const REDACTED: &str = "[redacted]";

/// JSON keys whose string values are always secret.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "key",
        "authorization",
        "credential",
        "cookie",
        "session",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// A short, redacted excerpt of an upstream body, safe to show and to log.
pub fn excerpt(body: &[u8]) -> String {
    let scanned = &body[..body.len().min(SCANNED_BYTES)];
    let text = match serde_json::from_slice::<Value>(scanned) {
        Ok(mut value) => {
            redact_value(&mut value, false);
            value.to_string()
        }
        Err(_) => redact_runs(&String::from_utf8_lossy(scanned)),
    };
    let mut excerpt: String = text.chars().take(EXCERPT_CHARS).collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        excerpt.push('…');
    }
    excerpt
}

/// A whole JSON error body an upstream wrote, to pass on to a client with anything token-like
/// removed (the message and its advice stay). A body that is not JSON is not passed on at all.
pub fn json_body(body: &[u8]) -> bytes::Bytes {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut value) => {
            redact_value(&mut value, false);
            bytes::Bytes::from(value.to_string())
        }
        Err(_) => bytes::Bytes::new(),
    }
}

fn redact_value(value: &mut Value, secret: bool) {
    match value {
        Value::String(text) if secret => *text = REDACTED.to_owned(),
        Value::String(text) => *text = redact_runs(text),
        Value::Array(items) => {
            for item in items {
                redact_value(item, secret);
            }
        }
        Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                redact_value(field, secret || is_secret_key(key));
            }
        }
        _ => {}
    }
}

fn is_credential_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=')
}

/// Replaces every run of credential characters that looks like a token (long, with letters
/// and digits) by `[redacted]`.
fn redact_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let looks_like_token = run.chars().count() >= TOKEN_RUN
            && run.chars().any(|c| c.is_ascii_digit())
            && run.chars().any(|c| c.is_ascii_alphabetic());
        out.push_str(if looks_like_token { REDACTED } else { run });
        run.clear();
    };
    for c in text.chars() {
        if is_credential_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_survive_an_excerpt() {
        let token_response = br#"{"accessToken":"sk-ant-oat01-AbC123","refresh":"abc","data":{"token_type":"Bearer","client_secret":"x"},"note":"use sk-ant-api03-ZZZZ9999yyyyXXXX please"}"#;
        let shown = excerpt(token_response);
        for secret in ["AbC123", "sk-ant-oat01", "ZZZZ9999", "\"x\""] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("please"));
        let plain =
            excerpt(b"upstream said: bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9.sig and more");
        assert!(!plain.contains("eyJhbGci"), "{plain}");
        assert!(plain.contains("upstream said"));
    }

    #[test]
    fn a_passed_on_error_body_keeps_its_message_but_not_a_credential() {
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"key sk-ant-api03-abcdef0123456789xyz is over its limit"}}"#;
        let passed = String::from_utf8(json_body(body).to_vec()).unwrap();
        assert!(passed.contains("rate_limit_error") && passed.contains("is over its limit"));
        assert!(!passed.contains("abcdef0123456789"), "{passed}");
    }

    #[test]
    fn an_ordinary_error_reads_as_it_was_and_long_bodies_are_cut() {
        let error = br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#;
        let shown = excerpt(error);
        assert!(shown.contains("rate_limit_error"), "{shown}");
        assert!(
            shown.contains("Number of request tokens has exceeded"),
            "{shown}"
        );
        let long = excerpt("word ".repeat(1000).as_bytes());
        assert_eq!(long.chars().count(), EXCERPT_CHARS + 1);
        assert_eq!(excerpt(&[0xff, 0xfe, b'a']).chars().last(), Some('a'));
    }
}
