//! The REST side of the BigQuery warehouse (`gcp-bigquery-client`): datasets, tables, query jobs,
//! small queries, each request retried on what is worth retrying.
//!
//! Retried: 5xx, 429, the reasons `rateLimitExceeded`, `backendError`, `internalError`,
//! `jobRateLimitExceeded`, `quotaExceeded`, "concurrent update" messages (two transactions on one
//! table: BigQuery cancels one), and connection errors. What still fails is a transient
//! [`WarehouseError`], and the worker's circuit breaker stops pulling until BigQuery answers again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::job::Job;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::Client;
use serde_json::Value;

use super::sql as bsql;
use crate::config::warehouse::bigquery::BigQueryConfig;
use crate::retry::{retry, Policy};
use crate::warehouse::cost_guard::CostGuard;
use crate::warehouse::WarehouseError;

/// A token for emulators, which accept any (tests and benchmarks use it for their own clients too).
#[derive(Clone)]
pub struct EmulatorToken;

#[async_trait]
impl gcp_bigquery_client::auth::Authenticator for EmulatorToken {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("emulator".into())
    }
}

/// A failed request, after its retries.
#[derive(Debug)]
pub(super) struct Failure {
    pub code: Option<i64>,
    pub message: String,
    pub transient: bool,
}

impl crate::retry::Transient for Failure {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

impl Failure {
    pub fn from_error(error: &BQError) -> Failure {
        match error {
            BQError::ResponseError { error } => {
                let nested = &error.error;
                let reasons: Vec<&str> =
                    nested.errors.iter().filter_map(|e| e.get("reason").map(String::as_str)).collect();
                let transient = nested.code >= 500
                    || nested.code == 429
                    || reasons.iter().any(|r| is_retryable_reason(r))
                    || is_retryable_message(&nested.message);
                Failure { code: Some(nested.code), message: nested.message.clone(), transient }
            }
            // Connection refused or reset, timeouts, a body that is not the API's JSON (a proxy).
            BQError::RequestError(e) => Failure { code: None, message: e.to_string(), transient: true },
            other => Failure { code: None, message: other.to_string(), transient: false },
        }
    }

    pub fn into_error(self, context: impl Into<String>) -> WarehouseError {
        WarehouseError::BigQuery { context: context.into(), message: self.message, transient: self.transient }
    }
}

pub(super) fn is_retryable_reason(reason: &str) -> bool {
    matches!(reason, "rateLimitExceeded" | "backendError" | "internalError" | "jobRateLimitExceeded" | "quotaExceeded")
}

/// "Could not serialize access to table … due to concurrent update", "Transaction is aborted due to
/// concurrent update": two DML jobs or transactions on one table. ("Failed to commit … transaction"
/// is the BigQuery emulator's word for the same conflict.)
pub(super) fn is_retryable_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("concurrent update")
        || m.contains("could not serialize access")
        || m.contains("retry")
        || m.contains("failed to commit")
}

/// The REST client with the warehouse's project, dataset and retry policy.
pub struct Rest {
    pub client: Client,
    pub project: String,
    pub dataset: String,
    pub location: String,
    policy: Policy,
    job_timeout: Duration,
    /// Counts and limits every query job (see [`CostGuard`]).
    pub guard: Arc<CostGuard>,
}

impl Rest {
    /// Connects (nothing is sent until the first call).
    pub async fn connect(
        config: &BigQueryConfig,
        project: String,
        anonymous: bool,
        guard: Arc<CostGuard>,
    ) -> Result<Rest, WarehouseError> {
        let timeout = Duration::from_secs(config.request_timeout_secs.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| WarehouseError::Config(format!("building the HTTP client: {e}")))?;
        let mut builder = gcp_bigquery_client::client_builder::ClientBuilder::new();
        builder.with_client(http);
        if let Some(endpoint) = config.resolved_endpoint() {
            builder.with_v2_base_url(format!("{endpoint}/bigquery/v2"));
        }
        let client = if anonymous {
            builder.build_from_authenticator(Arc::new(EmulatorToken)).await
        } else {
            builder.build_from_application_default_credentials().await
        }
        .map_err(|e| WarehouseError::BigQuery {
            context: "connecting".into(),
            message: e.to_string(),
            transient: false,
        })?;
        Ok(Rest {
            client,
            project,
            dataset: config.dataset.clone(),
            location: config.location.clone(),
            policy: request_policy(config),
            job_timeout: Duration::from_secs(config.job_timeout_secs),
            guard,
        })
    }

    /// `` `project.dataset.table` ``.
    pub fn path(&self, table: &str) -> String {
        bsql::table_path(&self.project, &self.dataset, table)
    }

    /// Runs `call` until it succeeds, fails permanently, or runs out of attempts (see
    /// [`crate::retry`]).
    pub(super) async fn retrying<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BQError>>,
    {
        let on_retry = |failure: &Failure, wait: Duration| {
            tracing::warn!(what, retry_in_ms = wait.as_millis() as u64, error = %failure.message, "BigQuery request failed; retrying");
        };
        retry(self.policy, on_retry, || {
            let call = call();
            async move { call.await.map_err(|e| Failure::from_error(&e)) }
        })
        .await
    }

    pub async fn ensure_dataset(&self) -> Result<(), WarehouseError> {
        let (project, dataset) = (&self.project, &self.dataset);
        match self.retrying("get dataset", || self.client.dataset().get(project, dataset)).await {
            Ok(_) => return Ok(()),
            Err(f) if f.code == Some(404) => {}
            Err(f) => return Err(f.into_error(format!("reading dataset {project}.{dataset}"))),
        }
        let request = Dataset::new(project, dataset).location(&self.location);
        match self.retrying("create dataset", || self.client.dataset().create(request.clone())).await {
            Ok(_) => {
                tracing::info!(dataset = %dataset, "created dataset");
                Ok(())
            }
            Err(f) if f.code == Some(409) => Ok(()),
            Err(f) => Err(f.into_error(format!("creating dataset {project}.{dataset}"))),
        }
    }

    pub async fn get_table(&self, table: &str) -> Result<Option<Table>, WarehouseError> {
        let (project, dataset) = (&self.project, &self.dataset);
        match self.retrying("get table", || self.client.table().get(project, dataset, table, None)).await {
            Ok(t) => Ok(Some(t)),
            Err(f) if f.code == Some(404) => Ok(None),
            Err(f) => Err(f.into_error(format!("reading table {table}"))),
        }
    }

    /// Creates `table` unless it exists; returns it as BigQuery has it and whether it was created.
    pub async fn get_or_create_table(&self, table: Table) -> Result<(Table, bool), WarehouseError> {
        let name = table.table_reference.table_id.clone();
        if let Some(live) = self.get_table(&name).await? {
            return Ok((live, false));
        }
        match self.retrying("create table", || self.client.table().create(table.clone())).await {
            Ok(created) => {
                tracing::info!(table = %name, "created table");
                Ok((created, true))
            }
            Err(f) if f.code == Some(409) => match self.get_table(&name).await? {
                Some(live) => Ok((live, false)),
                None => Err(WarehouseError::Task(format!("table {name} vanished"))),
            },
            Err(f) => Err(f.into_error(format!("creating table {name}"))),
        }
    }

    /// Every table and view name in the dataset (`tables.list`, all pages).
    pub async fn list_tables(&self) -> Result<Vec<String>, WarehouseError> {
        use gcp_bigquery_client::table::ListOptions;
        let (project, dataset) = (&self.project, &self.dataset);
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let options = || {
                let options = ListOptions::default().max_results(1000);
                match &token {
                    Some(t) => options.page_token(t.clone()),
                    None => options,
                }
            };
            let page = self
                .retrying("list tables", || self.client.table().list(project, dataset, options()))
                .await
                .map_err(|f| f.into_error(format!("listing the tables of {dataset}")))?;
            names.extend(page.tables.unwrap_or_default().into_iter().map(|t| t.table_reference.table_id));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) => token = Some(next),
                None => return Ok(names),
            }
        }
    }

    /// Deletes a table; one already gone is not an error.
    pub async fn delete_table(&self, table: &str) -> Result<(), WarehouseError> {
        let (project, dataset) = (&self.project, &self.dataset);
        match self.retrying("delete table", || self.client.table().delete(project, dataset, table)).await {
            Ok(()) => Ok(()),
            Err(f) if f.code == Some(404) => Ok(()),
            Err(f) => Err(f.into_error(format!("deleting table {table}"))),
        }
    }

    pub async fn patch_table(&self, table: &str, patch: Table) -> Result<(), WarehouseError> {
        let (project, dataset) = (&self.project, &self.dataset);
        self.retrying("patch table", || self.client.table().patch(project, dataset, table, patch.clone()))
            .await
            .map(|_| ())
            .map_err(|f| f.into_error(format!("changing the columns of {table}")))
    }

    /// Starts `job` under its id and waits until it is DONE. A job id that already exists (409) is
    /// the same job: it is read and waited for, never run twice.
    pub async fn run_job(&self, id: &str, job: Job) -> Result<Job, WarehouseError> {
        let job = match self.retrying("insert job", || self.client.job().insert(&self.project, job.clone())).await {
            Ok(job) => job,
            Err(f) if f.code == Some(409) => self.get_job(id).await?,
            Err(f) => return Err(f.into_error(format!("starting job {id}"))),
        };
        self.wait_done(id, job).await
    }

    pub async fn get_job(&self, id: &str) -> Result<Job, WarehouseError> {
        self.retrying("get job", || self.client.job().get_job(&self.project, id, Some(&self.location)))
            .await
            .map_err(|f| f.into_error(format!("reading job {id}")))
    }

    /// Polls a job until DONE (the emulator answers DONE at once; BigQuery may take seconds).
    async fn wait_done(&self, id: &str, mut job: Job) -> Result<Job, WarehouseError> {
        let deadline = tokio::time::Instant::now() + self.job_timeout;
        // Polling, not retrying: a growing pause from 100 ms to 2 s, no jitter, until DONE.
        let mut poll = Policy::exponential(Duration::from_millis(100), Duration::from_secs(2)).without_jitter().pacer();
        while job.status.as_ref().and_then(|s| s.state.as_deref()) != Some("DONE") {
            if tokio::time::Instant::now() >= deadline {
                return Err(WarehouseError::BigQuery {
                    context: format!("job {id}"),
                    message: format!("not done after {} s", self.job_timeout.as_secs()),
                    transient: true,
                });
            }
            poll.pause().await;
            job = self.get_job(id).await?;
        }
        Ok(job)
    }

    /// The rows of a finished query job (for a script: its last statement's), at most 100.
    pub async fn job_rows(&self, id: &str) -> Result<Vec<Vec<Value>>, WarehouseError> {
        let parameters = GetQueryResultsParameters {
            location: Some(self.location.clone()),
            max_results: Some(100),
            ..Default::default()
        };
        let response = self
            .retrying("get query results", || {
                self.client.job().get_query_results(&self.project, id, parameters.clone())
            })
            .await
            .map_err(|f| f.into_error(format!("reading the results of job {id}")))?;
        Ok(cells(response.rows))
    }

    /// A small query (counts, dead letters, set-up DDL) with named parameters (name, type, value),
    /// read in one response, billed at most `max_bytes`.
    pub async fn query_rows(
        &self,
        sql: &str,
        params: Vec<(String, &'static str, String)>,
        max_bytes: u64,
    ) -> Result<Vec<Vec<Value>>, WarehouseError> {
        use gcp_bigquery_client::model::query_parameter::QueryParameter;
        use gcp_bigquery_client::model::query_parameter_type::QueryParameterType;
        use gcp_bigquery_client::model::query_parameter_value::QueryParameterValue;
        let mut request = QueryRequest::new(sql);
        if !params.is_empty() {
            request.parameter_mode = Some("NAMED".into());
            let parameter = |(name, kind, value): (String, &str, String)| QueryParameter {
                name: Some(name),
                parameter_type: Some(QueryParameterType { array_type: None, struct_types: None, r#type: kind.into() }),
                parameter_value: Some(QueryParameterValue {
                    array_values: None,
                    struct_values: None,
                    value: Some(value),
                }),
            };
            request.query_parameters = Some(params.into_iter().map(parameter).collect());
        }
        request.max_results = Some(100_000);
        request.maximum_bytes_billed = Some(max_bytes.to_string());
        request.location = Some(self.location.clone());
        self.guard.start_query().map_err(|r| WarehouseError::CostGuard(r.to_string()))?;
        let response = self
            .retrying("query", || self.client.job().query(&self.project, request.clone()))
            .await
            .map_err(|f| f.into_error("query"))?;
        // A query's response names the bytes it processed; BigQuery bills at least 10 MB of it.
        let processed: u64 = response.total_bytes_processed.as_deref().and_then(|n| n.parse().ok()).unwrap_or(0);
        self.guard.record_billed(processed);
        Ok(cells(response.rows))
    }

    /// One request, no retries, within 5 s: readiness must answer fast.
    pub async fn ping(&self) -> Result<(), WarehouseError> {
        let call = self.client.dataset().get(&self.project, &self.dataset);
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Failure::from_error(&e).into_error("ping")),
            Err(_) => Err(WarehouseError::BigQuery {
                context: "ping".into(),
                message: "no answer within 5 s".into(),
                transient: true,
            }),
        }
    }
}

/// The request retry policy: `request_attempts` tries, from `retry_initial_ms`, up to 10 s.
pub fn request_policy(config: &BigQueryConfig) -> Policy {
    Policy::exponential(Duration::from_millis(config.retry_initial_ms), Duration::from_secs(10))
        .with_max_attempts(config.request_attempts as usize)
}

/// Rows of a response as JSON cells (BigQuery's JSON has numbers as strings).
fn cells(rows: Option<Vec<gcp_bigquery_client::model::table_row::TableRow>>) -> Vec<Vec<Value>> {
    rows.unwrap_or_default()
        .into_iter()
        .map(|row| row.columns.unwrap_or_default().into_iter().map(|c| c.value.unwrap_or(Value::Null)).collect())
        .collect()
}

/// A number as BigQuery's JSON rows carry it (INT64 as a string).
pub fn number(value: Option<&Value>) -> u64 {
    match value {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// Bytes a finished job billed (0 on emulators).
pub fn billed_bytes(job: &Job) -> u64 {
    job.statistics
        .as_ref()
        .and_then(|s| s.query.as_ref())
        .and_then(|q| q.total_bytes_billed.as_deref())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The error a finished job reports, if any: (reason, message).
pub fn job_error(job: &Job) -> Option<(String, String)> {
    let error = job.status.as_ref()?.error_result.as_ref()?;
    Some((error.reason.clone().unwrap_or_default(), error.message.clone().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_recognised() {
        assert!(is_retryable_message("Could not serialize access to table p:d.t due to concurrent update"));
        assert!(is_retryable_message("Transaction is aborted due to concurrent update against table p:d.t"));
        assert!(is_retryable_reason("rateLimitExceeded"));
        assert!(!is_retryable_reason("invalidQuery"));
    }
}
