//! Google Cloud Storage, on `google-cloud-storage`: the archive of landed batches and the claim
//! check for large payloads share one bucket and this client.
//!
//! Objects are written and read with the official crate. Bucket creation and object listing are
//! control-plane calls that the crate only offers over gRPC (`google.storage.v2`), which the emulator
//! does not speak; they go over the JSON API here (hand-written: two small requests), and only for
//! emulators (`create_bucket`) and tests. In production the bucket comes from infra/terraform.

use serde::Deserialize;

pub use crate::config::gcs::GcsConfig;

impl GcsConfig {
    /// The endpoint, or None for Google's.
    pub fn resolved_endpoint(&self) -> Option<String> {
        crate::gcp::endpoint(self.endpoint.as_deref(), "STORAGE_EMULATOR_HOST")
    }

    fn anonymous(&self) -> bool {
        crate::gcp::is_anonymous(self.credentials, self.resolved_endpoint().as_deref())
    }
}

/// Errors of the GCS client.
#[derive(Debug, thiserror::Error)]
#[error("gcs {what}: {detail}")]
pub struct GcsError {
    pub what: String,
    pub detail: String,
    /// True when the object or bucket does not exist (a retry cannot help).
    pub not_found: bool,
}

fn gcs_error(what: impl Into<String>, detail: impl std::fmt::Display) -> GcsError {
    let detail = detail.to_string();
    let not_found = detail.contains("404") || detail.to_ascii_lowercase().contains("not found");
    GcsError { what: what.into(), detail, not_found }
}

/// A client bound to one bucket.
#[derive(Clone)]
pub struct Gcs {
    storage: google_cloud_storage::client::Storage,
    http: reqwest::Client,
    endpoint: String,
    bucket: String,
    prefix: String,
}

impl Gcs {
    /// Connects to the configured bucket; None when no bucket is configured.
    pub async fn connect(config: &GcsConfig) -> Result<Option<Gcs>, GcsError> {
        let Some(bucket) = config.bucket.clone() else {
            return Ok(None);
        };
        crate::gcp::install_crypto_provider();
        let mut builder = google_cloud_storage::client::Storage::builder();
        let endpoint = config.resolved_endpoint();
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if config.anonymous() {
            builder = builder.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
        }
        let storage = builder.build().await.map_err(|e| gcs_error("connecting", e))?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| gcs_error("http client", e))?;
        let gcs = Gcs {
            storage,
            http,
            endpoint: endpoint.unwrap_or_else(|| "https://storage.googleapis.com".into()),
            bucket,
            prefix: config.prefix.clone(),
        };
        if config.create_bucket {
            gcs.create_bucket_if_missing().await?;
        }
        Ok(Some(gcs))
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object name for `relative` (the prefix prepended).
    pub fn object_name(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    /// `gs://BUCKET/NAME`.
    pub fn uri(&self, name: &str) -> String {
        format!("gs://{}/{name}", self.bucket)
    }

    /// Writes an object (replacing one of the same name). The CRC32C is computed here and sent
    /// with the data, so GCS verifies what it stored.
    pub async fn put(&self, name: &str, bytes: Vec<u8>, content_type: &str) -> Result<(), GcsError> {
        let crc = crc32c::crc32c(&bytes);
        self.storage
            .write_object(format!("projects/_/buckets/{}", self.bucket), name, bytes::Bytes::from(bytes))
            .set_content_type(content_type)
            .with_known_crc32c(crc)
            .send_buffered()
            .await
            .map_err(|e| gcs_error(format!("writing {}", self.uri(name)), e))?;
        Ok(())
    }

    /// Reads a whole object given as `gs://BUCKET/NAME` (any bucket) or a name in this bucket.
    pub async fn get(&self, uri_or_name: &str) -> Result<Vec<u8>, GcsError> {
        let (bucket, name) = match uri_or_name.strip_prefix("gs://") {
            Some(rest) => rest.split_once('/').ok_or_else(|| gcs_error(uri_or_name, "not gs://BUCKET/OBJECT"))?,
            None => (self.bucket.as_str(), uri_or_name),
        };
        let mut response = self
            .storage
            .read_object(format!("projects/_/buckets/{bucket}"), name)
            .send()
            .await
            .map_err(|e| gcs_error(format!("reading gs://{bucket}/{name}"), e))?;
        let mut out = Vec::new();
        while let Some(chunk) = response.next().await {
            out.extend_from_slice(&chunk.map_err(|e| gcs_error(format!("reading gs://{bucket}/{name}"), e))?);
        }
        Ok(out)
    }

    /// Object names under a prefix (JSON API; for tests and tools).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, GcsError> {
        #[derive(Deserialize)]
        struct Listing {
            #[serde(default)]
            items: Vec<Item>,
            #[serde(rename = "nextPageToken")]
            next_page_token: Option<String>,
        }
        #[derive(Deserialize)]
        struct Item {
            name: String,
        }
        let mut names = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut request =
                self.http.get(format!("{}/storage/v1/b/{}/o", self.endpoint, self.bucket)).query(&[("prefix", prefix)]);
            if let Some(token) = &page {
                request = request.query(&[("pageToken", token)]);
            }
            let listing: Listing = request
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| gcs_error("listing", e))?
                .json()
                .await
                .map_err(|e| gcs_error("listing", e))?;
            names.extend(listing.items.into_iter().map(|i| i.name));
            match listing.next_page_token {
                Some(token) if !token.is_empty() => page = Some(token),
                _ => return Ok(names),
            }
        }
    }

    async fn create_bucket_if_missing(&self) -> Result<(), GcsError> {
        let url = format!("{}/storage/v1/b/{}", self.endpoint, self.bucket);
        let status = self.http.get(&url).send().await.map_err(|e| gcs_error("reading bucket", e))?.status();
        if status.is_success() {
            return Ok(());
        }
        let response = self
            .http
            .post(format!("{}/storage/v1/b", self.endpoint))
            .query(&[("project", "bqsync")])
            .json(&serde_json::json!({ "name": self.bucket }))
            .send()
            .await
            .map_err(|e| gcs_error("creating bucket", e))?;
        if response.status().is_success() || response.status().as_u16() == 409 {
            tracing::info!(bucket = %self.bucket, "created bucket");
            Ok(())
        } else {
            Err(gcs_error(format!("creating bucket {}", self.bucket), response.status()))
        }
    }
}
