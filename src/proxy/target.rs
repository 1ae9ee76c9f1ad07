//! The request target: absolute-form (`HTTP_PROXY` use) or origin-form (gateway routes),
//! and the upstream URI it turns into.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::Uri;
use http::uri::{Authority, InvalidUri, PathAndQuery, Scheme};
use url::Url;

use crate::error::ProxyError;

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
        if uri
            .authority()
            .is_some_and(|authority| authority.as_str().contains('@'))
        {
            // `http://allowed.test@elsewhere.test/` names elsewhere.test: user info only
            // serves to mislead (RFC 9110 §4.2.4).
            return Err(ProxyError::BadRequest(
                "the request target has user info; it is not accepted".into(),
            ));
        }
        let (host, port) = host_port_of(uri)
            .ok_or_else(|| ProxyError::BadRequest("absolute-form request target has no host".into()))?;
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

/// A connection's last absolute-form request target's scheme and authority, for parsing the
/// next target. A keep-alive connection's requests mostly go to one upstream: when a target
/// starts with the same scheme and authority, byte for byte, only its path and query are
/// parsed, and the checked scheme and authority are shared (`http`'s whole parse of a
/// target was about 450 instructions a request).
#[derive(Default)]
pub struct LastOrigin(Option<(Scheme, Authority)>);

/// Targets longer than this are parsed whole (`http` refuses URIs longer than 65,534 bytes).
const SHORT_TARGET: usize = 8 * 1024;

impl LastOrigin {
    /// The URI of a request target, as `Uri::from_maybe_shared` parses it.
    pub fn parse(&mut self, target: Bytes) -> Result<Uri, InvalidUri> {
        if let Some(uri) = self.same_origin(&target) {
            return uri;
        }
        let uri = Uri::from_maybe_shared(target)?;
        if let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) {
            // A copy: the target shares the memory of its whole request head.
            let authority = Authority::from_maybe_shared(Bytes::copy_from_slice(authority.as_str().as_bytes()));
            self.0 = authority.ok().map(|authority| (scheme.clone(), authority));
        }
        Ok(uri)
    }

    fn same_origin(&self, target: &Bytes) -> Option<Result<Uri, InvalidUri>> {
        let (scheme, authority) = self.0.as_ref()?;
        let (scheme_text, authority_text) = (scheme.as_str().as_bytes(), authority.as_str().as_bytes());
        let end = scheme_text.len() + 3 + authority_text.len();
        let same = target.len() <= SHORT_TARGET
            && target.starts_with(scheme_text)
            && target[scheme_text.len()..].starts_with(b"://")
            && target[scheme_text.len() + 3..].starts_with(authority_text)
            // The authority ends there, as `http` finds its end.
            && target.get(end).is_none_or(|byte| matches!(byte, b'/' | b'?' | b'#'));
        if !same {
            return None;
        }
        // An absolute URI's empty path is `/`, as `http` has it.
        let path = if target.len() == end {
            Ok(PathAndQuery::from_static("/"))
        } else {
            PathAndQuery::from_maybe_shared(target.slice(end..))
        };
        let uri = path.map(|path| {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(scheme.clone());
            parts.authority = Some(authority.clone());
            parts.path_and_query = Some(path);
            Uri::from_parts(parts).unwrap_or_else(|_| unreachable!("a scheme, an authority and a path make a URI"))
        });
        Some(uri)
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
/// Whether a `Host` value is `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2), or
/// empty: a registered name or IPv4 address, or an IPv6 address in brackets; no user info;
/// at most one port, of digits. Read in place: it runs for every request.
pub fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&byte| byte == b']') else {
            return false;
        };
        let address = &rest[..end];
        let ipv6 = |byte: &u8| byte.is_ascii_hexdigit() || matches!(byte, b':' | b'.');
        if address.is_empty() || !address.iter().all(ipv6) {
            return false;
        }
        (value, &rest[end + 1..])
    } else {
        let colon = value.iter().position(|&byte| byte == b':').unwrap_or(value.len());
        let (host, port) = value.split_at(colon);
        let reg_name = |byte: &u8| byte.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(byte);
        if !host.iter().all(reg_name) {
            return false;
        }
        (host, port)
    };
    if value.is_empty() {
        return true;
    }
    !host.is_empty()
        && port
            .strip_prefix(b":")
            .map_or(port.is_empty(), |digits| digits.iter().all(u8::is_ascii_digit))
}

pub fn host_port_of(uri: &Uri) -> Option<(Cow<'_, str>, u16)> {
    let (host, port) = split_authority(uri.authority()?);
    let default = if uri.scheme() == Some(&Scheme::HTTPS) { 443 } else { 80 };
    let host = normalize_host(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port.unwrap_or(default)))
}

/// The host (IPv6 in its brackets) and port of a parsed authority, as `http`'s
/// `Authority::host` and `port_u16` give them, in one pass over the text (those two took
/// ~700 instructions per request, each searching the text again). Byte loops: `rfind` of a
/// `char` goes through `memrchr`, whose setup costs more than these short texts.
pub fn split_authority(authority: &Authority) -> (&str, Option<u16>) {
    let text = authority.as_str();
    let host_port = match text.bytes().rposition(|byte| byte == b'@') {
        Some(at) => &text[at + 1..],
        None => text,
    };
    // The last `:` is a port's unless a `]` follows it (then it is inside an IPv6 address).
    match host_port.bytes().rposition(|byte| byte == b':' || byte == b']') {
        Some(colon) if host_port.as_bytes()[colon] == b':' => {
            (&host_port[..colon], host_port[colon + 1..].parse().ok())
        }
        _ => (host_port, None),
    }
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
    #[test]
    fn host_values_are_a_host_and_an_optional_port() {
        for valid in [
            &b""[..],
            b"a.test",
            b"A-1.test:8080",
            b"a.test:",
            b"127.0.0.1:80",
            b"[::1]",
            b"[::1]:9000",
            b"[::ffff:127.0.0.1]:1",
            b"xn--d1acufc.test",
            b"a%20b",
        ] {
            assert!(super::valid_host(valid), "{}", String::from_utf8_lossy(valid));
        }
        for invalid in [
            &b"a b"[..],
            b"u@a.test",
            b"u:p@a.test",
            b"a:1:2",
            b"a:x",
            b"[::1",
            b"[::1]x",
            b"[]",
            b"[a.test]",
            b":80",
            b"a/b",
            b"a\tb",
            b"a\x00",
            b"caf\xc3\xa9.test",
        ] {
            assert!(!super::valid_host(invalid), "{}", String::from_utf8_lossy(invalid));
        }
    }

    use super::*;

    #[test]
    fn a_target_after_one_with_the_same_origin_parses_as_http_parses_it() {
        let targets: &[&[u8]] = &[
            b"http://a.test:8080/x?q=1",
            b"http://a.test:8080",
            b"http://a.test:8080?q",
            b"http://a.test:8080#frag",
            b"http://a.test:8080/p/a%20th?x=%zz#f",
            b"http://a.test:80801/x",
            b"http://a.test:8080@b.test/x",
            b"http://A.test:8080/x",
            b"HTTP://a.test:8080/x",
            b"https://a.test:8080/x",
            b"http://a.test:8080/\x7f",
            b"http://a.test:8080/a b",
            b"http://a.test:8080/\xff",
            b"/origin/form",
            b"http://b.test/y",
            b"http://b.test/",
        ];
        let parsed = |target: &[u8]| Uri::from_maybe_shared(Bytes::copy_from_slice(target));
        let shown = |uri: Result<Uri, InvalidUri>| {
            uri.map(|uri| {
                let parts = (
                    uri.scheme_str(),
                    uri.authority().map(Authority::as_str),
                    uri.path(),
                    uri.query(),
                );
                format!("{parts:?} {uri}")
            })
            .map_err(|err| err.to_string())
        };
        for first in [&b"http://a.test:8080/first"[..], b"https://a.test:8080/"] {
            for target in targets {
                let mut last = LastOrigin::default();
                shown(last.parse(Bytes::copy_from_slice(first))).unwrap();
                let expected = shown(parsed(target));
                assert_eq!(
                    shown(last.parse(Bytes::copy_from_slice(target))),
                    expected,
                    "{first:?} {target:?}"
                );
            }
        }
        // The shortcut is taken: the authority's memory is the kept copy's, not the target's.
        let mut last = LastOrigin::default();
        let first = last.parse(Bytes::from_static(b"http://a.test:8080/1")).unwrap();
        let second = last.parse(Bytes::from_static(b"http://a.test:8080/2")).unwrap();
        let text = |uri: &Uri| uri.authority().unwrap().as_str().as_ptr();
        assert_ne!(text(&first), text(&second));
        assert_eq!(
            Some(text(&second)),
            last.0.as_ref().map(|(_, authority)| authority.as_str().as_ptr())
        );
    }

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
