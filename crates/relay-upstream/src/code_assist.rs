//! Gemini Code Assist (`gemini-oauth` accounts): what a Google account signed in as Gemini CLI's
//! "Login with Google" is served by. The Gemini API inside an envelope — a request names its
//! model and the account's Cloud project and carries the Gemini request in `request`; an answer
//! (whole, or each SSE chunk) carries the Gemini response in `response` — and the project found
//! (or set up, on the free tier) once at sign-in, as Gemini CLI does.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use relay_protocol::convert::Translate;
use relay_protocol::gemini::StreamFraming;
use relay_protocol::sse::SseDecoder;
use serde_json::{json, Value};

use crate::oauth::OAuthTokens;
use crate::transport::AnyClient;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Onboarding is a long-running operation: polled this many times, this far apart.
const ONBOARD_POLLS: u32 = 10;
const ONBOARD_PAUSE: Duration = Duration::from_millis(500);

/// A Gemini request body in Code Assist's envelope (`countTokens` takes the model inside).
pub fn wrap(body: &[u8], model: &str, project: &str, count: bool) -> Option<Vec<u8>> {
    let request: Value = serde_json::from_slice(body).ok()?;
    let envelope = if count {
        json!({"request": {"model": format!("models/{model}"), "contents": request["contents"]}})
    } else {
        json!({"model": model, "project": project, "request": request})
    };
    serde_json::to_vec(&envelope).ok()
}

/// A whole Code Assist answer's Gemini response (an error or a token count as it came).
pub fn unwrap(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut object)) if object.contains_key("response") => {
            serde_json::to_vec(&object.remove("response").unwrap_or(Value::Null))
                .unwrap_or_else(|_| body.to_vec())
        }
        _ => body.to_vec(),
    }
}

/// Code Assist's SSE (`data: {"response": …}`) → the Gemini stream a client reads: SSE, or the
/// elements of one JSON array (`sse: false`), closed when the upstream ends cleanly.
#[derive(Debug)]
pub struct Unwrap {
    decoder: SseDecoder,
    framing: StreamFraming,
}

impl Unwrap {
    pub fn new(sse: bool) -> Self {
        Self {
            decoder: SseDecoder::new(),
            framing: StreamFraming::new(sse),
        }
    }
}

impl Translate for Unwrap {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let framing = &mut self.framing;
        self.decoder.feed(chunk, &mut |_event, data| {
            framing.chunk(&unwrap(data.as_bytes()), out);
        });
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.framing.end(out);
    }
}

/// The tokens in Gemini CLI's `oauth_creds.json` (`~/.gemini/oauth_creds.json`).
pub fn tokens_from_oauth_creds(text: &str) -> Result<OAuthTokens, String> {
    let creds: Value = serde_json::from_str(text)
        .map_err(|error| format!("this is not Gemini CLI's oauth_creds.json: {error}"))?;
    let access_token = creds["access_token"]
        .as_str()
        .filter(|token| !token.is_empty())
        .ok_or("the oauth_creds.json holds no access token")?;
    Ok(OAuthTokens {
        access_token: access_token.to_owned(),
        refresh_token: creds["refresh_token"]
            .as_str()
            .filter(|token| !token.is_empty())
            .map(str::to_owned),
        expires_at_ms: creds["expiry_date"].as_i64(),
        account_id: None,
    })
}

async fn call(
    client: &AnyClient,
    base_url: &str,
    method: &str,
    access_token: &str,
    body: &Value,
) -> Result<Value, String> {
    let mut request = Request::new(Full::new(Bytes::from(body.to_string())));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = format!("{}/v1internal:{method}", base_url.trim_end_matches('/'))
        .parse()
        .map_err(|_| "the Code Assist URL is invalid".to_owned())?;
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let bearer = http::HeaderValue::from_str(&format!("Bearer {access_token}"))
        .map_err(|_| "the access token cannot be sent".to_owned())?;
    headers.insert(http::header::AUTHORIZATION, bearer);
    let (status, body) = crate::oauth::exchange(client, request, CALL_TIMEOUT)
        .await
        .map_err(|error| format!("{method}: {error}"))?;
    if !status.is_success() {
        return Err(format!(
            "{method} answered {status}: {}",
            crate::redact::excerpt(&body)
        ));
    }
    serde_json::from_slice::<Value>(&body).map_err(|error| error.to_string())
}

fn project_of(value: &Value) -> Option<String> {
    match value {
        Value::String(id) if !id.is_empty() => Some(id.clone()),
        Value::Object(object) => object.get("id").and_then(project_of),
        _ => None,
    }
}

/// The Cloud project Code Assist serves the account under: the one `loadCodeAssist` names, or
/// the one `onboardUser` sets up on the account's default tier (free for a personal account).
pub async fn project(
    client: &AnyClient,
    base_url: &str,
    access_token: &str,
) -> Result<String, String> {
    let metadata = json!({"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED", "pluginType": "GEMINI"});
    let loaded = call(
        client,
        base_url,
        "loadCodeAssist",
        access_token,
        &json!({"metadata": metadata}),
    )
    .await?;
    if let Some(project) = project_of(&loaded["cloudaicompanionProject"]) {
        return Ok(project);
    }
    let tier = loaded["allowedTiers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|tier| tier["isDefault"] == true)
        .and_then(|tier| tier["id"].as_str())
        .unwrap_or("free-tier")
        .to_owned();
    for _ in 0..ONBOARD_POLLS {
        let operation = call(
            client,
            base_url,
            "onboardUser",
            access_token,
            &json!({"tierId": tier, "metadata": metadata}),
        )
        .await?;
        if operation["done"] == true {
            return project_of(&operation["response"]["cloudaicompanionProject"])
                .ok_or_else(|| "onboarding named no project".to_owned());
        }
        tokio::time::sleep(ONBOARD_PAUSE).await;
    }
    Err("Code Assist did not finish setting the account up; try again".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_wraps_and_unwraps_whole_and_streamed() {
        let wrapped: Value = serde_json::from_slice(
            &wrap(
                br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
                "gemini-2.5-pro",
                "p-1",
                false,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(wrapped["model"], "gemini-2.5-pro");
        assert_eq!(wrapped["project"], "p-1");
        assert_eq!(wrapped["request"]["contents"][0]["parts"][0]["text"], "hi");
        let count: Value =
            serde_json::from_slice(&wrap(br#"{"contents":[]}"#, "m", "p", true).unwrap()).unwrap();
        assert_eq!(count["request"]["model"], "models/m");
        assert_eq!(
            unwrap(br#"{"response":{"a":1},"traceId":"t"}"#),
            br#"{"a":1}"#
        );
        assert_eq!(unwrap(br#"{"totalTokens":3}"#), br#"{"totalTokens":3}"#);

        let stream = "data: {\"response\":{\"n\":1}}\r\n\r\ndata: {\"response\":{\"n\":2}}\r\n\r\n";
        for sse in [true, false] {
            let mut translator = Unwrap::new(sse);
            let mut out = Vec::new();
            for piece in stream.as_bytes().chunks(7) {
                translator.push(piece, &mut out);
            }
            translator.finish(&mut out);
            let text = String::from_utf8(out).unwrap();
            if sse {
                assert_eq!(text, "data: {\"n\":1}\r\n\r\ndata: {\"n\":2}\r\n\r\n");
            } else {
                assert_eq!(text, "[{\"n\":1},\r\n{\"n\":2}]");
            }
        }
    }

    #[test]
    fn gemini_cli_credentials_are_read() {
        let tokens = tokens_from_oauth_creds(
            r#"{"access_token":"ya29.a","refresh_token":"1//r","scope":"x","token_type":"Bearer","expiry_date":1900000000000}"#,
        )
        .unwrap();
        assert_eq!(tokens.access_token, "ya29.a");
        assert_eq!(tokens.refresh_token.as_deref(), Some("1//r"));
        assert_eq!(tokens.expires_at_ms, Some(1_900_000_000_000));
        assert!(tokens_from_oauth_creds("{}").is_err());
    }
}
