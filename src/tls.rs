//! TLS material with rustls: PEM loading, the server configuration clients
//! negotiate with (ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3), and the client
//! configuration for https upstreams (Mozilla roots plus an optional private
//! CA, and an optional client certificate for mutual TLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A TLS file that could not be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file is missing, unreadable or not PEM.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    /// The file holds no certificate.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    /// rustls refused the material (a key that does not match its certificate, say).
    #[error("{}: {source}", path.display())]
    Refused {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// The one crypto provider chorus is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
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

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The server configuration for a certificate chain and its key.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let certs = read_certs(cert)?;
    let key_der = read_key(key)?;
    let refused = |source| TlsError::Refused {
        path: key.to_owned(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(refused)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The client configuration for https upstreams: the Mozilla roots, plus
/// `extra_ca` if given, and a client certificate if given. ALPN is set by
/// the connector.
pub fn client_config(
    extra_ca: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|source| TlsError::Refused {
                path: path.to_owned(),
                source,
            })?;
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Refused {
            path: PathBuf::new(),
            source,
        })?
        .with_root_certificates(roots);
    match client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|source| TlsError::Refused {
                path: key.to_owned(),
                source,
            }),
    }
}
