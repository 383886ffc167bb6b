//! A key policy read from JSON validates without panicking and survives a round trip through
//! its own JSON; the CLI's dollar, duration and date parsers never panic, and a dollar amount is
//! never negative.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::policy::{parse_date_ms, parse_duration_secs, parse_usd, KeyPolicy};

claude_relay_fuzz::sanitizer_defaults!();

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);

    if let Ok(policy) = KeyPolicy::from_json(&text) {
        let verdict = policy.validate();
        let json = policy.to_json();
        let again = KeyPolicy::from_json(&json)
            .unwrap_or_else(|error| panic!("its own JSON {json} does not read back: {error}"));
        assert_eq!(again, policy, "through {json}");
        assert_eq!(again.validate(), verdict);
    }

    if let Ok(nanos) = parse_usd(&text) {
        assert!(nanos >= 0, "{text:?} read as {nanos} nano-USD");
    }
    let _ = parse_duration_secs(&text);
    let _ = parse_date_ms(&text);
});
