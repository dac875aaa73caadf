//! Incremental HTTP API (the identity-provider users sync): a generic JSON API poller.
//!
//! Each pass asks for the records modified at or after the cursor (`cursor_param=CURSOR`), follows
//! the next-page token until there is none, and publishes every record as an upsert of `table` (its
//! primary key and version columns come from the table's schema, after `columns` renames).
//!
//! - The cursor is inclusive: records at the cursor value come again; those already published there
//!   (their event ids are saved with the cursor) are skipped, the rest are ties that arrived later.
//! - Invariant: the cursor is saved only after every record before it was published. By default at
//!   the end of a pass, since pages need not be in cursor order; with `sorted = true` (the API returns
//!   records in cursor order) after every page, so a restart resumes mid-way. A crash re-publishes at
//!   most what came after the saved cursor, and that lands once (event ids are table + key + version).
//! - 429 and 5xx responses and connection errors are retried with exponential backoff and jitter,
//!   honouring `Retry-After` (seconds or an HTTP date); other statuses fail the pass with the status
//!   and the start of the body.
//! - The credential comes from an environment variable or a secret file, never from the config file.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::checkpoint::CheckpointStore;
use super::rows::{now_rfc3339, poison, row_event, RowMapping};
use super::schedule::{last_full_resync, record_full_resync, PassClock, Schedule};
use super::{EmitOutcome, Source, SourceError};
use crate::bus::{attr, Publisher};
use crate::dead_letter::DeadLetterReason;
use crate::retry::{retry, Policy, Transient};
use crate::schema::Catalog;
use crate::shutdown::Shutdown;

pub use crate::config::sources::http::HttpSourceConfig;

const CURSOR_KEY: &str = "cursor";
const CURSOR_IDS_KEY: &str = "cursor_ids";

/// The HTTP API source.
pub struct HttpSource {
    config: HttpSourceConfig,
    mapping: RowMapping,
    checkpoints: Arc<CheckpointStore>,
    client: reqwest::Client,
    /// When the next pass is due, and whether it is a full re-sync.
    clock: PassClock,
    /// `auth_secret`: the Secret Manager value, cached.
    secret: Option<Arc<super::secret::SecretCredential>>,
    /// The last request's credential was refused (401/403).
    credential_refused: bool,
    /// The pass under way is a full re-sync: it starts from `initial_cursor`.
    full_pass: bool,
    requests: u64,
    retries: u64,
    published: u64,
    shutdown: Shutdown,
}

/// Where a pass stands: the largest cursor value seen and the event ids published at it.
struct CursorState {
    value: Option<String>,
    ids: HashSet<String>,
}

impl HttpSource {
    pub fn new(
        config: HttpSourceConfig,
        catalog: &Catalog,
        checkpoints: Arc<CheckpointStore>,
    ) -> Result<HttpSource, SourceError> {
        let problem = |problem: String| SourceError::Config { source_name: config.name.clone(), problem };
        let mapping = RowMapping::new(catalog, &config.table, &config.columns).map_err(problem)?;
        if config.deleted_field.is_some() == config.deleted_values.is_empty() {
            return Err(problem("set `deleted_field` and `deleted_values` together".into()));
        }
        let ways = [config.auth_env.is_some(), config.auth_file.is_some(), config.auth_secret.is_some()];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(problem("set one of auth_env, auth_file and auth_secret".into()));
        }
        let secret = match &config.auth_secret {
            Some(name) => Some(Arc::new(super::secret::SecretCredential::new(name).map_err(problem)?)),
            None => None,
        };
        reqwest::Url::parse(&config.url).map_err(|e| problem(format!("url `{}`: {e}", config.url)))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs))
            .connect_timeout(Duration::from_secs(config.timeout_secs.min(10)))
            .user_agent(concat!("bqsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| problem(format!("HTTP client: {e}")))?;
        let schedule = Schedule::new(&config.schedule(), Duration::from_secs(config.interval_secs)).map_err(problem)?;
        let mut last_full = last_full_resync(&checkpoints, &config.name)?;
        if config.full_schedule.is_some() && last_full.is_none() {
            record_full_resync(&checkpoints, &config.name)?;
            last_full = Some(chrono::Utc::now());
        }
        Ok(HttpSource {
            secret,
            credential_refused: false,
            clock: PassClock::new(schedule, last_full),
            full_pass: false,
            config,
            mapping,
            checkpoints,
            client,
            requests: 0,
            retries: 0,
            published: 0,
            shutdown: Shutdown::default(),
        })
    }

    fn error(&self, problem: String) -> SourceError {
        SourceError::Io {
            source_name: self.config.name.clone(),
            path: self.config.url.clone(),
            error: std::io::Error::other(problem),
        }
    }

    /// The credential header's value, read now from the environment or the secret file, or the
    /// Secret Manager value (cached).
    async fn credential(&self) -> Result<Option<String>, SourceError> {
        let config_error = |problem: String| SourceError::Config { source_name: self.config.name.clone(), problem };
        if let Some(secret) = &self.secret {
            return secret.value().await.map(Some).map_err(config_error);
        }
        if let Some(variable) = &self.config.auth_env {
            return std::env::var(variable)
                .map(Some)
                .map_err(|_| config_error(format!("auth_env: environment variable {variable} is not set")));
        }
        if let Some(path) = &self.config.auth_file {
            return std::fs::read_to_string(path)
                .map(|text| Some(text.trim().to_string()))
                .map_err(|e| config_error(format!("auth_file {}: {e}", path.display())));
        }
        Ok(None)
    }

    fn load_cursor(&self) -> Result<CursorState, SourceError> {
        let state = |key| {
            self.checkpoints
                .state(&self.config.name, key)
                .map_err(|error| SourceError::Checkpoint { source_name: self.config.name.clone(), error })
        };
        if self.full_pass {
            return Ok(CursorState { value: self.config.initial_cursor.clone(), ids: HashSet::new() });
        }
        let value = state(CURSOR_KEY)?.or_else(|| self.config.initial_cursor.clone());
        let ids = state(CURSOR_IDS_KEY)?.and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default();
        Ok(CursorState { value, ids })
    }

    fn save_cursor(&self, cursor: &CursorState) -> Result<(), SourceError> {
        let Some(value) = &cursor.value else { return Ok(()) };
        let ids = serde_json::to_string(&cursor.ids).expect("a set of strings serializes");
        let states = [(CURSOR_KEY.to_string(), Some(value.clone())), (CURSOR_IDS_KEY.to_string(), Some(ids))];
        self.checkpoints
            .save_progress(&self.config.name, &states, &self.mapping.table, &[])
            .map_err(|error| SourceError::Checkpoint { source_name: self.config.name.clone(), error })
    }

    /// GET with retries on 429, 5xx and connection errors (honouring `Retry-After`); returns the
    /// parsed JSON body.
    async fn get(&mut self, query: &[(String, String)]) -> Result<Vec<u8>, SourceError> {
        let first = self.get_once(query).await;
        match (&first, &self.secret) {
            // A refused Secret Manager value may have been rotated: read it again, once.
            (Err(SourceError::Config { .. }), Some(secret)) if self.credential_refused => {
                tracing::info!(source = %self.config.name, "the API refused the secret's value: reading the secret again");
                secret.forget().await;
                self.get_once(query).await
            }
            _ => first,
        }
    }

    async fn get_once(&mut self, query: &[(String, String)]) -> Result<Vec<u8>, SourceError> {
        self.credential_refused = false;
        let credential = self.credential().await?;
        let policy = Policy::exponential(Duration::from_millis(500), Duration::from_secs(self.config.max_backoff_secs))
            .with_max_attempts(self.config.max_attempts as usize);
        // Every request but the first of a call is a retry.
        let requests = AtomicU64::new(0);
        let name = &self.config.name;
        let on_retry = |failed: &ApiFailure, wait: Duration| {
            tracing::warn!(source = %name, attempt = requests.load(Ordering::Relaxed), wait_ms = wait.as_millis() as u64, problem = %failed.problem, "API request failed; retrying");
        };
        let (client, url, header) = (&self.client, &self.config.url, self.config.auth_header.as_str());
        let result = retry(policy, on_retry, || {
            requests.fetch_add(1, Ordering::Relaxed);
            let mut request = client.get(url).query(query);
            if let Some(value) = &credential {
                request = request.header(header, value.as_str());
            }
            fetch_body(request)
        })
        .await;
        let requests = requests.into_inner();
        self.requests += requests;
        self.retries += requests.saturating_sub(1);
        self.credential_refused = result.as_ref().is_err_and(|f| f.credential_refused);
        result.map_err(|failed| match (failed.transient, failed.credential_refused) {
            (true, _) => self.error(format!("{} (gave up after {requests} attempts)", failed.problem)),
            // A refused credential does not get better by asking again: a config error, which a
            // one-shot run reports at once.
            (false, true) => SourceError::Config {
                source_name: self.config.name.clone(),
                problem: format!(
                    "the API refused the credential ({}); check the token that `auth_env`, `auth_file` or `auth_secret` provides, and `auth_header`",
                    failed.problem
                ),
            },
            (false, false) => self.error(failed.problem),
        })
    }

    /// Whether `deleted_field` marks the record deleted.
    fn is_deleted(&self, record: &Value) -> bool {
        let Some(field) = &self.config.deleted_field else { return false };
        lookup(record, field).is_some_and(|value| self.config.deleted_values.contains(value))
    }

    /// One page's records made into events; updates `cursor` with the records seen.
    fn page_messages(
        &self,
        records: &[Value],
        skip: &HashSet<String>,
        cursor: &mut CursorState,
    ) -> Vec<crate::bus::OutboundMessage> {
        let produced_at = now_rfc3339();
        let source_label = format!("http:{}", self.config.name);
        let mut messages = Vec::with_capacity(records.len());
        for record in records {
            let Value::Object(fields) = record else {
                let detail = format!("record is not a JSON object ({source_label})");
                messages.push(poison(
                    &self.mapping.table,
                    &self.mapping.shielded(record.to_string().as_bytes()),
                    DeadLetterReason::Decode,
                    detail,
                    &source_label,
                ));
                continue;
            };
            let record_cursor = lookup(record, &self.config.cursor_field).and_then(cursor_text);
            let mut payload = Map::new();
            for (name, value) in fields {
                payload.insert(self.config.columns.get(name).cloned().unwrap_or_else(|| name.clone()), value.clone());
            }
            self.mapping.transform(&mut payload);
            // The record as published: transformed (its raw text may hold what the transforms hide).
            let record_text = if !self.mapping.has_transforms() {
                record.to_string()
            } else {
                Value::Object(payload.clone()).to_string()
            };
            let fallback: [&[u8]; 2] = [self.config.name.as_bytes(), record_text.as_bytes()];
            let deleted = self.is_deleted(record);
            let message = match row_event(&self.mapping, &payload, deleted, &fallback, &source_label, &produced_at) {
                Ok(event) => event.message,
                Err((reason, detail)) => {
                    poison(&self.mapping.table, record_text.as_bytes(), reason, detail, &source_label)
                }
            };
            let event_id = message.attributes.get(attr::EVENT_ID).cloned();
            if let (Some(value), Some(id)) = (record_cursor, &event_id) {
                match cursor.value.as_deref().map(|current| compare_cursors(&value, current)) {
                    None | Some(std::cmp::Ordering::Greater) => {
                        cursor.value = Some(value);
                        cursor.ids = HashSet::from([id.clone()]);
                    }
                    Some(std::cmp::Ordering::Equal) => {
                        cursor.ids.insert(id.clone());
                    }
                    Some(std::cmp::Ordering::Less) => {}
                }
            }
            if event_id.is_some_and(|id| skip.contains(&id)) {
                continue; // published at the cursor by an earlier pass
            }
            messages.push(message);
        }
        messages
    }

    async fn pass(&mut self, publisher: &dyn Publisher) -> Result<u64, SourceError> {
        let start = self.load_cursor()?;
        let skip = start.ids.clone();
        let mut cursor = CursorState { value: start.value.clone(), ids: start.ids };
        let mut page_token: Option<String> = None;
        let mut published = 0;
        let mut pages = 0u64;
        loop {
            if self.shutdown.is_stopping() {
                return Ok(published); // the cursor of a pass cut short is not saved (unless sorted)
            }
            let mut query: Vec<(String, String)> =
                self.config.query.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            if let Some(value) = &start.value {
                query.push((self.config.cursor_param.clone(), value.clone()));
            }
            if let Some(token) = &page_token {
                query.push((self.config.page_param.clone(), token.clone()));
            }
            let body = self.get(&query).await?;
            pages += 1;
            let page = parse_page(&body, self.config.records_path.as_deref(), self.config.next_page_path.as_deref())
                .map_err(|problem| self.error(problem))?;
            let messages = self.page_messages(&page.records, &skip, &mut cursor);
            let count = messages.len() as u64;
            if count > 0 {
                publisher
                    .publish(messages)
                    .await
                    .map_err(|error| SourceError::Publish { source_name: self.config.name.clone(), error })?;
                published += count;
                self.published += count;
            }
            if self.config.sorted {
                self.save_cursor(&cursor)?;
            }
            page_token = page.next_page;
            if page_token.is_none() {
                break;
            }
        }
        // Every page is published: the cursor may move to the largest value seen.
        self.save_cursor(&cursor)?;
        tracing::info!(source = %self.config.name, pages, published, cursor = cursor.value.as_deref().unwrap_or(""), "API pass done");
        Ok(published)
    }
}

/// One page of an API's answer: its records, and the token of the next page if there is one.
#[derive(Debug, Default, PartialEq)]
pub struct Page {
    pub records: Vec<Value>,
    pub next_page: Option<String>,
}

/// Reads a successful response's body: JSON, the records at `records_path` (the body itself without
/// one; absent or null: no records), and the next page's token at `next_page_path` (a non-empty
/// string, else the last page). The API's bytes are untrusted: whatever they hold is an error with
/// the reason, never a panic (fuzzed: fuzz/fuzz_targets/http_response.rs).
pub fn parse_page(body: &[u8], records_path: Option<&str>, next_page_path: Option<&str>) -> Result<Page, String> {
    let body: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let records = match records_path.map_or(Some(&body), |path| lookup(&body, path)) {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(other) => {
            return Err(format!(
                "records_path `{}` is not an array (found {})",
                records_path.unwrap_or(""),
                other.to_string().chars().take(80).collect::<String>()
            ))
        }
    };
    let next_page = next_page_path
        .and_then(|path| lookup(&body, path))
        .and_then(|v| v.as_str().map(String::from))
        .filter(|token| !token.is_empty());
    Ok(Page { records, next_page })
}

/// A field by dot path (`data.items`).
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').filter(|s| !s.is_empty()).try_fold(value, |node, segment| node.get(segment))
}

fn cursor_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Orders cursor values as timestamps when both are, else as numbers, else as text.
pub fn compare_cursors(a: &str, b: &str) -> std::cmp::Ordering {
    let time = crate::schema::parse_timestamp_text;
    if let (Some(x), Some(y)) = (time(a), time(b)) {
        return x.cmp(&y);
    }
    if let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) {
        return x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
    }
    a.cmp(b)
}

/// `Retry-After`: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let text = value.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    let wait = date.signed_duration_since(chrono::Utc::now()).num_milliseconds().max(0);
    Some(Duration::from_millis(wait as u64))
}

#[async_trait]
impl Source for HttpSource {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn set_shutdown(&mut self, shutdown: Shutdown) {
        self.shutdown = shutdown;
    }

    async fn emit(&mut self, publisher: &dyn Publisher) -> Result<EmitOutcome, SourceError> {
        if !self.clock.due() {
            return Ok(EmitOutcome { skipped: true, ..EmitOutcome::default() });
        }
        self.full_pass = self.clock.full_now();
        if self.full_pass {
            tracing::info!(source = %self.config.name, "full re-sync: every record is fetched again from the initial cursor");
        }
        let result = self.pass(publisher).await;
        // A failed pass is retried by the driver's backoff; a finished one waits for its schedule.
        if result.is_ok() {
            let full = self.full_pass && !self.shutdown.is_stopping();
            if full {
                record_full_resync(&self.checkpoints, &self.config.name)?;
            }
            self.clock.finished(full);
            if let Err(e) =
                super::history::record_next_pass(&self.checkpoints, &self.config.name, self.clock.next_due_micros())
            {
                tracing::warn!(source = %self.config.name, error = %e, "cannot record the next pass");
            }
        }
        let published = result?;
        Ok(EmitOutcome { consumed: published, published, full: self.full_pass, ..EmitOutcome::default() })
    }

    async fn wait_for_input(&mut self, max_wait: Duration) {
        tokio::time::sleep(max_wait.min(self.clock.until_due()).max(Duration::from_millis(10))).await;
    }

    fn trigger(&mut self) {
        self.clock.trigger();
    }

    fn trigger_full(&mut self) {
        self.clock.trigger_full();
    }

    fn records_empty_passes(&self) -> bool {
        true
    }

    fn tables(&self) -> Vec<String> {
        vec![self.mapping.table.clone()]
    }

    fn observable_state(&self) -> Value {
        serde_json::json!({
            "source": self.config.name,
            "requests": self.requests,
            "retries": self.retries,
            "published": self.published,
            "schedule": self.clock.observable(),
        })
    }
}

/// Why one API request failed, and whether trying again can help.
#[derive(Debug)]
struct ApiFailure {
    problem: String,
    /// 429, 5xx and connection errors.
    transient: bool,
    /// 401 or 403: the credential is missing, wrong or not allowed.
    credential_refused: bool,
    retry_after: Option<Duration>,
}

impl Transient for ApiFailure {
    fn is_transient(&self) -> bool {
        self.transient
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// Sends one request and parses its JSON body.
/// A successful response's body; a failed one as the failure, with whether to retry.
async fn fetch_body(request: reqwest::RequestBuilder) -> Result<Vec<u8>, ApiFailure> {
    let failed = |problem: String, transient, retry_after| ApiFailure {
        problem,
        transient,
        retry_after,
        credential_refused: false,
    };
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Err(failed(format!("request failed: {e}"), true, None)),
    };
    let status = response.status();
    if status.is_success() {
        let body = response.bytes().await.map_err(|e| failed(format!("reading the body: {e}"), false, None))?;
        return Ok(body.to_vec());
    }
    let retry_after =
        response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
    let body = response.text().await.unwrap_or_default();
    let problem = format!("{status}: {}", body.chars().take(300).collect::<String>());
    let transient = status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
    let credential_refused = matches!(status, reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN);
    Err(ApiFailure { credential_refused, ..failed(problem, transient, retry_after) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_compare_as_times_numbers_or_text() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_cursors("2024-01-02T00:00:00Z", "2024-01-01T23:00:00-02:00"), Less);
        assert_eq!(compare_cursors("10", "9"), Greater);
        assert_eq!(compare_cursors("b", "a"), Greater);
        let body = serde_json::json!({"data": {"items": [1]}, "next": "t"});
        assert_eq!(lookup(&body, "data.items"), Some(&serde_json::json!([1])));
        assert_eq!(lookup(&body, "nope.x"), None);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
