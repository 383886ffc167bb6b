//! A Responses API request (Codex CLI, `client.responses.create`) → an Anthropic Messages
//! request, for a Responses client served by an Anthropic account. The answer goes back through
//! `convert::openai_responses::from_anthropic`.
//!
//! What maps: `instructions` and `developer`/`system` items → `system`; `user`/`assistant`
//! message items (text and images) → messages; `function_call` → `tool_use` and
//! `function_call_output` → `tool_result` (consecutive items of one role merge into one message,
//! as Anthropic wants turns to alternate); `custom_tool_call` and its output likewise, a
//! freeform tool taking one string `input`; `function` and `custom` tools; `tool_choice`,
//! `parallel_tool_calls`; `reasoning.effort` → a thinking budget; `text.format` json_schema →
//! `output_config.format`; `max_output_tokens`, `temperature`, `top_p`, `stream`, `user`.
//!
//! Dropped on purpose: `reasoning` input items (their `encrypted_content` is OpenAI's own and no
//! other model can read it; their summaries are the model's notes, not the conversation),
//! `namespace`, `web_search`, `local_shell` and other hosted tool types (only the upstream that
//! hosts them can run them: Codex still works with its function tools), `store`, `include`,
//! `prompt_cache_key`, `client_metadata` and `reasoning.summary` (nothing on Anthropic's side
//! keeps or returns them). Refused with a 400: `previous_response_id` (an Anthropic account
//! holds no stored response to continue from) and `background`.
//!
//! Codex's remote compaction (`compaction_trigger`, and the `compaction` items of earlier
//! compactions) is done by the account's model: see `convert::openai_responses::compaction`.

use crate::convert::target_model;
use serde_json::{json, Value};

use super::from_openai_chat::{image_block, insert_sampling, insert_tool_choice};
use crate::convert::openai_responses::compaction;
use crate::convert::MAX_USER_ID;
use crate::convert::{parse_object, to_bytes, truncated, ConvertError, Object, RequestOptions};

/// Hosted tool types that only OpenAI can run: left out of a converted request.
const HOSTED_TOOLS: &[&str] = &[
    "namespace",
    "web_search",
    "web_search_preview",
    "local_shell",
    "file_search",
    "code_interpreter",
    "computer_use_preview",
    "image_generation",
    "mcp",
];

/// The schema a freeform (`custom`) tool gets on Anthropic: one string, its raw input.
fn freeform_schema() -> Value {
    json!({"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]})
}

pub fn request(body: &[u8], options: &RequestOptions) -> Result<Vec<u8>, ConvertError> {
    let source = parse_object(body, "the request body")?;
    for field in ["previous_response_id", "background"] {
        if source
            .get(field)
            .is_some_and(|value| !value.is_null() && *value != Value::Bool(false))
        {
            return Err(ConvertError::new(format!(
                "`{field}` cannot be resolved by an Anthropic upstream: send the whole conversation in `input`"
            )));
        }
    }
    let mut out = Object::new();
    out.insert("model".into(), target_model(&source, options)?.into());
    let max_tokens = source
        .get("max_output_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(options.default_max_tokens);
    out.insert("max_tokens".into(), max_tokens.into());

    let mut system = Vec::new();
    if let Some(instructions) = source
        .get("instructions")
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
    {
        system.push(json!({"type": "text", "text": instructions}));
    }
    let items = match source.get("input") {
        Some(Value::String(text)) => vec![json!({"role": "user", "content": text})],
        Some(Value::Array(items)) => items.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err(ConvertError::new("`input` must be a string or an array")),
    };
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (position, item) in items.iter().enumerate() {
        let (role, blocks) = match item_blocks(item, position)? {
            Item::System(text) => {
                if !text.is_empty() {
                    system.push(json!({"type": "text", "text": text}));
                }
                continue;
            }
            Item::Turn(role, blocks) => (role, blocks),
            Item::Dropped => continue,
        };
        super::push_turn(&mut messages, role, blocks);
    }
    if messages.is_empty() {
        return Err(ConvertError::new("`input` holds no message to answer"));
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let messages = messages
        .into_iter()
        .map(|(role, blocks)| json!({"role": role, "content": blocks}))
        .collect();
    out.insert("messages".into(), Value::Array(messages));

    let effort = source
        .get("reasoning")
        .and_then(|reasoning| reasoning.get("effort"))
        .and_then(Value::as_str);
    insert_sampling(&source, &mut out, effort, max_tokens)?;
    let tools: Vec<Value> = match source.get("tools") {
        Some(Value::Array(tools)) => tools
            .iter()
            .filter_map(|definition| tool(definition).transpose())
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(tools));
    }
    let compacting = items.iter().any(|item| item["type"] == compaction::TRIGGER);
    let choice = if compacting && has_tools {
        // The summary is text; the tools stay defined for the history that used them.
        Some(json!({"type": "none"}))
    } else {
        source
            .get("tool_choice")
            .filter(|choice| !choice.is_null() && has_tools)
            .map(tool_choice)
            .transpose()?
    };
    insert_tool_choice(&source, &mut out, choice, has_tools);
    if let Some(format) = source
        .get("text")
        .and_then(|text| text.get("format"))
        .filter(|format| format["type"] == "json_schema")
    {
        let schema = format
            .get("schema")
            .ok_or_else(|| ConvertError::new("text.format.schema is missing"))?;
        out.insert(
            "output_config".into(),
            json!({"format": {"type": "json_schema", "schema": schema}}),
        );
    }
    if let Some(user) = source
        .get("user")
        .or_else(|| source.get("safety_identifier"))
        .and_then(Value::as_str)
        .filter(|user| !user.is_empty())
    {
        out.insert(
            "metadata".into(),
            json!({"user_id": truncated(user, MAX_USER_ID)}),
        );
    }
    Ok(to_bytes(&Value::Object(out)))
}

/// What one `input` item becomes.
enum Item {
    /// Instructions, joined into `system`.
    System(String),
    /// Blocks of a user or an assistant turn.
    Turn(&'static str, Vec<Value>),
    /// Left out on purpose (see the module's notes).
    Dropped,
}

fn item_blocks(item: &Value, position: usize) -> Result<Item, ConvertError> {
    let kind = item.get("type").and_then(Value::as_str);
    let call_id = || {
        item.get("call_id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| ConvertError::new(format!("input[{position}].call_id is missing")))
    };
    match kind {
        None | Some("message") => {
            let content = item.get("content").unwrap_or(&Value::Null);
            match item.get("role").and_then(Value::as_str) {
                Some("system" | "developer") => Ok(Item::System(text_of(content, position)?)),
                Some("user") => Ok(Item::Turn("user", content_blocks(content, position)?)),
                Some("assistant") => {
                    Ok(Item::Turn("assistant", content_blocks(content, position)?))
                }
                _ => Err(ConvertError::new(format!(
                    "input[{position}].role must be system, developer, user or assistant"
                ))),
            }
        }
        Some("function_call") => {
            let name = item
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ConvertError::new(format!("input[{position}].name is missing")))?;
            let arguments = item.get("arguments").and_then(Value::as_str).unwrap_or("");
            let input = if arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str::<Value>(arguments)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| {
                        ConvertError::new(format!(
                            "input[{position}].arguments is not a JSON object"
                        ))
                    })?
            };
            Ok(Item::Turn(
                "assistant",
                vec![json!({"type": "tool_use", "id": call_id()?, "name": name, "input": input})],
            ))
        }
        Some("custom_tool_call") => {
            let name = item
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ConvertError::new(format!("input[{position}].name is missing")))?;
            let input = item.get("input").and_then(Value::as_str).unwrap_or("");
            Ok(Item::Turn(
                "assistant",
                vec![json!({"type": "tool_use", "id": call_id()?, "name": name, "input": {"input": input}})],
            ))
        }
        Some("function_call_output" | "custom_tool_call_output") => {
            let output = match item.get("output").unwrap_or(&Value::Null) {
                Value::String(text) => text.clone(),
                Value::Null => String::new(),
                parts => text_of(parts, position)?,
            };
            Ok(Item::Turn(
                "user",
                vec![json!({"type": "tool_result", "tool_use_id": call_id()?, "content": output})],
            ))
        }
        Some("reasoning" | "item_reference") => Ok(Item::Dropped),
        Some(compaction::TRIGGER) => Ok(Item::Turn(
            "user",
            vec![json!({"type": "text", "text": compaction::PROMPT})],
        )),
        // A summary the relay made stands for the history it replaced; OpenAI's own cannot be
        // read by any other model.
        Some("compaction") => Ok(match compaction::summary_of(item) {
            Some(summary) => Item::Turn(
                "user",
                vec![json!({"type": "text", "text": format!("Summary of the conversation so far:\n\n{summary}")})],
            ),
            None => Item::Dropped,
        }),
        Some(other) => Err(ConvertError::new(format!(
            "input[{position}]: an item of type `{other}` cannot be expressed for an Anthropic upstream"
        ))),
    }
}

/// The text of a string or of text parts (instructions, tool outputs).
fn text_of(content: &Value, position: usize) -> Result<String, ConvertError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match part.get("text").and_then(Value::as_str) {
                    Some(text) => texts.push(text),
                    None => {
                        return Err(ConvertError::new(format!(
                            "input[{position}].content may only hold text parts here"
                        )))
                    }
                }
            }
            Ok(texts.join("\n\n"))
        }
        _ => Err(ConvertError::new(format!(
            "input[{position}].content must be a string or an array"
        ))),
    }
}

/// A message item's content → Anthropic blocks: text parts (`input_text`, `output_text`,
/// `text`), images (`input_image`); a refusal part becomes its text.
fn content_blocks(content: &Value, position: usize) -> Result<Vec<Value>, ConvertError> {
    match content {
        Value::String(text) if text.is_empty() => Ok(Vec::new()),
        Value::String(text) => Ok(vec![json!({"type": "text", "text": text})]),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| {
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                        (!text.is_empty()).then(|| Ok(json!({"type": "text", "text": text})))
                    }
                    Some("refusal") => {
                        let text = part.get("refusal").and_then(Value::as_str).unwrap_or("");
                        (!text.is_empty()).then(|| Ok(json!({"type": "text", "text": text})))
                    }
                    Some("input_image") => Some(image_block(part, position)),
                    Some(other) => Some(Err(ConvertError::new(format!(
                        "input[{position}]: a part of type `{other}` cannot be expressed for an Anthropic upstream"
                    )))),
                    None => Some(Err(ConvertError::new(format!(
                        "input[{position}]: a content part needs a type"
                    )))),
                }
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        _ => Err(ConvertError::new(format!(
            "input[{position}].content must be a string or an array"
        ))),
    }
}

/// A Responses tool → an Anthropic tool; `None` for a hosted tool (left out).
fn tool(definition: &Value) -> Result<Option<Value>, ConvertError> {
    let kind = definition.get("type").and_then(Value::as_str).unwrap_or("");
    if HOSTED_TOOLS.contains(&kind) {
        return Ok(None);
    }
    let schema = match kind {
        "function" => definition
            .get("parameters")
            .filter(|parameters| !parameters.is_null())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        "custom" => freeform_schema(),
        other => {
            return Err(ConvertError::new(format!(
                "a tool of type `{other}` cannot be expressed for an Anthropic upstream"
            )))
        }
    };
    let name = definition
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ConvertError::new("a tool needs a name"))?;
    let mut converted = Object::new();
    converted.insert("name".into(), name.into());
    if let Some(description) = definition
        .get("description")
        .filter(|value| value.is_string())
    {
        converted.insert("description".into(), description.clone());
    }
    converted.insert("input_schema".into(), schema);
    Ok(Some(Value::Object(converted)))
}

fn tool_choice(choice: &Value) -> Result<Value, ConvertError> {
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "required" => Ok(json!({"type": "any"})),
            "none" => Ok(json!({"type": "none"})),
            other => Err(ConvertError::new(format!(
                "tool_choice `{other}` is not auto, required or none"
            ))),
        },
        _ => match (
            choice.get("type").and_then(Value::as_str),
            choice.get("name").and_then(Value::as_str),
        ) {
            (Some("function" | "custom"), Some(name)) => Ok(json!({"type": "tool", "name": name})),
            _ => Err(ConvertError::new(
                "tool_choice must be auto, required, none or a named function",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> RequestOptions<'static> {
        RequestOptions {
            model: Some("claude-sonnet-4-5"),
            default_max_tokens: 8192,
        }
    }

    fn converted(body: Value) -> Value {
        serde_json::from_slice(&request(body.to_string().as_bytes(), &options()).unwrap()).unwrap()
    }

    /// A second Codex turn: its developer and user items, a reasoning item, a function call
    /// and its output; its function, namespace and web_search tools.
    #[test]
    fn a_codex_turn_becomes_an_anthropic_request() {
        let body = json!({
            "model": "gpt-5-codex",
            "stream": true,
            "store": false,
            "include": ["reasoning.encrypted_content"],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "reasoning": {"effort": "medium", "summary": "auto"},
            "prompt_cache_key": "0199",
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: read-only."}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context/>"}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA…"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
                {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "exec_command", "arguments": "{\"cmd\":\"ls\"}", "status": "completed"},
                {"type": "function_call_output", "call_id": "call_1", "output": "a.txt\nb.txt"},
            ],
            "tools": [
                {"type": "function", "name": "exec_command", "description": "Runs a command", "strict": false,
                 "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
                {"type": "custom", "name": "apply_patch", "description": "Applies a patch", "format": {"type": "grammar"}},
                {"type": "namespace", "name": "multi_agent_v1", "tools": []},
                {"type": "web_search", "external_web_access": false},
            ],
            "client_metadata": {"session_id": "0199"},
        });
        assert_eq!(
            converted(body),
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 8192,
                "system": [
                    {"type": "text", "text": "You are Codex."},
                    {"type": "text", "text": "Sandbox: read-only."},
                ],
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "<environment_context/>"},
                        {"type": "text", "text": "list files"},
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Looking."},
                        {"type": "tool_use", "id": "call_1", "name": "exec_command", "input": {"cmd": "ls"}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "a.txt\nb.txt"},
                    ]},
                ],
                "thinking": {"type": "enabled", "budget_tokens": 8191},
                "stream": true,
                "tools": [
                    {"name": "exec_command", "description": "Runs a command",
                     "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
                    {"name": "apply_patch", "description": "Applies a patch",
                     "input_schema": {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}},
                ],
                "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            })
        );
    }

    /// Codex's remote compaction: the trigger asks the model for the summary (tools defined, not
    /// to be called); a later turn's relay-made compaction item is that summary again, and
    /// OpenAI's own encrypted one is left out.
    #[test]
    fn a_compaction_trigger_and_compaction_items() {
        let tools =
            json!([{"type": "function", "name": "exec_command", "parameters": {"type": "object"}}]);
        let trigger = json!({
            "model": "gpt-5-codex",
            "input": [
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix it"}]},
                {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "ok"},
                {"type": "compaction_trigger"},
            ],
            "tools": tools,
            "tool_choice": "auto",
        });
        let request = converted(trigger);
        assert_eq!(request["tool_choice"], json!({"type": "none"}));
        assert_eq!(request["tools"][0]["name"], "exec_command");
        assert_eq!(
            request["messages"][2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "ok"},
                {"type": "text", "text": compaction::PROMPT},
            ]})
        );
        let later = json!({
            "model": "gpt-5-codex",
            "input": [
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix it"}]},
                {"type": "compaction", "encrypted_content": "gAAAAB-openai-only"},
                compaction::summary_item("Fixed src/a.rs; tests remain."),
            ],
            "tools": tools,
            "tool_choice": "auto",
        });
        let request = converted(later);
        assert_eq!(request["tool_choice"], json!({"type": "auto"}));
        assert_eq!(
            request["messages"],
            json!([{"role": "user", "content": [
                {"type": "text", "text": "fix it"},
                {"type": "text", "text": "Summary of the conversation so far:\n\nFixed src/a.rs; tests remain."},
            ]}])
        );
    }

    #[test]
    fn a_plain_string_input_instructions_and_a_json_schema() {
        let body = json!({
            "model": "gpt-5",
            "instructions": "Be brief.",
            "input": "hello",
            "max_output_tokens": 100,
            "temperature": 1.5,
            "text": {"format": {"type": "json_schema", "name": "t", "schema": {"type": "object"}}},
            "user": "alice",
        });
        assert_eq!(
            converted(body),
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 100,
                "system": [{"type": "text", "text": "Be brief."}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
                "temperature": 1.0,
                "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
                "metadata": {"user_id": "alice"},
            })
        );
    }

    #[test]
    fn what_an_anthropic_upstream_cannot_resolve_is_refused_clearly() {
        for (body, expected) in [
            (
                json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (json!({"model": "m", "input": []}), "no message"),
            (
                json!({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]}),
                "not a JSON object",
            ),
            (
                json!({"model": "m", "input": [{"type": "audio_item"}]}),
                "audio_item",
            ),
        ] {
            let error = request(body.to_string().as_bytes(), &options()).unwrap_err();
            assert!(error.message.contains(expected), "{error} for {body}");
        }
    }
}
