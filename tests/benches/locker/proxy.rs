//! A loopback TCP proxy that can cut the network silently (stop forwarding in both directions
//! while keeping both sockets open: no FIN, no RST, as a dead link or a partition looks) and count
//! round trips (a client → server send that follows a reply).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Proxy {
    pub port: u16,
    trips: AtomicU64,
    cut: AtomicBool,
    close: Notify,
}

#[allow(dead_code)] // the tests use the cut, the benchmark the counter
impl Proxy {
    pub fn trips(&self) -> u64 {
        self.trips.load(Ordering::SeqCst)
    }

    /// Stop forwarding (silently: sockets stay open).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Close every connection through the proxy (the server then sees its clients go).
    pub fn close_all(&self) {
        self.close.notify_waiters();
    }
}

pub async fn start(upstream: String) -> Arc<Proxy> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let proxy = Arc::new(Proxy {
        port: listener.local_addr().unwrap().port(),
        ..Proxy::default()
    });
    let p = proxy.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let p = p.clone();
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(&upstream).await {
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let closed = p.close.notified();
                    tokio::select! {
                        _ = pipe(client, server, p.clone()) => {}
                        _ = closed => {}
                    }
                }
            });
        }
    });
    proxy
}

async fn pipe(client: TcpStream, server: TcpStream, p: Arc<Proxy>) {
    let awaiting = Arc::new(AtomicBool::new(false));
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (a, pu) = (awaiting.clone(), p.clone());
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if pu.cut.load(Ordering::SeqCst) {
                continue; // swallowed
            }
            if !a.swap(true, Ordering::SeqCst) {
                pu.trips.fetch_add(1, Ordering::SeqCst);
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        // keep the server side open while cut: a silent partition
        while pu.cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let _ = sw.shutdown().await;
    };
    let pd = p;
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if pd.cut.load(Ordering::SeqCst) {
                continue;
            }
            awaiting.store(false, Ordering::SeqCst);
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        while pd.cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}
