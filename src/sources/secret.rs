//! Credentials from Google Secret Manager (`auth_secret = "projects/P/secrets/S/versions/latest"`),
//! read with Google's `google-cloud-secretmanager-v1` client and Application Default Credentials.
//!
//! The value is read on first use and cached; a credential the API refuses (401/403) makes the
//! caller [`SecretCredential::forget`] it, so the next request reads the secret again (a rotated
//! secret is picked up without a restart). Why cached: access requests are a per-project quota
//! shared by every application (90,000 a minute; Google, "Secret Manager quotas and limits"), and a
//! value is at most 64 KiB, so one read per process and rotation is both enough and cheap. The value is never logged, printed or put in a message:
//! errors name the secret's resource name only.
//!
//! Untested against the service: no emulator exists. The request (the resource name, checked here)
//! is unit-tested; the client call is Google's.

use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model::AccessSecretVersionRequest;
use tokio::sync::{Mutex, OnceCell};

/// A secret version's value, read once and cached.
pub struct SecretCredential {
    name: String,
    client: OnceCell<SecretManagerService>,
    cached: Mutex<Option<String>>,
}

/// Checks a secret version's resource name: `projects/P/secrets/S/versions/V`.
pub fn check_name(name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split('/').collect();
    let ok = parts.len() == 6
        && parts[0] == "projects"
        && parts[2] == "secrets"
        && parts[4] == "versions"
        && [parts[1], parts[3], parts[5]].iter().all(|p| !p.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!("`auth_secret` = {name:?} is not a secret version: expected projects/PROJECT/secrets/SECRET/versions/VERSION (e.g. versions/latest)"))
    }
}

/// The request that reads the secret version `name`.
pub fn request(name: &str) -> AccessSecretVersionRequest {
    AccessSecretVersionRequest::new().set_name(name)
}

impl SecretCredential {
    pub fn new(name: &str) -> Result<SecretCredential, String> {
        check_name(name)?;
        Ok(SecretCredential { name: name.to_string(), client: OnceCell::new(), cached: Mutex::new(None) })
    }

    /// The value: cached, or read now.
    pub async fn value(&self) -> Result<String, String> {
        let mut cached = self.cached.lock().await;
        if let Some(value) = cached.as_ref() {
            return Ok(value.clone());
        }
        let value = self.read().await?;
        *cached = Some(value.clone());
        Ok(value)
    }

    /// Drops the cached value: the next [`SecretCredential::value`] reads the secret again.
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }

    async fn read(&self) -> Result<String, String> {
        let failed = |e: &dyn std::fmt::Display| format!("reading secret {}: {e}", self.name);
        let client = self
            .client
            .get_or_try_init(|| async { SecretManagerService::builder().build().await })
            .await
            .map_err(|e| failed(&e))?;
        let response =
            client.access_secret_version().with_request(request(&self.name)).send().await.map_err(|e| failed(&e))?;
        let payload = response.payload.ok_or_else(|| failed(&"the response has no payload"))?;
        if let Some(expected) = payload.data_crc32c {
            if i64::from(crc32c::crc32c(&payload.data)) != expected {
                return Err(failed(&"the payload's checksum does not match"));
            }
        }
        let text = String::from_utf8(payload.data.to_vec()).map_err(|_| failed(&"the value is not UTF-8 text"))?;
        Ok(text.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_checked_and_become_the_request() {
        let name = "projects/p-1/secrets/idp-token/versions/latest";
        assert!(check_name(name).is_ok());
        assert_eq!(request(name).name, name);
        for bad in
            ["idp-token", "projects/p/secrets/s", "projects//secrets/s/versions/1", "projects/p/keys/s/versions/1"]
        {
            assert!(check_name(bad).unwrap_err().contains("projects/PROJECT/secrets/SECRET/versions/VERSION"), "{bad}");
        }
    }
}
