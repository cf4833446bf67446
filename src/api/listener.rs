//! The API's listener: plain TCP, or HTTPS with rustls (`API.TLS.CertFile` / `KeyFile`).
//!
//! TLS handshakes run in their own tasks (at most 256 at once, each bounded by 10 s), so a client
//! that opens a connection and sends nothing holds up nobody; finished ones are handed to axum
//! through a channel. The certificate is re-read from disk when its files change (checked every
//! 10 s), so a renewed certificate needs no restart.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::auth::ClientAddr;

const MAX_HANDSHAKES: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const RELOAD_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} holds no PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("API.TLS: {0}")]
    Tls(String),
}

/// The serving certificate, swapped in place when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// A certificate chain and key from PEM files, for rustls.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, Error> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| Error::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|_| Error::Pem {
            path: cert.to_path_buf(),
            what: "certificate",
        })?;
    if chain.is_empty() {
        return Err(Error::Pem {
            path: cert.to_path_buf(),
            what: "certificate",
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|_| Error::Pem {
        path: key.to_path_buf(),
        what: "private key",
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| Error::Tls(e.to_string()))
}

impl ReloadingCert {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadingCert>, Error> {
        let ck = load_certified_key(cert, key)?;
        Ok(Arc::new(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new((Arc::new(ck), modified(cert).max(modified(key)))),
        }))
    }

    /// Re-reads the files if they changed; a broken new pair keeps the old one (and says so).
    pub fn refresh(&self) {
        let stamp = modified(&self.cert).max(modified(&self.key));
        if stamp == self.current.read().unwrap_or_else(|e| e.into_inner()).1 {
            return;
        }
        match load_certified_key(&self.cert, &self.key) {
            Ok(ck) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(ck), stamp);
                tracing::info!(cert = %self.cert.display(), "API certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "the API certificate changed on disk but cannot be loaded; still serving the previous one")
            }
        }
    }

    /// Refreshes every 10 s until `shutdown`.
    pub fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RELOAD_EVERY) => self.refresh(),
                }
            }
        });
    }

    /// The leaf certificate served now (for the expiry metric).
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .cert
            .first()
            .cloned()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .clone(),
        )
    }
}

/// Where API connections come from.
#[derive(Debug)]
pub enum ApiListener {
    Plain(TcpListener),
    Tls {
        local: SocketAddr,
        ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    },
}

impl ApiListener {
    /// HTTPS on `tcp` with the certificate `cert`: handshakes run in the background until `shutdown`.
    pub fn tls(
        tcp: TcpListener,
        cert: Arc<ReloadingCert>,
        shutdown: CancellationToken,
    ) -> Result<ApiListener, Error> {
        let local = tcp.local_addr().map_err(|e| Error::Tls(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (stream, addr) = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    r = tcp.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, as axum's own loop does.
                            tracing::warn!(error = %e, "accepting an API connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                // Beyond MAX_HANDSHAKES in progress, new connections are dropped at once.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(client = %addr, error = %e, "API TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(client = %addr, "API TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(ApiListener::Tls { local, ready })
    }
}

impl Listener for ApiListener {
    type Io = Either<TcpStream, TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self {
            ApiListener::Plain(l) => {
                let (s, a) = Listener::accept(l).await;
                (Either::Left(s), a)
            }
            ApiListener::Tls { ready, .. } => match ready.recv().await {
                Some((s, a)) => (Either::Right(s), a),
                // The accept loop ended (shutdown): wait for axum's graceful shutdown.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match self {
            ApiListener::Plain(l) => l.local_addr(),
            ApiListener::Tls { local, .. } => Ok(*local),
        }
    }
}

impl Connected<IncomingStream<'_, ApiListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, ApiListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}
