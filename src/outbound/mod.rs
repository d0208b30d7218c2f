//! Herald's own outgoing HTTP requests: the TLS client settings (the JWKS fetch, `https://`
//! backend hooks and webhooks), with the public roots and a private CA where one is
//! configured, and the keep-alive HTTP/1.1 client of the hooks and webhooks (`client.rs`).

pub mod client;

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A TLS client configuration trusting the public roots and, if given, the CAs in the PEM
/// file `ca`.
pub fn tls_client(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let what = |e: String| format!("{}: {e}", path.display());
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| what(e.to_string()))? {
            roots.add(cert.map_err(|e| what(e.to_string()))?).map_err(|e| what(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
