//! Property: a streamed response converted event by event (in any chunking) assembles to the
//! same message as the non-streamed response converted whole: Anthropic ↔ OpenAI Chat, and
//! Anthropic ↔ Gemini (to a Gemini client as SSE and as the JSON array).

#![allow(clippy::unwrap_used, clippy::panic)] // test code: a failure should stop the test.

use std::collections::BTreeMap;

use proptest::prelude::*;
use relay_protocol::convert::{anthropic, gemini, openai_chat, Translate};
use relay_protocol::sse::SseDecoder;
use serde_json::{json, Value};

// ---------- shared generators and helpers ----------

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .,!?\"\\\\\né日🙂{}]{0,24}"
}

fn arguments() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map("[a-z_]{1,8}", text(), 0..4).prop_map(|map| {
        Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        )
    })
}

/// `text` cut into pieces at the (char-boundary-adjusted) `cuts`.
fn pieces(text: &str, cuts: &[usize]) -> Vec<String> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|cut| {
            let mut point = cut % (text.len() + 1);
            while !text.is_char_boundary(point) {
                point -= 1;
            }
            point
        })
        .collect();
    points.push(0);
    points.push(text.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|pair| text[pair[0]..pair[1]].to_owned())
        .filter(|piece| !piece.is_empty())
        .collect()
}

fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(event) => format!("event: {event}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

fn translate(translator: &mut dyn Translate, input: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap()).clamp(1, rest.len());
        let (chunk, after) = rest.split_at(size);
        translator.push(chunk, &mut out);
        rest = after;
    }
    translator.finish(&mut out);
    out
}

fn events(bytes: &[u8]) -> Vec<(String, String)> {
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    decoder.feed(bytes, &mut |name, data| {
        events.push((name.to_owned(), data.to_owned()))
    });
    events
}

// ---------- Anthropic → OpenAI ----------

#[derive(Debug, Clone)]
enum Block {
    Text(String),
    Thinking(String),
    Tool(String, Value),
}

fn block() -> impl Strategy<Value = Block> {
    prop_oneof![
        text().prop_map(Block::Text),
        text().prop_map(Block::Thinking),
        ("[a-zA-Z_]{1,10}", arguments()).prop_map(|(name, input)| Block::Tool(name, input)),
    ]
}

fn anthropic_body(id: &str, blocks: &[Block], stop: &str, usage: [u64; 4]) -> Value {
    let content: Vec<Value> = blocks
        .iter()
        .enumerate()
        .map(|(index, block)| match block {
            Block::Text(text) => json!({"type": "text", "text": text}),
            Block::Thinking(text) => json!({"type": "thinking", "thinking": text, "signature": "sig"}),
            Block::Tool(name, input) => {
                json!({"type": "tool_use", "id": format!("toolu_{index}"), "name": name, "input": input})
            }
        })
        .collect();
    json!({
        "id": id, "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": usage[0], "cache_creation_input_tokens": usage[1],
                  "cache_read_input_tokens": usage[2], "output_tokens": usage[3]},
    })
}

fn anthropic_stream(body: &Value, blocks: &[Block], cuts: &[usize]) -> String {
    let usage = &body["usage"];
    let mut start_message = body.clone();
    start_message["content"] = json!([]);
    start_message["stop_reason"] = Value::Null;
    start_message["usage"]["output_tokens"] = json!(1);
    let mut out = sse(
        Some("message_start"),
        &json!({"type": "message_start", "message": start_message}),
    );
    for (index, block) in blocks.iter().enumerate() {
        let (start, deltas): (Value, Vec<Value>) = match block {
            Block::Text(text) => (
                json!({"type": "text", "text": ""}),
                pieces(text, cuts)
                    .into_iter()
                    .map(|piece| json!({"type": "text_delta", "text": piece}))
                    .collect(),
            ),
            Block::Thinking(text) => {
                let mut deltas: Vec<Value> = pieces(text, cuts)
                    .into_iter()
                    .map(|piece| json!({"type": "thinking_delta", "thinking": piece}))
                    .collect();
                deltas.push(json!({"type": "signature_delta", "signature": "sig"}));
                (
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    deltas,
                )
            }
            Block::Tool(name, input) => (
                json!({"type": "tool_use", "id": format!("toolu_{index}"), "name": name, "input": {}}),
                pieces(&input.to_string(), cuts)
                    .into_iter()
                    .map(|piece| json!({"type": "input_json_delta", "partial_json": piece}))
                    .collect(),
            ),
        };
        out += &sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": index, "content_block": start}),
        );
        if index == 0 {
            out += &sse(Some("ping"), &json!({"type": "ping"}));
        }
        for delta in deltas {
            out += &sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            );
        }
        out += &sse(
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": index}),
        );
    }
    out += &sse(
        Some("message_delta"),
        &json!({"type": "message_delta", "delta": {"stop_reason": body["stop_reason"], "stop_sequence": null}, "usage": usage}),
    );
    out + &sse(Some("message_stop"), &json!({"type": "message_stop"}))
}

/// Assembles OpenAI chunks into the `chat.completion` they stand for.
fn assemble_openai(bytes: &[u8]) -> Value {
    let (mut id, mut model) = (Value::Null, Value::Null);
    let (mut content, mut reasoning) = (String::new(), String::new());
    let mut calls: BTreeMap<u64, (Value, Value, String)> = BTreeMap::new();
    let (mut finish, mut usage, mut done) = (Value::Null, Value::Null, 0);
    for (_, data) in events(bytes) {
        assert_eq!(done, 0, "nothing may follow [DONE]");
        if data == "[DONE]" {
            done += 1;
            continue;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        id = chunk["id"].clone();
        model = chunk["model"].clone();
        if chunk.get("usage").is_some() {
            assert_eq!(chunk["choices"], json!([]));
            usage = chunk["usage"].clone();
            continue;
        }
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        content += delta["content"].as_str().unwrap_or("");
        reasoning += delta["reasoning_content"].as_str().unwrap_or("");
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let entry = calls.entry(call["index"].as_u64().unwrap()).or_insert((
                Value::Null,
                Value::Null,
                String::new(),
            ));
            if call.get("id").is_some() {
                entry.0 = call["id"].clone();
                entry.1 = call["function"]["name"].clone();
            }
            entry.2 += call["function"]["arguments"].as_str().unwrap_or("");
        }
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
    }
    assert_eq!(done, 1, "the stream ends with [DONE]");
    let calls: Vec<Value> = calls
        .into_values()
        .map(|(id, name, arguments)| {
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": content});
    if content.is_empty() && !calls.is_empty() {
        message["content"] = Value::Null;
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = reasoning.into();
    }
    if !calls.is_empty() {
        message["tool_calls"] = calls.into();
    }
    json!({
        "id": id, "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
        "usage": usage,
    })
}

// ---------- OpenAI → Anthropic ----------

fn openai_body(
    id: &str,
    reasoning: &str,
    content: &str,
    calls: &[(String, Value)],
    finish: &str,
    usage: [u64; 3],
) -> Value {
    let mut message = json!({"role": "assistant", "content": if content.is_empty() { Value::Null } else { content.into() }});
    if !reasoning.is_empty() {
        message["reasoning_content"] = reasoning.into();
    }
    if !calls.is_empty() {
        message["tool_calls"] = calls
            .iter()
            .enumerate()
            .map(|(index, (name, input))| {
                json!({"id": format!("call_{index}x"), "type": "function",
                       "function": {"name": name, "arguments": input.to_string()}})
            })
            .collect();
    }
    let (prompt, cached, completion) = (usage[0], usage[1].min(usage[0]), usage[2]);
    json!({
        "id": id, "object": "chat.completion", "created": 1, "model": "deepseek-chat",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached},
                  "completion_tokens_details": {"reasoning_tokens": completion / 2}},
    })
}

fn openai_stream(body: &Value, cuts: &[usize]) -> String {
    let chunk = |delta: Value, finish: Value| {
        sse(
            None,
            &json!({"id": body["id"], "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    };
    let message = &body["choices"][0]["message"];
    let mut out = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    for piece in pieces(message["reasoning_content"].as_str().unwrap_or(""), cuts) {
        out += &chunk(
            json!({"reasoning_content": piece, "content": null}),
            Value::Null,
        );
    }
    for piece in pieces(message["content"].as_str().unwrap_or(""), cuts) {
        out += &chunk(json!({"content": piece}), Value::Null);
    }
    for (index, call) in message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let arguments = pieces(call["function"]["arguments"].as_str().unwrap(), cuts);
        let first = json!({"index": index, "id": call["id"], "type": "function",
                           "function": {"name": call["function"]["name"], "arguments": arguments[0]}});
        out += &chunk(json!({"tool_calls": [first]}), Value::Null);
        for piece in &arguments[1..] {
            out += &chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                Value::Null,
            );
        }
    }
    out += &chunk(json!({}), body["choices"][0]["finish_reason"].clone());
    out += &sse(
        None,
        &json!({"id": body["id"], "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                "choices": [], "usage": body["usage"]}),
    );
    out + "data: [DONE]\n\n"
}

/// Assembles Anthropic events into the message they stand for, checking their order.
fn assemble_anthropic(bytes: &[u8]) -> Value {
    let mut message = Value::Null;
    let mut blocks: Vec<Value> = Vec::new();
    let mut partial: Vec<String> = Vec::new();
    let mut open: Option<usize> = None;
    let mut stopped = 0;
    for (name, data) in events(bytes) {
        assert_eq!(stopped, 0, "nothing may follow message_stop");
        let event: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(event["type"], name.as_str());
        match name.as_str() {
            "message_start" => {
                assert!(message.is_null());
                message = event["message"].clone();
            }
            "content_block_start" => {
                assert_eq!(open, None, "blocks are sequential");
                let index = event["index"].as_u64().unwrap() as usize;
                assert_eq!(index, blocks.len());
                blocks.push(event["content_block"].clone());
                partial.push(String::new());
                open = Some(index);
            }
            "content_block_delta" => {
                let index = event["index"].as_u64().unwrap() as usize;
                assert_eq!(open, Some(index));
                let delta = &event["delta"];
                let block = &mut blocks[index];
                match delta["type"].as_str().unwrap() {
                    "text_delta" => {
                        block["text"] = format!(
                            "{}{}",
                            block["text"].as_str().unwrap(),
                            delta["text"].as_str().unwrap()
                        )
                        .into();
                    }
                    "thinking_delta" => {
                        block["thinking"] = format!(
                            "{}{}",
                            block["thinking"].as_str().unwrap(),
                            delta["thinking"].as_str().unwrap()
                        )
                        .into();
                    }
                    "signature_delta" => block["signature"] = delta["signature"].clone(),
                    "input_json_delta" => partial[index] += delta["partial_json"].as_str().unwrap(),
                    other => panic!("unexpected delta {other}"),
                }
            }
            "content_block_stop" => {
                let index = event["index"].as_u64().unwrap() as usize;
                assert_eq!(open, Some(index));
                if blocks[index]["type"] == "tool_use" && !partial[index].is_empty() {
                    blocks[index]["input"] = serde_json::from_str(&partial[index]).unwrap();
                }
                open = None;
            }
            "message_delta" => {
                message["stop_reason"] = event["delta"]["stop_reason"].clone();
                message["stop_sequence"] = event["delta"]["stop_sequence"].clone();
                message["usage"] = event["usage"].clone();
            }
            "message_stop" => stopped += 1,
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(stopped, 1, "the stream ends with message_stop");
    message["content"] = blocks.into();
    message
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn anthropic_stream_and_body_convert_to_the_same_openai_message(
        id in "msg_[a-zA-Z0-9]{1,12}",
        blocks in proptest::collection::vec(block(), 0..5),
        stop in prop::sample::select(vec!["end_turn", "max_tokens", "tool_use", "stop_sequence", "refusal", "pause_turn"]),
        usage in proptest::array::uniform4(0u64..1_000_000),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
        sizes in proptest::collection::vec(1usize..200, 1..6),
    ) {
        let body = anthropic_body(&id, &blocks, stop, usage);
        let stream = anthropic_stream(&body, &blocks, &cuts);
        let whole: Value = serde_json::from_slice(
            &openai_chat::from_anthropic::response(body.to_string().as_bytes()).unwrap(),
        ).unwrap();
        let out = translate(
            &mut openai_chat::from_anthropic::StreamTranslator::new(true),
            stream.as_bytes(),
            &sizes,
        );
        prop_assert_eq!(assemble_openai(&out), whole);
    }

    #[test]
    fn openai_stream_and_body_convert_to_the_same_anthropic_message(
        id in "chatcmpl-[a-zA-Z0-9]{1,12}",
        reasoning in text(),
        content in text(),
        calls in proptest::collection::vec(("[a-zA-Z_]{1,10}", arguments()), 0..4),
        finish in prop::sample::select(vec!["stop", "length", "tool_calls", "content_filter"]),
        usage in proptest::array::uniform3(0u64..1_000_000),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
        sizes in proptest::collection::vec(1usize..200, 1..6),
    ) {
        let body = openai_body(&id, &reasoning, &content, &calls, finish, usage);
        let stream = openai_stream(&body, &cuts);
        let whole: Value = serde_json::from_slice(
            &anthropic::from_openai_chat::response(body.to_string().as_bytes()).unwrap(),
        ).unwrap();
        let out = translate(
            &mut anthropic::from_openai_chat::StreamTranslator::new(),
            stream.as_bytes(),
            &sizes,
        );
        prop_assert_eq!(assemble_anthropic(&out), whole);
    }
}

// ---------- Anthropic ↔ Gemini ----------

/// Gemini parts with adjacent texts of one kind (thought or not) joined and empty texts left
/// out: how a stream's many small parts and a whole answer's few compare.
fn joined_parts(parts: &[Value]) -> Vec<Value> {
    let mut joined: Vec<Value> = Vec::new();
    for part in parts {
        let Some(text) = part["text"].as_str() else {
            joined.push(part.clone());
            continue;
        };
        if text.is_empty() {
            continue;
        }
        match joined.last_mut() {
            Some(last) if last["text"].is_string() && last["thought"] == part["thought"] => {
                last["text"] = format!("{}{text}", last["text"].as_str().unwrap()).into();
            }
            _ => joined.push(part.clone()),
        }
    }
    joined
}

/// A Gemini answer (one response, or the chunks of a stream) as one comparable response.
fn assemble_gemini(chunks: &[Value]) -> Value {
    let parts: Vec<Value> = chunks
        .iter()
        .flat_map(|chunk| {
            chunk["candidates"][0]["content"]["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    let last = chunks.last().unwrap();
    json!({
        "parts": joined_parts(&parts),
        "finish": last["candidates"][0]["finishReason"],
        "usage": last["usageMetadata"],
        "model": last["modelVersion"],
        "id": last["responseId"],
    })
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Thought(String),
    Call(String, Value),
}

fn part() -> impl Strategy<Value = Part> {
    let words = "[a-zA-Z0-9 .,!?\"é日🙂{}]{1,24}";
    prop_oneof![
        words.prop_map(Part::Text),
        words.prop_map(Part::Thought),
        ("[a-zA-Z_]{1,10}", arguments()).prop_map(|(name, args)| Part::Call(name, args)),
    ]
}

fn gemini_part(part: &Part) -> Value {
    match part {
        Part::Text(text) => json!({"text": text}),
        Part::Thought(text) => json!({"text": text, "thought": true}),
        Part::Call(name, args) => json!({"functionCall": {"name": name, "args": args}}),
    }
}

/// Adjacent texts of one kind as one part (a whole answer's shape).
fn merged(parts: &[Part]) -> Vec<Part> {
    let mut merged: Vec<Part> = Vec::new();
    for part in parts {
        match (merged.last_mut(), part) {
            (Some(Part::Text(last)), Part::Text(text))
            | (Some(Part::Thought(last)), Part::Thought(text)) => last.push_str(text),
            _ => merged.push(part.clone()),
        }
    }
    merged
}

fn gemini_usage(usage: [u64; 4]) -> Value {
    json!({"promptTokenCount": usage[0] + usage[1], "cachedContentTokenCount": usage[1],
        "candidatesTokenCount": usage[2], "thoughtsTokenCount": usage[3],
        "totalTokenCount": usage.iter().sum::<u64>()})
}

fn gemini_chunk(parts: Value, finish: Option<&str>, usage: Value) -> Value {
    let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
    if let Some(finish) = finish {
        candidate["finishReason"] = json!(finish);
    }
    json!({"candidates": [candidate], "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash", "responseId": "resp-1"})
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn anthropic_stream_and_body_convert_to_the_same_gemini_answer(
        id in "msg_[a-zA-Z0-9]{1,12}",
        blocks in proptest::collection::vec(block(), 0..5),
        stop in prop::sample::select(vec!["end_turn", "max_tokens", "tool_use", "refusal"]),
        usage in proptest::array::uniform4(0u64..1_000_000),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
        sizes in proptest::collection::vec(1usize..200, 1..6),
        sse in any::<bool>(),
    ) {
        let body = anthropic_body(&id, &blocks, stop, usage);
        let stream = anthropic_stream(&body, &blocks, &cuts);
        let whole: Value = serde_json::from_slice(
            &gemini::from_anthropic::response(body.to_string().as_bytes()).unwrap(),
        ).unwrap();
        let out = translate(
            &mut gemini::from_anthropic::StreamTranslator::new(sse),
            stream.as_bytes(),
            &sizes,
        );
        let text = String::from_utf8(out).unwrap();
        let chunks: Vec<Value> = if sse {
            events(text.as_bytes())
                .into_iter()
                .map(|(_, data)| serde_json::from_str(&data).unwrap())
                .collect()
        } else {
            serde_json::from_str(&text).unwrap()
        };
        prop_assert_eq!(assemble_gemini(&chunks), assemble_gemini(&[whole]));
    }

    #[test]
    fn gemini_stream_and_body_convert_to_the_same_anthropic_message(
        parts in proptest::collection::vec(part(), 0..5),
        finish in prop::sample::select(vec!["STOP", "MAX_TOKENS", "SAFETY"]),
        usage in proptest::array::uniform4(0u64..1_000_000),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
        sizes in proptest::collection::vec(1usize..200, 1..6),
    ) {
        let parts = merged(&parts);
        let whole_parts: Vec<Value> = parts.iter().map(gemini_part).collect();
        let body = gemini_chunk(whole_parts.into(), Some(finish), gemini_usage(usage));
        // The stream: every text cut into pieces, one part per chunk, then a last chunk with
        // the finish reason and the whole usage.
        let mut stream = String::new();
        let running = json!({"promptTokenCount": usage[0] + usage[1]});
        for part in &parts {
            let pieces: Vec<Value> = match part {
                Part::Text(text) => pieces(text, &cuts).into_iter().map(|piece| json!({"text": piece})).collect(),
                Part::Thought(text) => pieces(text, &cuts).into_iter().map(|piece| json!({"text": piece, "thought": true})).collect(),
                Part::Call(..) => vec![gemini_part(part)],
            };
            for piece in pieces {
                stream += &sse(None, &gemini_chunk(json!([piece]), None, running.clone()));
            }
        }
        stream += &sse(None, &gemini_chunk(json!([{"text": ""}]), Some(finish), gemini_usage(usage)));
        let whole: Value = serde_json::from_slice(
            &anthropic::from_gemini::response(body.to_string().as_bytes()).unwrap(),
        ).unwrap();
        let out = translate(
            &mut anthropic::from_gemini::StreamTranslator::new(),
            stream.as_bytes(),
            &sizes,
        );
        prop_assert_eq!(assemble_anthropic(&out), whole);
    }
}
