//! bearerd's HTTP/1.1 server loop: one app connection, served by a [`Service`].
//!
//! The common request — a well-formed HTTP/1.1 head with no body, or with a small
//! `Content-Length` body that arrived with it — is parsed with httparse, answered by the
//! service in this task, and its response written back with the head and the body parts at
//! hand in one write. Requests on a keep-alive connection are read one after another
//! (pipelined ones from the buffer); between them the connection holds no buffers.
//!
//! Everything else is handed to the service's [`Service::hand_off`] (hyper), with the bytes
//! already read put back in front: HTTP/2 (h2c prior knowledge), HTTP/1.0, `CONNECT`,
//! `Upgrade`, `Expect`, `Transfer-Encoding`, a body that is larger or not all here yet, a
//! repeated `Content-Length`, more than 100 header lines, or a head larger than 64 KiB. The
//! edges of HTTP/1.1 — streaming bodies, tunnels and upgrades — keep hyper's handling; this
//! loop takes only the requests it can serve whole. A head that is not HTTP/1 at all (bare
//! CR, a space before a colon, obs-fold, NUL) is answered 400 at once, and the connection
//! closed.
//!
//! Like hyper's: a connection may take [`HEADER_READ_TIMEOUT`] to send a head (also while
//! idle between requests); a request whose app closes the connection before its response is
//! cancelled; on shutdown an idle connection closes at once and a busy one after its
//! response, which says `Connection: close`.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Version};
use http_body::{Body, Frame};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::client::HeaderLines;
use super::lines::RequestLines;
use super::target::LastOrigin;
use super::timer::{self, Timer};
use super::{
    DATE, Framing, Head, MAX_HEAD, MAX_HEADERS, READ_SIZE, bodiless, declared_length, declares_length, has_token,
    header_line, trailer_allowed,
};
use crate::BoxError;

/// How long a connection may take to send a request head, also while idle between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request body served here; it must have arrived with the head.
const MAX_BODY: usize = 64 * 1024;
/// A data frame at least this large is written from its own buffer, not copied behind the head.
const COPY_LIMIT: usize = 8 * 1024;

/// What the loop serves requests with: to this layer, the proxy is one of these.
pub trait Service: Send + Sync + 'static {
    /// The body of its responses.
    type Body: Body<Data = Bytes, Error = BoxError> + TakeLines + Send + Unpin;

    /// Answers one request. Its header lines are in `lines` (its header map is empty, and
    /// what the service adds goes beside the lines); the connection's `timer` is lent for the
    /// request's deadlines. `local` is the listener socket it came in on.
    fn call<'a>(
        &'a self,
        request: Request<Full<Bytes>>,
        lines: &'a mut RequestLines,
        timer: &'a mut Timer,
        local: Option<SocketAddr>,
    ) -> impl Future<Output = Response<Self::Body>> + Send + 'a;

    /// The answer to a request refused before it reached [`Service::call`] (a 400): `why`
    /// says what was wrong with it.
    fn refuse(&self, why: String) -> Response<Self::Body>;

    /// Serves the rest of a connection this loop does not serve.
    fn hand_off(
        self: Arc<Self>,
        io: Rewound,
        local: Option<SocketAddr>,
        peer: SocketAddr,
        watcher: Watcher,
    ) -> impl Future<Output = ()> + Send;
}

/// A response body that may carry the upstream's header lines as bytes, not in the
/// response's header map.
pub trait TakeLines {
    /// The header lines, when the body has them and they were not taken yet.
    fn take_header_lines(&mut self) -> Option<HeaderLines>;
}

/// Serves `stream` until the app closes it, the connection times out or breaks, or shutdown
/// (`stop`) finds it idle; hands it to the service for what this loop does not serve.
/// `watcher` is held until the connection ends, so a graceful shutdown waits for it, and so
/// is `guard` (the caller's count of open connections, say): passed in rather than held by a
/// future wrapped around this one, which would be polled at every wake-up too.
pub async fn serve<S: Service, G: Send + 'static>(
    service: Arc<S>,
    stream: TcpStream,
    local: Option<SocketAddr>,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    watcher: Watcher,
    guard: G,
) {
    let _guard = guard;
    let mut conn = Conn::new(stream);
    // One timer for the connection (see `timer`): armed for the first head, lent to each
    // request for its upstream's deadline, and moved on only when it fires early.
    let mut timer = Timer::new(HEADER_READ_TIMEOUT);
    let mut shutdown = Shutdown::new(stop);
    loop {
        let waiting_since = Instant::now();
        let head = loop {
            if !conn.nothing_read() {
                match conn.parse() {
                    Parsed::Serve(head) => break head,
                    Parsed::Partial if conn.buffers().buf.len() < MAX_HEAD => {}
                    Parsed::Partial | Parsed::HandOff => {
                        return hand_off(service, conn, local, peer, watcher).await;
                    }
                    Parsed::Malformed(why) => {
                        let refused = service.refuse(format!("malformed request head: {why}"));
                        let _ = conn.write(refused, &Method::GET, false, false).await;
                        return conn.close().await;
                    }
                }
            } else if shutdown.started() {
                return conn.close().await;
            }
            let idle = conn.nothing_read();
            if idle {
                // Nothing is held for a request that may never come.
                conn.park();
            } else {
                make_room(&mut conn.buffers().buf, READ_SIZE / 8);
            }
            tokio::select! {
                biased;
                read = conn.read() => match read {
                    Ok(Some(0)) => return,
                    Ok(_) => {}
                    Err(err) => {
                        tracing::debug!(%peer, "connection ended: {err}");
                        return;
                    }
                },
                () = timer.until(waiting_since + HEADER_READ_TIMEOUT) => {
                    tracing::debug!(%peer, "connection ended: no request head within {HEADER_READ_TIMEOUT:?}");
                    return conn.close().await;
                }
                () = shutdown.wait(), if idle => return conn.close().await,
            }
        };
        let (method, keep_alive, trailers) = (head.method.clone(), head.head.keep_alive, head.trailers);
        let request = match conn.request(head) {
            Ok(request) => request,
            Err(why) => {
                // Well-formed for httparse, not for `http` (a URI it rejects, say).
                let _ = conn.write(service.refuse(why.into()), &method, false, false).await;
                return conn.close().await;
            }
        };
        let response = {
            let Conn { stream, held, .. } = &mut conn;
            let Buffers { buf, lines, .. } = unpark(held);
            // On the heap for the request's life: a request's state is most of what a
            // connection would otherwise hold in its task while idle, for good.
            let mut handling = Box::pin(service.call(request, lines, &mut timer, local));
            tokio::select! {
                biased;
                response = handling.as_mut() => response,
                () = peer_gone(stream, buf) => {
                    tracing::debug!(%peer, "the app closed the connection before the response");
                    return;
                }
            }
        };
        conn.buffers().lines.clear();
        let keep_alive = keep_alive && !shutdown.started() && !says_close(response.headers());
        match conn.write(response, &method, keep_alive, trailers).await {
            Ok(true) if keep_alive => {}
            Ok(_) => return conn.close().await,
            Err(err) => {
                tracing::debug!(%peer, "connection ended: {err}");
                return;
            }
        }
    }
}

/// Gives the connection, with what was read and not yet served, to the service.
async fn hand_off<S: Service>(
    service: Arc<S>,
    conn: Conn,
    local: Option<SocketAddr>,
    peer: SocketAddr,
    watcher: Watcher,
) {
    let io = Rewound {
        read: conn.held.map_or_else(Bytes::new, |held| held.buf.freeze()),
        stream: TokioIo::new(conn.stream),
    };
    // Boxed: hyper's connection is large, and a future is as large as its largest path, so
    // inline it would make every connection's task that large, idle ones included.
    Box::pin(service.hand_off(io, local, peer, watcher)).await;
}

struct Conn {
    stream: TcpStream,
    /// The connection's buffers; none while it is idle (parked), when they are given back
    /// to the thread's [`SPARES`].
    held: Option<Box<Buffers>>,
    origin: LastOrigin,
}

/// A busy connection's buffers. An idle keep-alive connection holds none for a request
/// that may never come, and a busy one takes a set back without allocating; boxed, so
/// parking and taking them back moves a pointer, not the set.
struct Buffers {
    /// Read and not yet served.
    buf: BytesMut,
    /// A response head (and the body parts at hand) on its way out.
    out: Vec<u8>,
    /// The request's header lines, passed upstream as the app wrote them; kept between
    /// requests for their allocation.
    lines: RequestLines,
}

/// The most spare buffer sets a thread keeps; more are freed.
const MAX_SPARES: usize = 64;

thread_local! {
    // Boxes in the list on purpose: a connection takes the box and gives it back, moving a
    // pointer rather than the set.
    #[allow(clippy::vec_box)]
    static SPARES: RefCell<Vec<Box<Buffers>>> = const { RefCell::new(Vec::new()) };
}

/// What parsing the buffer found.
enum Parsed {
    Serve(RequestHead),
    /// A head not complete yet.
    Partial,
    /// A request for hyper (see the module docs).
    HandOff,
    /// Not an HTTP/1 request head: answered 400 at once, and the connection closed.
    Malformed(httparse::Error),
}

/// A request head this loop serves, found at the start of the buffer. Its body is framed by
/// its length (or it has none) and came with the head.
struct RequestHead {
    head: Head,
    method: Method,
    target: Range<usize>,
    /// `TE: trailers`: the app takes trailers on a chunked response.
    trailers: bool,
}

impl RequestHead {
    /// The body's length: it is in the buffer, right after the head.
    fn body_len(&self) -> usize {
        match self.head.framing {
            Framing::Length(length) => usize::try_from(length).unwrap_or(usize::MAX),
            _ => 0,
        }
    }
}

impl Conn {
    /// A new connection, parked: it takes buffers once the app sends something.
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            held: None,
            origin: LastOrigin::default(),
        }
    }

    /// Nothing read is waiting to be served.
    fn nothing_read(&self) -> bool {
        self.held.as_ref().is_none_or(|held| held.buf.is_empty())
    }

    /// Gives the (empty) buffers back to the thread's spares.
    fn park(&mut self) {
        let Some(mut held) = self.held.take() else {
            return;
        };
        held.out.clear();
        // `lines` was cleared when its request was answered.
        SPARES.with_borrow_mut(|spares| {
            if spares.len() < MAX_SPARES {
                spares.push(held);
            }
        });
    }

    /// The connection's buffers, taken back if it was parked.
    fn buffers(&mut self) -> &mut Buffers {
        unpark(&mut self.held)
    }

    /// Reads what the app sent into `buf`: `Some(0)` at its end, `None` if a parked
    /// connection's wake-up found nothing after all. A parked connection waits for the
    /// socket to be readable before it takes buffers to read into.
    async fn read(&mut self) -> io::Result<Option<usize>> {
        if let Some(held) = &mut self.held {
            return self.stream.read_buf(&mut held.buf).await.map(Some);
        }
        // Waits in the socket's own read-readiness slot, the one `poll_read` uses
        // (`readable()` puts a waiter on the socket's list under a lock and takes it off
        // again, at each idle wait). Once woken it reads at once: a wake-up that finds nothing
        // is rare (the head timer, shutdown), and then the connection parks again.
        let mut woken = false;
        std::future::poll_fn(|cx| {
            if !woken {
                woken = true;
                if let Err(err) = std::task::ready!(self.stream.poll_read_ready(cx)) {
                    return Poll::Ready(Err(err));
                }
            }
            let held = unpark(&mut self.held);
            // Through `AsyncRead`, which clears the socket's readiness after a short read, so
            // the next idle wait does not wake at once only to find nothing.
            Poll::Ready(
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut held.buf) {
                    Poll::Ready(read) => read.map(Some),
                    Poll::Pending => Ok(None),
                },
            )
        })
        .await
    }

    fn parse(&mut self) -> Parsed {
        let held = self.buffers();
        parse(&held.buf, &mut held.lines)
    }

    /// The request `head` describes, taken off the buffer with its body. Its header lines
    /// are in `self.lines`; its header map is empty.
    fn request(&mut self, head: RequestHead) -> Result<Request<Full<Bytes>>, &'static str> {
        let buffers = unpark(&mut self.held);
        let bytes = buffers.buf.split_to(head.head.len).freeze();
        let body = buffers.buf.split_to(head.body_len()).freeze();
        let uri = self
            .origin
            .parse(bytes.slice(head.target))
            .map_err(|_| "the request has an invalid target")?;
        buffers.lines.set_head(bytes);
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = head.method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        Ok(request)
    }

    /// Writes `response` to a `method` request. Returns whether the connection can carry
    /// another request (the body was written whole and framed by its length or chunks).
    async fn write<B>(
        &mut self,
        response: Response<B>,
        method: &Method,
        keep_alive: bool,
        trailers: bool,
    ) -> io::Result<bool>
    where
        B: Body<Data = Bytes, Error = BoxError> + TakeLines + Unpin,
    {
        let (parts, mut body) = response.into_parts();
        let Self { stream, held, .. } = self;
        let out = &mut unpark(held).out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(parts.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(parts.status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
        // An upstream's lines as it wrote them, less those that frame the message (bearerd's
        // client cut them out), or the map's; this side's framing is written below, from
        // what the body will deliver, never from a peer's lines. The lines are dropped once
        // copied: they share the upstream connection's read buffer, which takes its memory
        // back without a copy only when nothing else holds it.
        let mut declared = None;
        let mut dated = false;
        if let Some(lines) = body.take_header_lines() {
            out.extend_from_slice(lines.as_bytes());
            declared = lines.declared;
            dated = lines.date;
        }
        // bearerd's client leaves the map empty: no name is hashed for nothing.
        if !parts.headers.is_empty() {
            let mut lengths = parts.headers.get_all(header::CONTENT_LENGTH).iter().peekable();
            if lengths.peek().is_some() {
                declared = declared_length(lengths.map(HeaderValue::as_bytes)).ok().flatten();
            }
            for (name, value) in &parts.headers {
                if name == header::CONNECTION || name == header::TRANSFER_ENCODING || name == header::CONTENT_LENGTH {
                    continue;
                }
                dated |= name == header::DATE;
                header_line(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        let mut framing = if bodiless(method, parts.status) {
            if let Some(declared) = declared.filter(|_| declares_length(method, parts.status)) {
                header_line(out, b"content-length", itoa::Buffer::new().format(declared).as_bytes());
            }
            Framing::Empty
        } else if let Some(length) = body.size_hint().exact() {
            header_line(out, b"content-length", itoa::Buffer::new().format(length).as_bytes());
            Framing::Length(length)
        } else {
            header_line(out, b"transfer-encoding", b"chunked");
            Framing::Chunked
        };
        if !dated {
            DATE.with_borrow_mut(|date| header_line(out, b"date", date.now()));
        }
        if !keep_alive {
            header_line(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        if framing == Framing::Empty {
            stream.write_all(out).await?;
            return Ok(true);
        }
        let mut body = Pin::new(&mut body);
        loop {
            let frame = match std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Nothing more at hand: send what is, then wait for the body.
                    stream.write_all(out).await?;
                    out.clear();
                    std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                }
            };
            match frame {
                None => break,
                Some(Err(err)) => {
                    // Part of the response is out: the app can only see it end early.
                    tracing::debug!("the response body failed: {err}");
                    stream.write_all(out).await?;
                    return Ok(false);
                }
                Some(Ok(frame)) => write_frame(stream, out, frame, &mut framing, trailers).await?,
            }
        }
        let whole = match framing {
            Framing::Length(left) => left == 0,
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n\r\n");
                true
            }
            // The writer never frames a response by the connection's end.
            Framing::Empty | Framing::UntilClose => true,
        };
        if !out.is_empty() {
            stream.write_all(out).await?;
        }
        Ok(whole)
    }

    /// Ends the connection: no more from this side, then closed.
    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

/// Finds the request head at the start of `buf`, noting its header lines in `lines`, and
/// decides whether this loop serves it.
fn parse(buf: &[u8], lines: &mut RequestLines) -> Parsed {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Another version (HTTP/2's preface), or more headers than served here: hyper's.
        Err(httparse::Error::Version | httparse::Error::TooManyHeaders) => return Parsed::HandOff,
        Err(err) => return Parsed::Malformed(err),
    };
    let (Some(method), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Parsed::HandOff;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::HandOff;
    };
    if method == Method::CONNECT {
        return Parsed::HandOff;
    }
    let found = lines.read(buf, parsed.headers);
    if found.hand_off {
        return Parsed::HandOff;
    }
    let start = target.as_ptr().addr() - buf.as_ptr().addr();
    let body = match found.content_length {
        None => 0,
        Some(length) if length <= MAX_BODY && len + length <= buf.len() => length,
        Some(_) => return Parsed::HandOff,
    };
    Parsed::Serve(RequestHead {
        head: Head {
            len,
            framing: if body == 0 {
                Framing::Empty
            } else {
                Framing::Length(body as u64)
            },
            keep_alive: !found.close,
        },
        method,
        target: start..start + target.len(),
        trailers: found.trailers,
    })
}

/// What the loop does with a request head that starts a connection's buffer: `parse`'s
/// decision, and for a head it serves, whether its target is a URI (as `Conn::request`
/// finds it). The public face of the loop's parsing, which the fuzz targets (`fuzz/`) and
/// the differential test against hyper's server (`tests/differential.rs`) drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Served here: the head's length, and the body's, which came with it.
    Serve { head: usize, body: usize },
    /// A head httparse takes, with a target `http` does not: answered 400.
    BadTarget,
    /// Not complete yet (the loop hands a head still partial at 64 KiB to hyper).
    Partial,
    /// Handed to hyper.
    HandOff,
    /// Not an HTTP/1 request head: answered 400.
    Malformed,
}

/// What the loop does with the request head at the start of `buf` (see [`Verdict`]).
#[must_use]
pub fn verdict(buf: &[u8]) -> Verdict {
    match parse(buf, &mut RequestLines::default()) {
        Parsed::Serve(head) => match LastOrigin::default().parse(Bytes::copy_from_slice(&buf[head.target.clone()])) {
            Ok(_) => Verdict::Serve {
                head: head.head.len,
                body: head.body_len(),
            },
            Err(_) => Verdict::BadTarget,
        },
        Parsed::Partial => Verdict::Partial,
        Parsed::HandOff => Verdict::HandOff,
        Parsed::Malformed(_) => Verdict::Malformed,
    }
}

/// Adds one body frame to what goes out in `out` (a large one is written to `stream` straight
/// away).
async fn write_frame(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    frame: Frame<Bytes>,
    framing: &mut Framing,
    trailers: bool,
) -> io::Result<()> {
    let mut data = match frame.into_data() {
        Ok(data) => data,
        Err(frame) => {
            if let (Ok(fields), Framing::Chunked, true) = (frame.into_trailers(), &framing, trailers) {
                out.extend_from_slice(b"0\r\n");
                for (name, value) in fields.iter().filter(|(name, _)| trailer_allowed(name)) {
                    header_line(out, name.as_str().as_bytes(), value.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                // Written whole: nothing more goes out.
                *framing = Framing::Empty;
            }
            return Ok(());
        }
    };
    match framing {
        Framing::Length(left) => {
            // Never more than the length said: the rest would be read as a response.
            data.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= data.len() as u64;
        }
        Framing::Chunked if !data.is_empty() => {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        Framing::Chunked | Framing::Empty | Framing::UntilClose => {}
    }
    let chunk = matches!(framing, Framing::Chunked) && !data.is_empty();
    if data.len() >= COPY_LIMIT {
        let mut parts = Buf::chain(&out[..], data);
        stream.write_all_buf(&mut parts).await?;
        out.clear();
    } else {
        out.extend_from_slice(&data);
    }
    if chunk {
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// The buffers in `held`, taken from the thread's spares (or new) if there are none.
fn unpark(held: &mut Option<Box<Buffers>>) -> &mut Buffers {
    held.get_or_insert_with(|| {
        let mut buffers = SPARES.with_borrow_mut(Vec::pop).unwrap_or_else(|| {
            Box::new(Buffers {
                buf: BytesMut::with_capacity(READ_SIZE),
                out: Vec::with_capacity(1024),
                lines: RequestLines::default(),
            })
        });
        make_room(&mut buffers.buf, READ_SIZE / 8);
        buffers
    })
}

/// Room to read into `buf`: grown by [`READ_SIZE`] only when less than `least` is left.
/// Growing while a request's head still holds the buffer's start moves the buffer to a new
/// allocation (and makes the next head's split allocate again); once the head is dropped, an
/// empty buffer takes its whole allocation back without copying. So between requests it is
/// grown when little is left (`READ_SIZE / 8`), and during one only when it is full (`1`).
fn make_room(buf: &mut BytesMut, least: usize) {
    if buf.capacity() - buf.len() < least {
        buf.reserve(READ_SIZE);
    }
}

/// Returns when the app closes the connection (or it breaks). Bytes it sends meanwhile
/// (pipelined requests) are kept in `buf`, up to one head's worth. The request's head still
/// holds the buffer's start: any room left is enough to see the app close.
async fn peer_gone(stream: &mut TcpStream, buf: &mut BytesMut) {
    loop {
        if buf.len() >= MAX_HEAD {
            return std::future::pending().await;
        }
        make_room(buf, 1);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Shutdown, waited for over a whole connection. A wait made for each head wait would
/// register a waiter with the watch and remove it again every request; this one stays
/// registered, and is polled again only when the watch has changed.
struct Shutdown {
    stop: watch::Receiver<bool>,
    /// Waits on a receiver of its own; `stop` only looks.
    waiting: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// `waiting` holds the task's waker.
    registered: bool,
}

impl Shutdown {
    fn new(stop: watch::Receiver<bool>) -> Self {
        let mut watching = stop.clone();
        Self {
            stop,
            waiting: Box::pin(async move {
                let _ = watching.wait_for(|stop| *stop).await;
            }),
            registered: false,
        }
    }

    fn started(&self) -> bool {
        *self.stop.borrow()
    }

    /// Returns once shutdown has started (or the server is gone). Not to be awaited again
    /// after it returned.
    fn wait(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            let changed = !matches!(self.stop.has_changed(), Ok(false));
            timer::poll_kept(self.waiting.as_mut(), &mut self.registered, changed, cx)
        })
    }
}

fn says_close(headers: &HeaderMap) -> bool {
    !headers.is_empty()
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|value| has_token(value.as_bytes(), b"close"))
}

/// A connection handed on: the bytes read and not served come first.
pub struct Rewound {
    read: Bytes,
    stream: TokioIo<TcpStream>,
}

impl hyper::rt::Read for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for Rewound {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http::StatusCode;
    use http::header::{HeaderName, HeaderValue};
    use tokio::net::TcpListener;

    use super::*;

    fn decide(text: &[u8]) -> Result<(usize, usize, bool, bool), &'static str> {
        match parse(text, &mut RequestLines::default()) {
            Parsed::Serve(head) => Ok((head.head.len, head.body_len(), head.head.keep_alive, head.trailers)),
            Parsed::Partial => Err("partial"),
            Parsed::HandOff => Err("hyper"),
            Parsed::Malformed(_) => Err("malformed"),
        }
    }

    #[test]
    fn only_whole_simple_http_1_1_requests_are_served_here() {
        let get = b"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n";
        assert_eq!(decide(get), Ok((get.len(), 0, true, false)));
        assert_eq!(decide(&get[..20]), Err("partial"));
        for (head, why) in [
            (&b"GET http://a.test/ HTTP/1.0\r\n\r\n"[..], "HTTP/1.0"),
            (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", "CONNECT"),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "h2c preface"),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "chunked",
            ),
            (
                b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                "upgrade",
            ),
            (
                b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
                "expect",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc",
                "a body not all here",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
                "a repeated length",
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na", "a signed length"),
            (b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", "a large body"),
        ] {
            assert_eq!(decide(head), Err("hyper"), "{why}");
        }
        for (head, why) in [
            (&b"GET /\x01 HTTP/1.1\r\n\r\n"[..], "a bad target"),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", "a bare CR ending the head"),
            (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", "a bare CR in a line"),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "space before the colon"),
            (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "obs-fold"),
            (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", "NUL in a value"),
        ] {
            assert_eq!(decide(head), Err("malformed"), "{why}");
        }
        let post =
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\nConnection: keep-alive, Close\r\nTE: trailers\r\n\r\nabcGET";
        assert_eq!(decide(post), Ok((post.len() - 6, 3, false, true)));
    }

    /// A body giving these frames, then its end.
    struct Frames(VecDeque<Frame<Bytes>>, Option<u64>);

    impl TakeLines for Frames {
        fn take_header_lines(&mut self) -> Option<HeaderLines> {
            None
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = crate::BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
        fn size_hint(&self) -> http_body::SizeHint {
            self.1
                .map_or_else(http_body::SizeHint::default, http_body::SizeHint::with_exact)
        }
    }

    /// What `Conn::write` sends for `response`, with the Date line taken out, and its result.
    async fn written(response: Response<Frames>, method: Method, keep_alive: bool, trailers: bool) -> (String, bool) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut app = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = Conn::new(stream);
        let whole = conn.write(response, &method, keep_alive, trailers).await.unwrap();
        drop(conn);
        let mut text = String::new();
        app.read_to_string(&mut text).await.unwrap();
        let dated = text.lines().filter(|line| line.starts_with("date: ")).count();
        assert_eq!(dated, 1, "{text}");
        let text = text
            .split_inclusive("\r\n")
            .filter(|line| !line.starts_with("date: "))
            .collect();
        (text, whole)
    }

    fn response(
        status: u16,
        headers: &[(&str, &str)],
        frames: Vec<Frame<Bytes>>,
        exact: Option<u64>,
    ) -> Response<Frames> {
        let mut response = Response::new(Frames(frames.into(), exact));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        response
    }

    fn data(text: &str) -> Frame<Bytes> {
        Frame::data(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn trailers() -> Frame<Bytes> {
        let mut fields = HeaderMap::new();
        fields.insert("x-check", HeaderValue::from_static("1"));
        Frame::trailers(fields)
    }

    #[tokio::test]
    async fn responses_are_framed_by_their_length_chunks_or_not_at_all() {
        let chunked = || {
            response(
                200,
                &[("x-a", "1")],
                vec![data("abc"), data(""), data("de"), trailers()],
                None,
            )
        };
        let big = "x".repeat(COPY_LIMIT + 1);
        // (what, response, method, keep-alive, `TE: trailers`, bytes written, whole)
        let cases = [
            (
                "no length: chunked, with trailers for an app that said `TE: trailers`",
                chunked(),
                Method::GET,
                true,
                true,
                "HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nx-check: 1\r\n\r\n".to_owned(),
                true,
            ),
            (
                "no length: chunked, no trailers for other apps",
                chunked(),
                Method::GET,
                false,
                false,
                "HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_owned(),
                true,
            ),
            (
                "a known size: its length",
                response(201, &[], vec![data("hello")], Some(5)),
                Method::POST,
                true,
                false,
                "HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello".to_owned(),
                true,
            ),
            (
                "a large part is written from its own buffer, after the head",
                response(200, &[], vec![data("a"), data(&big)], Some(1 + big.len() as u64)),
                Method::GET,
                true,
                false,
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\na{big}", big.len() + 1),
                true,
            ),
        ];
        check(cases).await;
    }

    /// (what, response, method, keep-alive, `TE: trailers`, bytes written, whole)
    type Case = (&'static str, Response<Frames>, Method, bool, bool, String, bool);

    async fn check(cases: impl IntoIterator<Item = Case>) {
        for (what, response, method, keep_alive, trailers, bytes, whole) in cases {
            assert_eq!(
                written(response, method, keep_alive, trailers).await,
                (bytes, whole),
                "{what}"
            );
        }
    }

    #[tokio::test]
    async fn the_peers_framing_and_trailers_that_may_not_be_trailers_are_never_passed_on() {
        let cases = [
            (
                "a length in the map is not what frames the body: what the body will deliver is",
                response(200, &[("content-length", "9")], vec![data("short")], None),
                Method::GET,
                true,
                false,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nshort\r\n0\r\n\r\n".to_owned(),
                true,
            ),
            (
                "a body ending short of its length leaves the connection unusable",
                response(
                    200,
                    &[("content-length", "5"), ("content-length", "5")],
                    vec![data("sho")],
                    Some(9),
                ),
                Method::GET,
                true,
                false,
                "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nsho".to_owned(),
                false,
            ),
            (
                "trailers that may not be trailers are not passed on",
                response(
                    200,
                    &[],
                    vec![data("ab"), {
                        let mut fields = HeaderMap::new();
                        for (name, value) in [
                            ("content-length", "2"),
                            ("x-sum", "7"),
                            ("transfer-encoding", "gzip"),
                            ("host", "a"),
                        ] {
                            fields.append(HeaderName::from_static(name), HeaderValue::from_static(value));
                        }
                        Frame::trailers(fields)
                    }],
                    None,
                ),
                Method::GET,
                true,
                true,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nx-sum: 7\r\n\r\n".to_owned(),
                true,
            ),
            (
                "a 304 passes its declared length on, once; a 204 never has one",
                response(304, &[("content-length", "7, 7"), ("etag", "\"x\"")], vec![], None),
                Method::GET,
                true,
                false,
                "HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\ncontent-length: 7\r\n\r\n".to_owned(),
                true,
            ),
            (
                "no length on a 204",
                response(204, &[("content-length", "0")], vec![], None),
                Method::HEAD,
                true,
                false,
                "HTTP/1.1 204 No Content\r\n\r\n".to_owned(),
                true,
            ),
            (
                "no body after HEAD; the response's hop-by-hop lines are not passed on",
                response(
                    200,
                    &[("content-length", "10"), ("connection", "keep-alive")],
                    vec![],
                    None,
                ),
                Method::HEAD,
                true,
                false,
                "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n".to_owned(),
                true,
            ),
            (
                "no body for 204, whatever the headers say",
                response(204, &[("transfer-encoding", "chunked")], vec![data("x")], None),
                Method::GET,
                true,
                false,
                "HTTP/1.1 204 No Content\r\n\r\n".to_owned(),
                true,
            ),
        ];
        check(cases).await;
    }
}
