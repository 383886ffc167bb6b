//! The Anthropic mock after the shared-behaviour refactor: streams, scripted errors and cuts
//! still work as before, through both `Behavior` paths.

mod common;

use common::send;
use relay_testkit::MockUpstream;
use serde_json::json;

#[tokio::test]
async fn stream_status_and_abort() {
    let mock = MockUpstream::start().await;
    mock.script(
        "sk-ant",
        [
            relay_testkit::Behavior::status_with_headers(429, &[("retry-after", "3")]),
            relay_testkit::anthropic::Behavior::AbortAfterEvents(2),
        ],
    );
    let url = format!("{}/v1/messages", mock.url());
    let body = json!({"model": "claude-x", "stream": true, "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]});

    let limited = send("POST", &url, Some("sk-ant"), Some(&body)).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("3"));
    assert_eq!(limited.json()["error"]["type"], "rate_limit_error");

    let cut = send("POST", &url, Some("sk-ant"), Some(&body)).await;
    assert!(!cut.complete);
    assert_eq!(cut.events().len(), 2);

    let whole = send("POST", &url, Some("sk-ant"), Some(&body)).await;
    assert!(whole.complete);
    assert!(whole.body.contains("event: message_stop"));
    assert!(whole.body.contains("MOCK_OK"));
    assert_eq!(mock.count_for("sk-ant"), 3);
}
