//! Trusting an https upstream's self-signed certificate that is marked as a
//! CA, when `upstream_ca_file` holds that very certificate.
//!
//! `openssl req -x509`, the usual way to make a certificate for a test or
//! in-house backend, marks it `CA:TRUE`. WebPKI refuses a CA certificate as
//! a server's own (`CaUsedAsEndEntity`), even one it trusts as a root;
//! curl and OpenSSL take it. So the verifier here asks WebPKI first, and
//! only where that is WebPKI's one objection and the certificate is
//! byte for byte one of the file's, checks the name itself. WebPKI checks
//! the validity period before that objection, so an expired certificate is
//! still refused as expired.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

/// WebPKI, plus the certificates of `upstream_ca_file` taken as they are.
#[derive(Debug)]
pub(super) struct PinnedOrWebPki {
    webpki: Arc<WebPkiServerVerifier>,
    /// The certificates of `upstream_ca_file`.
    pinned: Vec<CertificateDer<'static>>,
}

impl PinnedOrWebPki {
    pub(super) fn new(
        webpki: Arc<WebPkiServerVerifier>,
        pinned: Vec<CertificateDer<'static>>,
    ) -> Self {
        Self { webpki, pinned }
    }
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match verified {
            Err(error) if is_ca_used_as_end_entity(&error) && self.pinned.contains(end_entity) => {
                let cert = webpki::EndEntityCert::try_from(end_entity)
                    .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
                cert.verify_is_valid_for_subject_name(server_name)
                    .map_err(|error| Error::InvalidCertificate(not_valid_for_name(error)))?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// As rustls reports a name mismatch: with the names expected and presented.
fn not_valid_for_name(error: webpki::Error) -> CertificateError {
    match error {
        webpki::Error::CertNotValidForName(names) => CertificateError::NotValidForNameContext {
            expected: names.expected,
            presented: names.presented,
        },
        _ => CertificateError::NotValidForName,
    }
}

fn is_ca_used_as_end_entity(error: &Error) -> bool {
    let Error::InvalidCertificate(CertificateError::Other(OtherError(other))) = error else {
        return false;
    };
    other.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity)
}
