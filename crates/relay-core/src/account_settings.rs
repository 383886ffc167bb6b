//! How an account takes part in scheduling: weight, the schedulable switch, the models it
//! serves and their upstream names, its own concurrency, its groups and the operator's notes.
//! Stored as one JSON document per account; absent fields take their defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountSettings {
    /// Share of traffic within its priority tier under weighted scheduling (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// `false` takes the account out of scheduling without disabling it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedulable: Option<bool>,
    /// Models it serves (exact ids or `prefix*`); absent means its platform's defaults
    /// (`Platform::default_models`, relay-upstream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Client model → upstream model, for accounts whose upstream names models differently.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_map: Option<BTreeMap<String, String>>,
    /// Requests in flight on this account at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Cost this account may serve per UTC day; past it, it sits out until midnight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_cost_nano_usd: Option<i64>,
    /// Groups keys can be bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// A subscription's tier (`max`, `pro`, `free`), detected at sign-in; Pro plans have no
    /// Opus, so such accounts are not offered Opus requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// A ChatGPT subscription's plan (`plus`, `pro`, `team` …), read from its sign-in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// An Azure OpenAI account's deployment (it names the model upstream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// An Azure OpenAI account's `api-version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

use crate::model::matches;

impl AccountSettings {
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|error| error.to_string())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1)
    }

    pub fn schedulable(&self) -> bool {
        self.schedulable.unwrap_or(true)
    }

    /// Whether the account serves `model` (a mapped model counts as served); `defaults` are the
    /// platform's patterns, used when the account lists none.
    pub fn serves(&self, model: &str, defaults: &[&str]) -> bool {
        let opus_without_access = matches!(self.tier.as_deref(), Some("pro" | "free"))
            && crate::model::family(model) == Some("opus");
        if opus_without_access {
            return false;
        }
        let mapped = self
            .model_map
            .as_ref()
            .is_some_and(|map| map.keys().any(|from| matches(from, model)));
        mapped
            || match &self.models {
                Some(patterns) => patterns.iter().any(|pattern| matches(pattern, model)),
                None => defaults.iter().any(|pattern| matches(pattern, model)),
            }
    }

    /// The upstream name of `model` on this account, if it is mapped.
    pub fn map_model(&self, model: &str) -> Option<&str> {
        self.model_map
            .as_ref()?
            .iter()
            .find_map(|(from, to)| matches(from, model).then_some(to.as_str()))
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups
            .as_ref()
            .is_some_and(|groups| groups.iter().any(|named| named == group))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.weight == Some(0) {
            return Err(
                "a weight is at least 1 (use --schedulable false to take an account out)".into(),
            );
        }
        if self.concurrency == Some(0) {
            return Err("an account's concurrency is at least 1".into());
        }
        if self.daily_cost_nano_usd.is_some_and(|limit| limit < 0) {
            return Err("an account's daily cost limit cannot be negative".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_and_mappings() {
        let settings = AccountSettings {
            models: Some(vec!["claude-sonnet-*".into()]),
            model_map: Some(BTreeMap::from([(
                "claude-opus-4-8".to_owned(),
                "glm-4.6".to_owned(),
            )])),
            ..AccountSettings::default()
        };
        assert!(settings.serves("claude-sonnet-4-5-20250929", &[]));
        assert!(settings.serves("claude-opus-4-8", &[]));
        assert!(!settings.serves("claude-haiku-4-5", &["claude-*"]));
        assert_eq!(settings.map_model("claude-opus-4-8"), Some("glm-4.6"));
        assert_eq!(settings.map_model("claude-sonnet-4-5"), None);
        assert!(AccountSettings::default().serves("claude-haiku-4-5", &["claude-*"]));
        assert!(!AccountSettings::default().serves("deepseek-chat", &["claude-*"]));
        assert!(!AccountSettings::default().serves("gpt-4o", &[]));
        let everything = AccountSettings {
            models: Some(vec!["*".into()]),
            ..AccountSettings::default()
        };
        assert!(everything.serves("anything", &[]));
        assert_eq!(AccountSettings::default().weight(), 1);
        assert!(AccountSettings::default().schedulable());
    }
}
