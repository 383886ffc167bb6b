//! What the fuzz targets share: turning one fuzz input into a stream and the points it is cut at.
//!
//! libFuzzer's inputs are a few KiB, but the SSE decoder's bound ([`MAX_EVENT_BYTES`], 1 MiB) is
//! only reached by larger streams. So a stream may carry *runs*: the bytes `0xFF n b` stand for
//! `b` repeated [`run_length`]`(n)` times, 32 bytes to 16 MiB. `0xFF` never occurs in UTF-8
//! text, so real-looking inputs read as themselves. Long streams are slow to fuzz (every byte
//! compared is traced), so most run lengths are short: only a quarter of `n` reach 1 MiB.
//!
//! [`MAX_EVENT_BYTES`]: relay_protocol::sse::MAX_EVENT_BYTES

/// The byte that starts a run.
pub const RUN: u8 = 0xFF;
/// Runs stop expanding once the stream is this long (the rest is taken as it is).
pub const MAX_STREAM: usize = 10 * 1024 * 1024;

/// How many bytes the run `0xFF n b` stands for: `(n % 16 + 1) << (n / 16 + 5)`, so `0xBF` is
/// 1 MiB, `0xC8` 1.125 MiB and `0xCF` 2 MiB.
pub fn run_length(n: u8) -> usize {
    (usize::from(n & 0x0F) + 1) << (usize::from(n >> 4) + 5)
}

/// The stream an input stands for: the input with its runs expanded.
pub fn expand_runs(input: &[u8]) -> Vec<u8> {
    let mut stream = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.iter().position(|byte| *byte == RUN) {
        stream.extend_from_slice(&rest[..at]);
        match rest.get(at + 1..at + 3) {
            Some(&[count, byte]) => {
                let length = run_length(count);
                if stream.len() + length <= MAX_STREAM {
                    stream.resize(stream.len() + length, byte);
                }
                rest = &rest[at + 3..];
            }
            _ => {
                stream.extend_from_slice(&rest[at..]);
                rest = &[];
            }
        }
    }
    stream.extend_from_slice(rest);
    stream
}

/// Up to four cut points in `0..=len`, sorted, read from the input's first 16 bytes (so that
/// the fuzzer steers them, and a seed reads as the stream it is).
pub fn cut_points(input: &[u8], len: usize) -> Vec<usize> {
    let modulus = u64::try_from(len).unwrap_or(u64::MAX).saturating_add(1);
    let mut cuts: Vec<usize> = input
        .chunks(4)
        .take(4)
        .map(|word| {
            let mut bytes = [0u8; 4];
            bytes[..word.len()].copy_from_slice(word);
            let cut = u64::from(u32::from_le_bytes(bytes)) % modulus;
            usize::try_from(cut).unwrap_or(len)
        })
        .collect();
    cuts.sort_unstable();
    cuts
}

/// The pieces of `stream` between the cuts (empty pieces included: a chunk may be empty).
pub fn pieces<'a>(stream: &'a [u8], cuts: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let ends = cuts.iter().copied().chain(std::iter::once(stream.len()));
    let mut start = 0;
    ends.map(move |end| {
        let end = end.clamp(start, stream.len());
        let piece = &stream[start..end];
        start = end;
        piece
    })
}

/// `text` cut to at most `max` bytes (on a character boundary), for failure messages.
pub fn excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return format!("{text:?}");
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &text[..end], text.len())
}

/// Sets AddressSanitizer's defaults for a target that links SQLite (through `relay-core` and
/// `relay-store`). The bundled `sqlite3.c` has two function-local `static` arrays named `aiOff`
/// of the same size, which ASan's default one-definition-rule check (`detect_odr_violation=2`)
/// reports at start-up; level 1 still reports a global defined twice with different sizes.
#[macro_export]
macro_rules! sanitizer_defaults {
    () => {
        #[no_mangle]
        pub extern "C" fn __asan_default_options() -> *const ::std::ffi::c_char {
            c"detect_odr_violation=1".as_ptr()
        }
    };
}
