//! TLS material and rustls configurations: parses CA bundles, certificate chains and private
//! keys (read from the files named on the command line, or handed over in memory as [`Pem`], as
//! the Kubernetes Secret's keys are), builds the forwarder's `ClientConfig` (mTLS towards the
//! tailer), the Kubernetes API client's `ClientConfig` and the receiver's `ServerConfig`, and
//! turns handshake failures into messages an operator can act on. Sans-IO: the event loop owns
//! the sockets and drives the connections; nothing here touches the network.
//!
//! Three behaviours differ from a default rustls client on purpose:
//! - `--tls-verify-hostname=false` keeps the whole chain verification (CA, validity, key usage)
//!   and only forgives a name mismatch, which is what fluent-bit 1.9 did for the tailer's
//!   CN-only certificates (rustls, unlike OpenSSL, never looks at the CN).
//! - Certificate and key are matched by comparing SubjectPublicKeyInfo bytes taken with a small
//!   DER reader instead of rustls' `keys_match`, which parses with webpki and therefore refuses
//!   X.509 v1 client certificates (`openssl x509 -req` without `-extfile` makes those) that the
//!   OpenSSL-based fluentd/fluent-bit receivers accept.
//! - The API client's `insecure-skip-tls-verify` skips only the certificate checks: handshake
//!   signatures are still verified against the presented certificate, and a kubeconfig without
//!   a CA trusts the webpki-roots set, since a scratch image has no system roots.

use crate::escape;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::version::{TLS12, TLS13};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ConfigBuilder, DigitallySignedStruct, Error,
    RootCertStore, ServerConfig, SignatureScheme, SupportedProtocolVersion,
};

/// PEM files bigger than this are refused before parsing: the biggest legitimate input is a CA
/// bundle (the Mozilla set is about 250 KB), and a wrong path (a log, a device) must not be
/// read into memory whole.
const MAX_PEM_FILE: u64 = 4 << 20;

const BOTH_VERSIONS: &[&SupportedProtocolVersion] = &[&TLS13, &TLS12];

/// Files of the forwarder's client identity and trust, already resolved against `--tls-basedir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    /// `--tls-ca-file`: the CA(s) that issue the tailer's server certificate; the only roots.
    pub ca: PathBuf,
    /// `--tls-crt-file`: our client certificate, optionally followed by intermediates.
    pub cert: PathBuf,
    /// `--tls-key-file`: the private key of `cert` (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key: PathBuf,
}

/// Everything the client configuration depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub files: ClientFiles,
    /// `--tls-vhost`: sent as SNI and checked against the server certificate's SANs.
    pub vhost: String,
    /// `--tls-verify-hostname`: false forgives only a name mismatch, never a chain problem.
    pub verify_hostname: bool,
}

/// Files of the receiver's (tailer's) server identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, every client must present a certificate issued by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// PEM text and where it came from. `origin` is what every error about it names: a file path,
/// or for material held in memory something like `secret audit/audittailer-client key
/// "tls.crt"`. Debug shows the origin and the length only, since `bytes` may be a private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    pub origin: String,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pem")
            .field("origin", &self.origin)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Pem {
    /// Reads a PEM file (at most [`MAX_PEM_FILE`] bytes); the origin is the path.
    pub fn read(path: &Path) -> Result<Pem, TlsError> {
        let read_err = |source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_PEM_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_PEM_FILE {
            return Err(TlsError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        Ok(Pem {
            origin: path.display().to_string(),
            bytes,
        })
    }
}

/// A client configuration plus the slot where its verifier leaves the server certificate of
/// the latest handshake, for [`explain`] (rustls exposes `peer_certificates()` only after a
/// successful handshake).
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    pub presented: PresentedCert,
    /// Where the trusted CAs came from (a path or a Secret key), for [`ClientTls::explain`].
    pub ca_origin: String,
}

impl ClientTls {
    /// Like [`explain`], with the presented certificate of this config's latest handshake, and
    /// naming the CA's origin where [`explain`] names `--tls-ca-file`: for material that did
    /// not come from the command line (a Secret), the flag would point the operator elsewhere.
    pub fn explain(&self, err: &Error, vhost: &str) -> String {
        let cert = self.presented.get();
        explain_with_ca(err, vhost, cert.as_deref(), &self.ca_origin)
    }
}

/// The end-entity certificate the server presented in the most recent handshake made with one
/// [`ClientTls`] config. Shared by all connections of that config, so it is meaningful when
/// connections are made one at a time (the forwarder has at most one): [`PresentedCert::clear`]
/// before connecting, [`PresentedCert::get`] after a failure.
#[derive(Debug, Clone, Default)]
pub struct PresentedCert(Arc<Mutex<Option<Vec<u8>>>>);

impl PresentedCert {
    pub fn get(&self) -> Option<Vec<u8>> {
        self.lock().clone()
    }

    pub fn clear(&self) {
        *self.lock() = None;
    }

    fn set(&self, der: &[u8]) {
        *self.lock() = Some(der.to_vec());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        // A panic while holding this lock cannot leave the Option half-written, so a poisoned
        // lock still holds a usable value.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Why TLS material could not be loaded or a configuration not be built. Display names the
/// file, the [`Pem::origin`] (or flag) and what is wrong with it, never the material itself.
#[derive(Debug)]
pub enum TlsError {
    /// The file could not be opened or read.
    Read { path: PathBuf, source: io::Error },
    /// The file is bigger than any PEM file we expect.
    TooLarge { path: PathBuf },
    /// The PEM structure is broken (bad base64, missing END line).
    Pem { origin: String, detail: String },
    /// No `CERTIFICATE` block; `holds_key` when the PEM has a private key instead.
    NoCertificates { origin: String, holds_key: bool },
    /// No private key block; `holds_cert` when the PEM has a certificate instead.
    NoPrivateKey { origin: String, holds_cert: bool },
    /// The key is password protected, which a daemon cannot unlock.
    EncryptedKey { origin: String },
    /// Certificate number `index` (1-based) of the PEM is not usable X.509.
    BadCertificate {
        origin: String,
        index: usize,
        detail: String,
    },
    /// The key block decodes but is not a key the ring provider can sign with.
    BadKey { origin: String, detail: String },
    /// The key belongs to another certificate; both are origins.
    KeyMismatch { key: String, cert: String },
    /// `--tls-vhost` is neither a DNS name nor an IP address.
    InvalidVhost { vhost: String },
    /// rustls refused to build a configuration for a reason not tied to one file.
    Config { what: &'static str, detail: String },
}

const NO_CERTIFICATES: &str =
    "no certificates found (expected \"-----BEGIN CERTIFICATE-----\" blocks)";
const NO_PRIVATE_KEY: &str =
    "no private key found (expected a PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)";
const SWAPPED: &str = "are the certificate and key files swapped?";

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, source } => match source.kind() {
                io::ErrorKind::NotFound => write!(f, "{}: file not found", path.display()),
                io::ErrorKind::PermissionDenied => {
                    write!(f, "{}: permission denied", path.display())
                }
                _ => write!(f, "{}: cannot read: {source}", path.display()),
            },
            TlsError::TooLarge { path } => write!(
                f,
                "{}: larger than {} MiB, not a PEM certificate or key file",
                path.display(),
                MAX_PEM_FILE >> 20
            ),
            TlsError::Pem { origin, detail } => write!(f, "{origin}: invalid PEM: {detail}"),
            TlsError::NoCertificates { origin, holds_key } => {
                write!(f, "{origin}: {NO_CERTIFICATES}")?;
                if *holds_key {
                    write!(f, "; the file holds a private key: {SWAPPED}")?;
                }
                Ok(())
            }
            TlsError::NoPrivateKey { origin, holds_cert } => {
                write!(f, "{origin}: {NO_PRIVATE_KEY}")?;
                if *holds_cert {
                    write!(f, "; the file holds a certificate: {SWAPPED}")?;
                }
                Ok(())
            }
            TlsError::EncryptedKey { origin } => write!(
                f,
                "{origin}: the private key is encrypted; give an unencrypted key \
                 (openssl pkey -in KEY -out PLAIN)"
            ),
            TlsError::BadCertificate {
                origin,
                index,
                detail,
            } => write!(
                f,
                "{origin}: certificate {index} is not a valid X.509 certificate: {detail}"
            ),
            TlsError::BadKey { origin, detail } => {
                write!(f, "{origin}: unusable private key: {detail}")
            }
            TlsError::KeyMismatch { key, cert } => write!(
                f,
                "{key}: the private key does not match the certificate in {cert}"
            ),
            TlsError::InvalidVhost { vhost } => write!(
                f,
                "--tls-vhost {vhost:?}: not a valid DNS name or IP address"
            ),
            TlsError::Config { what, detail } => write!(f, "{what}: {detail}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Builds the client configuration: TLS 1.3 and 1.2, roots only from `--tls-ca-file`, our
/// certificate for mTLS, and the hostname policy of `verify_hostname`.
pub fn client_tls(s: &ClientSettings) -> Result<ClientTls, TlsError> {
    let ca = Pem::read(&s.files.ca)?;
    let cert = Pem::read(&s.files.cert)?;
    let key = Pem::read(&s.files.key)?;
    let mut t = client_tls_from_pem(&ca, &cert, &key, &s.vhost, s.verify_hostname)?;
    // Failures are explained in terms of the flag the operator sets, not the joined path.
    t.ca_origin = "--tls-ca-file".into();
    Ok(t)
}

/// [`client_tls`] from material held in memory (the tailer's client Secret): roots only from
/// `ca`, `cert` (optionally followed by intermediates) and its `key` for mTLS, `vhost` as SNI
/// and name to check unless `verify_hostname` is false. Errors name the [`Pem::origin`].
pub fn client_tls_from_pem(
    ca: &Pem,
    cert: &Pem,
    key: &Pem,
    vhost: &str,
    verify_hostname: bool,
) -> Result<ClientTls, TlsError> {
    // Validated here too so that a bad --tls-vhost fails at startup, not at the first connect.
    server_name(vhost)?;
    let provider = provider();
    let trust = Trust::Roots {
        webpki: webpki_verifier(load_roots(ca)?, &provider)?,
        verify_hostname,
    };
    let verifier = Arc::new(ServerVerifier::new(trust, &provider));
    let presented = verifier.presented.clone();
    let identity = load_identity(&provider, cert, key)?;
    let config = client_builder(provider)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity)));
    Ok(ClientTls {
        config: Arc::new(config),
        presented,
        ca_origin: ca.origin.clone(),
    })
}

/// The Kubernetes API client's configuration, from kubeconfig material: TLS 1.3 and 1.2, ALPN
/// `http/1.1`.
/// - Roots: `ca` (`certificate-authority(-data)`) when given, otherwise the Mozilla roots of
///   webpki-roots. client-go would use the system roots there, but a scratch image has none,
///   and an apiserver with a publicly issued certificate is the only case a CA-less kubeconfig
///   can mean.
/// - `insecure` (`insecure-skip-tls-verify`): any server certificate is accepted, but the
///   handshake signatures are still checked against it, so the peer must hold its key. Like
///   client-go, a CA together with `insecure` is refused rather than silently ignored.
/// - `identity` (`client-certificate(-data)`, `client-key(-data)`): certificate and key for
///   client-certificate authentication, checked to belong together.
///
/// The server name to verify (the `server` URL's host or `tls-server-name`) is given per
/// connection, as for every rustls client.
pub fn api_client_config(
    ca: Option<&Pem>,
    insecure: bool,
    identity: Option<(&Pem, &Pem)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let roots = match (ca, insecure) {
        (Some(ca), true) => {
            return Err(TlsError::Config {
                what: "insecure-skip-tls-verify",
                detail: format!(
                    "cannot be combined with a certificate authority ({}); client-go refuses \
                     this combination too: remove one of them",
                    ca.origin
                ),
            })
        }
        (None, true) => None,
        (Some(ca), false) => Some(load_roots(ca)?),
        (None, false) => Some(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
    };
    let trust = match roots {
        Some(roots) => Trust::Roots {
            webpki: webpki_verifier(roots, &provider)?,
            verify_hostname: true,
        },
        None => Trust::Anything,
    };
    let verifier = Arc::new(ServerVerifier::new(trust, &provider));
    let identity = match identity {
        Some((cert, key)) => Some(load_identity(&provider, cert, key)?),
        None => None,
    };
    let builder = client_builder(provider)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(identity) => {
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity)))
        }
        None => builder.with_no_client_auth(),
    };
    // The API client speaks HTTP/1.1 only; saying so keeps an HTTP/2-capable front (an L7 load
    // balancer) from choosing h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn client_builder(
    provider: Arc<CryptoProvider>,
) -> Result<ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(BOTH_VERSIONS)
        .map_err(|e| TlsError::Config {
            what: "TLS 1.2/1.3 with the ring provider",
            detail: e.to_string(),
        })
}

fn webpki_verifier(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config {
            what: "server certificate verifier",
            detail: e.to_string(),
        })
}

/// The receiver's configuration: TLS 1.3 and 1.2; with `client_ca`, clients without a
/// certificate issued by it are refused.
pub fn server_config(f: &ServerFiles) -> Result<Arc<ServerConfig>, TlsError> {
    build_server_config(f, BOTH_VERSIONS)
}

/// Like [`server_config`] but TLS 1.2 only, which is what fluentd's in_forward offers by
/// default; tests use it to prove the client still gets through.
pub fn server_config_tls12_only(f: &ServerFiles) -> Result<Arc<ServerConfig>, TlsError> {
    build_server_config(f, &[&TLS12])
}

fn build_server_config(
    f: &ServerFiles,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let identity = load_identity(&provider, &Pem::read(&f.cert)?, &Pem::read(&f.key)?)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config {
            what: "TLS versions with the ring provider",
            detail: e.to_string(),
        })?;
    let builder = match &f.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = load_roots(&Pem::read(ca)?)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config {
                    what: "client certificate verifier",
                    detail: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(identity)));
    Ok(Arc::new(config))
}

/// `--tls-vhost` as the name for SNI and certificate checks; an IP address is accepted (then
/// no SNI is sent and the certificate needs an IP SAN).
pub fn server_name(vhost: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(vhost.to_string()).map_err(|_| TlsError::InvalidVhost {
        vhost: vhost.to_string(),
    })
}

fn provider() -> Arc<CryptoProvider> {
    // Explicit rather than the process default, so nothing depends on which provider some
    // other code installed first.
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the server certificate is checked against.
#[derive(Debug)]
enum Trust {
    /// WebPKI chain, validity and key usage checks against roots. With `verify_hostname ==
    /// false` a name mismatch is forgiven: WebPKI checks the chain before the name, so reaching
    /// `NotValidForName` means the chain passed.
    Roots {
        webpki: Arc<WebPkiServerVerifier>,
        verify_hostname: bool,
    },
    /// `insecure-skip-tls-verify`: any certificate chain and name are accepted.
    Anything,
}

/// Verifies the server certificate per [`Trust`] and remembers what the server presented. The
/// handshake signatures are always verified with the provider's algorithms (as rustls' WebPKI
/// verifier does), so even with [`Trust::Anything`] a server that does not hold the key of the
/// certificate it presents fails the handshake.
#[derive(Debug)]
struct ServerVerifier {
    trust: Trust,
    algorithms: WebPkiSupportedAlgorithms,
    presented: PresentedCert,
}

impl ServerVerifier {
    fn new(trust: Trust, provider: &CryptoProvider) -> ServerVerifier {
        ServerVerifier {
            trust,
            algorithms: provider.signature_verification_algorithms,
            presented: PresentedCert::default(),
        }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.presented.set(end_entity.as_ref());
        let (webpki, verify_hostname) = match &self.trust {
            Trust::Anything => return Ok(ServerCertVerified::assertion()),
            Trust::Roots {
                webpki,
                verify_hostname,
            } => (webpki, *verify_hostname),
        };
        let verdict =
            webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match verdict {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !verify_hostname => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn holds_private_key(pem: &[u8]) -> bool {
    contains(pem, b"PRIVATE KEY-----")
}

/// Every certificate of a PEM text, in order; other blocks (keys, EC parameters) are skipped,
/// zero certificates is an error.
fn load_certs(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&pem.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            origin: pem.origin.clone(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            origin: pem.origin.clone(),
            holds_key: holds_private_key(&pem.bytes),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM text (PKCS#8, PKCS#1 or SEC1).
fn load_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, TlsError> {
    let origin = || pem.origin.clone();
    // Neither form is a block PrivateKeyDer knows (or it fails as base64 on the legacy
    // headers), so recognise them first to say what is actually wrong.
    if contains(&pem.bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || contains(&pem.bytes, b"Proc-Type: 4,ENCRYPTED")
    {
        return Err(TlsError::EncryptedKey { origin: origin() });
    }
    match PrivateKeyDer::from_pem_slice(&pem.bytes) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoPrivateKey {
            origin: origin(),
            holds_cert: contains(&pem.bytes, b"-----BEGIN CERTIFICATE-----"),
        }),
        // The pem error's Display quotes at most a BEGIN line or the base64 decoder's verdict,
        // never decoded key bytes.
        Err(e) => Err(TlsError::Pem {
            origin: origin(),
            detail: e.to_string(),
        }),
    }
}

/// The trust anchors of a CA bundle; every certificate in it must be usable, so that a broken
/// bundle is noticed when loaded rather than as an "unknown issuer" at the first connect.
fn load_roots(pem: &Pem) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in load_certs(pem)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            origin: pem.origin.clone(),
            index: i + 1,
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Certificate chain plus signing key, checked to belong together.
fn load_identity(
    provider: &CryptoProvider,
    cert: &Pem,
    key: &Pem,
) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert)?;
    let signing_key = provider
        .key_provider
        .load_private_key(load_key(key)?)
        .map_err(|e| TlsError::BadKey {
            origin: key.origin.clone(),
            detail: e.to_string(),
        })?;
    // Invariant: load_certs never returns an empty chain.
    let leaf = CertSummary::parse(chain[0].as_ref()).ok_or_else(|| TlsError::BadCertificate {
        origin: cert.origin.clone(),
        index: 1,
        detail: "not DER-encoded X.509".to_string(),
    })?;
    if let Some(spki) = signing_key.public_key() {
        if spki.as_ref() != leaf.spki.as_slice() {
            return Err(TlsError::KeyMismatch {
                key: key.origin.clone(),
                cert: cert.origin.clone(),
            });
        }
    }
    Ok(CertifiedKey::new(chain, signing_key))
}

/// An operator-facing explanation of a failed handshake of the forwarder (client side).
/// `peer_cert` is the server's end-entity certificate ([`PresentedCert::get`]) when known; it
/// lets the message tell a CN-only or v1 certificate from a plain wrong name.
pub fn explain(err: &Error, vhost: &str, peer_cert: Option<&[u8]>) -> String {
    explain_with_ca(err, vhost, peer_cert, "--tls-ca-file")
}

/// [`explain`] with `ca` naming where the trusted CAs came from.
fn explain_with_ca(err: &Error, vhost: &str, peer_cert: Option<&[u8]>, ca: &str) -> String {
    let cert = peer_cert.and_then(CertSummary::parse);
    match err {
        Error::InvalidCertificate(ce) => explain_server_cert(ce, vhost, cert.as_ref(), ca),
        Error::NoCertificatesPresented => "the server presented no certificate".to_string(),
        Error::AlertReceived(alert) => explain_server_alert(*alert),
        Error::PeerIncompatible(p) => format!(
            "the server cannot agree on TLS parameters with this client ({p:?}); this client \
             offers TLS 1.3 and 1.2 with AES-GCM/ChaCha20 suites only"
        ),
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => format!(
            "the server did not answer with valid TLS ({err}): is the target's in_forward \
             configured for TLS? (use --plaintext for a plain in_forward)"
        ),
        Error::PeerMisbehaved(p) => format!("the server broke the TLS protocol ({p:?})"),
        other => format!("TLS handshake with the server failed: {other}"),
    }
}

fn explain_server_cert(
    ce: &CertificateError,
    vhost: &str,
    cert: Option<&CertSummary>,
    ca: &str,
) -> String {
    let san = san_for(vhost);
    match ce {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            let context_names = match ce {
                CertificateError::NotValidForNameContext { presented, .. } => Some(presented),
                _ => None,
            };
            let no_san = match (cert, context_names) {
                (Some(c), _) => !c.has_san,
                // webpki reports the certificate's SAN entries; none means none were usable.
                (None, Some(names)) => names.is_empty(),
                (None, None) => false,
            };
            if no_san {
                let only = match cert.and_then(|c| c.subject_cn.as_deref()) {
                    Some(cn) => format!("only the CN \"{cn}\""),
                    None => "only a CN".to_string(),
                };
                format!(
                    "the server certificate has no subject alternative names ({only}); rustls \
                     checks names only in SANs and ignores the CN: reissue the certificate with \
                     a SAN {san}, or use --tls-verify-hostname=false (which keeps the chain \
                     verification against {ca})"
                )
            } else {
                let names = match (cert, context_names) {
                    (Some(c), _) => c.names.join(", "),
                    (None, Some(names)) => names
                        .iter()
                        .map(|n| tidy_name(n))
                        .collect::<Vec<_>>()
                        .join(", "),
                    (None, None) => String::new(),
                };
                let names = if names.is_empty() {
                    String::new()
                } else {
                    format!(" (its names: {names})")
                };
                format!(
                    "the server certificate is not valid for {vhost:?}{names}: set --tls-vhost \
                     to a name the certificate carries or reissue it with a SAN {san}"
                )
            }
        }
        CertificateError::UnknownIssuer => {
            let issuer = match cert.and_then(|c| c.issuer_cn.as_deref()) {
                Some(cn) => format!(" (issued by \"{cn}\")"),
                None => String::new(),
            };
            format!(
                "the server certificate{issuer} is not signed by the CA in {ca} (unknown \
                 issuer): put the CA that issued the tailer's certificate into {ca}"
            )
        }
        CertificateError::Expired => {
            "the server certificate (or a CA certificate in its chain) has expired: renew it"
                .to_string()
        }
        CertificateError::ExpiredContext { time, not_after } => format!(
            "the server certificate (or a CA certificate in its chain) expired at {} (now {}): \
             renew it",
            utc(*not_after),
            utc(*time)
        ),
        CertificateError::NotValidYet => {
            "the server certificate (or a CA certificate in its chain) is not valid yet: check \
             this machine's clock"
                .to_string()
        }
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "the server certificate (or a CA certificate in its chain) is not valid before {} \
             (now {}): check this machine's clock",
            utc(*not_before),
            utc(*time)
        ),
        CertificateError::BadEncoding => {
            "the server sent a certificate that is not valid DER-encoded X.509 (bad encoding)"
                .to_string()
        }
        CertificateError::BadSignature => {
            "a certificate in the server's chain has an invalid signature (bad signature)"
                .to_string()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the server certificate may not be used for TLS server authentication (its \
             extendedKeyUsage lacks serverAuth): reissue it with extendedKeyUsage=serverAuth"
                .to_string()
        }
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "the server certificate is signed with an algorithm rustls does not accept (such \
             as SHA-1 or DSA): reissue it signed with SHA-256 and RSA or ECDSA"
                .to_string()
        }
        _ if cert.is_some_and(|c| c.version == 1) => format!(
            "the server certificate is an X.509 v1 certificate (no extensions, as made by \
             `openssl x509 -req` without -extfile); rustls accepts only v3 certificates, and \
             --tls-verify-hostname=false does not change that: reissue it as v3 with a SAN \
             {san}"
        ),
        other => format!("the server certificate was rejected: {other}"),
    }
}

fn explain_server_alert(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::CertificateRequired => "the server requires a client certificate and \
             none was sent (TLS alert CertificateRequired): set --tls-crt-file and \
             --tls-key-file"
            .to_string(),
        AlertDescription::BadCertificate
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateRevoked
        | AlertDescription::CertificateExpired
        | AlertDescription::CertificateUnknown
        | AlertDescription::UnknownCA
        | AlertDescription::AccessDenied
        | AlertDescription::DecryptError => format!(
            "the server refused our client certificate (TLS alert {alert:?}): check that \
             --tls-crt-file is issued by a CA the tailer trusts, is not expired and allows \
             clientAuth, and that --tls-key-file belongs to it"
        ),
        AlertDescription::HandshakeFailure => "the server aborted the handshake (TLS alert \
             HandshakeFailure): no common TLS version or cipher suite, or it refused our \
             client certificate"
            .to_string(),
        AlertDescription::ProtocolVersion => {
            "the server accepts neither TLS 1.3 nor TLS 1.2 (TLS alert ProtocolVersion)".to_string()
        }
        AlertDescription::UnrecognisedName => "the server does not know the name sent as SNI \
             (TLS alert UnrecognisedName): check --tls-vhost"
            .to_string(),
        other => format!("the server aborted the TLS handshake (TLS alert {other:?})"),
    }
}

/// An operator-facing explanation of a failed handshake on the receiving side (the tailer),
/// where the peer is a forwarder or fluent-bit client.
pub fn explain_client_failure(err: &Error) -> String {
    match err {
        Error::NoCertificatesPresented => "the client presented no certificate, but this \
             receiver requires one issued by its client CA"
            .to_string(),
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the client certificate is not signed by the client CA of this receiver (unknown \
             issuer)"
                .to_string()
        }
        Error::InvalidCertificate(CertificateError::ExpiredContext { time, not_after }) => {
            format!(
                "the client certificate (or a CA in its chain) expired at {} (now {})",
                utc(*not_after),
                utc(*time)
            )
        }
        Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ) => "the client certificate may not be used for TLS client authentication (its \
             extendedKeyUsage lacks clientAuth)"
            .to_string(),
        Error::InvalidCertificate(other) => format!("the client certificate was rejected: {other}"),
        Error::AlertReceived(alert) => format!(
            "the client aborted the handshake (TLS alert {alert:?}); it probably does not \
             trust this receiver's certificate or name"
        ),
        Error::PeerIncompatible(p) => {
            format!("the client cannot agree on TLS parameters with this receiver ({p:?})")
        }
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => {
            format!("the client does not speak TLS ({err}): is it configured for TLS?")
        }
        other => format!("TLS handshake with the client failed: {other}"),
    }
}

/// webpki renders the names of `NotValidForNameContext` with Debug (`DnsName("a")`,
/// `IpAddress(10.0.0.1)`); show them the way openssl and our DER reader do.
fn tidy_name(name: &str) -> String {
    if let Some(dns) = name
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
    {
        format!("DNS:{dns}")
    } else if let Some(ip) = name
        .strip_prefix("IpAddress(")
        .and_then(|n| n.strip_suffix(')'))
    {
        format!("IP:{ip}")
    } else {
        name.to_string()
    }
}

fn san_for(vhost: &str) -> String {
    if vhost.parse::<IpAddr>().is_ok() {
        format!("IP:{vhost}")
    } else {
        format!("DNS:{vhost}")
    }
}

/// RFC 3339 UTC rendering of a Unix time (days-to-civil conversion after H. Hinnant).
fn utc(t: UnixTime) -> String {
    let secs = t.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

/// How many characters of a name in a peer's certificate an error quotes (DNS names stop at
/// 253).
const NAME_CHARS: usize = 256;

/// What [`explain`] and the key check need from a certificate, read with a minimal DER walk
/// that (unlike webpki) also accepts v1 certificates. Names are escaped for logs: the peer
/// chose them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CertSummary {
    /// 1 or 3 (2 is legal and rare).
    version: u8,
    subject_cn: Option<String>,
    issuer_cn: Option<String>,
    /// The subjectAltName extension (OID 2.5.29.17) is present, even if empty.
    has_san: bool,
    /// SAN entries rustls can match, as `DNS:name` / `IP:addr`.
    names: Vec<String>,
    /// The whole SubjectPublicKeyInfo TLV, as rustls' `SigningKey::public_key` renders it.
    spki: Vec<u8>,
}

const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// One DER element: its tag, its contents and the whole encoding.
struct Tlv<'a> {
    tag: u8,
    body: &'a [u8],
    raw: &'a [u8],
}

/// Splits the first DER element off `input`; `None` on truncation, indefinite or absurd lengths
/// and multi-byte tags (none of which occur in the parts of a certificate read here).
fn next_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    let tlv = Tlv {
        tag,
        body: &rest[..len],
        raw: &input[..header + len],
    };
    Some((tlv, &rest[len..]))
}

fn expect_tlv(input: &[u8], tag: u8) -> Option<(Tlv<'_>, &[u8])> {
    next_tlv(input).filter(|(tlv, _)| tlv.tag == tag)
}

/// All elements of a SEQUENCE/SET body; `None` if any is malformed.
fn tlvs(mut body: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let (tlv, rest) = next_tlv(body)?;
        out.push(tlv);
        body = rest;
    }
    Some(out)
}

impl CertSummary {
    fn parse(der: &[u8]) -> Option<CertSummary> {
        let (cert, _) = expect_tlv(der, 0x30)?;
        let (tbs, _) = expect_tlv(cert.body, 0x30)?;
        let mut rest = tbs.body;
        let mut version = 1;
        if let Some((explicit, after)) = expect_tlv(rest, 0xa0) {
            let (int, _) = expect_tlv(explicit.body, 0x02)?;
            version = int.body.last()?.checked_add(1)?;
            rest = after;
        }
        let (_serial, rest) = expect_tlv(rest, 0x02)?;
        let (_signature, rest) = expect_tlv(rest, 0x30)?;
        let (issuer, rest) = expect_tlv(rest, 0x30)?;
        let (_validity, rest) = expect_tlv(rest, 0x30)?;
        let (subject, rest) = expect_tlv(rest, 0x30)?;
        let (spki, mut rest) = expect_tlv(rest, 0x30)?;
        let mut summary = CertSummary {
            version,
            subject_cn: common_name(subject.body)?,
            issuer_cn: common_name(issuer.body)?,
            has_san: false,
            names: Vec::new(),
            spki: spki.raw.to_vec(),
        };
        while let Some((field, after)) = next_tlv(rest) {
            rest = after;
            // [1] and [2] are the unique IDs nobody uses; [3] holds the extensions.
            if field.tag != 0xa3 {
                continue;
            }
            let (extensions, _) = expect_tlv(field.body, 0x30)?;
            for ext in tlvs(extensions.body)? {
                let (oid, ext_rest) = expect_tlv(ext.body, 0x06)?;
                if oid.body != OID_SUBJECT_ALT_NAME {
                    continue;
                }
                summary.has_san = true;
                let ext_rest = match expect_tlv(ext_rest, 0x01) {
                    Some((_critical, after)) => after,
                    None => ext_rest,
                };
                let (value, _) = expect_tlv(ext_rest, 0x04)?;
                let (general_names, _) = expect_tlv(value.body, 0x30)?;
                for name in tlvs(general_names.body)? {
                    match name.tag {
                        // dNSName [2] IA5String
                        0x82 => summary
                            .names
                            .push(format!("DNS:{}", escape::for_log(name.body, NAME_CHARS))),
                        // iPAddress [7] OCTET STRING
                        0x87 => {
                            let ip = match name.body.len() {
                                4 => <[u8; 4]>::try_from(name.body).ok().map(IpAddr::from),
                                16 => <[u8; 16]>::try_from(name.body).ok().map(IpAddr::from),
                                _ => None,
                            };
                            if let Some(ip) = ip {
                                summary.names.push(format!("IP:{ip}"));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Some(summary)
    }
}

/// The first commonName of a Name (SEQUENCE OF SET OF AttributeTypeAndValue); `Some(None)`
/// when the name has none, `None` when it is malformed.
fn common_name(name: &[u8]) -> Option<Option<String>> {
    for rdn in tlvs(name)? {
        for attribute in tlvs(rdn.body)? {
            let (oid, rest) = expect_tlv(attribute.body, 0x06)?;
            if oid.body == OID_COMMON_NAME {
                let (value, _) = next_tlv(rest)?;
                return Some(Some(escape::for_log(value.body, NAME_CHARS)));
            }
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, Connection, ProtocolVersion, ServerConnection};
    use std::process::Command;
    use std::sync::OnceLock;

    const VHOST: &str = "kubernetes-audit-tailer";

    /// Certificates made once per test process with the openssl command line, the way
    /// operators make them.
    struct Pki {
        dir: PathBuf,
    }

    impl Pki {
        fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }

        fn der(&self, name: &str) -> Vec<u8> {
            CertificateDer::from_pem_file(self.path(name))
                .expect("generated certificate")
                .as_ref()
                .to_vec()
        }
    }

    /// Runs one openssl command line (arguments split on whitespace) in `dir`.
    fn openssl(dir: &Path, command: &str) {
        let out = Command::new("openssl")
            .args(command.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("the openssl command is needed to generate test certificates");
        assert!(
            out.status.success(),
            "openssl {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    const CA_CNF: &str = "\
[ca]
default_ca = test
[test]
database = CA_DIR/index.txt
serial = CA_DIR/serial
new_certs_dir = CA_DIR
default_md = sha256
policy = any
copy_extensions = none
unique_subject = no
[any]
commonName = supplied
[server_san]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:kubernetes-audit-tailer, DNS:tailer.example, IP:127.0.0.1
[server_cn_only]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
[client]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
";

    /// A CA `NAME.crt`/`NAME.key` plus its `openssl ca` database in the directory NAME.
    fn make_ca(dir: &Path, name: &str) {
        let db = dir.join(name);
        std::fs::create_dir_all(&db).unwrap();
        // openssl ca resolves these paths against its working directory, the PKI root.
        std::fs::write(db.join("ca.cnf"), CA_CNF.replace("CA_DIR", name)).unwrap();
        std::fs::write(db.join("index.txt"), "").unwrap();
        std::fs::write(db.join("serial"), "1000\n").unwrap();
        openssl(
            dir,
            &format!("ecparam -name prime256v1 -genkey -noout -out {name}.key"),
        );
        openssl(
            dir,
            &format!("req -x509 -new -key {name}.key -subj /CN={name} -days 3650 -out {name}.crt"),
        );
    }

    /// Issues `out` for `key` from CA `ca` with extension section `ext` of CA_CNF and explicit
    /// validity dates (OpenSSL 3.0's `x509 -req` has no -not_before/-not_after; `ca` has
    /// -startdate/-enddate, also in the past).
    fn issue(dir: &Path, ca: &str, key: &str, cn: &str, ext: &str, dates: &str, out: &str) {
        openssl(
            dir,
            &format!("req -new -key {key} -subj /CN={cn} -out {out}.csr"),
        );
        openssl(
            dir,
            &format!(
                "ca -batch -notext -config {ca}/ca.cnf -cert {ca}.crt -keyfile {ca}.key \
                 -in {out}.csr -out {out} -extensions {ext} {dates}"
            ),
        );
    }

    /// A v1 certificate: what `openssl x509 -req` makes without -extfile.
    fn issue_v1(dir: &Path, key: &str, cn: &str, out: &str) {
        openssl(
            dir,
            &format!("req -new -key {key} -subj /CN={cn} -out {out}.csr"),
        );
        openssl(
            dir,
            &format!(
                "x509 -req -in {out}.csr -CA ca1.crt -CAkey ca1.key -CAcreateserial -days 30 \
                 -out {out}"
            ),
        );
    }

    const VALID: &str = "-startdate 20200101000000Z -enddate 20991231235959Z";
    const EXPIRED: &str = "-startdate 20200101000000Z -enddate 20200201000000Z";
    const FUTURE: &str = "-startdate 20980101000000Z -enddate 20991231235959Z";

    fn pki() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| {
            // Beside the test binary (in the target directory), reused and overwritten by each
            // run, so runs leave nothing behind in /tmp.
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().unwrap_or(Path::new(".")).join("tls-test-pki");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let d = dir.as_path();
            make_ca(d, "ca1");
            make_ca(d, "ca2");
            // A bundle with the right CA second: every certificate of the file must count.
            let bundle = [
                std::fs::read(d.join("ca2.crt")).unwrap(),
                std::fs::read(d.join("ca1.crt")).unwrap(),
            ]
            .concat();
            std::fs::write(d.join("bundle.crt"), bundle).unwrap();

            // Keys in every format PrivateKeyDer::from_pem_slice accepts. ec-sec1.key keeps the
            // EC PARAMETERS block before the key (no -noout), as many real key files do.
            openssl(d, "genrsa -traditional -out rsa-pkcs1.key 2048");
            openssl(
                d,
                "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa-pkcs8.key",
            );
            openssl(d, "ecparam -name prime256v1 -genkey -out ec-sec1.key");
            openssl(
                d,
                "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec-pkcs8.key",
            );
            openssl(
                d,
                "pkcs8 -topk8 -in ec-pkcs8.key -passout pass:secret -out encrypted.key",
            );
            openssl(
                d,
                "ec -in ec-sec1.key -aes128 -passout pass:secret -out encrypted-sec1.key",
            );

            let forwarder = "kubernetes-audit-forwarder";
            issue(
                d,
                "ca1",
                "rsa-pkcs1.key",
                VHOST,
                "server_san",
                VALID,
                "server.crt",
            );
            issue(
                d,
                "ca1",
                "ec-sec1.key",
                VHOST,
                "server_cn_only",
                VALID,
                "cn-only.crt",
            );
            issue(
                d,
                "ca2",
                "ec-sec1.key",
                VHOST,
                "server_cn_only",
                VALID,
                "cn-only-ca2.crt",
            );
            issue(
                d,
                "ca1",
                "ec-sec1.key",
                VHOST,
                "server_san",
                EXPIRED,
                "expired.crt",
            );
            issue(
                d,
                "ca1",
                "ec-sec1.key",
                VHOST,
                "server_san",
                FUTURE,
                "future.crt",
            );
            issue(
                d,
                "ca1",
                "rsa-pkcs8.key",
                forwarder,
                "client",
                VALID,
                "client.crt",
            );
            issue(
                d,
                "ca1",
                "ec-pkcs8.key",
                forwarder,
                "client",
                VALID,
                "client-ec.crt",
            );
            issue(
                d,
                "ca2",
                "ec-pkcs8.key",
                forwarder,
                "client",
                VALID,
                "client-ca2.crt",
            );
            issue_v1(d, "ec-sec1.key", VHOST, "v1.crt");
            issue_v1(d, "ec-pkcs8.key", forwarder, "client-v1.crt");
            // An apiserver certificate nobody issued (kubeadm and kind issue theirs from a CA;
            // self-signed ones are what insecure-skip-tls-verify kubeconfigs meet).
            openssl(
                d,
                "req -x509 -new -key ec-pkcs8.key -subj /CN=apiserver -days 3650 \
                 -addext subjectAltName=DNS:kubernetes.default.svc,IP:127.0.0.1 \
                 -addext basicConstraints=critical,CA:FALSE -out self-signed.crt",
            );

            let files = [
                ("empty.pem", ""),
                ("text.pem", "this is not PEM\n"),
                (
                    "garbage.pem",
                    "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                ),
                (
                    "bad-der.pem",
                    "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
                ),
                (
                    "bad-key.pem",
                    "-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n",
                ),
            ];
            for (name, text) in files {
                std::fs::write(d.join(name), text).unwrap();
            }
            // Sparse: one byte over the cap without using the disk space.
            File::create(d.join("huge.pem"))
                .and_then(|f| f.set_len(MAX_PEM_FILE + 1))
                .unwrap();
            Pki { dir }
        })
    }

    fn client_settings(
        ca: &str,
        cert: &str,
        key: &str,
        vhost: &str,
        verify: bool,
    ) -> ClientSettings {
        let p = pki();
        ClientSettings {
            files: ClientFiles {
                ca: p.path(ca),
                cert: p.path(cert),
                key: p.path(key),
            },
            vhost: vhost.to_string(),
            verify_hostname: verify,
        }
    }

    fn default_client() -> ClientSettings {
        client_settings("bundle.crt", "client.crt", "rsa-pkcs8.key", VHOST, true)
    }

    fn server_files(cert: &str, key: &str, client_ca: Option<&str>) -> ServerFiles {
        let p = pki();
        ServerFiles {
            cert: p.path(cert),
            key: p.path(key),
            client_ca: client_ca.map(|ca| p.path(ca)),
        }
    }

    /// How an in-memory handshake ended.
    struct Outcome {
        client: Option<Error>,
        server: Option<Error>,
        version: Option<ProtocolVersion>,
        /// The client's view of the server certificate (from the verifier's slot).
        presented: Option<Vec<u8>>,
    }

    impl fmt::Debug for Outcome {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // The certificate bytes would drown the errors in a failure message.
            f.debug_struct("Outcome")
                .field("client", &self.client)
                .field("server", &self.server)
                .field("version", &self.version)
                .field("presented_len", &self.presented.as_ref().map(Vec::len))
                .finish()
        }
    }

    impl Outcome {
        fn ok(&self) -> bool {
            self.client.is_none() && self.server.is_none() && self.version.is_some()
        }
    }

    /// Runs a complete handshake between a client and a server connection by shuttling the
    /// bytes through Vec buffers, and then one application byte each way so that a TLS 1.3
    /// server's verdict on the client certificate reaches the client.
    fn handshake_with(
        client: ClientConnection,
        server: ServerConnection,
    ) -> (Connection, Connection, [Option<Error>; 2]) {
        let mut conns = [Connection::from(client), Connection::from(server)];
        let mut errors: [Option<Error>; 2] = [None, None];
        for _round in 0..32 {
            let mut moved = false;
            for from in 0..2 {
                let to = 1 - from;
                let mut wire = Vec::new();
                while conns[from].wants_write() {
                    conns[from].write_tls(&mut wire).expect("writing to a Vec");
                }
                if wire.is_empty() || errors[to].is_some() {
                    continue;
                }
                moved = true;
                let mut rd = wire.as_slice();
                while !rd.is_empty() {
                    conns[to].read_tls(&mut rd).expect("reading from a slice");
                    if let Err(e) = conns[to].process_new_packets() {
                        errors[to] = Some(e);
                        break;
                    }
                }
            }
            if !moved {
                break;
            }
        }
        let [client, server] = conns;
        (client, server, errors)
    }

    fn handshake(client: &ClientTls, server: &Arc<ServerConfig>, vhost: &str) -> Outcome {
        client.presented.clear();
        let name = server_name(vhost).expect("valid test vhost");
        let c = ClientConnection::new(client.config.clone(), name).expect("client connection");
        let s = ServerConnection::new(server.clone()).expect("server connection");
        let (c, s, [client_err, server_err]) = handshake_with(c, s);
        let done = !c.is_handshaking() && !s.is_handshaking();
        Outcome {
            version: if done && client_err.is_none() && server_err.is_none() {
                c.protocol_version()
            } else {
                None
            },
            client: client_err,
            server: server_err,
            presented: client.presented.get(),
        }
    }

    #[test]
    fn handshakes_against_server_certificates() {
        let p = pki();
        struct Case {
            name: &'static str,
            client: ClientSettings,
            server_cert: &'static str,
            server_key: &'static str,
            vhost: &'static str,
            /// None: must succeed; Some(texts): the client fails and explain() contains all.
            fails_with: Option<&'static [&'static str]>,
        }
        let cases = [
            Case {
                name: "right CA (second in a bundle), SAN matches",
                client: default_client(),
                server_cert: "server.crt",
                server_key: "rsa-pkcs1.key",
                vhost: VHOST,
                fails_with: None,
            },
            Case {
                name: "IP vhost matches an IP SAN",
                client: client_settings(
                    "ca1.crt",
                    "client.crt",
                    "rsa-pkcs8.key",
                    "127.0.0.1",
                    true,
                ),
                server_cert: "server.crt",
                server_key: "rsa-pkcs1.key",
                vhost: "127.0.0.1",
                fails_with: None,
            },
            Case {
                name: "wrong CA",
                client: client_settings("ca2.crt", "client.crt", "rsa-pkcs8.key", VHOST, true),
                server_cert: "server.crt",
                server_key: "rsa-pkcs1.key",
                vhost: VHOST,
                fails_with: Some(&[
                    "not signed by the CA in --tls-ca-file",
                    "unknown issuer",
                    "\"ca1\"",
                ]),
            },
            Case {
                name: "expired",
                client: default_client(),
                server_cert: "expired.crt",
                server_key: "ec-sec1.key",
                vhost: VHOST,
                fails_with: Some(&["expired at 2020-02-01T00:00:00Z", "renew it"]),
            },
            Case {
                name: "expired is not forgiven by verify_hostname=false",
                client: client_settings("ca1.crt", "client.crt", "rsa-pkcs8.key", VHOST, false),
                server_cert: "expired.crt",
                server_key: "ec-sec1.key",
                vhost: VHOST,
                fails_with: Some(&["expired at"]),
            },
            Case {
                name: "not yet valid",
                client: default_client(),
                server_cert: "future.crt",
                server_key: "ec-sec1.key",
                vhost: VHOST,
                fails_with: Some(&["not valid before 2098-01-01T00:00:00Z", "clock"]),
            },
            Case {
                name: "wrong vhost",
                client: client_settings(
                    "ca1.crt",
                    "client.crt",
                    "rsa-pkcs8.key",
                    "audit.example",
                    true,
                ),
                server_cert: "server.crt",
                server_key: "rsa-pkcs1.key",
                vhost: "audit.example",
                fails_with: Some(&[
                    "not valid for \"audit.example\"",
                    "DNS:kubernetes-audit-tailer, DNS:tailer.example, IP:127.0.0.1",
                    "SAN DNS:audit.example",
                ]),
            },
            Case {
                name: "wrong vhost is forgiven by verify_hostname=false",
                client: client_settings(
                    "ca1.crt",
                    "client.crt",
                    "rsa-pkcs8.key",
                    "audit.example",
                    false,
                ),
                server_cert: "server.crt",
                server_key: "rsa-pkcs1.key",
                vhost: "audit.example",
                fails_with: None,
            },
            Case {
                name: "CN-only certificate",
                client: default_client(),
                server_cert: "cn-only.crt",
                server_key: "ec-sec1.key",
                vhost: VHOST,
                fails_with: Some(&[
                    "no subject alternative names (only the CN \"kubernetes-audit-tailer\")",
                    "rustls checks names only in SANs",
                    "SAN DNS:kubernetes-audit-tailer",
                    "--tls-verify-hostname=false",
                ]),
            },
            Case {
                name: "CN-only certificate with verify_hostname=false",
                client: client_settings("ca1.crt", "client-ec.crt", "ec-pkcs8.key", VHOST, false),
                server_cert: "cn-only.crt",
                server_key: "ec-sec1.key",
                vhost: VHOST,
                fails_with: None,
            },
            Case {
                name: "CN-only certificate of another CA with verify_hostname=false",
                client: client_settings("ca1.crt", "client.crt", "rsa-pkcs8.key", VHOST, false),
                server_cert: "cn-only-ca2.crt",
                server_key: "ec-sec1.key",
                vhost: VHOST,
                fails_with: Some(&["not signed by the CA in --tls-ca-file", "\"ca2\""]),
            },
            Case {
                name: "v1 certificate, even with verify_hostname=false",
                client: client_settings("ca1.crt", "client.crt", "rsa-pkcs8.key", VHOST, false),
                server_cert: "v1.crt",
                server_key: "ec-sec1.key",
                vhost: VHOST,
                fails_with: Some(&[
                    "X.509 v1 certificate",
                    "only v3",
                    "SAN DNS:kubernetes-audit-tailer",
                ]),
            },
        ];
        for case in cases {
            let client = client_tls(&case.client).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let server = server_config(&ServerFiles {
                cert: p.path(case.server_cert),
                key: p.path(case.server_key),
                client_ca: None,
            })
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let out = handshake(&client, &server, case.vhost);
            assert_eq!(
                out.presented.as_deref(),
                Some(p.der(case.server_cert).as_slice()),
                "{}: the verifier keeps the presented certificate",
                case.name
            );
            match case.fails_with {
                None => {
                    assert!(out.ok(), "{}: {out:?}", case.name);
                    assert_eq!(out.version, Some(ProtocolVersion::TLSv1_3), "{}", case.name);
                }
                Some(texts) => {
                    let err = out
                        .client
                        .as_ref()
                        .unwrap_or_else(|| panic!("{}: {out:?}", case.name));
                    let msg = explain(err, case.vhost, out.presented.as_deref());
                    for text in texts {
                        assert!(msg.contains(text), "{}: {text:?} not in {msg:?}", case.name);
                    }
                }
            }
        }
    }

    #[test]
    fn cn_only_message_is_exact() {
        let client = client_tls(&default_client()).unwrap();
        let server = server_config(&server_files("cn-only.crt", "ec-sec1.key", None)).unwrap();
        let out = handshake(&client, &server, VHOST);
        let err = out
            .client
            .expect("CN-only certificate fails with verify_hostname=true");
        assert!(
            matches!(
                err,
                Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
            ),
            "{err:?}"
        );
        assert_eq!(
            explain(&err, VHOST, out.presented.as_deref()),
            "the server certificate has no subject alternative names (only the CN \
             \"kubernetes-audit-tailer\"); rustls checks names only in SANs and ignores the CN: \
             reissue the certificate with a SAN DNS:kubernetes-audit-tailer, or use \
             --tls-verify-hostname=false (which keeps the chain verification against \
             --tls-ca-file)"
        );
        // Without the certificate, the empty name list in the error says the same.
        assert!(explain(&err, VHOST, None).contains("(only a CN)"));
    }

    #[test]
    fn client_certificate_is_required_and_checked() {
        let p = pki();
        let server = server_config(&server_files(
            "server.crt",
            "rsa-pkcs1.key",
            Some("ca1.crt"),
        ))
        .unwrap();
        let tls12 = server_config_tls12_only(&server_files(
            "server.crt",
            "rsa-pkcs1.key",
            Some("ca1.crt"),
        ))
        .unwrap();

        // Our own client config always carries a certificate; build a certificate-less one.
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(p.path("ca1.crt")).unwrap())
            .unwrap();
        let anonymous = ClientTls {
            config: Arc::new(
                ClientConfig::builder_with_provider(provider())
                    .with_protocol_versions(BOTH_VERSIONS)
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ),
            presented: PresentedCert::default(),
            ca_origin: p.path("ca1.crt").display().to_string(),
        };

        for (name, server) in [("TLS 1.3", &server), ("TLS 1.2", &tls12)] {
            let out = handshake(&anonymous, server, VHOST);
            let server_err = out
                .server
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: {out:?}"));
            assert_eq!(*server_err, Error::NoCertificatesPresented, "{name}");
            assert!(explain_client_failure(server_err).contains("presented no certificate"));
            let client_err = out
                .client
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: {out:?}"));
            let msg = explain(client_err, VHOST, None);
            assert!(
                msg.contains("client certificate") && msg.contains("TLS alert"),
                "{name}: {msg}"
            );

            let other_ca = client_tls(&client_settings(
                "ca1.crt",
                "client-ca2.crt",
                "ec-pkcs8.key",
                VHOST,
                true,
            ))
            .unwrap();
            let out = handshake(&other_ca, server, VHOST);
            let server_err = out
                .server
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: {out:?}"));
            assert_eq!(
                *server_err,
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "{name}"
            );
            assert!(explain_client_failure(server_err).contains("not signed by the client CA"));
            let client_err = out
                .client
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: {out:?}"));
            assert!(
                explain(client_err, VHOST, None).contains("refused our client certificate"),
                "{name}: {client_err:?}"
            );

            for (cert, key) in [
                ("client.crt", "rsa-pkcs8.key"),
                ("client-ec.crt", "ec-pkcs8.key"),
            ] {
                let good = client_tls(&client_settings("ca1.crt", cert, key, VHOST, true)).unwrap();
                let out = handshake(&good, server, VHOST);
                assert!(out.ok(), "{name} {cert}: {out:?}");
            }
        }
    }

    /// One key of the tailer's client Secret, as the Kubernetes client will hand it over.
    fn secret_pem(file: &str, key: &str) -> Pem {
        Pem {
            origin: format!("secret audit/audittailer-client key {key:?}"),
            bytes: std::fs::read(pki().path(file)).expect("generated file"),
        }
    }

    /// [`client_tls_from_pem`] with the three files as the Secret's `ca.crt`, `tls.crt` and
    /// `tls.key`.
    fn from_secret(
        ca: &str,
        cert: &str,
        key: &str,
        vhost: &str,
        verify: bool,
    ) -> Result<ClientTls, TlsError> {
        client_tls_from_pem(
            &secret_pem(ca, "ca.crt"),
            &secret_pem(cert, "tls.crt"),
            &secret_pem(key, "tls.key"),
            vhost,
            verify,
        )
    }

    /// Lines of the PEM files holding private keys: no error may quote any of them.
    fn key_material_lines() -> Vec<String> {
        let p = pki();
        [
            "rsa-pkcs8.key",
            "rsa-pkcs1.key",
            "ec-pkcs8.key",
            "ec-sec1.key",
        ]
        .iter()
        .map(|f| std::fs::read_to_string(p.path(f)).expect("generated key"))
        .flat_map(|text| text.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| !l.starts_with("-----"))
        .collect()
    }

    fn assert_no_key_material(err: &TlsError) {
        let shown = format!("{err} {err:?}");
        for line in key_material_lines() {
            assert!(!shown.contains(&line), "key material in {shown:?}");
        }
    }

    #[test]
    fn pem_material_handshakes_and_explains_with_its_origin() {
        let ca_key = "secret audit/audittailer-client key \"ca.crt\"";
        let server = server_files("server.crt", "rsa-pkcs1.key", Some("ca1.crt"));
        for (name, server) in [
            ("TLS 1.3", server_config(&server).unwrap()),
            ("TLS 1.2", server_config_tls12_only(&server).unwrap()),
        ] {
            let good = from_secret("bundle.crt", "client.crt", "rsa-pkcs8.key", VHOST, true)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(good.ca_origin, ca_key);
            let out = handshake(&good, &server, VHOST);
            assert!(out.ok(), "{name}: {out:?}");

            let wrong_ca = from_secret("ca2.crt", "client-ec.crt", "ec-pkcs8.key", VHOST, true)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let out = handshake(&wrong_ca, &server, VHOST);
            let err = Error::InvalidCertificate(CertificateError::UnknownIssuer);
            assert_eq!(out.client.as_ref(), Some(&err), "{name}");
            // The issuer's name comes from the certificate this config's verifier kept.
            assert_eq!(
                wrong_ca.explain(&err, VHOST),
                format!(
                    "the server certificate (issued by \"ca1\") is not signed by the CA in \
                     {ca_key} (unknown issuer): put the CA that issued the tailer's certificate \
                     into {ca_key}"
                ),
                "{name}"
            );
            // The flag-based explanation is unchanged for the command-line path.
            assert!(explain(&err, VHOST, None).contains("--tls-ca-file"));
        }
        // The hostname relaxation works from memory as from files.
        let relaxed = from_secret(
            "ca1.crt",
            "client.crt",
            "rsa-pkcs8.key",
            "audit.example",
            false,
        )
        .unwrap();
        let server = server_config(&server_files("server.crt", "rsa-pkcs1.key", None)).unwrap();
        assert!(handshake(&relaxed, &server, "audit.example").ok());
        // Debug output (in logs or panics) shows where a key came from, never the key.
        let key = secret_pem("rsa-pkcs8.key", "tls.key");
        let shown = format!("{key:?}");
        assert!(
            shown.starts_with("Pem { origin: \"secret audit/"),
            "{shown}"
        );
        for line in key_material_lines() {
            assert!(!shown.contains(&line), "{shown}");
        }
    }

    #[test]
    fn pem_errors_name_the_slot_origin() {
        let origin = |slot: &str| format!("secret audit/audittailer-client key {slot:?}");
        // (ca, cert, key: file and the Secret key it stands for; the slot the message names,
        // the rest of the message's start)
        #[rustfmt::skip]
        let cases: Vec<([&str; 3], &str, String)> = vec![
            (["garbage.pem", "client.crt", "rsa-pkcs8.key"], "ca.crt",
                "invalid PEM: base64 decode error".into()),
            (["empty.pem", "client.crt", "rsa-pkcs8.key"], "ca.crt", NO_CERTIFICATES.into()),
            (["rsa-pkcs8.key", "client.crt", "rsa-pkcs8.key"], "ca.crt",
                format!("{NO_CERTIFICATES}; the file holds a private key: {SWAPPED}")),
            (["bad-der.pem", "client.crt", "rsa-pkcs8.key"], "ca.crt",
                "certificate 1 is not a valid X.509 certificate".into()),
            (["ca1.crt", "garbage.pem", "rsa-pkcs8.key"], "tls.crt",
                "invalid PEM: base64 decode error".into()),
            (["ca1.crt", "text.pem", "rsa-pkcs8.key"], "tls.crt", NO_CERTIFICATES.into()),
            (["ca1.crt", "rsa-pkcs8.key", "rsa-pkcs8.key"], "tls.crt",
                format!("{NO_CERTIFICATES}; the file holds a private key: {SWAPPED}")),
            (["ca1.crt", "client.crt", "garbage.pem"], "tls.key",
                "invalid PEM: base64 decode error".into()),
            (["ca1.crt", "client.crt", "empty.pem"], "tls.key", NO_PRIVATE_KEY.into()),
            (["ca1.crt", "client.crt", "client.crt"], "tls.key",
                format!("{NO_PRIVATE_KEY}; the file holds a certificate: {SWAPPED}")),
            (["ca1.crt", "client.crt", "bad-key.pem"], "tls.key", "unusable private key: ".into()),
            (["ca1.crt", "client.crt", "encrypted.key"], "tls.key",
                "the private key is encrypted".into()),
            (["ca1.crt", "client.crt", "ec-pkcs8.key"], "tls.key",
                format!("the private key does not match the certificate in {}", origin("tls.crt"))),
            (["ca1.crt", "client-ec.crt", "rsa-pkcs1.key"], "tls.key",
                format!("the private key does not match the certificate in {}", origin("tls.crt"))),
        ];
        for ([ca, cert, key], slot, rest) in cases {
            let want = format!("{}: {rest}", origin(slot));
            let err = from_secret(ca, cert, key, VHOST, true).expect_err(&want);
            assert!(err.to_string().starts_with(&want), "got {err}\nwant {want}");
            assert_no_key_material(&err);
        }
        let err =
            from_secret("ca1.crt", "client.crt", "rsa-pkcs8.key", "has space", true).unwrap_err();
        assert!(matches!(err, TlsError::InvalidVhost { .. }), "{err}");
    }

    /// The API client's config in the shape the handshake helper takes.
    fn api(config: Arc<ClientConfig>) -> ClientTls {
        ClientTls {
            config,
            presented: PresentedCert::default(),
            ca_origin: String::new(),
        }
    }

    fn kubeconfig_pem(file: &str, field: &str) -> Pem {
        Pem {
            origin: format!("kubeconfig /k/config: {field}"),
            bytes: std::fs::read(pki().path(file)).expect("generated file"),
        }
    }

    #[test]
    fn api_config_verifies_the_apiserver() {
        let ca1 = kubeconfig_pem("ca1.crt", "clusters[kind].certificate-authority-data");
        let ca2 = kubeconfig_pem("ca2.crt", "clusters[kind].certificate-authority-data");
        let issued = server_files("server.crt", "rsa-pkcs1.key", None);
        let self_signed = server_files("self-signed.crt", "ec-pkcs8.key", None);
        let unknown = Some(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        // (case, ca, insecure, server, name, the client's error)
        #[rustfmt::skip]
        let cases: [(&str, Option<&Pem>, bool, &ServerFiles, &str, Option<Error>); 7] = [
            ("CA issued the server certificate", Some(&ca1), false, &issued, "127.0.0.1", None),
            ("another CA", Some(&ca2), false, &issued, "127.0.0.1", unknown.clone()),
            ("name not in the certificate", Some(&ca1), false, &issued, "api.example",
                Some(Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                    expected: server_name("api.example").unwrap(),
                    presented: vec![
                        "DnsName(\"kubernetes-audit-tailer\")".into(),
                        "DnsName(\"tailer.example\")".into(),
                        "IpAddress(127.0.0.1)".into(),
                    ],
                }))),
            ("insecure, self-signed", None, true, &self_signed, "127.0.0.1", None),
            ("insecure, any name", None, true, &issued, "api.example", None),
            ("no CA: public roots, self-signed", None, false, &self_signed,
                "kubernetes.default.svc", unknown.clone()),
            ("no CA: public roots, private CA", None, false, &issued, "127.0.0.1", unknown),
        ];
        for (case, ca, insecure, server, name, want) in cases {
            let client = api(api_client_config(ca, insecure, None).unwrap());
            for (version, server) in [
                ("TLS 1.3", server_config(server).unwrap()),
                ("TLS 1.2", server_config_tls12_only(server).unwrap()),
            ] {
                let out = handshake(&client, &server, name);
                match &want {
                    None => assert!(out.ok(), "{case}, {version}: {out:?}"),
                    Some(want) => assert_eq!(out.client.as_ref(), Some(want), "{case}, {version}"),
                }
            }
        }
        let err = api_client_config(Some(&ca1), true, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "insecure-skip-tls-verify: cannot be combined with a certificate authority \
             (kubeconfig /k/config: clusters[kind].certificate-authority-data); client-go \
             refuses this combination too: remove one of them"
        );
        let bad = kubeconfig_pem("garbage.pem", "clusters[kind].certificate-authority-data");
        let err = api_client_config(Some(&bad), false, None).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "kubeconfig /k/config: clusters[kind].certificate-authority-data: invalid PEM"
            ),
            "{err}"
        );
        let config = api_client_config(None, false, None).unwrap();
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    #[test]
    fn insecure_api_config_still_checks_handshake_signatures() {
        let p = pki();
        // A server that presents the self-signed certificate without holding its key (as a
        // man in the middle replaying a certificate would): rustls' own builders never check
        // this, so the identity is put together by hand.
        let provider = provider();
        let chain = load_certs(&Pem::read(&p.path("self-signed.crt")).unwrap()).unwrap();
        let key = load_key(&Pem::read(&p.path("ec-sec1.key")).unwrap()).unwrap();
        let key = provider.key_provider.load_private_key(key).unwrap();
        let resolver = Arc::new(SingleCertAndKey::from(CertifiedKey::new(chain, key)));
        let client = api(api_client_config(None, true, None).unwrap());
        for versions in [BOTH_VERSIONS, &[&TLS12]] {
            let server = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            let out = handshake(&client, &Arc::new(server), "127.0.0.1");
            assert_eq!(
                out.client,
                Some(Error::InvalidCertificate(CertificateError::BadSignature)),
                "{versions:?}: {out:?}"
            );
        }
    }

    #[test]
    fn api_config_presents_the_client_identity() {
        let ca = kubeconfig_pem("ca1.crt", "clusters[kind].certificate-authority-data");
        let cert = kubeconfig_pem("client.crt", "users[kind-admin].client-certificate-data");
        let key = kubeconfig_pem("rsa-pkcs8.key", "users[kind-admin].client-key-data");
        let server = server_files("server.crt", "rsa-pkcs1.key", Some("ca1.crt"));
        for (version, server) in [
            ("TLS 1.3", server_config(&server).unwrap()),
            ("TLS 1.2", server_config_tls12_only(&server).unwrap()),
        ] {
            let with_identity =
                api(api_client_config(Some(&ca), false, Some((&cert, &key))).unwrap());
            let out = handshake(&with_identity, &server, "127.0.0.1");
            assert!(out.ok(), "{version}: {out:?}");
            let insecure = api(api_client_config(None, true, Some((&cert, &key))).unwrap());
            let out = handshake(&insecure, &server, "127.0.0.1");
            assert!(out.ok(), "{version} insecure: {out:?}");

            let anonymous = api(api_client_config(Some(&ca), false, None).unwrap());
            let out = handshake(&anonymous, &server, "127.0.0.1");
            assert_eq!(
                out.server,
                Some(Error::NoCertificatesPresented),
                "{version}"
            );
        }
        let other_key = kubeconfig_pem("ec-pkcs8.key", "users[kind-admin].client-key-data");
        let err = api_client_config(Some(&ca), false, Some((&cert, &other_key))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kubeconfig /k/config: users[kind-admin].client-key-data: the private key does not \
             match the certificate in kubeconfig /k/config: \
             users[kind-admin].client-certificate-data"
        );
        assert_no_key_material(&err);
        let swapped = api_client_config(None, true, Some((&key, &cert))).unwrap_err();
        assert!(
            swapped.to_string().starts_with(
                "kubeconfig /k/config: users[kind-admin].client-key-data: no certificates found"
            ),
            "{swapped}"
        );
        assert_no_key_material(&swapped);
    }

    #[test]
    fn tls12_only_server_negotiates_tls12() {
        let server =
            server_config_tls12_only(&server_files("server.crt", "rsa-pkcs1.key", None)).unwrap();
        let out = handshake(&client_tls(&default_client()).unwrap(), &server, VHOST);
        assert!(out.ok(), "{out:?}");
        assert_eq!(out.version, Some(ProtocolVersion::TLSv1_2));
        // The hostname relaxation works on the TLS 1.2 path too.
        let server =
            server_config_tls12_only(&server_files("cn-only.crt", "ec-sec1.key", None)).unwrap();
        let relaxed = client_tls(&client_settings(
            "ca1.crt",
            "client.crt",
            "rsa-pkcs8.key",
            VHOST,
            false,
        ))
        .unwrap();
        let out = handshake(&relaxed, &server, VHOST);
        assert_eq!(out.version, Some(ProtocolVersion::TLSv1_2), "{out:?}");
    }

    #[test]
    fn v1_client_certificate_loads() {
        // fluentd/fluent-bit (OpenSSL) accept v1 client certificates; loading must not refuse them.
        let s = client_settings("ca1.crt", "client-v1.crt", "ec-pkcs8.key", VHOST, true);
        client_tls(&s).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn file_errors_name_the_path_and_problem() {
        let p = pki();
        let path = |name: &str| p.path(name).display().to_string();
        let mismatch = |cert: &str| {
            format!(
                "the private key does not match the certificate in {}",
                path(cert)
            )
        };
        // (ca, cert, key, the file the message names, the rest of the message's start)
        #[rustfmt::skip]
        let cases: Vec<(&str, &str, &str, &str, String)> = vec![
            ("missing.crt", "client.crt", "rsa-pkcs8.key", "missing.crt", "file not found".into()),
            ("empty.pem", "client.crt", "rsa-pkcs8.key", "empty.pem", NO_CERTIFICATES.into()),
            ("text.pem", "client.crt", "rsa-pkcs8.key", "text.pem", NO_CERTIFICATES.into()),
            ("ec-sec1.key", "client.crt", "rsa-pkcs8.key", "ec-sec1.key",
                format!("{NO_CERTIFICATES}; the file holds a private key: {SWAPPED}")),
            ("garbage.pem", "client.crt", "rsa-pkcs8.key", "garbage.pem",
                "invalid PEM: base64 decode error".into()),
            ("bad-der.pem", "client.crt", "rsa-pkcs8.key", "bad-der.pem",
                "certificate 1 is not a valid X.509 certificate".into()),
            ("ca1", "client.crt", "rsa-pkcs8.key", "ca1", "cannot read: ".into()),
            ("ca1.crt", "missing.crt", "rsa-pkcs8.key", "missing.crt", "file not found".into()),
            ("ca1.crt", "bad-der.pem", "rsa-pkcs8.key", "bad-der.pem",
                "certificate 1 is not a valid X.509 certificate".into()),
            ("ca1.crt", "rsa-pkcs8.key", "rsa-pkcs8.key", "rsa-pkcs8.key", NO_CERTIFICATES.into()),
            ("ca1.crt", "client.crt", "missing.key", "missing.key", "file not found".into()),
            ("ca1.crt", "client.crt", "empty.pem", "empty.pem", NO_PRIVATE_KEY.into()),
            ("ca1.crt", "client.crt", "text.pem", "text.pem", NO_PRIVATE_KEY.into()),
            ("ca1.crt", "client.crt", "garbage.pem", "garbage.pem",
                "invalid PEM: base64 decode error".into()),
            ("ca1.crt", "client.crt", "bad-key.pem", "bad-key.pem", "unusable private key: ".into()),
            ("ca1.crt", "client.crt", "client.crt", "client.crt",
                format!("{NO_PRIVATE_KEY}; the file holds a certificate: {SWAPPED}")),
            ("ca1.crt", "client.crt", "encrypted.key", "encrypted.key",
                "the private key is encrypted".into()),
            ("ca1.crt", "client-ec.crt", "encrypted-sec1.key", "encrypted-sec1.key",
                "the private key is encrypted".into()),
            ("huge.pem", "client.crt", "rsa-pkcs8.key", "huge.pem",
                "larger than 4 MiB, not a PEM certificate or key file".into()),
            ("ca1.crt", "client.crt", "ec-pkcs8.key", "ec-pkcs8.key", mismatch("client.crt")),
            ("ca1.crt", "client.crt", "rsa-pkcs1.key", "rsa-pkcs1.key", mismatch("client.crt")),
            ("ca1.crt", "client-ec.crt", "ec-sec1.key", "ec-sec1.key", mismatch("client-ec.crt")),
        ];
        for (ca, cert, key, named, rest) in cases {
            let want = format!("{}: {rest}", path(named));
            let err = client_tls(&client_settings(ca, cert, key, VHOST, true))
                .expect_err(&want)
                .to_string();
            assert!(err.starts_with(&want), "got {err:?}\nwant {want:?}");
        }
        let err = server_config(&server_files("server.crt", "ec-sec1.key", None)).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let err = server_config(&server_files(
            "server.crt",
            "rsa-pkcs1.key",
            Some("empty.pem"),
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: {NO_CERTIFICATES}", path("empty.pem"))
        );
    }

    #[test]
    fn read_errors_say_what_happened() {
        // Permission bits cannot be exercised on disk when the tests run as root, so the
        // mapping from io::Error to the message is checked directly.
        let path = PathBuf::from("/x/client.key");
        for (kind, want) in [
            (io::ErrorKind::NotFound, "/x/client.key: file not found"),
            (
                io::ErrorKind::PermissionDenied,
                "/x/client.key: permission denied",
            ),
            (
                io::ErrorKind::InvalidData,
                "/x/client.key: cannot read: boom",
            ),
        ] {
            let err = TlsError::Read {
                path: path.clone(),
                source: io::Error::new(kind, "boom"),
            };
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn vhost_must_be_a_name_or_address() {
        for (vhost, ok) in [
            (VHOST, true),
            ("kubernetes-audit-tailer.kube-system.svc", true),
            ("10.96.12.34", true),
            ("::1", true),
            ("", false),
            ("has space", false),
            ("trailing..dots", false),
        ] {
            match server_name(vhost) {
                Ok(_) => assert!(ok, "{vhost:?} accepted"),
                Err(e) => {
                    assert!(!ok, "{vhost:?} refused: {e}");
                    assert_eq!(
                        e.to_string(),
                        format!("--tls-vhost {vhost:?}: not a valid DNS name or IP address")
                    );
                }
            }
        }
    }

    /// (file, version, subject CN, issuer CN, has SAN, names)
    type SummaryCase = (
        &'static str,
        u8,
        &'static str,
        &'static str,
        bool,
        &'static [&'static str],
    );

    #[test]
    fn cert_summary_reads_versions_names_and_san() {
        let p = pki();
        let cases: [SummaryCase; 4] = [
            (
                "server.crt",
                3,
                VHOST,
                "ca1",
                true,
                &[
                    "DNS:kubernetes-audit-tailer",
                    "DNS:tailer.example",
                    "IP:127.0.0.1",
                ],
            ),
            ("cn-only.crt", 3, VHOST, "ca1", false, &[]),
            ("v1.crt", 1, VHOST, "ca1", false, &[]),
            ("ca2.crt", 3, "ca2", "ca2", false, &[]),
        ];
        for (file, version, cn, issuer, has_san, names) in cases {
            let s = CertSummary::parse(&p.der(file)).unwrap_or_else(|| panic!("{file}"));
            assert_eq!(s.version, version, "{file}");
            assert_eq!(s.subject_cn.as_deref(), Some(cn), "{file}");
            assert_eq!(s.issuer_cn.as_deref(), Some(issuer), "{file}");
            assert_eq!(s.has_san, has_san, "{file}");
            assert_eq!(s.names, names, "{file}");
            assert_eq!(s.spki.first(), Some(&0x30), "{file}");
        }
        let der = p.der("server.crt");
        for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            assert_eq!(CertSummary::parse(&der[..cut]), None, "truncated at {cut}");
        }
        assert_eq!(
            CertSummary::parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }

    #[test]
    fn utc_renders_rfc3339() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_580_515_200, "2020-02-01T00:00:00Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
        ] {
            assert_eq!(
                utc(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                    secs
                ))),
                want
            );
        }
    }

    #[test]
    fn explain_without_a_certificate() {
        use rustls::{InvalidMessage, PeerIncompatible};
        let wrong_name = CertificateError::NotValidForNameContext {
            expected: server_name("audit.example").unwrap(),
            presented: vec![
                "DnsName(\"a.example\")".into(),
                "IpAddress(10.0.0.1)".into(),
            ],
        };
        let no_names = CertificateError::NotValidForNameContext {
            expected: server_name(VHOST).unwrap(),
            presented: vec![],
        };
        #[rustfmt::skip]
        let cases = [
            (Error::AlertReceived(AlertDescription::CertificateRequired),
                "the server requires a client certificate and none was sent (TLS alert \
                 CertificateRequired): set --tls-crt-file and --tls-key-file"),
            (Error::AlertReceived(AlertDescription::UnknownCA),
                "the server refused our client certificate (TLS alert UnknownCA)"),
            (Error::AlertReceived(AlertDescription::ProtocolVersion),
                "accepts neither TLS 1.3 nor TLS 1.2"),
            (Error::AlertReceived(AlertDescription::InternalError),
                "the server aborted the TLS handshake (TLS alert InternalError)"),
            (Error::InvalidMessage(InvalidMessage::InvalidContentType),
                "did not answer with valid TLS"),
            (Error::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13),
                "cannot agree on TLS parameters"),
            (Error::InvalidCertificate(CertificateError::BadEncoding),
                "not valid DER-encoded X.509"),
            (Error::InvalidCertificate(wrong_name),
                "not valid for \"kubernetes-audit-tailer\" (its names: DNS:a.example, IP:10.0.0.1)"),
            (Error::InvalidCertificate(no_names),
                "no subject alternative names (only a CN)"),
            (Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "the server certificate is not signed by the CA in --tls-ca-file"),
        ];
        for (err, want) in cases {
            let msg = explain(&err, VHOST, None);
            assert!(msg.contains(want), "{err:?}: {msg:?}");
        }
    }
}
