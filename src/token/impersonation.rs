//! The second hop of Google's workload identity federation: the STS token, which IAM knows
//! only as a federated principal, traded for a service account's access token at the IAM
//! Credentials API (`service_account_impersonation_url`, a `generateAccessToken` call):
//! `POST {"scope": [...], "lifetime": "3600s"}` with the STS token as Bearer, answered by
//! `{"accessToken": "...", "expireTime": "<RFC 3339>"}`.

use std::time::{Duration, SystemTime};

use http::header;
use serde_json::Value;

use super::answer::{TokenError, TokenResponse, content_type_of, read_body, transport_error};
use super::discovery::quote;
use crate::config::{AuthConfig, Impersonation, endpoint_name, parse_timestamp};
use crate::secret::AccessToken;

/// Trades `sts_token` for the service account's access token, within `timeout`.
pub(super) async fn generate_access_token(
    http: &reqwest::Client,
    config: &AuthConfig,
    impersonation: &Impersonation,
    sts_token: &AccessToken,
    timeout: Duration,
) -> Result<TokenResponse, TokenError> {
    let endpoint = endpoint_name(&impersonation.url);
    let response = http
        .post(impersonation.url.clone())
        .timeout(timeout)
        .header(header::AUTHORIZATION, format!("Bearer {}", sts_token.expose()))
        .header(header::ACCEPT, "application/json")
        .header(header::CONTENT_TYPE, "application/json")
        .body(request_body(&config.scopes, impersonation.lifetime))
        .send()
        .await
        .map_err(|err| transport_error(err, &endpoint, timeout))?;
    let status = response.status().as_u16();
    let content_type = content_type_of(&response);
    let body = read_body(response)
        .await
        .map_err(|err| err.map_or(TokenError::TooLarge, |err| transport_error(err, &endpoint, timeout)))?;
    parse_response(status, &content_type, &body, SystemTime::now())
}

/// `{"scope":[...],"lifetime":"<seconds>s"}`: the scopes the service account's token is for.
fn request_body(scopes: &[String], lifetime: Duration) -> String {
    format!(
        r#"{{"scope":{},"lifetime":"{}s"}}"#,
        Value::from(scopes.to_vec()),
        lifetime.as_secs()
    )
}

/// Reads the answer at `now`: the access token and how long it lasts, or why there is none.
/// Google's errors are `{"error": {"code", "message", "status"}}`.
fn parse_response(status: u16, content_type: &str, body: &[u8], now: SystemTime) -> Result<TokenResponse, TokenError> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        let error = json.as_ref().and_then(|json| json.get("error"));
        let word = error.and_then(|e| e.get("status")).and_then(Value::as_str);
        let message = error.and_then(|e| e.get("message")).and_then(Value::as_str);
        return match (word, message) {
            (None, None) => Err(TokenError::BadStatus {
                status,
                content_type: quote(content_type, None),
            }),
            (word, message) => Err(TokenError::Refused {
                status,
                error: format!(
                    "service account impersonation: {}",
                    quote(word.unwrap_or("error"), None)
                ),
                description: message.map(|m| quote(m, None)),
            }),
        };
    }
    let invalid = |problem: &str| TokenError::Invalid(format!("the service account impersonation response {problem}"));
    let Some(json) = json else {
        return Err(TokenError::NotJson {
            status,
            content_type: quote(content_type, None),
        });
    };
    let access_token = match json.get("accessToken") {
        Some(Value::String(token)) if !token.is_empty() => AccessToken::new(token.as_str()),
        Some(Value::String(_)) => return Err(invalid("has an empty accessToken")),
        Some(_) => return Err(invalid("has an accessToken that is not a string")),
        None => return Err(invalid("has no accessToken")),
    };
    let expire_time = match json.get("expireTime") {
        Some(Value::String(text)) => parse_timestamp(text)
            .filter(|_| text.contains('T'))
            .ok_or_else(|| invalid("has an expireTime that is not an RFC 3339 time"))?,
        Some(_) => return Err(invalid("has an expireTime that is not a string")),
        None => return Err(invalid("has no expireTime")),
    };
    let expires_in = expire_time
        .duration_since(now)
        .ok()
        .filter(|left| !left.is_zero())
        .ok_or_else(|| invalid("has an expireTime that has passed"))?;
    Ok(TokenResponse {
        access_token,
        expires_in: Some(expires_in),
        scope: None,
        refresh_token: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000; // 2027-01-15T08:00:00Z

    fn parse(status: u16, body: &str) -> Result<TokenResponse, TokenError> {
        parse_response(
            status,
            "application/json",
            body.as_bytes(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(NOW),
        )
    }

    #[test]
    fn the_body_lists_the_scopes_and_the_lifetime_in_seconds() {
        assert_eq!(
            request_body(
                &[
                    "https://www.googleapis.com/auth/cloud-platform".into(),
                    "a \"b\"".into()
                ],
                Duration::from_hours(1)
            ),
            r#"{"scope":["https://www.googleapis.com/auth/cloud-platform","a \"b\""],"lifetime":"3600s"}"#
        );
    }

    #[test]
    fn the_token_lasts_until_its_expire_time() {
        let response = parse(
            200,
            r#"{"accessToken":"ya29.sa-token","expireTime":"2027-01-15T08:59:30.250Z"}"#,
        )
        .unwrap();
        assert_eq!(response.access_token.expose(), "ya29.sa-token");
        // Whole seconds: the fraction is dropped, so the token is never held too long.
        assert_eq!(response.expires_in, Some(Duration::from_secs(3570)));
    }

    #[test]
    fn malformed_answers_say_what_is_wrong_and_never_show_the_token() {
        let cases = [
            (
                200,
                "not json",
                "token endpoint answered HTTP 200 with content type application/json, not JSON",
            ),
            (
                200,
                r#"{"expireTime":"2027-01-15T09:00:00Z"}"#,
                "token response is invalid: the service account impersonation response has no accessToken",
            ),
            (
                200,
                r#"{"accessToken":7,"expireTime":"2027-01-15T09:00:00Z"}"#,
                "token response is invalid: the service account impersonation response has an accessToken that is not a string",
            ),
            (
                200,
                r#"{"accessToken":"ya29.leak"}"#,
                "token response is invalid: the service account impersonation response has no expireTime",
            ),
            (
                200,
                r#"{"accessToken":"ya29.leak","expireTime":"in an hour"}"#,
                "token response is invalid: the service account impersonation response has an expireTime that is not an RFC 3339 time",
            ),
            (
                200,
                r#"{"accessToken":"ya29.leak","expireTime":"2027-01-15"}"#,
                "token response is invalid: the service account impersonation response has an expireTime that is not an RFC 3339 time",
            ),
            (
                200,
                r#"{"accessToken":"ya29.leak","expireTime":"2027-01-15T07:00:00Z"}"#,
                "token response is invalid: the service account impersonation response has an expireTime that has passed",
            ),
            (
                403,
                r#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied","status":"PERMISSION_DENIED"}}"#,
                "the identity provider refused the token request (HTTP 403): service account impersonation: PERMISSION_DENIED: Permission 'iam.serviceAccounts.getAccessToken' denied",
            ),
            (
                502,
                "<html>",
                "token endpoint answered HTTP 502 (application/json) without an OAuth error",
            ),
        ];
        for (status, body, expected) in cases {
            let err = parse(status, body).err().unwrap_or_else(|| panic!("{body} accepted"));
            let text = err.to_string();
            assert_eq!(text, expected);
            assert!(!text.contains("ya29"), "{text}");
        }
    }
}
