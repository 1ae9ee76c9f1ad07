//! bearerd's chunked body decoder fed a body whole and in pieces: it never panics, decodes
//! no more than it was given, does nothing once done, and ends alike however the body was
//! cut. The input's first byte says how many of the bytes after it are piece sizes (1 to
//! 8), used in turn; the rest is the body.
#![no_main]

use bearerd::http1::body::{State, Step};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// What decoding gave: the data, the trailers, how it stopped, and the state and unread
/// bytes it stopped with.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    data: Vec<u8>,
    trailers: Option<Vec<(String, Vec<u8>)>>,
    stop: Stop,
    state: State,
    unread: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
enum Stop {
    End,
    More,
    Error,
}

impl Decoded {
    fn new() -> Self {
        Self {
            data: Vec::new(),
            trailers: None,
            stop: Stop::More,
            state: State::ChunkSize,
            unread: Vec::new(),
        }
    }

    /// Decodes what `input` holds, until the decoder wants more, ends or fails.
    fn decode(&mut self, input: &mut BytesMut) {
        loop {
            let before = input.len();
            match self.state.decode(input) {
                Ok(Step::Data(data)) => {
                    assert!(!data.is_empty(), "an empty data step makes no progress");
                    assert!(input.len() + data.len() <= before);
                    self.data.extend_from_slice(&data);
                }
                Ok(Step::Trailers(fields)) => {
                    assert!(self.trailers.is_none(), "a second trailer section");
                    assert_eq!(self.state, State::Done);
                    let fields = fields
                        .iter()
                        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()));
                    self.trailers = Some(fields.collect());
                    self.stop = Stop::End;
                    break;
                }
                Ok(Step::End) => {
                    assert_eq!(self.state, State::Done);
                    self.stop = Stop::End;
                    break;
                }
                Ok(Step::More) => {
                    self.stop = Stop::More;
                    break;
                }
                Err(_) => {
                    self.stop = Stop::Error;
                    break;
                }
            }
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, input)) = input.split_first() else {
        return;
    };
    let (sizes, body) = input.split_at(input.len().min(usize::from(first % 8) + 1));
    if sizes.is_empty() {
        return;
    }

    let mut whole = Decoded::new();
    let mut buf = BytesMut::from(body);
    whole.decode(&mut buf);
    whole.unread = buf.to_vec();
    assert!(whole.data.len() <= body.len());

    let mut pieces = Decoded::new();
    let mut buf = BytesMut::new();
    let mut rest = body;
    let mut turn = sizes.iter().cycle();
    // A size of 0 decodes again with nothing new; all zeros would never get through.
    let nothing = sizes.iter().all(|&size| size % 64 == 0);
    while pieces.stop == Stop::More {
        let size = turn
            .next()
            .map_or(1, |&size| usize::from(size % 64) + usize::from(nothing));
        let (piece, after) = rest.split_at(rest.len().min(size));
        buf.extend_from_slice(piece);
        rest = after;
        pieces.decode(&mut buf);
        if rest.is_empty() {
            if pieces.stop == Stop::More {
                // All is in: one more call with nothing new changes nothing.
                pieces.decode(&mut buf);
            }
            break;
        }
    }
    if pieces.stop != Stop::More {
        buf.extend_from_slice(rest);
    }
    pieces.unread = buf.to_vec();
    assert_eq!(pieces, whole, "cut by {sizes:?}");

    if whole.stop == Stop::End {
        // Done: more bytes are neither decoded nor taken.
        let mut state = whole.state;
        let another = b"5\r\nhello\r\n0\r\n\r\n";
        let mut more = BytesMut::from(&another[..]);
        assert!(matches!(state.decode(&mut more), Ok(Step::End)));
        assert_eq!((state, &more[..]), (State::Done, &another[..]));
    }
});
