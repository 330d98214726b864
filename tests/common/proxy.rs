//! A fault-injecting TCP proxy on loopback, in front of a real S3 server: it answers the first
//! connections with HTTP 500, or cuts every connection once enough bytes went upstream and then
//! refuses new ones (an S3 endpoint that becomes unreachable mid-upload).
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub struct Faults {
    /// Connections still to be answered with a 500 (and closed).
    pub fail_connections: AtomicUsize,
    /// Once this many request bytes went upstream, cut everything (0 = never).
    pub cut_after_bytes: AtomicU64,
    pub upstream_bytes: AtomicU64,
    pub served_500s: AtomicUsize,
    /// Set when the cut happened: new connections are closed at once.
    pub down: AtomicBool,
}

pub struct FaultyProxy {
    pub port: u16,
    pub faults: Arc<Faults>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultyProxy {
    /// Starts a proxy to `upstream_port` on its own runtime (so it works from sync tests too).
    pub fn start(upstream_port: u16) -> FaultyProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let faults = Arc::new(Faults::default());
        let listener = runtime
            .block_on(TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let f = faults.clone();
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let f = f.clone();
                tokio::spawn(async move {
                    let _ = handle(client, upstream_port, f).await;
                });
            }
        });
        FaultyProxy {
            port,
            faults,
            runtime: Some(runtime),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn heal(&self) {
        self.faults.cut_after_bytes.store(0, Ordering::SeqCst);
        self.faults.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn handle(
    mut client: TcpStream,
    upstream_port: u16,
    faults: Arc<Faults>,
) -> std::io::Result<()> {
    if faults.down.load(Ordering::SeqCst) {
        return Ok(());
    }
    let fail = faults
        .fail_connections
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if fail {
        // Read the request head, answer 500 like S3 does under load, close.
        let mut buf = vec![0u8; 65536];
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = client.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            seen.extend_from_slice(&buf[..n]);
        }
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>";
        let response = format!(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(response.as_bytes()).await?;
        faults.served_500s.fetch_add(1, Ordering::SeqCst);
        return Ok(());
    }
    let upstream = TcpStream::connect(("127.0.0.1", upstream_port)).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let f = faults.clone();
    let up = async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 || f.down.load(Ordering::SeqCst) {
                return Ok::<_, std::io::Error>(());
            }
            let total = f.upstream_bytes.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            let cut = f.cut_after_bytes.load(Ordering::SeqCst);
            if cut > 0 && total >= cut {
                f.down.store(true, Ordering::SeqCst);
                return Ok(());
            }
            uw.write_all(&buf[..n]).await?;
        }
    };
    let f = faults.clone();
    let down = async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = ur.read(&mut buf).await?;
            if n == 0 || f.down.load(Ordering::SeqCst) {
                return Ok::<_, std::io::Error>(());
            }
            cw.write_all(&buf[..n]).await?;
        }
    };
    // Either direction ending (or the cut) closes both.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    Ok(())
}
