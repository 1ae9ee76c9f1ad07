//! bearerd's own HTTP/1.1 client, for plain-HTTP upstreams and for HTTPS upstreams that
//! choose HTTP/1.1 by ALPN: the sidecar's hot paths.
//!
//! A request whose body is in memory (none, or a small one bearerd read whole, as nginx's
//! `proxy_request_buffering` does) is written with its head in one write, on a pooled
//! connection, by the task that handles the request. The response head is parsed with
//! httparse; the body is read off the connection as the app's side of the proxy asks for it,
//! and the connection goes back to the pool when the body ends. There is no connection task
//! and no channel between tasks, which were most of what hyper's client cost per exchange
//! (benches/README.md). Requests with a streaming body go through hyper's client.
//!
//! Response framing follows RFC 9112 §6.3: no body after `HEAD`, 1xx, 204 and 304;
//! `Transfer-Encoding` ending in `chunked` before `Content-Length` (and then the connection is
//! not reused); a `Content-Length` whose values disagree is an error; otherwise the body runs
//! to the end of the connection.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fnv::FnvBuildHasher;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::{State, Step};
use super::lines::RequestLines;
use super::{
    Framing, Head, Known, MAX_HEAD, MAX_HEADERS, READ_SIZE, bit, bodiless, coding_refusal, declares_length,
    header_line, hop_by_hop_bit_of, known, length_items, options, other_coding, split_authority,
};
use crate::BoxError;

/// Idle upstream connections close after this (tests assume 90 s).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub const TCP_KEEPALIVE: Duration = Duration::from_mins(1);

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An upstream connection's transport: TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls' connection state is kilobytes, and most pools hold plain ones.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => tls.get_ref().0,
        }
    }
}

/// One connection to an upstream, with what was read from it and not yet used.
pub struct Connection {
    stream: Stream,
    input: BytesMut,
    /// The last request written; kept for its capacity.
    output: Vec<u8>,
}

impl Connection {
    fn new(stream: Stream) -> Self {
        Self {
            stream,
            input: BytesMut::with_capacity(READ_SIZE),
            output: Vec::with_capacity(1024),
        }
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it nor
    /// sent anything since the last response.
    ///
    /// Asks the runtime first: after a response read to its end the socket is not held
    /// readable (see [`Connection::poll_fill`]), so this makes no system call. A socket held
    /// readable (the upstream closed it or sent something, or the last read filled all the
    /// room it was given) is read once to tell.
    ///
    /// Over TLS, rustls may also hold decrypted bytes the last read had no room for; and the
    /// socket's bytes cannot be read here without the TLS layer, so a readable socket is
    /// peeked at instead: any byte there (a `close_notify`, most likely) gives it up.
    fn is_usable(&mut self) -> bool {
        if !self.input.is_empty() {
            return false;
        }
        if let Stream::Tls(tls) = &mut self.stream {
            let mut byte = [0_u8; 1];
            let held = io::Read::read(&mut tls.get_mut().1.reader(), &mut byte);
            if !matches!(held, Err(err) if err.kind() == io::ErrorKind::WouldBlock) {
                return false;
            }
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.tcp().poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) if matches!(self.stream, Stream::Tls(_)) => {
                let tcp = self.stream.tcp();
                let mut byte = [MaybeUninit::uninit()];
                let peeked = tcp.try_io(tokio::io::Interest::READABLE, || {
                    socket2::SockRef::from(tcp).peek(&mut byte)
                });
                matches!(peeked, Err(err) if err.kind() == io::ErrorKind::WouldBlock)
            }
            Poll::Ready(Ok(())) => {
                let mut byte = [0_u8; 1];
                matches!(self.stream.tcp().try_read(&mut byte), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more of the response into `input`; 0 at the end of the connection.
    ///
    /// Through tokio's `AsyncRead`, which takes a read shorter than the room it was given as
    /// having emptied the socket and clears the runtime's read readiness (keeping a
    /// read-closed state). `TcpStream::try_read_buf` clears it only on a read that would
    /// block, so the idle check before the next request had to make that read: one more
    /// system call per request (strace: 3 `recvfrom` per request instead of 2).
    ///
    /// The transport is matched here, once, rather than in an `AsyncRead` of [`Stream`]: each
    /// arm reads through its own stream type, so the plain one compiles to the TCP read alone.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.input.reserve(READ_SIZE);
        match &mut self.stream {
            Stream::Plain(tcp) => tokio_util::io::poll_read_buf(Pin::new(tcp), cx, &mut self.input),
            Stream::Tls(tls) => tokio_util::io::poll_read_buf(Pin::new(&mut **tls), cx, &mut self.input),
        }
    }

    /// Writes `output` whole; over TLS, flushes too, since a write may leave records in
    /// rustls until flushed.
    async fn write_output(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Plain(tcp) => tcp.write_all(&self.output).await,
            Stream::Tls(tls) => {
                tls.write_all(&self.output).await?;
                tls.flush().await
            }
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// A response head as read from an upstream: the status line, the lines passed on, and
/// what the head says of its body and the connection.
struct Received {
    head: Head,
    status: StatusCode,
    version: Version,
    lines: HeaderLines,
}

/// A response's header lines as the upstream wrote them, passed on to the app as bytes
/// rather than built into a `HeaderMap` only to be written out again. Cut out: hop-by-hop
/// lines, those `Connection` names, and every `Content-Length` line: the writer frames the
/// body itself, from what the decoder will deliver, never from the peer's lines. Every line
/// ends in CRLF.
pub struct HeaderLines {
    bytes: Bytes,
    /// The upstream's `Content-Length` (checked: one value, however often repeated) for a
    /// response that has no body but whose length is its metadata: to `HEAD`, and 304.
    pub declared: Option<u64>,
    /// A `Date` line is among the lines passed on.
    pub date: bool,
}

impl HeaderLines {
    /// The lines, each ending in CRLF, without the empty line that ends a head.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Adds the lines to `headers`, for what needs them as a map (hyper's server), with the
    /// declared length of a bodiless response.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        if let Some(declared) = self.declared {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(declared));
        }
        for line in self.bytes.split(|&byte| byte == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&byte| byte == b':') else {
                continue;
            };
            let value = self.bytes.slice_ref(line[colon + 1..].trim_ascii());
            // httparse accepted the lines, and it accepts no name or value `http` refuses.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_maybe_shared(value),
            ) {
                headers.append(name, value);
            }
        }
    }
}

/// Writes the request into `out`: request line in origin-form, `Host` first, the app's
/// header `lines` as it wrote them (when the listener loop kept them) and the headers in the
/// map, `Content-Length` for a body (or an empty one where a body is expected), then the body.
fn encode(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    host: &str,
    lines: Option<&RequestLines>,
    headers: &HeaderMap,
    body: &[u8],
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in lines.into_iter().flat_map(RequestLines::iter) {
        // The lines hold no `Host` or hop-by-hop ones.
        if !name.eq_ignore_ascii_case(b"content-length") {
            header_line(out, name, value);
        }
    }
    for (name, value) in headers {
        // bearerd writes these itself; hop-by-hop headers were stripped before.
        if name == header::HOST || name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        header_line(
            out,
            b"content-length",
            itoa::Buffer::new().format(body.len()).as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Takes a complete response head off the front of `input`, or `None` if more must be read.
///
/// The header lines stay as the upstream wrote them, in `input`'s memory: those not passed on
/// (hop-by-hop ones, and those `Connection` names) are read for the framing and cut out by
/// moving the later lines over them.
fn parse_head(input: &mut BytesMut, method: &Method) -> Result<Option<Received>, BoxError> {
    // Uninitialised: the parser fills only as many as there are headers.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let length =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, input, &mut slots) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(format!("the response has more than {MAX_HEADERS} headers").into());
            }
            Err(err) => return Err(format!("malformed response head: {err}").into()),
        };
    let status = StatusCode::from_u16(parsed.code.unwrap_or_default())?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut facts = Facts {
        close: version == Version::HTTP_10,
        ..Facts::default()
    };
    // Where each line starts; httparse takes no folded lines, so a line runs up to the next
    // one, and the last up to the empty line that ends the head (CRLF, or a bare LF).
    let count = parsed.headers.len();
    let mut starts = [0_usize; MAX_HEADERS + 1];
    starts[count] = length - if input[..length].ends_with(b"\r\n") { 2 } else { 1 };
    // Bit `i` for line `i`: those cut out, and the `Date` lines.
    let (mut cut, mut dates) = (0_u128, 0_u128);
    for (i, field) in parsed.headers.iter().enumerate() {
        starts[i] = field.name.as_ptr().addr() - input.as_ptr().addr();
        match known(field.name.as_bytes()) {
            Known::HopByHop(bit) => {
                facts.hop_by_hop(bit, field.value, version);
                cut |= 1 << i;
            }
            Known::ContentLength => {
                facts.content_length(field.value)?;
                cut |= 1 << i;
            }
            Known::Date => dates |= 1 << i,
            _ => {}
        }
    }
    if !facts.listed.is_empty() {
        for (i, field) in parsed.headers.iter().enumerate() {
            if facts
                .listed
                .iter()
                .any(|listed| listed.eq_ignore_ascii_case(field.name.as_bytes()))
            {
                cut |= 1 << i;
            }
        }
    }
    if let Some(coding) = facts.other_coding {
        return Err(coding_refusal("response", coding).into());
    }
    let (framing, keep_alive) = facts.framing(method, status, version);
    // A length beside `Transfer-Encoding` means nothing (RFC 9112 §6.1), and 1xx and 204
    // responses may not carry one (RFC 9110 §8.6).
    let declared = facts
        .content_length
        .filter(|_| !facts.chunked && declares_length(method, status));
    let first = starts[0];
    let mut to = first;
    let mut crlf = true;
    for i in (0..count).filter(|&i| cut & (1 << i) == 0) {
        let line = starts[i]..starts[i + 1];
        // Read before any line moves onto it: lines only move towards the front.
        crlf &= input[..line.end].ends_with(b"\r\n");
        let len = line.len();
        if line.start != to {
            input.copy_within(line, to);
        }
        to += len;
    }
    let head = input.split_to(length).freeze();
    let bytes = if crlf {
        head.slice(first..to)
    } else {
        with_crlf(&head[first..to])
    };
    Ok(Some(Received {
        head: Head {
            len: length,
            framing,
            keep_alive,
        },
        status,
        version,
        lines: HeaderLines {
            bytes,
            declared,
            date: dates & !cut != 0,
        },
    }))
}

/// What the client makes of a response head: the public face of its parsing, which the
/// fuzz targets (`fuzz/`) drive.
pub struct ResponseHead {
    /// The head's length in bytes.
    pub len: usize,
    pub status: StatusCode,
    /// Where decoding its body starts.
    pub body: State,
    /// The connection can take another request once the body is read.
    pub reusable: bool,
    /// The header lines passed on to the app.
    pub lines: HeaderLines,
}

/// What the client makes of the response head at the start of `input`, to a `method`
/// request: `None` if more must be read, an error if the upstream's response is refused.
pub fn response_head(input: &[u8], method: &Method) -> Result<Option<ResponseHead>, BoxError> {
    let mut input = BytesMut::from(input);
    let Some(received) = parse_head(&mut input, method)? else {
        return Ok(None);
    };
    Ok(Some(ResponseHead {
        len: received.head.len,
        status: received.status,
        body: received.head.framing.state(),
        reusable: received.head.keep_alive,
        lines: received.lines,
    }))
}

/// `lines` with each ending in CRLF (some ended in a bare LF).
fn with_crlf(lines: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(lines.len() + 32);
    for line in lines.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.extend_from_slice(b"\r\n");
    }
    out.into()
}

/// What a response head's headers say about its framing and its connection.
#[derive(Default)]
struct Facts<'a> {
    /// The connection ends after this response.
    close: bool,
    /// There is a `Transfer-Encoding` (of `chunked` only: other codings are refused).
    chunked: bool,
    content_length: Option<u64>,
    /// Other headers `Connection` names, to be left out too.
    listed: Vec<&'a [u8]>,
    /// A transfer coding other than chunked, which bearerd does not decode.
    other_coding: Option<&'a [u8]>,
}

impl<'a> Facts<'a> {
    /// Takes a hop-by-hop line, named by its bit in [`inject::bit`].
    fn hop_by_hop(&mut self, name: u16, value: &'a [u8], version: Version) {
        if name == bit::CONNECTION {
            for option in options(value) {
                if option.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    if version == Version::HTTP_10 {
                        self.close = false;
                    }
                } else if hop_by_hop_bit_of(option) == 0 {
                    self.listed.push(option);
                }
            }
        } else if name == bit::TRANSFER_ENCODING {
            self.other_coding = self.other_coding.or_else(|| other_coding([value]));
            self.chunked = true;
        }
    }

    /// Takes one `Content-Length` line: one length, or a list of the same length.
    fn content_length(&mut self, value: &[u8]) -> Result<(), BoxError> {
        self.content_length = length_items(self.content_length, value)?;
        Ok(())
    }

    /// How the body of a response to `method` is delimited, and whether the connection stays
    /// open after it.
    fn framing(&self, method: &Method, status: StatusCode, version: Version) -> (Framing, bool) {
        if bodiless(method, status) {
            return (Framing::Empty, !self.close);
        }
        if self.chunked {
            // Both headers is a sign of request smuggling (RFC 9112 §6.1): the connection
            // ends with this response.
            let smuggled = self.content_length.is_some();
            return if version == Version::HTTP_11 {
                (Framing::Chunked, !self.close && !smuggled)
            } else {
                (Framing::UntilClose, false)
            };
        }
        match self.content_length {
            Some(length) => (Framing::Length(length), !self.close),
            None => (Framing::UntilClose, false),
        }
    }
}

/// Why an exchange failed, as far as sending the request again is concerned.
enum Failed {
    /// Writing the request failed: the upstream cannot have acted on it.
    Write(io::Error),
    /// The connection ended before any byte of a response.
    NothingReceived(BoxError),
    Other(BoxError),
}

impl Failed {
    fn into_error(self) -> BoxError {
        match self {
            Self::Write(err) => err.into(),
            Self::NothingReceived(err) | Self::Other(err) => err,
        }
    }
}

/// Reads the final response head; interim (1xx) responses are read past.
async fn read_head(connection: &mut Connection, method: &Method) -> Result<Received, Failed> {
    let mut received = false;
    loop {
        if !connection.input.is_empty() {
            match parse_head(&mut connection.input, method).map_err(Failed::Other)? {
                Some(head) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                    return Err(Failed::Other("the upstream switched protocols unasked".into()));
                }
                Some(head) if head.status.is_informational() => continue,
                Some(head) => return Ok(head),
                None if connection.input.len() >= MAX_HEAD => {
                    return Err(Failed::Other(
                        format!("the response head is longer than {} KiB", MAX_HEAD / 1024).into(),
                    ));
                }
                None => {}
            }
        }
        let read = connection.fill().await;
        match read {
            Ok(0) if received => {
                return Err(Failed::Other(
                    "the upstream closed the connection within the response head".into(),
                ));
            }
            Ok(0) => {
                return Err(Failed::NothingReceived(
                    "the upstream closed the connection without a response".into(),
                ));
            }
            Ok(_) => received = true,
            Err(err) if received => return Err(Failed::Other(err.into())),
            Err(err) => return Err(Failed::NothingReceived(err.into())),
        }
    }
}

/// Where a connection goes back to when its response has been read.
struct Home {
    pool: Arc<Pool>,
    host: Arc<Host>,
}

/// A response body read off its upstream connection; the connection goes back to the pool
/// when the body ends, and closes if the body is dropped before.
pub struct ResponseBody {
    /// Boxed, as everywhere: the response that holds it is moved through several futures.
    connection: Option<Box<Connection>>,
    state: State,
    reusable: bool,
    home: Option<Home>,
    /// The response's header lines, until taken.
    lines: Option<HeaderLines>,
}

impl ResponseBody {
    /// The response's header lines (not in its header map): `None` once taken.
    pub fn take_header_lines(&mut self) -> Option<HeaderLines> {
        self.lines.take()
    }

    fn new(connection: Box<Connection>, received: Received, home: Home) -> Self {
        let Received { head, lines, .. } = received;
        let state = head.framing.state();
        let mut body = Self {
            connection: Some(connection),
            state,
            reusable: head.keep_alive,
            home: Some(home),
            lines: Some(lines),
        };
        // hyper does not poll a body that is already at its end.
        if state == State::Length(0) {
            body.end();
        }
        body
    }

    /// The body has been read: the connection goes back to the pool, unless it cannot take
    /// another request or holds bytes past this response.
    fn end(&mut self) {
        self.state = State::Done;
        if let (Some(connection), Some(home)) = (self.connection.take(), self.home.take())
            && self.reusable
            && connection.input.is_empty()
        {
            home.pool.put(&home.host, connection);
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match this.state.decode(&mut connection.input) {
                Ok(step) => step,
                Err(err) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(err)));
                }
            };
            match step {
                Step::Data(data) => {
                    if this.state == State::Length(0) {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Trailers(trailers) => {
                    this.end();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Step::End => {
                    this.end();
                    return Poll::Ready(None);
                }
                Step::More => match std::task::ready!(connection.poll_fill(cx)) {
                    Ok(0) if this.state == State::UntilClose => {
                        this.state = State::Done;
                        this.connection = None;
                        return Poll::Ready(None);
                    }
                    Ok(0) => {
                        this.connection = None;
                        return Poll::Ready(Some(Err("the upstream closed the connection within the body".into())));
                    }
                    Ok(_) => {}
                    Err(err) => {
                        this.connection = None;
                        return Poll::Ready(Some(Err(err.into())));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(left) => SizeHint::with_exact(left),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Idle connections to upstreams of one scheme (plain HTTP, or HTTPS), by authority.
///
/// A request looks its authority up once, in the map of hosts (hashed with FNV rather than
/// std's slower `SipHash`: the authorities are the app's own, the sidecar's one client, not
/// an attacker's). Its connection goes back to that host's list
/// directly when the response ends, without a second lookup.
pub struct Pool {
    /// This pool among others, for [`LAST_HOST`].
    id: u64,
    hosts: Mutex<HashMap<Key, Arc<Host>, FnvBuildHasher>>,
    connect_timeout: Duration,
    /// For an HTTPS pool: the handshake, offering `h2` and `http/1.1` by ALPN.
    tls: Option<tokio_rustls::TlsConnector>,
    /// Milliseconds from `started` to the last sweep of every host's list.
    swept: AtomicU64,
    started: Instant,
}

static POOL_IDS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The host the last request on this thread went to, with its pool's id: a sidecar's
    /// requests mostly go to one upstream, and comparing the authority costs a fraction of a
    /// lookup in the map, with its lock and hashing. Weak,
    /// so that it keeps no host from being swept, nor its connections open.
    static LAST_HOST: RefCell<Option<(u64, Authority, Weak<Host>)>> = const { RefCell::new(None) };
}

/// How often, in milliseconds, a connection coming back sweeps every host's list, not only its
/// own, so that hosts no longer used have their connections closed too.
const SWEEP_EVERY_MS: u64 = 1000;

/// An authority as the pool's key. `http`'s own `Hash` for `Authority` gives the hasher one
/// lowercased byte at a time, which made hashing most of a pool lookup; this gives it the
/// text at once (lowercased only if it has capitals, to agree with the case-insensitive `Eq`,
/// which is [`same_authority`], as for the thread's last host).
struct Key(Authority);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        same_authority(&self.0, &other.0)
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let text = self.0.as_str();
        if text.bytes().any(|byte| byte.is_ascii_uppercase()) {
            text.to_ascii_lowercase().hash(state);
        } else {
            text.hash(state);
        }
    }
}

/// Whether two authorities are the same (case-insensitively, as `Authority`'s `==` has it):
/// compared as bytes first, since `==` lowercases each byte of both, and the two are
/// nearly always written alike.
fn same_authority(a: &Authority, b: &Authority) -> bool {
    let (a, b) = (a.as_str(), b.as_str());
    a == b || a.eq_ignore_ascii_case(b)
}

/// One authority's idle connections, in the order they came back.
#[derive(Default)]
struct Host {
    idle: Mutex<Vec<Idle>>,
    /// When an HTTPS upstream chose HTTP/2 by ALPN, the last time a request found that out
    /// (milliseconds from the pool's start, 0 for never): its requests go to hyper's HTTP/2
    /// client, until it has had none for [`POOL_IDLE_TIMEOUT`].
    http2_seen: AtomicU64,
}

struct Idle {
    connection: Box<Connection>,
    /// When it has been idle for [`POOL_IDLE_TIMEOUT`]: kept rather than when it became idle,
    /// so each look is a comparison of instants, not a subtraction.
    expires: Instant,
}

impl Host {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that can take a request.
    fn checkout(&self) -> Option<Box<Connection>> {
        let mut idle = self.lock();
        while let Some(mut idle) = idle.pop() {
            if Instant::now() < idle.expires && idle.connection.is_usable() {
                return Some(idle.connection);
            }
        }
        None
    }

    /// Closes (drops) the connections idle for too long: the front of the list, found with one
    /// look at the front and a binary search only when it has expired. Whether any are left.
    fn sweep(idle: &mut Vec<Idle>, now: Instant) -> bool {
        let expired = |idle: &Idle| now >= idle.expires;
        if idle.first().is_some_and(expired) {
            let expired = idle.partition_point(expired);
            idle.drain(..expired);
        }
        !idle.is_empty()
    }
}

/// What [`Pool::send`] did.
#[expect(
    clippy::large_enum_variant,
    reason = "returned, not stored: boxing the response would cost an allocation per request"
)]
pub enum Sent {
    Response(Response<ResponseBody>),
    /// Nothing: the HTTPS upstream chose HTTP/2 by ALPN, which this client does not speak.
    Http2,
}

impl Pool {
    /// A pool for plain-HTTP upstreams.
    #[must_use]
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            id: POOL_IDS.fetch_add(1, Ordering::Relaxed),
            hosts: Mutex::new(HashMap::default()),
            connect_timeout,
            tls: None,
            swept: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// A pool for HTTPS upstreams, verified as `tls` says; it offers `h2` and `http/1.1` by
    /// ALPN (its own `alpn_protocols` are replaced), and reports [`Sent::Http2`] for an
    /// upstream that picks `h2`.
    #[must_use]
    pub fn with_tls(connect_timeout: Duration, mut tls: rustls::ClientConfig) -> Self {
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self {
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(tls))),
            ..Self::new(connect_timeout)
        }
    }

    /// Milliseconds from the pool's start to `now`, at least 1 (0 means never).
    fn since_start(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.started).as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether `host` chose HTTP/2 recently; if so, this counts as a use.
    fn speaks_http2(&self, host: &Host) -> bool {
        let seen = host.http2_seen.load(Ordering::Relaxed);
        if seen == 0 {
            return false;
        }
        let now = self.since_start(Instant::now());
        if now.saturating_sub(seen) >= millis(POOL_IDLE_TIMEOUT) {
            // Asked again at the next connection: upstreams change.
            host.http2_seen.store(0, Ordering::Relaxed);
            return false;
        }
        host.http2_seen.store(now, Ordering::Relaxed);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Host>, FnvBuildHasher>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `authority`'s list of idle connections, where its connections go back to.
    fn host(&self, authority: &Authority) -> Arc<Host> {
        LAST_HOST.with_borrow_mut(|last| {
            if let Some((pool, cached, host)) = last.as_ref()
                && *pool == self.id
                && same_authority(cached, authority)
                && let Some(host) = host.upgrade()
            {
                return host;
            }
            let mut hosts = self.lock();
            let (key, host) = if let Some((key, host)) = hosts.get_key_value(&Key(authority.clone())) {
                (key.0.clone(), Arc::clone(host))
            } else {
                // A copy: the request's authority shares the memory of its whole head.
                let key = Authority::from_maybe_shared(Bytes::copy_from_slice(authority.as_str().as_bytes()))
                    .unwrap_or_else(|_| authority.clone());
                let host = Arc::<Host>::default();
                hosts.insert(Key(key.clone()), Arc::clone(&host));
                (key, host)
            };
            *last = Some((self.id, key, Arc::downgrade(&host)));
            host
        })
    }

    fn put(&self, host: &Host, connection: Box<Connection>) {
        let now = Instant::now();
        {
            let mut idle = host.lock();
            idle.push(Idle {
                connection,
                expires: now + POOL_IDLE_TIMEOUT,
            });
            Host::sweep(&mut idle, now);
        }
        let since_start = self.since_start(now);
        let last = self.swept.load(Ordering::Relaxed);
        if since_start.saturating_sub(last) >= SWEEP_EVERY_MS
            && self
                .swept
                .compare_exchange(last, since_start, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // Hosts with no idle connection left go too, unless a request holds them (it
            // will put its connection back there) or they recently spoke HTTP/2.
            let http2_kept = since_start.saturating_sub(millis(POOL_IDLE_TIMEOUT));
            self.lock().retain(|_, host| {
                Host::sweep(&mut host.lock(), now)
                    || Arc::strong_count(host) > 1
                    || host.http2_seen.load(Ordering::Relaxed) > http2_kept
            });
        }
    }

    /// A new connection to `authority`: TCP, then for an HTTPS pool the TLS handshake;
    /// `None` when the upstream chose HTTP/2 by ALPN.
    async fn connect(&self, authority: &Authority) -> Result<Option<Box<Connection>>, BoxError> {
        let (host, port) = split_authority(authority);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"))??;
        tcp.set_nodelay(true)?;
        socket2::SockRef::from(&tcp).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE))?;
        let Some(tls) = &self.tls else {
            return Ok(Some(Box::new(Connection::new(Stream::Plain(tcp)))));
        };
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())?;
        let tls = tls.connect(name, tcp).await?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            return Ok(None);
        }
        Ok(Some(Box::new(Connection::new(Stream::Tls(Box::new(tls))))))
    }

    /// Sends a request for `uri` (absolute-form, `http://` or `https://` as the pool is) in
    /// origin-form, with its `Host` and `body`, on an idle connection or a new one, and reads
    /// the response head. The response's header map is empty: its header lines are in its
    /// body ([`ResponseBody::take_header_lines`]). An HTTPS upstream that chose HTTP/2 is
    /// remembered, and its requests come back [`Sent::Http2`] unsent.
    ///
    /// A reused connection may turn out closed by the upstream while idle: the request is
    /// then sent again on a new connection when the upstream cannot have acted on it (the
    /// write failed), or when nothing came back and the method is idempotent (RFC 9110
    /// §9.2.2).
    pub async fn send(
        self: &Arc<Self>,
        method: &Method,
        uri: &http::Uri,
        lines: Option<&RequestLines>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Sent, BoxError> {
        let Some(authority) = uri.authority().cloned() else {
            return Err("the request URI has no authority".into());
        };
        let host = host_header(&authority, self.tls.is_some());
        let target = origin_form(uri);
        let mut reused = true;
        let slot = self.host(&authority);
        let mut idle = slot.checkout();
        if idle.is_none() && self.speaks_http2(&slot) {
            return Ok(Sent::Http2);
        }
        loop {
            let mut connection = if let Some(connection) = idle.take() {
                connection
            } else {
                reused = false;
                let Some(connection) = Box::pin(self.connect(&authority)).await? else {
                    slot.http2_seen
                        .store(self.since_start(Instant::now()), Ordering::Relaxed);
                    return Ok(Sent::Http2);
                };
                connection
            };
            encode(&mut connection.output, method, &target, &host, lines, headers, body);
            let result = match connection.write_output().await {
                Ok(()) => read_head(&mut connection, method).await,
                Err(err) => Err(Failed::Write(err)),
            };
            match result {
                Ok(head) => {
                    let home = Home {
                        pool: Arc::clone(self),
                        host: slot,
                    };
                    let (status, version) = (head.status, head.version);
                    let mut response = Response::new(ResponseBody::new(connection, head, home));
                    *response.status_mut() = status;
                    *response.version_mut() = version;
                    return Ok(Sent::Response(response));
                }
                Err(Failed::Write(_)) if reused => idle = slot.checkout(),
                Err(Failed::NothingReceived(_)) if reused && method.is_idempotent() => idle = slot.checkout(),
                Err(failed) => return Err(failed.into_error()),
            }
        }
    }
}

/// The `Host` header for `authority`: without user info, and without the port when it is the
/// scheme's default (443 over TLS, else 80). Borrowed from the authority, whose text `http` has already checked (no control characters
/// or spaces), except when user info has to be cut out of `host:port`.
fn host_header(authority: &Authority, tls: bool) -> Cow<'_, str> {
    let text = authority.as_str();
    let default = if tls { 443 } else { 80 };
    // Most authorities are already it: no user info, and no port that could be the default
    // (`:80`, `:080`, ...).
    if !text.as_bytes().contains(&b'@') && !text.ends_with(if tls { "443" } else { "80" }) {
        return text.into();
    }
    let (host, port) = split_authority(authority);
    match port {
        None => host.into(),
        Some(port) if port == default => host.into(),
        // `host:port` as written, unless it carries user info.
        Some(_) if !authority.as_str().contains('@') => authority.as_str().into(),
        Some(port) => format!("{host}:{port}").into(),
    }
}

/// `/path?query` of an absolute URI.
fn origin_form(uri: &http::Uri) -> Cow<'_, str> {
    match uri.path_and_query().map_or("", http::uri::PathAndQuery::as_str) {
        "" => "/".into(),
        query if query.starts_with('?') => format!("/{query}").into(),
        path => path.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body::Body as _;
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A hand-written upstream: answers each request it reads (a head and its
    /// `Content-Length` bytes) with the next of `responses`, on whichever connection it came,
    /// and closes the connection after each answer if `close_each`.
    struct Script {
        addr: SocketAddr,
        requests: Arc<Mutex<Vec<String>>>,
        connections: Arc<AtomicUsize>,
    }

    impl Script {
        async fn start(responses: Vec<Vec<u8>>, close_each: bool) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let connections = Arc::new(AtomicUsize::new(0));
            let responses = Arc::new(Mutex::new(responses.into_iter()));
            let (recorded, counted) = (Arc::clone(&requests), Arc::clone(&connections));
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let (recorded, responses) = (Arc::clone(&recorded), Arc::clone(&responses));
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        while let Some(request) = read_request(&mut stream, &mut buf).await {
                            recorded.lock().unwrap().push(request);
                            let Some(response) = responses.lock().unwrap().next() else {
                                return;
                            };
                            if stream.write_all(&response).await.is_err() || close_each {
                                return;
                            }
                        }
                    });
                }
            });
            Self {
                addr,
                requests,
                connections,
            }
        }

        fn uri(&self, path: &str) -> http::Uri {
            format!("http://{}{path}", self.addr).parse().unwrap()
        }

        fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }

        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }
    }

    async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .map_or(0, |n| n.parse::<usize>().unwrap());
                if buf.len() >= end + 4 + length {
                    let request = buf.drain(..end + 4 + length).collect::<Vec<_>>();
                    return Some(String::from_utf8(request).unwrap());
                }
            }
            let mut chunk = [0_u8; 4096];
            match tokio::time::timeout(LIMIT, stream.read(&mut chunk)).await {
                Ok(Ok(read)) if read > 0 => buf.extend_from_slice(&chunk[..read]),
                _ => return None,
            }
        }
    }

    async fn send(
        pool: &Arc<Pool>,
        method: Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response<ResponseBody>, BoxError> {
        let sent = tokio::time::timeout(LIMIT, pool.send(&method, uri, None, headers, body))
            .await
            .expect("an answer in time")?;
        Ok(sent.into_response())
    }

    impl Sent {
        fn into_response(self) -> Response<ResponseBody> {
            match self {
                Self::Response(response) => response,
                Self::Http2 => panic!("the upstream chose HTTP/2"),
            }
        }
    }

    /// The body's bytes and trailers, read to the end.
    async fn read_body(body: ResponseBody) -> Result<(Bytes, Option<HeaderMap>), BoxError> {
        let collected = tokio::time::timeout(LIMIT, body.collect())
            .await
            .expect("the end in time")?;
        let trailers = collected.trailers().cloned();
        Ok((collected.to_bytes(), trailers))
    }

    fn pool() -> Arc<Pool> {
        Arc::new(Pool::new(Duration::from_secs(5)))
    }

    #[tokio::test]
    async fn requests_go_in_origin_form_with_host_first_and_the_length_of_their_body() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec();
        let upstream = Script::start(vec![ok; 4], false).await;
        let pool = pool();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        // The app's own framing headers are replaced by bearerd's.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert(header::HOST, HeaderValue::from_static("elsewhere.test"));
        for (method, path, body) in [
            (Method::GET, "/v1/items?page=2", &b""[..]),
            (Method::POST, "/v1/items", &b"{\"a\":1}"[..]),
            (Method::PUT, "", &b""[..]),
            (Method::GET, "?only=query", &b""[..]),
        ] {
            let response = send(&pool, method, &upstream.uri(path), &headers, body).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert!(response.body().is_end_stream());
        }
        let host = upstream.addr.to_string();
        let common = "authorization: Bearer t\r\nx-many: 1\r\nx-many: 2\r\n";
        assert_eq!(
            upstream.requests(),
            [
                format!("GET /v1/items?page=2 HTTP/1.1\r\nhost: {host}\r\n{common}\r\n"),
                format!("POST /v1/items HTTP/1.1\r\nhost: {host}\r\n{common}content-length: 7\r\n\r\n{{\"a\":1}}"),
                format!("PUT / HTTP/1.1\r\nhost: {host}\r\n{common}content-length: 0\r\n\r\n"),
                format!("GET /?only=query HTTP/1.1\r\nhost: {host}\r\n{common}\r\n"),
            ]
        );
        assert_eq!(upstream.connections(), 1, "one kept-alive connection for all four");
    }

    #[tokio::test]
    async fn the_apps_header_lines_go_as_written_before_what_the_proxy_adds() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec();
        let upstream = Script::start(vec![ok], false).await;
        let (lines, _) = RequestLines::parsed(
            b"POST http://a.test/x HTTP/1.1\r\nHost: a.test\r\nX-Many:  1\r\nContent-Length: 999\r\nAccept: */*\r\n\
              Connection: close\r\nx-many: 2\r\n\r\n",
        );
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        let uri = upstream.uri("/x");
        let response = tokio::time::timeout(LIMIT, pool().send(&Method::POST, &uri, Some(&lines), &headers, b"ab"))
            .await
            .unwrap()
            .unwrap()
            .into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            upstream.requests(),
            [format!(
                "POST /x HTTP/1.1\r\nhost: {}\r\nX-Many: 1\r\nAccept: */*\r\nx-many: 2\r\n\
                 authorization: Bearer t\r\ncontent-length: 2\r\n\r\nab",
                upstream.addr
            )]
        );
    }

    /// One response, read whole, then a second request: whether it came on the same
    /// connection says whether the first one went back to the pool. The response's header
    /// lines are in its header map, as `HeaderLines::append_to` puts them there.
    async fn exchange_then_another(
        method: Method,
        response: &[u8],
    ) -> (Response<Result<(Bytes, Option<HeaderMap>), String>>, Lines, usize) {
        let next = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext".to_vec();
        let upstream = Script::start(vec![response.to_vec(), next], false).await;
        let pool = pool();
        let (mut parts, mut body) = send(&pool, method, &upstream.uri("/"), &HeaderMap::new(), b"")
            .await
            .unwrap()
            .into_parts();
        assert!(parts.headers.is_empty(), "the lines are in the body, not in the map");
        let lines = body.take_header_lines().expect("the header lines");
        lines.append_to(&mut parts.headers);
        let lines = Lines {
            text: String::from_utf8(lines.as_bytes().to_vec()).unwrap(),
            declared: lines.declared,
            date: lines.date,
        };
        assert!(body.take_header_lines().is_none(), "taken once");
        let body = read_body(body).await.map_err(|err| err.to_string());
        if body.is_ok() {
            let second = send(&pool, Method::GET, &upstream.uri("/"), &HeaderMap::new(), b"")
                .await
                .unwrap();
            assert_eq!(read_body(second.into_body()).await.unwrap().0, "next");
        }
        (Response::from_parts(parts, body), lines, upstream.connections())
    }

    /// A response's `HeaderLines`, as text.
    #[derive(Debug, PartialEq)]
    struct Lines {
        text: String,
        declared: Option<u64>,
        date: bool,
    }

    #[tokio::test]
    async fn bodies_are_framed_by_length_chunks_or_the_end_of_the_connection() {
        let cases: [(Method, &[u8], &str, usize); 10] = [
            (
                Method::GET,
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                "hello",
                1,
            ),
            (
                Method::GET,
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                "hello world",
                1,
            ),
            (Method::HEAD, b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", "", 1),
            (Method::GET, b"HTTP/1.1 204 No Content\r\n\r\n", "", 1),
            (
                Method::GET,
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n",
                "",
                1,
            ),
            (
                Method::GET,
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                "ok",
                1,
            ),
            (
                Method::GET,
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
                "ok",
                1,
            ),
            // Not reused: the upstream says so, or the framing leaves no other choice.
            (
                Method::GET,
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                "ok",
                2,
            ),
            (Method::GET, b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", "ok", 2),
            (
                Method::GET,
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                "ok",
                2,
            ),
        ];
        for (method, response, body, connections) in cases {
            let text = String::from_utf8_lossy(response).into_owned();
            let (response, lines, used) = exchange_then_another(method.clone(), response).await;
            let (read, trailers) = response.body().as_ref().unwrap_or_else(|err| panic!("{text}: {err}"));
            assert_eq!(read, body, "{text}");
            assert_eq!(trailers, &None, "{text}");
            assert_eq!(used, connections, "{text}");
            // No framing line is passed on: the writer frames the body itself.
            assert_eq!(lines.text, "", "{text}");
            let declared = match text.as_str() {
                _ if text.starts_with("HTTP/1.1 304") => Some(7),
                _ if method == Method::HEAD => Some(10),
                _ => None,
            };
            assert_eq!(lines.declared, declared, "{text}");
        }
    }

    #[tokio::test]
    async fn trailers_and_header_values_come_through_as_sent() {
        let response = b"HTTP/1.1 201 Created\r\nx-empty:\r\nx-list: a\r\nx-list: b\r\nlocation: /v1/items/7\r\n\
            transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 42\r\nx-count: 1\r\n\r\n";
        let (response, lines, connections) = exchange_then_another(Method::POST, response).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let text = "x-empty:\r\nx-list: a\r\nx-list: b\r\nlocation: /v1/items/7\r\n";
        assert_eq!(
            lines,
            Lines {
                text: text.into(),
                declared: None,
                date: false
            }
        );
        assert_eq!(response.headers().len(), 4);
        assert_eq!(response.headers()["x-empty"], "");
        assert_eq!(
            response.headers().get_all("x-list").iter().collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(response.headers()["location"], "/v1/items/7");
        let (body, trailers) = response.body().as_ref().unwrap();
        assert_eq!(body, "abc");
        let trailers = trailers.as_ref().expect("trailers");
        assert_eq!(trailers.len(), 2);
        assert_eq!(trailers["x-checksum"], "42");
        assert_eq!(trailers["x-count"], "1");
        assert_eq!(connections, 1);
    }

    #[tokio::test]
    async fn hop_by_hop_headers_and_those_connection_names_are_left_out() {
        // The lines passed on keep their case and spacing; those after a cut move up.
        let response = b"HTTP/1.1 200 OK\r\nServer: script\r\nConnection: keep-alive, X-Private\r\n\
            Keep-Alive: timeout=5\r\nX-PRIVATE: 1\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\n\
            proxy-authenticate: Basic\r\nUpgrade: h2c\r\ntrailer: x-sum\r\nX-Public:  2 \r\n\
            Content-Length: 2\r\nTE: trailers\r\n\r\nok";
        let (response, lines, connections) = exchange_then_another(Method::GET, response).await;
        assert_eq!(
            lines,
            Lines {
                text: "Server: script\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\ntrailer: x-sum\r\nX-Public:  2 \r\n"
                    .into(),
                declared: None,
                date: true
            }
        );
        let mut names: Vec<_> = response.headers().keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["date", "server", "trailer", "x-public"]);
        assert_eq!(response.headers()["x-public"], "2");
        assert_eq!(response.body().as_ref().unwrap().0, "ok");
        assert_eq!(connections, 1, "keep-alive, and `close` is not among the names");
    }

    #[tokio::test]
    async fn no_framing_line_is_passed_on_and_a_date_only_if_one_survives() {
        // (response, lines passed on, a Date among them)
        let cases: [(&[u8], &str, bool); 5] = [
            (
                b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\nx-a: 1\r\n\r\nhello",
                "x-a: 1\r\n",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: Date\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\nContent-Length: 5\r\n\r\nhello",
                "",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\nContent-Length: 5\r\n\r\nhello",
                "Date: Mon, 23 Nov 2026 10:00:00 GMT\r\n",
                true,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", "", false),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "",
                false,
            ),
        ];
        for (response, text, date) in cases {
            let what = String::from_utf8_lossy(response).into_owned();
            let upstream = Script::start(vec![response.to_vec()], false).await;
            let mut body = send(&pool(), Method::GET, &upstream.uri("/"), &HeaderMap::new(), b"")
                .await
                .unwrap()
                .into_body();
            let lines = body.take_header_lines().unwrap();
            assert_eq!(std::str::from_utf8(lines.as_bytes()).unwrap(), text, "{what}");
            assert_eq!((lines.date, lines.declared), (date, None), "{what}");
            let chunked = what.contains("chunked");
            assert_eq!(body.size_hint().exact(), (!chunked).then_some(5), "{what}");
            assert_eq!(read_body(body).await.unwrap().0, "hello", "{what}");
        }
    }

    #[tokio::test]
    async fn header_lines_that_end_in_a_bare_line_feed_are_passed_on_ending_in_crlf() {
        let response = b"HTTP/1.1 200 OK\nServer: script\nconnection: keep-alive\r\nx-a: 1\n\
            content-length: 2\n\nok";
        let (response, lines, connections) = exchange_then_another(Method::GET, response).await;
        assert_eq!(
            lines,
            Lines {
                text: "Server: script\r\nx-a: 1\r\n".into(),
                declared: None,
                date: false
            }
        );
        assert_eq!(response.headers()["x-a"], "1");
        assert_eq!(response.body().as_ref().unwrap().0, "ok");
        assert_eq!(connections, 1);
    }

    #[tokio::test]
    async fn a_body_up_to_the_end_of_the_connection_is_read_to_its_end() {
        let mut response = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        response.extend(std::iter::repeat_n(b'x', 100_000));
        let upstream = Script::start(vec![response], true).await;
        let answer = send(&pool(), Method::GET, &upstream.uri("/"), &HeaderMap::new(), b"")
            .await
            .unwrap();
        assert_eq!(answer.body().size_hint().exact(), None);
        let (body, _) = read_body(answer.into_body()).await.unwrap();
        assert_eq!(body.len(), 100_000);
        assert!(body.iter().all(|&byte| byte == b'x'));
    }

    #[tokio::test]
    async fn malformed_responses_are_errors_that_say_what_was_wrong() {
        let many_headers = format!("HTTP/1.1 200 OK\r\n{}\r\n", "x-h: 1\r\n".repeat(MAX_HEADERS + 1));
        let long_head = format!("HTTP/1.1 200 OK\r\nx-long: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let head_errors: [(&[u8], &str); 6] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                "invalid Content-Length",
            ),
            (b"HTTP/1.1 2OO OK\r\n\r\n", "malformed response head"),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
                "switched protocols",
            ),
            (many_headers.as_bytes(), "more than 100 headers"),
            (long_head.as_bytes(), "longer than 64 KiB"),
        ];
        for (response, expected) in head_errors {
            let upstream = Script::start(vec![response.to_vec()], false).await;
            let Err(err) = send(&pool(), Method::GET, &upstream.uri("/"), &HeaderMap::new(), b"").await else {
                panic!("accepted: {}", String::from_utf8_lossy(&response[..40]))
            };
            assert!(err.to_string().contains(expected), "{err} (expected {expected})");
        }
        let body_errors: [(&[u8], &str); 4] = [
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "malformed chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokX\r\n",
                "does not end with CRLF",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
                "closed the connection within the body",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
                "closed the connection within the body",
            ),
        ];
        for (response, expected) in body_errors {
            let upstream = Script::start(vec![response.to_vec()], true).await;
            let answer = send(&pool(), Method::GET, &upstream.uri("/"), &HeaderMap::new(), b"")
                .await
                .unwrap();
            let err = read_body(answer.into_body()).await.unwrap_err();
            assert!(err.to_string().contains(expected), "{err} (expected {expected})");
        }
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello".to_vec();
        let upstream = Script::start(vec![response, b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()], false).await;
        let pool = pool();
        let mut body = send(&pool, Method::GET, &upstream.uri("/"), &HeaderMap::new(), b"")
            .await
            .unwrap()
            .into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "hello");
        drop(body);
        let second = send(&pool, Method::GET, &upstream.uri("/"), &HeaderMap::new(), b"")
            .await
            .unwrap();
        assert_eq!(second.status(), StatusCode::NO_CONTENT);
        assert_eq!(upstream.connections(), 2, "the half-read connection was not reused");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        // The upstream closes each connection after answering, without saying so.
        let upstream = Script::start(vec![ok; 3], true).await;
        let pool = pool();
        for method in [Method::GET, Method::POST, Method::GET] {
            let response = send(&pool, method.clone(), &upstream.uri("/"), &HeaderMap::new(), b"")
                .await
                .unwrap_or_else(|err| panic!("{method}: {err}"));
            assert_eq!(read_body(response.into_body()).await.unwrap().0, "ok");
        }
        assert_eq!(upstream.connections(), 3);
        assert_eq!(upstream.requests().len(), 3, "each request sent once");
    }

    #[tokio::test]
    async fn a_connection_back_from_a_whole_response_is_checked_without_a_read() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        let upstream = Script::start(vec![ok], false).await;
        let pool = pool();
        let response = send(&pool, Method::GET, &upstream.uri("/"), &HeaderMap::new(), b"")
            .await
            .unwrap();
        assert_eq!(read_body(response.into_body()).await.unwrap().0, "ok");
        let authority: Authority = upstream.addr.to_string().parse().unwrap();
        let host = Arc::clone(pool.lock().get(&Key(authority)).expect("a known host"));
        let idle = host.lock();
        let connection = &idle.first().expect("back in the pool").connection;
        // The last read was shorter than the room given, so the runtime no longer holds the
        // socket readable: the check before the next request needs no system call.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(connection.stream.tcp().poll_read_ready(&mut cx).is_pending());
    }

    async fn idle_connection(listener: &TcpListener, authority: &Authority) -> (Box<Connection>, TcpStream) {
        let connection = pool().connect(authority).await.unwrap().expect("plain HTTP/1.1");
        let (server_side, _) = listener.accept().await.unwrap();
        (connection, server_side)
    }

    /// The pool closed the connection whose server side is `server_side`: a read there ends
    /// (0 bytes) within 5 s.
    async fn assert_closed(server_side: &mut TcpStream, what: &str) {
        let mut buf = [0_u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), server_side.read(&mut buf)).await;
        assert_eq!(read.expect(what).unwrap(), 0, "{what}");
    }

    #[tokio::test]
    async fn an_idle_connection_is_usable_until_the_upstream_closes_it_or_speaks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let (mut connection, server_side) = idle_connection(&listener, &authority).await;
        assert!(connection.is_usable());
        drop(server_side);
        let mut closed = false;
        for _ in 0..1000 {
            tokio::task::yield_now().await;
            if !connection.is_usable() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(closed, "the close was noticed");

        let (mut connection, mut server_side) = idle_connection(&listener, &authority).await;
        server_side
            .write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .await
            .unwrap();
        let mut spoke = false;
        for _ in 0..1000 {
            if !connection.is_usable() {
                spoke = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(spoke, "unasked bytes make it unusable");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_reused_within_the_idle_timeout_and_closed_after_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let pool = pool();
        assert!(pool.host(&authority).checkout().is_none());

        let (first, mut first_server_side) = idle_connection(&listener, &authority).await;
        pool.put(&pool.host(&authority), first);
        tokio::time::advance(Duration::from_secs(89)).await;
        let first = pool
            .host(&authority)
            .checkout()
            .expect("idle for less than the timeout");
        assert!(pool.host(&authority).checkout().is_none(), "one connection, taken");
        pool.put(&pool.host(&authority), first);

        tokio::time::advance(POOL_IDLE_TIMEOUT + Duration::from_secs(1)).await;
        // Putting another connection back sweeps the expired one, which then closes.
        let (second, _second_server_side) = idle_connection(&listener, &authority).await;
        pool.put(&pool.host(&authority), second);
        assert_closed(&mut first_server_side, "the expired connection closed").await;
        let second = pool.host(&authority).checkout().expect("the fresh connection");
        assert!(pool.host(&authority).checkout().is_none(), "the expired one is gone");

        pool.put(&pool.host(&authority), second);
        tokio::time::advance(POOL_IDLE_TIMEOUT + Duration::from_secs(1)).await;
        assert!(pool.host(&authority).checkout().is_none(), "idle past the timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn hosts_no_longer_used_have_their_idle_connections_closed_when_another_comes_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let [old, held]: [Authority; 2] =
            ["127.0.0.1", "localhost"].map(|host| format!("{host}:{port}").parse().unwrap());
        let busy: Authority = other_listener.local_addr().unwrap().to_string().parse().unwrap();
        let pool = pool();
        let (connection, mut old_server_side) = idle_connection(&listener, &old).await;
        pool.put(&pool.host(&old), connection);
        // A request to `held` is under way: its host has no idle connection yet.
        let held_host = pool.host(&held);

        tokio::time::advance(POOL_IDLE_TIMEOUT + Duration::from_secs(1)).await;
        let (connection, _busy_server_side) = idle_connection(&other_listener, &busy).await;
        pool.put(&pool.host(&busy), connection);
        assert_closed(&mut old_server_side, "the old host's connection closed").await;
        let hosts = pool.lock();
        assert!(!hosts.contains_key(&Key(old)), "the old host is gone");
        assert!(hosts.contains_key(&Key(held)), "a host a request holds stays");
        assert!(hosts.contains_key(&Key(busy)));
        drop(hosts);
        drop(held_host);
    }

    #[tokio::test(start_paused = true)]
    async fn other_hosts_are_swept_at_most_once_a_second() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let [old, busy]: [Authority; 2] =
            ["127.0.0.1", "localhost"].map(|host| format!("{host}:{port}").parse().unwrap());
        let pool = pool();
        let (connection, _busy_server_side) = idle_connection(&listener, &busy).await;
        pool.put(&pool.host(&busy), connection);
        let (connection, _old_server_side) = idle_connection(&listener, &old).await;
        pool.put(&pool.host(&old), connection);
        tokio::time::advance(Duration::from_secs(89) + Duration::from_millis(500)).await;
        let connection = pool.host(&busy).checkout().expect("still idle");
        pool.put(&pool.host(&busy), connection);
        tokio::time::advance(Duration::from_millis(600)).await;
        // The old host's connection has expired, but the last sweep was 600 ms ago.
        let connection = pool.host(&busy).checkout().expect("put back 600 ms ago");
        pool.put(&pool.host(&busy), connection);
        assert_eq!(
            pool.lock().get(&Key(old.clone())).unwrap().lock().len(),
            1,
            "not swept yet"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        let connection = pool.host(&busy).checkout().expect("put back 500 ms ago");
        pool.put(&pool.host(&busy), connection);
        assert!(
            !pool.lock().contains_key(&Key(old)),
            "swept a second after the last sweep"
        );
    }

    #[test]
    fn the_host_header_has_no_user_info_and_no_port_80() {
        for (authority, host) in [
            ("api.test", "api.test"),
            ("api.test:80", "api.test"),
            ("api.test:8080", "api.test:8080"),
            ("u:p@api.test:8080", "api.test:8080"),
            ("u@api.test", "api.test"),
            ("[::1]:9000", "[::1]:9000"),
            ("[::1]:80", "[::1]"),
            ("api.test:080", "api.test"),
            ("api.test:9080", "api.test:9080"),
            ("[::80]", "[::80]"),
        ] {
            assert_eq!(host_header(&authority.parse().unwrap(), false), host, "{authority}");
        }
        // Over TLS the default port is 443, and 80 is kept.
        for (authority, host) in [
            ("api.test:443", "api.test"),
            ("api.test:80", "api.test:80"),
            ("u@api.test:443", "api.test"),
            ("[::1]:0443", "[::1]"),
            ("api.test:8443", "api.test:8443"),
        ] {
            assert_eq!(host_header(&authority.parse().unwrap(), true), host, "{authority}");
        }
    }

    #[tokio::test]
    async fn a_connection_is_found_under_its_authority_in_any_case() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let lower: Authority = format!("localhost:{port}").parse().unwrap();
        let upper: Authority = format!("LocalHost:{port}").parse().unwrap();
        let pool = pool();
        let (connection, _server_side) = idle_connection(&listener, &lower).await;
        pool.put(&pool.host(&upper), connection);
        assert!(
            pool.host(&lower).checkout().is_some(),
            "put as LocalHost, found as localhost"
        );
        let other: Authority = format!("127.0.0.1:{port}").parse().unwrap();
        let (connection, _server_side) = idle_connection(&listener, &other).await;
        pool.put(&pool.host(&other), connection);
        assert!(
            pool.host(&lower).checkout().is_none(),
            "another authority's connection is not taken"
        );
    }

    #[tokio::test]
    async fn the_host_a_thread_used_last_is_found_again_only_in_its_own_pool() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let a: Authority = format!("127.0.0.1:{port}").parse().unwrap();
        let b: Authority = format!("localhost:{port}").parse().unwrap();
        let (first, second) = (pool(), pool());
        let (connection, _server_side) = idle_connection(&listener, &a).await;
        first.put(&first.host(&a), connection);
        assert!(
            second.host(&a).checkout().is_none(),
            "another pool's connection is not taken"
        );
        let (connection, _server_side) = idle_connection(&listener, &b).await;
        first.put(&first.host(&b), connection);
        assert!(Arc::ptr_eq(&first.host(&b), &first.host(&b)));
        assert!(!Arc::ptr_eq(&first.host(&a), &first.host(&b)));
        assert!(first.host(&a).checkout().is_some(), "a's connection, under a");
        assert!(first.host(&b).checkout().is_some(), "b's connection, under b");
        assert!(first.host(&a).checkout().is_none());
    }

    /// An HTTPS upstream for `localhost` choosing among `alpn`: answers each request head
    /// with `ok`; if `close_after_one`, closes the connection after the first answer (with
    /// `close_notify`) when told to by `close`, and says when it has on `closed`. Its client
    /// configuration trusts only its certificate.
    struct TlsScript {
        addr: SocketAddr,
        heads: Arc<Mutex<Vec<String>>>,
        connections: Arc<AtomicUsize>,
        close: Arc<tokio::sync::Notify>,
        closed: Arc<tokio::sync::Notify>,
        client: rustls::ClientConfig,
    }

    impl TlsScript {
        async fn start(alpn: &[&[u8]], close_after_one: bool) -> Self {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let der = rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
            let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], der.into())
                .unwrap();
            server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert.der().clone()).unwrap();
            let client = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            let heads = Arc::new(Mutex::new(Vec::new()));
            let connections = Arc::new(AtomicUsize::new(0));
            let (close, closed) = (
                Arc::new(tokio::sync::Notify::new()),
                Arc::new(tokio::sync::Notify::new()),
            );
            let (seen, count) = (Arc::clone(&heads), Arc::clone(&connections));
            let (told, done) = (Arc::clone(&close), Arc::clone(&closed));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let (seen, acceptor) = (Arc::clone(&seen), acceptor.clone());
                    let (told, done) = (Arc::clone(&told), Arc::clone(&done));
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let mut buf = Vec::new();
                        loop {
                            let mut chunk = [0_u8; 1024];
                            match tokio::time::timeout(LIMIT, tls.read(&mut chunk)).await {
                                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                _ => return,
                            }
                            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head: Vec<u8> = buf.drain(..end + 4).collect();
                                seen.lock().unwrap().push(String::from_utf8(head).unwrap());
                                tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                    .await
                                    .unwrap();
                                if close_after_one {
                                    told.notified().await;
                                    let _ = tls.shutdown().await;
                                    done.notify_one();
                                    return;
                                }
                            }
                        }
                    });
                }
            });
            Self {
                addr,
                heads,
                connections,
                close,
                closed,
                client,
            }
        }

        fn pool(&self) -> Arc<Pool> {
            Arc::new(Pool::with_tls(Duration::from_secs(5), self.client.clone()))
        }

        fn uri(&self, path: &str) -> http::Uri {
            format!("https://localhost:{}{path}", self.addr.port()).parse().unwrap()
        }

        fn authority(&self) -> Authority {
            format!("localhost:{}", self.addr.port()).parse().unwrap()
        }
    }

    #[tokio::test]
    async fn https_requests_share_one_verified_tls_connection() {
        let upstream = TlsScript::start(&[b"http/1.1"], false).await;
        let pool = upstream.pool();
        for path in ["/a", "/b?x=1", "/c"] {
            let response = send(&pool, Method::GET, &upstream.uri(path), &HeaderMap::new(), b"")
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(read_body(response.into_body()).await.unwrap().0, "ok");
            // Back in the pool, and the runtime no longer holds its socket readable: the
            // check before the next request needs no system call, over TLS as in clear.
            let host = pool.host(&upstream.authority());
            let idle = host.lock();
            let mut cx = Context::from_waker(Waker::noop());
            let connection = &idle.last().expect("back in the pool").connection;
            assert!(connection.stream.tcp().poll_read_ready(&mut cx).is_pending());
        }
        let host = format!("localhost:{}", upstream.addr.port());
        assert_eq!(
            *upstream.heads.lock().unwrap(),
            ["/a", "/b?x=1", "/c"].map(|path| format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n"))
        );
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_https_upstream_whose_certificate_does_not_verify_is_an_error() {
        let upstream = TlsScript::start(&[b"http/1.1"], false).await;
        let stranger = TlsScript::start(&[b"http/1.1"], false).await;
        let Err(err) = send(
            &stranger.pool(),
            Method::GET,
            &upstream.uri("/"),
            &HeaderMap::new(),
            b"",
        )
        .await
        else {
            panic!("a certificate from another issuer was accepted");
        };
        assert!(err.to_string().contains("invalid peer certificate"), "{err}");
        assert!(upstream.heads.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_upstream_that_chooses_h2_is_handed_back_unsent_and_remembered() {
        let upstream = TlsScript::start(&[b"h2"], false).await;
        let pool = upstream.pool();
        for _ in 0..3 {
            let sent = pool
                .send(&Method::GET, &upstream.uri("/"), None, &HeaderMap::new(), b"")
                .await
                .unwrap();
            assert!(matches!(sent, Sent::Http2));
        }
        // One handshake found it out; the next requests did not connect again.
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
        assert!(upstream.heads.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_idle_tls_connection_the_upstream_closed_is_not_taken() {
        let upstream = TlsScript::start(&[b"http/1.1"], true).await;
        let pool = upstream.pool();
        let response = send(&pool, Method::GET, &upstream.uri("/"), &HeaderMap::new(), b"")
            .await
            .unwrap();
        assert_eq!(read_body(response.into_body()).await.unwrap().0, "ok");
        // Closed only once the connection is back in the pool, idle.
        let closed = upstream.closed.notified();
        upstream.close.notify_one();
        tokio::time::timeout(LIMIT, closed).await.expect("the upstream closes");
        let host = pool.host(&upstream.authority());
        // The close_notify arrives while the connection is idle: unusable as soon as seen.
        let deadline = Instant::now() + LIMIT;
        while host.lock().last_mut().expect("back in the pool").connection.is_usable() {
            assert!(Instant::now() < deadline, "a closed TLS connection still looks usable");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let response = send(&pool, Method::POST, &upstream.uri("/again"), &HeaderMap::new(), b"")
            .await
            .unwrap();
        assert_eq!(read_body(response.into_body()).await.unwrap().0, "ok");
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    }
}
