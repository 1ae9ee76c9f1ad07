//! The request target: absolute-form (`HTTP_PROXY` use) or origin-form (gateway routes),
//! and the upstream URI it turns into.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use url::Url;

use crate::error::ProxyError;
use crate::http1::split_authority;

/// Hosts are borrowed from the request's URI when it has them in lowercase already.
#[derive(Debug)]
pub enum Target<'a> {
    /// `GET http://host:port/path` — the URI names the upstream.
    Absolute { host: Cow<'a, str>, port: u16 },
    /// `GET /path` with a `Host` header — addressed to bearerd itself.
    Origin { host: Option<(Cow<'a, str>, u16)> },
}

impl<'a> Target<'a> {
    /// The target of a request (with its `Host` header's value, `host`) that came in on the
    /// listener socket `local`. An absolute URI naming that socket itself (HTTP/2 requests
    /// always carry one) is origin-form.
    pub fn of(uri: &'a Uri, host: Option<&[u8]>, local: Option<SocketAddr>) -> Result<Self, ProxyError> {
        if uri.scheme().is_none() {
            if uri.authority().is_some() || !uri.path().starts_with('/') {
                return Err(ProxyError::BadRequest(
                    "request target must be absolute-form or origin-form".into(),
                ));
            }
            let host = host.and_then(|v| Authority::try_from(v).ok()).map(|authority| {
                let host = Cow::Owned(normalize_host(authority.host()).into_owned());
                (host, authority.port_u16().unwrap_or(80))
            });
            return Ok(Self::Origin { host });
        }
        match uri.scheme_str() {
            Some("http" | "https") => {}
            Some(other) => {
                return Err(ProxyError::BadRequest(format!(
                    "scheme `{}` is not http or https",
                    printable_scheme(other)
                )));
            }
            None => unreachable!("checked above"),
        }
        let no_host = || ProxyError::BadRequest("absolute-form request target has no host".into());
        let authority = uri.authority().ok_or_else(no_host)?;
        let (host, port) = split_authority(authority);
        // `split_authority` skips user info: a host that does not start the authority had
        // some. `http://allowed.test@elsewhere.test/` names elsewhere.test: user info only
        // serves to mislead (RFC 9110 §4.2.4).
        if host.as_ptr().addr() != authority.as_str().as_ptr().addr() {
            return Err(ProxyError::BadRequest(
                "the request target has user info; it is not accepted".into(),
            ));
        }
        let (host, port) = normalized(uri, host, port).ok_or_else(no_host)?;
        if local.is_some_and(|local| is_listener(&host, port, local)) {
            return Ok(Self::Origin {
                host: Some((host, port)),
            });
        }
        Ok(Self::Absolute { host, port })
    }

    pub fn is_origin_form(&self) -> bool {
        matches!(self, Self::Origin { .. })
    }

    pub fn host_port(&self) -> Option<(&str, u16)> {
        match self {
            Self::Absolute { host, port } => Some((host, *port)),
            Self::Origin { host } => host.as_ref().map(|(h, p)| (h.as_ref(), *p)),
        }
    }

    /// The URI to forward an absolute-form request to; `upstream_tls` turns http into https.
    pub fn forward_uri(&self, uri: &Uri, upstream_tls: bool) -> Result<Uri, ProxyError> {
        if self.is_origin_form() {
            return Err(ProxyError::BadRequest(
                "request addressed to bearerd itself (origin-form) matches no gateway route; \
                 send absolute-form requests via HTTP_PROXY or add a route with `upstream`"
                    .into(),
            ));
        }
        if !(upstream_tls && uri.scheme() == Some(&Scheme::HTTP)) {
            return Ok(uri.clone());
        }
        let mut parts = uri.clone().into_parts();
        parts.scheme = Some(Scheme::HTTPS);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        Uri::from_parts(parts).map_err(|err| ProxyError::BadRequest(format!("cannot build upstream URI: {err}")))
    }
}

/// The URI of an origin-form request through a gateway route: `prefix` of the request
/// path is replaced by the upstream base URL; the query is kept.
pub fn gateway_uri(upstream: &Url, prefix: &str, uri: &Uri) -> Result<Uri, ProxyError> {
    let rest = uri.path().strip_prefix(prefix).unwrap_or_default();
    let base = upstream.path().trim_end_matches('/');
    let mut target =
        String::with_capacity(upstream.as_str().len() + uri.path().len() + uri.query().map_or(0, str::len) + 2);
    target.push_str(upstream.scheme());
    target.push_str("://");
    target.push_str(&upstream[url::Position::BeforeHost..url::Position::AfterPort]);
    target.push_str(base);
    target.push('/');
    target.push_str(rest.trim_start_matches('/'));
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    target
        .parse()
        .map_err(|err| ProxyError::BadRequest(format!("cannot build upstream URI: {err}")))
}

/// Lowercase host without brackets, and the effective port, of an absolute URI.
pub fn host_port_of(uri: &Uri) -> Option<(Cow<'_, str>, u16)> {
    let (host, port) = split_authority(uri.authority()?);
    normalized(uri, host, port)
}

/// `host` (of `uri`'s authority) normalized, and `port` or `uri`'s scheme's default.
fn normalized<'a>(uri: &Uri, host: &'a str, port: Option<u16>) -> Option<(Cow<'a, str>, u16)> {
    let default = if uri.scheme() == Some(&Scheme::HTTPS) { 443 } else { 80 };
    let host = normalize_host(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port.unwrap_or(default)))
}

/// Whether `host:port` is the listener socket `local` (by its address, or as `localhost`).
fn is_listener(host: &str, port: u16, local: SocketAddr) -> bool {
    port == local.port()
        && match host.parse::<IpAddr>() {
            Ok(ip) => ip == local.ip(),
            Err(_) => host == "localhost" && local.ip().is_loopback(),
        }
}

/// `host` without IPv6 brackets, in lowercase (copied only if it has capitals).
pub(super) fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.bytes().any(|byte| byte.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// IPv6 hosts in brackets, for `host:port` text.
pub fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn printable_scheme(scheme: &str) -> String {
    scheme.chars().filter(char::is_ascii_alphanumeric).take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_replaces_the_prefix_and_keeps_the_query() {
        let base = Url::parse("https://api.billing.test").unwrap();
        let uri = Uri::from_static("/billing/v1/invoices?x=1&y=%20");
        assert_eq!(
            gateway_uri(&base, "/billing/", &uri).unwrap(),
            "https://api.billing.test/v1/invoices?x=1&y=%20"
        );
        let base = Url::parse("http://127.0.0.1:9000/api/").unwrap();
        assert_eq!(
            gateway_uri(&base, "/billing", &uri).unwrap(),
            "http://127.0.0.1:9000/api/v1/invoices?x=1&y=%20"
        );
        assert_eq!(
            gateway_uri(&base, "/billing", &Uri::from_static("/billing")).unwrap(),
            "http://127.0.0.1:9000/api/"
        );
        let v6 = Url::parse("http://[::1]:9000").unwrap();
        assert_eq!(
            gateway_uri(&v6, "/", &Uri::from_static("/x")).unwrap(),
            "http://[::1]:9000/x"
        );
    }

    #[test]
    fn upstream_tls_upgrades_http_only() {
        let target = Target::Absolute {
            host: "api.test".into(),
            port: 80,
        };
        let uri = Uri::from_static("http://api.test/v1?q=1");
        assert_eq!(target.forward_uri(&uri, true).unwrap(), "https://api.test/v1?q=1");
        assert_eq!(target.forward_uri(&uri, false).unwrap(), "http://api.test/v1?q=1");
        let explicit = Uri::from_static("http://api.test:8443/v1");
        assert_eq!(target.forward_uri(&explicit, true).unwrap(), "https://api.test:8443/v1");
        assert_eq!(
            host_port_of(&target.forward_uri(&uri, true).unwrap()),
            Some(("api.test".into(), 443))
        );
    }

    #[test]
    fn a_target_with_user_info_is_refused_whatever_the_user_info_says() {
        for target in [
            "http://user@api.test/",
            "http://api.test@api.test/",
            "http://@api.test/",
            "http://u:p@api.test:81/",
            "https://api.test:443@evil.test/",
        ] {
            let uri: Uri = target.parse().unwrap();
            let refused = Target::of(&uri, None, None).unwrap_err();
            assert!(refused.to_string().contains("user info"), "{target}: {refused}");
        }
        let uri: Uri = "http://api.test:8080/x".parse().unwrap();
        assert!(matches!(
            Target::of(&uri, None, None).unwrap(),
            Target::Absolute { ref host, port: 8080 } if host == "api.test"
        ));
    }

    #[test]
    fn authorities_split_as_http_splits_them() {
        for text in [
            "api.test",
            "api.test:8443",
            "API.Test:80",
            "user:pw@api.test:81",
            "user@api.test",
            "127.0.0.1:18081",
            "[::1]",
            "[::1]:9000",
            "u@[fe80::1]:1",
            "api.test:",
            "api.test:0",
            "api.test:65535",
        ] {
            let authority: Authority = text.parse().unwrap();
            assert_eq!(
                split_authority(&authority),
                (authority.host(), authority.port_u16()),
                "{text}"
            );
        }
    }

    #[test]
    fn hosts_are_lowercased_without_brackets_and_copied_only_when_they_change() {
        assert!(matches!(normalize_host("api.test"), Cow::Borrowed("api.test")));
        assert!(matches!(normalize_host("[::1]"), Cow::Borrowed("::1")));
        assert!(matches!(normalize_host("API.Test"), Cow::Owned(ref host) if host == "api.test"));
        assert!(matches!(normalize_host("[FE80::1]"), Cow::Owned(ref host) if host == "fe80::1"));
    }

    #[test]
    fn targets_are_classified() {
        assert!(matches!(
            Target::of(&Uri::from_static("http://API.test:81/x"), None, None).unwrap(),
            Target::Absolute { ref host, port: 81 } if host == "api.test"
        ));
        let host = Some(&b"bearerd.local:8080"[..]);
        assert!(matches!(
            Target::of(&Uri::from_static("/x"), host, None).unwrap(),
            Target::Origin { host: Some((ref h, 8080)) } if h == "bearerd.local"
        ));
        let err = Target::of(&Uri::from_static("ftp://files.test/x"), host, None).unwrap_err();
        assert_eq!(err.to_string(), "scheme `ftp` is not http or https");
        assert_eq!(err.code(), "bad_request");
    }

    #[test]
    fn an_absolute_uri_naming_the_listener_itself_is_origin_form() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let of = |uri: &'static str| {
            Target::of(&Uri::from_static(uri), None, Some(local))
                .unwrap()
                .is_origin_form()
        };
        assert!(of("http://127.0.0.1:8080/billing/x"));
        assert!(of("http://localhost:8080/billing/x"));
        assert!(!of("http://127.0.0.1:8081/x"));
        assert!(!of("http://127.0.0.2:8080/x"));
        assert!(!of("http://api.test:8080/x"));
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        let uri = Uri::from_static("http://[::1]:8080/x");
        assert!(Target::of(&uri, None, Some(v6)).unwrap().is_origin_form());
    }
}
