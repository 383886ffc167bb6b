//! The SSE decoder yields the same events (and the same overflow verdict) however the stream is
//! cut into chunks, never an event past its bound, and holds memory bounded by
//! `MAX_EVENT_BYTES`, not by the stream's length.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use claude_relay_fuzz::{cut_points, excerpt, expand_runs, pieces};
use libfuzzer_sys::fuzz_target;
use relay_protocol::sse::{SseDecoder, MAX_EVENT_BYTES};

/// Counts the bytes allocated and live, and the peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc(layout);
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc_zeroed(layout);
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        System.dealloc(pointer, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = System.realloc(pointer, layout, new_size);
        if !moved.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What the decoder may hold at once reading UTF-8: the unfinished line, the event's name and its
/// data, each under `MAX_EVENT_BYTES` and allocated with at most twice that (a `Vec` grows by
/// doubling), and some slack. A decoder that kept a line or data past the bound would exceed it
/// on the longest streams the runs make (`MAX_STREAM`, 10 MiB).
const MEMORY_BOUND_UTF8: usize = 7 * MAX_EVENT_BYTES;
/// The same for any bytes: a line with invalid UTF-8 is also copied with each bad byte replaced
/// by U+FFFD (3 bytes), and the event name kept in that form.
const MEMORY_BOUND: usize = 16 * MAX_EVENT_BYTES;

/// One event, without the copy: its name and data hashed, and their lengths.
type Event = (u64, usize, usize);

struct Decoded {
    events: Vec<Event>,
    overflowed: bool,
    /// The most bytes allocated at once while decoding (events are not copied).
    peak_memory: usize,
}

fn decode(stream: &[u8], cuts: &[usize]) -> Decoded {
    let mut events = Vec::with_capacity(64);
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut decoder = SseDecoder::new();
    for piece in pieces(stream, cuts) {
        decoder.feed(piece, &mut |name, data| {
            assert!(!name.is_empty(), "an event without a name");
            assert!(
                data.len() < MAX_EVENT_BYTES,
                "an event of {} bytes",
                data.len()
            );
            let mut hasher = DefaultHasher::new();
            (name, data).hash(&mut hasher);
            events.push((hasher.finish(), name.len(), data.len()));
        });
    }
    let peak_memory = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    Decoded {
        events,
        overflowed: decoder.overflowed(),
        peak_memory,
    }
}

/// The events themselves, for a failure message.
fn describe(stream: &[u8], cuts: &[usize]) -> String {
    let mut decoder = SseDecoder::new();
    let mut text = String::new();
    let mut count = 0;
    for piece in pieces(stream, cuts) {
        decoder.feed(piece, &mut |name, data| {
            count += 1;
            if count <= 8 {
                text.push_str(&format!("\n  {} {}", excerpt(name, 40), excerpt(data, 80)));
            }
        });
    }
    format!(
        "overflowed: {}, {count} events:{text}",
        decoder.overflowed()
    )
}

fn assert_same(stream: &[u8], cuts: &[usize], whole: &Decoded, split: &Decoded) {
    assert!(
        whole.events == split.events && whole.overflowed == split.overflowed,
        "cut at {cuts:?} of {}:\nwhole: {}\nsplit: {}",
        stream.len(),
        describe(stream, &[]),
        describe(stream, cuts)
    );
}

fuzz_target!(|input: &[u8]| {
    let stream = expand_runs(input);
    let cuts = cut_points(input, stream.len());

    let whole = decode(&stream, &[]);
    let split = decode(&stream, &cuts);
    assert_same(&stream, &cuts, &whole, &split);
    if stream.len() <= 4096 {
        let every_byte: Vec<usize> = (0..stream.len()).collect();
        assert_same(&stream, &every_byte, &whole, &decode(&stream, &every_byte));
    }
    let bound = if std::str::from_utf8(&stream).is_ok() {
        MEMORY_BOUND_UTF8
    } else {
        MEMORY_BOUND
    };
    for (decoded, cuts) in [(&whole, &[][..]), (&split, &cuts[..])] {
        assert!(
            decoded.peak_memory <= bound,
            "the decoder held {} bytes reading {} (cut at {cuts:?})",
            decoded.peak_memory,
            stream.len()
        );
    }
});
