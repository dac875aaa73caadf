//! GoogleSQL text and table definitions for the BigQuery warehouse, built in one place from table
//! schemas only.
//!
//! Every identifier comes from `schemas/` (checked by [`crate::schema::is_valid_identifier`]) or from
//! the config (project and dataset, checked by [`check_path_part`]) and is quoted with backticks; no
//! event value is ever spliced into SQL text. The only literals are numbers this module computes
//! (partition bounds).
//!
//! Names bqsync reserves in the dataset (see docs/google-cloud.md "BigQuery tables and views"):
//! - `_bqsync_landing_T`: the landing table of `T` (its user columns and the system columns);
//! - `_bqsync_apply_state`: one row per table, the applier's watermark;
//! - `T_live` and `T_current`: the fresh views.

use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;

use crate::dead_letter::{filter_sql, DeadLetterFilter, Dialect};
use crate::schema::{Column, ColumnMode, ColumnType, TableSchema, WriteMode};
pub use crate::warehouse::sql::{DELETED, EVENT_ID, LANDED_AT, VERSION};

/// Prefix of landing tables, which live next to their table in the same dataset.
pub const LANDING_PREFIX: &str = "_bqsync_landing_";

/// The applier's state table: one row per table (watermark, last apply).
pub const STATE_TABLE: &str = "_bqsync_apply_state";

/// The landing table of `table`.
pub fn landing_table(table: &str) -> String {
    format!("{LANDING_PREFIX}{table}")
}

/// The live view of `table`: applied rows plus the landed tail, deduplicated as the applier would.
pub fn live_view(table: &str) -> String {
    format!("{table}_live")
}

/// The current view of `table`: the live view without tombstones and system columns.
pub fn current_view(table: &str) -> String {
    format!("{table}_current")
}

/// Project and dataset ids may hold letters, digits, `_`, `-`, `.` and `:` (domain-scoped projects);
/// a backtick could end the quoted name, so anything else is refused.
pub fn check_path_part(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("{what} `{value}` may hold only letters, digits, `_`, `-`, `.` and `:`"))
    }
}

/// Quotes a column name: `` `name` ``.
pub fn quote_ident(name: &str) -> String {
    format!("`{name}`")
}

/// A fully qualified table: `` `project.dataset.table` ``.
pub fn table_path(project: &str, dataset: &str, table: &str) -> String {
    format!("`{project}.{dataset}.{table}`")
}

/// The BigQuery type of a schema column. A RECORD without sub-fields is JSON (BigQuery needs at
/// least one field in a RECORD).
pub fn field_type(column: &Column) -> &'static str {
    match column.column_type {
        ColumnType::String => "STRING",
        ColumnType::Int64 => "INTEGER",
        ColumnType::Float64 => "FLOAT",
        ColumnType::Bool => "BOOLEAN",
        ColumnType::Timestamp => "TIMESTAMP",
        ColumnType::Date => "DATE",
        ColumnType::Numeric => "NUMERIC",
        ColumnType::Json => "JSON",
        ColumnType::Record if column.fields.is_empty() => "JSON",
        ColumnType::Record => "RECORD",
        ColumnType::Bytes => "BYTES",
    }
}

/// Canonical spelling of a type, so `INT64` and `INTEGER` compare equal.
pub fn canonical_type(name: &str) -> &str {
    match name {
        "INT64" => "INTEGER",
        "FLOAT64" => "FLOAT",
        "BOOL" => "BOOLEAN",
        "STRUCT" => "RECORD",
        other => other,
    }
}

/// The mode a column has in the warehouse. Only key and version columns are REQUIRED (as in the
/// DuckDB warehouse): REQUIRED is enforced when payloads are validated, and tombstones null the
/// other columns.
pub fn warehouse_mode(table: &TableSchema, column: &Column) -> &'static str {
    if column.mode == ColumnMode::Repeated {
        "REPEATED"
    } else if is_key_or_version(table, &column.name) {
        "REQUIRED"
    } else {
        "NULLABLE"
    }
}

fn is_key_or_version(table: &TableSchema, name: &str) -> bool {
    table.write_mode == WriteMode::Upsert
        && (table.primary_key.iter().any(|k| k == name) || table.version_column.as_deref() == Some(name))
}

fn field(name: &str, field_type: &str, mode: &str, description: Option<&str>) -> TableFieldSchema {
    let mut field = TableFieldSchema::new(name, gcp_bigquery_client::model::field_type::FieldType::String);
    field.r#type = serde_json::from_value(serde_json::Value::String(field_type.into())).unwrap_or(field.r#type);
    field.mode = Some(mode.into());
    field.description = description.map(str::to_string);
    field
}

fn sub_fields(column: &Column) -> Option<Vec<TableFieldSchema>> {
    (field_type(column) == "RECORD").then(|| {
        column
            .fields
            .iter()
            .map(|f| {
                let mode = if f.mode == ColumnMode::Repeated { "REPEATED" } else { "NULLABLE" };
                let mut sub = field(&f.name, field_type(f), mode, f.description.as_deref());
                sub.fields = sub_fields(f);
                sub
            })
            .collect()
    })
}

/// The field of a schema column as the warehouse table has it.
pub fn column_field(table: &TableSchema, column: &Column) -> TableFieldSchema {
    let mut f = field(&column.name, field_type(column), warehouse_mode(table, column), column.description.as_deref());
    f.fields = sub_fields(column);
    f
}

/// The system columns every warehouse table has after its schema columns.
pub fn system_fields() -> Vec<TableFieldSchema> {
    vec![
        field(EVENT_ID, "STRING", "REQUIRED", Some("Event that wrote the row (bqsync).")),
        field(VERSION, "INTEGER", "NULLABLE", Some("Version the row is at (upsert tables; bqsync).")),
        field(DELETED, "BOOLEAN", "REQUIRED", Some("True for a tombstone (bqsync).")),
        field(LANDED_AT, "TIMESTAMP", "REQUIRED", Some("When the row was last written (bqsync).")),
    ]
}

/// All fields of a warehouse table: schema columns, then system columns.
pub fn table_fields(table: &TableSchema) -> Vec<TableFieldSchema> {
    table.columns.iter().map(|c| column_field(table, c)).chain(system_fields()).collect()
}

/// Fields of a landing table: the live table's user columns exactly as they are (so a row the
/// table would reject is rejected by the append, alone, with BigQuery's message), then the system
/// columns (the landing time is when the row was appended), then the landing-only ones.
pub fn landing_fields(schema: &TableSchema, live_user_fields: &[TableFieldSchema]) -> Vec<TableFieldSchema> {
    live_user_fields.iter().cloned().chain(system_fields()).chain(landing_only_fields(schema)).collect()
}

/// Landing column of patch tables (`"upsert": "patch"`): the names of the columns a record did not
/// carry, which keep their stored values when it is applied.
pub const ABSENT: &str = "_bqsync_absent";

/// The columns a landing table has beyond `T`'s: [`ABSENT`] for patch tables.
pub fn landing_only_fields(schema: &TableSchema) -> Vec<TableFieldSchema> {
    if schema.patches() {
        vec![field(ABSENT, "STRING", "REPEATED", Some("Columns the record did not carry (patch upserts; bqsync)."))]
    } else {
        Vec::new()
    }
}

/// Fields of the applier's state table.
pub fn state_fields() -> Vec<TableFieldSchema> {
    vec![
        field("table_name", "STRING", "REQUIRED", Some("Destination table.")),
        field("watermark", "TIMESTAMP", "REQUIRED", Some("Landed rows up to here are applied.")),
        field("applied_at", "TIMESTAMP", "REQUIRED", Some("When the last apply committed.")),
        field("job_id", "STRING", "NULLABLE", Some("The last apply's job.")),
        field("rows_applied", "INTEGER", "NULLABLE", Some("Rows the last apply inserted or changed.")),
    ]
}

/// Live rows of a table: tombstones excluded.
pub fn count_live_rows(target: &str) -> String {
    format!("SELECT COUNT(*) AS n FROM {target} WHERE NOT {}", quote_ident(DELETED))
}

/// Dead letters by table and reason.
/// Open dead letters (not replayed) by table and reason; `replays` is the marks' live view.
pub fn count_dead_letters(target: &str, replays: Option<&str>) -> String {
    let from = crate::dead_letter::with_replay_marks(target, replays);
    format!(
        "SELECT IFNULL(table_name, '?') AS table_name, reason, COUNT(*) AS n FROM {from} \
         WHERE marks.replayed_at IS NULL GROUP BY 1, 2 ORDER BY 1, 2"
    )
}

/// The `dead_letters` query for a filter, with its named STRING/INT64 parameters: (SQL, [(name,
/// type, value)]). Values never enter the SQL text.
pub fn select_dead_letters(
    target: &str,
    replays: Option<&str>,
    filter: &DeadLetterFilter,
) -> (String, Vec<(String, &'static str, String)>) {
    let (tail, params) = filter_sql(filter, Dialect::BigQuery);
    let from = crate::dead_letter::with_replay_marks(target, replays);
    let sql = format!(
        "SELECT dead_letter_id, event_id, table_name, reason, detail, source, message_bytes, \
         TO_JSON_STRING(attributes), delivery_attempts, UNIX_MICROS(first_failed_at), UNIX_MICROS(last_failed_at), \
         bqsync_version, UNIX_MICROS(marks.replayed_at) FROM {from}{tail}"
    );
    (sql, params.into_iter().map(|p| (p.name, p.kind.bigquery_name(), p.value)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Catalog;

    fn catalog() -> Catalog {
        crate::schema::project_catalog()
    }

    #[test]
    fn names_are_backticked_and_config_parts_checked() {
        assert_eq!(table_path("p-1", "d_2", "atoms"), "`p-1.d_2.atoms`");
        assert!(check_path_part("project", "example.com:my-proj").is_ok());
        assert!(check_path_part("dataset", "a`; DROP").is_err());
        assert!(check_path_part("dataset", "").is_err());
    }

    #[test]
    fn table_fields_map_types_modes_and_system_columns() {
        let catalog = catalog();
        let atoms = table_fields(catalog.get("atoms").unwrap());
        let by_name = |name: &str| atoms.iter().find(|f| f.name == name).unwrap().clone();
        assert_eq!(by_name("tags").mode.as_deref(), Some("REPEATED"));
        // REQUIRED in the schema file, NULLABLE in the warehouse: enforced when validating.
        assert_eq!(by_name("created_at").mode.as_deref(), Some("NULLABLE"));
        assert_eq!(by_name(EVENT_ID).mode.as_deref(), Some("REQUIRED"));
        let contacts = table_fields(catalog.get("contacts_master").unwrap());
        let contact_id = contacts.iter().find(|f| f.name == "contact_id").unwrap();
        assert_eq!(contact_id.mode.as_deref(), Some("REQUIRED"));
        let zoom = table_fields(catalog.get("zoom_sessions").unwrap());
        let participants = zoom.iter().find(|f| f.name == "participants").unwrap();
        let json = serde_json::to_value(participants).unwrap();
        assert_eq!(json["type"], "RECORD");
        assert_eq!(json["mode"], "REPEATED");
        assert!(participants.fields.as_ref().is_some_and(|f| !f.is_empty()));
    }

    #[test]
    fn dead_letter_filters_are_named_parameters_never_sql_text() {
        let filter = DeadLetterFilter {
            table: Some("atoms'; DROP TABLE x; --".into()),
            since_micros: Some(5),
            ids: vec!["abc12345".into(), "e-1".into()],
            limit: Some(10),
            ..Default::default()
        };
        let (sql, params) = select_dead_letters("`p.d.dead_letters`", Some("`p.d.dead_letter_replays_live`"), &filter);
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(
            sql.contains("FROM `p.d.dead_letters` LEFT JOIN (SELECT dead_letter_id AS replayed_id, MIN(replayed_at) AS replayed_at FROM `p.d.dead_letter_replays_live` GROUP BY dead_letter_id) marks"),
            "{sql}"
        );
        assert!(sql.contains("table_name = @table AND last_failed_at >= TIMESTAMP_MICROS(@since)"), "{sql}");
        assert!(sql.contains("(STARTS_WITH(dead_letter_id, @id1) OR event_id = @id1)"), "{sql}");
        assert!(sql.ends_with("ORDER BY last_failed_at DESC, dead_letter_id LIMIT 10"), "{sql}");
        assert_eq!(params.len(), 4);
        assert_eq!(params[1], ("since".to_string(), "INT64", "5".to_string()));
    }

    #[test]
    fn types_compare_across_spellings() {
        assert_eq!(canonical_type("INT64"), canonical_type("INTEGER"));
        assert_eq!(canonical_type("BOOL"), "BOOLEAN");
        assert_ne!(canonical_type("STRING"), canonical_type("BYTES"));
    }
}
