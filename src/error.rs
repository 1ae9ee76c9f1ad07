//! The errors bearerd answers with itself, and the one table that turns them into responses.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::ProxyBody;
use crate::token::{TokenError, TokenFailure};

/// Marks a response as bearerd's own, so apps can tell it from the upstream's.
pub const X_BEARERD_ERROR: &str = "x-bearerd-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no auth config named `{0}`")]
    UnknownAuthConfig(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    RouteDenied(String),
    #[error("host `{host}` is not in allowed_hosts of auth config `{auth_config}`; nothing was sent")]
    HostNotAllowed { host: String, auth_config: String },
    #[error("no access token: {0}")]
    TokenUnavailable(Arc<TokenError>),
    #[error("no access token: {failure}")]
    TokenBackoff {
        retry_after: Duration,
        failure: TokenFailure,
    },
    #[error("upstream {authority} unreachable: {cause}")]
    UpstreamUnreachable { authority: String, cause: String },
    #[error("upstream {authority} did not answer within {timeout:?}")]
    UpstreamTimeout { authority: String, timeout: Duration },
}

impl From<TokenFailure> for ProxyError {
    fn from(failure: TokenFailure) -> Self {
        match failure {
            TokenFailure::Unavailable(err) => Self::TokenUnavailable(err),
            TokenFailure::Backoff { retry_after, .. } => Self::TokenBackoff { retry_after, failure },
        }
    }
}

impl ProxyError {
    /// The code of DESIGN.md's table, as sent in the body and `X-Bearerd-Error`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownAuthConfig(_) => "unknown_auth_config",
            Self::BadRequest(_) => "bad_request",
            Self::RouteDenied(_) => "route_denied",
            Self::HostNotAllowed { .. } => "host_not_allowed",
            Self::TokenUnavailable(_) => "token_unavailable",
            Self::TokenBackoff { .. } => "token_backoff",
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
        }
    }

    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownAuthConfig(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::RouteDenied(_) | Self::HostNotAllowed { .. } => StatusCode::FORBIDDEN,
            Self::TokenUnavailable(_) | Self::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::TokenBackoff { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The app's request body failed while it was being sent on (a malformed chunk, the app
/// gone): the app's fault, answered 400 whichever side of the exchange noticed it.
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read: {0}")]
pub struct AppBodyError(pub crate::BoxError);

impl AppBodyError {
    /// The app's body error among `err` and its causes.
    #[must_use]
    pub fn in_chain<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut source = Some(err);
        while let Some(cause) = source {
            if let Some(found) = cause.downcast_ref::<Self>() {
                return Some(found);
            }
            source = cause.source();
        }
        None
    }
}

/// Logs the error once and turns it into bearerd's JSON error response.
#[must_use]
pub fn respond(error: &ProxyError, auth_config: Option<&str>) -> Response<ProxyBody> {
    let code = error.code();
    let message = error.to_string();
    if error.status().is_server_error() {
        tracing::warn!(code, auth_config = auth_config.unwrap_or("none"), "{message}");
    } else {
        tracing::debug!(code, auth_config = auth_config.unwrap_or("none"), "{message}");
    }
    let body = serde_json::json!({ "error": code, "message": message, "auth_config": auth_config });
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(X_BEARERD_ERROR, HeaderValue::from_static(code));
    if let ProxyError::TokenBackoff { retry_after, .. } = error {
        // Whole seconds, rounded up: retrying early would only meet the back-off again.
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_response_carries_code_status_and_json() {
        let error = ProxyError::HostNotAllowed {
            host: "evil.test:443".into(),
            auth_config: "billing".into(),
        };
        let response = respond(&error, Some("billing"));
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[X_BEARERD_ERROR], "host_not_allowed");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "host_not_allowed");
        assert_eq!(json["auth_config"], "billing");
        assert_eq!(
            json["message"],
            "host `evil.test:443` is not in allowed_hosts of auth config `billing`; nothing was sent"
        );
        let none = respond(&ProxyError::BadRequest("x".into()), None);
        let body = none.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()["auth_config"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn backoff_answers_503_with_retry_after_in_whole_seconds() {
        let failure = TokenFailure::Backoff {
            retry_after: Duration::from_millis(1500),
            failures: 2,
            last_error: Some(Arc::new(TokenError::BadStatus {
                status: 500,
                content_type: "text/html".into(),
            })),
        };
        let response = respond(&ProxyError::from(failure), Some("billing"));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[X_BEARERD_ERROR], "token_backoff");
    }

    #[test]
    fn every_code_has_the_designed_status() {
        let timeout = ProxyError::UpstreamTimeout {
            authority: "a".into(),
            timeout: Duration::from_secs(1),
        };
        let unreachable = ProxyError::UpstreamUnreachable {
            authority: "a".into(),
            cause: "refused".into(),
        };
        let cases = [
            (ProxyError::UnknownAuthConfig("x".into()), "unknown_auth_config", 400),
            (ProxyError::BadRequest("x".into()), "bad_request", 400),
            (ProxyError::RouteDenied("x".into()), "route_denied", 403),
            (
                ProxyError::HostNotAllowed {
                    host: "h".into(),
                    auth_config: "c".into(),
                },
                "host_not_allowed",
                403,
            ),
            (
                ProxyError::TokenUnavailable(Arc::new(TokenError::TooLarge)),
                "token_unavailable",
                502,
            ),
            (unreachable, "upstream_unreachable", 502),
            (
                ProxyError::from(TokenFailure::Backoff {
                    retry_after: Duration::from_millis(1500),
                    failures: 2,
                    last_error: None,
                }),
                "token_backoff",
                503,
            ),
            (timeout, "upstream_timeout", 504),
        ];
        for (error, code, status) in cases {
            assert_eq!((error.code(), error.status().as_u16()), (code, status));
        }
    }
}
