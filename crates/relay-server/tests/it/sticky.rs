//! Sticky sessions: a conversation stays on one account, moves when that account is out for a
//! while, spills without moving for a moment, and never mixes tenants.

use relay_core::policy::KeyPolicy;
use relay_testkit::Behavior;
use serde_json::{json, Value};

use crate::harness::{account, messages_body, Harness};

fn turn(session: &str, n: usize) -> Value {
    let mut body = messages_body(false, &format!("turn {n}"));
    body["metadata"] = json!({
        "user_id": json!({"device_id": "d", "account_uuid": "", "session_id": session}).to_string()
    });
    body
}

async fn send(harness: &Harness, key: &str, body: &Value) -> u16 {
    harness
        .client
        .post(format!("{}/v1/messages", harness.url))
        .header("x-api-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn served_by(harness: &Harness, from: usize) -> Vec<String> {
    harness.mock.requests()[from..]
        .iter()
        .map(|request| request.api_key.clone())
        .collect()
}

#[tokio::test]
async fn a_conversation_stays_on_one_account_for_twenty_turns() {
    let harness = Harness::start(vec![account("a", "sk-a", 1), account("b", "sk-b", 1)]).await;
    for n in 0..20 {
        assert_eq!(
            send(&harness, &harness.key, &turn("conversation-1", n)).await,
            200
        );
    }
    let accounts = served_by(&harness, 0);
    assert_eq!(accounts.len(), 20);
    assert!(
        accounts.iter().all(|key| *key == accounts[0]),
        "{accounts:?}"
    );
    // Without a session the same two accounts take turns (least recently used).
    for n in 0..4 {
        let body = messages_body(false, &format!("unrelated {n}"));
        assert_eq!(send(&harness, &harness.key, &body).await, 200);
    }
    let spread = served_by(&harness, 20);
    assert!(
        spread.contains(&"sk-a".to_owned()) && spread.contains(&"sk-b".to_owned()),
        "{spread:?}"
    );
}

#[tokio::test]
async fn a_conversation_spills_for_a_moment_and_moves_when_its_account_is_out() {
    let harness = Harness::start(vec![account("a", "sk-a", 1), account("b", "sk-b", 1)]).await;
    assert_eq!(send(&harness, &harness.key, &turn("c", 0)).await, 200);
    let home = served_by(&harness, 0)[0].clone();
    let other = if home == "sk-a" { "sk-b" } else { "sk-a" };

    // Overloaded through its retries: this turn is served elsewhere, the conversation stays.
    harness
        .mock
        .script(&home, (0..3).map(|_| Behavior::status(529)));
    assert_eq!(send(&harness, &harness.key, &turn("c", 1)).await, 200);
    assert_eq!(send(&harness, &harness.key, &turn("c", 2)).await, 200);
    assert_eq!(
        served_by(&harness, 1),
        [
            home.clone(),
            home.clone(),
            home.clone(),
            other.to_owned(),
            home.clone()
        ]
    );

    // Rate limited for ten minutes: the conversation moves, and stays moved.
    harness.mock.script(
        &home,
        [Behavior::status_with_headers(
            429,
            &[("retry-after", "600")],
        )],
    );
    for n in 3..6 {
        assert_eq!(send(&harness, &harness.key, &turn("c", n)).await, 200);
    }
    assert_eq!(
        served_by(&harness, 6),
        [
            home.clone(),
            other.to_owned(),
            other.to_owned(),
            other.to_owned()
        ]
    );
}

#[tokio::test]
async fn two_keys_with_the_same_conversation_never_share_a_binding() {
    let harness = Harness::start(vec![account("a", "sk-a", 1), account("b", "sk-b", 1)]).await;
    let (second_key, _) = harness.key_with("tenant-2", &KeyPolicy::default()).await;
    // The same Claude Code session id from two tenants.
    assert_eq!(send(&harness, &harness.key, &turn("same", 0)).await, 200);
    assert_eq!(send(&harness, &second_key, &turn("same", 0)).await, 200);
    let first_two = served_by(&harness, 0);
    assert_ne!(
        first_two[0], first_two[1],
        "least recently used spreads the two tenants"
    );
    for n in 1..6 {
        assert_eq!(send(&harness, &harness.key, &turn("same", n)).await, 200);
        assert_eq!(send(&harness, &second_key, &turn("same", n)).await, 200);
    }
    let rest = served_by(&harness, 2);
    for pair in rest.chunks(2) {
        assert_eq!(pair, [first_two[0].clone(), first_two[1].clone()]);
    }
}
