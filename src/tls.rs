//! TLS for the connections switchyard opens: rustls, with *ring* as its
//! cryptography, installed once as the process default (reqwest is built
//! without a provider of its own, so one library serves every client).

/// Makes *ring* rustls's process-wide provider; later calls do nothing.
pub fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when a provider is already installed: that one stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
