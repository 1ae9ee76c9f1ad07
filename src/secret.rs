//! Values that must never be printed: client secrets, access and refresh tokens,
//! workload assertions, authorization codes and sealing keys.
//!
//! Their `Debug` and `Display` print `[redacted]`, so a stray `{:?}` in a log line, an
//! error or a panic message cannot leak them. The only way to the value is `expose()`,
//! which is easy to grep for.

use std::fmt;

use serde::{Deserialize, Deserializer};

const REDACTED: &str = "[redacted]";

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            #[must_use]
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The raw value, for the one place that has to send it.
            #[must_use]
            pub fn expose(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({REDACTED})", stringify!($name))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(REDACTED)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer).map(Self)
            }
        }
    };
}

secret_type!(
    /// An OAuth 2.0 client secret (RFC 6749 §2.3.1).
    ClientSecret
);
secret_type!(
    /// An OAuth 2.0 access token (RFC 6749 §1.4).
    AccessToken
);
secret_type!(
    /// An OAuth 2.0 refresh token (RFC 6749 §1.5): whoever holds it acts as the user who
    /// consented, for as long as the provider honours it.
    RefreshToken
);
secret_type!(
    /// A JWT a workload presents as itself (`assertion_file`: a projected service-account
    /// token, a SPIFFE JWT-SVID): whoever holds it, until its `exp`, is that workload.
    Assertion
);
secret_type!(
    /// An authorization code (RFC 6749 §4.1.2), on its way from the browser to the token
    /// endpoint.
    AuthorizationCode
);

/// A 256-bit key that seals what bearerd keeps at rest (AES-256-GCM).
#[derive(Clone, PartialEq, Eq)]
pub struct SealingKey([u8; SealingKey::LEN]);

impl SealingKey {
    pub const LEN: usize = 32;

    /// A key file's content: exactly 32 raw bytes, or 64 hex or 44 base64 characters
    /// (surrounding whitespace, such as the newline `openssl rand -hex 32 >` writes, ignored).
    /// The error says what was found, never the content.
    pub fn parse(content: &[u8]) -> Result<Self, String> {
        use base64::Engine as _;
        if let Ok(raw) = <[u8; Self::LEN]>::try_from(content) {
            return Ok(Self(raw));
        }
        let text = content.trim_ascii();
        let decoded = match text.len() {
            64 => hex_bytes(text),
            44 => base64::engine::general_purpose::STANDARD.decode(text).ok(),
            _ => None,
        };
        match decoded.map(<[u8; Self::LEN]>::try_from) {
            Some(Ok(key)) => Ok(Self(key)),
            _ => Err(format!(
                "must hold a 256-bit key: 32 raw bytes, or 64 hex or 44 base64 characters (it has {} bytes{})",
                content.len(),
                if text.len() == 64 || text.len() == 44 {
                    " that do not decode to 32"
                } else {
                    ""
                }
            )),
        }
    }

    /// The key bytes, for the one place that seals and opens with them.
    #[must_use]
    pub fn expose(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

fn hex_bytes(text: &[u8]) -> Option<Vec<u8>> {
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    text.chunks(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(*pair.get(1)?)?))
        .collect()
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingKey({REDACTED})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = ClientSecret::new("p@ss:w0rd/+%=&?");
        let token = AccessToken::new("eyJhbGciOi.secret-token");
        for shown in [
            format!("{secret:?}"),
            format!("{secret}"),
            format!("{secret:#?}"),
            format!("{token:?}"),
            format!("{token}"),
            format!("{:?}", Some(&token)),
        ] {
            assert!(!shown.contains("p@ss"), "{shown}");
            assert!(!shown.contains("secret-token"), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
        assert_eq!(format!("{secret:?}"), "ClientSecret([redacted])");
        assert_eq!(secret.expose(), "p@ss:w0rd/+%=&?");
        assert_eq!(token.expose(), "eyJhbGciOi.secret-token");
    }

    #[test]
    fn refresh_tokens_codes_and_keys_are_redacted_too() {
        let refresh = RefreshToken::new("rt-very-secret");
        let code = AuthorizationCode::new("code-very-secret");
        let key = SealingKey::parse(&[7; 32]).unwrap();
        for shown in [
            format!("{refresh:?}"),
            format!("{refresh}"),
            format!("{code:?}"),
            format!("{code}"),
            format!("{key:?}"),
        ] {
            assert!(!shown.contains("very-secret") && !shown.contains('7'), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
    }

    #[test]
    fn a_sealing_key_is_raw_hex_or_base64() {
        let raw: Vec<u8> = (0..32).collect();
        let hex = raw.iter().fold(String::new(), |mut hex, b| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
            hex
        });
        let b64 = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&raw)
        };
        for content in [
            raw.clone(),
            hex.clone().into_bytes(),
            format!("{hex}\n").into_bytes(),
            format!("  {}\r\n", hex.to_uppercase()).into_bytes(),
            b64.clone().into_bytes(),
            format!("{b64}\n").into_bytes(),
        ] {
            assert_eq!(
                SealingKey::parse(&content).unwrap().expose().as_slice(),
                raw,
                "{content:?}"
            );
        }
        // Raw bytes are taken as they are, whitespace included.
        assert_eq!(SealingKey::parse(&[b'\n'; 32]).unwrap().expose(), &[b'\n'; 32]);
        let refused: [(&[u8], &str); 5] = [
            (b"", "(it has 0 bytes)"),
            (&[1; 31], "(it has 31 bytes)"),
            (&[1; 33], "(it has 33 bytes)"),
            (&[b'g'; 64], "(it has 64 bytes that do not decode to 32)"),
            (b"c2hvcnQ=", "(it has 8 bytes)"),
        ];
        for (content, why) in refused {
            let message = SealingKey::parse(content).unwrap_err();
            assert!(
                message.starts_with("must hold a 256-bit key: 32 raw bytes, or 64 hex or 44 base64 characters"),
                "{message}"
            );
            assert!(message.ends_with(why), "{message}");
        }
        // 44 base64 characters that are not 32 bytes.
        let message = SealingKey::parse(&[b'A'; 44]).unwrap_err();
        assert!(
            message.ends_with("(it has 44 bytes that do not decode to 32)"),
            "{message}"
        );
    }

    #[test]
    fn deserializes_from_a_plain_string() {
        let secret: ClientSecret = serde_yaml::from_str("\"s3cr3t\"").unwrap();
        assert_eq!(secret.expose(), "s3cr3t");
    }
}
