//! A loopback TCP proxy that counts round trips: a round trip is a client → server send that follows
//! a server → client reply (or is the first send of a connection). That is exactly the number of times
//! a client has to wait for the network, whatever the driver batches into one write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Round-trip counter shared by every connection through the proxy.
#[derive(Debug, Default)]
pub struct Counter {
    trips: AtomicU64,
}

impl Counter {
    pub fn get(&self) -> u64 {
        self.trips.load(Ordering::SeqCst)
    }
}

/// Start the proxy in front of `upstream` (host:port); returns the local port and the counter.
pub async fn start(upstream: String) -> (u16, Arc<Counter>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let port = listener.local_addr().unwrap().port();
    let counter = Arc::new(Counter::default());
    let c = counter.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let c = c.clone();
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(&upstream).await {
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    pipe(client, server, c).await;
                }
            });
        }
    });
    (port, counter)
}

async fn pipe(client: TcpStream, server: TcpStream, counter: Arc<Counter>) {
    // `awaiting_reply` is true after the client sent something and until the server answers.
    let awaiting_reply = Arc::new(AtomicBool::new(false));
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let a = awaiting_reply.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !a.swap(true, Ordering::SeqCst) {
                counter.trips.fetch_add(1, Ordering::SeqCst);
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let a = awaiting_reply;
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            a.store(false, Ordering::SeqCst);
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}
