//! SQL text for the DuckDB warehouse, built in one place from table schemas only.
//!
//! Every identifier goes through [`quote_ident`] and comes from `schemas/` (already checked by
//! [`crate::schema::is_valid_identifier`]); no value is ever spliced into SQL text.

use crate::dead_letter::{filter_sql, with_replay_marks, DeadLetterFilter, Dialect, DEAD_LETTER_TABLE, REPLAY_TABLE};
use crate::schema::{Column, ColumnMode, ColumnType, TableSchema, WriteMode};

/// System column: the event id that produced the row (append tables deduplicate on it).
pub const EVENT_ID: &str = "_bqsync_event_id";
/// System column: the version the row is at (upsert tables).
pub const VERSION: &str = "_bqsync_version";
/// System column: true for a tombstone (a deleted key, kept so that older events cannot revive it).
pub const DELETED: &str = "_bqsync_deleted";
/// System column: when the row was last written.
pub const LANDED_AT: &str = "_bqsync_landed_at";

/// Staging columns that carry event metadata next to the payload columns.
pub const STAGE_EVENT_ID: &str = "_e";
pub const STAGE_VERSION: &str = "_v";
pub const STAGE_DELETED: &str = "_d";
pub const STAGE_SEQUENCE: &str = "_s";

/// Quotes an identifier for DuckDB (and standard SQL): `"name"`, with `"` doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The staging table of a table.
pub fn staging_table(table: &TableSchema) -> String {
    format!("_bqsync_stage_{}", table.table)
}

/// How a column travels through the staging table (Arrow types the appender understands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagingType {
    Varchar,
    Bigint,
    Double,
    Boolean,
    Timestamp,
    Date,
    Blob,
}

impl StagingType {
    pub fn sql(self) -> &'static str {
        match self {
            StagingType::Varchar => "VARCHAR",
            StagingType::Bigint => "BIGINT",
            StagingType::Double => "DOUBLE",
            StagingType::Boolean => "BOOLEAN",
            StagingType::Timestamp => "TIMESTAMP",
            StagingType::Date => "DATE",
            StagingType::Blob => "BLOB",
        }
    }
}

fn scalar_list_element(column: &Column) -> Option<&'static str> {
    match column.column_type {
        ColumnType::String => Some("VARCHAR"),
        ColumnType::Int64 => Some("BIGINT"),
        ColumnType::Float64 => Some("DOUBLE"),
        ColumnType::Bool => Some("BOOLEAN"),
        _ => None,
    }
}

/// The staging type of a column: JSON-shaped values (JSON, RECORD, REPEATED, NUMERIC) travel as text.
pub fn staging_type(column: &Column) -> StagingType {
    if column.mode == ColumnMode::Repeated {
        return StagingType::Varchar;
    }
    match column.column_type {
        ColumnType::String | ColumnType::Json | ColumnType::Record | ColumnType::Numeric => StagingType::Varchar,
        ColumnType::Int64 => StagingType::Bigint,
        ColumnType::Float64 => StagingType::Double,
        ColumnType::Bool => StagingType::Boolean,
        ColumnType::Timestamp => StagingType::Timestamp,
        ColumnType::Date => StagingType::Date,
        ColumnType::Bytes => StagingType::Blob,
    }
}

/// The DuckDB type of a column. TIMESTAMP holds UTC; RECORD and REPEATED RECORD are JSON.
pub fn column_type(column: &Column) -> String {
    if column.mode == ColumnMode::Repeated {
        return match scalar_list_element(column) {
            Some(element) => format!("{element}[]"),
            None => "JSON".into(),
        };
    }
    match column.column_type {
        ColumnType::String => "VARCHAR",
        ColumnType::Int64 => "BIGINT",
        ColumnType::Float64 => "DOUBLE",
        ColumnType::Bool => "BOOLEAN",
        ColumnType::Timestamp => "TIMESTAMP",
        ColumnType::Date => "DATE",
        ColumnType::Numeric => "DECIMAL(38, 9)",
        ColumnType::Json | ColumnType::Record => "JSON",
        ColumnType::Bytes => "BLOB",
    }
    .into()
}

/// Expression that turns the staged value of `column` (from alias `s`) into its table type.
fn cast_from_stage(column: &Column) -> String {
    let staged = format!("s.{}", quote_ident(&column.name));
    if column.mode == ColumnMode::Repeated {
        return match scalar_list_element(column) {
            Some(element) => format!("CAST(CAST({staged} AS JSON) AS {element}[])"),
            None => format!("CAST({staged} AS JSON)"),
        };
    }
    match column.column_type {
        ColumnType::Numeric | ColumnType::Json | ColumnType::Record => {
            format!("CAST({staged} AS {})", column_type(column))
        }
        _ => staged,
    }
}

/// The payload column that holds every row's event id, when the event id needs no column of its own:
/// an append table whose `event_id_field` is a REQUIRED STRING column. The worker gives each row of
/// such a table the field's value as its event id ([`crate::worker::classify`]), and coercion
/// refuses a row without it, so the field and the id are the same text in every row.
/// `_bqsync_event_id` is then a virtual column over it. A second stored copy of a random id, say a
/// UUID, is what compresses worst: on the 1M-atoms benchmark it cost about a tenth of the run.
pub fn event_id_column(table: &TableSchema) -> Option<&str> {
    let name = table.event_id_field.as_deref()?;
    let column = table.column(name)?;
    let only_field = table.write_mode == WriteMode::Append
        && column.column_type == ColumnType::String
        && column.mode == ColumnMode::Required;
    only_field.then_some(name)
}

/// `CREATE TABLE IF NOT EXISTS` for a table and its system columns. Only key and version columns are
/// NOT NULL: REQUIRED is enforced when payloads are validated, and tombstones null the other columns.
pub fn create_table(table: &TableSchema) -> String {
    let mut columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            let key = table.primary_key.contains(&c.name) || table.version_column.as_deref() == Some(&c.name);
            format!("{} {}{}", quote_ident(&c.name), column_type(c), if key { " NOT NULL" } else { "" })
        })
        .collect();
    columns.push(match event_id_column(table) {
        // DuckDB computes a VIRTUAL column when it is read: nothing stored, compressed or logged.
        Some(column) => {
            format!("{} VARCHAR GENERATED ALWAYS AS ({}) VIRTUAL", quote_ident(EVENT_ID), quote_ident(column))
        }
        None => format!("{} VARCHAR NOT NULL", quote_ident(EVENT_ID)),
    });
    columns.push(format!("{} BIGINT", quote_ident(VERSION)));
    columns.push(format!("{} BOOLEAN NOT NULL DEFAULT false", quote_ident(DELETED)));
    columns.push(format!("{} TIMESTAMP NOT NULL", quote_ident(LANDED_AT)));
    format!("CREATE TABLE IF NOT EXISTS {} ({})", quote_ident(&table.table), columns.join(", "))
}

/// `ALTER TABLE … ADD COLUMN` for a new NULLABLE column.
pub fn add_column(table: &TableSchema, column: &Column) -> String {
    format!(
        "ALTER TABLE {} ADD COLUMN {} {}",
        quote_ident(&table.table),
        quote_ident(&column.name),
        column_type(column)
    )
}

/// The staging table, created for each landing from the schema file. TEMP: it lives in memory, so
/// staging rows are never written to the database file or checkpointed.
pub fn create_staging(table: &TableSchema) -> String {
    let mut columns = vec![
        format!("{STAGE_EVENT_ID} VARCHAR"),
        format!("{STAGE_VERSION} BIGINT"),
        format!("{STAGE_DELETED} BOOLEAN"),
        format!("{STAGE_SEQUENCE} BIGINT"),
    ];
    columns.extend(table.columns.iter().map(|c| format!("{} {}", quote_ident(&c.name), staging_type(c).sql())));
    if table.patches() {
        columns.extend((0..table.columns.len()).map(|i| format!("{} BOOLEAN", stage_carries(i))));
    }
    format!("CREATE OR REPLACE TEMP TABLE {} ({})", quote_ident(&staging_table(table)), columns.join(", "))
}

fn column_list(table: &TableSchema) -> String {
    table.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ")
}

fn cast_list(table: &TableSchema) -> String {
    table.columns.iter().map(cast_from_stage).collect::<Vec<_>>().join(", ")
}

/// Append tables: insert the staged rows whose event id is not in the table yet (first copy wins
/// when a batch holds an id twice).
/// `stored_id`: whether the live table stores `_bqsync_event_id` (a virtual one is computed from its
/// column, see [`event_id_column`]; a table created before that stores it).
pub fn insert_new_events(table: &TableSchema, stored_id: bool) -> String {
    let target = quote_ident(&table.table);
    let (id_column, id_value) = match stored_id {
        true => (format!(", {}", quote_ident(EVENT_ID)), format!(", s.{STAGE_EVENT_ID}")),
        false => (String::new(), String::new()),
    };
    format!(
        "INSERT INTO {target} ({columns}{id_column}, {landed}) \
         SELECT {casts}{id_value}, now()::TIMESTAMP FROM \
         (SELECT * FROM {stage} QUALIFY row_number() OVER (PARTITION BY {STAGE_EVENT_ID} ORDER BY {STAGE_SEQUENCE}) = 1) s \
         WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE t.{event_id} = s.{STAGE_EVENT_ID})",
        columns = column_list(table),
        event_id = quote_ident(EVENT_ID),
        landed = quote_ident(LANDED_AT),
        casts = cast_list(table),
        stage = quote_ident(&staging_table(table)),
    )
}

/// Upsert tables: the highest version per key in the batch is merged; a row changes only when that
/// version is higher than the stored one. On equal versions a delete wins, then the larger event id,
/// so the result does not depend on arrival order. `newest_only`: the staging table holds one row per
/// key already, each key's newest (chosen by the caller by the same order), and is merged as it is.
pub fn merge_versioned(table: &TableSchema, newest_only: bool) -> String {
    assert_eq!(table.write_mode, WriteMode::Upsert, "merge_versioned is for upsert tables");
    let target = quote_ident(&table.table);
    let keys: Vec<String> = table.primary_key.iter().map(|k| quote_ident(k)).collect();
    let on = keys.iter().map(|k| format!("t.{k} = s.{k}")).collect::<Vec<_>>().join(" AND ");
    let version = quote_ident(VERSION);
    let updates = table
        .columns
        .iter()
        .filter(|c| !table.primary_key.contains(&c.name))
        .map(|c| format!("{} = {}", quote_ident(&c.name), cast_from_stage(c)))
        .chain(system_updates())
        .collect::<Vec<_>>()
        .join(", ");
    let stage = quote_ident(&staging_table(table));
    let source = match newest_only {
        true => stage,
        false => format!(
            "(SELECT * FROM {stage} QUALIFY row_number() OVER (PARTITION BY {keys} \
             ORDER BY {STAGE_VERSION} DESC, {STAGE_DELETED} DESC, {STAGE_EVENT_ID} DESC) = 1)",
            keys = keys.join(", "),
        ),
    };
    format!(
        "MERGE INTO {target} t USING {source} s \
         ON ({on}) \
         WHEN MATCHED AND s.{STAGE_VERSION} > t.{version} THEN UPDATE SET {updates} \
         WHEN NOT MATCHED THEN INSERT ({columns}, {version}, {deleted}, {event_id}, {landed}) \
         VALUES ({casts}, s.{STAGE_VERSION}, s.{STAGE_DELETED}, s.{STAGE_EVENT_ID}, now()::TIMESTAMP)",
        columns = column_list(table),
        deleted = quote_ident(DELETED),
        event_id = quote_ident(EVENT_ID),
        landed = quote_ident(LANDED_AT),
        casts = cast_list(table),
    )
}

/// Staging column of a patch table: whether the record carried schema column `index`.
pub fn stage_carries(index: usize) -> String {
    format!("_p{index}")
}

/// Patch tables (`"upsert": "patch"`): as [`merge_versioned`], but each column takes the value of the
/// newest record of the batch that carried it, and keeps its stored value when none did.
///
/// Records at or below the stored version are dropped before the fold (the version guard), so a
/// late, older patch changes nothing. The newest record sets the version, the tombstone flag and
/// the event id; a tombstone carries every column (as NULL), so what came before it is cleared.
pub fn merge_patch(table: &TableSchema) -> String {
    assert!(table.patches(), "merge_patch is for patch tables");
    let target = quote_ident(&table.table);
    let keys: Vec<String> = table.primary_key.iter().map(|k| quote_ident(k)).collect();
    let on = keys.iter().map(|k| format!("t.{k} = s.{k}")).collect::<Vec<_>>().join(" AND ");
    let version = quote_ident(VERSION);
    let newest = format!("s.{STAGE_VERSION} DESC, s.{STAGE_DELETED} DESC, s.{STAGE_EVENT_ID} DESC");
    let folded: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| !table.primary_key.contains(&c.name))
        .map(|(i, c)| {
            let (name, carries) = (quote_ident(&c.name), stage_carries(i));
            format!("first(s.{name} ORDER BY s.{carries} DESC, {newest}) AS {name}, bool_or(s.{carries}) AS {carries}")
        })
        .chain([STAGE_VERSION, STAGE_DELETED, STAGE_EVENT_ID].map(|m| format!("first(s.{m} ORDER BY {newest}) AS {m}")))
        .collect();
    let source = format!(
        "SELECT {group}, {folded} FROM {stage} s LEFT JOIN {target} t ON ({on}) \
         WHERE t.{version} IS NULL OR s.{STAGE_VERSION} > t.{version} GROUP BY {group}",
        group = keys.iter().map(|k| format!("s.{k}")).collect::<Vec<_>>().join(", "),
        folded = folded.join(", "),
        stage = quote_ident(&staging_table(table)),
    );
    let updates = table
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| !table.primary_key.contains(&c.name))
        .map(|(i, c)| {
            let name = quote_ident(&c.name);
            format!("{name} = CASE WHEN s.{} THEN {} ELSE t.{name} END", stage_carries(i), cast_from_stage(c))
        })
        .chain(system_updates())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "MERGE INTO {target} t USING ({source}) s ON ({on}) \
         WHEN MATCHED AND s.{STAGE_VERSION} > t.{version} THEN UPDATE SET {updates} \
         WHEN NOT MATCHED THEN INSERT ({columns}, {version}, {deleted}, {event_id}, {landed}) \
         VALUES ({casts}, s.{STAGE_VERSION}, s.{STAGE_DELETED}, s.{STAGE_EVENT_ID}, now()::TIMESTAMP)",
        columns = column_list(table),
        deleted = quote_ident(DELETED),
        event_id = quote_ident(EVENT_ID),
        landed = quote_ident(LANDED_AT),
        casts = cast_list(table),
    )
}

/// The system columns an upsert sets from the staged winner.
fn system_updates() -> [String; 4] {
    [
        format!("{} = s.{STAGE_VERSION}", quote_ident(VERSION)),
        format!("{} = s.{STAGE_DELETED}", quote_ident(DELETED)),
        format!("{} = s.{STAGE_EVENT_ID}", quote_ident(EVENT_ID)),
        format!("{} = now()::TIMESTAMP", quote_ident(LANDED_AT)),
    ]
}

/// Drops a staging table after its rows were applied (same transaction).
pub fn drop_staging(table: &TableSchema) -> String {
    format!("DROP TABLE IF EXISTS temp.main.{}", quote_ident(&staging_table(table)))
}

/// Open dead letters (not replayed) by table and reason.
pub fn count_open_dead_letters(replays: bool) -> String {
    let from = with_replay_marks(DEAD_LETTER_TABLE, replays.then_some(REPLAY_TABLE));
    format!(
        "SELECT coalesce(table_name, '?'), reason, count(*) FROM {from} WHERE marks.replayed_at IS NULL \
         GROUP BY ALL ORDER BY ALL"
    )
}

/// Live rows of a table: tombstones excluded.
pub fn count_live_rows(table: &TableSchema) -> String {
    format!("SELECT count(*) FROM {} WHERE NOT {}", quote_ident(&table.table), quote_ident(DELETED))
}

/// The `dead_letters` query for a filter, with its parameters in order (all text).
pub fn select_dead_letters(filter: &DeadLetterFilter, replays: bool) -> (String, Vec<String>) {
    let (tail, params) = filter_sql(filter, Dialect::DuckDb);
    let from = with_replay_marks(DEAD_LETTER_TABLE, replays.then_some(REPLAY_TABLE));
    let sql = format!(
        "SELECT dead_letter_id, event_id, table_name, reason, detail, source, message_bytes, \
         CAST(attributes AS VARCHAR), delivery_attempts, epoch_us(first_failed_at), epoch_us(last_failed_at), \
         bqsync_version, epoch_us(marks.replayed_at) FROM {from}{tail}"
    );
    (sql, params.into_iter().map(|p| p.value).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Catalog;

    fn catalog() -> Catalog {
        crate::schema::project_catalog()
    }

    #[test]
    fn identifiers_are_quoted_and_escaped() {
        assert_eq!(quote_ident("atoms"), "\"atoms\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn create_table_maps_types_and_adds_system_columns() {
        let sql = create_table(catalog().get("atoms").unwrap());
        assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS \"atoms\" ("), "{sql}");
        assert!(sql.contains("\"tags\" VARCHAR[]"), "{sql}");
        assert!(sql.contains("\"created_at\" TIMESTAMP,"), "{sql}");
        // atoms' `event_id` field holds the event id: the system column is computed from it.
        assert!(sql.contains("\"_bqsync_event_id\" VARCHAR GENERATED ALWAYS AS (\"event_id\") VIRTUAL"), "{sql}");
        let contacts = create_table(catalog().get("contacts_master").unwrap());
        assert!(contacts.contains("\"_bqsync_event_id\" VARCHAR NOT NULL"), "{contacts}");
        let zoom = create_table(catalog().get("zoom_sessions").unwrap());
        assert!(zoom.contains("\"participants\" JSON"), "{zoom}");
        assert!(zoom.contains("\"session_id\" VARCHAR NOT NULL"), "{zoom}");
    }

    #[test]
    fn append_sql_deduplicates_on_event_id() {
        let sql = insert_new_events(catalog().get("atoms").unwrap(), false);
        assert!(
            sql.contains("WHERE NOT EXISTS (SELECT 1 FROM \"atoms\" t WHERE t.\"_bqsync_event_id\" = s._e)"),
            "{sql}"
        );
        assert!(!sql.contains("s._e, now()"), "a computed event id is not inserted: {sql}");
        let stored = insert_new_events(catalog().get("atoms").unwrap(), true);
        assert!(stored.contains("\"_bqsync_event_id\", \"_bqsync_landed_at\") SELECT"), "{stored}");
        assert!(stored.contains("s._e, now()"), "{stored}");
        assert!(sql.contains("CAST(CAST(s.\"tags\" AS JSON) AS VARCHAR[])"), "{sql}");
    }

    #[test]
    fn merge_sql_is_version_guarded() {
        let contacts = catalog().get("contacts_master").unwrap().clone();
        let sql = merge_versioned(&contacts, false);
        assert!(sql.contains("ON (t.\"contact_id\" = s.\"contact_id\")"), "{sql}");
        assert!(sql.contains("WHEN MATCHED AND s._v > t.\"_bqsync_version\" THEN UPDATE SET"), "{sql}");
        assert!(sql.contains("PARTITION BY \"contact_id\" ORDER BY _v DESC, _d DESC, _e DESC"), "{sql}");
        assert!(!sql.contains("\"contact_id\" = s.\"contact_id\","), "keys are never updated: {sql}");
        let newest_only = merge_versioned(&contacts, true);
        assert!(newest_only.contains("USING \"_bqsync_stage_contacts_master\" s ON"), "{newest_only}");
        assert!(!newest_only.contains("QUALIFY"), "{newest_only}");
        assert_eq!(newest_only.split(" ON ").nth(1), sql.split(" ON ").nth(1), "the same guard and actions");
    }

    #[test]
    fn patch_merge_folds_each_column_from_its_newest_carrier_above_the_stored_version() {
        let mut contacts = catalog().get("contacts_master").unwrap().clone();
        contacts.upsert = crate::schema::UpsertMode::Patch;
        let sql = merge_patch(&contacts);
        assert!(sql.contains("first(s.\"email\" ORDER BY s._p2 DESC, s._v DESC, s._d DESC, s._e DESC) AS \"email\", bool_or(s._p2) AS _p2"), "{sql}");
        assert!(sql.contains("LEFT JOIN \"contacts_master\" t ON (t.\"contact_id\" = s.\"contact_id\") WHERE t.\"_bqsync_version\" IS NULL OR s._v > t.\"_bqsync_version\" GROUP BY s.\"contact_id\""), "{sql}");
        assert!(sql.contains("\"email\" = CASE WHEN s._p2 THEN s.\"email\" ELSE t.\"email\" END"), "{sql}");
        assert!(!sql.contains("_p0"), "the key is matched, never folded: {sql}");
        assert!(create_staging(&contacts).ends_with("_p5 BOOLEAN)"), "{}", create_staging(&contacts));
    }

    #[test]
    fn dead_letter_filters_become_parameters_never_sql_text() {
        let filter = DeadLetterFilter {
            table: Some("atoms'; DROP TABLE x; --".into()),
            reason: Some(crate::dead_letter::DeadLetterReason::Schema),
            since_micros: Some(5),
            ids: vec!["abc12345".into()],
            limit: Some(10),
            ..Default::default()
        };
        let (sql, params) = select_dead_letters(&filter, false);
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(sql.contains("marks ON FALSE"), "no marks table: every dead letter is open: {sql}");
        assert_eq!(sql.matches('?').count(), params.len());
        assert_eq!(params[0], "atoms'; DROP TABLE x; --");
        assert!(sql.ends_with("ORDER BY last_failed_at DESC, dead_letter_id LIMIT 10"), "{sql}");
    }
}
