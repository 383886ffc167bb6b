//! Who may use a key for what: services, models, clients and client addresses, and the key's
//! fixed expiry. Pure functions of the key's policy and the request's facts.

use std::net::IpAddr;

use crate::policy::{ClientRule, KeyPolicy, Service};

/// What the access rules look at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub service: Service,
    pub model: &'a str,
    pub user_agent: Option<&'a str>,
    /// Whether the request carries Claude Code's other marks: an `x-app: cli` header or a
    /// `claude-code-*` beta, and a `metadata.user_id`.
    pub claude_code_marks: bool,
    pub client_ip: Option<IpAddr>,
}

/// Why a key may not be used for this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    Expired,
    Service,
    Model(String),
    Client,
    Address,
}

impl Denial {
    pub fn message(&self) -> String {
        match self {
            Self::Expired => "this relay key has expired".to_owned(),
            Self::Service => "this relay key may not use this API".to_owned(),
            Self::Model(model) => format!("this relay key may not use the model '{model}'"),
            Self::Client => "this relay key may not be used from this client".to_owned(),
            Self::Address => "this relay key may not be used from this address".to_owned(),
        }
    }
}

/// Checks every access rule of `policy` against the request.
pub fn check(policy: &KeyPolicy, facts: &RequestFacts<'_>, now_ms: i64) -> Result<(), Denial> {
    if policy
        .expires_at_ms
        .is_some_and(|expires| now_ms >= expires)
    {
        return Err(Denial::Expired);
    }
    if let Some(services) = &policy.services {
        if !services.contains(&facts.service) {
            return Err(Denial::Service);
        }
    }
    if !model_allowed(policy, facts.model) {
        return Err(Denial::Model(facts.model.to_owned()));
    }
    if let Some(clients) = &policy.allowed_clients {
        let allowed = clients.iter().any(|rule| {
            ClientRule::parse(rule)
                .is_ok_and(|rule| client_matches(&rule, facts.user_agent, facts.claude_code_marks))
        });
        if !allowed {
            return Err(Denial::Client);
        }
    }
    if let Some(ranges) = &policy.allowed_ips {
        let allowed = facts.client_ip.is_some_and(|ip| {
            ranges
                .iter()
                .any(|range| Cidr::parse(range).is_ok_and(|cidr| cidr.contains(ip)))
        });
        if !allowed {
            return Err(Denial::Address);
        }
    }
    Ok(())
}

/// Whether the allow- and deny-lists let `model` through (matched on its canonical name, so
/// dated snapshots match their family id).
pub fn model_allowed(policy: &KeyPolicy, model: &str) -> bool {
    let allowed = policy.allowed_models.as_ref().is_none_or(|patterns| {
        patterns
            .iter()
            .any(|pattern| crate::model::matches(pattern, model))
    });
    let denied = policy.denied_models.as_ref().is_some_and(|patterns| {
        patterns
            .iter()
            .any(|pattern| crate::model::matches(pattern, model))
    });
    allowed && !denied
}

/// Whether a request from `user_agent` (with or without Claude Code's other marks) is the
/// client `rule` names.
fn client_matches(rule: &ClientRule, user_agent: Option<&str>, claude_code_marks: bool) -> bool {
    let user_agent = user_agent.unwrap_or_default();
    match rule {
        // A User-Agent alone is trivially forged; Claude Code also sends its app header or
        // beta and a metadata.user_id.
        ClientRule::ClaudeCode => user_agent.starts_with("claude-cli/") && claude_code_marks,
        ClientRule::CodexCli => user_agent.starts_with("codex_"),
        ClientRule::GeminiCli => user_agent.starts_with("GeminiCLI"),
        ClientRule::UserAgent(pattern) => glob_matches(pattern, user_agent),
    }
}

/// `*` matches any run of characters; everything else literally.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(index) => rest = &rest[index + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

pub use relay_upstream::net::Cidr;

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        model: &'a str,
        user_agent: Option<&'a str>,
        marks: bool,
        ip: &str,
    ) -> RequestFacts<'a> {
        RequestFacts {
            service: Service::Claude,
            model,
            user_agent,
            claude_code_marks: marks,
            client_ip: ip.parse().ok(),
        }
    }

    #[test]
    fn cidr_ranges_match_v4_v6_and_mapped_addresses() {
        let range = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(range.contains("10.1.200.3".parse().unwrap()));
        assert!(!range.contains("10.2.0.1".parse().unwrap()));
        assert!(range.contains("::ffff:10.1.0.9".parse().unwrap()));
        let single = Cidr::parse("192.168.1.5").unwrap();
        assert!(single.contains("192.168.1.5".parse().unwrap()));
        assert!(!single.contains("192.168.1.6".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8:1::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0/8"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globs_match_user_agents() {
        assert!(glob_matches("my-tool/*", "my-tool/1.2"));
        assert!(glob_matches("*curl*", "Mozilla curl/8"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exact2"));
        assert!(!glob_matches("a*b*c", "acb"));
    }

    #[test]
    fn claude_code_needs_more_than_its_user_agent() {
        let policy = KeyPolicy {
            allowed_clients: Some(vec!["claude-code".into()]),
            ..KeyPolicy::default()
        };
        let ua = Some("claude-cli/2.1.197 (external, sdk-cli)");
        assert!(check(&policy, &facts("m", ua, true, "127.0.0.1"), 0).is_ok());
        assert_eq!(
            check(&policy, &facts("m", ua, false, "127.0.0.1"), 0),
            Err(Denial::Client)
        );
        assert_eq!(
            check(&policy, &facts("m", Some("curl/8"), true, "127.0.0.1"), 0),
            Err(Denial::Client)
        );
    }

    #[test]
    fn model_lists_match_canonical_names_and_prefixes() {
        let policy = KeyPolicy {
            allowed_models: Some(vec!["claude-sonnet-*".into(), "claude-haiku-4-5".into()]),
            denied_models: Some(vec!["claude-sonnet-4".into()]),
            ..KeyPolicy::default()
        };
        assert!(model_allowed(&policy, "claude-sonnet-4-5-20250929"));
        assert!(model_allowed(&policy, "claude-haiku-4-5-20251001"));
        assert!(!model_allowed(&policy, "claude-opus-4-8"));
        assert!(!model_allowed(&policy, "claude-sonnet-4-20250514"));
    }

    #[test]
    fn services_addresses_and_expiry_are_enforced() {
        let policy = KeyPolicy {
            services: Some(vec![Service::Openai]),
            ..KeyPolicy::default()
        };
        assert_eq!(
            check(&policy, &facts("m", None, false, "127.0.0.1"), 0),
            Err(Denial::Service)
        );
        let policy = KeyPolicy {
            allowed_ips: Some(vec!["10.0.0.0/8".into()]),
            expires_at_ms: Some(1_000),
            ..KeyPolicy::default()
        };
        assert_eq!(
            check(&policy, &facts("m", None, false, "127.0.0.1"), 0),
            Err(Denial::Address)
        );
        assert!(check(&policy, &facts("m", None, false, "10.9.9.9"), 999).is_ok());
        assert_eq!(
            check(&policy, &facts("m", None, false, "10.9.9.9"), 1_000),
            Err(Denial::Expired)
        );
    }
}
