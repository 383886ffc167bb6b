//! An incremental Server-Sent Events decoder that accepts the stream in arbitrary byte chunks.
//!
//! The relay forwards upstream chunks to the client untouched; this decoder only *observes* them to
//! read usage. It therefore borrows the event name and data to the callback instead of allocating
//! an event per frame, and keeps just the unfinished line between chunks.
//!
//! What it keeps is bounded by [`MAX_EVENT_BYTES`]: a line or an event larger than that is
//! skipped (the bytes still reach the client; only reading them is given up), and
//! [`SseDecoder::overflowed`] says so.

/// The largest line or event the decoder reads; Anthropic's events are a few KiB.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Decodes SSE frames per the WHATWG rules: lines end in `\n`, `\r\n` or `\r`; `event:` names the
/// event, `data:` lines accumulate joined by `\n`, a blank line dispatches, `:` starts a comment.
#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    /// The previous chunk ended in `\r`: a `\n` at the start of the next one belongs to it.
    skip_lf: bool,
    /// The current line grew past the bound: drop it up to its end.
    skipping_line: bool,
    /// The current event grew past the bound: drop it up to the blank line that ends it.
    skipping_event: bool,
    overflowed: bool,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk; calls `on_event(event_name, data)` for each complete event. An event
    /// without an `event:` field is reported with the name `message`, as the standard says.
    pub fn feed(&mut self, chunk: &[u8], on_event: &mut dyn FnMut(&str, &str)) {
        let mut rest = chunk;
        // An empty chunk says nothing about whether a `\r` is followed by `\n`.
        if self.skip_lf && !rest.is_empty() {
            self.skip_lf = false;
            if let Some(stripped) = rest.strip_prefix(b"\n") {
                rest = stripped;
            }
        }
        while let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            let (line_part, after) = rest.split_at(end);
            let terminator = after[0];
            rest = &after[1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    None => self.skip_lf = true,
                    Some(_) => {}
                }
            }
            if self.skipping_line {
                self.skipping_line = false;
                self.line.clear();
            } else if self.line.len() + line_part.len() > MAX_EVENT_BYTES {
                // The bound a line still arriving is held to (below), applied to a line that
                // arrived whole too: where the chunks happen to end must change nothing.
                self.overflow();
                self.line = Vec::new();
            } else if self.line.is_empty() {
                self.process_line(line_part, on_event);
            } else {
                self.line.extend_from_slice(line_part);
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, on_event);
                self.line = line;
                self.line.clear();
            }
        }
        if self.skipping_line {
            return;
        }
        if self.line.len() + rest.len() > MAX_EVENT_BYTES {
            self.overflow();
            self.skipping_line = true;
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(rest);
    }

    /// Whether a line or an event was too large to read (and was skipped).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        self.skipping_event = true;
        self.data = String::new();
        self.event.clear();
        self.has_data = false;
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut dyn FnMut(&str, &str)) {
        if line.is_empty() {
            if self.has_data && !self.skipping_event {
                let name = if self.event.is_empty() {
                    "message"
                } else {
                    self.event.as_str()
                };
                on_event(name, &self.data);
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            self.skipping_event = false;
            return;
        }
        if line[0] == b':' || self.skipping_event {
            return;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => {
                self.event.clear();
                self.event.push_str(&value);
            }
            b"data" => {
                if self.data.len() + value.len() >= MAX_EVENT_BYTES {
                    self.overflow();
                    return;
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_in_pieces(input: &[u8], cuts: &[usize]) -> Vec<(String, String)> {
        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        let mut on_event = |name: &str, data: &str| events.push((name.to_owned(), data.to_owned()));
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.clamp(start, input.len());
            decoder.feed(&input[start..cut], &mut on_event);
            start = cut;
        }
        decoder.feed(&input[start..], &mut on_event);
        events
    }

    #[test]
    fn decodes_anthropic_frames() {
        let input = b"event: message_start\ndata: {\"a\":1}\n\nevent: ping\ndata: {}\n\n: comment\ndata: x\ndata: y\n\n";
        let events = decode_in_pieces(input, &[]);
        assert_eq!(
            events,
            vec![
                ("message_start".into(), "{\"a\":1}".into()),
                ("ping".into(), "{}".into()),
                ("message".into(), "x\ny".into()),
            ]
        );
    }

    #[test]
    fn accepts_crlf_and_cr_line_endings() {
        let input = b"event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\r";
        let events = decode_in_pieces(input, &[]);
        assert_eq!(
            events,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
    }

    #[test]
    fn an_empty_chunk_between_cr_and_lf_does_not_split_the_line_ending() {
        let input = b"data: a\r\r\ndata: b\n\n";
        let whole = decode_in_pieces(input, &[]);
        // Cut after "data: a\r\r" twice: an empty chunk lands between the \r and the \n.
        let cut = input.iter().position(|b| *b == b'\n').unwrap();
        assert_eq!(decode_in_pieces(input, &[cut, cut]), whole);
        assert_eq!(
            whole,
            vec![
                ("message".into(), "a".into()),
                ("message".into(), "b".into())
            ]
        );
    }

    #[test]
    fn a_line_or_event_past_the_bound_is_skipped_and_reading_resumes_after_it() {
        let huge = "x".repeat(MAX_EVENT_BYTES + 10);
        for input in [
            format!("event: a\ndata: {huge}\n\nevent: b\ndata: 2\n\n"),
            format!(
                "event: a\n{}\nevent: b\ndata: 2\n\n",
                "data: yyyyyyyyyy\n".repeat(MAX_EVENT_BYTES / 10)
            ),
        ] {
            let mut decoder = SseDecoder::new();
            let mut events = Vec::new();
            for chunk in input.as_bytes().chunks(64 * 1024) {
                decoder.feed(chunk, &mut |name, data| {
                    events.push((name.to_owned(), data.to_owned()));
                });
                assert!(decoder.line.capacity() <= 2 * MAX_EVENT_BYTES);
            }
            assert!(decoder.overflowed());
            assert_eq!(events, vec![("b".to_owned(), "2".to_owned())]);
        }
    }

    #[test]
    fn a_line_past_the_bound_is_skipped_whether_it_arrives_whole_or_in_pieces() {
        // Found by the `sse_decoder` fuzz target: a long `event:` line inside one chunk was read
        // (and kept), while the same line cut across chunks was skipped.
        let long_name = "e".repeat(MAX_EVENT_BYTES + 10);
        let almost = "d".repeat(MAX_EVENT_BYTES - 3);
        for input in [
            format!("event: {long_name}\ndata: {{}}\n\nevent: b\ndata: 2\n\n"),
            // The value alone fits, the line with its field name does not.
            format!("event: a\ndata: {almost}\n\nevent: b\ndata: 2\n\n"),
            format!("event: a\ndata: 1\n: {long_name}\n\nevent: b\ndata: 2\n\n"),
        ] {
            let input = input.as_bytes();
            for cuts in [
                vec![],
                vec![MAX_EVENT_BYTES / 2],
                vec![100, MAX_EVENT_BYTES + 5],
            ] {
                let mut decoder = SseDecoder::new();
                let mut events = Vec::new();
                let mut start = 0;
                for end in cuts.into_iter().chain([input.len()]) {
                    decoder.feed(&input[start..end], &mut |name, data| {
                        events.push((name.to_owned(), data.to_owned()));
                    });
                    start = end;
                }
                assert!(decoder.overflowed());
                assert_eq!(events, vec![("b".to_owned(), "2".to_owned())]);
            }
        }
    }

    #[test]
    fn incomplete_event_is_not_dispatched() {
        let events = decode_in_pieces(b"event: a\ndata: 1\n", &[]);
        assert!(events.is_empty());
    }

    fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
        let line_end = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
        let field = prop_oneof![
            "[a-z_]{1,12}".prop_map(|name| format!("event: {name}")),
            "[ -~]{0,40}".prop_map(|data| format!("data: {data}")),
            "\\PC{0,20}".prop_map(|data| format!("data:{data}")),
            "[ -~]{0,20}".prop_map(|comment| format!(":{comment}")),
            Just(String::new()),
        ];
        proptest::collection::vec((field, line_end), 0..40).prop_map(|lines| {
            let mut out = String::new();
            for (line, end) in lines {
                // A line made only of a `\r` split from its `\n` would change meaning; fields
                // never contain line breaks, so joining is safe.
                out.push_str(&line);
                out.push_str(end);
            }
            out.into_bytes()
        })
    }

    proptest! {
        #[test]
        fn same_events_however_the_bytes_are_split(
            input in sse_stream(),
            cuts in proptest::collection::vec(0usize..2000, 0..30),
        ) {
            let whole = decode_in_pieces(&input, &[]);
            let mut cuts = cuts;
            cuts.sort_unstable();
            let pieces = decode_in_pieces(&input, &cuts);
            prop_assert_eq!(&whole, &pieces);
            let byte_by_byte = decode_in_pieces(&input, &(0..input.len()).collect::<Vec<_>>());
            prop_assert_eq!(whole, byte_by_byte);
        }
    }
}
