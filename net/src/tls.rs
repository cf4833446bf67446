//! Cluster certificates and mutual-TLS QUIC configs. Every node holds a certificate issued by the
//! cluster CA that binds its node id (the DNS subject alternative name) and its role (a URI SAN,
//! `urn:caravel:role:orchestrator` or `urn:caravel:role:compute`), so a peer's id and role are read
//! from the certificate it proved it owns — a node cannot claim another's id, and a compute node
//! cannot speak Raft or pose as an orchestrator. There is no plaintext mode. TLS 1.3 only, ring only.
//!
//! ```text
//!  listener          accepts client certificates     client side     accepts server certificates
//!  Raft / peer RPC   role orchestrator               Raft client     role orchestrator, the id dialled
//!  compute sessions  role compute, not on deny list  compute node    role orchestrator, any id
//! ```
//!
//! Checks run inside the TLS handshake ([`RoleClientVerifier`], [`RoleServerVerifier`]), so a refused
//! peer never gets a stream. Node certificates are valid for a year, the CA for ten; a node re-reads
//! its certificate and key when the files change ([`Identity::watch`]), so renewal
//! (`caravel cert renew`) needs no restart. A revoked certificate (a rejected or deleted node) is
//! refused by its SHA-256 fingerprint ([`DenyList`]), kept in the replicated state.
//!
//! Files (as `caravel cert` writes them): `DIR/ca.crt`, `DIR/ca.key`, `OUT/<id>.crt`, `OUT/<id>.key`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_util::sync::CancellationToken;

/// How long a node certificate is valid by default.
pub const NODE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a cluster CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Clock skew tolerated between the issuer and a verifier: certificates start this much earlier.
const BACKDATE: Duration = Duration::from_secs(3600);
/// How often a node looks for a renewed certificate on disk.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

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
    #[error("the certificate cannot be parsed")]
    BadCertificate,
    #[error(
        "{path} carries no role (it was issued before roles existed or by another tool): issue a new one with `caravel cert issue --role {expected}`"
    )]
    NoRole { path: PathBuf, expected: Role },
    #[error(
        "{path} is a {found} certificate, but this node runs as {expected}: issue one with `caravel cert issue --role {expected}`"
    )]
    WrongRole {
        path: PathBuf,
        found: Role,
        expected: Role,
    },
}

/// What a node is to the cluster, as its certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Orchestrator,
    Compute,
}

impl Role {
    const PREFIX: &'static str = "urn:caravel:role:";

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Orchestrator => "orchestrator",
            Role::Compute => "compute",
        }
    }

    fn uri(self) -> String {
        format!("{}{}", Self::PREFIX, self.as_str())
    }

    fn from_uri(uri: &str) -> Option<Role> {
        uri.strip_prefix(Self::PREFIX).and_then(|r| r.parse().ok())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "orchestrator" | "requester" => Ok(Role::Orchestrator),
            "compute" => Ok(Role::Compute),
            other => Err(format!(
                "{other:?} is not a role: use orchestrator or compute"
            )),
        }
    }
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

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + valid_for;
}

/// A new self-signed cluster CA, valid for [`CA_VALIDITY`].
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
    validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn node_params(node_id: &str, role: Role, valid_for: Duration) -> Result<CertificateParams, Error> {
    check_node_id(node_id)?;
    let mut params = CertificateParams::new(vec![node_id.to_string()])?;
    params.subject_alt_names.push(SanType::URI(
        role.uri()
            .try_into()
            .map_err(|_| Error::Tls("role URI".into()))?,
    ));
    params.distinguished_name.push(DnType::CommonName, node_id);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, valid_for);
    Ok(params)
}

fn issuer(ca: &PemPair) -> Result<Issuer<'static, KeyPair>, Error> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    Ok(Issuer::from_ca_cert_pem(&ca.cert, ca_key)?)
}

/// A certificate for `node_id` in `role`, signed by the CA, valid for [`NODE_VALIDITY`] as a QUIC
/// server and client.
pub fn issue(ca: &PemPair, node_id: &str, role: Role) -> Result<PemPair, Error> {
    issue_for(ca, node_id, role, NODE_VALIDITY)
}

/// [`issue`] with another validity (tests use short and already-expired ones).
pub fn issue_for(
    ca: &PemPair,
    node_id: &str,
    role: Role,
    valid_for: Duration,
) -> Result<PemPair, Error> {
    let key = KeyPair::generate()?;
    let cert = node_params(node_id, role, valid_for)?.signed_by(&key, &issuer(ca)?)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// [`issue`] with a validity window that ended `ago` (for tests of expiry).
pub fn issue_expired(
    ca: &PemPair,
    node_id: &str,
    role: Role,
    ago: Duration,
) -> Result<PemPair, Error> {
    let key = KeyPair::generate()?;
    let mut params = node_params(node_id, role, NODE_VALIDITY)?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - ago - Duration::from_secs(3600);
    params.not_after = now - ago;
    let cert = params.signed_by(&key, &issuer(ca)?)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A fresh key and a certificate signing request for it (a node joining by token). The request's
/// names are advisory: the signer binds the id and role it decided on.
pub fn new_request(node_id: &str) -> Result<(Vec<u8>, String), Error> {
    let key = KeyPair::generate()?;
    let params = node_params(node_id, Role::Compute, NODE_VALIDITY)?;
    let csr = params.serialize_request(&key)?;
    Ok((csr.der().to_vec(), key.serialize_pem()))
}

/// Signs the public key of a certificate signing request (its signature is verified) as `node_id`
/// in `role`; nothing else of the request is used. Returns the PEM certificate.
pub fn sign_request(
    ca: &PemPair,
    csr_der: &[u8],
    node_id: &str,
    role: Role,
) -> Result<String, Error> {
    let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
    let mut csr = rcgen::CertificateSigningRequestParams::from_der(&der)?;
    csr.params = node_params(node_id, role, NODE_VALIDITY)?;
    Ok(csr.signed_by(&issuer(ca)?)?.pem())
}

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub node_id: Option<String>,
    pub role: Option<Role>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the DER certificate, lower-case hex (what the deny list holds).
    pub fingerprint: String,
    pub is_ca: bool,
}

/// Lower-case hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a DER certificate's id, role, validity and fingerprint.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| Error::BadCertificate)?;
    let mut node_id = None;
    let mut role = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) if node_id.is_none() => {
                    node_id = Some(d.to_string())
                }
                x509_parser::extensions::GeneralName::URI(u) if role.is_none() => {
                    role = Role::from_uri(u)
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        node_id,
        role,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        fingerprint: fingerprint(der),
        is_ca: cert.is_ca(),
    })
}

/// When a DER certificate expires (Unix seconds).
pub fn not_after(der: &[u8]) -> Option<i64> {
    cert_info(der).ok().map(|i| i.not_after)
}

/// The certificates of a PEM text, as DER.
pub fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

/// The fingerprint of the first certificate of a PEM text (a CA's, for join tokens).
pub fn pem_fingerprint(pem: &str) -> Result<String, Error> {
    pem_certs(pem)
        .first()
        .map(|d| fingerprint(d))
        .ok_or(Error::Pem {
            path: PathBuf::from("<memory>"),
            what: "certificate",
        })
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    // Write next to the target and rename over it, so a node watching the file never reads half of
    // a renewed certificate.
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("pem")
    ));
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o644 });
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = opts.open(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
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

/// Reads a CA from its two files (orchestrators that sign join requests: `TLS.CA`, `TLS.CAKey`).
pub fn read_ca_files(cert: &Path, key: &Path) -> Result<PemPair, Error> {
    Ok(PemPair {
        cert: read(cert)?,
        key: read(key)?,
    })
}

/// Writes `dir/<id>.crt` and `dir/<id>.key` (mode 0600), each replaced atomically; returns their
/// paths.
pub fn write_node(dir: &Path, node_id: &str, pair: &PemPair) -> Result<(PathBuf, PathBuf), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let (crt, key) = (
        dir.join(format!("{node_id}.crt")),
        dir.join(format!("{node_id}.key")),
    );
    // Key first: a watcher that sees the new certificate must find its key.
    write(&key, &pair.key, true)?;
    write(&crt, &pair.cert, false)?;
    Ok((crt, key))
}

// ---------------------------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------------------------

/// Certificates (by fingerprint) and node ids that may no longer connect, each with the reason
/// shown to operators. Fed from the replicated state; cheap to clone and to check.
#[derive(Debug, Clone, Default)]
pub struct DenyList {
    inner: Arc<RwLock<Denied>>,
}

#[derive(Debug, Default)]
struct Denied {
    fingerprints: HashMap<String, String>,
    nodes: HashMap<String, String>,
}

impl DenyList {
    /// Replaces the whole list (after the replicated state changed).
    pub fn replace(&self, fingerprints: HashMap<String, String>, nodes: HashMap<String, String>) {
        let mut d = self.inner.write().unwrap_or_else(|e| e.into_inner());
        d.fingerprints = fingerprints;
        d.nodes = nodes;
    }

    /// Why a certificate may not connect, if it may not.
    pub fn check(&self, info: &CertInfo) -> Option<String> {
        let d = self.inner.read().unwrap_or_else(|e| e.into_inner());
        d.fingerprints.get(&info.fingerprint).cloned().or_else(|| {
            info.node_id
                .as_ref()
                .and_then(|id| d.nodes.get(id).cloned())
        })
    }

    pub fn len(&self) -> usize {
        let d = self.inner.read().unwrap_or_else(|e| e.into_inner());
        d.fingerprints.len() + d.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---------------------------------------------------------------------------------------------
// Verifiers
// ---------------------------------------------------------------------------------------------

/// What a listener accepts as a client.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    pub role: Role,
    pub deny: DenyList,
    /// Let clients without a certificate finish the handshake (the compute port, for nodes joining
    /// by token: the session layer then serves them only the join protocol).
    pub allow_anonymous: bool,
}

impl PeerPolicy {
    pub fn role(role: Role) -> PeerPolicy {
        PeerPolicy {
            role,
            deny: DenyList::default(),
            allow_anonymous: false,
        }
    }
}

/// Checks a client certificate: the CA chain and validity (rustls' WebPKI verifier), then the role
/// and the deny list.
#[derive(Debug)]
pub struct RoleClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    policy: PeerPolicy,
}

fn role_check(der: &[u8], expected: Role) -> Result<CertInfo, rustls::Error> {
    let info = cert_info(der)
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    match info.role {
        Some(r) if r == expected => Ok(info),
        // UnsupportedCertificate alert: the peer is told its certificate is of the wrong kind.
        _ => Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::InvalidPurpose,
        )),
    }
}

impl ClientCertVerifier for RoleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.policy.allow_anonymous
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = role_check(end_entity, self.policy.role)?;
        if let Some(reason) = self.policy.deny.check(&info) {
            tracing::info!(node = ?info.node_id, %reason, "refusing a revoked certificate");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How a client checks the server's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameCheck {
    /// The id the caller dialled (orchestrators calling each other know it).
    Dialled,
    /// Whatever id the certificate carries (compute nodes dial addresses, not ids).
    Any,
}

/// Checks a server certificate: the CA chain, validity and name (rustls' WebPKI verifier), then
/// its role.
#[derive(Debug)]
pub struct RoleServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    role: Role,
    names: NameCheck,
}

impl ServerCertVerifier for RoleServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let info = role_check(end_entity, self.role)?;
        let own;
        let name = match self.names {
            NameCheck::Dialled => server_name,
            NameCheck::Any => {
                own = info
                    .node_id
                    .and_then(|n| ServerName::try_from(n).ok())
                    .ok_or(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForName,
                    ))?;
                &own
            }
        };
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Trusts an orchestrator whose chain ends in a CA with a known SHA-256 fingerprint: a node
/// joining by token has no CA file yet, only the fingerprint in its token (kubeadm's discovery
/// hash). The orchestrator sends the CA in its chain; that CA must match the pin, and the leaf must
/// verify against it as an orchestrator certificate.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    ca_sha256: String,
}

impl PinnedCaVerifier {
    fn verifier_for(
        &self,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<RoleServerVerifier, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c.as_ref()) == self.ca_sha256)
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca.to_vec())).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(RoleServerVerifier {
            inner,
            role: Role::Orchestrator,
            names: NameCheck::Any,
        })
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier_for(intermediates)?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config without a certificate that trusts only orchestrators of the CA pinned by
/// `ca_sha256` (a node joining by token).
pub fn pinned_client_config(ca_sha256: &str, alpn: &[u8]) -> Result<rustls::ClientConfig, Error> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
            ca_sha256: ca_sha256.to_ascii_lowercase(),
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

fn roots_from_pem(ca_cert: &str) -> Result<RootCertStore, Error> {
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
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------------
// A node's identity, reloaded from disk when renewed
// ---------------------------------------------------------------------------------------------

/// The certificate and key a node presents; swapped in place when the files change.
#[derive(Debug)]
struct CertStore {
    files: Option<(PathBuf, PathBuf)>,
    /// The CA's PEM, appended to every chain presented.
    ca_pem: String,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn certified_key(cert: &str, key: &str) -> Result<CertifiedKey, Error> {
    let pem_err = |what| Error::Pem {
        path: PathBuf::from("<memory>"),
        what,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| pem_err("certificate"))?;
    if chain.is_empty() {
        return Err(pem_err("certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| pem_err("private key"))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| Error::Tls(e.to_string()))
}

/// The chain a node presents: its certificate, then the CA's (so a node joining by token can
/// check the CA against the fingerprint it pinned; verifiers ignore the extra certificate).
fn with_ca(ck: CertifiedKey, ca_pem: &str) -> CertifiedKey {
    let mut chain = ck.cert.clone();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).filter_map(Result::ok) {
        if !chain.iter().any(|c| c.as_ref() == ca.as_ref()) {
            chain.push(ca);
        }
    }
    CertifiedKey::new(chain, ck.key.clone())
}

impl CertStore {
    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Re-reads the files if they changed. A new pair must keep the id and role and chain to the
    /// CA; a broken one keeps the old pair (and says so).
    fn refresh(&self, roots: &RootCertStore, role: Option<Role>) {
        let Some((cert, key)) = &self.files else {
            return;
        };
        let stamp = modified(cert).max(modified(key));
        if stamp == self.current.read().unwrap_or_else(|e| e.into_inner()).1 {
            return;
        }
        let old_id = cert_info(self.get().cert[0].as_ref())
            .ok()
            .and_then(|i| i.node_id);
        let loaded = read(cert)
            .and_then(|c| Ok((c, read(key)?)))
            .and_then(|(c, k)| certified_key(&c, &k))
            .map(|ck| with_ca(ck, &self.ca_pem))
            .and_then(|ck| {
                let info = cert_info(ck.cert[0].as_ref())?;
                if info.node_id != old_id {
                    return Err(Error::Tls(format!(
                        "the renewed certificate is for {:?}, not {:?}",
                        info.node_id, old_id
                    )));
                }
                if role.is_some() && info.role != role {
                    return Err(Error::Tls(
                        "the renewed certificate has another role".into(),
                    ));
                }
                verify_chain(roots, &ck)?;
                Ok(ck)
            });
        match loaded {
            Ok(ck) => {
                let until = not_after(ck.cert[0].as_ref()).unwrap_or_default();
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(ck), stamp);
                tracing::info!(cert = %cert.display(), not_after = until, "node certificate reloaded");
            }
            Err(e) => {
                // Remember the stamp so a broken file is reported once, not every 10 s.
                self.current.write().unwrap_or_else(|e| e.into_inner()).1 = stamp;
                tracing::warn!(cert = %cert.display(), error = %e, "the certificate changed on disk but cannot be used; keeping the previous one");
            }
        }
    }
}

/// Whether a certificate chains to the roots (as a client certificate: EKU clientAuth).
fn verify_chain(roots: &RootCertStore, ck: &CertifiedKey) -> Result<(), Error> {
    let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider())
        .build()
        .map_err(|e| Error::Tls(e.to_string()))?;
    v.verify_client_cert(&ck.cert[0], &ck.cert[1..], UnixTime::now())
        .map(|_| ())
        .map_err(|e| Error::Tls(format!("it does not verify against the cluster CA: {e}")))
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What a node needs for mutual TLS: the CA to trust, its certificate chain and key.
#[derive(Debug, Clone)]
pub struct Identity {
    roots: Arc<RootCertStore>,
    store: Arc<CertStore>,
    /// The key the node started with: secrets derived from it stay stable across renewals.
    initial_key: Arc<Vec<u8>>,
}

impl Identity {
    pub fn from_pem(ca_cert: &str, cert: &str, key: &str) -> Result<Self, Error> {
        let roots = roots_from_pem(ca_cert)?;
        let ck = with_ca(certified_key(cert, key)?, ca_cert);
        let key_der = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| Error::Pem {
            path: PathBuf::from("<memory>"),
            what: "private key",
        })?;
        Ok(Identity {
            roots: Arc::new(roots),
            store: Arc::new(CertStore {
                files: None,
                ca_pem: ca_cert.to_string(),
                current: RwLock::new((Arc::new(ck), None)),
            }),
            initial_key: Arc::new(key_der.secret_der().to_vec()),
        })
    }

    /// Loads `--tls-ca`, `--tls-cert`, `--tls-key`; errors name the offending file.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, Error> {
        let with_path = |e: Error, p: &Path| match e {
            Error::Pem { what, .. } => Error::Pem {
                path: p.to_path_buf(),
                what,
            },
            e => e,
        };
        let (ca_text, cert_text, key_text) = (read(ca)?, read(cert)?, read(key)?);
        let id = Identity::from_pem(&ca_text, &cert_text, &key_text).map_err(|e| match &e {
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
        })?;
        let stamp = modified(cert).max(modified(key));
        let ck = id.store.get();
        Ok(Identity {
            store: Arc::new(CertStore {
                files: Some((cert.to_path_buf(), key.to_path_buf())),
                ca_pem: ca_text,
                current: RwLock::new((ck, stamp)),
            }),
            ..id
        })
    }

    /// What this node's own certificate says.
    pub fn info(&self) -> Result<CertInfo, Error> {
        cert_info(self.store.get().cert[0].as_ref())
    }

    /// This node's certificate as DER (the current one, after any renewal).
    pub fn leaf_der(&self) -> Vec<u8> {
        self.store.get().cert[0].to_vec()
    }

    /// The node id bound into this certificate.
    pub fn node_id(&self) -> Option<String> {
        self.info().ok().and_then(|i| i.node_id)
    }

    /// The cluster CA's certificate (PEM), as loaded.
    pub fn ca_pem(&self) -> &str {
        &self.store.ca_pem
    }

    /// The SHA-256 fingerprint of the cluster CA's certificate (what join tokens pin).
    pub fn ca_fingerprint(&self) -> Result<String, Error> {
        pem_fingerprint(&self.store.ca_pem)
    }

    /// Refuses to run a node whose certificate is not for `role` (with the command that fixes it).
    pub fn require_role(&self, role: Role) -> Result<(), Error> {
        let path = self
            .store
            .files
            .as_ref()
            .map_or_else(|| PathBuf::from("the certificate"), |(c, _)| c.clone());
        match self.info()?.role {
            Some(r) if r == role => Ok(()),
            Some(found) => Err(Error::WrongRole {
                path,
                found,
                expected: role,
            }),
            None => Err(Error::NoRole {
                path,
                expected: role,
            }),
        }
    }

    /// Picks up a renewed certificate and key from disk (checked every 10 s) until `shutdown`.
    pub fn watch(&self, shutdown: CancellationToken) {
        if self.store.files.is_none() {
            return;
        }
        let (store, roots) = (self.store.clone(), self.roots.clone());
        let role = self.info().ok().and_then(|i| i.role);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RELOAD_EVERY) => store.refresh(&roots, role),
                }
            }
        });
    }

    /// Checks the files for a renewal now (tests; [`Identity::watch`] does it periodically).
    pub fn refresh_now(&self) {
        let role = self.info().ok().and_then(|i| i.role);
        self.store.refresh(&self.roots, role);
    }

    /// A 32-byte secret for `label`, derived from this node's private key: stable across restarts
    /// of the node, different per label, and never the key itself.
    pub fn derived_secret(&self, label: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"caravel derived secret\0");
        ctx.update(label.as_bytes());
        ctx.update(b"\0");
        ctx.update(&self.initial_key);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// A rustls server config that requires (or, with `allow_anonymous`, offers) a client
    /// certificate of the cluster CA in `policy.role`, not on the deny list.
    pub fn rustls_server_config(
        &self,
        alpns: &[&[u8]],
        policy: &PeerPolicy,
    ) -> Result<rustls::ServerConfig, Error> {
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider());
        if policy.allow_anonymous {
            builder = builder.allow_unauthenticated();
        }
        let inner = builder.build().map_err(|e| Error::Tls(e.to_string()))?;
        let verifier = Arc::new(RoleClientVerifier {
            inner,
            policy: policy.clone(),
        });
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.store.clone());
        tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
        // No resumption: a resumed handshake skips the client's certificate, and with it the role,
        // expiry and deny-list checks (a revoked node could come back on an old ticket).
        tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        tls.send_tls13_tickets = 0;
        Ok(tls)
    }

    /// A rustls client config that presents this node's certificate and trusts only servers of
    /// the cluster CA in `role`.
    pub fn rustls_client_config(
        &self,
        alpn: &[u8],
        role: Role,
        names: NameCheck,
    ) -> Result<rustls::ClientConfig, Error> {
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RoleServerVerifier { inner, role, names }))
            .with_client_cert_resolver(self.store.clone());
        tls.alpn_protocols = vec![alpn.to_vec()];
        // Every connection is verified in full (see the server side).
        tls.resumption = rustls::client::Resumption::disabled();
        Ok(tls)
    }

    /// A QUIC server config: see [`Identity::rustls_server_config`].
    pub fn server_config(
        &self,
        alpn: &[u8],
        policy: &PeerPolicy,
    ) -> Result<quinn::ServerConfig, Error> {
        let tls = self.rustls_server_config(&[alpn], policy)?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
    }

    /// A QUIC client config: see [`Identity::rustls_client_config`].
    pub fn client_config(
        &self,
        alpn: &[u8],
        role: Role,
        names: NameCheck,
    ) -> Result<quinn::ClientConfig, Error> {
        let tls = self.rustls_client_config(alpn, role, names)?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(quinn::ClientConfig::new(Arc::new(quic)))
    }
}

/// The DER leaf certificate the peer of `conn` presented, if any.
pub fn peer_leaf(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(|c| c.to_vec())
}

/// What the certificate the peer of `conn` presented says.
pub fn peer_info(conn: &quinn::Connection) -> Result<CertInfo, Error> {
    cert_info(&peer_leaf(conn).ok_or(Error::NoPeerCertificate)?)
}

/// The node id bound into the certificate the peer of `conn` presented.
pub fn peer_node_id(conn: &quinn::Connection) -> Result<String, Error> {
    peer_info(conn)?.node_id.ok_or(Error::NoNodeId)
}

/// A person's explanation of a TLS alert a peer refused us with, if it is one of ours. QUIC
/// carries the alert as a crypto error code ("the cryptographic handshake failed: error 44").
pub fn explain_refusal(error: &str) -> Option<&'static str> {
    let e = error.to_ascii_lowercase();
    let alert =
        |n: u8, name: &str| e.contains(&format!("handshake failed: error {n}")) || e.contains(name);
    if alert(44, "revoked") {
        Some(
            "this node's certificate is revoked: an operator rejected or deleted the node (caravel node approve, or join again with a new token)",
        )
    } else if alert(43, "unsupportedcertificate") || e.contains("purpose") {
        Some(
            "the certificate is of the wrong role for this port (orchestrators need --role orchestrator, compute nodes --role compute)",
        )
    } else if alert(45, "expired") {
        Some("a certificate has expired: renew it with `caravel cert renew`")
    } else if alert(48, "unknownca") || e.contains("unknownissuer") || e.contains("unknown issuer")
    {
        Some("the certificate is not from this cluster's CA")
    } else {
        None
    }
}
