#!/usr/bin/env python3
"""Teaches the copy of ../shared/bench that scripts/bench-responses and scripts/bench-gemini run
the Responses API and the Gemini API, so that their pass-through and the relay's paths are
measured in one run:

- mock-upstream answers `POST …/responses` as the Responses API does: a whole response, or its
  event stream (`response.created` … one `response.output_text.delta` per token …
  `response.completed` with the usage), prebuilt like its other answers;
- it answers `POST …/models/{model}:generateContent` and `:streamGenerateContent` as the Gemini
  API does: a whole response, or SSE chunks (one per token, the last with `finishReason` and
  the usage);
- ssebench ends a Responses stream on `response.completed` and a Gemini one on `finishReason`;
- compare.sh sends its `direct` and `passthru` targets to `FLOOR_PATH` (default `/v1/messages`),
  and takes the scenarios from `CAPACITY_SCENARIOS`.

Idempotent: an edit already made is left as it is. Usage: bench-responses-patch.py BENCH_DIR
"""

import pathlib
import sys

bench = pathlib.Path(sys.argv[1])
MARK = "// responses: patched for claude-relay"
GEMINI_MARK = "// gemini: patched for claude-relay"


def patch(path, edits):
    """Makes each edit (old, new[, probe]) unless it was made: its `new`, or its `probe` when a
    later edit rewrites that text, is already there."""
    text = path.read_text()
    for old, new, *probe in edits:
        if new in text or (probe and probe[0] in text):
            continue
        if old not in text:
            sys.exit(f"{path}: cannot find {old!r}; the bench changed, update this patch")
        text = text.replace(old, new, 1)
    path.write_text(text)


mock = bench / "mock-upstream/src/bin/mock_upstream.rs"
patch(
    mock,
    [
        (
            "fn oai_events(n: usize) -> Vec<Bytes> {",
            MARK
            + r'''
const RESP_JSON: &str = r#"{"id":"resp_mock_0001","object":"response","created_at":1700000000,"status":"completed","model":"gpt-mock","output":[{"type":"message","id":"msg_mock_0001","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello! This is a fixed reply from the benchmark mock upstream.","annotations":[]}]}],"usage":{"input_tokens":25,"input_tokens_details":{"cached_tokens":0},"output_tokens":16,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":41}}"#;

fn resp_events(n: usize) -> Vec<Bytes> {
    let mut v = Vec::with_capacity(n + 7);
    v.push(Bytes::from_static(b"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_mock_0001\",\"object\":\"response\",\"created_at\":1700000000,\"status\":\"in_progress\",\"model\":\"gpt-mock\",\"output\":[],\"usage\":null}}\n\n"));
    v.push(Bytes::from_static(b"event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":1,\"output_index\":0,\"item\":{\"type\":\"message\",\"id\":\"msg_mock_0001\",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}}\n\n"));
    v.push(Bytes::from_static(b"event: response.content_part.added\ndata: {\"type\":\"response.content_part.added\",\"sequence_number\":2,\"item_id\":\"msg_mock_0001\",\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[]}}\n\n"));
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!("token{i} "));
        v.push(Bytes::from(format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{},\"item_id\":\"msg_mock_0001\",\"output_index\":0,\"content_index\":0,\"delta\":\"token{i} \"}}\n\n",
            3 + i
        )));
    }
    let s = 3 + n;
    v.push(Bytes::from(format!("event: response.output_text.done\ndata: {{\"type\":\"response.output_text.done\",\"sequence_number\":{s},\"item_id\":\"msg_mock_0001\",\"output_index\":0,\"content_index\":0,\"text\":\"{text}\"}}\n\n")));
    let item = format!("{{\"type\":\"message\",\"id\":\"msg_mock_0001\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{{\"type\":\"output_text\",\"text\":\"{text}\",\"annotations\":[]}}]}}");
    v.push(Bytes::from(format!("event: response.output_item.done\ndata: {{\"type\":\"response.output_item.done\",\"sequence_number\":{},\"output_index\":0,\"item\":{item}}}\n\n", s + 1)));
    v.push(Bytes::from(format!(
        "event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":{},\"response\":{{\"id\":\"resp_mock_0001\",\"object\":\"response\",\"created_at\":1700000000,\"status\":\"completed\",\"model\":\"gpt-mock\",\"output\":[{item}],\"usage\":{{\"input_tokens\":25,\"input_tokens_details\":{{\"cached_tokens\":0}},\"output_tokens\":{n},\"output_tokens_details\":{{\"reasoning_tokens\":0}},\"total_tokens\":{}}}}}}}\n\n",
        s + 2,
        25 + n
    )));
    v
}

fn oai_events(n: usize) -> Vec<Bytes> {''',
            "fn resp_events",
        ),
        (
            "    let openai = path.ends_with(\"/chat/completions\");\n    if parts.method != Method::POST || !(anthropic || openai) {",
            "    let openai = path.ends_with(\"/chat/completions\");\n    let responses = path.ends_with(\"/responses\");\n    if parts.method != Method::POST || !(anthropic || openai || responses) {",
            "let responses = path.ends_with",
        ),
        (
            "    let responses = path.ends_with(\"/responses\");\n    if parts.method != Method::POST || !(anthropic || openai || responses) {",
            "    let responses = path.ends_with(\"/responses\");\n    let gemini_stream = path.contains(\":streamGenerateContent\");\n    let gemini = gemini_stream || path.contains(\":generateContent\");\n    if parts.method != Method::POST || !(anthropic || openai || responses || gemini) {",
        ),
        (
            "        let events = if deltas == cfg.deltas {",
            "        let events = if responses {\n            Arc::new(resp_events(deltas))\n        } else if deltas == cfg.deltas {",
            "Arc::new(resp_events(deltas))",
        ),
        (
            "    let stream = wants_stream(&body);",
            "    let stream = if gemini { gemini_stream } else { wants_stream(&body) };",
        ),
        (
            "        let events = if responses {\n            Arc::new(resp_events(deltas))\n        } else if deltas == cfg.deltas {",
            "        let events = if gemini {\n            Arc::new(gemini_events(deltas))\n        } else if responses {\n            Arc::new(resp_events(deltas))\n        } else if deltas == cfg.deltas {",
        ),
        (
            "        let b = if anthropic { cfg.anth_json.clone() } else { cfg.oai_json.clone() };",
            "        let b = if responses { Bytes::from_static(RESP_JSON.as_bytes()) } else if anthropic { cfg.anth_json.clone() } else { cfg.oai_json.clone() };",
            "Bytes::from_static(RESP_JSON.as_bytes())",
        ),
        (
            "        let b = if responses { Bytes::from_static(RESP_JSON.as_bytes()) }",
            "        let b = if gemini { Bytes::from_static(GEMINI_JSON.as_bytes()) } else if responses { Bytes::from_static(RESP_JSON.as_bytes()) }",
        ),
        (
            "fn oai_events(n: usize) -> Vec<Bytes> {",
            GEMINI_MARK
            + r'''
const GEMINI_JSON: &str = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello! This is a fixed reply from the benchmark mock upstream."}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":25,"candidatesTokenCount":16,"totalTokenCount":41},"modelVersion":"gemini-mock","responseId":"mock-0001"}"#;

fn gemini_events(n: usize) -> Vec<Bytes> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let last = i + 1 == n;
        let finish = if last { ",\"finishReason\":\"STOP\"" } else { "" };
        let out = if last { n } else { i + 1 };
        v.push(Bytes::from(format!(
            "data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"token{i} \"}}]}}{finish},\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":25,\"candidatesTokenCount\":{out},\"totalTokenCount\":{}}},\"modelVersion\":\"gemini-mock\",\"responseId\":\"mock-0001\"}}\r\n\r\n",
            25 + out
        )));
    }
    v
}

fn oai_events(n: usize) -> Vec<Bytes> {''',
            "fn gemini_events",
        ),
    ],
)

loadgen = bench / "mock-upstream/src/bin/ssebench.rs"
patch(
    loadgen,
    [
        (
            'let end_marker: &\'static [u8] = if !stream { b"usage" } else if openai {',
            MARK
            + '\n    let end_marker: &\'static [u8] = if !stream { b"usage" } else if url.contains("/responses") { b"response.completed" } else if openai {',
            'b"response.completed"',
        ),
        (
            'else if url.contains("/responses") { b"response.completed" }',
            'else if url.contains("/responses") { b"response.completed" } else if url.contains("GenerateContent") { b"finishReason" }',
        ),
    ],
)

compare = bench / "compare.sh"
patch(
    compare,
    [
        (
            "./bench.sh http://127.0.0.1:18080/v1/messages sk-direct\n",
            "./bench.sh http://127.0.0.1:18080${FLOOR_PATH:-/v1/messages} sk-direct\n",
        ),
        (
            "./bench.sh http://127.0.0.1:18180/v1/messages sk-direct | tail -n +2\n",
            "./bench.sh http://127.0.0.1:18180${FLOOR_PATH:-/v1/messages} sk-direct | tail -n +2\n",
        ),
        (
            'export SCENARIOS="ns_c1 st_c1 ns_c st_c ns_rhi"',
            'export SCENARIOS="${CAPACITY_SCENARIOS:-ns_c1 st_c1 ns_c st_c ns_rhi}"',
        ),
    ],
)
