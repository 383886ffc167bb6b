//! Usage read from a Messages response, streamed or whole, is bounded per kind by
//! `MAX_REPORTED_TOKENS` (so no sum built from it can wrap), and a stream gives the same usage,
//! model, ending and fault however it is cut into chunks.

#![no_main]

use claude_relay_fuzz::{cut_points, expand_runs, pieces};
use libfuzzer_sys::fuzz_target;
use relay_protocol::anthropic::{MessagesUsageTracker, StreamEnding};
use relay_protocol::usage::MAX_REPORTED_TOKENS;
use relay_protocol::Usage;

/// The tracker believes no longer model name (`MAX_MODEL_NAME` in the tracker).
const MAX_MODEL_NAME: usize = 256;

fn assert_bounded(tracker: &MessagesUsageTracker) {
    let usage: Usage = tracker.usage();
    let kinds = [
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
        ("cache 5m", usage.cache_creation_5m_tokens),
        ("cache 1h", usage.cache_creation_1h_tokens),
        ("cache read", usage.cache_read_tokens),
    ];
    for (kind, count) in kinds {
        assert!(count <= MAX_REPORTED_TOKENS, "{kind} tokens: {count}");
    }
    // Five bounded counts cannot saturate: the total is their exact sum.
    let exact: u64 = kinds.iter().map(|(_, count)| count).sum();
    assert_eq!(usage.total_tokens(), exact);
    assert_eq!(
        usage.prompt_tokens(),
        exact - usage.output_tokens,
        "{usage:?}"
    );
    assert_eq!(usage.is_empty(), exact == 0);
    assert!(tracker.model().map_or(0, str::len) <= MAX_MODEL_NAME);
}

fn track(stream: &[u8], cuts: &[usize]) -> MessagesUsageTracker {
    let mut tracker = MessagesUsageTracker::new();
    for piece in pieces(stream, cuts) {
        tracker.observe_sse_chunk(piece);
        assert_bounded(&tracker);
    }
    tracker
}

fuzz_target!(|input: &[u8]| {
    let stream = expand_runs(input);
    let cuts = cut_points(input, stream.len());

    let mut whole = track(&stream, &[]);
    let split = track(&stream, &cuts);
    assert_eq!(whole.usage(), split.usage(), "cut at {cuts:?}");
    assert_eq!(whole.model(), split.model());
    assert_eq!(whole.ending(), split.ending());
    assert_eq!(whole.fault(), split.fault());
    assert_eq!(whole.saw_usage(), split.saw_usage());
    if !whole.saw_usage() {
        assert!(whole.usage().is_empty());
    }

    let mut body = MessagesUsageTracker::new();
    if body.observe_json_body(input) {
        assert_eq!(body.ending(), &StreamEnding::Completed);
    } else {
        assert!(body.usage().is_empty() && body.model().is_none());
    }
    assert_bounded(&body);

    // A body read after a stream (a tracker that was handed both) stays bounded too.
    whole.observe_json_body(input);
    assert_bounded(&whole);
});
