//! What a dialect conversion costs, next to what any `serde_json::Value`-based conversion must
//! pay at least (parse the body into a `Value` and serialize it again) and what a pass-through
//! already pays on a stream (the usage tracker).
//!
//! Inputs are the golden fixtures of `tests/golden/` and two things built from them: a ~40 KB
//! Claude Code request with 24 tools (the fixture has 2), and 26-event streams shaped like the
//! bench mock upstream's (one event per chunk). Results and how to read them:
//! `docs/conversion-bench.md`.
//!
//! `cargo bench -p relay-protocol --bench convert -- --warm-up-time 1 --measurement-time 3`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)] // bench setup: a bad fixture should stop the run.

use relay_protocol::convert::Translate;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use relay_protocol::anthropic::MessagesUsageTracker;
use relay_protocol::convert::{anthropic, openai_chat, RequestOptions};
use relay_protocol::openai::ChatUsageTracker;
use serde_json::{json, Value};

const OPTIONS: RequestOptions<'static> = RequestOptions {
    model: None,
    default_max_tokens: 8192,
};

fn fixture(path: &str) -> Vec<u8> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(path);
    std::fs::read(&full).unwrap_or_else(|error| panic!("{}: {error}", full.display()))
}

/// The floor of a `Value`-based conversion of `body`: parse it and write it back.
fn parse_serialize(body: &[u8]) -> Vec<u8> {
    let value: Value = serde_json::from_slice(body).unwrap();
    serde_json::to_vec(&value).unwrap()
}

/// The Claude Code turn-2 fixture grown to a size a real Claude Code request has: 24 tools
/// (the fixture's two, cloned under new names with longer descriptions), a longer system
/// prompt, and eight more tool-use rounds at the end of the conversation.
fn claude_code_large() -> Vec<u8> {
    let mut request: Value = serde_json::from_slice(&fixture(
        "openai_chat_from_anthropic/request_claude_code_turn2.input.json",
    ))
    .unwrap();
    let templates = request["tools"].as_array().unwrap().clone();
    let tools: Vec<Value> = (0..24)
        .map(|i| {
            let mut tool = templates[i % templates.len()].clone();
            let name = format!("{}{i}", tool["name"].as_str().unwrap());
            let description = tool["description"].as_str().unwrap_or_default();
            let long = format!(
                "{description}\n\nUsage notes:\n{}",
                "- Prefer this tool over shell pipelines when the task allows; report what it did and why, quoting paths exactly as given. ".repeat(6)
            );
            tool["name"] = json!(name);
            tool["description"] = json!(long);
            tool
        })
        .collect();
    request["tools"] = Value::Array(tools);

    let system = request["system"].as_array_mut().unwrap();
    system.push(json!({
        "type": "text",
        "text": "Follow the repository's conventions; keep answers short and exact. ".repeat(40),
    }));

    let messages = request["messages"].as_array_mut().unwrap();
    let round: Vec<Value> = messages
        .iter()
        .filter(|message| message["role"] != "system")
        .skip(1)
        .take(2)
        .cloned()
        .collect();
    assert_eq!(round.len(), 2, "the fixture's tool-use round");
    for i in 0..8 {
        let id = format!("toolu_bench{i:04}");
        let mut assistant = round[0].clone();
        let mut result = round[1].clone();
        for block in assistant["content"].as_array_mut().unwrap() {
            if block["type"] == "tool_use" {
                block["id"] = json!(id);
            }
        }
        for block in result["content"].as_array_mut().unwrap() {
            if block["type"] == "tool_result" {
                block["tool_use_id"] = json!(id);
                block["content"] = json!("-rw-r--r-- 1 user user 4096 src/main.rs\n".repeat(12));
                block.as_object_mut().unwrap().remove("cache_control");
            }
        }
        messages.push(assistant);
        messages.push(result);
    }
    serde_json::to_vec(&request).unwrap()
}

/// An Anthropic stream as the bench mock upstream sends it: message_start, content_block_start,
/// ping, 20 text deltas, content_block_stop, message_delta, message_stop (26 events), one
/// event per chunk.
fn anthropic_stream() -> Vec<Vec<u8>> {
    let mut events = vec![
        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01BENCH","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":2048,"output_tokens":1}}}

"#.to_owned(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_owned(),
        "event: ping\ndata: {\"type\":\"ping\"}\n\n".to_owned(),
    ];
    for i in 0..20 {
        events.push(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token{i} of the answer \"}}}}\n\n"
        ));
    }
    events.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
            .to_owned(),
    );
    events.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":20}}\n\n".to_owned());
    events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned());
    events.into_iter().map(String::into_bytes).collect()
}

/// An OpenAI chat stream as the bench mock upstream sends it: a role chunk, 22 content chunks,
/// the finish chunk, the usage chunk and `[DONE]` (26 events), one event per chunk.
fn openai_stream() -> Vec<Vec<u8>> {
    let head = r#"data: {"id":"chatcmpl-bench0001","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4.1","choices":[{"index":0,"delta":"#;
    let mut events = vec![format!(
        "{head}{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}\n\n"
    )];
    for i in 0..22 {
        events.push(format!(
            "{head}{{\"content\":\"token{i} of the answer \"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    events.push(format!("{head}{{}},\"finish_reason\":\"stop\"}}]}}\n\n"));
    events.push(r#"data: {"id":"chatcmpl-bench0001","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4.1","choices":[],"usage":{"prompt_tokens":25,"completion_tokens":22,"total_tokens":47}}

"#.to_owned());
    events.push("data: [DONE]\n\n".to_owned());
    events.into_iter().map(String::into_bytes).collect()
}

/// A fixture stream split into its events (one per chunk).
fn fixture_stream(path: &str) -> Vec<Vec<u8>> {
    let text = String::from_utf8(fixture(path)).unwrap();
    text.split_inclusive("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| event.as_bytes().to_vec())
        .collect()
}

/// The data of every event parsed into a `Value` and written back: the floor of a
/// `Value`-based stream translation.
fn parse_serialize_events(events: &[Vec<u8>]) -> usize {
    let mut written = 0;
    for event in events {
        for line in event.split(|&byte| byte == b'\n') {
            if let Some(data) = line.strip_prefix(b"data: ") {
                if let Ok(value) = serde_json::from_slice::<Value>(data) {
                    written += serde_json::to_vec(&value).unwrap().len();
                }
            }
        }
    }
    written
}

fn requests(c: &mut Criterion) {
    let claude_small = fixture("openai_chat_from_anthropic/request_claude_code_turn2.input.json");
    let claude_large = claude_code_large();
    // The large Claude Code request as an OpenAI client would send it: the same 24 tools and
    // conversation, for the other direction at the same size.
    let openai_large = openai_chat::from_anthropic::request(&claude_large, &OPTIONS).unwrap();
    let openai_python =
        fixture("anthropic_from_openai_chat/request_openai_python_tools_image.input.json");

    let mut group = c.benchmark_group("request");
    for (name, body) in [
        ("claude_code_turn2", &claude_small),
        ("claude_code_24_tools", &claude_large),
    ] {
        openai_chat::from_anthropic::request(body, &OPTIONS).unwrap();
        eprintln!("request/{name}: {} bytes", body.len());
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("parse_serialize", name),
            body,
            |b, body| b.iter(|| parse_serialize(black_box(body))),
        );
        group.bench_with_input(
            BenchmarkId::new("openai_chat_from_anthropic", name),
            body,
            |b, body| b.iter(|| openai_chat::from_anthropic::request(black_box(body), &OPTIONS)),
        );
    }
    for (name, body) in [
        ("openai_python_tools_image", &openai_python),
        ("openai_24_tools", &openai_large),
    ] {
        anthropic::from_openai_chat::request(body, &OPTIONS).unwrap();
        eprintln!("request/{name}: {} bytes", body.len());
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("parse_serialize", name),
            body,
            |b, body| b.iter(|| parse_serialize(black_box(body))),
        );
        group.bench_with_input(
            BenchmarkId::new("anthropic_from_openai_chat", name),
            body,
            |b, body| b.iter(|| anthropic::from_openai_chat::request(black_box(body), &OPTIONS)),
        );
    }
    group.finish();
}

fn responses(c: &mut Criterion) {
    let anthropic_body =
        fixture("openai_chat_from_anthropic/response_thinking_tool_use.input.json");
    let openai_body = fixture("anthropic_from_openai_chat/response_openai_tool_calls.input.json");
    openai_chat::from_anthropic::response(&anthropic_body).unwrap();
    anthropic::from_openai_chat::response(&openai_body).unwrap();

    let mut group = c.benchmark_group("response");
    group.bench_function("parse_serialize/anthropic_thinking_tool_use", |b| {
        b.iter(|| parse_serialize(black_box(&anthropic_body)))
    });
    group.bench_function(
        "openai_chat_from_anthropic/anthropic_thinking_tool_use",
        |b| b.iter(|| openai_chat::from_anthropic::response(black_box(&anthropic_body))),
    );
    group.bench_function("parse_serialize/openai_tool_calls", |b| {
        b.iter(|| parse_serialize(black_box(&openai_body)))
    });
    group.bench_function("anthropic_from_openai_chat/openai_tool_calls", |b| {
        b.iter(|| anthropic::from_openai_chat::response(black_box(&openai_body)))
    });
    group.finish();
}

fn streams(c: &mut Criterion) {
    let anthropic_streams = [
        ("mock_26_events", anthropic_stream()),
        (
            "thinking_tool_use",
            fixture_stream("openai_chat_from_anthropic/stream_thinking_tool_use_usage.input.sse"),
        ),
    ];
    let openai_streams = [
        ("mock_26_events", openai_stream()),
        (
            "parallel_tool_calls",
            fixture_stream("anthropic_from_openai_chat/stream_parallel_tool_calls.input.sse"),
        ),
    ];

    let mut group = c.benchmark_group("stream_from_anthropic");
    for (name, events) in &anthropic_streams {
        eprintln!(
            "stream_from_anthropic/{name}: {} events, {} bytes",
            events.len(),
            events.iter().map(Vec::len).sum::<usize>()
        );
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("usage_tracker", name),
            events,
            |b, events| {
                b.iter(|| {
                    let mut tracker = MessagesUsageTracker::new();
                    for event in events {
                        tracker.observe_sse_chunk(black_box(event));
                    }
                    tracker.usage()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("parse_serialize", name),
            events,
            |b, events| b.iter(|| parse_serialize_events(black_box(events))),
        );
        group.bench_with_input(
            BenchmarkId::new("openai_chat_translator", name),
            events,
            |b, events| {
                b.iter(|| {
                    let mut translator = openai_chat::from_anthropic::StreamTranslator::new(true);
                    let mut out = Vec::new();
                    for event in events {
                        translator.push(black_box(event), &mut out);
                    }
                    translator.finish(&mut out);
                    out
                })
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("stream_from_openai_chat");
    for (name, events) in &openai_streams {
        eprintln!(
            "stream_from_openai_chat/{name}: {} events, {} bytes",
            events.len(),
            events.iter().map(Vec::len).sum::<usize>()
        );
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("usage_tracker", name),
            events,
            |b, events| {
                b.iter(|| {
                    let mut tracker = ChatUsageTracker::new();
                    for event in events {
                        tracker.observe_sse_chunk(black_box(event));
                    }
                    tracker.usage()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("parse_serialize", name),
            events,
            |b, events| b.iter(|| parse_serialize_events(black_box(events))),
        );
        group.bench_with_input(
            BenchmarkId::new("anthropic_translator", name),
            events,
            |b, events| {
                b.iter(|| {
                    let mut translator = anthropic::from_openai_chat::StreamTranslator::new();
                    let mut out = Vec::new();
                    for event in events {
                        translator.push(black_box(event), &mut out);
                    }
                    translator.finish(&mut out);
                    out
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, requests, responses, streams);
criterion_main!(benches);
