//! `OpenID` Connect Discovery 1.0: the token endpoint named by the document at
//! `{issuer}/.well-known/openid-configuration` (or `discovery_url`).
//!
//! The document must be JSON whose `issuer` is exactly the configured issuer (§4.3: this is
//! what stops one provider from naming endpoints for another). Clients that authenticate
//! with a certificate use `mtls_endpoint_aliases.token_endpoint` when the document has it
//! (RFC 8705 §5).

use serde::Deserialize;
use url::Url;

use crate::config::{ClientAuth, check_endpoint_url};
use crate::secret::ClientSecret;

/// What bearerd takes from a discovery document.
#[derive(Debug, PartialEq, Eq)]
pub struct Discovered {
    pub token_endpoint: Url,
    /// RFC 8705 §5: where clients presenting a certificate send token requests.
    pub mtls_token_endpoint: Option<Url>,
    /// Where the authorization code grant's consent starts (RFC 8414 §2).
    pub authorization_endpoint: Option<Url>,
    /// RFC 9207 §3: the provider puts `iss` on every authorization response.
    pub iss_parameter_supported: bool,
}

impl Discovered {
    /// The endpoint a client authenticating with `client_auth` uses.
    #[must_use]
    pub fn token_endpoint(&self, client_auth: ClientAuth) -> &Url {
        match (client_auth, &self.mtls_token_endpoint) {
            (ClientAuth::TlsClientAuth, Some(alias)) => alias,
            _ => &self.token_endpoint,
        }
    }
}

#[derive(Deserialize)]
struct Document {
    issuer: Option<serde_json::Value>,
    token_endpoint: Option<serde_json::Value>,
    mtls_endpoint_aliases: Option<serde_json::Value>,
    authorization_endpoint: Option<serde_json::Value>,
    authorization_response_iss_parameter_supported: Option<serde_json::Value>,
}

/// Reads a discovery document; the error says what is wrong with it.
pub fn parse_document(expected_issuer: &str, body: &[u8]) -> Result<Discovered, String> {
    let document: Document =
        serde_json::from_slice(body).map_err(|_| "the document is not a JSON object".to_owned())?;
    match document.issuer.as_ref().map(|v| v.as_str()) {
        Some(Some(issuer)) if issuer == expected_issuer => {}
        Some(Some(issuer)) => {
            return Err(format!(
                "its issuer `{}` is not the configured issuer `{expected_issuer}`",
                quote(issuer, None)
            ));
        }
        Some(None) => return Err("its issuer is not a string".into()),
        None => return Err("it has no issuer".into()),
    }
    let token_endpoint = endpoint(document.token_endpoint.as_ref(), "token_endpoint")?
        .ok_or_else(|| "it has no token_endpoint".to_owned())?;
    let alias = document
        .mtls_endpoint_aliases
        .as_ref()
        .and_then(|aliases| aliases.get("token_endpoint"));
    let mtls_token_endpoint = endpoint(alias, "mtls_endpoint_aliases.token_endpoint")?;
    let authorization_endpoint = endpoint(document.authorization_endpoint.as_ref(), "authorization_endpoint")?;
    let iss_parameter_supported =
        document.authorization_response_iss_parameter_supported == Some(serde_json::Value::Bool(true));
    Ok(Discovered {
        token_endpoint,
        mtls_token_endpoint,
        authorization_endpoint,
        iss_parameter_supported,
    })
}

fn endpoint(value: Option<&serde_json::Value>, field: &str) -> Result<Option<Url>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = value.as_str().ok_or_else(|| format!("its {field} is not a string"))?;
    let url = Url::parse(text).map_err(|err| format!("its {field} is not a valid URL: {err}"))?;
    check_endpoint_url(&url)
        .map_err(|message| format!("its {field} `{}` {message}", crate::config::endpoint_name(&url)))?;
    Ok(Some(url))
}

/// Provider text quoted in messages is cut to this many characters.
const MAX_QUOTED_CHARS: usize = 300;

/// Provider text made safe to repeat: printable, bounded, and never the client secret.
pub(super) fn quote(text: &str, secret: Option<&ClientSecret>) -> String {
    let mut text: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_QUOTED_CHARS)
        .collect();
    if let Some(secret) = secret
        .map(ClientSecret::expose)
        .filter(|s| !s.is_empty() && text.contains(s))
    {
        text = text.replace(secret, "[redacted]");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "https://idp.test/tenant";

    #[test]
    fn takes_the_token_endpoint_and_the_mtls_alias() {
        let body = br#"{"issuer":"https://idp.test/tenant","token_endpoint":"https://idp.test/tenant/token",
            "mtls_endpoint_aliases":{"token_endpoint":"https://mtls.idp.test/tenant/token"},"jwks_uri":"https://idp.test/jwks"}"#;
        let found = parse_document(ISSUER, body).unwrap();
        assert_eq!(
            found.token_endpoint(ClientAuth::ClientSecretBasic).as_str(),
            "https://idp.test/tenant/token"
        );
        assert_eq!(
            found.token_endpoint(ClientAuth::PrivateKeyJwt).as_str(),
            "https://idp.test/tenant/token"
        );
        assert_eq!(
            found.token_endpoint(ClientAuth::TlsClientAuth).as_str(),
            "https://mtls.idp.test/tenant/token"
        );
        assert_eq!(found.authorization_endpoint, None);
        assert!(!found.iss_parameter_supported);
        let plain = parse_document(
            ISSUER,
            br#"{"issuer":"https://idp.test/tenant","token_endpoint":"https://idp.test/t"}"#,
        )
        .unwrap();
        assert_eq!(
            plain.token_endpoint(ClientAuth::TlsClientAuth).as_str(),
            "https://idp.test/t"
        );
    }

    #[test]
    fn takes_the_authorization_endpoint_and_iss_support() {
        let body = br#"{"issuer":"https://idp.test/tenant","token_endpoint":"https://idp.test/t",
            "authorization_endpoint":"https://idp.test/tenant/authorize?p=flow",
            "authorization_response_iss_parameter_supported":true}"#;
        let found = parse_document(ISSUER, body).unwrap();
        assert_eq!(
            found.authorization_endpoint.unwrap().as_str(),
            "https://idp.test/tenant/authorize?p=flow"
        );
        assert!(found.iss_parameter_supported);
        let body = br#"{"issuer":"https://idp.test/tenant","token_endpoint":"https://idp.test/t",
            "authorization_endpoint":"http://idp.test/authorize","authorization_response_iss_parameter_supported":"yes"}"#;
        assert_eq!(
            parse_document(ISSUER, body).unwrap_err(),
            "its authorization_endpoint `http://idp.test/authorize` must be https:// (http:// is allowed only for loopback, for development)"
        );
    }

    #[test]
    fn the_issuer_must_match_exactly_and_endpoints_must_be_https() {
        let cases: [(&[u8], &str); 9] = [
            (
                br#"{"issuer":"https://idp.test/tenant/","token_endpoint":"https://idp.test/t"}"#,
                "its issuer `https://idp.test/tenant/` is not the configured issuer `https://idp.test/tenant`",
            ),
            (
                br#"{"issuer":"https://evil.test","token_endpoint":"https://evil.test/t"}"#,
                "its issuer `https://evil.test` is not the configured issuer `https://idp.test/tenant`",
            ),
            (br#"{"token_endpoint":"https://idp.test/t"}"#, "it has no issuer"),
            (br#"{"issuer":7}"#, "its issuer is not a string"),
            (br#"{"issuer":"https://idp.test/tenant"}"#, "it has no token_endpoint"),
            (
                br#"{"issuer":"https://idp.test/tenant","token_endpoint":"http://idp.test/t?x=1"}"#,
                "its token_endpoint `http://idp.test/t` must be https:// (http:// is allowed only for loopback, for development)",
            ),
            (
                br#"{"issuer":"https://idp.test/tenant","token_endpoint":"/token"}"#,
                "its token_endpoint is not a valid URL: relative URL without a base",
            ),
            (
                br#"{"issuer":"https://idp.test/tenant","token_endpoint":"https://idp.test/t","mtls_endpoint_aliases":{"token_endpoint":42}}"#,
                "its mtls_endpoint_aliases.token_endpoint is not a string",
            ),
            (b"<html>", "the document is not a JSON object"),
        ];
        for (body, message) in cases {
            assert_eq!(
                parse_document(ISSUER, body).unwrap_err(),
                message,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
