//! `[warehouse]` and its backends' sections.

pub mod bigquery;
pub mod cost;
pub mod duckdb;

use serde::{Deserialize, Serialize};

pub use bigquery::BigQueryConfig;
pub use cost::CostConfig;
pub use duckdb::DuckDbConfig;

/// `[warehouse]`: where batches land.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseConfig {
    /// `duckdb` (default): an embedded DuckDB file. `bigquery`: Google BigQuery
    /// (`[warehouse.bigquery]`).
    #[serde(default)]
    pub kind: WarehouseKind,
    #[serde(default)]
    pub duckdb: DuckDbConfig,
    #[serde(default)]
    pub bigquery: BigQueryConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WarehouseKind {
    #[default]
    Duckdb,
    Bigquery,
}
