//! The admin API: sign-in, and every key operation the CLI has.

use serde_json::{json, Value};

use crate::harness::{account, messages_body, Harness, ADMIN_PASSWORD};

async fn login(harness: &Harness) -> String {
    let response = harness
        .client
        .post(format!("{}/admin/v1/login", harness.url))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// `GET` an admin path and read the JSON answer.
async fn get_json(harness: &Harness, token: &str, path: &str) -> Value {
    admin(harness, token, reqwest::Method::GET, path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn admin(
    harness: &Harness,
    token: &str,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    harness
        .client
        .request(method, format!("{}{path}", harness.url))
        .bearer_auth(token)
}

#[tokio::test]
async fn keys_are_managed_end_to_end_through_the_admin_api() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    use reqwest::Method;

    // No session, a wrong password, a relay key: all refused in the admin error shape.
    let anonymous = harness
        .client
        .get(format!("{}/admin/v1/keys", harness.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["type"], "unauthorized");
    let relay_key = admin(&harness, &harness.key, Method::GET, "/admin/v1/keys")
        .send()
        .await
        .unwrap();
    assert_eq!(relay_key.status(), 401);
    let wrong = harness
        .client
        .post(format!("{}/admin/v1/login", harness.url))
        .json(&json!({"username": "admin", "password": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let token = login(&harness).await;
    let created: Value = admin(&harness, &token, Method::POST, "/admin/v1/keys")
        .json(&json!({
            "name": "team-{n}", "count": 3, "tags": ["team"], "owner": "bob",
            "policy": {"concurrency": 2, "daily_cost_nano_usd": 5_000_000_000_i64}
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = created["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    let secret = keys[0]["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("cr_"));

    // Bad input is refused with the reason.
    let bad = admin(&harness, &token, Method::POST, "/admin/v1/keys")
        .json(&json!({"name": "x", "policy": {"concurency": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("concurency"));
    let duplicate = admin(&harness, &token, Method::POST, "/admin/v1/keys")
        .json(&json!({"name": "team-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), 409);

    // PATCH merges: null removes a limit, values replace, absent fields stay.
    let patched: Value = admin(&harness, &token, Method::PATCH, "/admin/v1/keys/team-1")
        .json(&json!({"policy": {"concurrency": null, "allowed_models": ["claude-haiku-*"]}, "description": "for demos"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(patched["policy"].get("concurrency").is_none());
    assert_eq!(patched["policy"]["daily_cost_nano_usd"], 5_000_000_000_i64);
    assert_eq!(patched["policy"]["allowed_models"][0], "claude-haiku-*");
    assert_eq!(patched["description"], "for demos");
    assert_eq!(patched["tags"][0], "team");
    assert!(!patched.to_string().contains(&secret));

    // The running relay enforces the patched policy.
    harness.snapshots.reload().await.unwrap();
    let sonnet = harness
        .client
        .post(format!("{}/v1/messages", harness.url))
        .header("x-api-key", &secret)
        .json(&messages_body(false, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(sonnet.status(), 403);

    // Batch actions, trash, restore, purge, CSV.
    let done: Value = admin(&harness, &token, Method::POST, "/admin/v1/keys/batch")
        .json(&json!({"names": ["team-2", "team-3"], "action": "edit", "patch": {"status": "disabled", "tags": ["paused"]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["done"], 2);
    let team3: Value = admin(&harness, &token, Method::GET, "/admin/v1/keys/team-3")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(team3["status"], "disabled");
    assert_eq!(team3["tags"][0], "paused");
    assert_eq!(
        admin(&harness, &token, Method::DELETE, "/admin/v1/keys/team-3")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let trash: Value = admin(&harness, &token, Method::GET, "/admin/v1/keys?trash=true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(trash["keys"][0]["name"], "team-3");
    assert_eq!(
        admin(
            &harness,
            &token,
            Method::POST,
            "/admin/v1/keys/team-3/restore"
        )
        .send()
        .await
        .unwrap()
        .status(),
        204
    );
    admin(&harness, &token, Method::DELETE, "/admin/v1/keys/team-2")
        .send()
        .await
        .unwrap();
    let purged: Value = admin(&harness, &token, Method::POST, "/admin/v1/keys/purge")
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(purged["purged"], json!(["team-2"]));
    let csv = admin(&harness, &token, Method::GET, "/admin/v1/keys.csv")
        .send()
        .await
        .unwrap();
    assert!(csv.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(!csv.contains(&secret));

    // Oversized bodies are refused before parsing.
    let huge = admin(&harness, &token, Method::POST, "/admin/v1/keys")
        .json(&json!({"name": "x", "description": "y".repeat(70_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);

    // After logout the token is dead.
    assert_eq!(
        admin(&harness, &token, Method::POST, "/admin/v1/logout")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        admin(&harness, &token, Method::GET, "/admin/v1/keys")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn accounts_are_managed_tested_and_watched_through_the_admin_api() {
    use reqwest::Method;
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let token = login(&harness).await;
    let created = admin(&harness, &token, Method::POST, "/admin/v1/accounts")
        .json(&json!({
            "platform": "anthropic", "name": "backup", "api_key": "sk-backup-secret",
            "base_url": harness.mock.url(), "priority": 5,
            "settings": {"weight": 3, "groups": ["team"], "notes": "spare"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert!(!created.to_string().contains("sk-backup-secret"));
    let patched: Value = admin(&harness, &token, Method::PATCH, "/admin/v1/accounts/backup")
        .json(&json!({"settings": {"weight": null, "concurrency": 4}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        patched["settings"],
        json!({"concurrency": 4, "groups": ["team"], "notes": "spare"})
    );

    // Test connection: a healthy account, then one the upstream refuses.
    let test: Value = admin(
        &harness,
        &token,
        Method::POST,
        "/admin/v1/accounts/main/test",
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(test["ok"], true, "{test}");
    assert_eq!(test["status"], 200);
    harness
        .mock
        .script("sk-main", [relay_testkit::Behavior::status(401)]);
    let test: Value = admin(
        &harness,
        &token,
        Method::POST,
        "/admin/v1/accounts/main/test",
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(test["ok"], false);
    assert_eq!(test["status"], 401);

    // Live state: a 429 shows the account cooling, and a reset clears it.
    harness.snapshots.reload().await.unwrap();
    harness.mock.script(
        "sk-main",
        [relay_testkit::Behavior::status_with_headers(
            429,
            &[("retry-after", "600")],
        )],
    );
    assert_eq!(harness.send(false, "x").await.status(), 200);
    let listed: Value = admin(&harness, &token, Method::GET, "/admin/v1/accounts")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let main = listed["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|account| account["name"] == "main")
        .unwrap()
        .clone();
    assert_eq!(main["live"]["state"], "cooling", "{main}");
    assert_eq!(
        admin(
            &harness,
            &token,
            Method::POST,
            "/admin/v1/accounts/main/reset"
        )
        .send()
        .await
        .unwrap()
        .status(),
        204
    );
    harness.snapshots.reload().await.unwrap();
    let listed: Value = admin(&harness, &token, Method::GET, "/admin/v1/accounts")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let main = listed["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|account| account["name"] == "main")
        .unwrap()
        .clone();
    assert_eq!(main["live"]["state"], "active", "{main}");
}

/// The process's resident memory in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_wrong_logins_checks_at_most_thirty_passwords_in_bounded_memory() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    // Warm the password pool up (one good sign-in) before measuring.
    login(&harness).await;
    let before = rss_kib();
    let attempts = (0..80).map(|n| {
        harness
            .client
            .post(format!("{}/admin/v1/login", harness.url))
            .json(&json!({"username": "admin", "password": format!("guess-{n}")}))
            .send()
    });
    let statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|response| response.unwrap().status().as_u16())
        .collect();
    let checked = statuses.iter().filter(|status| **status == 401).count();
    let throttled = statuses.iter().filter(|status| **status == 429).count();
    assert_eq!(checked + throttled, 80, "{statuses:?}");
    assert!(checked <= 30, "{checked} passwords were checked");
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 100, "RSS grew by {grown_mib} MiB");
}

#[tokio::test]
async fn csv_export_neutralises_cells_a_spreadsheet_would_run() {
    use reqwest::Method;
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let token = login(&harness).await;
    let created = admin(&harness, &token, Method::POST, "/admin/v1/keys")
        .json(&json!({"name": "sheet", "description": "=HYPERLINK(\"http://evil\",\"x\")"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let csv = admin(&harness, &token, Method::GET, "/admin/v1/keys.csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = csv.lines().find(|line| line.starts_with("sheet,")).unwrap();
    assert!(
        row.contains(r#","'=HYPERLINK(""http://evil"",""x"")","#),
        "{row}"
    );
}

#[tokio::test]
async fn purge_with_an_invalid_body_is_refused_and_purges_nothing() {
    use reqwest::Method;
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let token = login(&harness).await;
    admin(&harness, &token, Method::POST, "/admin/v1/keys")
        .json(&json!({"name": "old"}))
        .send()
        .await
        .unwrap();
    admin(&harness, &token, Method::DELETE, "/admin/v1/keys/old")
        .send()
        .await
        .unwrap();
    for body in [
        r#"{"older_than_secs": "a week"}"#,
        r#"{"older_than": 3600}"#,
        "not json",
    ] {
        let response = admin(&harness, &token, Method::POST, "/admin/v1/keys/purge")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request");
    }
    let trash = get_json(&harness, &token, "/admin/v1/keys?trash=true").await;
    assert_eq!(trash["keys"][0]["name"], "old", "{trash}");
    // No body at all still means "everything in the trash".
    let purged: Value = admin(&harness, &token, Method::POST, "/admin/v1/keys/purge")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(purged["purged"], json!(["old"]));
}

#[tokio::test]
async fn admin_request_bodies_must_be_json() {
    use reqwest::Method;
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    // A cross-site form can post text/plain without a preflight: refused before the password check.
    let login_as = |content_type: Option<&'static str>| {
        let mut request = harness
            .client
            .post(format!("{}/admin/v1/login", harness.url))
            .body(json!({"username": "admin", "password": ADMIN_PASSWORD}).to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };
    let form_login = login_as(Some("text/plain")).await.unwrap();
    assert_eq!(form_login.status(), 415);
    let error: Value = form_login.json().await.unwrap();
    assert_eq!(error["error"]["type"], "unsupported_media_type", "{error}");
    assert_eq!(login_as(None).await.unwrap().status(), 415);
    assert_eq!(
        login_as(Some("application/json")).await.unwrap().status(),
        200
    );
    let token = login(&harness).await;
    let form_patch = admin(&harness, &token, Method::PATCH, "/admin/v1/keys/tester")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("description=x")
        .send()
        .await
        .unwrap();
    assert_eq!(form_patch.status(), 415);
    // JSON with a charset parameter is JSON; requests without a body need no type.
    let patched = admin(&harness, &token, Method::PATCH, "/admin/v1/keys/tester")
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(r#"{"description": "typed"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let logout = admin(&harness, &token, Method::POST, "/admin/v1/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
}

#[tokio::test]
async fn an_account_with_an_invalid_setting_or_proxy_is_not_created_at_all() {
    use reqwest::Method;
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let token = login(&harness).await;
    for (extra, what) in [
        (json!({"proxy": "ftp://proxy.example:21"}), "proxy"),
        (json!({"settings": {"weight": "heavy"}}), "settings"),
        (json!({"settings": {"wieght": 2}}), "settings"),
    ] {
        let mut body = json!({
            "platform": "anthropic", "name": "broken", "api_key": "sk-broken",
            "base_url": harness.mock.url(),
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let response = admin(&harness, &token, Method::POST, "/admin/v1/accounts")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        assert!(response.text().await.unwrap().contains(what));
        let listed = get_json(&harness, &token, "/admin/v1/accounts").await;
        let names: Vec<&str> = listed["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|account| account["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["main"], "{body} left an account behind");
    }
}

#[tokio::test]
async fn an_openai_compatible_account_is_added_tested_and_used_through_the_admin_api() {
    use reqwest::Method;
    let harness = Harness::start(vec![]).await;
    let token = login(&harness).await;
    let created = admin(&harness, &token, Method::POST, "/admin/v1/accounts")
        .json(&json!({
            "platform": "openai", "name": "ds", "api_key": "sk-ds-secret",
            "base_url": harness.openai.base_url(), "priority": 5,
            "settings": {"model_map": {"claude-*": "deepseek-chat"}}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["platform"], "openai", "{created}");
    assert!(!created.to_string().contains("sk-ds-secret"));
    let serves_nothing = admin(&harness, &token, Method::POST, "/admin/v1/accounts")
        .json(&json!({"platform": "openai", "name": "idle", "api_key": "sk-idle"}))
        .send()
        .await
        .unwrap();
    assert_eq!(serves_nothing.status(), 400);
    let said = serves_nothing.text().await.unwrap();
    assert!(said.contains("serves no model by default"), "{said}");
    let unknown = admin(&harness, &token, Method::POST, "/admin/v1/accounts")
        .json(&json!({"platform": "gopher", "name": "x", "api_key": "k"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    let said = unknown.text().await.unwrap();
    assert!(said.contains("anthropic, claude-oauth, openai"), "{said}");

    harness.snapshots.reload().await.unwrap();
    let test = post_json(&harness, &token, "/admin/v1/accounts/ds/test").await;
    assert_eq!(test["ok"], true, "{test}");
    // Claude Code's model reaches the account mapped, as Chat Completions.
    let response = harness.send(false, "hello").await;
    assert_eq!(response.status(), 200);
    let requests = harness.openai.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(
        |request| request.body["model"] == "deepseek-chat" && request.api_key == "sk-ds-secret"
    ));
    let listed = get_json(&harness, &token, "/admin/v1/accounts").await;
    assert!(listed.to_string().contains("\"openai\""), "{listed}");
    harness.shutdown().await;
}

/// `POST` an admin path without a body and read the JSON answer.
async fn post_json(harness: &Harness, token: &str, path: &str) -> Value {
    admin(harness, token, reqwest::Method::POST, path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_account_patch_with_any_invalid_part_changes_nothing() {
    use reqwest::Method;
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let token = login(&harness).await;
    let before = get_json(&harness, &token, "/admin/v1/accounts").await;
    for patch in [
        json!({"settings": {"weight": 7}, "proxy": "ftp://proxy.example:21"}),
        json!({"settings": {"weight": 7}, "status": "sleeping"}),
        json!({"proxy": "http://127.0.0.1:3128", "settings": {"weight": "heavy"}}),
    ] {
        let response = admin(&harness, &token, Method::PATCH, "/admin/v1/accounts/main")
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{patch}");
        assert_eq!(
            get_json(&harness, &token, "/admin/v1/accounts").await,
            before,
            "{patch} was half applied"
        );
    }
}
