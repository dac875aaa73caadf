//! GoogleSQL text and table definitions for the BigQuery warehouse, built in one place from table
//! schemas only.
//!
//! Every identifier comes from `schemas/` (checked by [`crate::schema::is_valid_identifier`]) or from
//! the config (project and dataset, checked by [`check_path_part`]) and is quoted with backticks; no
//! event value is ever spliced into SQL text. The only literals are numbers this module computes
//! (partition bounds).
//!
//! Staging tables carry the event metadata next to the payload columns:
//! `_e` event id, `_v` version, `_d` tombstone, `_s` position in the batch.

use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;

use super::sql::{DELETED, EVENT_ID, LANDED_AT, STAGE_DELETED, STAGE_EVENT_ID, STAGE_SEQUENCE, STAGE_VERSION, VERSION};
use crate::dead_letter::{filter_sql, DeadLetterFilter, Dialect};
use crate::schema::{Column, ColumnMode, ColumnType, TableSchema, WriteMode};

/// Prefix of staging tables, which live next to their table and expire on their own.
pub const STAGING_PREFIX: &str = "_bqsync_stage_";

/// Microseconds in a day.
const DAY_MICROS: i64 = 86_400_000_000;

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

/// Fields of a staging table: event metadata, then the live table's user columns exactly as they are
/// (so a row the table would reject is rejected while staging, alone, with BigQuery's message).
pub fn staging_fields(live_user_fields: &[TableFieldSchema]) -> Vec<TableFieldSchema> {
    let mut fields = vec![
        field(STAGE_EVENT_ID, "STRING", "REQUIRED", None),
        field(STAGE_VERSION, "INTEGER", "NULLABLE", None),
        field(STAGE_DELETED, "BOOLEAN", "REQUIRED", None),
        field(STAGE_SEQUENCE, "INTEGER", "REQUIRED", None),
    ];
    fields.extend(live_user_fields.iter().cloned());
    fields
}

/// The staging table of one batch of a table.
pub fn staging_table(table: &str, batch_id: &str) -> String {
    format!("{STAGING_PREFIX}{table}_{batch_id}")
}

/// Where one landing's rows sit in a partitioned table: `[low, high)` in microseconds (TIMESTAMP) or
/// days (DATE), already widened to whole partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRange {
    pub low: i64,
    pub high: i64,
    pub is_date: bool,
}

impl PartitionRange {
    /// The range covering `values` (microseconds or days), floored and ceiled to days. None when a
    /// value is missing (rows in the NULL partition) or there are none: then nothing is bounded.
    pub fn covering(values: impl Iterator<Item = Option<i64>>, is_date: bool) -> Option<PartitionRange> {
        let (mut low, mut high) = (i64::MAX, i64::MIN);
        for value in values {
            let value = value?;
            low = low.min(value);
            high = high.max(value);
        }
        if low > high {
            return None;
        }
        let unit = if is_date { 1 } else { DAY_MICROS };
        Some(PartitionRange {
            low: low.div_euclid(unit) * unit,
            high: (high.div_euclid(unit) + 1).saturating_mul(unit),
            is_date,
        })
    }

    /// Clamps the low end to `window_days` before `now_micros`: the dedup scan never reaches further
    /// back than the window (events older than it are checked only against the window).
    pub fn clamp_to_window(mut self, now_micros: i64, window_days: u32) -> PartitionRange {
        let floor_micros = (now_micros.div_euclid(DAY_MICROS) - i64::from(window_days)) * DAY_MICROS;
        let floor = if self.is_date { floor_micros / DAY_MICROS } else { floor_micros };
        self.low = self.low.max(floor).min(self.high);
        self
    }

    fn condition(&self, column: &str) -> String {
        let column = format!("t.{}", quote_ident(column));
        if self.is_date {
            format!("{column} >= DATE_FROM_UNIX_DATE({}) AND {column} < DATE_FROM_UNIX_DATE({})", self.low, self.high)
        } else {
            format!("{column} >= TIMESTAMP_MICROS({}) AND {column} < TIMESTAMP_MICROS({})", self.low, self.high)
        }
    }
}

fn column_list(table: &TableSchema) -> String {
    table.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ")
}

fn staged_list(table: &TableSchema) -> String {
    table.columns.iter().map(|c| format!("s.{}", quote_ident(&c.name))).collect::<Vec<_>>().join(", ")
}

fn system_columns() -> String {
    [EVENT_ID, VERSION, DELETED, LANDED_AT].map(quote_ident).join(", ")
}

/// Append tables: insert the staged rows whose event id is not in the table yet (first copy wins
/// when a batch holds an id twice). With `range`, the existence check reads only the partitions the
/// batch's rows fall in, so the bytes scanned do not grow with the table.
pub fn insert_new_events(target: &str, stage: &str, table: &TableSchema, range: Option<PartitionRange>) -> String {
    let bound = match (range, &table.partition) {
        (Some(range), Some(partition)) => format!(" AND {}", range.condition(&partition.column)),
        _ => String::new(),
    };
    format!(
        "INSERT INTO {target} ({columns}, {system}) \
         SELECT {staged}, s.{STAGE_EVENT_ID}, NULL, FALSE, CURRENT_TIMESTAMP() FROM \
         (SELECT * FROM {stage} WHERE TRUE QUALIFY ROW_NUMBER() OVER (PARTITION BY {STAGE_EVENT_ID} ORDER BY {STAGE_SEQUENCE}) = 1) s \
         WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE t.{event_id} = s.{STAGE_EVENT_ID}{bound})",
        columns = column_list(table),
        system = system_columns(),
        staged = staged_list(table),
        event_id = quote_ident(EVENT_ID),
    )
}

/// Upsert tables: the highest version per key in the batch is merged; a row changes only when that
/// version is higher than the stored one. On equal versions a delete wins, then the larger event id,
/// so the result does not depend on arrival order. Deletes leave a tombstone (key, version, `_d`).
pub fn merge_versioned(target: &str, stage: &str, table: &TableSchema) -> String {
    assert_eq!(table.write_mode, WriteMode::Upsert, "merge_versioned is for upsert tables");
    let keys: Vec<String> = table.primary_key.iter().map(|k| quote_ident(k)).collect();
    let on = keys.iter().map(|k| format!("t.{k} = s.{k}")).collect::<Vec<_>>().join(" AND ");
    let version = quote_ident(VERSION);
    let updates = table
        .columns
        .iter()
        .filter(|c| !table.primary_key.contains(&c.name))
        .map(|c| format!("{0} = s.{0}", quote_ident(&c.name)))
        .chain([
            format!("{version} = s.{STAGE_VERSION}"),
            format!("{} = s.{STAGE_DELETED}", quote_ident(DELETED)),
            format!("{} = s.{STAGE_EVENT_ID}", quote_ident(EVENT_ID)),
            format!("{} = CURRENT_TIMESTAMP()", quote_ident(LANDED_AT)),
        ])
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "MERGE {target} t USING \
         (SELECT * FROM {stage} WHERE TRUE QUALIFY ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {STAGE_VERSION} DESC, {STAGE_DELETED} DESC, {STAGE_EVENT_ID} DESC) = 1) s \
         ON {on} \
         WHEN MATCHED AND s.{STAGE_VERSION} > t.{version} THEN UPDATE SET {updates} \
         WHEN NOT MATCHED THEN INSERT ({columns}, {system}) \
         VALUES ({staged}, s.{STAGE_EVENT_ID}, s.{STAGE_VERSION}, s.{STAGE_DELETED}, CURRENT_TIMESTAMP())",
        keys = keys.join(", "),
        columns = column_list(table),
        system = system_columns(),
        staged = staged_list(table),
    )
}

/// Live rows of a table: tombstones excluded.
pub fn count_live_rows(target: &str) -> String {
    format!("SELECT COUNT(*) AS n FROM {target} WHERE NOT {}", quote_ident(DELETED))
}

/// Dead letters by table and reason.
pub fn count_dead_letters(target: &str) -> String {
    format!(
        "SELECT IFNULL(table_name, '?') AS table_name, reason, COUNT(*) AS n FROM {target} \
         GROUP BY 1, 2 ORDER BY 1, 2"
    )
}

/// The `dead_letters` query for a filter, with its named STRING/INT64 parameters: (SQL, [(name,
/// type, value)]). Values never enter the SQL text.
pub fn select_dead_letters(target: &str, filter: &DeadLetterFilter) -> (String, Vec<(String, &'static str, String)>) {
    let (tail, params) = filter_sql(filter, Dialect::BigQuery);
    let sql = format!(
        "SELECT dead_letter_id, event_id, table_name, reason, detail, source, message_bytes, \
         TO_JSON_STRING(attributes), delivery_attempts, UNIX_MICROS(first_failed_at), UNIX_MICROS(last_failed_at), \
         bqsync_version FROM {target}{tail}"
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
    fn append_sql_deduplicates_on_event_id_within_the_batch_partitions() {
        let catalog = catalog();
        let atoms = catalog.get("atoms").unwrap();
        let range = PartitionRange::covering([Some(DAY_MICROS + 5), Some(3 * DAY_MICROS + 1)].into_iter(), false);
        let sql = insert_new_events("`p.d.atoms`", "`p.d._bqsync_stage_atoms_x`", atoms, range);
        assert!(
            sql.contains(
                "WHERE NOT EXISTS (SELECT 1 FROM `p.d.atoms` t WHERE t.`_bqsync_event_id` = s._e AND \
                 t.`created_at` >= TIMESTAMP_MICROS(86400000000) AND t.`created_at` < TIMESTAMP_MICROS(345600000000))"
            ),
            "{sql}"
        );
        assert!(sql.contains("QUALIFY ROW_NUMBER() OVER (PARTITION BY _e ORDER BY _s) = 1"), "{sql}");
        let unbounded = insert_new_events("`p.d.atoms`", "`s`", atoms, None);
        assert!(unbounded.contains("t.`_bqsync_event_id` = s._e)"), "{unbounded}");
    }

    #[test]
    fn partition_range_covers_whole_days_and_clamps_to_the_window() {
        let range =
            PartitionRange::covering([Some(10 * DAY_MICROS + 7), Some(12 * DAY_MICROS)].into_iter(), false).unwrap();
        assert_eq!((range.low, range.high), (10 * DAY_MICROS, 13 * DAY_MICROS));
        assert_eq!(PartitionRange::covering([Some(1), None].into_iter(), false), None, "NULL partition: unbounded");
        assert_eq!(PartitionRange::covering(std::iter::empty(), true), None);
        let clamped = range.clamp_to_window(13 * DAY_MICROS + 5, 2);
        assert_eq!(clamped.low, 11 * DAY_MICROS);
        let days = PartitionRange::covering([Some(100), Some(103)].into_iter(), true).unwrap();
        assert_eq!((days.low, days.high), (100, 104));
        assert_eq!(days.clamp_to_window(105 * DAY_MICROS, 3).low, 102);
    }

    #[test]
    fn merge_sql_is_version_guarded_and_never_updates_keys() {
        let sql = merge_versioned("`p.d.contacts_master`", "`p.d.stage`", catalog().get("contacts_master").unwrap());
        assert!(sql.starts_with("MERGE `p.d.contacts_master` t USING"), "{sql}");
        assert!(sql.contains("ON t.`contact_id` = s.`contact_id`"), "{sql}");
        assert!(sql.contains("WHEN MATCHED AND s._v > t.`_bqsync_version` THEN UPDATE SET"), "{sql}");
        assert!(sql.contains("PARTITION BY `contact_id` ORDER BY _v DESC, _d DESC, _e DESC"), "{sql}");
        assert!(!sql.contains("`contact_id` = s.`contact_id`,"), "keys are never updated: {sql}");
        assert!(sql.contains("`_bqsync_deleted` = s._d"), "tombstones are versioned rows: {sql}");
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
        let (sql, params) = select_dead_letters("`p.d.dead_letters`", &filter);
        assert!(!sql.contains("DROP"), "{sql}");
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
