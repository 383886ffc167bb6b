//! Golden tests of the dialect conversions: every `tests/golden/<direction>/<name>.input.*` is
//! converted and compared with `<name>.expected.json` / `.expected.sse`. With `UPDATE_GOLDEN=1`
//! the expected files are rewritten instead (review the diff before committing it).
//!
//! The name says what is converted: `request_*` (a client request; `*_mapped_*` converts with
//! the model mapped to `mapped-model`), `response_*` (a whole upstream body), `stream_*` (an
//! upstream SSE stream, fed in several chunkings that must all agree; for
//! `openai_chat_from_anthropic`, `*_usage` translates for a client that asked for usage; for
//! `gemini_from_anthropic`, `*_sse` for a client that asked for SSE, else the JSON array), and
//! `error_<status>_*` (an upstream error body with that status). A conversion that fails is
//! recorded as `{"convert_error": message}`.

#![allow(clippy::unwrap_used, clippy::panic)] // test code: a failure should stop the test.

use std::fs;
use std::path::{Path, PathBuf};

use relay_protocol::convert::{self, ConvertError, RequestOptions, Translate};

const DIRECTIONS: &[&str] = &[
    "openai_chat_from_anthropic",
    "anthropic_from_openai_chat",
    "anthropic_from_gemini",
    "gemini_from_anthropic",
];

fn options(direction: &str, name: &str) -> RequestOptions<'static> {
    // A Gemini request names its model in the path: the relay always passes it.
    let path_model = (direction == "anthropic_from_gemini").then_some("gemini-2.5-flash");
    RequestOptions {
        model: name
            .contains("_mapped_")
            .then_some("mapped-model")
            .or(path_model),
        default_max_tokens: 8192,
    }
}

fn pretty(bytes: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap() + "\n",
        Err(_) => format!("NOT JSON: {}\n", String::from_utf8_lossy(bytes)),
    }
}

fn converted(result: Result<Vec<u8>, ConvertError>) -> String {
    match result {
        Ok(bytes) => pretty(&bytes),
        Err(error) => pretty(
            &serde_json::to_vec(&serde_json::json!({"convert_error": error.message})).unwrap(),
        ),
    }
}

fn translate(translator: &mut dyn Translate, input: &[u8], chunk: usize) -> String {
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        translator.push(piece, &mut out);
    }
    translator.finish(&mut out);
    String::from_utf8(out).unwrap()
}

fn stream(direction: &str, name: &str, input: &[u8]) -> String {
    let runs: Vec<String> = [1, 5, 64, input.len().max(1)]
        .into_iter()
        .map(|chunk| match direction {
            "openai_chat_from_anthropic" => translate(
                &mut convert::openai_chat::from_anthropic::StreamTranslator::new(
                    name.ends_with("_usage"),
                ),
                input,
                chunk,
            ),
            "anthropic_from_gemini" => translate(
                &mut convert::anthropic::from_gemini::StreamTranslator::new(),
                input,
                chunk,
            ),
            // `*_sse`: the Gemini client asked for SSE; otherwise it reads one JSON array.
            "gemini_from_anthropic" => translate(
                &mut convert::gemini::from_anthropic::StreamTranslator::new(name.ends_with("_sse")),
                input,
                chunk,
            ),
            _ => translate(
                &mut convert::anthropic::from_openai_chat::StreamTranslator::new(),
                input,
                chunk,
            ),
        })
        .collect();
    for run in &runs[1..] {
        assert_eq!(
            run, &runs[0],
            "{direction}/{name}: output depends on chunking"
        );
    }
    runs[0].clone()
}

fn output(direction: &str, name: &str, input: &[u8]) -> (String, &'static str) {
    if name.starts_with("stream_") {
        return (stream(direction, name, input), "sse");
    }
    let text = if let Some(rest) = name.strip_prefix("error_") {
        let status: u16 = rest.split('_').next().unwrap().parse().unwrap();
        pretty(&match direction {
            "openai_chat_from_anthropic" => {
                convert::openai_chat::from_anthropic::error(status, input)
            }
            "anthropic_from_gemini" => convert::anthropic::from_gemini::error(status, input),
            "gemini_from_anthropic" => convert::gemini::from_anthropic::error(status, input),
            _ => convert::anthropic::from_openai_chat::error(status, input),
        })
    } else if name.starts_with("request_") {
        converted(match direction {
            "openai_chat_from_anthropic" => {
                convert::openai_chat::from_anthropic::request(input, &options(direction, name))
            }
            "anthropic_from_gemini" => {
                convert::anthropic::from_gemini::request(input, &options(direction, name))
            }
            "gemini_from_anthropic" => {
                convert::gemini::from_anthropic::request(input, &options(direction, name))
            }
            _ => convert::anthropic::from_openai_chat::request(input, &options(direction, name)),
        })
    } else if name.starts_with("response_") {
        converted(match direction {
            "openai_chat_from_anthropic" => convert::openai_chat::from_anthropic::response(input),
            "anthropic_from_gemini" => convert::anthropic::from_gemini::response(input),
            "gemini_from_anthropic" => convert::gemini::from_anthropic::response(input),
            _ => convert::anthropic::from_openai_chat::response(input),
        })
    } else {
        panic!(
            "{direction}/{name}: the name must start with request_, response_, stream_ or error_"
        );
    };
    (text, "json")
}

fn inputs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let file = path.file_name()?.to_str()?.to_owned();
            let (name, _) = file.split_once(".input.")?;
            Some((name.to_owned(), path))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn golden_conversions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|value| value == "1");
    let mut failures = Vec::new();
    let mut checked = 0;
    for direction in DIRECTIONS {
        let dir = root.join(direction);
        for (name, path) in inputs(&dir) {
            let input = fs::read(&path).unwrap();
            let (actual, extension) = output(direction, &name, &input);
            let expected_path = dir.join(format!("{name}.expected.{extension}"));
            checked += 1;
            if update {
                fs::write(&expected_path, &actual).unwrap();
                continue;
            }
            let expected = fs::read_to_string(&expected_path).unwrap_or_default();
            if expected != actual {
                failures.push(format!(
                    "{direction}/{name}: differs from {}\n--- actual ---\n{actual}",
                    expected_path.display()
                ));
            }
        }
    }
    assert!(checked >= 20, "only {checked} golden fixtures found");
    assert!(
        failures.is_empty(),
        "{} golden mismatches (UPDATE_GOLDEN=1 rewrites them):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
