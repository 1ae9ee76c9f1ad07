//! What the shared cache writes to Redis: key names that identify a token without naming
//! its config or credential, and values sealed so that Redis never holds a readable token.
//!
//! Two keys are derived from `shared_cache.key_file`, one per purpose, so the key that
//! names entries is never the key that encrypts them:
//! - names: `{prefix}:token:{hash}`, where `hash` is the SHA-256 of the config's
//!   token-shaping fields and an HMAC of its credential. Configs share a name exactly when
//!   a provider would issue them the same token; the credential cannot be guessed from it.
//! - values: `v1` ‖ nonce ‖ AES-256-GCM(token JSON), with the key name as associated data,
//!   so a value copied to another name, sealed under another key or altered does not open.

use std::time::{Duration, SystemTime};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, Credential};
use crate::secret::{AccessToken, SealingKey};
use crate::state::Record;

/// The first bytes of every value, naming its format.
const FORMAT: &[u8] = b"v1";

/// A token as the fleet shares it: the access token and its lifetime on the wall clock,
/// which every process reads the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedToken {
    pub token: AccessToken,
    /// Never handed out at or after this time.
    pub expires_at: SystemTime,
    /// From this time on, one process of the fleet refreshes it.
    pub refresh_at: SystemTime,
    /// Scopes the provider granted, when it said.
    pub scope: Option<String>,
}

/// The sealed JSON; fields short, since every process reads it at each local miss.
#[derive(Serialize, Deserialize)]
struct Plain<'a> {
    #[serde(rename = "t")]
    token: &'a str,
    /// Unix milliseconds.
    #[serde(rename = "e")]
    expires_at: u64,
    #[serde(rename = "r")]
    refresh_at: u64,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

/// Why a value in Redis was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsealed {
    #[error("it is not a value this bearerd writes")]
    Malformed,
    #[error("it does not open with shared_cache.key_file: sealed with another key, or altered")]
    Foreign,
}

/// Names entries and seals their values with the keys derived from `shared_cache.key_file`.
pub struct Sealer {
    seal: RandomizedNonceKey,
    name: hmac::Key,
    prefix: String,
}

impl Sealer {
    /// # Panics
    /// Never: the derived key is always 32 bytes, which AES-256-GCM takes.
    #[must_use]
    pub fn new(key: &SealingKey, prefix: &str) -> Self {
        let master = hmac::Key::new(hmac::HMAC_SHA256, key.expose());
        let derive = |purpose: &str| hmac::sign(&master, purpose.as_bytes());
        let seal_key = derive("bearerd shared_cache seal v1");
        Self {
            // AES-256-GCM takes any 32-byte key, and HMAC-SHA256 gives 32 bytes.
            seal: RandomizedNonceKey::new(&AES_256_GCM, seal_key.as_ref()).expect("a 32-byte AES-256-GCM key"),
            name: hmac::Key::new(hmac::HMAC_SHA256, derive("bearerd shared_cache name v1").as_ref()),
            prefix: prefix.to_owned(),
        }
    }

    /// The hash that names `config`'s token: its token-shaping fields and a keyed digest of
    /// its credential and of `workload` (who its token files say the workload is; empty
    /// without them), never either itself.
    #[must_use]
    pub fn token_hash(&self, config: &AuthConfig, workload: &[u8]) -> String {
        let credential = hmac::sign(
            &self.name,
            &[&credential_bytes(&config.credential), b"\x1f".as_slice(), workload].concat(),
        );
        let mut shaped = config.token_shape().into_bytes();
        shaped.push(0x1f);
        // A user grant's token is whoever consented: the replicas of one service (one
        // config id) share it, and another service's config of the same shape does not.
        if config.grant.is_user_grant() {
            shaped.extend_from_slice(config.id.as_bytes());
            shaped.push(0x1f);
        }
        shaped.extend_from_slice(credential.as_ref());
        hex(digest(&SHA256, &shaped).as_ref())
    }

    /// `{prefix}:token:{hash}`: where the sealed token lives.
    #[must_use]
    pub fn token_key(&self, hash: &str) -> String {
        format!("{}:token:{hash}", self.prefix)
    }

    /// `{prefix}:grant:{hash}`: where a user grant's sealed refresh token lives.
    #[must_use]
    pub fn grant_key(&self, hash: &str) -> String {
        format!("{}:grant:{hash}", self.prefix)
    }

    /// `{prefix}:lease:{hash}`: held by the one process fetching that token.
    #[must_use]
    pub fn lease_key(&self, hash: &str) -> String {
        format!("{}:lease:{hash}", self.prefix)
    }

    /// `token` sealed for the entry `key`, with a fresh random nonce.
    ///
    /// # Panics
    /// Never: the JSON holds only strings and numbers.
    #[must_use]
    pub fn seal(&self, key: &str, token: &SharedToken) -> Vec<u8> {
        let plain = Plain {
            token: token.token.expose(),
            expires_at: unix_millis(token.expires_at),
            refresh_at: unix_millis(token.refresh_at),
            scope: token.scope.as_deref(),
        };
        self.seal_bytes(key, serde_json::to_vec(&plain).expect("strings and numbers serialize"))
    }

    /// The token in `value`, read from the entry `key`.
    pub fn open(&self, key: &str, value: &[u8]) -> Result<SharedToken, Unsealed> {
        let plain = self.open_bytes(key, value)?;
        // Sealed by a bearerd holding the key: a shape it does not read is a newer format.
        let plain: Plain = serde_json::from_slice(&plain).map_err(|_| Unsealed::Malformed)?;
        Ok(SharedToken {
            token: AccessToken::new(plain.token),
            expires_at: from_unix_millis(plain.expires_at),
            refresh_at: from_unix_millis(plain.refresh_at),
            scope: plain.scope.map(str::to_owned),
        })
    }

    /// A user grant's `record` (its refresh token) sealed for the entry `key`.
    ///
    /// # Panics
    /// Never: a record holds only strings and numbers.
    #[must_use]
    pub fn seal_record(&self, key: &str, record: &Record) -> Vec<u8> {
        self.seal_bytes(key, serde_json::to_vec(record).expect("strings and numbers serialize"))
    }

    /// The user grant's record in `value`, read from the entry `key`.
    pub fn open_record(&self, key: &str, value: &[u8]) -> Result<Record, Unsealed> {
        let plain = self.open_bytes(key, value)?;
        serde_json::from_slice(&plain).map_err(|_| Unsealed::Malformed)
    }

    /// `v1` ‖ nonce ‖ AES-256-GCM(`plain`), with `key` as associated data.
    fn seal_bytes(&self, key: &str, mut plain: Vec<u8>) -> Vec<u8> {
        let nonce = self
            .seal
            .seal_in_place_append_tag(Aad::from(key.as_bytes()), &mut plain)
            .expect("AES-GCM seals any message shorter than 64 GiB");
        [FORMAT, nonce.as_ref(), &plain].concat()
    }

    fn open_bytes(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, Unsealed> {
        let rest = value.strip_prefix(FORMAT).ok_or(Unsealed::Malformed)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN).ok_or(Unsealed::Malformed)?;
        let nonce = <[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| Unsealed::Malformed)?;
        let mut sealed = sealed.to_vec();
        let plain_len = self
            .seal
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| Unsealed::Foreign)?
            .len();
        sealed.truncate(plain_len);
        Ok(sealed)
    }
}

/// What identifies the client to the provider, tagged by kind: a client secret, the public
/// half of a signing key, the client certificate. An assertion's file path is among the
/// token-shaping fields, and what the file says of the workload is the hash's `workload`.
fn credential_bytes(credential: &Credential) -> Vec<u8> {
    let (kind, bytes): (&[u8], Vec<u8>) = match credential {
        Credential::Secret(secret) => (b"secret", secret.expose().as_bytes().to_vec()),
        Credential::PrivateKey(key) => (b"private_key", key.public_key()),
        Credential::Certificate(certificate) => (
            b"certificate",
            certificate.chain.first().map(|leaf| leaf.to_vec()).unwrap_or_default(),
        ),
        Credential::AssertionFile => (b"assertion_file", Vec::new()),
        Credential::None => (b"none", Vec::new()),
    };
    [kind, b"\x1f", &bytes].concat()
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

fn from_unix_millis(millis: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(millis))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&SealingKey::parse(&[byte; 32]).unwrap(), "fleet")
    }

    fn token() -> SharedToken {
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_millis(secs);
        SharedToken {
            token: AccessToken::new("eyJ.readable-access-token.sig"),
            expires_at: at(1_900_000_000_123),
            refresh_at: at(1_900_000_000_000),
            scope: Some("invoices.read".into()),
        }
    }

    fn config(id: &str, fields: &str) -> Arc<AuthConfig> {
        let yaml = format!(
            "auth_configs:\n  - id: {id}\n    token_url: https://idp.test/t\n    client_id: c\n    allowed_hosts: [h.test]\n{fields}"
        );
        Config::from_yaml("t", &yaml, &crate::config::Env::new())
            .unwrap()
            .auth_config(id)
            .unwrap()
    }

    #[test]
    fn a_sealed_token_opens_under_its_key_and_name_only() {
        let key = "fleet:token:abc";
        let sealed = sealer(1).seal(key, &token());
        assert_eq!(sealer(1).open(key, &sealed), Ok(token()));
        assert!(sealed.starts_with(b"v1"));
        let readable = |needle: &[u8]| sealed.windows(needle.len()).any(|w| w == needle);
        assert!(!readable(b"readable-access-token"));
        assert!(!readable(b"invoices"));
        // A fresh nonce each time: the same token never seals to the same bytes.
        assert_ne!(sealer(1).seal(key, &token()), sealed);

        assert_eq!(sealer(2).open(key, &sealed), Err(Unsealed::Foreign));
        assert_eq!(sealer(1).open("fleet:token:abd", &sealed), Err(Unsealed::Foreign));
        for at in [2, 2 + NONCE_LEN, sealed.len() - 1] {
            let mut altered = sealed.clone();
            altered[at] ^= 1;
            assert_eq!(sealer(1).open(key, &altered), Err(Unsealed::Foreign), "byte {at}");
        }
        for malformed in [&b""[..], b"v1", b"v2abcdefghijklmnopqrstuvwxyz", &sealed[..10]] {
            assert_eq!(sealer(1).open(key, malformed), Err(Unsealed::Malformed));
        }
    }

    impl Sealer {
        /// The hash of a config without workload token files.
        fn token_hash_of(&self, config: &AuthConfig) -> String {
            self.token_hash(config, b"")
        }
    }

    #[test]
    fn two_workloads_behind_one_token_file_path_never_share_a_token() {
        let sealer = sealer(1);
        let config = config("a", "    client_secret: s1\n");
        let one = sealer.token_hash(&config, b"\"https://k8s\"\x1f\"system:serviceaccount:a:b\"\x1f\"x\"");
        let again = sealer.token_hash(&config, b"\"https://k8s\"\x1f\"system:serviceaccount:a:b\"\x1f\"x\"");
        let other = sealer.token_hash(&config, b"\"https://k8s\"\x1f\"system:serviceaccount:a:c\"\x1f\"x\"");
        assert_eq!(one, again);
        assert_ne!(one, other);
        assert_ne!(one, sealer.token_hash_of(&config));
    }

    #[test]
    fn the_token_hash_follows_what_shapes_the_token_not_the_config_id() {
        let sealer = sealer(1);
        let hash = |id, fields| sealer.token_hash_of(&config(id, fields));
        let base = hash("a", "    client_secret: s1\n");
        assert_eq!(base.len(), 64);
        assert_eq!(hash("b", "    client_secret: s1\n"), base, "another id, the same token");
        for other in [
            hash("a", "    client_secret: s2\n"),
            hash("a", "    client_secret: s1\n    scopes: [x]\n"),
            hash("a", "    client_secret: s1\n    extra_params: { audience: y }\n"),
            hash("a", "    client_secret: s1\n    client_auth: client_secret_post\n"),
        ] {
            assert_ne!(other, base);
        }
        // The credential's digest is keyed: another key_file, another name.
        assert_ne!(
            super::Sealer::new(&SealingKey::parse(&[3; 32]).unwrap(), "fleet")
                .token_hash_of(&config("a", "    client_secret: s1\n")),
            base
        );
        assert_eq!(sealer.token_key(&base), format!("fleet:token:{base}"));
        assert_eq!(sealer.lease_key(&base), format!("fleet:lease:{base}"));
        assert!(!sealer.token_key(&base).contains("s1"));
    }

    #[test]
    fn a_private_key_client_is_named_by_its_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
            path
        };
        let (one, two) = (write("one.pem"), write("two.pem"));
        let fields = |path: &std::path::Path| {
            format!(
                "    client_auth: private_key_jwt\n    signing_alg: ES256\n    private_key_file: {}\n",
                path.display()
            )
        };
        let sealer = sealer(1);
        let a = sealer.token_hash_of(&config("a", &fields(&one)));
        assert_eq!(sealer.token_hash_of(&config("b", &fields(&one))), a);
        assert_ne!(sealer.token_hash_of(&config("a", &fields(&two))), a);
    }
}
