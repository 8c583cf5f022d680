//! The process-wide rustls provider. rustls picks one by itself only when
//! exactly one is compiled in; the object-store clients (reqwest) bring
//! aws-lc-rs beside the ring that sqlx, kube and neo4rs use, so the clients
//! that ask rustls for its default (kube, neo4rs, reqwest) need it
//! installed. Every place that builds such a client calls [`ensure_provider`].

/// Installs ring as the process's default provider, unless one is already
/// installed (then nothing changes). Idempotent and cheap.
pub fn ensure_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race: either way a provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
