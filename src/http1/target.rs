//! A request target's URI, parsed with the help of the connection's last one.

use bytes::Bytes;
use http::Uri;
use http::uri::{Authority, InvalidUri, PathAndQuery, Scheme};

/// A connection's last absolute-form request target's scheme and authority, for parsing the
/// next target. A keep-alive connection's requests mostly go to one upstream: when a target
/// starts with the same scheme and authority, byte for byte, only its path and query are
/// parsed, and the checked scheme and authority are shared rather than parsed and checked
/// again.
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

#[cfg(test)]
mod tests {
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
}
