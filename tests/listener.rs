//! The proxy listener's HTTP/1.1 connections, spoken byte by byte: keep-alive, pipelining,
//! `Connection: close`, the requests bearerd's own loop hands to hyper (HTTP/1.0, chunked
//! and `Expect` bodies) on the same connection, response framing, an app that goes away
//! mid-request, and the header read timeout on a paused clock.
mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn get(echo: std::net::SocketAddr, path: &str, extra: &str) -> String {
    get_as(echo, path, "billing", extra)
}

fn get_as(echo: std::net::SocketAddr, path: &str, config: &str, extra: &str) -> String {
    format!("GET http://{echo}{path} HTTP/1.1\r\nHost: {echo}\r\nX-Auth-Config: {config}\r\n{extra}\r\n")
}

#[tokio::test]
async fn keep_alive_and_pipelined_requests_are_answered_in_order_on_one_connection() {
    let world = World::billing("").await;
    let echo = world.echo.addr;
    let mut stream = TcpStream::connect(world.bearerd.proxy_addr).await.unwrap();
    // Two requests in one write, then a third after their answers.
    let both = format!("{}{}", get(echo, "/first", ""), get(echo, "/second", ""));
    stream.write_all(both.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    for path in ["/first", "/second"] {
        let reply = read_reply(&mut stream, &mut buf, false).await;
        assert_eq!(reply.status, 200);
        let seen = reply.echoed();
        assert_eq!(seen.uri, path);
        assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
        assert_eq!(reply.all("connection"), Vec::<&str>::new());
        assert_eq!(reply.all("content-length"), [reply.body.len().to_string()]);
        assert_eq!(reply.all("date").len(), 1, "a Date header");
    }
    stream.write_all(get(echo, "/third", "").as_bytes()).await.unwrap();
    let reply = read_reply(&mut stream, &mut buf, false).await;
    assert_eq!(reply.echoed().uri, "/third");
    assert!(buf.is_empty());
    assert_eq!(world.tokens.count(), 1);
    assert_eq!(world.echo.requests(), 3);
}

#[tokio::test]
async fn connection_close_is_answered_then_the_connection_ends() {
    let world = World::billing("").await;
    let echo = world.echo.addr;
    let mut stream = TcpStream::connect(world.bearerd.proxy_addr).await.unwrap();
    stream
        .write_all(get(echo, "/bye", "Connection: close\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let reply = read_reply(&mut stream, &mut buf, false).await;
    assert_eq!(reply.echoed().uri, "/bye");
    assert_eq!(reply.all("connection"), ["close"]);
    assert!(closes_by(&mut stream, WAIT).await, "the connection stayed open");
}

#[tokio::test]
async fn requests_handed_to_hyper_are_served_in_order_on_the_same_connection() {
    let world = World::billing("").await;
    let echo = world.echo.addr;
    let proxy = world.bearerd.proxy_addr;
    let mut buf = Vec::new();

    // A plain GET, a small body that came with its head, then a chunked upload (hyper's),
    // all in one write; then a GET after them, which hyper serves too.
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let mut sent = get(echo, "/plain", "").into_bytes();
    sent.extend_from_slice(
        format!(
            "POST http://{echo}/small HTTP/1.1\r\nHost: {echo}\r\nX-Auth-Config: billing\r\nContent-Length: 5\r\n\r\n"
        )
        .as_bytes(),
    );
    sent.extend((0..5).map(pattern_byte));
    sent.extend_from_slice(
        format!(
            "POST http://{echo}/chunked HTTP/1.1\r\nHost: {echo}\r\nX-Auth-Config: billing\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    );
    sent.extend_from_slice(b"3\r\n");
    sent.extend((0..3).map(pattern_byte));
    sent.extend_from_slice(b"\r\n0\r\n\r\n");
    stream.write_all(&sent).await.unwrap();
    for (path, length) in [("/plain", 0), ("/small", 5), ("/chunked", 3)] {
        let seen = read_reply(&mut stream, &mut buf, false).await.echoed();
        assert_eq!(
            (seen.uri.as_str(), seen.body_length, seen.body_is_pattern),
            (path, length, true)
        );
        assert_eq!(seen.all("authorization"), ["Bearer tok-1"]);
    }
    stream.write_all(get(echo, "/after", "").as_bytes()).await.unwrap();
    assert_eq!(read_reply(&mut stream, &mut buf, false).await.echoed().uri, "/after");

    // HTTP/1.0, and `Expect: 100-continue`, each on its own connection.
    let old = raw_exchange(
        proxy,
        format!("GET http://{echo}/old HTTP/1.0\r\nX-Auth-Config: billing\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(old.starts_with("HTTP/1.0 200 OK\r\n"), "{old}");
    assert!(old.contains("\"/old\""), "{old}");

    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(
            format!(
                "POST http://{echo}/expect HTTP/1.1\r\nHost: {echo}\r\nX-Auth-Config: billing\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let go_on = read_reply(&mut stream, &mut buf, false).await;
    assert_eq!(go_on.status, 100);
    stream
        .write_all(&(0..4).map(pattern_byte).collect::<Vec<_>>())
        .await
        .unwrap();
    let seen = read_reply(&mut stream, &mut buf, false).await.echoed();
    assert_eq!(
        (seen.uri.as_str(), seen.body_length, seen.body_is_pattern),
        ("/expect", 4, true)
    );
    assert_eq!(world.echo.requests(), 6);
}

#[tokio::test]
async fn responses_are_framed_by_length_by_chunks_or_not_at_all() {
    let world = World::billing("").await;
    let echo = world.echo.addr;
    let mut stream = TcpStream::connect(world.bearerd.proxy_addr).await.unwrap();
    let mut buf = Vec::new();

    // The upstream streams 100,000 bytes with no length: chunked to the app.
    stream
        .write_all(get(echo, "/bytes/100000", "").as_bytes())
        .await
        .unwrap();
    let reply = read_reply(&mut stream, &mut buf, false).await;
    assert_eq!(reply.all("transfer-encoding"), ["chunked"]);
    assert_eq!(reply.all("content-length"), Vec::<&str>::new());
    assert_eq!(reply.body.len(), 100_000);
    assert!(reply.body.iter().enumerate().all(|(i, &b)| b == pattern_byte(i)));

    // HEAD: the length of what a GET would get, and no body; 204: no body.
    stream
        .write_all(
            format!("HEAD http://{echo}/head HTTP/1.1\r\nHost: {echo}\r\nX-Auth-Config: billing\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let reply = read_reply(&mut stream, &mut buf, true).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.all("content-length").len(), 1);
    stream.write_all(get(echo, "/status/204", "").as_bytes()).await.unwrap();
    let reply = read_reply(&mut stream, &mut buf, false).await;
    assert_eq!(reply.status, 204);
    assert_eq!(reply.all("transfer-encoding"), Vec::<&str>::new());

    // bearerd's own answer: JSON with its length, and the connection stays usable.
    stream
        .write_all(get_as(echo, "/x", "nope", "").as_bytes())
        .await
        .unwrap();
    let reply = read_reply(&mut stream, &mut buf, false).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.all("content-length"), [reply.body.len().to_string()]);
    assert_eq!(reply.all("date").len(), 1);
    let error: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(error["error"], "unknown_auth_config");

    stream.write_all(get(echo, "/last", "").as_bytes()).await.unwrap();
    assert_eq!(read_reply(&mut stream, &mut buf, false).await.echoed().uri, "/last");
    // Nothing was left over between the responses.
    assert!(buf.is_empty());
}

/// A response head as the app read it, with the value of its one `date` line (any case)
/// replaced by `*`.
fn undated(head: &str) -> String {
    head.split_inclusive("\r\n")
        .map(|line| match line.split_once(':') {
            Some((name, _)) if name.eq_ignore_ascii_case("date") => format!("{name}: *\r\n"),
            _ => line.to_owned(),
        })
        .collect()
}

#[tokio::test]
async fn the_upstreams_header_lines_reach_the_app_as_written_less_the_hop_by_hop_ones() {
    static RESPONSES: &[&str] = &[
        "HTTP/1.1 200 OK\r\nServer: script\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n\
         Keep-Alive: timeout=5\r\nX-Multi: a\r\nX-Multi: b\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.1 201 Created\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\
         Location: /items/7\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ];
    let scripted = Scripted::start(RESPONSES, false).await;
    let upstream = scripted.addr;
    let world = World::billing("").await;
    let mut stream = TcpStream::connect(world.bearerd.proxy_addr).await.unwrap();
    let mut buf = Vec::new();
    // bearerd's own loop: the lines as the upstream wrote them, less its framing, then
    // bearerd's own framing and date.
    stream.write_all(get(upstream, "/one", "").as_bytes()).await.unwrap();
    assert_eq!(
        undated(&read_head(&mut stream, &mut buf).await),
        "HTTP/1.1 200 OK\r\nServer: script\r\nX-Multi: a\r\nX-Multi: b\r\ncontent-length: 2\r\n\
         date: *\r\n\r\n"
    );
    tokio::time::timeout(WAIT, async {
        while buf.len() < 2 {
            fill(&mut stream, &mut buf).await;
        }
    })
    .await
    .expect("the body in time");
    assert_eq!(std::mem::take(&mut buf), b"ok");
    // The upstream's Date is the only one; its chunked body is chunked again.
    stream.write_all(get(upstream, "/two", "").as_bytes()).await.unwrap();
    assert_eq!(
        read_head(&mut stream, &mut buf).await,
        "HTTP/1.1 201 Created\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\nLocation: /items/7\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    tokio::time::timeout(WAIT, async {
        while find(&buf, b"0\r\n\r\n").is_none() {
            fill(&mut stream, &mut buf).await;
        }
    })
    .await
    .expect("the body in time");
    assert_eq!(std::mem::take(&mut buf), b"3\r\nabc\r\n0\r\n\r\n");

    // hyper's server (HTTP/1.0 here) writes the same headers from the response's map.
    let old = raw_exchange(
        world.bearerd.proxy_addr,
        format!("GET http://{upstream}/three HTTP/1.0\r\nX-Auth-Config: billing\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        undated(&old),
        "HTTP/1.0 200 OK\r\nserver: script\r\nx-multi: a\r\nx-multi: b\r\ncontent-length: 2\r\n\
         date: *\r\n\r\nok"
    );
}

#[tokio::test]
async fn the_apps_header_lines_reach_the_upstream_as_written_less_what_stops_at_the_proxy() {
    static RESPONSES: &[&str] = &["HTTP/1.1 204 No Content\r\n\r\n"];
    let scripted = Scripted::start(RESPONSES, false).await;
    let upstream = scripted.addr;
    let world = World::billing("").await;
    let mut stream = TcpStream::connect(world.bearerd.proxy_addr).await.unwrap();
    let mut buf = Vec::new();
    let app_lines = "User-Agent: raw/1\r\nauthorization: Basic YXBwOnNlY3JldA==\r\nConnection: X-Private\r\n\
                     X-Private: 1\r\nProxy-Authorization: Basic cHJveHk=\r\nKeep-Alive: timeout=5\r\n\
                     X-Request-Id: app-7\r\nX-Multi:a\r\nx-multi: b\r\nTE: trailers\r\n";
    // bearerd's own loop: the app's lines as it wrote them, then the token.
    stream
        .write_all(
            format!(
                "GET http://{upstream}/in?x=1 HTTP/1.1\r\nHost: {upstream}\r\nx-auth-config: billing\r\n{app_lines}\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert!(
        read_head(&mut stream, &mut buf)
            .await
            .starts_with("HTTP/1.1 204 No Content\r\n")
    );
    // hyper's server (HTTP/1.0) for the same request: the same headers, from a map.
    let old = raw_exchange(
        world.bearerd.proxy_addr,
        format!("GET http://{upstream}/in?x=1 HTTP/1.0\r\nX-Auth-Config: billing\r\n{app_lines}\r\n").as_bytes(),
    )
    .await;
    assert!(old.starts_with("HTTP/1.0 204 No Content\r\n"), "{old}");
    let heads = scripted.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert_eq!(
        heads[0],
        format!(
            "GET /in?x=1 HTTP/1.1\r\nhost: {upstream}\r\nUser-Agent: raw/1\r\nX-Request-Id: app-7\r\n\
             X-Multi: a\r\nx-multi: b\r\nauthorization: Bearer tok-1\r\n\r\n"
        )
    );
    let mut lines: Vec<&str> = heads[1].split("\r\n").collect();
    lines[2..].sort_unstable();
    assert_eq!(
        lines,
        [
            "GET /in?x=1 HTTP/1.1".to_owned(),
            format!("host: {upstream}"),
            String::new(),
            String::new(),
            "authorization: Bearer tok-1".to_owned(),
            "user-agent: raw/1".to_owned(),
            "x-multi: a".to_owned(),
            "x-multi: b".to_owned(),
            "x-request-id: app-7".to_owned(),
        ]
    );
}

#[tokio::test]
async fn an_app_that_goes_away_cancels_its_request() {
    let world = World::billing("upstream_timeout: 60s\n").await;
    let echo = world.echo.addr;
    let mut stream = TcpStream::connect(world.bearerd.proxy_addr).await.unwrap();
    stream.write_all(get(echo, "/slow/30000", "").as_bytes()).await.unwrap();
    let inflight = || async {
        let text = metrics(&world.bearerd).await;
        text.lines()
            .find_map(|line| line.strip_prefix("bearerd_inflight_requests "))
            .map(|value| value.trim().to_owned())
    };
    eventually("the request upstream", || async { world.echo.requests() == 1 }).await;
    assert_eq!(inflight().await.as_deref(), Some("1"));
    drop(stream);
    // Well before the upstream's 30 s: the request was dropped with the connection.
    eventually("the request to be cancelled", || async {
        inflight().await.as_deref() == Some("0")
    })
    .await;
}

/// The header read timeout on a paused clock: an idle connection, and one that sent half a
/// head, close after 30 s; a connection's timer starts again with each head it waits for.
#[tokio::test(start_paused = true)]
async fn connections_that_send_no_head_for_30_seconds_are_closed() {
    let tokens = TokenServer::start().await;
    let bearerd = start_bearerd(&billing(&tokens, "")).await;
    let started = tokio::time::Instant::now();
    let proxy = bearerd.proxy_addr;
    // Whether the server closes it (reads end of file), and when.
    let closed_at = |mut stream: TcpStream| async move {
        assert!(closes_by(&mut stream, Duration::from_secs(120)).await, "not closed");
        started.elapsed()
    };
    let idle = async { closed_at(TcpStream::connect(proxy).await.unwrap()).await };
    let half = async {
        let mut half = TcpStream::connect(proxy).await.unwrap();
        half.write_all(b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127")
            .await
            .unwrap();
        closed_at(half).await
    };
    // A request at 20 s, answered by bearerd itself (an unknown auth config, so no upstream
    // timer runs); then 30 s from that answer.
    let busy = async {
        let mut busy = TcpStream::connect(proxy).await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        busy.write_all(b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Auth-Config: nope\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_reply(&mut busy, &mut buf, false).await.status, 400);
        closed_at(busy).await
    };
    let (idle, half, busy) = tokio::join!(idle, half, busy);
    let secs = |from: u64| Duration::from_secs(from)..Duration::from_secs(from + 1);
    assert!(secs(30).contains(&idle), "{idle:?}");
    assert!(secs(30).contains(&half), "{half:?}");
    assert!(secs(50).contains(&busy), "{busy:?}");
}

/// The upstream's deadline on the connection's one timer, on a paused clock: a deadline
/// after the head timer's (60 s against 30 s) is not cut short when that timer fires first,
/// one before it (5 s) moves the timer earlier, and the head wait after the answers still
/// gets its 30 s.
#[tokio::test(start_paused = true)]
async fn an_upstream_that_does_not_answer_times_out_on_the_connections_timer() {
    let silent = Silent::start().await;
    let silent_addr = silent.addr;
    let request = format!("GET http://{silent_addr}/x HTTP/1.1\r\nHost: {silent_addr}\r\n\r\n");
    let started = tokio::time::Instant::now();
    // Each answer's status and error code, when it came; then when the connection closed.
    let answers = |timeout: &'static str, requests: usize| {
        let request = request.clone();
        async move {
            let bearerd = start_bearerd(&format!("upstream_timeout: {timeout}\n")).await;
            let mut stream = TcpStream::connect(bearerd.proxy_addr).await.unwrap();
            let mut buf = Vec::new();
            let mut seen = Vec::new();
            for _ in 0..requests {
                stream.write_all(request.as_bytes()).await.unwrap();
                // Longer than `read_reply`'s own wait.
                tokio::time::timeout(Duration::from_secs(120), stream.readable())
                    .await
                    .expect("an answer")
                    .unwrap();
                let reply = read_reply(&mut stream, &mut buf, false).await;
                let code = serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap()["error"].clone();
                seen.push((reply.status, code, started.elapsed().as_secs()));
            }
            assert!(closes_by(&mut stream, Duration::from_secs(120)).await, "not closed");
            (seen, started.elapsed().as_secs())
        }
    };
    let (long, short) = tokio::join!(answers("60s", 1), answers("5s", 2));
    let timed_out = |at| (504, serde_json::json!("upstream_timeout"), at);
    assert_eq!(long, (vec![timed_out(60)], 90));
    assert_eq!(short, (vec![timed_out(5), timed_out(10)], 40));
}

async fn closes_by(stream: &mut TcpStream, within: Duration) -> bool {
    let mut rest = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut rest)).await {
        Ok(Ok(_)) => {
            assert!(
                rest.is_empty(),
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&rest)
            );
            true
        }
        // Reset rather than closed: closed all the same.
        Ok(Err(_)) => true,
        Err(_) => false,
    }
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_ends_a_busy_one_after_its_response() {
    let world = World::billing("").await;
    let World { echo, bearerd, .. } = world;
    let echo_addr = echo.addr;
    let mut buf = Vec::new();
    let mut idle = TcpStream::connect(bearerd.proxy_addr).await.unwrap();
    idle.write_all(get(echo_addr, "/one", "").as_bytes()).await.unwrap();
    assert_eq!(read_reply(&mut idle, &mut buf, false).await.status, 200);
    let mut busy = TcpStream::connect(bearerd.proxy_addr).await.unwrap();
    busy.write_all(get(echo_addr, "/slow/500", "").as_bytes())
        .await
        .unwrap();
    eventually("the slow request upstream", || async { echo.requests() == 2 }).await;

    let shutdown = tokio::spawn(bearerd.shutdown());
    assert!(closes_by(&mut idle, WAIT).await, "the idle connection stayed open");
    let reply = read_reply(&mut busy, &mut buf, false).await;
    assert_eq!(reply.echoed().uri, "/slow/500");
    assert_eq!(reply.all("connection"), ["close"]);
    assert!(closes_by(&mut busy, WAIT).await, "the busy connection stayed open");
    assert!(
        shutdown.await.unwrap(),
        "shutdown did not finish within the grace period"
    );
}

#[tokio::test]
async fn a_malformed_chunked_request_body_is_the_apps_400_not_the_upstreams_502() {
    let world = World::billing("").await;
    let echo = world.echo.addr;
    for body in [
        "ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        "3\r\nabcX\r\n0\r\n\r\n",
        "zz\r\n\r\n",
    ] {
        let request = format!(
            "POST http://{echo}/x HTTP/1.1\r\nHost: {echo}\r\nX-Auth-Config: billing\r\n\
             Transfer-Encoding: chunked\r\n\r\n{body}"
        );
        let reply = raw_exchange(world.bearerd.proxy_addr, request.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{body:?}: {reply}");
        assert!(reply.contains("x-bearerd-error: bad_request\r\n"), "{body:?}: {reply}");
        assert!(
            reply.contains("the request body could not be read"),
            "{body:?}: {reply}"
        );
    }
    let metrics = metrics(&world.bearerd).await;
    assert!(
        metrics.contains(r#"bearerd_requests_total{auth_config="billing",status="bad_request"} 3"#),
        "{metrics}"
    );
    assert!(!metrics.contains("upstream_unreachable"), "{metrics}");
}

#[tokio::test]
async fn a_head_that_is_not_http_is_answered_400_at_once_and_the_connection_closed() {
    let world = World::billing("").await;
    for head in [
        "GET / HTTP/1.1\r\nHost: a\r\n\r\r\n",
        "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
    ] {
        // raw_exchange reads until the connection closes: a closed connection ends it at once.
        let started = std::time::Instant::now();
        let reply = raw_exchange(world.bearerd.proxy_addr, head.as_bytes()).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{head:?} waited");
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head:?}: {reply}");
        assert!(reply.contains("connection: close\r\n"), "{head:?}: {reply}");
        assert!(reply.contains(r#""error":"bad_request""#), "{head:?}: {reply}");
    }
    assert_eq!(world.echo.requests(), 0);
}

#[tokio::test]
async fn a_request_needs_one_valid_host_and_a_target_without_user_info_on_either_path() {
    let world = World::billing("").await;
    let echo = world.echo.addr;
    // bearerd's own loop serves the plain GET; a chunked body hands the request to hyper.
    let paths = ["", "Transfer-Encoding: chunked\r\n"];
    for (hosts, target, why) in [
        (String::new(), format!("http://{echo}/x"), "no Host"),
        (
            format!("Host: {echo}\r\nHost: {echo}\r\n"),
            format!("http://{echo}/x"),
            "two Host lines",
        ),
        (
            "Host: a b\r\n".to_owned(),
            format!("http://{echo}/x"),
            "a space in Host",
        ),
        (
            "Host: u@a.test\r\n".to_owned(),
            format!("http://{echo}/x"),
            "user info in Host",
        ),
        (
            "Host: a:1:2\r\n".to_owned(),
            format!("http://{echo}/x"),
            "two ports in Host",
        ),
        (
            "Host: [::1\r\n".to_owned(),
            format!("http://{echo}/x"),
            "an open bracket in Host",
        ),
        (
            format!("Host: {echo}\r\n"),
            format!("http://127.0.0.1@{echo}/x"),
            "user info in the target",
        ),
        (
            format!("Host: {echo}\r\n"),
            format!("http://u:p@{echo}/x"),
            "user and password in the target",
        ),
    ] {
        for path in paths {
            let body = if path.is_empty() { "" } else { "0\r\n\r\n" };
            let request = format!(
                "GET {target} HTTP/1.1\r\n{hosts}X-Auth-Config: billing\r\n{path}Connection: close\r\n\r\n{body}"
            );
            let reply = raw_exchange(world.bearerd.proxy_addr, request.as_bytes()).await;
            assert!(
                reply.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{why} {path:?}: {reply}"
            );
            assert!(
                reply.contains("x-bearerd-error: bad_request\r\n"),
                "{why} {path:?}: {reply}"
            );
        }
    }
    assert_eq!(world.echo.requests(), 0, "nothing was sent upstream");
    assert_eq!(world.tokens.count(), 0, "no token was fetched");
    // HTTP/1.0 may leave Host out; a Host that differs from the target's is replaced by it.
    let old = raw_exchange(
        world.bearerd.proxy_addr,
        format!("GET http://{echo}/old HTTP/1.0\r\nX-Auth-Config: billing\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(old.starts_with("HTTP/1.0 200 OK\r\n"), "{old}");
    for path in paths {
        let body = if path.is_empty() { "" } else { "0\r\n\r\n" };
        let request = format!(
            "GET http://{echo}/other HTTP/1.1\r\nHost: other.test\r\nX-Auth-Config: billing\r\n{path}Connection: close\r\n\r\n{body}"
        );
        let reply = raw_exchange(world.bearerd.proxy_addr, request.as_bytes()).await;
        // The echo's JSON, however the response was framed.
        let json = &reply[reply.find('{').unwrap()..=reply.rfind('}').unwrap()];
        let seen = Echoed::parse(json.as_bytes());
        assert_eq!(seen.all("host"), [echo.to_string()], "{path:?}");
    }
}

#[tokio::test]
async fn past_max_connections_a_connection_waits_until_another_closes() {
    let world = World::billing("max_connections: 2\n").await;
    let echo = world.echo.addr;
    let mut buf = Vec::new();
    let mut open = Vec::new();
    for path in ["/one", "/two"] {
        let mut stream = TcpStream::connect(world.bearerd.proxy_addr).await.unwrap();
        stream.write_all(get(echo, path, "").as_bytes()).await.unwrap();
        assert_eq!(read_reply(&mut stream, &mut buf, false).await.echoed().uri, path);
        open.push(stream);
    }
    assert!(metrics(&world.bearerd).await.contains("\nbearerd_connections 2\n"));
    // The third is in the kernel's accept queue: connected, but its request is not read.
    let mut third = TcpStream::connect(world.bearerd.proxy_addr).await.unwrap();
    third.write_all(get(echo, "/three", "").as_bytes()).await.unwrap();
    let mut byte = [0_u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut byte)).await;
    assert!(early.is_err(), "answered while two connections were open");
    assert_eq!(world.echo.requests(), 2);
    drop(open.pop());
    assert_eq!(read_reply(&mut third, &mut buf, false).await.echoed().uri, "/three");
    eventually("the closed connection uncounted", || async {
        metrics(&world.bearerd).await.contains("\nbearerd_connections 2\n")
    })
    .await;
}
