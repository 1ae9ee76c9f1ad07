//! Message bodies on the wire: how much follows a head (a length, chunks, or everything up
//! to the end of the connection), decoded from the bytes read so far.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::MAX_HEADERS;
use crate::BoxError;

/// A chunk-size line, and a chunked body's trailer section, longer than these are refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// Where a response body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// This many bytes to go.
    Length(u64),
    ChunkSize,
    /// This many bytes of the current chunk to go.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

/// What decoding the bytes at hand gave.
pub enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// More must be read first.
    More,
}

impl State {
    /// Decodes what `input` holds, as far as the body's state allows, taking what it
    /// decodes off `input`.
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Step, BoxError> {
        let state = self;
        loop {
            match *state {
                State::Done => return Ok(Step::End),
                State::Length(0) => {
                    *state = State::Done;
                    return Ok(Step::End);
                }
                State::Length(left) | State::ChunkData(left) => {
                    if input.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    let left = left - take as u64;
                    *state = match *state {
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Step::Data(input.split_to(take).freeze()));
                }
                State::UntilClose => {
                    if input.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(input.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(end) = find_crlf(input) else {
                        if input.len() > MAX_CHUNK_LINE {
                            return Err("a chunk-size line is too long".into());
                        }
                        return Ok(Step::More);
                    };
                    let size = chunk_size(&input[..end])?;
                    let _ = input.split_to(end + 2);
                    *state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    if input.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &input[..2] != b"\r\n" {
                        return Err("a chunk does not end with CRLF".into());
                    }
                    let _ = input.split_to(2);
                    *state = State::ChunkSize;
                }
                State::Trailers => {
                    if input.starts_with(b"\r\n") {
                        let _ = input.split_to(2);
                        *state = State::Done;
                        return Ok(Step::End);
                    }
                    let Some(end) = input.windows(4).position(|window| window == b"\r\n\r\n") else {
                        if input.len() > MAX_TRAILERS {
                            return Err("the trailer section is too long".into());
                        }
                        return Ok(Step::More);
                    };
                    let section = input.split_to(end + 4);
                    *state = State::Done;
                    return Ok(Step::Trailers(trailers(&section)?));
                }
            }
        }
    }
}

fn find_crlf(input: &[u8]) -> Option<usize> {
    input.windows(2).position(|window| window == b"\r\n")
}

/// The size on a chunk-size line (hex digits, then optional `;` extensions, which are ignored).
fn chunk_size(line: &[u8]) -> Result<u64, BoxError> {
    let digits = line.iter().take_while(|byte| byte.is_ascii_hexdigit()).count();
    let rest = line[digits..].trim_ascii_start();
    if digits == 0 || digits > 16 || !(rest.is_empty() || rest.starts_with(b";")) {
        return Err("malformed chunk size".into());
    }
    let digits = std::str::from_utf8(&line[..digits]).unwrap_or_default();
    u64::from_str_radix(digits, 16).map_err(|_| "malformed chunk size".into())
}

/// The fields of a trailer section (ending in an empty line).
fn trailers(section: &[u8]) -> Result<HeaderMap, BoxError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let fields = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        Ok(httparse::Status::Partial) | Err(_) => return Err("malformed trailer section".into()),
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        trailers.append(
            HeaderName::from_bytes(field.name.as_bytes())?,
            HeaderValue::from_bytes(field.value)?,
        );
    }
    Ok(trailers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        for (line, size) in [
            (&b"0"[..], 0),
            (b"a", 10),
            (b"FF", 255),
            (b"10;name=value", 16),
            (b"10 ;name", 16),
            (b"ffffffffffffffff", u64::MAX),
        ] {
            assert_eq!(chunk_size(line).unwrap(), size, "{}", String::from_utf8_lossy(line));
        }
        for line in [&b""[..], b";ext", b"g", b"1 2", b"10000000000000000", b"-1", b"0x10"] {
            assert!(chunk_size(line).is_err(), "{}", String::from_utf8_lossy(line));
        }
    }
}
