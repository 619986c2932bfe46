//! The process's one TLS crypto provider.
//!
//! Every TLS client in the service (the HTTP origin, the Redis connection with `rediss://`, the
//! OTLP/HTTP exporter) is rustls. rustls needs a crypto provider; we link *ring* rather than
//! aws-lc-rs (reqwest's default), which is about 1.5 MB smaller in the binary and builds without
//! cmake, and install it once for the whole process before any client is built. Installing is
//! idempotent: every place that builds a client calls [`install_crypto_provider`], so no order
//! of start-up (or a test building a part on its own) can meet a client without a provider.

/// Makes *ring* the process-wide rustls provider, unless one is installed already.
pub fn install_crypto_provider() {
    // `Err` means a provider is already installed (by us or by an embedding program): keep it.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
