//! TLS to the server through rustls (with the `ring` provider: no C toolchain
//! beyond what SQLite already needs, no system OpenSSL), for `sslmode`
//! `require`, `verify-ca` and `verify-full`, with libpq's meanings:
//!
//! - `require`: encrypted; the certificate is not checked (unless
//!   `sslrootcert` is given, which makes it `verify-ca`);
//! - `verify-ca`: the certificate must chain to `sslrootcert` (default
//!   `~/.postgresql/root.crt`);
//! - `verify-full`: that, and it must name the host.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector for `tls` (never [`Tls::Off`]).
pub(super) fn connector(tls: &Tls) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?;
    let config = match tls {
        Tls::Off | Tls::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth(),
        Tls::Verify { root, host } => {
            let roots = Arc::new(root_certificates(root.as_deref())?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .context("setting up TLS")?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Checked {
                    webpki,
                    host: *host,
                }))
                .with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The certificates in `root` (PEM), or in libpq's default file.
fn root_certificates(root: Option<&std::path::Path>) -> Result<RootCertStore> {
    let path = match root {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("HOME")
            .map(|h| std::path::Path::new(&h).join(".postgresql/root.crt"))
            .context("sslmode verify-ca or verify-full needs sslrootcert (no HOME for ~/.postgresql/root.crt)")?,
    };
    let pem = std::fs::read(&path)
        .with_context(|| format!("reading the root certificate {}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.with_context(|| format!("reading {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a certificate in {}", path.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("no certificate in {}", path.display());
    }
    Ok(roots)
}

/// `sslmode=require`: encryption without checking who answers.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` and `verify-full`: the chain is checked; the name only for
/// verify-full.
#[derive(Debug)]
struct Checked {
    webpki: Arc<WebPkiServerVerifier>,
    host: bool,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.host => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// How to use TLS (`sslmode`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tls {
    /// `disable`, `allow`, `prefer` (the default): no TLS.
    Off,
    /// `require`: encrypted, the server's certificate not checked (libpq's
    /// meaning, unless a root certificate is given).
    Require,
    /// `verify-ca`, `verify-full`: encrypted, the certificate checked against
    /// `sslrootcert` (and, for verify-full, the host name).
    Verify { root: Option<PathBuf>, host: bool },
}
