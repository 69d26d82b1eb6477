//! The controller's TLS: TLS 1.3 only (rustls with ring), a client certificate verified against
//! the client CA when one is presented (a caller without one may still bring a bearer token on
//! the admin API), and the certificate, key and client CA re-read when their files change, so
//! that rotation needs no restart: open connections keep their session, new handshakes use the
//! new files.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are checked for a change.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("reading {what} from {path}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A file holds no certificate.
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    /// rustls refused the certificates or key.
    #[error("building the TLS configuration")]
    Rustls(#[from] rustls::Error),
    /// The client CA is unusable.
    #[error("the client CA")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// The files the server's TLS is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The controller's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that signs node and admin client certificates (PEM).
    pub client_ca: PathBuf,
}

/// Certificates of a PEM file, at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|source| TlsError::Pem {
            what: "certificates",
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Certificates of PEM text.
pub fn read_certs_pem(
    text: &str,
) -> Result<Vec<CertificateDer<'static>>, rustls::pki_types::pem::Error> {
    CertificateDer::pem_slice_iter(text.as_bytes()).collect()
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        what: "a private key",
        path: path.to_owned(),
        source,
    })
}

/// The rustls server configuration of `files`: TLS 1.3, h2, client certificates from the client
/// CA verified when presented (the API then decides what a caller without one may do).
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&files.client_ca)? {
        roots.add(ca)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The server's TLS, rebuilt when its files change.
pub struct ServerTls {
    files: TlsFiles,
    /// The application protocols offered (h2 for gRPC, http/1.1 for the side port).
    alpn: Vec<Vec<u8>>,
    acceptor: RwLock<(Fingerprint, TlsAcceptor)>,
}

/// The modification times and sizes of the three files: a change of any means a reload.
pub(crate) type Fingerprint = Vec<Option<(SystemTime, u64)>>;

pub(crate) fn fingerprint(files: &TlsFiles) -> Fingerprint {
    [&files.cert, &files.key, &files.client_ca]
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

// === impl ServerTls ===

impl ServerTls {
    /// Loads `files`; an error here stops the controller from starting.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        Self::load_for(files, b"h2")
    }

    /// Loads `files` for a server speaking `alpn` (`http/1.1` for the HTTP side port).
    pub fn load_for(files: TlsFiles, alpn: &[u8]) -> Result<Arc<Self>, TlsError> {
        let print = fingerprint(&files);
        let alpn = vec![alpn.to_vec()];
        let mut config = server_config(&files)?;
        config.alpn_protocols.clone_from(&alpn);
        Ok(Arc::new(Self {
            files,
            alpn,
            acceptor: RwLock::new((print, TlsAcceptor::from(Arc::new(config)))),
        }))
    }

    /// The acceptor of the current files, re-read first when they changed (for a server that
    /// does not run [`Self::incoming`]'s reload poll).
    pub fn current_acceptor(&self) -> TlsAcceptor {
        self.reload_if_changed();
        self.acceptor()
    }

    fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .clone()
    }

    /// Rebuilds the configuration if a file changed; a broken new file keeps the old
    /// configuration (and is logged), so that a half-written rotation never stops the service.
    fn reload_if_changed(&self) {
        let print = fingerprint(&self.files);
        let current = self
            .acceptor
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone();
        if print == current {
            return;
        }
        match server_config(&self.files) {
            Ok(mut config) => {
                config.alpn_protocols.clone_from(&self.alpn);
                *self
                    .acceptor
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    (print, TlsAcceptor::from(Arc::new(config)));
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate files reloaded");
            }
            Err(e) => {
                tracing::warn!(
                    error = %crate::server::message_chain(&e),
                    "TLS certificate files changed but do not load; keeping the previous ones"
                );
            }
        }
    }

    /// Accepts connections on `listener` and hands over those whose TLS handshake succeeds.
    /// A failed handshake (a plaintext client, a certificate from another CA, an expired one)
    /// is logged with its reason and ends only that connection.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let me = self.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let mut poll = tokio::time::interval(RELOAD_POLL);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = poll.tick() => me.reload_if_changed(),
                }
            }
        });
        let me = self.clone();
        let handshakes = tasks.clone();
        tasks.spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    () = shutdown.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = me.acceptor();
                let tx = tx.clone();
                handshakes.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "TLS handshake refused");
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}
