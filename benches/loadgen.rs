//! A small HTTP/1.1 load generator for the paths wrk cannot drive: TLS through an HTTPS
//! proxy's `CONNECT` (bearerd's intercepted mode), and a fixed request rate (wrk2 is not
//! packaged). `benches/load.sh` runs it; it is a bench target only so that it builds with the
//! crate's own dependencies (tokio, rustls, httparse).
//!
//!   cargo bench --bench loadgen -- --to 127.0.0.1:18089 --connect localhost:18443 \
//!       --tls localhost --ca bundle.pem --host localhost:18443 --target / \
//!       --connections 50 --duration 10
//!
//! Opens `--connections` keep-alive connections to `--to`; on each, once: `CONNECT` to the
//! `--connect` authority (answered 200) when given, then a TLS handshake (SNI and the name
//! checked: `--tls`, roots: the PEM certificates in `--ca`, ALPN `http/1.1`) when given.
//! Once every connection is ready, each sends `GET <target>` with `Host: <host>` and reads the
//! whole response (`Content-Length` framing, status 200, no `Connection: close`) before the
//! next: no pipelining. Without `--rate`, as fast as the answers come (closed loop, like
//! wrk); with `--rate R`, R requests a second in all, spread evenly over the connections.
//!
//! Prints one line on stdout, `key=value` pairs: `requests` answered in the `--duration`
//! window, `errors`, `seconds`, `rps`, latency percentiles `p50_us`, `p90_us`, `p99_us`,
//! `max_us` (from the request's write to the response's last byte), and `late`, how many
//! fixed-rate sends started more than 200 µs after their time (a stall of the machine or of
//! the previous answer). Fixed-rate sends wait on the timer, then yield the last 2 ms away:
//! with `--rate` the generator keeps its CPU busy. The single-threaded runtime keeps it on
//! one CPU, as `wrk -t1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// What to load and how.
struct Options {
    to: String,
    connect: Option<String>,
    tls: Option<(ServerName<'static>, Arc<rustls::ClientConfig>)>,
    request: Vec<u8>,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
}

/// One connection's results in the window.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    late: u64,
    error: Option<String>,
}

const USAGE: &str = "usage: loadgen --to ADDR [--connect HOST:PORT] [--tls NAME --ca PEM] --host HOST \
                     --target TARGET [--connections N] [--duration SECONDS] [--rate PER_SECOND]";

fn main() {
    let options = match parse(std::env::args().skip(1).filter(|arg| arg != "--bench")) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("loadgen: {message}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(Arc::new(options))) {
        Ok(line) => println!("{line}"),
        Err(message) => {
            eprintln!("loadgen: {message}");
            std::process::exit(1);
        }
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let (mut to, mut connect, mut name, mut ca, mut host, mut target) = (None, None, None, None, None, None);
    let (mut connections, mut duration, mut rate) = (1, 10.0, None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |value: &str| value.parse::<f64>().map_err(|err| format!("{flag} {value}: {err}"));
        match flag.as_str() {
            "--to" => to = Some(value),
            "--connect" => connect = Some(value),
            "--tls" => name = Some(value),
            "--ca" => ca = Some(value),
            "--host" => host = Some(value),
            "--target" => target = Some(value),
            "--connections" => connections = value.parse().map_err(|err| format!("--connections {value}: {err}"))?,
            "--duration" => duration = number(&value)?,
            "--rate" => rate = Some(number(&value)?),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let to = to.ok_or("--to is required")?;
    let host = host.ok_or("--host is required")?;
    let target = target.ok_or("--target is required")?;
    let positive = |value: f64| value > 0.0;
    if connections == 0 || !positive(duration) || rate.is_some_and(|rate| !positive(rate)) {
        return Err("--connections, --duration and --rate must be above 0".into());
    }
    let tls = match (name, ca) {
        (Some(name), Some(ca)) => Some(tls_config(name, &ca)?),
        (None, None) => None,
        _ => return Err("--tls and --ca go together".into()),
    };
    Ok(Options {
        to,
        connect,
        tls,
        request: format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: loadgen\r\n\r\n").into_bytes(),
        connections,
        duration: Duration::from_secs_f64(duration),
        rate,
    })
}

/// A client that trusts only the certificates in the PEM file `ca` and offers HTTP/1.1.
fn tls_config(name: String, ca: &str) -> Result<(ServerName<'static>, Arc<rustls::ClientConfig>), String> {
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(ca)
        .map_err(|err| format!("{ca}: {err}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{ca}: {err}"))?;
    let (added, _) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(format!("{ca}: no certificate"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(name).map_err(|err| err.to_string())?;
    Ok((name, Arc::new(config)))
}

async fn run(options: Arc<Options>) -> Result<String, String> {
    // Each connection says when it is ready (or why it is not), then waits for the start.
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(options.connections);
    let (start_tx, start_rx) = watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(options.connections);
    for index in 0..options.connections {
        let (options, ready, start) = (Arc::clone(&options), ready_tx.clone(), start_rx.clone());
        tasks.push(tokio::spawn(connection(options, index, ready, start)));
    }
    drop(ready_tx);
    for _ in 0..options.connections {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(message))) => return Err(message),
            Ok(None) | Err(_) => return Err("connections not ready in 60 s".into()),
        }
    }
    let start = Instant::now();
    let _ = start_tx.send(Some(start));
    let mut latencies = Vec::new();
    let (mut errors, mut late) = (0, 0);
    for task in tasks {
        let tally = task.await.map_err(|err| err.to_string())?;
        if let Some(message) = tally.error {
            eprintln!("loadgen: {message}");
        }
        latencies.extend_from_slice(&tally.latencies_us);
        errors += tally.errors;
        late += tally.late;
    }
    let seconds = options.duration.as_secs_f64();
    latencies.sort_unstable();
    let percentile = |per_mille: usize| {
        // The nearest rank: the smallest latency with at least that share of them at or below it.
        let rank = (latencies.len() * per_mille).div_ceil(1000);
        latencies.get(rank.saturating_sub(1)).copied().unwrap_or(0)
    };
    Ok(format!(
        "requests={} errors={errors} seconds={seconds:.3} rps={:.1} p50_us={} p90_us={} p99_us={} max_us={} late={late}",
        latencies.len(),
        float(latencies.len()) / seconds,
        percentile(500),
        percentile(900),
        percentile(990),
        latencies.last().copied().unwrap_or(0),
    ))
}

/// One connection: set up, say so, then requests until the window ends.
async fn connection(
    options: Arc<Options>,
    index: usize,
    ready: mpsc::Sender<Result<(), String>>,
    mut start: watch::Receiver<Option<Instant>>,
) -> Tally {
    let stream = match open(&options).await {
        Ok(stream) => stream,
        Err(message) => {
            let _ = ready.send(Err(format!("connection {index}: {message}"))).await;
            return Tally::default();
        }
    };
    let _ = ready.send(Ok(())).await;
    let Ok(start) = start.wait_for(Option::is_some).await.map(|start| start.expect("set")) else {
        return Tally::default();
    };
    match stream {
        Stream::Plain(stream) => requests(stream, &options, index, start).await,
        Stream::Tls(stream) => requests(*stream, &options, index, start).await,
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn open(options: &Options) -> Result<Stream, String> {
    let mut stream = TcpStream::connect(&options.to)
        .await
        .map_err(|err| format!("connect {}: {err}", options.to))?;
    stream.set_nodelay(true).map_err(|err| err.to_string())?;
    if let Some(authority) = &options.connect {
        let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|err| err.to_string())?;
        let mut buf = Vec::with_capacity(1024);
        let (status, used, _) = read_head(&mut stream, &mut buf).await?;
        if status != 200 || used != buf.len() {
            return Err(format!("CONNECT {authority} answered {status}"));
        }
    }
    let Some((name, config)) = &options.tls else {
        return Ok(Stream::Plain(stream));
    };
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(name.clone(), stream)
        .await
        .map_err(|err| format!("TLS with {name:?}: {err}"))?;
    Ok(Stream::Tls(Box::new(tls)))
}

/// Reads until a whole response head is in `buf`: its status, its length in `buf`, and its
/// `Content-Length` (0 when absent). A `Connection: close` or a chunked body is an error:
/// the benchmark's upstream answers neither.
async fn read_head(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Result<(u16, usize, usize), String> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buf) {
            Ok(httparse::Status::Complete(used)) => {
                let mut length = 0;
                for header in response.headers.iter() {
                    if header.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(header.value)
                            .ok()
                            .and_then(|value| value.trim().parse().ok())
                            .ok_or("a malformed Content-Length")?;
                    } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err("a chunked response".into());
                    } else if header.name.eq_ignore_ascii_case("connection")
                        && header.value.eq_ignore_ascii_case(b"close")
                    {
                        return Err("Connection: close".into());
                    }
                }
                return Ok((response.code.unwrap_or(0), used, length));
            }
            Ok(httparse::Status::Partial) => {}
            Err(err) => return Err(format!("a malformed response: {err}")),
        }
        if read_more(stream, buf).await? == 0 {
            return Err("closed before a whole response head".into());
        }
    }
}

async fn read_more(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Result<usize, String> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    stream.read_buf(buf).await.map_err(|err| err.to_string())
}

/// Requests one after the other on `stream` until the window closes.
async fn requests(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    options: &Options,
    index: usize,
    start: Instant,
) -> Tally {
    let end = start + options.duration;
    // With a rate: this connection's share, its sends offset from the others'.
    let interval = options
        .rate
        .map(|rate| Duration::from_secs_f64(float(options.connections) / rate));
    let mut next = interval.map(|interval| start + interval.mul_f64(float(index) / float(options.connections)));
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(8192);
    loop {
        if let (Some(at), Some(interval)) = (next.as_mut(), interval) {
            if *at >= end {
                break;
            }
            pace(*at).await;
            if at.elapsed() > LATE {
                tally.late += 1;
            }
            *at += interval;
        }
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        if let Err(message) = exchange(&mut stream, &options.request, &mut buf).await {
            tally.errors += 1;
            tally.error = Some(format!("connection {index}: {message}"));
            break;
        }
        let done = Instant::now();
        if done <= end {
            let micros = done.duration_since(sent).as_micros();
            tally.latencies_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }
    tally
}

/// A fixed-rate send that starts later than this after its time counts as late.
const LATE: Duration = Duration::from_micros(200);

/// Waits until `at`: on the timer for all but the last 2 ms, then yielding until the moment.
/// tokio's timer fires on millisecond ticks, which would send most requests of a 1,000 req/s
/// schedule up to a tick late and the next one at once after it.
async fn pace(at: Instant) {
    if let Some(coarse) = at.checked_sub(Duration::from_millis(2))
        && coarse > Instant::now()
    {
        tokio::time::sleep_until(coarse.into()).await;
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

/// One request and its whole response, which must be a 200.
async fn exchange(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    stream.write_all(request).await.map_err(|err| err.to_string())?;
    let (status, used, length) = read_head(stream, buf).await?;
    while buf.len() < used + length {
        if read_more(stream, buf).await? == 0 {
            return Err("closed in the body".into());
        }
    }
    if buf.len() > used + length {
        return Err("bytes after the response".into());
    }
    buf.clear();
    if status == 200 {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// A count as a float, for rates and fractions: the counts here are far below 2^52.
#[allow(clippy::cast_precision_loss)]
fn float(count: usize) -> f64 {
    count as f64
}
