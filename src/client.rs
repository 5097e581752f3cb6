//! The awc clients the shards and `GET /gateway/bot` connect through, and the TLS settings they
//! share.
//!
//! The TLS client configuration is built here, explicitly with rustls' `ring` provider: awc's own
//! default (and rustls' `ClientConfig::builder()`) takes the process-wide provider, and panics in a
//! bot whose dependency tree enables a second one (aws-lc-rs) without installing either.
//! Certificates are always verified, against the webpki roots plus the roots the config adds.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

#[cfg(feature = "rustls")]
use rustls::pki_types::pem::PemObject;
#[cfg(feature = "rustls")]
use rustls::pki_types::CertificateDer;

use crate::error::ConfigError;

/// A root certificate added to the config, as the bot gave it; parsed in `ConfigBuilder::build`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootCertificate {
    /// One DER-encoded certificate.
    Der(Vec<u8>),
    /// One or more PEM `CERTIFICATE` blocks.
    Pem(Vec<u8>),
}

/// The TLS settings of one config: cheap to clone, compared by identity.
#[derive(Clone)]
pub(crate) struct Tls(Arc<TlsInner>);

struct TlsInner {
    /// Keys the per-thread clients: two configs with different roots never share a client.
    id: u64,
    #[cfg(feature = "rustls")]
    extra_roots: Vec<CertificateDer<'static>>,
    /// Built on first use; `ConfigBuilder::build` forces it, so a failure is a config error.
    #[cfg(feature = "rustls")]
    config: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Tls");
        d.field("id", &self.0.id);
        #[cfg(feature = "rustls")]
        d.field("extra_roots", &self.0.extra_roots.len());
        d.finish()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl Default for Tls {
    /// The webpki roots alone: one process-wide value, so every config without extra roots shares
    /// the same per-thread client.
    fn default() -> Self {
        static DEFAULT: OnceLock<Tls> = OnceLock::new();
        DEFAULT.get_or_init(Self::no_extra_roots).clone()
    }
}

impl Tls {
    #[cfg(feature = "rustls")]
    fn no_extra_roots() -> Self {
        Self::new(Vec::new())
    }

    #[cfg(not(feature = "rustls"))]
    fn no_extra_roots() -> Self {
        Self::new()
    }

    fn new(#[cfg(feature = "rustls")] extra_roots: Vec<CertificateDer<'static>>) -> Self {
        Self(Arc::new(TlsInner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            #[cfg(feature = "rustls")]
            extra_roots,
            #[cfg(feature = "rustls")]
            config: OnceLock::new(),
        }))
    }

    /// The webpki roots plus `extra`. A certificate that does not parse is a config error naming
    /// it (its index among the ones added); so is a TLS config rustls refuses.
    pub fn with_roots(extra: &[RootCertificate]) -> Result<Self, ConfigError> {
        #[cfg(feature = "rustls")]
        {
            let tls = if extra.is_empty() {
                Self::default()
            } else {
                Self::new(parse_roots(extra)?)
            };
            tls.client_config().map_err(ConfigError::Tls)?;
            Ok(tls)
        }
        #[cfg(not(feature = "rustls"))]
        {
            if extra.is_empty() {
                return Ok(Self::default());
            }
            Err(ConfigError::InvalidRootCertificate {
                index: 0,
                reason: "root certificates need the `rustls` feature".to_owned(),
            })
        }
    }

    #[cfg(feature = "rustls")]
    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.0
            .config
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                for cert in &self.0.extra_roots {
                    roots.add(cert.clone()).map_err(|e| e.to_string())?;
                }
                client_config(roots)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }
}

/// Every certificate of `extra`, each checked to be one a root store takes.
#[cfg(feature = "rustls")]
fn parse_roots(extra: &[RootCertificate]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let mut parsed = Vec::new();
    let mut check = rustls::RootCertStore::empty();
    for (index, root) in extra.iter().enumerate() {
        let invalid = |reason: String| ConfigError::InvalidRootCertificate { index, reason };
        let certs = match root {
            RootCertificate::Der(der) => vec![CertificateDer::from(der.clone())],
            RootCertificate::Pem(pem) => {
                let certs = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(format!("bad PEM: {e}")))?;
                if certs.is_empty() {
                    return Err(invalid("no PEM CERTIFICATE block".to_owned()));
                }
                certs
            }
        };
        for cert in certs {
            check
                .add(cert.clone())
                .map_err(|e| invalid(e.to_string()))?;
            parsed.push(cert);
        }
    }
    Ok(parsed)
}

/// The rustls client config for `roots`: the `ring` provider named explicitly, never the process
/// default, and ALPN `http/1.1` only (the websocket upgrade is an HTTP/1.1 request).
#[cfg(feature = "rustls")]
fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client for `tls`. awc's `Connector::new()` builds no TLS config of its own here (the `rustls`
/// feature enables awc's `rustls-0_23` without its default roots), so nothing touches the
/// process-wide crypto provider. `limit(0)`: a websocket keeps its connector slot for life, and the
/// default limit of 100 would hold shard 101 back forever. `timeout` is per request; `None` for
/// the websocket clients, whose shard times its handshake itself.
fn client(tls: &Tls, timeout: Option<Duration>) -> awc::Client {
    let connector = awc::Connector::new().limit(0);
    #[cfg(feature = "rustls")]
    let connector = match tls.client_config() {
        Ok(config) => connector.rustls_0_23(config),
        Err(error) => {
            // `ConfigBuilder::build` already built this config, so this cannot happen; if it did,
            // the client has no TLS at all and every wss:// or https:// connect fails: closed,
            // never unverified.
            tracing::error!(%error, "TLS client configuration refused");
            connector
        }
    };
    #[cfg(not(feature = "rustls"))]
    let _ = tls;
    let builder = awc::Client::builder().connector(connector);
    let builder = match timeout {
        Some(timeout) => builder.timeout(timeout),
        None => builder.disable_timeout(),
    };
    builder.finish()
}

thread_local! {
    // awc's client is not Send: one per arbiter thread and TLS settings. The weak reference lets
    // the clients of configs that are gone be dropped.
    static CLIENTS: RefCell<HashMap<u64, (Weak<TlsInner>, awc::Client)>> =
        RefCell::new(HashMap::new());
}

/// This thread's websocket client for `tls`.
pub(crate) fn ws_client(tls: &Tls) -> awc::Client {
    CLIENTS.with(|clients| {
        let mut clients = clients.borrow_mut();
        if let Some((_, client)) = clients.get(&tls.0.id) {
            return client.clone();
        }
        clients.retain(|_, (settings, _)| settings.strong_count() > 0);
        let client = client(tls, None);
        clients.insert(tls.0.id, (Arc::downgrade(&tls.0), client.clone()));
        client
    })
}

/// A client for one REST call, with the same TLS settings as the shards.
pub(crate) fn rest_client(tls: &Tls, timeout: Duration) -> awc::Client {
    client(tls, Some(timeout))
}

#[cfg(all(test, feature = "rustls", feature = "testkit"))]
mod tests {
    use super::*;

    fn clients_on_this_thread() -> usize {
        CLIENTS.with(|clients| clients.borrow().len())
    }

    #[test]
    fn clients_never_touch_the_process_wide_crypto_provider() {
        // rustls' `ClientConfig::builder()` (which awc's default-roots connector calls) installs
        // the provider of its crate features as the process default, and panics where two are
        // enabled: a default still unset after building clients shows neither path was taken.
        actix_rt::System::new().block_on(async {
            let tls = Tls::with_roots(&[]).unwrap();
            let _ = ws_client(&tls);
            let _ = rest_client(&tls, Duration::from_secs(1));
        });
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
    }

    #[test]
    fn the_client_config_offers_http_1_1_only_and_trusts_webpki_and_added_roots() {
        let default = Tls::default().client_config().unwrap();
        assert_eq!(default.alpn_protocols, [b"http/1.1".to_vec()]);
        assert!(Arc::ptr_eq(
            &Tls::with_roots(&[]).unwrap().0,
            &Tls::default().0
        ));
        let der = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap()
            .cert
            .der()
            .to_vec();
        let with_root = Tls::with_roots(&[RootCertificate::Der(der)]).unwrap();
        assert_ne!(with_root.0.id, Tls::default().0.id);
        assert_eq!(with_root.0.extra_roots.len(), 1);
        assert!(with_root.client_config().is_ok());
    }

    #[test]
    fn each_tls_setting_gets_its_own_client_and_gone_ones_are_dropped() {
        let der = || {
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
                .unwrap()
                .cert
                .der()
                .to_vec()
        };
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async {
                let webpki = Tls::default();
                let custom = Tls::with_roots(&[RootCertificate::Der(der())]).unwrap();
                let _ = ws_client(&webpki);
                let _ = ws_client(&webpki.clone());
                assert_eq!(clients_on_this_thread(), 1);
                let _ = ws_client(&custom);
                assert_eq!(clients_on_this_thread(), 2);
                drop(custom);
                let other = Tls::with_roots(&[RootCertificate::Der(der())]).unwrap();
                let _ = ws_client(&other);
                // The dropped settings' client went; the live ones stay.
                assert_eq!(clients_on_this_thread(), 2);
                CLIENTS.with(|clients| {
                    let clients = clients.borrow();
                    assert!(clients.contains_key(&webpki.0.id));
                    assert!(clients.contains_key(&other.0.id));
                });
            })
        })
        .join()
        .unwrap();
    }
}
