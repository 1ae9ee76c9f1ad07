//! bearerd's server loop deciding about a request head: it never panics, and its decision
//! does not hang on how the bytes were cut into reads.
#![no_main]

use bearerd::http1::server::{Verdict, verdict};
use libfuzzer_sys::fuzz_target;

/// Prefixes checked per input, at most: each is parsed again.
const MAX_CUTS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let whole = verdict(data);
    if let Verdict::Serve { head, body } = whole {
        assert!(
            head > 0 && head + body <= data.len(),
            "{whole:?} of {} bytes",
            data.len()
        );
        // The request alone is decided alike: bytes pipelined after it change nothing.
        assert_eq!(verdict(&data[..head + body]), whole);
        // Until its last byte the head is incomplete.
        assert_eq!(verdict(&data[..head - 1]), Verdict::Partial);
    }
    // The bytes as they might arrive, a line per read: each decision made on a prefix is the
    // one made on the whole, or waits for more. The one exception is by design: a body not
    // all here with its head goes to hyper, while the same body all here is served (or, with
    // a target `http` refuses, answered 400). A prefix that decides at all holds the whole
    // head, so nothing else about the request can differ.
    let cuts = data
        .iter()
        .enumerate()
        .filter(|&(_, &byte)| byte == b'\n')
        .map(|(at, _)| at + 1);
    for cut in cuts.take(MAX_CUTS).filter(|&cut| cut < data.len()) {
        let early = verdict(&data[..cut]);
        let body_late = early == Verdict::HandOff
            && (matches!(whole, Verdict::Serve { body, .. } if body > 0) || whole == Verdict::BadTarget);
        assert!(
            early == Verdict::Partial || early == whole || body_late,
            "{early:?} after {cut} bytes, {whole:?} after {}",
            data.len()
        );
    }
});
