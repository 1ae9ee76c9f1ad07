//! The least a tokio proxy can do: a TCP relay that pairs each client connection with one
//! upstream connection and copies bytes both ways, reading no HTTP at all. `benches/load.sh`
//! runs it beside nginx and bearerd as a floor: the CPU that tokio and the kernel's loopback
//! TCP need per proxied request, before any HTTP parsing, routing or token work.
//!
//!   cargo bench --bench relay -- LISTEN UPSTREAM     (e.g. 127.0.0.1:18085 127.0.0.1:18081)
//!
//! Same runtime as bearerd's default for one CPU: tokio's current-thread scheduler. Each
//! connection pair is one task running `copy_bidirectional` (an 8 KiB buffer each way).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: relay LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let parse = |text: &str| {
        text.parse::<SocketAddr>()
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{text}: {err}")))
    };
    let (listen, upstream) = (parse(&listen)?, parse(&upstream)?);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            loop {
                let (mut client, _) = listener.accept().await?;
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        })
}
