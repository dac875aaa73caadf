//! What every Google backend (Pub/Sub, BigQuery, GCS) resolves the same way: the endpoint (the
//! configured one, else the emulator's from its environment variable), whether to go anonymous, the
//! project, and the TLS provider.

pub use crate::config::gcp::Credentials;

/// Installs the TLS crypto provider once: the Google crates are built without their default
/// (aws-lc) provider, which keeps the build small; `ring` serves instead.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The endpoint: `configured`, else `$EMULATOR_VAR` (`host:port` or a URL), with `http://` added
/// to a bare host and no trailing slash; `None` for Google's own.
pub fn endpoint(configured: Option<&str>, emulator_var: &str) -> Option<String> {
    let raw = match configured {
        Some(endpoint) => endpoint.to_string(),
        None => std::env::var(emulator_var).ok().filter(|h| !h.is_empty())?,
    };
    let raw = raw.trim_end_matches('/');
    Some(if raw.contains("://") { raw.to_string() } else { format!("http://{raw}") })
}

/// Whether a client for `endpoint` goes without credentials.
pub fn is_anonymous(credentials: Credentials, endpoint: Option<&str>) -> bool {
    match credentials {
        Credentials::Anonymous => true,
        Credentials::Default => false,
        Credentials::Auto => endpoint.is_some_and(|e| e.starts_with("http://")),
    }
}

/// The project: `configured`, else the first of `variables` that is set and not empty.
pub fn project(configured: Option<&str>, variables: &[&str]) -> Option<String> {
    configured
        .map(str::to_string)
        .or_else(|| variables.iter().find_map(|v| std::env::var(v).ok()))
        .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_scheme_and_lose_a_trailing_slash() {
        assert_eq!(endpoint(Some("127.0.0.1:8085/"), "UNSET_FOR_TEST").as_deref(), Some("http://127.0.0.1:8085"));
        assert_eq!(endpoint(Some("https://x.googleapis.com"), "UNSET").as_deref(), Some("https://x.googleapis.com"));
        assert_eq!(endpoint(None, "BQSYNC_TEST_SURELY_UNSET_VAR"), None);
    }

    #[test]
    fn auto_is_anonymous_only_for_plain_http() {
        assert!(is_anonymous(Credentials::Auto, Some("http://127.0.0.1:1")));
        assert!(!is_anonymous(Credentials::Auto, Some("https://pubsub.googleapis.com")));
        assert!(!is_anonymous(Credentials::Auto, None));
        assert!(is_anonymous(Credentials::Anonymous, None));
        assert!(!is_anonymous(Credentials::Default, Some("http://127.0.0.1:1")));
    }
}
