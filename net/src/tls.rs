//! Cluster certificates and mutual-TLS QUIC configs. Every node (orchestrator or compute) holds a
//! certificate issued by the cluster CA with its node id as the DNS subject alternative name, so a
//! peer's id is read from the certificate it proved it owns — a node cannot claim another's id.
//! There is no plaintext mode. TLS 1.3 only, ring only.
//!
//! Files (as `caravel cert` writes them): `DIR/ca.crt`, `DIR/ca.key`, `OUT/<id>.crt`, `OUT/<id>.key`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{0:?} is not a valid node id: use 1-63 lower-case letters, digits and '-', starting with a letter or digit"
    )]
    BadNodeId(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("the peer's certificate names no node id (DNS subject alternative name)")]
    NoNodeId,
}

/// A node id usable as a DNS name in a certificate.
pub fn check_node_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::BadNodeId(id.to_string()))
    }
}

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct PemPair {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PemPair { key: <redacted> }")
    }
}

/// A new self-signed cluster CA.
pub fn new_ca(cluster: &str) -> Result<PemPair, Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("caravel cluster CA {cluster}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for `node_id`, signed by the CA, valid as a QUIC server and client.
pub fn issue(ca: &PemPair, node_id: &str) -> Result<PemPair, Error> {
    check_node_id(node_id)?;
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![node_id.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| Error::Write {
                path: path.to_path_buf(),
                source,
            },
        )?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `dir/ca.crt` and `dir/ca.key` (mode 0600).
pub fn write_ca(dir: &Path, ca: &PemPair) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write(&dir.join("ca.crt"), &ca.cert, false)?;
    write(&dir.join("ca.key"), &ca.key, true)
}

pub fn read_ca(dir: &Path) -> Result<PemPair, Error> {
    Ok(PemPair {
        cert: read(&dir.join("ca.crt"))?,
        key: read(&dir.join("ca.key"))?,
    })
}

/// Writes `dir/<id>.crt` and `dir/<id>.key` (mode 0600); returns their paths.
pub fn write_node(dir: &Path, node_id: &str, pair: &PemPair) -> Result<(PathBuf, PathBuf), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let (crt, key) = (
        dir.join(format!("{node_id}.crt")),
        dir.join(format!("{node_id}.key")),
    );
    write(&crt, &pair.cert, false)?;
    write(&key, &pair.key, true)?;
    Ok((crt, key))
}

/// What a node needs for mutual TLS: the CA to trust, its certificate chain and key.
#[derive(Debug)]
pub struct Identity {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    pub fn from_pem(ca_cert: &str, cert: &str, key: &str) -> Result<Self, Error> {
        let pem_err = |what| Error::Pem {
            path: PathBuf::from("<memory>"),
            what,
        };
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_cert.as_bytes()) {
            roots
                .add(c.map_err(|_| pem_err("CA certificate"))?)
                .map_err(|e| Error::Tls(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(pem_err("CA certificate"));
        }
        let chain: Vec<_> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| pem_err("certificate"))?;
        if chain.is_empty() {
            return Err(pem_err("certificate"));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| pem_err("private key"))?;
        Ok(Identity {
            roots: Arc::new(roots),
            chain,
            key,
        })
    }

    /// A 32-byte secret for `label`, derived from this node's private key: stable across restarts
    /// of the node, different per label, and never the key itself.
    pub fn derived_secret(&self, label: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"caravel derived secret\0");
        ctx.update(label.as_bytes());
        ctx.update(b"\0");
        ctx.update(self.key.secret_der());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// Loads `--tls-ca`, `--tls-cert`, `--tls-key`.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, Error> {
        let with_path = |e: Error, p: &Path| match e {
            Error::Pem { what, .. } => Error::Pem {
                path: p.to_path_buf(),
                what,
            },
            e => e,
        };
        let (ca_text, cert_text, key_text) = (read(ca)?, read(cert)?, read(key)?);
        Identity::from_pem(&ca_text, &cert_text, &key_text).map_err(|e| match &e {
            Error::Pem {
                what: "CA certificate",
                ..
            } => with_path(e, ca),
            Error::Pem {
                what: "certificate",
                ..
            } => with_path(e, cert),
            Error::Pem { .. } => with_path(e, key),
            _ => e,
        })
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A QUIC server config that requires a client certificate from the cluster CA.
    pub fn server_config(&self, alpn: &[u8]) -> Result<quinn::ServerConfig, Error> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), Self::provider())
                .build()
                .map_err(|e| Error::Tls(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| Error::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![alpn.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
    }

    /// A QUIC client config that presents this node's certificate and trusts only the cluster CA.
    pub fn client_config(&self, alpn: &[u8]) -> Result<quinn::ClientConfig, Error> {
        let mut tls = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| Error::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![alpn.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(quinn::ClientConfig::new(Arc::new(quic)))
    }
}

/// The node id bound into the certificate the peer of `conn` presented.
pub fn peer_node_id(conn: &quinn::Connection) -> Result<String, Error> {
    let identity = conn.peer_identity().ok_or(Error::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| Error::NoPeerCertificate)?;
    let leaf = chain.first().ok_or(Error::NoPeerCertificate)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|_| Error::NoNodeId)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| Error::NoNodeId)?
        .ok_or(Error::NoNodeId)?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .ok_or(Error::NoNodeId)
}
