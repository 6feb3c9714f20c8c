//! A zero-work relay: accepts TCP connections and copies bytes both ways to an upstream,
//! with nothing parsed, recorded or checked. It is the limit of any proxy hop on a machine,
//! the column `bench/proxy.sh` compares pgtrail against.
//!
//!   cargo run --release -p pgtrail-proxy --example relay -- LISTEN UPSTREAM [WORKERS]
//!
//! WORKERS is the number of runtime threads (default 1, a current-thread scheduler, which
//! is what pgtrail runs with on a two-core machine).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = || std::io::Error::other("usage: relay LISTEN_ADDR UPSTREAM_ADDR [WORKERS]");
    let listen: SocketAddr = args.next().ok_or_else(usage)?.parse().map_err(|_| usage())?;
    let upstream: SocketAddr = args.next().ok_or_else(usage)?.parse().map_err(|_| usage())?;
    let workers: usize = args.next().map_or(Ok(1), |w| w.parse()).map_err(|_| usage())?;
    let runtime = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(workers).build()?
    };
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (mut client, _) = listener.accept().await?;
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    })
}
