//! An app request's header lines as the listener loop read them, passed upstream as bytes.
//!
//! A `HeaderMap` built from a request's lines only to be written out again to a plain-HTTP
//! upstream, stripped and dropped, is work for nothing (benches/README.md). The loop notes
//! where each line's name and value are in the head instead, leaves out there what stops at
//! the proxy, and bearerd's HTTP/1.1 client writes the rest from the head's bytes, then the proxy's own additions (the token, a new
//! `X-Request-Id`), which are kept beside the lines; the request's header map stays empty.
//! What needs a map (hyper's client, for HTTPS upstreams and streaming bodies) gets the lines
//! and the additions put in it.

use std::ops::Range;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::{Known, bit, has_token, hop_by_hop_bit_of, known, options, parse_length};

/// The request id header, which the proxy adds when the app sent no usable one.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's header lines, less those that do not travel upstream: hop-by-hop ones and
/// those `Connection` names, `Host` (the upstream's is written from its URI) and
/// `X-Auth-Config` (bearerd's own). Those two are kept aside for the proxy to read.
#[derive(Default)]
pub struct RequestLines {
    /// The whole request head.
    head: Bytes,
    /// Where each line's name and value are in `head`, in order.
    lines: Vec<(Range<usize>, Range<usize>)>,
    host: Option<Range<usize>>,
    /// How many `Host` lines there were (a request with more than one is refused).
    hosts: u8,
    auth_config: Option<Range<usize>>,
    /// A bit for each length of a name among `lines` (modulo 64): a name whose bit is clear
    /// is not there, so looking it up or leaving it out takes no pass over the lines.
    lengths: u64,
    /// What the proxy adds, in place of any lines of the same names.
    added: Vec<(HeaderName, HeaderValue)>,
    /// A new `X-Request-Id` the proxy made, also added: its 32 hex digits are kept here, not
    /// allocated as a header value for each request.
    request_id: Option<[u8; REQUEST_ID_LEN]>,
}

/// The length of a request id bearerd makes: 128 bits in hex.
pub const REQUEST_ID_LEN: usize = 32;

/// What [`RequestLines::read`] found in the lines, for the listener loop.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub content_length: Option<usize>,
    /// `Connection: close`.
    pub close: bool,
    /// `TE: trailers`: the app takes trailers on a chunked response.
    pub trailers: bool,
    /// `Transfer-Encoding`, `Upgrade`, `Expect`, or a `Content-Length` that is not one plain
    /// number: a request this loop does not serve.
    pub hand_off: bool,
}

impl RequestLines {
    /// Takes the lines of a request head that starts at `base` (httparse parsed them out of
    /// that memory) and says what they tell the listener loop. The head's bytes come later,
    /// with [`RequestLines::set_head`].
    pub fn read(&mut self, base: &[u8], parsed: &[httparse::Header<'_>]) -> Found {
        let at = |part: &[u8]| {
            let start = part.as_ptr().addr() - base.as_ptr().addr();
            start..start + part.len()
        };
        let mut found = Found::default();
        self.clear();
        // The non-hop-by-hop names `Connection` lists (rarely any: no allocation then).
        let mut listed = Vec::new();
        for line in parsed {
            let name = line.name.as_bytes();
            match known(name) {
                Known::HopByHop(bit::CONNECTION) => {
                    for option in options(line.value) {
                        found.close |= option.eq_ignore_ascii_case(b"close");
                        if hop_by_hop_bit_of(option) == 0 {
                            listed.push(option);
                        }
                    }
                }
                Known::HopByHop(bit::TE) => found.trailers |= has_token(line.value, b"trailers"),
                Known::HopByHop(bit::TRANSFER_ENCODING | bit::UPGRADE) | Known::Expect => found.hand_off = true,
                Known::HopByHop(_) => {}
                Known::Host => {
                    self.host.get_or_insert(at(line.value));
                    self.hosts = self.hosts.saturating_add(1);
                }
                Known::XAuthConfig => {
                    self.auth_config.get_or_insert(at(line.value));
                }
                Known::ContentLength => {
                    match parse_length(line.value).filter(|_| found.content_length.is_none()) {
                        Some(length) => found.content_length = Some(length),
                        None => found.hand_off = true,
                    }
                    self.push(at(name), at(line.value));
                }
                Known::Date | Known::Other => self.push(at(name), at(line.value)),
            }
        }
        if listed.iter().any(|option| !option.eq_ignore_ascii_case(b"close")) {
            // Names `Connection` lists are hop-by-hop for this message too (RFC 9110 §7.6.1).
            self.lines.retain(|(name, _)| {
                !listed
                    .iter()
                    .any(|listed| listed.eq_ignore_ascii_case(&base[name.clone()]))
            });
        }
        found
    }

    fn push(&mut self, name: Range<usize>, value: Range<usize>) {
        self.lengths |= length_bit(name.len());
        self.lines.push((name, value));
    }

    /// Whether a line may be named `name` (no line is when this says no).
    fn may_have(&self, name: &[u8]) -> bool {
        self.lengths & length_bit(name.len()) != 0
    }

    /// The head the lines were read from, now that it is taken off the read buffer.
    pub fn set_head(&mut self, head: Bytes) {
        self.head = head;
    }

    /// Lets the head's memory go (the read buffer takes it back without a copy only when
    /// nothing else holds it).
    pub fn clear(&mut self) {
        self.head = Bytes::new();
        self.lines.clear();
        self.host = None;
        self.hosts = 0;
        self.auth_config = None;
        self.lengths = 0;
        self.added.clear();
        self.request_id = None;
    }

    /// The first `Host` line's value.
    pub fn host(&self) -> Option<&[u8]> {
        self.host.clone().map(|value| &self.head[value])
    }

    /// How many `Host` lines the request had.
    pub fn hosts(&self) -> usize {
        usize::from(self.hosts)
    }

    /// The first `X-Auth-Config` line's value.
    pub fn auth_config(&self) -> Option<&[u8]> {
        self.auth_config.clone().map(|value| &self.head[value])
    }

    /// The first value of `name` among the lines and what was added.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        let name = name.as_str().as_bytes();
        let named = |(line, _): &(&[u8], &[u8])| line.eq_ignore_ascii_case(name);
        // Asked once, not per line: the lines are searched only when one may be named so.
        let line = if self.may_have(name) {
            self.lines().find(named)
        } else {
            None
        };
        line.or_else(|| self.added().find(named)).map(|(_, value)| value)
    }

    /// Adds `X-Request-Id: id`, in place of every line (and addition) of that name.
    pub fn set_request_id(&mut self, id: [u8; REQUEST_ID_LEN]) {
        self.remove(&X_REQUEST_ID);
        self.request_id = Some(id);
    }

    /// Adds `name: value`, in place of every line (and addition) of that name.
    pub fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        self.remove(&name);
        self.added.push((name, value));
    }

    /// Leaves out every line, and addition, named `name`.
    pub fn remove(&mut self, name: &HeaderName) {
        let head = &self.head;
        let name_bytes = name.as_str().as_bytes();
        if self.may_have(name_bytes) {
            self.lines
                .retain(|(line, _)| !head[line.clone()].eq_ignore_ascii_case(name_bytes));
        }
        self.added.retain(|(added, _)| added != name);
        if *name == X_REQUEST_ID {
            self.request_id = None;
        }
    }

    /// Each line's name, as the app wrote it, and value; then what the proxy added.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines().chain(self.added())
    }

    fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines
            .iter()
            .map(|(name, value)| (&self.head[name.clone()], &self.head[value.clone()]))
    }

    fn added(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let added = self
            .added
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
        let request_id = self
            .request_id
            .as_ref()
            .map(|id| (X_REQUEST_ID.as_str().as_bytes(), &id[..]));
        added.chain(request_id)
    }

    /// Adds the lines, and what the proxy added, to `headers`, for what needs them as a map
    /// (hyper's client).
    pub fn append_to(&self, headers: &mut HeaderMap) {
        headers.reserve(self.lines.len() + self.added.len() + 1);
        for (name, value) in &self.lines {
            // httparse accepted the lines, and it accepts no name or value `http` refuses.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&self.head[name.clone()]),
                HeaderValue::from_maybe_shared(self.head.slice(value.clone())),
            ) {
                headers.append(name, value);
            }
        }
        for (name, value) in &self.added {
            headers.append(name.clone(), value.clone());
        }
        if let Some(id) = self.request_id.and_then(|id| HeaderValue::from_bytes(&id).ok()) {
            headers.append(X_REQUEST_ID.clone(), id);
        }
    }
}

#[cfg(test)]
impl RequestLines {
    /// The lines of a whole request `head`, read as the listener loop reads them, and what
    /// was found in them.
    ///
    /// # Panics
    /// If `head` is not a whole request head.
    #[must_use]
    pub fn parsed(head: &'static [u8]) -> (Self, Found) {
        let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 16];
        let mut request = httparse::Request::new(&mut []);
        let status = request.parse_with_uninit_headers(head, &mut headers);
        assert!(matches!(status, Ok(httparse::Status::Complete(_))), "{status:?}");
        let mut lines = Self::default();
        let found = lines.read(head, request.headers);
        lines.set_head(Bytes::from_static(head));
        (lines, found)
    }
}

fn length_bit(length: usize) -> u64 {
    1 << (length % 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lines: &RequestLines) -> Vec<String> {
        lines
            .iter()
            .map(|(name, value)| format!("{}: {}", String::from_utf8_lossy(name), String::from_utf8_lossy(value)))
            .collect()
    }

    #[test]
    fn lines_that_stop_at_the_proxy_are_left_out_and_the_rest_kept_as_written() {
        let (lines, found) = RequestLines::parsed(
            b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Auth-Config: billing\r\nX-Auth-Config: other\r\n\
              Accept: */*\r\nConnection: keep-alive, X-Private, close\r\nKeep-Alive: 5\r\nx-private: 1\r\n\
              Proxy-Authorization: Basic eA==\r\nTE: gzip, trailers\r\nContent-Length: 0\r\nX-Multi: a\r\n\
              X-MULTI: b\r\n\r\n",
        );
        assert_eq!(
            text(&lines),
            ["Accept: */*", "Content-Length: 0", "X-Multi: a", "X-MULTI: b"]
        );
        assert_eq!(lines.host(), Some(&b"a.test"[..]));
        assert_eq!(lines.auth_config(), Some(&b"billing"[..]));
        assert_eq!(lines.get(&HeaderName::from_static("x-multi")), Some(&b"a"[..]));
        assert_eq!(
            found,
            Found {
                content_length: Some(0),
                close: true,
                trailers: true,
                ..Found::default()
            }
        );
        let mut map = HeaderMap::new();
        lines.append_to(&mut map);
        assert_eq!(map.get_all("x-multi").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(map.len(), 4);
    }

    #[test]
    fn a_named_line_is_removed_in_any_case_and_an_added_one_replaces_it() {
        let (mut lines, _) =
            RequestLines::parsed(b"GET / HTTP/1.1\r\nauthorization: app\r\nAccept: x\r\nAUTHORIZATION: again\r\n\r\n");
        lines.remove(&http::header::ACCEPT);
        assert_eq!(text(&lines), ["authorization: app", "AUTHORIZATION: again"]);
        lines.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer 1"));
        lines.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer 2"));
        lines.insert(http::header::ACCEPT, HeaderValue::from_static("y"));
        assert_eq!(text(&lines), ["authorization: Bearer 2", "accept: y"]);
        let mut map = HeaderMap::new();
        lines.append_to(&mut map);
        assert_eq!(map.get_all("authorization").iter().collect::<Vec<_>>(), ["Bearer 2"]);
        assert_eq!(map.len(), 2);
        lines.clear();
        assert_eq!((lines.iter().count(), lines.host()), (0, None));
    }

    #[test]
    fn a_new_request_id_replaces_the_apps_and_goes_last() {
        let (mut lines, _) = RequestLines::parsed(
            b"GET / HTTP/1.1\r\nX-Request-Id: app\r\nContent-Type: x\r\nx-request-id: again\r\n\r\n",
        );
        assert_eq!(lines.get(&X_REQUEST_ID), Some(&b"app"[..]));
        // Not there: no line's name is as long.
        assert_eq!(lines.get(&http::header::ACCEPT), None);
        lines.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer 1"));
        lines.set_request_id(*b"0123456789abcdef0123456789abcdef");
        assert_eq!(
            text(&lines),
            [
                "Content-Type: x",
                "authorization: Bearer 1",
                "x-request-id: 0123456789abcdef0123456789abcdef"
            ]
        );
        assert_eq!(lines.get(&X_REQUEST_ID), Some(&b"0123456789abcdef0123456789abcdef"[..]));
        let mut map = HeaderMap::new();
        lines.append_to(&mut map);
        assert_eq!(
            map.get_all(&X_REQUEST_ID).iter().collect::<Vec<_>>(),
            ["0123456789abcdef0123456789abcdef"]
        );
        assert_eq!(map.len(), 3);
        lines.remove(&X_REQUEST_ID);
        assert_eq!(text(&lines), ["Content-Type: x", "authorization: Bearer 1"]);
        lines.set_request_id(*b"0123456789abcdef0123456789abcdef");
        lines.clear();
        assert_eq!(lines.iter().count(), 0);
    }
}
