//! The header names HTTP/1.1 and the proxy act on, told apart in place: no allocation, and
//! no import of anything else, so configuration validation can use it too.

/// A header name the proxy acts on, as [`known`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// A hop-by-hop name (RFC 9110 §7.6.1, plus the legacy `Proxy-Connection` and
    /// `Keep-Alive`), by its [`bit`]. `Trailer` is not one: it announces the trailer fields
    /// end to end (RFC 9110 §6.6.2), and hyper's server sends only the fields it names.
    HopByHop(u16),
    ContentLength,
    Date,
    Expect,
    Host,
    XAuthConfig,
    Other,
}

/// The bits of the hop-by-hop names, for sets of them.
pub mod bit {
    pub const CONNECTION: u16 = 1 << 0;
    pub const KEEP_ALIVE: u16 = 1 << 1;
    pub const PROXY_CONNECTION: u16 = 1 << 2;
    pub const PROXY_AUTHENTICATE: u16 = 1 << 3;
    pub const PROXY_AUTHORIZATION: u16 = 1 << 4;
    pub const TE: u16 = 1 << 5;
    pub const TRANSFER_ENCODING: u16 = 1 << 6;
    pub const UPGRADE: u16 = 1 << 7;
}

/// What `name`, as a message wrote it (in any case), is to the proxy. Told by its length
/// first, then compared with at most two names, without a lowercased copy: every header
/// line of every message is read through here.
#[must_use]
pub fn known(name: &[u8]) -> Known {
    let is = |lower: &[u8]| same_name(name, lower);
    match name.len() {
        2 if is(b"te") => Known::HopByHop(bit::TE),
        4 if is(b"date") => Known::Date,
        4 if is(b"host") => Known::Host,
        6 if is(b"expect") => Known::Expect,
        7 if is(b"upgrade") => Known::HopByHop(bit::UPGRADE),
        10 if is(b"connection") => Known::HopByHop(bit::CONNECTION),
        10 if is(b"keep-alive") => Known::HopByHop(bit::KEEP_ALIVE),
        13 if is(b"x-auth-config") => Known::XAuthConfig,
        14 if is(b"content-length") => Known::ContentLength,
        16 if is(b"proxy-connection") => Known::HopByHop(bit::PROXY_CONNECTION),
        17 if is(b"transfer-encoding") => Known::HopByHop(bit::TRANSFER_ENCODING),
        18 if is(b"proxy-authenticate") => Known::HopByHop(bit::PROXY_AUTHENTICATE),
        19 if is(b"proxy-authorization") => Known::HopByHop(bit::PROXY_AUTHORIZATION),
        _ => Known::Other,
    }
}

/// Whether `name` is `lower` (lowercase letters and `-`, as long as `name`) in any case.
fn same_name(name: &[u8], lower: &[u8]) -> bool {
    name.iter()
        .zip(lower)
        .all(|(&byte, &want)| byte == want || (byte | 0x20 == want && want.is_ascii_lowercase()))
}

/// The [`bit`] of a hop-by-hop name as a message wrote it, in any case; 0 for others.
#[must_use]
pub fn hop_by_hop_bit_of(name: &[u8]) -> u16 {
    match known(name) {
        Known::HopByHop(bit) => bit,
        _ => 0,
    }
}
