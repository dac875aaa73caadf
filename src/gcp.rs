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

/// Where Application Default Credentials are looked for, and how to provide them: said whenever
/// they cannot be found, instead of the clients' bare "Connection failure".
pub const ADC_HELP: &str =
    "Application Default Credentials were not found: run `gcloud auth application-default login` \
    (a workstation), set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run on GKE with Workload \
    Identity; for an emulator, set the endpoint to its http:// address";

/// Why Application Default Credentials cannot be found here, checked before a client tries them;
/// None when a source of them exists (a key file, gcloud's file, or Google Cloud's metadata server).
/// The clients otherwise fall back to the metadata server, which exists only on Google Cloud, and
/// fail with a connection error that names nothing the user can act on.
pub fn missing_application_default_credentials() -> Option<String> {
    if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty()) {
        let path = std::path::PathBuf::from(path);
        return (!path.is_file())
            .then(|| format!("GOOGLE_APPLICATION_CREDENTIALS is {}, which is not a file; {ADC_HELP}", path.display()));
    }
    let gcloud_config = std::env::var_os("CLOUDSDK_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".config/gcloud")));
    if gcloud_config.is_some_and(|dir| dir.join("application_default_credentials.json").is_file()) {
        return None;
    }
    (!on_google_cloud()).then(|| ADC_HELP.to_string())
}

/// On Google Cloud (GKE, GCE, Cloud Run), where the metadata server provides credentials: the
/// checks Google's auth libraries make (the variables, and the DMI product name).
fn on_google_cloud() -> bool {
    std::env::var_os("GCE_METADATA_HOST").is_some()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("K_SERVICE").is_some()
        || std::fs::read_to_string("/sys/class/dmi/id/product_name").is_ok_and(|name| name.contains("Google"))
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
