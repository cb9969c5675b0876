//! TLS with rustls (ring provider, no OpenSSL), both ways.
//!
//! - Toward clients: [`server_config`] offers ALPN `h2` and `http/1.1` on the
//!   same port, TLS 1.2 and 1.3 only, and takes its certificate from a
//!   [`ServerCert`], which can be reloaded while the gateway runs ([`reload`]).
//! - Toward upstreams: [`client_config`] trusts the Mozilla roots, plus an
//!   optional private CA, and presents an optional client certificate for
//!   mutual TLS. ALPN (h2, then http/1.1) is set by the connector in
//!   [`crate::upstream`].
//! - [`check()`] and [`check_files()`] read every TLS file a config names,
//!   for `chorus check` and for start-up, and report each problem under its
//!   config key.
//!
//! PEM files are read whole with `std::fs`; they are small, and read once at
//! start-up or on a reload, never on the request path.

mod check;
mod pinned;
pub mod reload;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pinned::PinnedOrWebPki;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::GatewayError;
use crate::framing;

pub use check::{check, check_files};
pub use reload::{ReloadError, ReloadHandle, ReloadRequests, Reloaded, ServerCert, reload_channel};

/// A TLS file that could not be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file is missing or unreadable.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    /// The file holds text that is not well-formed PEM.
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem { path: PathBuf, source: pem::Error },
    /// The file holds no `CERTIFICATE` block.
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    /// The file holds no private key block that can be used.
    #[error(
        "{} holds no PEM private key (unencrypted PKCS#8, PKCS#1 or SEC1)",
        path.display()
    )]
    NoKey { path: PathBuf },
    /// The private key is not the one the certificate was issued for.
    #[error("the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused the material (an unsupported key type, a malformed
    /// certificate).
    #[error("{}: {source}", path.display())]
    Refused {
        path: PathBuf,
        source: rustls::Error,
    },
    /// The crypto provider does not support TLS 1.2 and 1.3 (a build mistake).
    #[error("the TLS provider cannot be used: {0}")]
    Provider(rustls::Error),
}

/// Which file of a certificate-and-key pair a [`TlsError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    /// The certificate chain.
    Cert,
    /// The private key (also blamed when the two do not match).
    Key,
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The one crypto provider chorus is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file, in order; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
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

/// The first private key in a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}

/// What is wrong with a certificate-and-key pair: one problem, or two when
/// neither file can be read.
#[derive(Debug)]
pub struct PairError {
    /// The first problem found.
    pub first: (PairFile, TlsError),
    /// A problem with the other file, if both are unreadable.
    pub second: Option<Box<(PairFile, TlsError)>>,
}

impl PairError {
    fn one(file: PairFile, error: TlsError) -> Self {
        Self {
            first: (file, error),
            second: None,
        }
    }

    /// Every problem, in file order (certificate, then key).
    pub fn iter(&self) -> impl Iterator<Item = &(PairFile, TlsError)> {
        std::iter::once(&self.first).chain(self.second.as_deref())
    }
}

impl From<PairError> for TlsError {
    /// The first problem, for callers that report one.
    fn from(error: PairError) -> Self {
        error.first.1
    }
}

/// Reads a certificate chain and its key, and checks that they belong
/// together.
pub(crate) fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, PairError> {
    let (certs, key_der) = match (read_certs(cert), read_key(key)) {
        (Ok(certs), Ok(key_der)) => (certs, key_der),
        (Err(cert_error), Ok(_)) => return Err(PairError::one(PairFile::Cert, cert_error)),
        (Ok(_), Err(key_error)) => return Err(PairError::one(PairFile::Key, key_error)),
        (Err(cert_error), Err(key_error)) => {
            return Err(PairError {
                first: (PairFile::Cert, cert_error),
                second: Some(Box::new((PairFile::Key, key_error))),
            });
        }
    };
    let refused = |file: PairFile, path: &Path, source| {
        let path = path.to_owned();
        PairError::one(file, TlsError::Refused { path, source })
    };
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| refused(PairFile::Key, key, source))?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        // ring can always tell; `Unknown` is kept for other key providers.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            let mismatch = TlsError::Mismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            };
            Err(PairError::one(PairFile::Key, mismatch))
        }
        // The leaf certificate itself could not be parsed.
        Err(source) => Err(refused(PairFile::Cert, cert, source)),
    }
}

/// The server configuration: ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3, and
/// whatever certificate `cert` holds at each handshake.
pub fn server_config(cert: Arc<ServerCert>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The trust roots for https upstreams: the Mozilla roots, plus every
/// certificate in `extra_ca` if given, which come back on their own too.
fn roots(
    extra_ca: Option<&Path>,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let Some(path) = extra_ca else {
        return Ok((roots, Vec::new()));
    };
    let extra = read_certs(path)?;
    for cert in &extra {
        roots
            .add(cert.clone())
            .map_err(|source| TlsError::Refused {
                path: path.to_owned(),
                source,
            })?;
    }
    Ok((roots, extra))
}

/// The client configuration for https upstreams: the Mozilla roots, plus
/// `extra_ca` if given (see `tls/pinned.rs` for a certificate that is the
/// upstream's own), and a client certificate if given. ALPN is set by the
/// connector; SNI is on, and the certificate must name the upstream host.
pub fn client_config(
    extra_ca: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let (roots, extra) = roots(extra_ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?;
    let builder = if extra.is_empty() {
        builder.with_root_certificates(roots)
    } else {
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|error| TlsError::Provider(rustls::Error::General(error.to_string())))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedOrWebPki::new(webpki, extra)))
    };
    Ok(match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certified = load_pair(cert, key)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
        }
    })
}

/// How a connection to the TLS port began.
pub enum Accepted {
    /// A completed TLS handshake.
    Tls(Box<TlsStream<TcpStream>>),
    /// A plain HTTP request, answered with a 400 that says to use https:
    /// its method and path, where its request line reads as one.
    PlainHttp(Option<http::Method>, Option<Box<str>>),
}

/// The server side of a handshake. A client that speaks plain HTTP to the
/// TLS port is told so in plain HTTP, as nginx does, rather than left with a
/// closed connection; anything else that is not TLS fails the handshake.
pub async fn accept(acceptor: &TlsAcceptor, mut stream: TcpStream) -> io::Result<Accepted> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    // Neither a handshake nor a request method: rustls names what it got.
    if first[0] == TLS_HANDSHAKE_RECORD || !first[0].is_ascii_uppercase() {
        let stream = acceptor.accept(stream).await?;
        return Ok(Accepted::Tls(Box::new(stream)));
    }
    // Read the request first, so that closing does not reset the connection
    // before the client has read the answer.
    let mut request = [0u8; 4096];
    let read = stream.read(&mut request).await?;
    let (method, path) = framing::request_line(&request[..read]);
    let body =
        GatewayError::BadRequest("this port speaks HTTPS: use an https:// URL").response_body();
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nx-chorus-role: bypass\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await?;
    Ok(Accepted::PlainHttp(method, path))
}
