//! What a request to a token endpoint (or the impersonation hop after it) gave back: a token
//! response or the error that says why not, and the reading of an HTTP answer shared by
//! every such request.

use std::time::Duration;

use http::header;

use crate::secret::{AccessToken, RefreshToken};

/// Token responses larger than this are refused: no identity provider needs more.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// What a successful token response gave.
#[derive(Debug)]
pub struct TokenResponse {
    pub access_token: AccessToken,
    pub expires_in: Option<Duration>,
    /// The scopes granted, when the provider says (RFC 6749 §5.1).
    pub scope: Option<String>,
    /// A new refresh token, when the provider issued one (§5.1; §6 for rotation).
    pub refresh_token: Option<RefreshToken>,
}

/// Why no token came back. Messages name the cause and never a secret or token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token request to {endpoint} timed out after {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("token request to {endpoint} failed: {cause}")]
    Transport { endpoint: String, cause: String },
    /// No connection could be made (refused, unresolvable, TLS handshake failed).
    #[error("token request to {endpoint} failed: {cause}")]
    Connect { endpoint: String, cause: String },
    #[error("OpenID Connect discovery at {document} failed: {problem}")]
    Discovery { document: String, problem: String },
    #[error("the identity provider refused the token request (HTTP {status}): {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        status: u16,
        error: String,
        description: Option<String>,
    },
    #[error("token endpoint answered HTTP {status} ({content_type}) without an OAuth error{}", if *status >= 300 && *status < 400 { "; redirects are not followed" } else { "" })]
    BadStatus { status: u16, content_type: String },
    #[error("token endpoint answered HTTP {status} with content type {content_type}, not JSON")]
    NotJson { status: u16, content_type: String },
    #[error("token response is invalid: {0}")]
    Invalid(String),
    /// `assertion_file` (or `subject_token_file`: `what` says) holds nothing that may be
    /// sent. Names the file, never its content.
    #[error("{what} {file} {problem}")]
    Assertion {
        what: &'static str,
        file: String,
        problem: String,
    },
    #[error("token response is larger than {} bytes", MAX_RESPONSE_BYTES)]
    TooLarge,
    /// A user grant holds no refresh token the provider still honours.
    #[error("auth config `{auth_config}` needs a new consent: {remedy}{}", refusal.as_deref().map(|r| format!(" (the identity provider refused its refresh token: {r})")).unwrap_or_default())]
    ConsentRequired {
        auth_config: String,
        /// What the operator does about it.
        remedy: String,
        /// The provider's `error` and `error_description`, when a refusal is why.
        refusal: Option<String>,
    },
    /// The refresh token could not be kept in `state.file`.
    #[error("{0}")]
    State(String),
}

impl TokenError {
    /// Whether the endpoint itself looks gone (no connection, or 404): the sign that a
    /// discovery document may be out of date.
    pub(super) fn endpoint_gone(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Refused { status, .. } | Self::BadStatus { status, .. } => *status == 404,
            _ => false,
        }
    }
}

/// The response's `Content-Type`, as errors quote it.
pub(super) fn content_type_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no content type")
        .to_owned()
}

/// The whole body, at most [`MAX_RESPONSE_BYTES`]; `Err(None)` when it is larger.
pub(super) async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, Option<reqwest::Error>> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Err(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Some)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A request to `endpoint` that got no complete answer within `timeout`, or none at all.
pub(super) fn transport_error(err: reqwest::Error, endpoint: &str, timeout: Duration) -> TokenError {
    if err.is_timeout() {
        TokenError::Timeout {
            endpoint: endpoint.to_owned(),
            timeout,
        }
    } else if err.is_connect() {
        TokenError::Connect {
            endpoint: endpoint.to_owned(),
            cause: crate::chain(&err.without_url()),
        }
    } else {
        TokenError::Transport {
            endpoint: endpoint.to_owned(),
            cause: crate::chain(&err.without_url()),
        }
    }
}
