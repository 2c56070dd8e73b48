//! Outbound STARTTLS: opportunistic TLS (RFC 7435) with the verification result recorded.
//!
//! The certificate chain and host name are always checked with rustls' WebPKI verifier.
//! The result is recorded for the attempt; when the destination does not require a verified
//! certificate, an unverifiable one is accepted anyway so that the session is still
//! encrypted. Handshake signatures are always verified against the presented certificate.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Shared TLS client state: the trust roots and the WebPKI verifier built over them.
#[derive(Clone, Debug)]
pub struct TlsClient {
    provider: Arc<CryptoProvider>,
    webpki: Arc<WebPkiServerVerifier>,
}

/// Records whether the last certificate presented verified.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    require_verified: bool,
    verified: Arc<AtomicBool>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => {
                self.verified.store(true, Ordering::SeqCst);
                Ok(v)
            }
            Err(e) => {
                self.verified.store(false, Ordering::SeqCst);
                if self.require_verified {
                    Err(e)
                } else {
                    tracing::debug!(error = %e, "certificate did not verify; continuing (opportunistic TLS)");
                    Ok(ServerCertVerified::assertion())
                }
            }
        }
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

/// One handshake's configuration and, after it, whether the certificate verified.
pub struct Handshake {
    pub config: Arc<ClientConfig>,
    verified: Arc<AtomicBool>,
}

impl Handshake {
    /// Whether the certificate chain and name verified (read after the handshake).
    pub fn verified(&self) -> bool {
        self.verified.load(Ordering::SeqCst)
    }
}

impl TlsClient {
    /// WebPKI roots plus the certificates of `extra_ca_file` (PEM), if given.
    pub fn new(extra_ca_file: Option<&Path>) -> Result<TlsClient, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca_file {
            let mut n = 0;
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
                n += 1;
            }
            if n == 0 {
                return Err(format!("no certificate in {}", path.display()));
            }
        }
        Self::with_roots(roots)
    }

    pub fn with_roots(roots: RootCertStore) -> Result<TlsClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("TLS verifier: {e}"))?;
        Ok(TlsClient { provider, webpki })
    }

    /// A fresh configuration for one handshake (no session resumption, so the certificate
    /// is verified, and recorded, on every connection).
    pub fn handshake(&self, require_verified: bool) -> Result<Handshake, String> {
        let verified = Arc::new(AtomicBool::new(false));
        let verifier = Arc::new(RecordingVerifier {
            inner: self.webpki.clone(),
            require_verified,
            verified: verified.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS config: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Handshake {
            config: Arc::new(config),
            verified,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use async_io::Async;
    use futures_rustls::{TlsAcceptor, TlsConnector};
    use rustls::pki_types::PrivateKeyDer;
    use std::net::{TcpListener, TcpStream};

    pub(crate) struct TestPki {
        pub ca_pem: String,
        pub ca_der: CertificateDer<'static>,
        pub server: Arc<rustls::ServerConfig>,
    }

    /// A test CA and a leaf for `names`, signed by it.
    pub(crate) fn test_pki(names: &[&str]) -> TestPki {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "outpost test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let leaf_params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf");
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("key der"),
        )
        .expect("server config");
        TestPki {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server: Arc::new(server),
        }
    }

    /// Handshakes against a test server; returns Ok(verified) or the client error.
    fn handshake(
        pki: &TestPki,
        client: &TlsClient,
        sni: &str,
        require: bool,
    ) -> Result<bool, String> {
        smol::block_on(async {
            let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
            let addr = listener.get_ref().local_addr().expect("addr");
            let acceptor = TlsAcceptor::from(pki.server.clone());
            let server = smol::spawn(async move {
                let (s, _) = listener.accept().await.expect("accept");
                let _ = acceptor.accept(s).await;
            });
            let tcp = Async::<TcpStream>::connect(addr).await.expect("connect");
            let hs = client.handshake(require).expect("config");
            let name = ServerName::try_from(sni.to_string()).expect("name");
            let r = TlsConnector::from(hs.config.clone())
                .connect(name, tcp)
                .await
                .map(|_| hs.verified())
                .map_err(|e| e.to_string());
            server.await;
            r
        })
    }

    #[test]
    fn records_verified_and_unverified_certificates() {
        let pki = test_pki(&["mx.test.example"]);
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca_der.clone()).expect("root");
        let trusting = TlsClient::with_roots(roots).expect("client");
        let webpki_only = TlsClient::new(None).expect("client");

        // Trusted CA and matching name: verified.
        assert_eq!(
            handshake(&pki, &trusting, "mx.test.example", false),
            Ok(true)
        );
        assert_eq!(
            handshake(&pki, &trusting, "mx.test.example", true),
            Ok(true)
        );
        // Wrong name: encrypted anyway, recorded as unverified; refused when required.
        assert_eq!(
            handshake(&pki, &trusting, "other.example", false),
            Ok(false)
        );
        assert!(handshake(&pki, &trusting, "other.example", true).is_err());
        // Unknown CA: the same.
        assert_eq!(
            handshake(&pki, &webpki_only, "mx.test.example", false),
            Ok(false)
        );
        assert!(handshake(&pki, &webpki_only, "mx.test.example", true).is_err());
    }

    #[test]
    fn extra_ca_file_is_trusted() {
        let pki = test_pki(&["mx.test.example"]);
        let dir = std::env::temp_dir().join(format!("outpost-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("ca.pem");
        std::fs::write(&path, &pki.ca_pem).expect("write");
        let client = TlsClient::new(Some(&path)).expect("client");
        std::fs::write(&path, "not pem").expect("write");
        assert!(TlsClient::new(Some(&path)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(handshake(&pki, &client, "mx.test.example", true), Ok(true));
    }
}
