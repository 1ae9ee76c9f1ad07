//! Values that must never be printed: client secrets and access tokens.
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
    fn deserializes_from_a_plain_string() {
        let secret: ClientSecret = serde_yaml::from_str("\"s3cr3t\"").unwrap();
        assert_eq!(secret.expose(), "s3cr3t");
    }
}
