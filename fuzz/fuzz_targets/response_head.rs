//! bearerd's client reading an upstream's response head, to a `GET` and to a `HEAD`: it
//! never panics, passes on no line that frames the message, and decides the same on the
//! head alone; the body after it decodes without a panic.
#![no_main]

use bearerd::http1::body::{State, Step};
use bearerd::http1::client::response_head;
use bearerd::http1::{Known, known};
use bytes::BytesMut;
use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for method in [Method::GET, Method::HEAD] {
        let Ok(Some(head)) = response_head(data, &method) else {
            continue;
        };
        assert!(head.len > 0 && head.len <= data.len());
        if method == Method::HEAD {
            assert_eq!(head.body, State::Length(0), "a response to HEAD has no body");
        }
        let lines = head.lines.as_bytes();
        for line in lines.split_inclusive(|&byte| byte == b'\n') {
            assert!(line.ends_with(b"\r\n"), "{line:?}");
            let colon = line.iter().position(|&byte| byte == b':');
            let name = &line[..colon.unwrap_or_else(|| panic!("no colon in {line:?}"))];
            assert!(
                !matches!(known(name), Known::HopByHop(_) | Known::ContentLength),
                "{line:?} passed on"
            );
        }
        let mut map = HeaderMap::new();
        head.lines.append_to(&mut map);
        if head.lines.declared.is_some() {
            assert_eq!(map.get_all(http::header::CONTENT_LENGTH).iter().count(), 1);
        }
        // The head alone is read alike: what follows it is the body's.
        let alone = response_head(&data[..head.len], &method)
            .unwrap_or_else(|err| panic!("{err}"))
            .expect("a whole head");
        assert_eq!(
            (
                alone.len,
                alone.status,
                alone.body,
                alone.reusable,
                alone.lines.as_bytes()
            ),
            (head.len, head.status, head.body, head.reusable, lines)
        );
        let mut state = head.body;
        let mut rest = BytesMut::from(&data[head.len..]);
        let mut decoded = 0;
        while let Ok(step) = state.decode(&mut rest) {
            match step {
                Step::Data(data) => {
                    assert!(!data.is_empty(), "an empty data step makes no progress");
                    decoded += data.len();
                }
                Step::Trailers(_) => {}
                Step::End | Step::More => break,
            }
        }
        assert!(decoded <= data.len() - head.len);
    }
});
