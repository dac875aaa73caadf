//! `auth_secret` without the `gcp` feature: this binary has no Secret Manager client, so a source
//! that names a secret is refused when it is built, with the feature it needs. The type has no
//! values; the calls below read as those of `secret.rs` and are never reached.

/// A Secret Manager credential; none can exist in this build.
pub enum SecretCredential {}

impl SecretCredential {
    pub fn new(_: &str) -> Result<SecretCredential, String> {
        Err(crate::features::missing("`auth_secret` (Secret Manager)", "gcp"))
    }

    pub async fn value(&self) -> Result<String, String> {
        match *self {}
    }

    pub async fn forget(&self) {
        match *self {}
    }
}
