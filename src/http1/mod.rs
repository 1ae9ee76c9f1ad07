//! HTTP/1.1 on the wire, knowing nothing of auth configs, routes or tokens: bearerd's own
//! server loop ([`server`]) and pooled client ([`client`]), which share one set of limits,
//! one vocabulary of header names, one [`Head`] and [`Framing`] and the framing rules that
//! decide them (this module), one body decoder ([`body`]) and the request's header lines
//! ([`lines`]). The proxy plugs in
//! through [`server::Service`] and sends with [`client::Pool::send`].
//!
//! Framing is this layer's alone. A peer's `Content-Length` and `Transfer-Encoding` lines,
//! and the lines its `Connection` names, are read, checked and never passed on: whoever
//! writes a message frames it from what its body will deliver (one `content-length`, or
//! chunks), adds `Date` when none survives, and passes on only the trailers RFC 9110 §6.5.1
//! allows.

pub mod body;
pub mod client;
pub mod lines;
pub mod names;
pub mod server;
pub mod target;
pub mod timer;

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, StatusCode};

use crate::BoxError;
pub use names::{Known, bit, hop_by_hop_bit_of, known};

/// A head (request or response: start line and header lines) longer than this is refused.
pub const MAX_HEAD: usize = 64 * 1024;
/// At most this many header lines in a head (hyper's default limit too).
pub const MAX_HEADERS: usize = 100;
/// Room made in a read buffer before each read.
pub const READ_SIZE: usize = 8 * 1024;

/// How a message's body is delimited (RFC 9112 §6): what the server loop decides for a
/// request it reads and a response it writes, and the client for a response it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a request without one; a response to `HEAD`, 1xx, 204, 304), or, while a
    /// body is written, nothing more to write.
    Empty,
    /// `Content-Length`; while a body is read or written, what is still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Up to the end of the connection: only a response read from a peer.
    UntilClose,
}

impl Framing {
    /// Where decoding a body so delimited starts.
    #[must_use]
    pub fn state(self) -> body::State {
        match self {
            Self::Empty => body::State::Length(0),
            Self::Length(length) => body::State::Length(length),
            Self::Chunked => body::State::ChunkSize,
            Self::UntilClose => body::State::UntilClose,
        }
    }
}

/// What a message head says to whoever reads it, request or response: its length, how its
/// body is delimited, and whether the connection carries another message after it. The
/// server's request head and the client's response head each add their start line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The head's length in bytes, up to and including the empty line.
    pub len: usize,
    pub framing: Framing,
    /// The connection carries another message once this one's body is read.
    pub keep_alive: bool,
}

/// The items of a comma-separated header value, trimmed, empty ones left out.
pub fn options(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&byte| byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|option| !option.is_empty())
}

/// The first transfer coding other than `chunked` that `Transfer-Encoding` values name.
/// bearerd decodes chunked only: passing on a body without the other codings in its header
/// would hand the peer bytes it cannot read (RFC 9112 §6.1), so such a message is refused.
pub fn other_coding<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<&'a [u8]> {
    values
        .into_iter()
        .flat_map(options)
        .find(|coding| !coding.eq_ignore_ascii_case(b"chunked"))
}

/// Why a `kind` message ("request", "response") is refused whose `Transfer-Encoding` names
/// `coding` (an [`other_coding`]): the coding shown printable, at most 40 characters.
#[must_use]
pub fn coding_refusal(kind: &str, coding: &[u8]) -> String {
    let shown: String = String::from_utf8_lossy(coding)
        .chars()
        .filter(|c| !c.is_control())
        .take(40)
        .collect();
    format!("the {kind} has a transfer coding other than chunked ({shown}); bearerd decodes only chunked")
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
#[must_use]
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    options(value).any(|option| option.eq_ignore_ascii_case(token))
}

/// A `Content-Length` value: digits only, as RFC 9110 §8.6 has it.
#[must_use]
pub fn parse_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 15 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, digit| n * 10 + usize::from(digit - b'0')))
}

// ---------------------------------------------------------------------------------------
// Framing

/// Writes one `name: value` header line. Inlined: with a constant name, the name, `: ` and
/// CRLF become stores rather than three calls.
#[inline]
pub fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a response to `method` with `status` has no body whatever its headers say
/// (RFC 9112 §6.3): after `HEAD`, and for 1xx, 204 and 304.
#[must_use]
pub fn bodiless(method: &Method, status: StatusCode) -> bool {
    *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Whether a response to `method` with `status` has no body but passes on the length the
/// body would have had (RFC 9110 §8.6): after `HEAD` (except a 204) and for 304.
#[must_use]
pub fn declares_length(method: &Method, status: StatusCode) -> bool {
    (*method == Method::HEAD && status != StatusCode::NO_CONTENT && !status.is_informational())
        || status == StatusCode::NOT_MODIFIED
}

/// The length that `Content-Length` field lines say: one number, however often repeated or
/// listed (`5, 5`); lines that disagree, or an item that is not a number, are an error (RFC
/// 9110 §8.6, RFC 9112 §6.3).
pub fn declared_length<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<Option<u64>, BoxError> {
    values.into_iter().try_fold(None, length_items)
}

/// Takes the peer's framing out of a response's header map, as bearerd's client does with
/// its lines: whoever writes the response frames it from what its body delivers (hyper's
/// client keeps a `Content-Length` it decoded a chunked body past, RFC 9112 §6.3). Only the
/// length a bodiless response declares stays, as one value.
pub fn unframe(headers: &mut HeaderMap, method: &Method, status: StatusCode) -> Result<(), BoxError> {
    let Some(_) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(());
    };
    let declared = declared_length(
        headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(HeaderValue::as_bytes),
    )?;
    headers.remove(header::CONTENT_LENGTH);
    if let Some(declared) = declared.filter(|_| declares_length(method, status)) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(declared));
    }
    Ok(())
}

/// Whether a field may be passed on in a trailer section (RFC 9110 §6.5.1): not one that
/// frames or routes the message, modifies the request, authenticates, controls the response
/// or says how to process its content, nor a hop-by-hop one.
pub fn trailer_allowed(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "age"
            | "authorization"
            | "cache-control"
            | "connection"
            | "content-encoding"
            | "content-length"
            | "content-range"
            | "content-type"
            | "cookie"
            | "date"
            | "expect"
            | "expires"
            | "host"
            | "if-match"
            | "if-modified-since"
            | "if-none-match"
            | "if-range"
            | "if-unmodified-since"
            | "keep-alive"
            | "location"
            | "max-forwards"
            | "pragma"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "range"
            | "retry-after"
            | "set-cookie"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "vary"
            | "warning"
            | "www-authenticate"
    )
}

/// `seen` and the lengths a `Content-Length` line lists, if they all agree.
fn length_items(mut seen: Option<u64>, value: &[u8]) -> Result<Option<u64>, BoxError> {
    // The common value, one plain number, read without splitting it or `str::parse`.
    if !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit) {
        let length = value.iter().fold(0, |n: u64, digit| n * 10 + u64::from(digit - b'0'));
        return match seen {
            Some(earlier) if earlier != length => Err("the response has an invalid Content-Length".into()),
            _ => Ok(Some(length)),
        };
    }
    for item in value.split(|&byte| byte == b',') {
        let item = item.trim_ascii();
        let parsed = if !item.is_empty() && item.len() <= 19 && item.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(item)
                .ok()
                .and_then(|digits| digits.parse::<u64>().ok())
        } else {
            None
        };
        match (parsed, seen) {
            (Some(length), None) => seen = Some(length),
            (Some(length), Some(earlier)) if length == earlier => {}
            _ => return Err("the response has an invalid Content-Length".into()),
        }
    }
    Ok(seen)
}

// ---------------------------------------------------------------------------------------
// Hosts

/// The bytes of a registered name or IPv4 address (RFC 3986 §3.2.2: unreserved,
/// percent-encoded, sub-delims), as a table: the check runs on every request's `Host`.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        #[allow(clippy::cast_possible_truncation)] // `byte` is below 256
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        byte += 1;
    }
    table
};

/// Whether a `Host` value is `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2), or
/// empty: a registered name or IPv4 address, or an IPv6 address in brackets; no user info;
/// at most one port, of digits. Read in place: it runs for every request.
#[must_use]
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
        if !host.iter().all(|&byte| REG_NAME[usize::from(byte)]) {
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

/// The host (IPv6 in its brackets) and port of a parsed authority, as `http`'s
/// `Authority::host` and `port_u16` give them, in one pass over the text (each of those
/// searches it again). Byte loops: `rfind` of a `char` goes through `memrchr`, whose setup
/// costs more than these short texts.
#[must_use]
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

// ---------------------------------------------------------------------------------------
// Date

thread_local! {
    pub static DATE: RefCell<Date> = const { RefCell::new(Date { second: 0, text: String::new() }) };
}

/// The `Date` header's text, formatted once a second.
pub struct Date {
    second: u64,
    text: String,
}

impl Date {
    pub fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now);
        }
        self.text.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_keeps_no_length_but_the_one_a_bodiless_response_declares() {
        let map = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::CONTENT_LENGTH, HeaderValue::from_static(value));
            }
            headers
        };
        let lengths = |headers: &HeaderMap| {
            headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .map(|value| value.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let mut headers = map(&["3"]);
        unframe(&mut headers, &Method::GET, StatusCode::OK).unwrap();
        assert!(lengths(&headers).is_empty());
        let mut headers = map(&["7", "7, 7"]);
        unframe(&mut headers, &Method::HEAD, StatusCode::OK).unwrap();
        assert_eq!(lengths(&headers), ["7"]);
        let mut headers = map(&["7"]);
        unframe(&mut headers, &Method::GET, StatusCode::NOT_MODIFIED).unwrap();
        assert_eq!(lengths(&headers), ["7"]);
        let mut headers = map(&["0"]);
        unframe(&mut headers, &Method::HEAD, StatusCode::NO_CONTENT).unwrap();
        assert!(lengths(&headers).is_empty());
        assert!(unframe(&mut map(&["5", "6"]), &Method::GET, StatusCode::OK).is_err());
        assert!(unframe(&mut map(&["5, x"]), &Method::HEAD, StatusCode::OK).is_err());
    }

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
            assert!(valid_host(valid), "{}", String::from_utf8_lossy(valid));
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
            assert!(!valid_host(invalid), "{}", String::from_utf8_lossy(invalid));
        }
    }
}
