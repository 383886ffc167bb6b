//! A Chat Completions request → a Responses API request, for a Chat client served by a
//! Responses-only account (and, after `openai_chat::from_anthropic::request`, for an Anthropic
//! client: Claude Code on an `openai-responses` account). The answer comes back through
//! `convert::openai_chat::from_openai_responses`.
//!
//! What maps: `system`/`developer` messages → `instructions`; `user` and `assistant` messages
//! (text, images) → message items; `tool_calls` → `function_call` items and `tool` messages →
//! `function_call_output`; function tools, `tool_choice`, `parallel_tool_calls`;
//! `reasoning_effort` → `reasoning.effort`; `response_format` json_schema → `text.format`;
//! `max_completion_tokens`/`max_tokens` → `max_output_tokens`; `temperature`, `top_p`, `stream`,
//! `user`. `store` is sent `false`: the relay's clients did not ask the upstream to keep their
//! conversations. Dropped on purpose: `stop` (the Responses API has none), `stream_options`
//! (Responses streams always end with their usage), `reasoning_content` of earlier assistant
//! turns (OpenAI cannot read another model's reasoning back).

use crate::convert::target_model;
use serde_json::{json, Value};

use crate::convert::{parse_object, to_bytes, ConvertError, Object, RequestOptions};

pub fn request(body: &[u8], options: &RequestOptions) -> Result<Vec<u8>, ConvertError> {
    let source = parse_object(body, "the request body")?;
    if source.get("n").and_then(Value::as_u64).unwrap_or(1) > 1 {
        return Err(ConvertError::new(
            "`n` greater than 1 cannot be expressed for a Responses upstream",
        ));
    }
    let mut out = Object::new();
    out.insert("model".into(), target_model(&source, options)?.into());
    let Some(Value::Array(turns)) = source.get("messages") else {
        return Err(ConvertError::new("`messages` must be an array"));
    };
    let mut instructions = Vec::new();
    let mut input = Vec::new();
    for (position, turn) in turns.iter().enumerate() {
        let content = turn.get("content").unwrap_or(&Value::Null);
        match turn.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => instructions.push(text_of(content, position)?),
            Some("user") => input.push(json!({
                "type": "message", "role": "user", "content": user_parts(content, position)?,
            })),
            Some("assistant") => {
                let text = match content {
                    Value::Null => String::new(),
                    other => text_of(other, position)?,
                };
                if !text.is_empty() {
                    input.push(json!({"type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": text}]}));
                }
                for call in turn
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let function = &call["function"];
                    input.push(json!({
                        "type": "function_call",
                        "call_id": call.get("id").and_then(Value::as_str).unwrap_or(""),
                        "name": function.get("name").and_then(Value::as_str).unwrap_or(""),
                        "arguments": function.get("arguments").and_then(Value::as_str).unwrap_or("{}"),
                    }));
                }
            }
            Some("tool") => {
                let call_id = turn
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ConvertError::new(format!("messages[{position}].tool_call_id is missing"))
                    })?;
                input.push(json!({"type": "function_call_output", "call_id": call_id,
                    "output": text_of(content, position)?}));
            }
            _ => {
                return Err(ConvertError::new(format!(
                    "messages[{position}].role must be system, developer, user, assistant or tool"
                )))
            }
        }
    }
    let instructions: Vec<String> = instructions
        .into_iter()
        .filter(|text| !text.is_empty())
        .collect();
    if !instructions.is_empty() {
        out.insert("instructions".into(), instructions.join("\n\n").into());
    }
    out.insert("input".into(), Value::Array(input));
    if let Some(limit) = source
        .get("max_completion_tokens")
        .or_else(|| source.get("max_tokens"))
        .and_then(Value::as_u64)
    {
        out.insert("max_output_tokens".into(), limit.into());
    }
    for knob in ["temperature", "top_p"] {
        if let Some(value) = source.get(knob).filter(|value| value.is_number()) {
            out.insert(knob.into(), value.clone());
        }
    }
    if let Some(stream) = source.get("stream").and_then(Value::as_bool) {
        out.insert("stream".into(), stream.into());
    }
    out.insert("store".into(), false.into());
    if let Some(Value::Array(tools)) = source.get("tools") {
        let converted = tools.iter().map(tool).collect::<Result<Vec<_>, _>>()?;
        if !converted.is_empty() {
            out.insert("tools".into(), Value::Array(converted));
        }
    }
    if let Some(choice) = source.get("tool_choice").filter(|choice| !choice.is_null()) {
        out.insert("tool_choice".into(), tool_choice(choice)?);
    }
    if let Some(parallel) = source.get("parallel_tool_calls").and_then(Value::as_bool) {
        out.insert("parallel_tool_calls".into(), parallel.into());
    }
    if let Some(effort) = source.get("reasoning_effort").and_then(Value::as_str) {
        out.insert("reasoning".into(), json!({"effort": effort}));
    }
    if let Some(format) = source
        .get("response_format")
        .filter(|format| format["type"] == "json_schema")
    {
        let schema = &format["json_schema"];
        let mut converted = json!({"type": "json_schema",
            "name": schema.get("name").and_then(Value::as_str).unwrap_or("output"),
            "schema": schema.get("schema").cloned().unwrap_or_else(|| json!({}))});
        if let Some(strict) = schema.get("strict").and_then(Value::as_bool) {
            converted["strict"] = strict.into();
        }
        out.insert("text".into(), json!({"format": converted}));
    }
    if let Some(user) = source.get("user").filter(|user| user.is_string()) {
        out.insert("user".into(), user.clone());
    }
    Ok(to_bytes(&Value::Object(out)))
}

/// The text of a string or of text parts.
fn text_of(content: &Value, position: usize) -> Result<String, ConvertError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => Ok(parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n\n")),
        _ => Err(ConvertError::new(format!(
            "messages[{position}].content must be a string or an array"
        ))),
    }
}

fn user_parts(content: &Value, position: usize) -> Result<Value, ConvertError> {
    match content {
        Value::String(text) => Ok(json!([{"type": "input_text", "text": text}])),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"type": "input_text",
                    "text": part.get("text").and_then(Value::as_str).unwrap_or("")})),
                Some("image_url") => {
                    let url = part["image_url"]
                        .get("url")
                        .or(Some(&part["image_url"]))
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            ConvertError::new(format!(
                                "messages[{position}]: image_url.url is missing"
                            ))
                        })?;
                    Ok(json!({"type": "input_image", "image_url": url}))
                }
                other => Err(ConvertError::new(format!(
                    "messages[{position}]: a part of type `{}` cannot be expressed for a Responses upstream",
                    other.unwrap_or("?")
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        _ => Err(ConvertError::new(format!(
            "messages[{position}].content must be a string or an array"
        ))),
    }
}

fn tool(definition: &Value) -> Result<Value, ConvertError> {
    if definition.get("type").and_then(Value::as_str) != Some("function") {
        return Err(ConvertError::new(
            "only function tools can be expressed for a Responses upstream",
        ));
    }
    let function = &definition["function"];
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ConvertError::new("a function tool needs a name"))?;
    let mut converted = json!({"type": "function", "name": name,
        "parameters": function.get("parameters").filter(|value| !value.is_null()).cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
    if let Some(description) = function
        .get("description")
        .filter(|value| value.is_string())
    {
        converted["description"] = description.clone();
    }
    if let Some(strict) = function.get("strict").and_then(Value::as_bool) {
        converted["strict"] = strict.into();
    }
    Ok(converted)
}

fn tool_choice(choice: &Value) -> Result<Value, ConvertError> {
    match choice {
        Value::String(mode) if ["auto", "required", "none"].contains(&mode.as_str()) => {
            Ok(choice.clone())
        }
        _ => match choice["function"].get("name").and_then(Value::as_str) {
            Some(name) if choice["type"] == "function" => {
                Ok(json!({"type": "function", "name": name}))
            }
            _ => Err(ConvertError::new(
                "tool_choice must be auto, required, none or a named function",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_conversation_with_a_tool_round_trip_becomes_responses_input() {
        let body = json!({
            "model": "gpt-4o-mini",
            "max_tokens": 64,
            "stream": true,
            "stream_options": {"include_usage": true},
            "stop": ["\n\n"],
            "reasoning_effort": "low",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "run ls"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "reasoning_content": "hmm",
                 "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\":\"ls\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
            ],
            "tools": [{"type": "function", "function": {"name": "Bash", "description": "Run", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "Bash"}},
            "parallel_tool_calls": false,
            "user": "alice",
        });
        let options = RequestOptions {
            model: Some("gpt-5-mini"),
            default_max_tokens: 8192,
        };
        let converted: Value =
            serde_json::from_slice(&request(body.to_string().as_bytes(), &options).unwrap())
                .unwrap();
        assert_eq!(
            converted,
            json!({
                "model": "gpt-5-mini",
                "instructions": "Be brief.",
                "input": [
                    {"type": "message", "role": "user", "content": [
                        {"type": "input_text", "text": "run ls"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                    ]},
                    {"type": "function_call", "call_id": "call_1", "name": "Bash", "arguments": "{\"command\":\"ls\"}"},
                    {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
                ],
                "max_output_tokens": 64,
                "stream": true,
                "store": false,
                "tools": [{"type": "function", "name": "Bash", "parameters": {"type": "object"}, "description": "Run"}],
                "tool_choice": {"type": "function", "name": "Bash"},
                "parallel_tool_calls": false,
                "reasoning": {"effort": "low"},
                "user": "alice",
            })
        );
    }
}
