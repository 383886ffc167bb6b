//! The built-in price table and the cost of one request, in integer nano-USD so bills add up
//! exactly (no float drift across millions of records).
//!
//! Prices are Anthropic's and OpenAI's list prices per million tokens as published on their
//! pricing pages (Claude checked 2026-11; the GPT families at their published list prices).
//! OpenAI bills no cache writes: its cache-write rates equal its input rate. A model not in the table is *unpriced*: its tokens are still recorded, and
//! the record says it has no cost instead of pretending it cost $0.

use relay_protocol::Usage;

/// Prices of one model in nano-USD per token (numerically: USD per million tokens × 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPrice {
    pub input: u64,
    pub output: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
    pub cache_read: u64,
}

/// A model whose long prompts are billed at a higher rate for every token of the request.
#[derive(Debug, Clone, Copy)]
struct LongContext {
    threshold_prompt_tokens: u64,
    price: ModelPrice,
}

#[derive(Debug, Clone, Copy)]
struct PriceEntry {
    models: &'static [&'static str],
    price: ModelPrice,
    long_context: Option<LongContext>,
    /// The most output tokens one response can have (with every output beta), for estimates.
    max_output: u64,
}

/// Output ceilings: generous on purpose, since an estimate must never be below the bill.
const OUTPUT_CURRENT: u64 = 128_000;
const OUTPUT_CLAUDE_3_5: u64 = 8_192;
const OUTPUT_CLAUDE_3: u64 = 4_096;

const fn usd_per_mtok(
    input: u64,
    output: u64,
    write_5m: u64,
    write_1h: u64,
    read: u64,
) -> ModelPrice {
    // Arguments are in tenths of a cent per million tokens (e.g. $6.25 → 6250), which equals
    // nano-USD per token.
    ModelPrice {
        input,
        output,
        cache_write_5m: write_5m,
        cache_write_1h: write_1h,
        cache_read: read,
    }
}

const OPUS_NEW: ModelPrice = usd_per_mtok(5_000, 25_000, 6_250, 10_000, 500);
const OPUS_OLD: ModelPrice = usd_per_mtok(15_000, 75_000, 18_750, 30_000, 1_500);
const SONNET: ModelPrice = usd_per_mtok(3_000, 15_000, 3_750, 6_000, 300);
const SONNET_LONG: LongContext = LongContext {
    threshold_prompt_tokens: 200_000,
    price: usd_per_mtok(6_000, 22_500, 7_500, 12_000, 600),
};

/// An OpenAI price: input, output and cached input; prompt caching there costs nothing to write.
const fn openai(input: u64, output: u64, cached: u64) -> ModelPrice {
    usd_per_mtok(input, output, input, input, cached)
}

/// A Gemini price: input and output; a cached read costs a tenth of input, a write nothing more.
const fn gemini(input: u64, output: u64) -> ModelPrice {
    usd_per_mtok(input, output, input, input, input / 10)
}

const GEMINI_OUTPUT: u64 = 65_536;

const PRICES: &[PriceEntry] = &[
    PriceEntry {
        models: &[
            "claude-opus-5",
            "claude-opus-4-8",
            "claude-opus-4-7",
            "claude-opus-4-6",
            "claude-opus-4-5",
        ],
        price: OPUS_NEW,
        max_output: OUTPUT_CURRENT,
        long_context: None,
    },
    PriceEntry {
        models: &[
            "claude-opus-4-1",
            "claude-opus-4",
            "claude-opus-4-0",
            "claude-3-opus",
        ],
        price: OPUS_OLD,
        max_output: OUTPUT_CURRENT,
        long_context: None,
    },
    PriceEntry {
        models: &["claude-sonnet-4-6"],
        price: SONNET,
        max_output: OUTPUT_CURRENT,
        long_context: None,
    },
    PriceEntry {
        models: &["claude-sonnet-4-5", "claude-sonnet-4", "claude-sonnet-4-0"],
        price: SONNET,
        max_output: OUTPUT_CURRENT,
        long_context: Some(SONNET_LONG),
    },
    PriceEntry {
        models: &["claude-3-7-sonnet", "claude-3-5-sonnet"],
        price: SONNET,
        max_output: OUTPUT_CURRENT,
        long_context: None,
    },
    PriceEntry {
        models: &["claude-haiku-4-5"],
        price: usd_per_mtok(1_000, 5_000, 1_250, 2_000, 100),
        max_output: OUTPUT_CURRENT,
        long_context: None,
    },
    PriceEntry {
        models: &["claude-3-5-haiku"],
        price: usd_per_mtok(800, 4_000, 1_000, 1_600, 80),
        max_output: OUTPUT_CLAUDE_3_5,
        long_context: None,
    },
    PriceEntry {
        models: &["claude-3-haiku"],
        price: usd_per_mtok(250, 1_250, 300, 500, 30),
        max_output: OUTPUT_CLAUDE_3,
        long_context: None,
    },
    PriceEntry {
        models: &[
            "gpt-5",
            "gpt-5-chat",
            "gpt-5.1",
            "gpt-5-codex",
            "gpt-5.1-codex",
        ],
        price: openai(1_250, 10_000, 125),
        max_output: 128_000,
        long_context: None,
    },
    PriceEntry {
        models: &["gpt-5-mini", "gpt-5.1-codex-mini"],
        price: openai(250, 2_000, 25),
        max_output: 128_000,
        long_context: None,
    },
    PriceEntry {
        models: &["gpt-5-nano"],
        price: openai(50, 400, 5),
        max_output: 128_000,
        long_context: None,
    },
    PriceEntry {
        models: &["gpt-4.1"],
        price: openai(2_000, 8_000, 500),
        max_output: 32_768,
        long_context: None,
    },
    PriceEntry {
        models: &["gpt-4.1-mini"],
        price: openai(400, 1_600, 100),
        max_output: 32_768,
        long_context: None,
    },
    PriceEntry {
        models: &["gpt-4.1-nano"],
        price: openai(100, 400, 25),
        max_output: 32_768,
        long_context: None,
    },
    PriceEntry {
        models: &["gpt-4o", "chatgpt-4o"],
        price: openai(2_500, 10_000, 1_250),
        max_output: 16_384,
        long_context: None,
    },
    PriceEntry {
        models: &["gpt-4o-mini"],
        price: openai(150, 600, 75),
        max_output: 16_384,
        long_context: None,
    },
    // Google's list prices (implicit context caching: reads at a tenth of input, no write
    // charge); the Pro models bill every token of a prompt over 200k tokens at their long rate.
    PriceEntry {
        models: &["gemini-3-pro-preview", "gemini-3-pro"],
        price: gemini(2_000, 12_000),
        max_output: GEMINI_OUTPUT,
        long_context: Some(LongContext {
            threshold_prompt_tokens: 200_000,
            price: gemini(4_000, 18_000),
        }),
    },
    PriceEntry {
        models: &["gemini-2.5-pro"],
        price: gemini(1_250, 10_000),
        max_output: GEMINI_OUTPUT,
        long_context: Some(LongContext {
            threshold_prompt_tokens: 200_000,
            price: gemini(2_500, 15_000),
        }),
    },
    PriceEntry {
        models: &["gemini-2.5-flash"],
        price: gemini(300, 2_500),
        max_output: GEMINI_OUTPUT,
        long_context: None,
    },
    PriceEntry {
        models: &["gemini-2.5-flash-lite", "gemini-2.0-flash"],
        price: gemini(100, 400),
        max_output: GEMINI_OUTPUT,
        long_context: None,
    },
    PriceEntry {
        models: &["o3"],
        price: openai(2_000, 8_000, 500),
        max_output: 100_000,
        long_context: None,
    },
    PriceEntry {
        models: &["o4-mini", "o3-mini"],
        price: openai(1_100, 4_400, 275),
        max_output: 100_000,
        long_context: None,
    },
];

/// The models the table knows, for `GET /v1/models`.
pub fn known_models() -> impl Iterator<Item = &'static str> {
    PRICES.iter().flat_map(|entry| entry.models.iter().copied())
}

fn entry_for(model: &str) -> Option<&'static PriceEntry> {
    let name = crate::model::canonical(model);
    PRICES
        .iter()
        .find(|entry| entry.models.iter().any(|known| *known == name))
}

/// The most output tokens a response of `model` can have, if the table knows the model.
pub fn max_output_tokens(model: &str) -> Option<u64> {
    entry_for(model).map(|entry| entry.max_output)
}

/// The output a model without a known maximum is assumed to stop at when a request sets no
/// limit (a conversion sends this limit; a pass-through is estimated with it).
pub const UNKNOWN_MODEL_OUTPUT: u64 = 32_768;

/// The most output one answer to a request can have: its `max_tokens` (at most the model's
/// maximum), else the model's maximum, else [`UNKNOWN_MODEL_OUTPUT`]. The cost estimate and the
/// limit a conversion sends both come from here, so a request never gets more than was reserved.
pub fn output_limit(model: &str, requested: Option<u64>) -> u64 {
    let maximum = max_output_tokens(model);
    match requested {
        Some(requested) => requested.min(maximum.unwrap_or(u64::MAX)),
        None => maximum.unwrap_or(UNKNOWN_MODEL_OUTPUT),
    }
}

/// What a request costs *against a key's limits*: its price, or for a model the table does not
/// know, the price of `unpriced_as` (the operator's choice) or else of the dearest model of its
/// family (`opus`, `sonnet`, `haiku`), or of the whole table. Never free. (The usage record of
/// such a request still says "unpriced".)
pub fn limit_cost_nano_usd(model: &str, usage: &Usage, unpriced_as: Option<&str>) -> i64 {
    if let Some(cost) = cost_nano_usd(model, usage) {
        return cost;
    }
    if let Some(cost) = unpriced_as.and_then(|stand_in| cost_nano_usd(stand_in, usage)) {
        return cost;
    }
    let family = crate::model::family(model);
    let dearest = |entries: &mut dyn Iterator<Item = &PriceEntry>| {
        entries.map(|entry| entry.cost_nano_usd(usage)).max()
    };
    family
        .and_then(|family| {
            dearest(
                &mut PRICES
                    .iter()
                    .filter(|entry| entry.models[0].contains(family)),
            )
        })
        .or_else(|| dearest(&mut PRICES.iter()))
        .unwrap_or(i64::MAX)
}

/// The price that applies to this request, or `None` if the model is not in the table.
pub fn price_for(model: &str, usage: &Usage) -> Option<ModelPrice> {
    entry_for(model).map(|entry| entry.price_for(usage))
}

impl PriceEntry {
    fn price_for(&self, usage: &Usage) -> ModelPrice {
        match self.long_context {
            Some(long) if usage.prompt_tokens() > long.threshold_prompt_tokens => long.price,
            _ => self.price,
        }
    }

    fn cost_nano_usd(&self, usage: &Usage) -> i64 {
        let price = self.price_for(usage);
        let total = u128::from(usage.input_tokens) * u128::from(price.input)
            + u128::from(usage.output_tokens) * u128::from(price.output)
            + u128::from(usage.cache_creation_5m_tokens) * u128::from(price.cache_write_5m)
            + u128::from(usage.cache_creation_1h_tokens) * u128::from(price.cache_write_1h)
            + u128::from(usage.cache_read_tokens) * u128::from(price.cache_read);
        i64::try_from(total).unwrap_or(i64::MAX)
    }
}

/// The cost of a request in nano-USD, or `None` if its model has no price.
pub fn cost_nano_usd(model: &str, usage: &Usage) -> Option<i64> {
    entry_for(model).map(|entry| entry.cost_nano_usd(usage))
}

/// Formats nano-USD as a decimal dollar amount with nine places, exactly.
pub fn format_usd(nano_usd: i64) -> String {
    let sign = if nano_usd < 0 { "-" } else { "" };
    let magnitude = nano_usd.unsigned_abs();
    format!(
        "{sign}{}.{:09}",
        magnitude / 1_000_000_000,
        magnitude % 1_000_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_drop_dates_and_markers() {
        assert_eq!(
            crate::model::canonical("claude-sonnet-4-5-20250929"),
            "claude-sonnet-4-5"
        );
        assert_eq!(
            crate::model::canonical("Claude-Opus-4-8[1m]"),
            "claude-opus-4-8"
        );
        assert_eq!(
            crate::model::canonical("claude-3-5-haiku-latest"),
            "claude-3-5-haiku"
        );
        assert_eq!(
            crate::model::canonical("claude-haiku-4-5"),
            "claude-haiku-4-5"
        );
    }

    #[test]
    fn gemini_prices_read_cache_at_a_tenth_and_bill_long_pro_prompts_at_the_long_rate() {
        let short = Usage {
            input_tokens: 100_000,
            cache_read_tokens: 50_000,
            output_tokens: 10_000,
            reasoning_tokens: 2_000,
            ..Usage::default()
        };
        // 100k × $1.25 + 50k × $0.125 + 10k × $10 per million.
        assert_eq!(cost_nano_usd("gemini-2.5-pro", &short), Some(231_250_000));
        let long = Usage {
            input_tokens: 250_000,
            ..short
        };
        // Over 200k prompt tokens: every token at $2.50 / $0.25 / $15.
        assert_eq!(cost_nano_usd("gemini-2.5-pro", &long), Some(787_500_000));
        assert_eq!(
            cost_nano_usd("gemini-2.5-flash", &short),
            Some(30_000_000 + 1_500_000 + 25_000_000)
        );
    }

    #[test]
    fn cost_counts_every_token_kind_at_its_own_price() {
        let usage = Usage {
            input_tokens: 1_000,
            output_tokens: 2_000,
            cache_creation_5m_tokens: 3_000,
            cache_creation_1h_tokens: 4_000,
            cache_read_tokens: 5_000,
            reasoning_tokens: 0,
        };
        // Sonnet 4.5: $3 in, $15 out, $3.75 5m write, $6 1h write, $0.30 read (per MTok).
        let expected = 1_000 * 3_000 + 2_000 * 15_000 + 3_000 * 3_750 + 4_000 * 6_000 + 5_000 * 300;
        assert_eq!(
            cost_nano_usd("claude-sonnet-4-5-20250929", &usage),
            Some(expected)
        );
        assert_eq!(format_usd(expected), "0.069750000");
    }

    #[test]
    fn long_prompts_switch_the_whole_request_to_the_long_context_price() {
        let usage = Usage {
            input_tokens: 150_000,
            cache_read_tokens: 60_000,
            output_tokens: 10,
            ..Usage::default()
        };
        let long = 150_000 * 6_000 + 60_000 * 600 + 10 * 22_500;
        assert_eq!(cost_nano_usd("claude-sonnet-4-5", &usage), Some(long));
        assert_eq!(
            cost_nano_usd("claude-sonnet-4-6", &usage),
            Some(150_000 * 3_000 + 60_000 * 300 + 10 * 15_000)
        );
    }

    #[test]
    fn limits_charge_unpriced_models_at_a_stand_in_never_zero() {
        let usage = Usage {
            input_tokens: 1_000,
            output_tokens: 1_000,
            ..Usage::default()
        };
        // The dearest opus (old opus: $15/$75).
        assert_eq!(
            limit_cost_nano_usd("claude-opus-9-preview", &usage, None),
            1_000 * 15_000 + 1_000 * 75_000
        );
        // No family: the dearest of the table.
        assert_eq!(
            limit_cost_nano_usd("glm-4.6", &usage, None),
            1_000 * 15_000 + 1_000 * 75_000
        );
        assert_eq!(
            limit_cost_nano_usd("glm-4.6", &usage, Some("claude-haiku-4-5")),
            1_000 * 1_000 + 1_000 * 5_000
        );
        assert_eq!(
            limit_cost_nano_usd("claude-sonnet-4-6", &usage, None),
            cost_nano_usd("claude-sonnet-4-6", &usage).unwrap()
        );
        assert_eq!(max_output_tokens("claude-3-haiku-20240307"), Some(4_096));
        assert_eq!(max_output_tokens("glm-4.6"), None);
    }

    #[test]
    fn unknown_models_are_unpriced_not_free() {
        assert_eq!(cost_nano_usd("gpt-nonexistent", &Usage::default()), None);
        assert_eq!(
            cost_nano_usd("claude-opus-4-8-20261101", &Usage::default()),
            Some(0)
        );
        assert_eq!(cost_nano_usd("deepseek-chat", &Usage::default()), None);
    }

    #[test]
    fn gpt_snapshots_are_priced_with_cached_reads_and_no_write_premium() {
        assert_eq!(crate::model::canonical("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(crate::model::canonical("gpt-4o-mini"), "gpt-4o-mini");
        // 1,000 input (of which 400 cached read), 100 output on gpt-4o-mini:
        // 600 × 150 + 400 × 75 + 100 × 600 nano-USD.
        let usage = Usage {
            input_tokens: 600,
            cache_read_tokens: 400,
            output_tokens: 100,
            ..Usage::default()
        };
        assert_eq!(
            cost_nano_usd("gpt-4o-mini-2024-07-18", &usage),
            Some(600 * 150 + 400 * 75 + 100 * 600)
        );
    }
}
