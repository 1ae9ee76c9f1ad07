//! Message bodies on the wire: how much follows a head (a length, chunks, or everything up
//! to the end of the connection), decoded from the bytes read so far.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::MAX_HEADERS;
use crate::BoxError;

/// A chunk-size line (without its CRLF), and a chunked body's trailer section (with its
/// closing empty line), longer than these are refused, however the bytes arrived: when the
/// end is not here yet, as soon as what is here shows it will be too long.
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
                    // Without its CRLF, the line is at least as long as what is here, less a
                    // CR that may start the CRLF.
                    let too_long = || Err("a chunk-size line is too long".into());
                    let Some(end) = find_crlf(input) else {
                        if input.len() > MAX_CHUNK_LINE + 1 {
                            return too_long();
                        }
                        return Ok(Step::More);
                    };
                    if end > MAX_CHUNK_LINE {
                        return too_long();
                    }
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
                    // Without its end, the section is at least one byte longer than what is
                    // here: at most three bytes of its CRLF CRLF are.
                    let too_long = || Err("the trailer section is too long".into());
                    let Some(end) = input.windows(4).position(|window| window == b"\r\n\r\n") else {
                        if input.len() >= MAX_TRAILERS {
                            return too_long();
                        }
                        return Ok(Step::More);
                    };
                    if end + 4 > MAX_TRAILERS {
                        return too_long();
                    }
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

    /// How decoding `body` from the start of a chunked body ends, with the data it gave, when
    /// the body is read `piece` bytes at a time.
    fn decode_chunked(body: &[u8], piece: usize) -> (Result<&'static str, String>, Vec<u8>) {
        let (mut state, mut input, mut data) = (State::ChunkSize, BytesMut::new(), Vec::new());
        for piece in body.chunks(piece) {
            input.extend_from_slice(piece);
            loop {
                match state.decode(&mut input) {
                    Ok(Step::Data(bytes)) => data.extend_from_slice(&bytes),
                    Ok(Step::Trailers(_)) => return (Ok("trailers"), data),
                    Ok(Step::End) => return (Ok("end"), data),
                    Ok(Step::More) => break,
                    Err(err) => return (Err(err.to_string()), data),
                }
            }
        }
        (Ok("more"), data)
    }

    #[test]
    fn line_and_section_limits_hold_however_the_body_arrives() {
        // Found by the `chunked` fuzz target: a line or section over its limit was refused
        // only if its end had not arrived yet.
        let line = |ext: usize| [&b"1;"[..], &vec![b'a'; ext], b"\r\nx\r\n0\r\n\r\n"].concat();
        let section = |value: usize| [&b"1\r\nx\r\n0\r\nX-A: "[..], &vec![b'b'; value], b"\r\n\r\n"].concat();
        let line_error = Err("a chunk-size line is too long".to_owned());
        let section_error = Err("the trailer section is too long".to_owned());
        // (body, how it ends, data)
        let cases = [
            (line(MAX_CHUNK_LINE - 2), Ok("end"), &b"x"[..]),
            (line(MAX_CHUNK_LINE - 1), line_error.clone(), b""),
            (line(5000), line_error, b""),
            (section(MAX_TRAILERS - 9), Ok("trailers"), b"x"),
            (section(MAX_TRAILERS - 8), section_error.clone(), b"x"),
            (section(17_000), section_error, b"x"),
        ];
        for (body, end, data) in cases {
            for piece in [1, 2, 3, 63, 4096, body.len()] {
                assert_eq!(
                    decode_chunked(&body, piece),
                    (end.clone(), data.to_vec()),
                    "{} bytes, {piece} at a time",
                    body.len()
                );
            }
        }
    }

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
