//! The landing writer: rows into a landing table through the Storage Write API's **default stream**,
//! over one long-lived `AppendRows` connection per table and process.
//!
//! Why the default stream and not committed streams: an append acknowledged on the default stream is
//! durable and visible at once, which is all the ack needs; its at-least-once duplicates (a retried
//! request whose first attempt did land) cost nothing because the applier deduplicates the window
//! on the event id anyway. Committed streams would give exactly-once appends only with offsets kept
//! across crashes, and each stream is a `CreateWriteStream` call with its own quota; the default
//! stream has neither, and it is the one BigQuery's CDC upserts require (Google, "Stream data using
//! the Storage Write API": default stream, at-least-once; "Storage Write API quotas": the
//! `CreateWriteStream` quota applies to application-created streams only).
//!
//! Why tonic's generated `BigQueryWriteClient` (re-exported by `gcp-bigquery-client`) and not that
//! crate's own `StorageApi`: the latter is hard-wired to Google's endpoint and cannot reach an
//! emulator; the generated client is the same protocol with an endpoint of our choice.
//!
//! Invariants:
//! - A call returns `Ok` only when every row was either acknowledged by BigQuery or rejected by it
//!   (returned with BigQuery's message, for a dead letter). Rows of a request with row errors were
//!   not appended ("the request is not committed"), so the rest is sent again without them.
//! - Each attempt stamps its rows' landing time just before sending; an attempt lasts at most
//!   `append_timeout`, which the applier's settle margin exceeds (see [`super::applier`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::SinkExt;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1 as storage;
use storage::append_rows_request::{ProtoData, Rows};
use storage::big_query_write_client::BigQueryWriteClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::proto::RowCodec;
use crate::retry::{Policy, Transient};
use crate::warehouse::WarehouseError;

/// Google's Storage Write API endpoint.
pub const GOOGLE_STORAGE_ENDPOINT: &str = "https://bigquerystorage.googleapis.com";

/// Bytes of rows per `AppendRows` request. BigQuery takes up to 10 MB a request (Google, "Storage
/// Write API quotas"), but a gRPC server receives at most 4 MiB a message unless raised, which the
/// emulator does not: a 5 MB request was refused there with RESOURCE_EXHAUSTED ("Received message
/// larger than max"), retried forever. 3.5 MiB leaves room for the writer schema; more requests on
/// one connection cost nothing.
const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024 + 512 * 1024;

/// How long after this process ensured the tables a `NOT_FOUND` is taken for BigQuery's eventually
/// consistent table metadata (a table created moments ago) and retried, rather than a missing table.
const NOT_FOUND_GRACE: Duration = Duration::from_secs(600);

/// One open `AppendRows` call: requests go out on `requests`, answers come back in order.
struct Connection {
    requests: futures::channel::mpsc::Sender<storage::AppendRowsRequest>,
    responses: tonic::Streaming<storage::AppendRowsResponse>,
}

/// A row ready to send: its index in the caller's batch and its bytes without the landing time.
pub struct EncodedRow {
    pub index: usize,
    pub bytes: Vec<u8>,
}

/// A failed attempt.
#[derive(Debug)]
struct AttemptError {
    message: String,
    transient: bool,
}

impl Transient for AttemptError {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

/// What one table's connection is keyed and guarded by.
type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// The Storage Write client of one warehouse.
pub struct LandingWriter {
    endpoint: String,
    credentials: Option<google_cloud_auth::credentials::Credentials>,
    channel: tokio::sync::OnceCell<Channel>,
    slots: Mutex<HashMap<String, Slot>>,
    timeout: Duration,
    policy: Policy,
    ensured_at: Mutex<Instant>,
}

impl LandingWriter {
    /// A writer for `endpoint` (`http://…` for an emulator: plain text, no credentials).
    pub fn new(endpoint: String, anonymous: bool, timeout: Duration, policy: Policy) -> Result<Self, WarehouseError> {
        let credentials = if anonymous {
            None
        } else {
            let built = google_cloud_auth::credentials::Builder::default()
                .with_scopes(["https://www.googleapis.com/auth/bigquery"])
                .build()
                .map_err(|e| WarehouseError::Config(format!("BigQuery credentials: {e}")))?;
            Some(built)
        };
        Ok(LandingWriter {
            endpoint,
            credentials,
            channel: tokio::sync::OnceCell::new(),
            slots: Mutex::new(HashMap::new()),
            timeout,
            policy,
            ensured_at: Mutex::new(Instant::now()),
        })
    }

    /// Called when tables were (re)created or changed: `NOT_FOUND` is retried for a while, and
    /// connections reopen with the new writer schema.
    pub fn tables_changed(&self) {
        *self.ensured_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn slot(&self, stream: &str) -> Slot {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).entry(stream.to_string()).or_default().clone()
    }

    /// Appends `rows` to `stream` (`projects/P/datasets/D/tables/T/streams/_default`). Returns the
    /// rows BigQuery rejected: (index, BigQuery's message).
    pub async fn append(
        &self,
        stream: &str,
        codec: &RowCodec,
        rows: Vec<EncodedRow>,
    ) -> Result<Vec<(usize, String)>, WarehouseError> {
        let slot = self.slot(stream);
        let mut connection = slot.lock().await;
        let mut rejected = Vec::new();
        for mut chunk in chunks(rows) {
            // A loop, not `retry`: each attempt changes `chunk` and the connection it borrows.
            let mut pacer = self.policy.pacer();
            loop {
                let error = match self.attempt(stream, codec, &mut chunk, &mut connection, &mut rejected).await {
                    Ok(()) => break,
                    Err(error) => error,
                };
                *connection = None;
                match pacer.next_wait(None).filter(|_| error.is_transient()) {
                    Some(wait) => {
                        tracing::warn!(stream, retry_in_ms = wait.as_millis() as u64, error = %error.message, "append failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => {
                        return Err(WarehouseError::BigQuery {
                            context: format!("appending to {stream}"),
                            message: error.message,
                            transient: error.transient,
                        })
                    }
                }
            }
        }
        Ok(rejected)
    }

    /// One attempt at one request: sends, and resends without the rows BigQuery rejected, until the
    /// request is acknowledged or nothing is left. Takes rejected rows out of `chunk` into `rejected`.
    async fn attempt(
        &self,
        stream: &str,
        codec: &RowCodec,
        chunk: &mut Vec<EncodedRow>,
        connection: &mut Option<Connection>,
        rejected: &mut Vec<(usize, String)>,
    ) -> Result<(), AttemptError> {
        while !chunk.is_empty() {
            let request = request(stream, codec, chunk);
            let answer = tokio::time::timeout(self.timeout, self.exchange(stream, connection, request)).await;
            let response = match answer {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => {
                    *connection = None;
                    return Err(e);
                }
                Err(_) => {
                    *connection = None;
                    let message = format!("no answer within {} s", self.timeout.as_secs());
                    return Err(AttemptError { message, transient: true });
                }
            };
            if !response.row_errors.is_empty() {
                take_rejected(chunk, &response.row_errors, rejected);
                continue;
            }
            if let Some(storage::append_rows_response::Response::Error(status)) = &response.response {
                let code = tonic::Code::from_i32(status.code);
                return Err(self.attempt_error(code, &status.message));
            }
            return Ok(());
        }
        Ok(())
    }

    /// Sends one request on the table's connection (opening it if needed) and reads its answer.
    async fn exchange(
        &self,
        stream: &str,
        connection: &mut Option<Connection>,
        request: storage::AppendRowsRequest,
    ) -> Result<storage::AppendRowsResponse, AttemptError> {
        if connection.is_none() {
            *connection = Some(self.connect(stream, request).await?);
        } else {
            let open = connection.as_mut().expect("checked");
            if open.requests.send(request).await.is_err() {
                *connection = None;
                return Err(AttemptError { message: "the append connection closed".into(), transient: true });
            }
        }
        let open = connection.as_mut().expect("opened above");
        match open.responses.message().await {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(AttemptError { message: "the append connection ended".into(), transient: true }),
            Err(status) => Err(self.attempt_error(status.code(), status.message())),
        }
    }

    /// Opens an `AppendRows` call whose first request is `first` (the server answers the headers
    /// only once it has a request).
    async fn connect(&self, stream: &str, first: storage::AppendRowsRequest) -> Result<Connection, AttemptError> {
        let channel = self
            .channel
            .get_or_try_init(|| open_channel(&self.endpoint))
            .await
            .map_err(|e| AttemptError { message: e, transient: true })?
            .clone();
        let (mut sender, receiver) = futures::channel::mpsc::channel(4);
        sender.send(first).await.map_err(|e| AttemptError { message: e.to_string(), transient: true })?;
        let mut call = tonic::Request::new(receiver);
        self.authorize(call.metadata_mut(), stream).await?;
        let mut client = BigQueryWriteClient::new(channel)
            .max_encoding_message_size(16 * 1024 * 1024)
            .max_decoding_message_size(16 * 1024 * 1024);
        let responses = client
            .append_rows(call)
            .await
            .map_err(|status| self.attempt_error(status.code(), status.message()))?
            .into_inner();
        Ok(Connection { requests: sender, responses })
    }

    /// Credentials (none for emulators) and the routing header Google requires on `AppendRows`.
    async fn authorize(&self, metadata: &mut tonic::metadata::MetadataMap, stream: &str) -> Result<(), AttemptError> {
        if let Some(credentials) = &self.credentials {
            let headers = credentials
                .headers(http::Extensions::new())
                .await
                .map_err(|e| AttemptError { message: format!("credentials: {e}"), transient: e.is_transient() })?;
            if let google_cloud_auth::credentials::CacheableResource::New { data, .. } = headers {
                for (name, value) in data.iter() {
                    if let (Ok(name), Ok(value)) = (
                        tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
                        tonic::metadata::MetadataValue::try_from(value.as_bytes()),
                    ) {
                        metadata.insert(name, value);
                    }
                }
            }
        }
        let routing = format!("write_stream={stream}");
        if let Ok(value) = routing.parse() {
            metadata.insert("x-goog-request-params", value);
        }
        Ok(())
    }

    /// Which gRPC codes are worth another attempt: overload, restarts, aborted or cancelled calls,
    /// and `NOT_FOUND` shortly after the tables were ensured (metadata is eventually consistent).
    fn attempt_error(&self, code: tonic::Code, message: &str) -> AttemptError {
        use tonic::Code::*;
        let fresh = self.ensured_at.lock().unwrap_or_else(|p| p.into_inner()).elapsed() < NOT_FOUND_GRACE;
        // A message over the server's size limit fails the same way every time: not worth retrying.
        let too_large = code == ResourceExhausted && message.contains("larger than max");
        let transient = !too_large
            && (matches!(
                code,
                Unavailable | ResourceExhausted | Aborted | Internal | DeadlineExceeded | Cancelled | Unknown
            ) || (code == NotFound && fresh));
        AttemptError { message: format!("{code:?}: {message}"), transient }
    }
}

async fn open_channel(endpoint: &str) -> Result<Channel, String> {
    let mut builder = Endpoint::from_shared(endpoint.to_string()).map_err(|e| format!("endpoint {endpoint}: {e}"))?;
    if endpoint.starts_with("https://") {
        builder = builder.tls_config(ClientTlsConfig::new().with_native_roots()).map_err(|e| e.to_string())?;
    }
    // Lazy: a service that is down at start-up is not an error until an append needs it.
    Ok(builder.connect_timeout(Duration::from_secs(10)).tcp_keepalive(Some(Duration::from_secs(60))).connect_lazy())
}

/// Splits rows into requests of at most [`MAX_REQUEST_BYTES`].
fn chunks(rows: Vec<EncodedRow>) -> Vec<Vec<EncodedRow>> {
    let mut out: Vec<Vec<EncodedRow>> = Vec::new();
    let mut size = 0;
    for row in rows {
        if out.is_empty() || size + row.bytes.len() > MAX_REQUEST_BYTES {
            out.push(Vec::new());
            size = 0;
        }
        size += row.bytes.len() + 16;
        out.last_mut().expect("pushed").push(row);
    }
    out
}

/// One request: the writer schema and the rows, each stamped with this attempt's landing time.
fn request(stream: &str, codec: &RowCodec, rows: &[EncodedRow]) -> storage::AppendRowsRequest {
    let now = chrono::Utc::now().timestamp_micros();
    let serialized_rows = rows.iter().map(|r| codec.stamp(&r.bytes, now)).collect();
    storage::AppendRowsRequest {
        write_stream: stream.to_string(),
        rows: Some(Rows::ProtoRows(ProtoData {
            writer_schema: Some(storage::ProtoSchema { proto_descriptor: Some(codec.descriptor().clone()) }),
            rows: Some(storage::ProtoRows { serialized_rows }),
        })),
        ..Default::default()
    }
}

/// Moves the rows named by `errors` (indices into `chunk`) out of `chunk` into `rejected`.
fn take_rejected(chunk: &mut Vec<EncodedRow>, errors: &[storage::RowError], rejected: &mut Vec<(usize, String)>) {
    let mut messages: HashMap<usize, String> = HashMap::new();
    for error in errors {
        let message = if error.message.is_empty() { "row rejected".to_string() } else { error.message.clone() };
        messages.entry(error.index as usize).and_modify(|m| m.push_str(&format!("; {message}"))).or_insert(message);
    }
    let mut kept = Vec::with_capacity(chunk.len());
    for (position, row) in chunk.drain(..).enumerate() {
        match messages.remove(&position) {
            Some(message) => rejected.push((row.index, message)),
            None => kept.push(row),
        }
    }
    *chunk = kept;
    if !messages.is_empty() {
        tracing::warn!(indices = ?messages.keys().collect::<Vec<_>>(), "row errors named rows outside the request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(index: usize, len: usize) -> EncodedRow {
        EncodedRow { index, bytes: vec![0; len] }
    }

    #[test]
    fn requests_stay_under_the_size_limit() {
        let rows = (0..5).map(|i| row(i, 1024 * 1024)).collect();
        let sizes: Vec<usize> = chunks(rows).iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 2], "3 MiB and 16 bytes a row of overhead fit, a fourth MiB does not");
        assert!(chunks(Vec::new()).is_empty());
    }

    #[test]
    fn rejected_rows_leave_the_request_with_their_message() {
        let mut chunk = vec![row(10, 1), row(11, 1), row(12, 1)];
        let errors = vec![storage::RowError { index: 1, code: 1, message: "Missing required field: email".into() }];
        let mut rejected = Vec::new();
        take_rejected(&mut chunk, &errors, &mut rejected);
        assert_eq!(chunk.iter().map(|r| r.index).collect::<Vec<_>>(), [10, 12]);
        assert_eq!(rejected, [(11, "Missing required field: email".to_string())]);
    }

    #[test]
    fn overload_and_fresh_not_found_are_retried_but_bad_requests_are_not() {
        let writer = LandingWriter::new(
            "http://127.0.0.1:1".into(),
            true,
            Duration::from_secs(1),
            Policy::exponential(Duration::from_millis(1), Duration::from_millis(2)),
        )
        .unwrap();
        assert!(writer.attempt_error(tonic::Code::Unavailable, "").transient);
        assert!(writer.attempt_error(tonic::Code::ResourceExhausted, "").transient);
        let too_large = "SERVER: Received message larger than max (5271891 vs. 4194304)";
        assert!(!writer.attempt_error(tonic::Code::ResourceExhausted, too_large).transient, "never fits: not retried");
        assert!(writer.attempt_error(tonic::Code::NotFound, "").transient, "within the grace period");
        assert!(!writer.attempt_error(tonic::Code::InvalidArgument, "").transient);
        assert!(!writer.attempt_error(tonic::Code::PermissionDenied, "").transient);
    }
}
