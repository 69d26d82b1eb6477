//! A fault-injecting TCP proxy on loopback: forwards every connection to an upstream address
//! until told to black-hole, then stops forwarding in both directions without closing anything
//! (what a dead link or a partition looks like to both ends), until restored.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A running proxy; stops (and drops every connection) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    _accept: JoinSet<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (open, open_rx) = watch::channel(true);
        let mut accept = JoinSet::new();
        accept.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((down, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let open = open_rx.clone();
                conns.spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(pipe(dr, uw, open.clone()), pipe(ur, dw, open));
                });
            }
        });
        Ok(Self {
            addr,
            open,
            _accept: accept,
        })
    }

    /// The address clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding (connections stay open, bytes stay unread).
    pub fn black_hole(&self) {
        self.open.send_replace(false);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

/// Copies `from` to `to` while the link is open; holds still while it is black-holed.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut open: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !until(&mut open, true).await {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            // Black-holed while waiting to read: stop reading at once.
            _ = until(&mut open, false) => continue,
        };
        // Bytes read just before a black hole are held until the link is restored.
        if !until(&mut open, true).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits until the link is open (`true`) or black-holed (`false`); false when the proxy is gone.
async fn until(open: &mut watch::Receiver<bool>, want: bool) -> bool {
    open.wait_for(|o| *o == want).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn forwards_and_black_holes() -> anyhow::Result<()> {
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let upstream = echo.local_addr()?;
        let mut server = JoinSet::new();
        server.spawn(async move {
            if let Ok((mut s, _)) = echo.accept().await {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let proxy = Proxy::start(upstream).await?;
        let mut c = TcpStream::connect(proxy.addr()).await?;
        let mut buf = [0u8; 4];
        c.write_all(b"ping").await?;
        c.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        proxy.black_hole();
        c.write_all(b"lost").await?;
        let r = tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut buf)).await;
        assert!(r.is_err(), "nothing may come back through a black hole");
        proxy.restore();
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf)).await??;
        assert_eq!(&buf, b"lost");
        Ok(())
    }
}
