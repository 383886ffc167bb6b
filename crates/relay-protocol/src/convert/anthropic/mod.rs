//! Conversions whose output is in the Anthropic Messages dialect.

pub mod from_gemini;
pub mod from_openai_chat;
pub mod from_openai_responses;

/// Appends a turn's blocks to the conversation: one of the same role as the last continues it
/// (Anthropic wants turns to alternate), an empty one is left out.
pub(crate) fn push_turn(
    messages: &mut Vec<(&'static str, Vec<serde_json::Value>)>,
    role: &'static str,
    blocks: Vec<serde_json::Value>,
) {
    if blocks.is_empty() {
        return;
    }
    match messages.last_mut() {
        Some((last, last_blocks)) if *last == role => last_blocks.extend(blocks),
        _ => messages.push((role, blocks)),
    }
}

/// An Anthropic request that carries thinking the relay converted from an OpenAI-compatible
/// host (signed [`super::UNSIGNED_THINKING_SIGNATURE`]), without those blocks: Anthropic
/// refuses a thinking block it did not sign, and a conversation may move from such a host to
/// an Anthropic account (failover, or the operator's routing). `None` when there is nothing to
/// strip — the common case, decided by a byte scan without parsing.
pub fn strip_unsigned_thinking(body: &[u8]) -> Option<Vec<u8>> {
    memchr::memmem::find(body, super::UNSIGNED_THINKING_SIGNATURE.as_bytes())?;
    let mut request: serde_json::Value = serde_json::from_slice(body).ok()?;
    let messages = request.get_mut("messages")?.as_array_mut()?;
    for message in messages.iter_mut() {
        if let Some(blocks) = message
            .get_mut("content")
            .and_then(serde_json::Value::as_array_mut)
        {
            blocks.retain(|block| {
                block["type"] != "thinking"
                    || block["signature"] != super::UNSIGNED_THINKING_SIGNATURE
            });
        }
    }
    serde_json::to_vec(&request).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converted_thinking_is_stripped_and_anthropics_own_kept() {
        let body = serde_json::json!({
            "model": "claude-sonnet-4-5",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "from deepseek", "signature": super::super::UNSIGNED_THINKING_SIGNATURE},
                    {"type": "thinking", "thinking": "from claude", "signature": "EqQBCkYIARgC"},
                    {"type": "text", "text": "hello"},
                ]},
                {"role": "user", "content": "again"},
            ],
        });
        let stripped: serde_json::Value =
            serde_json::from_slice(&strip_unsigned_thinking(body.to_string().as_bytes()).unwrap())
                .unwrap();
        let blocks = stripped["messages"][1]["content"].as_array().unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0]["signature"], "EqQBCkYIARgC");
        assert_eq!(blocks[1]["type"], "text");
        assert_eq!(stripped["messages"][2]["content"], "again");
        let clean =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(strip_unsigned_thinking(clean.to_string().as_bytes()), None);
    }
}
