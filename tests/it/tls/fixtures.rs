//! TLS fixtures: a private CA that writes PEM files to a temp dir, TLS
//! clients that report what they negotiated, and an https upstream (a TLS
//! terminator in front of the built-in mock).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ProtocolVersion, RootCertStore, ServerConfig, SupportedProtocolVersion,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::support::{PATIENCE, read_to_close};

pub const H2: &[u8] = b"h2";
pub const HTTP11: &[u8] = b"http/1.1";

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A private CA whose certificates are written as PEM files in a temp dir.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, as a PEM file.
    pub ca: PathBuf,
    ca_der: CertificateDer<'static>,
}

/// A certificate and its key, as PEM text and as files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "chorus test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        Self {
            dir,
            issuer: Issuer::new(params, key),
            ca,
            ca_der: cert.der().clone(),
        }
    }

    /// A path in the temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A server certificate for `names` (DNS names or IP addresses), written
    /// as `{file}.crt` and `{file}.key`.
    pub fn server(&self, file: &str, names: &[&str]) -> Leaf {
        self.leaf(file, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate, written as `{file}.crt` and `{file}.key`.
    pub fn client(&self, file: &str) -> Leaf {
        self.leaf(
            file,
            &["client.chorus.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn leaf(&self, file: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::new(owned(names)).unwrap();
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        self.written(file, &cert, &key)
    }

    /// A self-signed server certificate for `names` marked as a CA, as
    /// `openssl req -x509` makes one, written as `{file}.crt` and `{file}.key`.
    pub fn self_signed_ca(&self, file: &str, names: &[&str]) -> Leaf {
        let mut params = CertificateParams::new(owned(names)).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, file);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        self.written(file, &cert, &key)
    }

    /// `cert` and `key` as a [`Leaf`], written as `{file}.crt` and `{file}.key`.
    fn written(&self, file: &str, cert: &Certificate, key: &KeyPair) -> Leaf {
        let leaf = Leaf {
            cert: self.path(&format!("{file}.crt")),
            key: self.path(&format!("{file}.key")),
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        leaf.write_to(&leaf.cert, &leaf.key);
        leaf
    }

    /// Trust in this CA only.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        roots
    }

    /// A client configuration trusting this CA, offering `alpn`, speaking
    /// only `versions`, never resuming a session.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Every connection shows the certificate: a resumed session would
        // report the one it was first made with.
        config.resumption = Resumption::disabled();
        Arc::new(config)
    }
}

fn owned(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

impl Leaf {
    /// Writes this pair over `cert` and `key`, in place.
    pub fn write_to(&self, cert: &Path, key: &Path) {
        std::fs::write(cert, &self.cert_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }

    /// Replaces `cert` and `key` with this pair the way certificate tools
    /// do: a new file renamed over the old one.
    pub fn rename_over(&self, cert: &Path, key: &Path) {
        for (path, text) in [(key, &self.key_pem), (cert, &self.cert_pem)] {
            let fresh = path.with_extension("new");
            std::fs::write(&fresh, text).unwrap();
            std::fs::rename(&fresh, path).unwrap();
        }
    }
}

/// The sender half of a client connection, HTTP/1.1 or HTTP/2 by ALPN.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// A TLS connection to the gateway, with what was negotiated.
pub struct TlsClient {
    /// The ALPN protocol the server picked.
    pub alpn: Option<Vec<u8>>,
    /// The leaf certificate the server presented.
    pub peer: CertificateDer<'static>,
    pub version: ProtocolVersion,
    sender: Sender,
}

impl TlsClient {
    /// Connects to `addr` as `localhost` and speaks h2 if the server picked
    /// it, HTTP/1.1 otherwise.
    pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Self {
        tokio::time::timeout(PATIENCE, Self::try_connect(addr, config))
            .await
            .expect("TLS handshake did not finish in time")
            .expect("TLS handshake failed")
    }

    /// [`TlsClient::connect`], failing instead of panicking.
    pub async fn try_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let stream = TlsConnector::from(config).connect(name, tcp).await?;
        let (_, session) = stream.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let peer = session.peer_certificates().unwrap()[0].clone();
        let version = session.protocol_version().unwrap();
        let io = TokioIo::new(stream);
        let sender = if alpn.as_deref() == Some(H2) {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(connection);
            Sender::H2(sender)
        } else {
            let (sender, connection) = http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            Sender::H1(sender)
        };
        Ok(Self {
            alpn,
            peer,
            version,
            sender,
        })
    }

    /// A POST of a JSON `body` to `path`, in the form this connection's
    /// protocol wants (an absolute URI for h2, `Host` for HTTP/1.1).
    pub fn post(&self, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
        let uri = match self.sender {
            Sender::H1(_) => path.to_owned(),
            Sender::H2(_) => format!("https://localhost{path}"),
        };
        Request::post(uri)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap()
    }

    /// Sends a request on this connection; its response head.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Response<Incoming> {
        let response = async {
            match &mut self.sender {
                Sender::H1(sender) => {
                    sender.ready().await?;
                    sender.send_request(request).await
                }
                Sender::H2(sender) => {
                    sender.ready().await?;
                    sender.send_request(request).await
                }
            }
        };
        tokio::time::timeout(PATIENCE, response)
            .await
            .expect("no response head in time")
            .expect("request failed")
    }
}

/// An https upstream: a TLS terminator in front of a plain backend (the
/// mock), passing bytes both ways; whatever ALPN picked is spoken straight
/// to the mock, which serves HTTP/1.1 and h2 on one port.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    handshakes: Arc<AtomicU64>,
    /// The protocol each handshake agreed on by ALPN.
    agreed: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    task: JoinHandle<()>,
}

impl TlsUpstream {
    /// Serves `leaf` with `alpn` offered; asks for a client certificate
    /// signed by `client_ca` when given.
    pub async fn start(
        backend: SocketAddr,
        leaf: &Leaf,
        alpn: &[&[u8]],
        client_ca: Option<&Pki>,
    ) -> Self {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(pki) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(pki.roots()), provider())
                    .build()
                    .unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let certs = CertificateDer::pem_file_iter(&leaf.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
        let mut config = builder.with_single_cert(certs, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&handshakes);
        let agreed = Arc::new(Mutex::new(Vec::new()));
        let noted = Arc::clone(&agreed);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counted = Arc::clone(&counted);
                let noted = Arc::clone(&noted);
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                    noted.lock().unwrap().push(alpn);
                    counted.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Self {
            addr,
            handshakes,
            agreed,
            task,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// The protocol each handshake so far agreed on by ALPN, in order.
    pub fn agreed(&self) -> Vec<Option<Vec<u8>>> {
        self.agreed.lock().unwrap().clone()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the peer closes a connection on which `bytes` were sent, within
/// `PATIENCE`; what it sent back before closing.
pub async fn closes_after(addr: SocketAddr, bytes: &[u8]) -> (bool, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_close(&mut stream, tokio::time::Instant::now() + PATIENCE).await
}

/// Retries `attempt` until it yields something or `PATIENCE` runs out,
/// pausing `pause` in between (for state that is only observable by asking).
pub async fn eventually<T, F>(pause: Duration, mut attempt: impl FnMut() -> F) -> Option<T>
where
    F: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(found) = attempt().await {
            return Some(found);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(pause).await;
    }
}
