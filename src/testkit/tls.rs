//! The fake gateway's TLS mode: a CA and a `localhost`/`127.0.0.1` certificate it signs, both
//! generated at start (rcgen), and a server config that counts the handshakes clients begin.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// What a TLS-mode fake keeps: the CA a client must trust, and the handshake count.
pub(crate) struct FakeTls {
    pub ca_der: Vec<u8>,
    pub handshakes: Arc<AtomicUsize>,
}

/// Serves the one certificate, counting every ClientHello: a handshake begun, whether or not the
/// client goes on to accept the certificate.
#[derive(Debug)]
struct CountingResolver {
    key: Arc<CertifiedKey>,
    hellos: Arc<AtomicUsize>,
}

impl ResolvesServerCert for CountingResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.hellos.fetch_add(1, Ordering::SeqCst);
        Some(self.key.clone())
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("fake gateway TLS: {e}"))
}

/// A fresh CA, a server certificate for `localhost` and `127.0.0.1` signed by it, and the rustls
/// server config that presents them (with the `ring` provider named, like the client's).
pub(crate) fn generate() -> io::Result<(FakeTls, rustls::ServerConfig)> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "shardline fake gateway CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(other)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(other)?;
    let ca = Issuer::new(ca_params, ca_key);

    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(other)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().map_err(other)?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(other)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let signing_key = provider.key_provider.load_private_key(key).map_err(other)?;
    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca_cert.der().clone()];
    let hellos = Arc::new(AtomicUsize::new(0));
    let resolver = CountingResolver {
        key: Arc::new(CertifiedKey::new(chain, signing_key)),
        hellos: hellos.clone(),
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    // ALPN is left to actix-http, which offers h2 and http/1.1: a client that offered h2 would get
    // it, and its websocket upgrade (an HTTP/1.1 request) would fail.
    Ok((
        FakeTls {
            ca_der: ca_cert.der().to_vec(),
            handshakes: hellos,
        },
        config,
    ))
}
