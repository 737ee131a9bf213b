//! TLS for stream transports (RFC 7011 section 11: "IPFIX Exporting and
//! Collecting Processes ... MUST support TLS" on TCP): building rustls
//! configurations from PEM files an operator makes with `openssl`, and
//! naming why a handshake failed.
//!
//! The crypto provider is rustls' `aws-lc-rs` one, passed explicitly so
//! nothing depends on a process-wide default being installed.

use std::fs::File;
use std::io::BufReader;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why a TLS configuration could not be built; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)")]
    /// The file holds no PEM certificate.
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    #[error("{path}: not a PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    /// The file holds no usable private key.
    PrivateKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    #[error("{path}: {source}")]
    /// The private key file is readable by group or others.
    KeyPermissions {
        /// The file.
        path: PathBuf,
        /// The mode check's verdict.
        source: protocol::signing::KeyError,
    },
    #[error("{path}: CA certificate not usable: {reason}")]
    /// The CA certificate cannot be used as a trust anchor.
    CaCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration rejected: {0}")]
    Rustls(String),
    #[error("`{0}` is not a DNS name or IP address to check the server certificate against")]
    /// The configured server name is neither a DNS name nor an IP address.
    ServerName(String),
}

/// The server side: our certificate chain and key, and optionally the CA
/// whose signature a client certificate must carry (mutual authentication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// Our certificate chain (PEM, leaf first).
    pub certificate_file: PathBuf,
    /// Its private key (PEM; refused when group or others may read it).
    pub private_key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_file: Option<PathBuf>,
}

/// The client side: the CA the server's certificate must chain to, and
/// optionally our own certificate and key for a server that asks for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The only CA the server's certificate may chain to.
    pub ca_file: PathBuf,
    /// Our certificate chain and key, both or neither.
    pub identity: Option<(PathBuf, PathBuf)>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read(path)?;
    let certificates: Vec<_> = CertificateDer::pem_reader_iter(&mut BufReader::new(&pem[..]))
        .collect::<Result<_, _>>()
        .map_err(|_| TlsConfigError::NoCertificate {
            path: path.to_owned(),
        })?;
    if certificates.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// The private key in a PEM file. The file must not be readable by group
/// or others: a TLS key that leaks lets anyone pose as this collector.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    check_key_mode(path)?;
    let file = File::open(path).map_err(|source| TlsConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_reader(BufReader::new(file)).map_err(|e| TlsConfigError::PrivateKey {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(unix)]
fn check_key_mode(path: &Path) -> Result<(), TlsConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| TlsConfigError::Read {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    protocol::signing::check_private_key_mode(mode).map_err(|source| {
        TlsConfigError::KeyPermissions {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(not(unix))]
fn check_key_mode(_path: &Path) -> Result<(), TlsConfigError> {
    Ok(())
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(path)? {
        roots
            .add(certificate)
            .map_err(|e| TlsConfigError::CaCertificate {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
    }
    Ok(roots)
}

/// A server configuration (TLS 1.2 and 1.3). With `client_ca_file` every
/// client must present a certificate signed by that CA.
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let chain = load_certificates(&files.certificate_file)?;
    let key = load_private_key(&files.private_key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
    let builder = match &files.client_ca_file {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider())
                    .build()
                    .map_err(|e| TlsConfigError::CaCertificate {
                        path: ca.clone(),
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsConfigError::Rustls(format!("certificate and key do not fit: {e}")))?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts only `ca_file` (not the system's
/// CAs: a collector's certificate comes from the operator's own CA).
pub fn client_config(files: &ClientTlsFiles) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
        .with_root_certificates(root_store(&files.ca_file)?);
    let config = match &files.identity {
        Some((certificate, key)) => builder
            .with_client_auth_cert(load_certificates(certificate)?, load_private_key(key)?)
            .map_err(|e| {
                TlsConfigError::Rustls(format!("client certificate and key do not fit: {e}"))
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name the server's certificate must carry: `name` when given (a DNS
/// name or an IP address), else the address connected to (the certificate
/// then needs it as an IP subjectAltName).
pub fn server_name(
    name: Option<&str>,
    address: IpAddr,
) -> Result<ServerName<'static>, TlsConfigError> {
    match name {
        Some(name) => ServerName::try_from(name.to_owned())
            .map_err(|_| TlsConfigError::ServerName(name.to_owned())),
        None => Ok(ServerName::IpAddress(address.into())),
    }
}

/// TLS on a framed TCP [`crate::Config`]: the listening side's acceptor,
/// or the connecting side's connector and the name the peer's certificate
/// must carry (`None`: the IP address connected to).
#[derive(Clone)]
pub enum StreamTls {
    /// The listening side.
    Server(TlsAcceptor),
    /// The connecting side.
    Client {
        /// Checks the server's certificate (and presents ours, if any).
        connector: TlsConnector,
        /// The name the server's certificate must carry; `None`: the IP
        /// address connected to.
        server_name: Option<ServerName<'static>>,
    },
}

impl std::fmt::Debug for StreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamTls::Server(_) => f.write_str("StreamTls::Server"),
            StreamTls::Client { server_name, .. } => f
                .debug_struct("StreamTls::Client")
                .field("server_name", server_name)
                .finish(),
        }
    }
}

impl StreamTls {
    /// The listening side from PEM files.
    pub fn server(files: &ServerTlsFiles) -> Result<Self, TlsConfigError> {
        Ok(StreamTls::Server(TlsAcceptor::from(server_config(files)?)))
    }

    /// `server_name`: a DNS name or IP address every peer's certificate
    /// carries; `None`: each peer's own IP address.
    pub fn client(
        files: &ClientTlsFiles,
        server_name: Option<&str>,
    ) -> Result<Self, TlsConfigError> {
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.to_owned())
                    .map_err(|_| TlsConfigError::ServerName(name.to_owned()))
            })
            .transpose()?;
        Ok(StreamTls::Client {
            connector: TlsConnector::from(client_config(files)?),
            server_name,
        })
    }
}

/// Counts (by reason) and logs, with the peer, a refused or failed TLS
/// handshake at a listener.
pub fn count_handshake_failure(peer: std::net::SocketAddr, reason: &'static str, detail: &str) {
    metrics::counter!("poolflow_collector_tls_handshake_failures_total", "reason" => reason)
        .increment(1);
    tracing::warn!(%peer, reason, "TLS handshake refused: {detail}");
}

/// A short, stable label (for a metric's `reason`) of why a TLS handshake
/// failed, from the error tokio-rustls returned.
pub fn handshake_failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::Error;
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        };
    };
    match tls {
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(_) => "bad_certificate",
        Error::AlertReceived(_) => "alert_received",
        Error::PeerIncompatible(_) => "incompatible",
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => "malformed",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_and_garbage_are_named() {
        let dir = std::env::temp_dir().join(format!("poolflow-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let err = load_certificates(&garbage).unwrap_err();
        assert!(matches!(err, TlsConfigError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        let missing = dir.join("missing.pem");
        let err = client_config(&ClientTlsFiles {
            ca_file: missing.clone(),
            identity: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn group_readable_private_key_is_refused_before_parsing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("poolflow-tls-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        std::fs::write(&key, "not a key\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_private_key(&key).unwrap_err();
        assert!(
            matches!(err, TlsConfigError::KeyPermissions { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Mode fine, content not a key: a parse error, still naming the file.
        let err = load_private_key(&key).unwrap_err();
        assert!(matches!(err, TlsConfigError::PrivateKey { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn server_name_defaults_to_the_address() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            server_name(None, ip).unwrap(),
            ServerName::IpAddress(ip.into())
        );
        assert!(matches!(
            server_name(Some("collector.example"), ip).unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name(Some("not a name!"), ip).is_err());
    }
}
