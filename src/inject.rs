//! Putting the token on the forwarded request, and taking off what must not travel on.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::config::Inject;
use crate::http1::hop_by_hop_bit_of;
use crate::secret::AccessToken;

/// The header an app uses to name the auth config; never forwarded.
pub const X_AUTH_CONFIG: HeaderName = HeaderName::from_static("x-auth-config");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// RFC 3986 unreserved characters stay as they are; everything else is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy `Proxy-Connection` and `Keep-Alive`).
/// A `static`: a `const` array of header names would be built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` is a hop-by-hop header.
#[must_use]
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_bit(name) != 0
}

/// `name`'s bit in a set of [`HOP_BY_HOP`] names (bit `i` for `HOP_BY_HOP[i]`, as in
/// [`crate::http1::bit`]), 0 for others.
pub(crate) fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    hop_by_hop_bit_of(name.as_str().as_bytes())
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
///
/// Most messages carry none, so one pass over the names decides first: that costs a few
/// comparisons per header, where removing each name would hash it and probe the map.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = headers.keys().fold(0, |present, name| present | hop_by_hop_bit(name));
    remove_hop_by_hop(headers, present);
}

/// Removes the [`HOP_BY_HOP`] names in `present` and those the `Connection` header lists.
fn remove_hop_by_hop(headers: &mut HeaderMap, present: u16) {
    if present == 0 {
        return;
    }
    // `Connection` usually lists hop-by-hop names (`keep-alive`, `upgrade`), already in
    // `present` when the message has them, or `close`, which names no header. Only names
    // the message carries are collected (to free the map for removing them): rarely any.
    let mut listed = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for name in value.to_str().unwrap_or_default().split(',').map(str::trim) {
            if !name.is_empty()
                && hop_by_hop_bit_of(name.as_bytes()) == 0
                && headers.contains_key(name)
                && let Ok(name) = HeaderName::from_bytes(name.as_bytes())
            {
                listed.push(name);
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    for name in &listed {
        headers.remove(name);
    }
}

/// Strips what an app's request must not carry upstream: hop-by-hop headers, bearerd's own
/// `X-Auth-Config`, `Expect` (bearerd already answered `100-continue` itself), and `Host`
/// (the upstream client writes it from the forwarded URI).
pub fn strip_request_headers(headers: &mut HeaderMap) {
    let mut hop_by_hop = 0;
    let mut own = false;
    for name in headers.keys() {
        hop_by_hop |= hop_by_hop_bit(name);
        own |= name == X_AUTH_CONFIG || name == header::EXPECT;
    }
    remove_hop_by_hop(headers, hop_by_hop);
    if own {
        headers.remove(X_AUTH_CONFIG);
        headers.remove(header::EXPECT);
    }
    headers.remove(header::HOST);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("the access token contains characters that cannot go in an HTTP header")]
    InvalidHeaderValue,
    #[error("the request URI with the token added is not valid")]
    InvalidUri,
}

/// Adds the token as configured, replacing any value the app sent under the same name.
pub fn inject(how: &Inject, token: &AccessToken, headers: &mut HeaderMap, uri: &mut Uri) -> Result<(), InjectError> {
    match how {
        Inject::Header { name, prefix } => {
            headers.insert(name.clone(), header_value(prefix, token)?);
        }
        Inject::Query { name } => *uri = with_query_param(uri, name, token.expose())?,
    }
    Ok(())
}

/// `<prefix> <token>` (or the bare token), marked sensitive so HTTP/2 never indexes it.
pub fn header_value(prefix: &str, token: &AccessToken) -> Result<HeaderValue, InjectError> {
    let mut value = if prefix.is_empty() {
        HeaderValue::from_str(token.expose())
    } else {
        HeaderValue::from_maybe_shared(bytes::Bytes::from(format!("{prefix} {}", token.expose())))
    }
    .map_err(|_| InjectError::InvalidHeaderValue)?;
    value.set_sensitive(true);
    Ok(value)
}

/// `uri` with `name=value` appended to its query, dropping any `name=` the app sent.
fn with_query_param(uri: &Uri, name: &str, value: &str) -> Result<Uri, InjectError> {
    let path = uri.path();
    let mut query = String::with_capacity(uri.query().map_or(0, str::len) + name.len() + value.len() + 2);
    for pair in uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let key = pair.split('=').next().unwrap_or_default();
        let decoded = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
        if decoded != name {
            query.push_str(pair);
            query.push('&');
        }
    }
    query.extend(utf8_percent_encode(name, QUERY_VALUE));
    query.push('=');
    query.extend(utf8_percent_encode(value, QUERY_VALUE));
    let path_and_query = PathAndQuery::try_from(format!("{path}?{query}")).map_err(|_| InjectError::InvalidUri)?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).map_err(|_| InjectError::InvalidUri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{Known, bit, known};

    fn bearer() -> Inject {
        Inject::Header {
            name: header::AUTHORIZATION,
            prefix: "Bearer".into(),
        }
    }

    #[test]
    fn header_replaces_the_apps_authorization() {
        let mut headers = HeaderMap::new();
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Basic app"));
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer app2"));
        let mut uri = Uri::from_static("http://api.test/x");
        inject(&bearer(), &AccessToken::new("tok"), &mut headers, &mut uri).unwrap();
        let values: Vec<_> = headers.get_all(header::AUTHORIZATION).iter().collect();
        assert_eq!(values, ["Bearer tok"]);
        assert!(values[0].is_sensitive());
    }

    #[test]
    fn empty_prefix_sends_the_bare_token() {
        let how = Inject::Header {
            name: HeaderName::from_static("x-api-key"),
            prefix: String::new(),
        };
        let mut headers = HeaderMap::new();
        let mut uri = Uri::from_static("/");
        inject(&how, &AccessToken::new("tok"), &mut headers, &mut uri).unwrap();
        assert_eq!(headers["x-api-key"], "tok");
        assert!(headers.get(header::AUTHORIZATION).is_none());
    }

    #[test]
    fn query_keeps_the_existing_query_and_encodes_the_value() {
        let how = Inject::Query {
            name: "access_token".into(),
        };
        let mut headers = HeaderMap::new();
        let mut uri = Uri::from_static("https://api.test/v1/x?a=1&access_token=old&b=%20c");
        inject(&how, &AccessToken::new("t+k/=n&?"), &mut headers, &mut uri).unwrap();
        assert_eq!(
            uri.to_string(),
            "https://api.test/v1/x?a=1&b=%20c&access_token=t%2Bk%2F%3Dn%26%3F"
        );
        let mut uri = Uri::from_static("/v1/x");
        inject(&how, &AccessToken::new("abc"), &mut headers, &mut uri).unwrap();
        assert_eq!(uri.to_string(), "/v1/x?access_token=abc");
        assert!(headers.is_empty());
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_an_error() {
        let mut headers = HeaderMap::new();
        let mut uri = Uri::from_static("/");
        let err = inject(&bearer(), &AccessToken::new("bad\ntoken"), &mut headers, &mut uri).unwrap_err();
        assert_eq!(err, InjectError::InvalidHeaderValue);
        assert!(!err.to_string().contains("token\n"));
    }

    #[test]
    fn each_hop_by_hop_name_has_its_own_bit() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(name), 1 << i, "{name}");
        }
        assert_eq!(hop_by_hop_bit(&header::AUTHORIZATION), 0);
        assert_eq!(hop_by_hop_bit(&HeaderName::from_static("x-connection")), 0);
        // As written in a message, in any case.
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            let upper = name.as_str().to_ascii_uppercase();
            assert_eq!(hop_by_hop_bit_of(upper.as_bytes()), 1 << i, "{upper}");
        }
        assert_eq!(hop_by_hop_bit_of(b"Transfer-Encoding"), 1 << 6);
        assert_eq!(hop_by_hop_bit_of(b"Trailer"), 0, "end to end");
        for other in [
            &b"Authorization"[..],
            b"X-Connection",
            b"Proxy-Authorization-X",
            b"",
            b"t",
            // Bytes that are a letter or `-` with bit 5 set are not that letter or `-`.
            b"Connection\r",
            b"keep\ralive",
            b"t\x05",
        ] {
            assert_eq!(hop_by_hop_bit_of(other), 0, "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn the_names_the_proxy_acts_on_are_known_in_any_case() {
        for (name, kind) in [
            (&b"Content-Length"[..], Known::ContentLength),
            (b"DATE", Known::Date),
            (b"expect", Known::Expect),
            (b"Host", Known::Host),
            (b"X-Auth-Config", Known::XAuthConfig),
            (b"TE", Known::HopByHop(bit::TE)),
            (b"Content-Lengths", Known::Other),
            (b"Content_Length", Known::Other),
            (b"Hosts", Known::Other),
            (b"Dat\x05", Known::Other),
            (b"x-auth-confiG", Known::XAuthConfig),
        ] {
            assert_eq!(known(name), kind, "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_stripped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Custom-Hop, , not a name"),
            ("connection", "X-Second-Hop"),
            ("x-second-hop", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic cHJveHk="),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-custom-hop", "1"),
            ("x-auth-config", "billing"),
            ("expect", "100-continue"),
            ("host", "api.test"),
            ("x-end-to-end", "kept"),
            ("authorization", "Bearer app"),
        ] {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_request_headers(&mut headers);
        let mut left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "trailer", "x-end-to-end"]);
    }

    #[test]
    fn each_stripped_header_is_stripped_when_it_comes_alone() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut response = HeaderMap::new();
            response.append(HeaderName::from_static(name), HeaderValue::from_static("x"));
            response.append(
                HeaderName::from_static("x-end-to-end"),
                HeaderValue::from_static("kept"),
            );
            strip_hop_by_hop(&mut response);
            assert_eq!(
                response.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
                ["x-end-to-end"],
                "{name}"
            );
        }
        for name in ["x-auth-config", "expect", "host", "connection", "upgrade"] {
            let mut request = HeaderMap::new();
            request.append(
                HeaderName::from_static("x-end-to-end"),
                HeaderValue::from_static("kept"),
            );
            request.append(HeaderName::from_static(name), HeaderValue::from_static("x"));
            strip_request_headers(&mut request);
            assert_eq!(
                request.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
                ["x-end-to-end"],
                "{name}"
            );
        }
        let mut untouched = HeaderMap::new();
        untouched.append(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("text/plain"),
        );
        untouched.append(
            HeaderName::from_static("x-end-to-end"),
            HeaderValue::from_static("kept"),
        );
        let before = untouched.clone();
        strip_hop_by_hop(&mut untouched);
        assert_eq!(untouched, before);
    }
}
