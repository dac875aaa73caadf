//! Tables of the BigQuery warehouse, made once by set-up and a worker's start-up, never per flush:
//! for each table `T` of `schemas/`, `T` itself, its landing table `_bqsync_landing_T`, its state
//! row in `_bqsync_apply_state`, and the views `T_live` and `T_current`.
//!
//! - The landing table has `T`'s user columns exactly as `T` has them, plus the system columns; it
//!   is partitioned by **hour** on the landing time, each partition expiring after
//!   `landing_expiration_days`, and clustered for the apply (event id; upsert tables: the key).
//!   Hourly, so an apply's window (a minute or five) bills the current hour's partition, not the
//!   day's: on-demand queries bill every partition they cannot prune (72 partitions for 3 days, far
//!   under the 10,000 per table).
//! - Schema evolution applies to both tables alike: new NULLABLE columns are added to `T` and then
//!   to its landing table; type changes, dropped columns and new REQUIRED columns are refused.
//! - Creating tables is rate-limited by BigQuery (`tables.insert`: 10 requests/s per user) and
//!   eventually consistent for streaming (Google, "Streaming into a table created moments ago may
//!   fail with notFound"); both are why nothing here runs on the landing path.

use gcp_bigquery_client::model::clustering::Clustering;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_schema::TableSchema as BqTableSchema;
use gcp_bigquery_client::model::time_partitioning::TimePartitioning;

use super::apply_sql;
use super::client::Rest;
use super::sql::{self as bsql, DELETED, EVENT_ID, LANDED_AT, VERSION};
use crate::schema::{ColumnMode, TableSchema, WriteMode};
use crate::warehouse::WarehouseError;

const DAY_MILLIS: u64 = 86_400_000;

/// `T` as `schemas/` defines it.
pub fn target_table(rest: &Rest, schema: &TableSchema) -> Table {
    let fields = bsql::table_fields(schema);
    let mut table = Table::new(&rest.project, &rest.dataset, &schema.table, BqTableSchema::new(fields));
    table.description = schema.description.clone();
    if let Some(partition) = &schema.partition {
        table.time_partitioning = Some(TimePartitioning {
            r#type: partition.granularity.as_str().to_string(),
            field: Some(partition.column.clone()),
            ..Default::default()
        });
    }
    if !schema.cluster.is_empty() {
        table.clustering = Some(Clustering { fields: Some(schema.cluster.clone()) });
    }
    table
}

/// The landing table of `T`, with `T`'s live user columns.
pub fn landing_table(
    rest: &Rest,
    schema: &TableSchema,
    user_fields: &[TableFieldSchema],
    expiration_days: u32,
) -> Table {
    let name = bsql::landing_table(&schema.table);
    let mut table =
        Table::new(&rest.project, &rest.dataset, &name, BqTableSchema::new(bsql::landing_fields(schema, user_fields)));
    table.description =
        Some(format!("bqsync landing table of {} (appended by workers, read by the applier)", schema.table));
    table.time_partitioning = Some(TimePartitioning {
        r#type: "HOUR".into(),
        field: Some(LANDED_AT.into()),
        expiration_ms: Some((u64::from(expiration_days) * DAY_MILLIS).to_string()),
        ..Default::default()
    });
    let cluster = match schema.write_mode {
        WriteMode::Append => vec![EVENT_ID.to_string()],
        WriteMode::Upsert => schema.primary_key.iter().take(4).cloned().collect(),
    };
    table.clustering = Some(Clustering { fields: Some(cluster) });
    table
}

/// The applier's state table.
pub fn state_table(rest: &Rest) -> Table {
    let mut table =
        Table::new(&rest.project, &rest.dataset, bsql::STATE_TABLE, BqTableSchema::new(bsql::state_fields()));
    table.description = Some("bqsync applier state: one watermark row per table".into());
    table
}

/// The user columns of a live table, in the order of the schema's columns.
pub fn user_fields(schema: &TableSchema, live: &[TableFieldSchema]) -> Vec<TableFieldSchema> {
    schema.columns.iter().filter_map(|c| live.iter().find(|f| f.name == c.name).cloned()).collect()
}

/// Brings a live table to `schemas/`: adds what [`plan_evolution`] allows, and the bqsync columns
/// of `extra` it lacks (a landing table's own, see [`bsql::landing_only_fields`]); returns its fields.
pub async fn evolve(
    rest: &Rest,
    schema: &TableSchema,
    live: Table,
    what: &str,
    extra: &[TableFieldSchema],
) -> Result<Vec<TableFieldSchema>, WarehouseError> {
    let live_fields = live.schema.fields.clone().unwrap_or_default();
    let mut evolution = plan_evolution(schema, &live_fields, &format!("{}.{what}", rest.dataset))?;
    evolution.added.extend(extra.iter().filter(|e| !live_fields.iter().any(|f| f.name == e.name)).cloned());
    if evolution.added.is_empty() {
        return Ok(live_fields);
    }
    let mut fields = live_fields;
    fields.extend(evolution.added.iter().cloned());
    let mut patch = live.clone();
    patch.schema = BqTableSchema::new(fields.clone());
    rest.patch_table(&live.table_reference.table_id, patch).await?;
    for added in &evolution.added {
        tracing::info!(table = %live.table_reference.table_id, column = %added.name, "added column");
    }
    Ok(fields)
}

/// The views of `T`, replaced each set-up (their text follows the schema).
pub fn view_statements(rest: &Rest, schema: &TableSchema) -> Vec<String> {
    let (target, landing, state) =
        (rest.path(&schema.table), rest.path(&bsql::landing_table(&schema.table)), rest.path(bsql::STATE_TABLE));
    let live = rest.path(&bsql::live_view(&schema.table));
    vec![
        apply_sql::create_live_view(&live, schema, &target, &landing, &state),
        apply_sql::create_current_view(&rest.path(&bsql::current_view(&schema.table)), schema, &live),
    ]
}

/// What `schemas/` asks of a live table: columns to add, or why not.
#[derive(Debug)]
pub struct Evolution {
    pub added: Vec<TableFieldSchema>,
}

/// Compares a schema file with the live table: new NULLABLE columns are added; a type change, a
/// dropped column or a new REQUIRED column is refused, naming the column and where.
/// `location` names the live table in messages (`dataset.table`).
pub fn plan_evolution(
    schema: &TableSchema,
    live: &[TableFieldSchema],
    location: &str,
) -> Result<Evolution, WarehouseError> {
    let refuse = |problem: String| Err(WarehouseError::SchemaChange { table: schema.table.clone(), problem });
    let where_ = format!("{location} in BigQuery");
    let type_of = |f: &TableFieldSchema| {
        serde_json::to_value(&f.r#type).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    };
    let mut added = Vec::new();
    for column in &schema.columns {
        let wanted = bsql::column_field(schema, column);
        match live.iter().find(|f| f.name == column.name) {
            None if column.mode == ColumnMode::Required || bsql::warehouse_mode(schema, column) == "REQUIRED" => {
                return refuse(format!(
                    "new column `{}` is REQUIRED in schemas/{}.json; rows already in {where_} have no value for it. Add it as NULLABLE.",
                    column.name, schema.table
                ));
            }
            None => added.push(wanted),
            Some(existing) => {
                let (live_type, wanted_type) = (type_of(existing), type_of(&wanted));
                if bsql::canonical_type(&live_type) != bsql::canonical_type(&wanted_type) {
                    return refuse(format!(
                        "column `{}` is {live_type} in {where_} but {wanted_type} in schemas/{}.json; type changes need a migration: {}",
                        column.name, schema.table, crate::warehouse::MIGRATION_HINT
                    ));
                }
                let live_mode = existing.mode.as_deref().unwrap_or("NULLABLE");
                let wanted_mode = wanted.mode.as_deref().unwrap_or("NULLABLE");
                match (live_mode, wanted_mode) {
                    (a, b) if a == b => {}
                    ("REQUIRED", "NULLABLE") => tracing::warn!(
                        table = %schema.table, column = %column.name,
                        "column is REQUIRED in BigQuery but not in schemas/: rows without it will be dead-lettered"
                    ),
                    (a, b) => {
                        return refuse(format!(
                            "column `{}` is {a} in {where_} but would be {b} per schemas/{}.json; mode changes need a migration: {}",
                            column.name, schema.table, crate::warehouse::MIGRATION_HINT
                        ))
                    }
                }
            }
        }
    }
    let system = [EVENT_ID, VERSION, DELETED, LANDED_AT];
    for field in live {
        // A landing table's own columns are bqsync's; a patch table turned back to replace keeps its
        // (then unused) column.
        let known = schema.columns.iter().any(|c| c.name == field.name)
            || system.contains(&field.name.as_str())
            || field.name == bsql::ABSENT;
        if !known {
            return refuse(format!(
                "column `{}` is in {where_} but not in schemas/{}.json; dropping columns needs a migration (or add it back as NULLABLE)",
                field.name, schema.table
            ));
        }
    }
    if let Some(missing) = system.iter().find(|s| !live.iter().any(|f| f.name == **s)) {
        return refuse(format!("{where_} lacks bqsync's column `{missing}`: was it created by something else?"));
    }
    Ok(Evolution { added })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnType;

    fn catalog() -> crate::schema::Catalog {
        crate::schema::project_catalog()
    }

    fn live_fields(schema: &TableSchema) -> Vec<TableFieldSchema> {
        bsql::table_fields(schema)
    }

    #[test]
    fn evolution_adds_nullable_columns_and_refuses_breaking_changes() {
        let catalog = catalog();
        let atoms = catalog.get("atoms").unwrap().clone();
        let live = live_fields(&atoms);
        assert!(plan_evolution(&atoms, &live, "d.atoms").unwrap().added.is_empty());

        let mut grown = atoms.clone();
        let mut extra = grown.columns[3].clone();
        extra.name = "language".into();
        grown.columns.push(extra.clone());
        let plan = plan_evolution(&grown, &live, "d.atoms").unwrap();
        assert_eq!(plan.added.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["language"]);

        let mut required = grown.clone();
        required.columns.last_mut().unwrap().mode = ColumnMode::Required;
        let err = plan_evolution(&required, &live, "d.atoms").unwrap_err().to_string();
        assert!(err.contains("new column `language` is REQUIRED"), "{err}");

        let mut retyped = atoms.clone();
        retyped.columns.iter_mut().find(|c| c.name == "score").unwrap().column_type = ColumnType::String;
        let err = plan_evolution(&retyped, &live, "d.atoms").unwrap_err().to_string();
        assert!(err.contains("column `score` is FLOAT in d.atoms in BigQuery but STRING"), "{err}");

        let mut dropped = atoms.clone();
        dropped.columns.retain(|c| c.name != "text");
        let err = plan_evolution(&dropped, &live, "d.atoms").unwrap_err().to_string();
        assert!(err.contains("column `text` is in d.atoms in BigQuery but not in schemas/atoms.json"), "{err}");
    }
}
