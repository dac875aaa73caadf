//! BigQuery change data capture (CDC) for upsert tables marked `"cdc": true`: each event is written
//! straight into `T` through the Storage Write API's default stream, with the pseudo-columns
//! `_CHANGE_TYPE` and `_CHANGE_SEQUENCE_NUMBER`, and BigQuery applies the changes itself. There is
//! no landing table, no state row and no applier job for such a table.
//!
//! Google's prerequisites (Google, "Stream table updates with change data capture"): the default
//! stream, protobuf rows (Arrow is refused), and a `PRIMARY KEY … NOT ENFORCED` of at most 16
//! columns, all of which [`create_table`] and [`super::proto::RowCodec::with_cdc`] provide.
//!
//! Invariant: **a key's changes win in the MERGE path's order.** [`sequence_number`] sorts by the
//! version, then a tombstone before an upsert of the same version, then the larger event id, which
//! is the order the applier's `ROW_NUMBER() … ORDER BY version DESC, deleted DESC, event_id DESC`
//! keeps. A redelivered event carries the same number and content, so it is a no-op.
//!
//! Untested against the real service: the emulator has no CDC. The requests are unit-tested here and
//! in `proto.rs`, and the same rows without the pseudo-columns are landed on the emulator through
//! the same writer (tests/bigquery.rs).

use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;

use super::sql::{self as bsql, canonical_type, quote_ident};
use crate::envelope::Op;
use crate::schema::{CdcDeletes, ColumnType, Granularity, TableSchema};

/// The pseudo-column naming the change: `UPSERT` or `DELETE`.
pub const CHANGE_TYPE: &str = "_CHANGE_TYPE";
/// The pseudo-column ordering a key's changes (a larger one wins).
pub const CHANGE_SEQUENCE_NUMBER: &str = "_CHANGE_SEQUENCE_NUMBER";

/// The `_CHANGE_SEQUENCE_NUMBER` of a row: four `/`-separated hexadecimal sections of at most 16
/// digits, which BigQuery compares section by section as unsigned numbers (Google, "Manage custom
/// ordering"):
/// 1. the version (INT64, or TIMESTAMP as microseconds) with its sign bit flipped, so a negative
///    version sorts below a positive one as an unsigned number;
/// 2. `1` for a tombstone, `0` for an upsert: a delete wins a tie of versions;
/// 3. and 4. the first 16 bytes of the event id, big-endian (zero-padded): the larger id wins.
///    Derived ids are 32 hex digits, so two ids tie here only when their first 16 digits do
///    (odds 2⁻⁶⁴); BigQuery then keeps the later arrival.
pub fn sequence_number(version: Option<i64>, deleted: bool, event_id: &str) -> String {
    let ordered = (version.unwrap_or(0) as u64) ^ (1 << 63);
    let mut id = [0u8; 16];
    let bytes = event_id.as_bytes();
    let n = bytes.len().min(16);
    id[..n].copy_from_slice(&bytes[..n]);
    let high = u64::from_be_bytes(id[..8].try_into().expect("8 bytes"));
    let low = u64::from_be_bytes(id[8..].try_into().expect("8 bytes"));
    format!("{ordered:016X}/{}/{high:016X}/{low:016X}", u8::from(deleted))
}

/// The `_CHANGE_TYPE` of a row.
pub fn change_type(op: Op, deletes: CdcDeletes) -> &'static str {
    match (op, deletes) {
        (Op::Delete, CdcDeletes::Delete) => "DELETE",
        _ => "UPSERT",
    }
}

/// The GoogleSQL type of a field, for DDL.
fn ddl_type(field: &TableFieldSchema) -> String {
    let name = serde_json::to_value(&field.r#type).ok().and_then(|v| v.as_str().map(str::to_string));
    let base = match canonical_type(&name.unwrap_or_default()) {
        "INTEGER" => "INT64".to_string(),
        "FLOAT" => "FLOAT64".to_string(),
        "BOOLEAN" => "BOOL".to_string(),
        "RECORD" => {
            let fields: Vec<String> =
                field.fields.iter().flatten().map(|f| format!("{} {}", quote_ident(&f.name), ddl_type(f))).collect();
            format!("STRUCT<{}>", fields.join(", "))
        }
        other => other.to_string(),
    };
    match field.mode.as_deref() {
        Some("REPEATED") => format!("ARRAY<{base}>"),
        Some("REQUIRED") => format!("{base} NOT NULL"),
        _ => base,
    }
}

fn max_staleness(minutes: u32) -> String {
    format!("max_staleness = INTERVAL {minutes} MINUTE")
}

/// `CREATE TABLE IF NOT EXISTS` of a CDC table: `T`'s columns (the schema's, then the system
/// columns, as [`bsql::table_fields`] makes them), its primary key, partitioning and clustering (the
/// schema's, else the key's first four columns), and `max_staleness` unless it is 0. One statement,
/// so a table never exists without its key (`tables.insert` cannot declare one).
pub fn create_table(path: &str, schema: &TableSchema, max_staleness_minutes: u32) -> String {
    let columns: Vec<String> =
        bsql::table_fields(schema).iter().map(|f| format!("{} {}", quote_ident(&f.name), ddl_type(f))).collect();
    let keys: Vec<String> = schema.primary_key.iter().map(|k| quote_ident(k)).collect();
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {path} ({}, PRIMARY KEY ({}) NOT ENFORCED)",
        columns.join(", "),
        keys.join(", ")
    );
    if let Some(partition) = &schema.partition {
        let column = quote_ident(&partition.column);
        let is_date = schema.column(&partition.column).is_some_and(|c| c.column_type == ColumnType::Date);
        let unit = partition.granularity.as_str();
        sql.push_str(&match (is_date, partition.granularity) {
            (true, Granularity::Day) => format!(" PARTITION BY {column}"),
            (true, _) => format!(" PARTITION BY DATE_TRUNC({column}, {unit})"),
            (false, _) => format!(" PARTITION BY TIMESTAMP_TRUNC({column}, {unit})"),
        });
    }
    let cluster = if schema.cluster.is_empty() { &schema.primary_key } else { &schema.cluster };
    let cluster: Vec<String> = cluster.iter().take(4).map(|c| quote_ident(c)).collect();
    sql.push_str(&format!(" CLUSTER BY {}", cluster.join(", ")));
    if max_staleness_minutes > 0 {
        sql.push_str(&format!(" OPTIONS ({})", max_staleness(max_staleness_minutes)));
    }
    sql
}

/// Brings an existing CDC table's `max_staleness` to the config (0 removes it).
pub fn set_max_staleness(path: &str, minutes: u32) -> String {
    if minutes == 0 {
        format!("ALTER TABLE {path} SET OPTIONS (max_staleness = NULL)")
    } else {
        format!("ALTER TABLE {path} SET OPTIONS ({})", max_staleness(minutes))
    }
}

/// The views of a CDC table: `T_live` is `T` itself (BigQuery merges pending changes at read time
/// past `max_staleness`), `T_current` drops tombstones and system columns.
pub fn view_statements(schema: &TableSchema, target: &str, live: &str, current: &str) -> Vec<String> {
    vec![
        format!("CREATE OR REPLACE VIEW {live} AS SELECT * FROM {target}"),
        super::apply_sql::create_current_view(current, schema, live),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contacts() -> TableSchema {
        let mut schema = crate::schema::project_catalog().get("contacts_master").unwrap().clone();
        schema.cdc = true;
        schema
    }

    /// Expected values computed by hand: 5 ^ 2⁶³ = 0x8000000000000005; -1 as u64 = 0xFFFF…FF, whose
    /// sign flip is 0x7FFF…FF; "ab" = 0x61 0x62 then zeros.
    #[test]
    fn sequence_numbers_are_four_hexadecimal_sections() {
        assert_eq!(sequence_number(Some(5), false, "ab"), "8000000000000005/0/6162000000000000/0000000000000000");
        assert_eq!(
            sequence_number(Some(-1), true, "0123456789abcdef0123"),
            "7FFFFFFFFFFFFFFF/1/3031323334353637/3839616263646566"
        );
        // A TIMESTAMP version: 2023-11-14T22:13:20Z = 1_700_000_000_000_000 µs = 0x60A24181E4000.
        assert_eq!(sequence_number(Some(1_700_000_000_000_000), false, "")[..16], *"80060A24181E4000");
    }

    /// BigQuery compares sections as numbers; for these fixed-width sections that is the order of
    /// the strings, which must be the MERGE path's: version, then tombstone, then event id.
    #[test]
    fn sequence_numbers_order_changes_as_the_merge_path_does() {
        let ordered = [
            sequence_number(Some(i64::MIN), true, "zz"),
            sequence_number(Some(-2), false, "b"),
            sequence_number(Some(0), false, "a"),
            sequence_number(Some(7), false, "a"),
            sequence_number(Some(7), false, "b"),
            sequence_number(Some(7), true, "a"),
            sequence_number(Some(8), false, "a"),
        ];
        for pair in ordered.windows(2) {
            assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn deletes_are_tombstone_upserts_unless_asked() {
        assert_eq!(change_type(Op::Delete, CdcDeletes::Tombstone), "UPSERT");
        assert_eq!(change_type(Op::Delete, CdcDeletes::Delete), "DELETE");
        assert_eq!(change_type(Op::Upsert, CdcDeletes::Delete), "UPSERT");
    }

    #[test]
    fn the_table_is_created_with_its_primary_key_and_max_staleness() {
        let sql = create_table("`p.d.contacts_master`", &contacts(), 10);
        assert!(
            sql.starts_with("CREATE TABLE IF NOT EXISTS `p.d.contacts_master` (`contact_id` STRING NOT NULL, "),
            "{sql}"
        );
        assert!(sql.contains("`_bqsync_version` INT64, `_bqsync_deleted` BOOL NOT NULL"), "{sql}");
        assert!(sql.contains(", PRIMARY KEY (`contact_id`) NOT ENFORCED) CLUSTER BY `contact_id` "), "{sql}");
        assert!(sql.ends_with(" OPTIONS (max_staleness = INTERVAL 10 MINUTE)"), "{sql}");
        assert!(!create_table("`p.d.t`", &contacts(), 0).contains("OPTIONS"));
        assert_eq!(set_max_staleness("`p.d.t`", 0), "ALTER TABLE `p.d.t` SET OPTIONS (max_staleness = NULL)");
    }

    #[test]
    fn nested_and_partitioned_columns_render_as_ddl() {
        let mut zoom = crate::schema::project_catalog().get("zoom_sessions").unwrap().clone();
        zoom.write_mode = crate::schema::WriteMode::Upsert;
        let fields = bsql::table_fields(&zoom);
        let participants = fields.iter().find(|f| f.name == "participants").unwrap();
        let ddl = ddl_type(participants);
        assert!(ddl.starts_with("ARRAY<STRUCT<`"), "{ddl}");
        assert!(ddl.ends_with(">>"), "{ddl}");
        let mut schema = contacts();
        schema.partition =
            Some(crate::schema::Partitioning { column: "updated_at".into(), granularity: Granularity::Day });
        let sql = create_table("`p.d.c`", &schema, 5);
        assert!(sql.contains(" PARTITION BY TIMESTAMP_TRUNC(`updated_at`, DAY) CLUSTER BY"), "{sql}");
    }
}
