//! JWT client authentication (RFC 7523 §2.2, `OpenID` Connect Core §9): a client assertion
//! fresh for every token request, signed with the client's private key (`private_key_jwt`)
//! or, HS256, with its client secret (`client_secret_jwt`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

use crate::secret::ClientSecret;

/// `client_assertion_type` for a JWT (RFC 7523 §2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long an assertion is valid: well inside the 5 minutes providers accept, with room
/// for clock skew.
pub const LIFETIME: Duration = Duration::from_secs(120);
/// The shortest client secret that may key HS256: the hash's output size (RFC 7518 §3.2).
pub const MIN_HMAC_KEY_BYTES: usize = 32;

/// The JWS algorithm of the assertion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum SigningAlg {
    #[default]
    RS256,
    PS256,
    ES256,
}

impl SigningAlg {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::PS256 => "PS256",
            Self::ES256 => "ES256",
        }
    }
}

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// The client's private key and how it signs. `Debug` never shows the key.
pub struct SigningKey {
    alg: SigningAlg,
    key: Key,
    key_id: Option<String>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("key_id", &self.key_id)
            .field("key", &"[redacted]")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot sign the client assertion")]
pub struct SignError;

impl SigningKey {
    /// Reads a PEM private key (PKCS#1 or PKCS#8 RSA; SEC1 or PKCS#8 P-256 EC) for `alg`.
    pub fn from_pem(pem: &[u8], alg: SigningAlg, key_id: Option<String>) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|_| "no PEM private key (PKCS#1, PKCS#8 or SEC1) in the file".to_owned())?;
        let key = match (alg, &der) {
            (SigningAlg::RS256 | SigningAlg::PS256, PrivateKeyDer::Pkcs1(der)) => {
                RsaKeyPair::from_der(der.secret_pkcs1_der())
                    .map(Key::Rsa)
                    .map_err(|e| e.to_string())
            }
            (SigningAlg::RS256 | SigningAlg::PS256, PrivateKeyDer::Pkcs8(der)) => {
                RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                    .map(Key::Rsa)
                    .map_err(|e| e.to_string())
            }
            (SigningAlg::ES256, PrivateKeyDer::Sec1(der)) => {
                EcdsaKeyPair::from_private_key_der(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_sec1_der())
                    .map(Key::Ec)
                    .map_err(|e| e.to_string())
            }
            (SigningAlg::ES256, PrivateKeyDer::Pkcs8(der)) => {
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der())
                    .map(Key::Ec)
                    .map_err(|e| e.to_string())
            }
            (SigningAlg::ES256, _) => Err("ES256 needs a P-256 EC key (SEC1 or PKCS#8)".to_owned()),
            (_, _) => Err(format!("{} needs an RSA key (PKCS#1 or PKCS#8)", alg.as_str())),
        }
        .map_err(|cause| format!("not a usable {} key: {cause}", alg.as_str()))?;
        Ok(Self { alg, key, key_id })
    }

    #[must_use]
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// The public key: PKCS#1 `RSAPublicKey` DER for RSA, the uncompressed point for EC.
    #[must_use]
    pub fn public_key(&self) -> Vec<u8> {
        match &self.key {
            Key::Rsa(key) => key.public_key().as_ref().to_vec(),
            Key::Ec(key) => key.public_key().as_ref().to_vec(),
        }
    }

    /// A signed assertion: `iss` = `sub` = `client_id`, `aud` = the token endpoint, a
    /// random `jti`, `iat` = `now`, `exp` = `now` + [`LIFETIME`].
    pub fn assertion(&self, client_id: &str, audience: &str, now: SystemTime) -> Result<String, SignError> {
        let mut header = serde_json::json!({ "alg": self.alg.as_str(), "typ": "JWT" });
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.clone().into();
        }
        let rng = SystemRandom::new();
        signed(&header, &claims(client_id, audience, now)?, |input| {
            match (&self.key, self.alg) {
                (Key::Rsa(key), alg) => {
                    let padding: &'static dyn signature::RsaEncoding = if alg == SigningAlg::PS256 {
                        &signature::RSA_PSS_SHA256
                    } else {
                        &signature::RSA_PKCS1_SHA256
                    };
                    let mut out = vec![0_u8; key.public_modulus_len()];
                    key.sign(padding, &rng, input, &mut out).map_err(|_| SignError)?;
                    Ok(out)
                }
                (Key::Ec(key), _) => Ok(key.sign(&rng, input).map_err(|_| SignError)?.as_ref().to_vec()),
            }
        })
    }
}

/// A `client_secret_jwt` assertion: the claims of [`SigningKey::assertion`], HS256 with the
/// client secret's bytes as the key (`OpenID` Connect Core §9).
pub fn secret_assertion(
    secret: &ClientSecret,
    client_id: &str,
    audience: &str,
    now: SystemTime,
) -> Result<String, SignError> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    let header = serde_json::json!({ "alg": "HS256", "typ": "JWT" });
    signed(&header, &claims(client_id, audience, now)?, |input| {
        Ok(hmac::sign(&key, input).as_ref().to_vec())
    })
}

/// The claims of a client assertion (RFC 7523 §3): `iss` = `sub` = `client_id`, `aud` =
/// the token endpoint, a random `jti`, `iat` = `now`, `exp` = `now` + [`LIFETIME`].
fn claims(client_id: &str, audience: &str, now: SystemTime) -> Result<serde_json::Value, SignError> {
    let mut jti = [0_u8; 16];
    SystemRandom::new().fill(&mut jti).map_err(|_| SignError)?;
    let iat = now.duration_since(UNIX_EPOCH).map_err(|_| SignError)?.as_secs();
    Ok(serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": B64URL.encode(jti),
        "iat": iat,
        "exp": iat + LIFETIME.as_secs(),
    }))
}

/// A compact JWS (RFC 7515 §7.1): header and claims, and `sign`'s signature over them.
fn signed(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, SignError>,
) -> Result<String, SignError> {
    let input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let signature = sign(input.as_bytes())?;
    Ok(format!("{input}.{}", B64URL.encode(signature)))
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::UnparsedPublicKey;

    use super::*;

    fn rsa_pkcs8_pem() -> String {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .unwrap()
            .serialize_pem()
    }

    fn ec_pkcs8_pem() -> String {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem()
    }

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&B64URL.decode(part).unwrap()).unwrap()
    }

    fn verify(key: &SigningKey, jwt: &str, algorithm: &'static dyn signature::VerificationAlgorithm) {
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        UnparsedPublicKey::new(algorithm, key.public_key())
            .verify(input.as_bytes(), &B64URL.decode(sig).unwrap())
            .expect("the signature verifies with the public key");
    }

    #[test]
    fn claims_follow_rfc_7523() {
        let key = SigningKey::from_pem(rsa_pkcs8_pem().as_bytes(), SigningAlg::RS256, Some("k-2026".into())).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let jwt = key.assertion("client-1", "https://idp.test/oauth2/token", now).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            decode(parts[0]),
            serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": "k-2026" })
        );
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["aud"], "https://idp.test/oauth2/token");
        assert_eq!(claims["iat"], 1_800_000_000);
        assert_eq!(claims["exp"], 1_800_000_120);
        assert!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap() <= 300);
        verify(&key, &jwt, &signature::RSA_PKCS1_2048_8192_SHA256);
        // A fresh, unique jti every time.
        let again = key.assertion("client-1", "https://idp.test/oauth2/token", now).unwrap();
        assert_ne!(decode(again.split('.').nth(1).unwrap())["jti"], claims["jti"]);
    }

    #[test]
    fn ps256_and_es256_signatures_verify() {
        let ps = SigningKey::from_pem(rsa_pkcs8_pem().as_bytes(), SigningAlg::PS256, None).unwrap();
        let jwt = ps.assertion("c", "https://idp.test/t", SystemTime::now()).unwrap();
        assert_eq!(
            decode(jwt.split('.').next().unwrap()),
            serde_json::json!({ "alg": "PS256", "typ": "JWT" })
        );
        verify(&ps, &jwt, &signature::RSA_PSS_2048_8192_SHA256);

        let es = SigningKey::from_pem(ec_pkcs8_pem().as_bytes(), SigningAlg::ES256, None).unwrap();
        let jwt = es.assertion("c", "https://idp.test/t", SystemTime::now()).unwrap();
        let sig = B64URL.decode(jwt.rsplit('.').next().unwrap()).unwrap();
        assert_eq!(sig.len(), 64, "JWS ES256 signatures are r || s, not DER");
        verify(&es, &jwt, &signature::ECDSA_P256_SHA256_FIXED);
    }

    #[test]
    fn a_key_that_does_not_fit_the_algorithm_is_refused() {
        let err = SigningKey::from_pem(ec_pkcs8_pem().as_bytes(), SigningAlg::RS256, None).unwrap_err();
        assert!(err.starts_with("not a usable RS256 key"), "{err}");
        let err = SigningKey::from_pem(b"not a key", SigningAlg::ES256, None).unwrap_err();
        assert_eq!(err, "no PEM private key (PKCS#1, PKCS#8 or SEC1) in the file");
        let key = SigningKey::from_pem(ec_pkcs8_pem().as_bytes(), SigningAlg::ES256, None).unwrap();
        assert!(!format!("{key:?}").contains("BEGIN"));
        assert!(format!("{key:?}").contains("[redacted]"));
    }

    #[test]
    fn client_secret_jwt_is_hs256_keyed_with_the_secret() {
        let secret = ClientSecret::new("a client secret of 32+ bytes: p@ss:w0rd/+%=&?");
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let jwt = secret_assertion(&secret, "client-1", "https://idp.test/oauth2/token", now).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(decode(parts[0]), serde_json::json!({ "alg": "HS256", "typ": "JWT" }));
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["aud"], "https://idp.test/oauth2/token");
        assert_eq!(claims["iat"], 1_800_000_000);
        assert_eq!(claims["exp"], 1_800_000_120);
        assert_eq!(B64URL.decode(claims["jti"].as_str().unwrap()).unwrap().len(), 16);
        assert_eq!(claims.as_object().unwrap().len(), 6, "{claims}");

        // The MAC is over `header.claims` with the secret's bytes as the key, and nothing else.
        let signature = B64URL.decode(parts[2]).unwrap();
        assert_eq!(signature.len(), 32);
        let input = format!("{}.{}", parts[0], parts[1]);
        let key = |text: &str| hmac::Key::new(hmac::HMAC_SHA256, text.as_bytes());
        hmac::verify(&key(secret.expose()), input.as_bytes(), &signature).expect("keyed with the secret");
        assert!(
            hmac::verify(
                &key("another secret of at least 32 bytes!"),
                input.as_bytes(),
                &signature
            )
            .is_err()
        );
        assert!(hmac::verify(&key(secret.expose()), parts[1].as_bytes(), &signature).is_err());

        let again = secret_assertion(&secret, "client-1", "https://idp.test/oauth2/token", now).unwrap();
        assert_ne!(
            decode(again.split('.').nth(1).unwrap())["jti"],
            claims["jti"],
            "a fresh jti"
        );
        assert!(!jwt.contains(secret.expose()));
    }
}
