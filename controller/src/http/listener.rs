//! The side port's connections: plaintext HTTP always, and, when the controller serves TLS, TLS
//! on the same port, told apart by the first byte (a TLS handshake starts with 0x16, an HTTP
//! request with a letter). `/healthz`, `/readyz` and scrapers keep speaking plain HTTP; people
//! reach the dashboard over TLS with their client certificate or a bearer token.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::tls::ServerTls;

/// How long a client has to send its first byte and finish a TLS handshake.
const FIRST_BYTES: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// One accepted connection.
pub enum Conn {
    /// Plain HTTP.
    Plain(TcpStream),
    /// HTTP over TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Who is on the other end of a connection, for the handlers' checks.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's address.
    pub addr: SocketAddr,
    /// True over TLS.
    pub tls: bool,
    /// The client certificate (DER) the peer presented over TLS, verified against the client CA.
    pub cert: Option<Vec<u8>>,
}

/// The side port's listener (see the module documentation).
pub struct SideListener {
    rx: mpsc::Receiver<(Conn, PeerInfo)>,
    local: SocketAddr,
}

impl SideListener {
    /// Accepts on `listener` until `shutdown`; with `tls`, connections that open with a TLS
    /// handshake are served over it. Handshakes run on `tasks`, so a slow client holds up no
    /// other.
    pub fn start(
        listener: TcpListener,
        tls: Option<Arc<ServerTls>>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let handshakes = tasks.clone();
        tasks.spawn(async move {
            loop {
                let (tcp, addr) = tokio::select! {
                    () = shutdown.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "side port accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let plain = PeerInfo {
                    addr,
                    tls: false,
                    cert: None,
                };
                let Some(tls) = tls.clone() else {
                    if tx.send((Conn::Plain(tcp), plain)).await.is_err() {
                        break;
                    }
                    continue;
                };
                let tx = tx.clone();
                let stop = shutdown.clone();
                handshakes.spawn(async move {
                    let opened = tokio::select! {
                        () = stop.cancelled() => return,
                        opened = tokio::time::timeout(FIRST_BYTES, open(tcp, addr, &tls)) => opened,
                    };
                    match opened {
                        Ok(Ok(conn)) => {
                            let _ = tx.send(conn).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(peer = %addr, error = %e, "side port connection refused");
                        }
                        Err(_) => {
                            tracing::info!(peer = %addr, "side port client sent nothing in time");
                        }
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }
}

/// Looks at the first byte, and does the TLS handshake when it opens one.
async fn open(tcp: TcpStream, addr: SocketAddr, tls: &ServerTls) -> io::Result<(Conn, PeerInfo)> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    if n == 0 || first[0] != TLS_HANDSHAKE {
        let plain = PeerInfo {
            addr,
            tls: false,
            cert: None,
        };
        return Ok((Conn::Plain(tcp), plain));
    }
    let stream = tls.current_acceptor().accept(tcp).await?;
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    let peer = PeerInfo {
        addr,
        tls: true,
        cert,
    };
    Ok((Conn::Tls(Box::new(stream)), peer))
}

impl axum::serve::Listener for SideListener {
    type Io = Conn;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Conn, PeerInfo) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop stopped (shutdown): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<PeerInfo> {
        Ok(PeerInfo {
            addr: self.local,
            tls: false,
            cert: None,
        })
    }
}

impl Connected<IncomingStream<'_, SideListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, SideListener>) -> Self {
        stream.remote_addr().clone()
    }
}

// === impl Conn ===

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
