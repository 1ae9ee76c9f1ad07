//! Google's `external_account` credential file (workload identity federation), as
//! `gcloud iam workload-identity-pools create-cred-config` writes it: where the STS is, the
//! pool's audience, the file holding the workload's token, and the service account to
//! impersonate, if any.
//!
//! Errors name the field, never its value: the file is configuration, but a malformed one
//! might hold anything.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::check_endpoint_url;

/// What the credential file says, checked.
pub(super) struct CredentialFile {
    pub(super) token_url: Url,
    pub(super) audience: String,
    pub(super) subject_token_type: String,
    /// `credential_source.file`: the workload's token, read at every token request.
    pub(super) subject_token_file: PathBuf,
    /// `credential_source.format.subject_token_field_name` when the format is `json`.
    pub(super) subject_token_field: Option<String>,
    pub(super) impersonation: Option<(Url, Duration)>,
}

/// `service_account_impersonation.token_lifetime_seconds` when absent, and its bounds, as
/// the IAM Credentials API takes them.
const DEFAULT_LIFETIME: Duration = Duration::from_hours(1);
const MIN_LIFETIME_SECONDS: u64 = 600;
const MAX_LIFETIME_SECONDS: u64 = 43_200;

/// Reads the file's bytes; an error is (the field, what is wrong with it).
pub(super) fn parse(bytes: &[u8]) -> Result<CredentialFile, (&'static str, String)> {
    // serde_json's syntax errors give a line and column, never the text there.
    let json: Value = serde_json::from_slice(bytes).map_err(|err| ("(file)", format!("not JSON: {err}")))?;
    if !json.is_object() {
        return Err(("(file)", "expected a JSON object".into()));
    }
    match string(&json, "type")? {
        Some("external_account") => {}
        Some(_) => {
            return Err((
                "type",
                "must be external_account (a service account key or user credential holds a secret: use client_secret or private_key_jwt instead)".into(),
            ));
        }
        None => return Err(("type", "missing".into())),
    }
    let audience = required(&json, "audience")?.to_owned();
    let subject_token_type = required(&json, "subject_token_type")?.to_owned();
    if Url::parse(&subject_token_type).is_err() {
        return Err(("subject_token_type", "must be a token type URI (RFC 8693 §3)".into()));
    }
    let token_url = endpoint(&json, "token_url")?.ok_or(("token_url", "missing".to_owned()))?;
    let source = json
        .get("credential_source")
        .ok_or(("credential_source", "missing".to_owned()))?;
    if !source.is_object() {
        return Err(("credential_source", "must be an object".into()));
    }
    let subject_token_file = match string(source, "file").map_err(|_| ("credential_source.file", not_a_string()))? {
        Some(file) if !file.is_empty() => PathBuf::from(file),
        _ => {
            return Err((
                "credential_source.file",
                "missing: bearerd reads the workload's token from a file (url, executable and AWS sources are not supported)".into(),
            ));
        }
    };
    let subject_token_field = subject_token_field(source)?;
    let impersonation = match endpoint(&json, "service_account_impersonation_url")? {
        Some(url) => Some((url, lifetime(&json)?)),
        None => None,
    };
    Ok(CredentialFile {
        token_url,
        audience,
        subject_token_type,
        subject_token_file,
        subject_token_field,
        impersonation,
    })
}

fn not_a_string() -> String {
    "must be a string".into()
}

/// Member `name` of `object` when it is a string; `Err` when it is something else.
fn string<'a>(object: &'a Value, name: &'static str) -> Result<Option<&'a str>, (&'static str, String)> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err((name, not_a_string())),
    }
}

fn required<'a>(object: &'a Value, name: &'static str) -> Result<&'a str, (&'static str, String)> {
    match string(object, name)? {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err((name, "missing".into())),
    }
}

/// A URL bearerd sends a token request to: `https://` (loopback `http://` for development).
fn endpoint(object: &Value, name: &'static str) -> Result<Option<Url>, (&'static str, String)> {
    let Some(text) = string(object, name)? else {
        return Ok(None);
    };
    let url = Url::parse(text).map_err(|err| (name, format!("not a valid URL: {err}")))?;
    check_endpoint_url(&url).map_err(|message| (name, message))?;
    Ok(Some(url))
}

/// `credential_source.format`: `text` (the default: the whole file) or `json` with the
/// member that holds the token.
fn subject_token_field(source: &Value) -> Result<Option<String>, (&'static str, String)> {
    let Some(format) = source.get("format") else {
        return Ok(None);
    };
    if !format.is_object() {
        return Err(("credential_source.format", "must be an object".into()));
    }
    let kind = string(format, "type").map_err(|_| ("credential_source.format.type", not_a_string()))?;
    match kind {
        None | Some("text") => Ok(None),
        Some("json") => match string(format, "subject_token_field_name") {
            Ok(Some(field)) if !field.is_empty() => Ok(Some(field.to_owned())),
            _ => Err((
                "credential_source.format.subject_token_field_name",
                "missing: format json names the member that holds the token".into(),
            )),
        },
        Some(_) => Err(("credential_source.format.type", "must be text or json".into())),
    }
}

/// `service_account_impersonation.token_lifetime_seconds`, within what the IAM Credentials
/// API grants.
fn lifetime(json: &Value) -> Result<Duration, (&'static str, String)> {
    const FIELD: &str = "service_account_impersonation.token_lifetime_seconds";
    let Some(seconds) = json
        .get("service_account_impersonation")
        .and_then(|settings| settings.get("token_lifetime_seconds"))
    else {
        return Ok(DEFAULT_LIFETIME);
    };
    match seconds.as_u64() {
        Some(seconds) if (MIN_LIFETIME_SECONDS..=MAX_LIFETIME_SECONDS).contains(&seconds) => {
            Ok(Duration::from_secs(seconds))
        }
        _ => Err((
            FIELD,
            format!("must be a whole number of seconds from {MIN_LIFETIME_SECONDS} to {MAX_LIFETIME_SECONDS}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{
      "type": "external_account",
      "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k",
      "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
      "token_url": "https://sts.googleapis.com/v1/token",
      "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken",
      "service_account_impersonation": { "token_lifetime_seconds": 1800 },
      "credential_source": { "file": "/var/run/secrets/tokens/gcp-token", "format": { "type": "json", "subject_token_field_name": "id_token" } },
      "universe_domain": "googleapis.com"
    }"#;

    #[test]
    fn a_documented_file_is_read_whole() {
        let file = parse(FILE.as_bytes()).unwrap();
        assert_eq!(file.token_url.as_str(), "https://sts.googleapis.com/v1/token");
        assert_eq!(
            file.audience,
            "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k"
        );
        assert_eq!(file.subject_token_type, "urn:ietf:params:oauth:token-type:jwt");
        assert_eq!(
            file.subject_token_file,
            PathBuf::from("/var/run/secrets/tokens/gcp-token")
        );
        assert_eq!(file.subject_token_field.as_deref(), Some("id_token"));
        let (url, lifetime) = file.impersonation.unwrap();
        assert!(
            url.as_str()
                .ends_with("sa@p.iam.gserviceaccount.com:generateAccessToken")
        );
        assert_eq!(lifetime, Duration::from_secs(1800));
    }

    #[test]
    fn malformed_files_name_the_field_and_never_its_value() {
        let edit = |from: &str, to: &str| {
            assert!(FILE.contains(from), "{from}");
            FILE.replace(from, to)
        };
        let cases = [
            (
                "not json {".to_owned(),
                "(file)",
                "not JSON: expected ident at line 1 column 2",
            ),
            ("[]".to_owned(), "(file)", "expected a JSON object"),
            (
                edit(r#""type": "external_account""#, r#""type": "service_account""#),
                "type",
                "must be external_account",
            ),
            (edit(r#""audience""#, r#""audiences""#), "audience", "missing"),
            (
                edit(r#""urn:ietf:params:oauth:token-type:jwt""#, r#""jwt-secret-value""#),
                "subject_token_type",
                "must be a token type URI (RFC 8693 §3)",
            ),
            (
                edit("https://sts.googleapis.com", "http://sts.googleapis.com"),
                "token_url",
                "must be https://",
            ),
            (
                edit(
                    r#""file": "/var/run/secrets/tokens/gcp-token""#,
                    r#""url": "http://169.254.169.254/token""#,
                ),
                "credential_source.file",
                "missing: bearerd reads the workload's token from a file",
            ),
            (
                edit(r#""type": "json""#, r#""type": "yaml""#),
                "credential_source.format.type",
                "must be text or json",
            ),
            (
                edit(r#", "subject_token_field_name": "id_token""#, ""),
                "credential_source.format.subject_token_field_name",
                "missing",
            ),
            (
                edit("1800", "60"),
                "service_account_impersonation.token_lifetime_seconds",
                "must be a whole number of seconds from 600 to 43200",
            ),
            (
                edit(r#""audience": "//iam"#, r#""audience": 7, "x": "//iam"#),
                "audience",
                "must be a string",
            ),
        ];
        for (text, field, message) in cases {
            let Err((got_field, got)) = parse(text.as_bytes()) else {
                panic!("{field} accepted")
            };
            assert_eq!(got_field, field, "{got}");
            assert!(got.starts_with(message), "{field}: {got}");
            for value in ["service_account", "jwt-secret-value", "169.254", "yaml"] {
                assert!(!got.contains(value), "{field}: {got}");
            }
        }
    }

    #[test]
    fn text_format_and_no_impersonation_are_the_defaults() {
        let file = parse(
            br#"{"type":"external_account","audience":"a","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","token_url":"http://127.0.0.1:1/v1/token","credential_source":{"file":"/t"}}"#,
        )
        .unwrap();
        assert_eq!(file.subject_token_field, None);
        assert!(file.impersonation.is_none());
    }
}
