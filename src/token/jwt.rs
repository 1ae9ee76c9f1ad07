//! The `exp` claim of an access token that is a JWT, read to time the token's expiry and for
//! nothing else: bearerd is not the token's audience, so it checks no signature, trusts no
//! other claim, and never logs what it read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

/// base64url, with or without `=` padding: RFC 7515 leaves it out, some issuers put it in,
/// and their `exp` bounds the token all the same.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// When `token` expires by its `exp` claim (RFC 7519 §4.1.4: seconds since the epoch,
/// possibly fractional), if it is a JWS in compact form (RFC 7515 §7.1: base64url header and
/// payload that are JSON objects, and a base64url signature). Any other token, a malformed
/// JWT among them, is opaque to bearerd: `None`, and its lifetime is `expires_in`'s alone.
#[must_use]
pub fn expiry(token: &str) -> Option<SystemTime> {
    claims(token).and_then(|claims| exp(&claims))
}

/// The `exp` of an assertion bearerd sends for a workload (`assertion_file`), when it has
/// one; an error when it is not a JWS in compact form, since no identity provider would take
/// it. As for access tokens, no signature or other claim is checked: the provider does that.
pub fn assertion_expiry(assertion: &str) -> Result<Option<SystemTime>, NotAJwt> {
    claims(assertion).map(|claims| exp(&claims)).ok_or(NotAJwt)
}

/// Who a workload's JWT says it is: its `iss`, `sub` and `aud` claims as written (the same
/// for each rotation of one workload's token, different between workloads), or `None` when
/// `token` is not a JWT. Used only to name a shared token ([`crate::shared_cache`]), never
/// shown: the provider, not bearerd, decides what the token proves.
#[must_use]
pub fn identity(token: &str) -> Option<String> {
    let claims = claims(token)?;
    let claim = |name| claims.get(name).map(Value::to_string).unwrap_or_default();
    Some([claim("iss"), claim("sub"), claim("aud")].join("\u{1f}"))
}

/// Why an assertion was refused. It says what a JWT is, never what was found instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("does not hold a JWT (three base64url parts, the first two JSON objects)")]
pub struct NotAJwt;

/// The claims of a JWS in compact form; `None` for anything else.
fn claims(token: &str) -> Option<Map<String, Value>> {
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return None;
    };
    if !signature
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
    {
        return None;
    }
    serde_json::from_slice::<Map<String, Value>>(&B64URL.decode(header).ok()?).ok()?;
    // Of duplicate names the last counts, as RFC 7519 §4 lets a parser do.
    serde_json::from_slice(&B64URL.decode(payload).ok()?).ok()
}

/// The `exp` claim as a time, when it is one.
fn exp(claims: &Map<String, Value>) -> Option<SystemTime> {
    let exp = claims.get("exp")?.as_number()?;
    let since_epoch = match exp.as_u64() {
        Some(secs) => Duration::from_secs(secs),
        // Negative, or past what a Duration holds: not a time this token could mean.
        None => Duration::try_from_secs_f64(exp.as_f64()?).ok()?,
    };
    UNIX_EPOCH.checked_add(since_epoch)
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{URL_SAFE as PADDED, URL_SAFE_NO_PAD};

    use super::*;

    /// A JWT with `claims` as its payload (JSON text), as issuers encode one.
    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_jwt_gives_its_exp() {
        assert_eq!(
            expiry(&jwt(r#"{"iss":"https://idp.test","iat":1767225600,"exp":1767229200}"#)),
            Some(at(1_767_229_200))
        );
        // An unsecured JWT (RFC 7519 §6) has an empty signature.
        let unsecured = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"exp":1767229200}"#)
        );
        assert_eq!(expiry(&unsecured), Some(at(1_767_229_200)));
        assert_eq!(expiry(&jwt(r#"{"exp":0}"#)), Some(at(0)));
        assert_eq!(
            expiry(&jwt(r#"{"exp":1767229300,"exp":1767229200}"#)),
            Some(at(1_767_229_200)),
            "the last of duplicate names"
        );
    }

    #[test]
    fn padded_and_unpadded_segments_both_read() {
        // Lengths that need one and two `=` when padded.
        for claims in [
            r#"{"exp":1767229200}"#,
            r#"{"exp":1767229200,"a":1}"#,
            r#"{"exp":1767229200,"ab":1}"#,
        ] {
            let header = r#"{"alg":"HS256"}"#;
            let padded = format!("{}.{}.c2ln", PADDED.encode(header), PADDED.encode(claims));
            let unpadded = format!(
                "{}.{}.c2ln",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            assert_eq!(expiry(&padded), Some(at(1_767_229_200)), "{padded}");
            assert_eq!(expiry(&unpadded), Some(at(1_767_229_200)), "{unpadded}");
        }
        // base64url, not base64: `+` and `/` are not in its alphabet.
        let standard = base64::engine::general_purpose::STANDARD.encode(r#"{"exp":1767229200,"x":"~~~"}"#);
        assert!(standard.contains('+') || standard.contains('/'), "{standard}");
        assert_eq!(
            expiry(&format!("{}.{standard}.c2ln", URL_SAFE_NO_PAD.encode("{}"))),
            None
        );
    }

    #[test]
    fn a_fractional_exp_keeps_its_fraction() {
        assert_eq!(
            expiry(&jwt(r#"{"exp":1767229200.25}"#)),
            Some(UNIX_EPOCH + Duration::from_millis(1_767_229_200_250))
        );
        assert_eq!(expiry(&jwt(r#"{"exp":1.7672292e9}"#)), Some(at(1_767_229_200)));
    }

    #[test]
    fn opaque_and_malformed_tokens_have_no_exp() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#);
        let claims = URL_SAFE_NO_PAD.encode(r#"{"exp":1767229200}"#);
        let cases = [
            String::new(),
            "2YotnFZFEjr1zCsicMWpAA".to_owned(),
            "..".to_owned(),
            format!("{header}.{claims}"),
            format!("{header}.{claims}.c2ln.extra"),
            format!("{header}.{claims}.c2ln.a.b"),
            format!("{header}.{claims}.not base64"),
            format!("{header}.!!!.c2ln"),
            format!("!!!.{claims}.c2ln"),
            format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode("not json")),
            format!("{}.{claims}.c2ln", URL_SAFE_NO_PAD.encode("not json")),
            format!("{}.{claims}.c2ln", URL_SAFE_NO_PAD.encode("[1]")),
            format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode("[1767229200]")),
            format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode([0xff, 0xfe, b'{'])),
            // Payload bytes cut short: one base64url character too many to be whole bytes.
            format!("{header}.{claims}A.c2ln"),
            jwt(r#"{"iat":1767225600}"#),
            jwt(r#"{"exp":"1767229200"}"#),
            jwt(r#"{"exp":null}"#),
            jwt(r#"{"exp":true}"#),
            jwt(r#"{"exp":[1767229200]}"#),
            jwt(r#"{"exp":-1}"#),
            jwt(r#"{"exp":-0.5}"#),
        ];
        for token in cases {
            assert_eq!(expiry(&token), None, "{token}");
        }
    }

    #[test]
    fn an_exp_too_far_out_for_the_clock_is_no_exp() {
        assert_eq!(expiry(&jwt(r#"{"exp":1e300}"#)), None);
        assert_eq!(expiry(&jwt(&format!(r#"{{"exp":{}}}"#, u64::MAX))), None);
        assert_eq!(expiry(&jwt(r#"{"exp":184467440737095516150}"#)), None);
        // Far, but a time all the same: it bounds nothing `expires_in` does not.
        assert_eq!(expiry(&jwt(r#"{"exp":253402300799}"#)), Some(at(253_402_300_799)));
    }

    #[test]
    fn a_workloads_identity_is_its_issuer_subject_and_audience_across_rotations() {
        let first = jwt(r#"{"iss":"https://k8s","sub":"system:serviceaccount:a:b","aud":["x"],"exp":1,"jti":"1"}"#);
        let rotated = jwt(r#"{"jti":"2","exp":2,"aud":["x"],"sub":"system:serviceaccount:a:b","iss":"https://k8s"}"#);
        let other = jwt(r#"{"iss":"https://k8s","sub":"system:serviceaccount:a:c","aud":["x"],"exp":1}"#);
        let audience = jwt(r#"{"iss":"https://k8s","sub":"system:serviceaccount:a:b","aud":"y","exp":1}"#);
        assert_eq!(identity(&first), identity(&rotated));
        assert!(identity(&first).is_some());
        assert_ne!(identity(&first), identity(&other));
        assert_ne!(identity(&first), identity(&audience));
        assert_eq!(identity("opaque"), None);
    }

    #[test]
    fn an_assertion_must_be_a_jwt_and_may_lack_an_exp() {
        assert_eq!(
            assertion_expiry(&jwt(r#"{"sub":"system:serviceaccount:ns:sa","exp":1767229200}"#)),
            Ok(Some(at(1_767_229_200)))
        );
        assert_eq!(assertion_expiry(&jwt(r#"{"sub":"spiffe://test/w"}"#)), Ok(None));
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#);
        for not_a_jwt in [
            "opaque-token".to_owned(),
            format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode("[1]")),
            format!("{header}.c2ln"),
        ] {
            assert_eq!(assertion_expiry(&not_a_jwt), Err(NotAJwt), "{not_a_jwt}");
        }
    }
}
