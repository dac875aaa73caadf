//! GoogleSQL of the applier and the fresh views, built from table schemas only (identifiers are
//! checked and backticked as in [`super::sql`]; the only literals are numbers this module computes
//! and table names, which are identifiers, quoted as strings).
//!
//! One apply of table `T` is one script (one query job):
//! 1. read `T`'s watermark `lo` and last apply time from the state table; the window ends at
//!    `hi` = BigQuery's now − the settle margin;
//! 2. skip (no transaction, nothing but the state table read) when another applier committed less
//!    than the minimum gap ago, or the window is empty;
//! 3. `BEGIN TRANSACTION`; apply the landed rows with `lo < landed_at <= hi`, deduplicated inside the
//!    window; advance the watermark from `lo` to `hi` with a compare-and-set (`WHERE watermark = lo`),
//!    and raise an error, which rolls the whole transaction back, when no row matched: another
//!    applier moved it first; `COMMIT TRANSACTION`;
//! 4. the last statement's row reports the outcome: `applied`/`skipped`, rows applied, watermark.
//!
//! Why a transaction and not the idempotent DML alone: BigQuery does not make two concurrent
//! `INSERT … WHERE NOT EXISTS` statements conflict, so two appliers reading the same window would both
//! insert the same event ids. Inside a transaction the watermark UPDATE on the state row makes two
//! such runs conflict: "DML statements that mutate rows in the same table cannot run concurrently;
//! conflicting transactions are cancelled" (BigQuery, "Multi-statement transactions"), and the
//! compare-and-set rolls back the one that lost the race but was not cancelled.

use super::sql::{quote_ident, ABSENT, DELETED, EVENT_ID, LANDED_AT, VERSION};
use crate::schema::{ColumnType, TableSchema, WriteMode};

/// What the applier needs to know about a table's window besides its schema.
#[derive(Debug, Clone)]
pub struct ApplyWindow<'a> {
    /// `` `project.dataset.T` ``.
    pub target: &'a str,
    /// `` `project.dataset._bqsync_landing_T` ``.
    pub landing: &'a str,
    /// `` `project.dataset._bqsync_apply_state` ``.
    pub state: &'a str,
    /// The window ends this many seconds before BigQuery's now.
    pub settle_margin_secs: u64,
    /// Skip when the last apply committed less than this many milliseconds ago (0: never skip).
    pub min_gap_ms: u64,
    /// Append tables: the event-id check reads at most this many days back (0: no limit).
    pub dedup_window_days: u32,
    /// Recorded in the state row.
    pub job_id: &'a str,
    /// Staging tables of loaded files (`` `project.dataset._bqsync_load_T_…` ``), read whole with
    /// the window (see `super::load`).
    pub staged: &'a [String],
}

/// A table name as a SQL string literal. Table names are identifiers (letters, digits, `_`), checked
/// when the catalog is loaded; asserted again because this is the one place a name is a literal.
fn table_literal(table: &str) -> String {
    assert!(crate::schema::is_valid_identifier(table), "table names are identifiers: {table}");
    format!("'{table}'")
}

fn column_list(table: &TableSchema, prefix: &str) -> String {
    table.columns.iter().map(|c| format!("{prefix}{}", quote_ident(&c.name))).collect::<Vec<_>>().join(", ")
}

fn system_list(prefix: &str) -> String {
    [EVENT_ID, VERSION, DELETED, LANDED_AT].map(|c| format!("{prefix}{}", quote_ident(c))).join(", ")
}

/// Seeds the state row of `table` (watermark at the epoch) unless it exists. Run by set-up; two
/// set-ups racing may both insert it, which is harmless: every read takes `MAX(watermark)` and the
/// compare-and-set updates all rows still at that watermark.
pub fn seed_state(state: &str, table: &str) -> String {
    let name = table_literal(table);
    format!(
        "INSERT INTO {state} (table_name, watermark, applied_at, job_id, rows_applied) \
         SELECT {name}, TIMESTAMP_MICROS(0), TIMESTAMP_MICROS(0), NULL, 0 FROM UNNEST([1]) \
         WHERE NOT EXISTS (SELECT 1 FROM {state} WHERE table_name = {name})"
    )
}

/// The landed rows inside the window `lo < landed_at <= hi` (pruned to the window's partitions of
/// the landing table, which is partitioned on the landing time), and every row of the staging
/// tables of loaded files. Columns by name, so a staging table made before a column was added
/// still lines up.
fn window(table: &TableSchema, w: &ApplyWindow) -> String {
    let landed_at = quote_ident(LANDED_AT);
    let mut columns = format!("{}, {}", column_list(table, ""), system_list(""));
    if table.patches() {
        columns.push_str(&format!(", {}", quote_ident(ABSENT)));
    }
    let mut sql = format!("SELECT {columns} FROM {} WHERE {landed_at} > lo AND {landed_at} <= hi", w.landing);
    for staged in w.staged {
        sql.push_str(&format!(" UNION ALL SELECT {columns} FROM {staged}"));
    }
    sql
}

/// Append tables: the window's rows whose event id is not in `T` yet, first landed copy first. The
/// check reads only the partitions the window's rows fall in (`plo`, `phi`, declared by
/// [`partition_bounds`]): BigQuery prunes partitions on a filter over script variables, so the bytes
/// billed follow the window, not the table.
fn insert_new_events(table: &TableSchema, w: &ApplyWindow) -> String {
    let event_id = quote_ident(EVENT_ID);
    let bound = match &table.partition {
        Some(partition) => {
            let column = format!("t.{}", quote_ident(&partition.column));
            format!(" AND ({column} IS NULL OR ({column} >= plo AND {column} < phi))")
        }
        None => String::new(),
    };
    format!(
        "INSERT INTO {target} ({columns}, {system}) \
         SELECT {staged}, s.{event_id}, NULL, FALSE, CURRENT_TIMESTAMP() FROM \
         (SELECT * FROM ({window}) WHERE TRUE QUALIFY ROW_NUMBER() OVER (PARTITION BY {event_id} ORDER BY {landed_at}) = 1) s \
         WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE t.{event_id} = s.{event_id}{bound})",
        target = w.target,
        columns = column_list(table, ""),
        system = system_list(""),
        staged = column_list(table, "s."),
        window = window(table, w),
        landed_at = quote_ident(LANDED_AT),
    )
}

/// `plo`, `phi`: whole days around the window's partition values, `plo` clamped to the dedup window:
/// (declarations, which a script must open with; the statements setting them, run only when the
/// apply goes ahead). Empty for unpartitioned tables.
fn partition_bounds(table: &TableSchema, w: &ApplyWindow) -> (String, String) {
    let Some(partition) = &table.partition else { return Default::default() };
    let column = quote_ident(&partition.column);
    let is_date = table.column(&partition.column).is_some_and(|c| c.column_type == ColumnType::Date);
    let (kind, floor, next, today, back) = if is_date {
        (
            "DATE",
            format!("MIN({column})"),
            format!("DATE_ADD(MAX({column}), INTERVAL 1 DAY)"),
            "CURRENT_DATE()",
            "DATE_SUB",
        )
    } else {
        (
            "TIMESTAMP",
            format!("TIMESTAMP_TRUNC(MIN({column}), DAY)"),
            format!("TIMESTAMP_ADD(TIMESTAMP_TRUNC(MAX({column}), DAY), INTERVAL 1 DAY)"),
            "TIMESTAMP_TRUNC(CURRENT_TIMESTAMP(), DAY)",
            "TIMESTAMP_SUB",
        )
    };
    let window = window(table, w);
    let declare = format!("DECLARE plo {kind}; DECLARE phi {kind}; ");
    let mut set = format!("SET plo = (SELECT {floor} FROM ({window})); SET phi = (SELECT {next} FROM ({window})); ");
    if w.dedup_window_days > 0 {
        set.push_str(&format!("SET plo = GREATEST(plo, {back}({today}, INTERVAL {} DAY)); ", w.dedup_window_days));
    }
    (declare, set)
}

/// Upsert tables: the highest version per key in the window replaces the stored row when that
/// version is higher; on equal versions in the window a delete wins, then the larger event id, so the
/// result does not depend on arrival order. Deletes leave a tombstone (key, version, deleted).
///
/// Two statements, a DELETE of the rows the window supersedes and an INSERT of the window's winners
/// whose key is then absent, rather than one MERGE: inside the transaction they are the same
/// version-guarded upsert, and the emulator this project tests against cannot run a MERGE inside a
/// transaction. BigQuery bills a DELETE, like a MERGE that updates, for all columns of `T` at its
/// start (Google, "DML pricing for non-partitioned tables"); the INSERT's check adds `T`'s key
/// columns: about one MERGE's bill.
fn upsert_versioned(table: &TableSchema, w: &ApplyWindow) -> String {
    let keys: Vec<String> = table.primary_key.iter().map(|k| quote_ident(k)).collect();
    let on = keys.iter().map(|k| format!("t.{k} = s.{k}")).collect::<Vec<_>>().join(" AND ");
    let (version, deleted, event_id) = (quote_ident(VERSION), quote_ident(DELETED), quote_ident(EVENT_ID));
    let winners = format!(
        "(SELECT * FROM ({window}) WHERE TRUE QUALIFY ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {version} DESC, {deleted} DESC, {event_id} DESC) = 1)",
        window = window(table, w),
        keys = keys.join(", "),
    );
    format!(
        "DELETE FROM {target} t WHERE EXISTS (SELECT 1 FROM {winners} s WHERE {on} AND s.{version} > t.{version}); \
         INSERT INTO {target} ({columns}, {system}) \
         SELECT {staged}, s.{event_id}, s.{version}, s.{deleted}, CURRENT_TIMESTAMP() FROM {winners} s \
         WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {on})",
        target = w.target,
        columns = column_list(table, ""),
        system = system_list(""),
        staged = column_list(table, "s."),
    )
}

/// Patch tables (`"upsert": "patch"`): the rows `source`'s records make of `target`'s, one per key
/// they move to a higher version, with the columns of `target` then the system columns.
///
/// Records at or below the stored version are dropped first (the version guard). Each column takes
/// the value of the newest remaining record that carried it (ordering the carriers first, then as
/// the replace path orders records), or keeps the stored value when none did; the newest record sets
/// the version, tombstone flag and event id. A tombstone carries every column (as NULL). `landed`:
/// the landing time written, an expression over `w` (the newest record: `e`, `v`, `d`, `l`).
///
/// Written with `ARRAY_AGG(… ORDER BY … LIMIT 1)[OFFSET(0)]` per column rather than
/// `IGNORE NULLS`, which would drop a carried NULL (and which the emulator mishandles on STRUCTs).
fn patched_rows(table: &TableSchema, source: &str, target: &str, landed: &str) -> String {
    let keys: Vec<String> = table.primary_key.iter().map(|k| quote_ident(k)).collect();
    let (version, deleted, event_id, absent) =
        (quote_ident(VERSION), quote_ident(DELETED), quote_ident(EVENT_ID), quote_ident(ABSENT));
    let newest = format!("s.{version} DESC, s.{deleted} DESC, s.{event_id} DESC");
    let others: Vec<&crate::schema::Column> =
        table.columns.iter().filter(|c| !table.primary_key.contains(&c.name)).collect();
    let folded: Vec<String> = others
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (name, literal) = (quote_ident(&c.name), column_literal(&c.name));
            format!(
                "ARRAY_AGG(STRUCT(s.{name} AS v) ORDER BY IF({literal} IN UNNEST(s.{absent}), 0, 1) DESC, {newest} LIMIT 1)[OFFSET(0)].v AS v{i}, \
                 LOGICAL_OR({literal} NOT IN UNNEST(s.{absent})) AS p{i}"
            )
        })
        .collect();
    let merged = table.columns.iter().map(|c| match others.iter().position(|o| o.name == c.name) {
        Some(i) => format!("IF(a.p{i}, a.v{i}, t.{name}) AS {name}", name = quote_ident(&c.name)),
        None => format!("a.{name} AS {name}", name = quote_ident(&c.name)),
    });
    let on = |alias: &str| keys.iter().map(|k| format!("t.{k} = {alias}.{k}")).collect::<Vec<_>>().join(" AND ");
    format!(
        "SELECT {merged}, a.w.e AS {event_id}, a.w.v AS {version}, a.w.d AS {deleted}, {landed} AS {landed_at} FROM (\
         SELECT {group}, ARRAY_AGG(STRUCT(s.{event_id} AS e, s.{version} AS v, s.{deleted} AS d, s.{landed_at} AS l) \
         ORDER BY {newest} LIMIT 1)[OFFSET(0)] AS w, {folded} \
         FROM ({source}) s LEFT JOIN {target} t ON {on_s} WHERE t.{version} IS NULL OR s.{version} > t.{version} \
         GROUP BY {group}) a LEFT JOIN {target} t ON {on_a}",
        merged = merged.collect::<Vec<_>>().join(", "),
        group = keys.iter().map(|k| format!("s.{k}")).collect::<Vec<_>>().join(", "),
        folded = folded.join(", "),
        landed_at = quote_ident(LANDED_AT),
        on_s = on("s"),
        on_a = on("a"),
    )
}

/// A column name as a SQL string literal (names are identifiers, checked when the catalog loads).
fn column_literal(name: &str) -> String {
    assert!(crate::schema::is_valid_identifier(name), "column names are identifiers: {name}");
    format!("'{name}'")
}

/// Patch tables: the window's rows folded onto the stored ones ([`patched_rows`]) are inserted,
/// then the rows they supersede deleted (the same DELETE as [`upsert_versioned`]: the inserted rows
/// are at the window's highest version, so only the older ones go). Insert first, because the fold
/// reads the stored values. Counts the inserted rows.
fn upsert_patched(table: &TableSchema, w: &ApplyWindow) -> String {
    let keys: Vec<String> = table.primary_key.iter().map(|k| quote_ident(k)).collect();
    let on = keys.iter().map(|k| format!("t.{k} = s.{k}")).collect::<Vec<_>>().join(" AND ");
    let (version, deleted, event_id) = (quote_ident(VERSION), quote_ident(DELETED), quote_ident(EVENT_ID));
    let window = window(table, w);
    format!(
        "INSERT INTO {target} ({columns}, {system}) {rows}; \
         SET applied = @@row_count; \
         DELETE FROM {target} t WHERE EXISTS (SELECT 1 FROM (SELECT * FROM ({window}) WHERE TRUE QUALIFY \
         ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {version} DESC, {deleted} DESC, {event_id} DESC) = 1) s \
         WHERE {on} AND s.{version} > t.{version});",
        target = w.target,
        columns = column_list(table, ""),
        system = system_list(""),
        rows = patched_rows(table, &window, w.target, "CURRENT_TIMESTAMP()"),
        keys = keys.join(", "),
    )
}

/// The error an apply raises when another applier moved the watermark first; the applier tells a
/// lost race from a failure by it.
pub fn watermark_moved(table: &str) -> String {
    format!("the watermark of {table} moved: another applier committed this window")
}

/// The whole apply script of one table (see the module doc). Its last row: outcome (`applied` or
/// `skipped`), rows applied, the watermark after it (microseconds).
pub fn apply_script(table: &TableSchema, w: &ApplyWindow) -> String {
    let name = table_literal(&table.table);
    let state = w.state;
    let dml = match table.write_mode {
        WriteMode::Append => format!("{}; SET applied = @@row_count;", insert_new_events(table, w)),
        WriteMode::Upsert if table.patches() => upsert_patched(table, w),
        WriteMode::Upsert => format!("{}; SET applied = @@row_count;", upsert_versioned(table, w)),
    };
    let (declare_bounds, bounds) = match table.write_mode {
        WriteMode::Append => partition_bounds(table, w),
        WriteMode::Upsert => Default::default(),
    };
    format!(
        "DECLARE lo TIMESTAMP DEFAULT (SELECT MAX(watermark) FROM {state} WHERE table_name = {name}); \
         DECLARE last TIMESTAMP DEFAULT (SELECT MAX(applied_at) FROM {state} WHERE table_name = {name}); \
         DECLARE hi TIMESTAMP DEFAULT TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL {margin} SECOND); \
         DECLARE applied INT64 DEFAULT 0; \
         {declare_bounds}\
         IF lo IS NULL THEN SELECT ERROR('no apply state for table {table}: run bqsync setup'); END IF; \
         IF hi <= lo OR last > TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL {gap} MILLISECOND) THEN \
         SELECT 'skipped' AS outcome, 0 AS applied, UNIX_MICROS(lo) AS watermark; RETURN; END IF; \
         {bounds}\
         BEGIN TRANSACTION; \
         {dml} \
         UPDATE {state} SET watermark = hi, applied_at = CURRENT_TIMESTAMP(), job_id = '{job_id}', rows_applied = applied \
         WHERE table_name = {name} AND watermark = lo; \
         SELECT IF(@@row_count > 0, 0, ERROR('{moved}')); \
         COMMIT TRANSACTION; \
         SELECT 'applied' AS outcome, applied AS applied, UNIX_MICROS(hi) AS watermark;",
        margin = w.settle_margin_secs,
        gap = w.min_gap_ms,
        table = table.table,
        moved = watermark_moved(&table.table),
        job_id = job_id_literal(w.job_id),
    )
}

/// Job ids hold letters, digits, `_` and `-` (BigQuery's rule); anything else is dropped.
fn job_id_literal(job_id: &str) -> String {
    job_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect()
}

/// The landed tail of a view: rows past the watermark.
fn tail(landing: &str, state: &str, table: &str) -> String {
    format!(
        "SELECT * FROM {landing} WHERE {landed_at} > \
         (SELECT IFNULL(MAX(watermark), TIMESTAMP_MICROS(0)) FROM {state} WHERE table_name = {name})",
        landed_at = quote_ident(LANDED_AT),
        name = table_literal(table),
    )
}

/// `T_live`: the applied rows plus the landed tail past the watermark, deduplicated the way the
/// applier would: a row is visible seconds after its append was acknowledged, whatever the apply
/// interval. Its columns are the table's: user columns, then the system columns.
pub fn create_live_view(view: &str, table: &TableSchema, target: &str, landing: &str, state: &str) -> String {
    let event_id = quote_ident(EVENT_ID);
    let tail = tail(landing, state, &table.table);
    let (columns, system) = (column_list(table, ""), system_list(""));
    let body = match table.write_mode {
        WriteMode::Append => format!(
            "SELECT {columns}, {system} FROM {target} UNION ALL \
             SELECT {staged}, s.{event_id}, NULL, FALSE, s.{landed_at} FROM \
             ({tail} QUALIFY ROW_NUMBER() OVER (PARTITION BY {event_id} ORDER BY {landed_at}) = 1) s \
             WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE t.{event_id} = s.{event_id})",
            staged = column_list(table, "s."),
            landed_at = quote_ident(LANDED_AT),
        ),
        WriteMode::Upsert if table.patches() => {
            let on = table
                .primary_key
                .iter()
                .map(|k| format!("p.{k} = t.{k}", k = quote_ident(k)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let patched = patched_rows(table, &tail, target, "a.w.l");
            format!(
                "WITH patched AS ({patched}) \
                 SELECT {columns}, {system} FROM {target} t WHERE NOT EXISTS (SELECT 1 FROM patched p WHERE {on}) \
                 UNION ALL SELECT {columns}, {system} FROM patched"
            )
        }
        WriteMode::Upsert => {
            let keys = table.primary_key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ");
            // Ties between the table and the tail keep the table's row, as the MERGE does.
            format!(
                "SELECT * EXCEPT (_bqsync_rank, _bqsync_applied) FROM (\
                 SELECT *, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {version} DESC, _bqsync_applied DESC, \
                 {deleted} DESC, {event_id} DESC) AS _bqsync_rank FROM (\
                 SELECT {columns}, {system}, 1 AS _bqsync_applied FROM {target} UNION ALL \
                 SELECT {columns}, {system}, 0 AS _bqsync_applied FROM ({tail}))) WHERE _bqsync_rank = 1",
                version = quote_ident(VERSION),
                deleted = quote_ident(DELETED),
            )
        }
    };
    format!("CREATE OR REPLACE VIEW {view} AS {body}")
}

/// `T_current`: the live view without tombstones and system columns (what most readers want).
pub fn create_current_view(view: &str, table: &TableSchema, live: &str) -> String {
    format!(
        "CREATE OR REPLACE VIEW {view} AS SELECT {columns} FROM {live} WHERE NOT {deleted}",
        columns = column_list(table, ""),
        deleted = quote_ident(DELETED),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window<'a>(job_id: &'a str) -> ApplyWindow<'a> {
        ApplyWindow {
            target: "`p.d.t`",
            landing: "`p.d._bqsync_landing_t`",
            state: "`p.d._bqsync_apply_state`",
            settle_margin_secs: 30,
            min_gap_ms: 54_000,
            dedup_window_days: 0,
            job_id,
            staged: &[],
        }
    }

    #[test]
    fn staging_tables_of_loaded_files_join_the_window_by_column_name() {
        let catalog = crate::schema::project_catalog();
        let contacts = catalog.get("contacts_master").unwrap();
        let staged = ["`p.d._bqsync_load_contacts_master_ab`".to_string()];
        let mut w = window("j");
        w.staged = &staged;
        let sql = apply_script(contacts, &w);
        let union = " UNION ALL SELECT `contact_id`, `name`, `email`, `phone`, `updated_at`, `version`, \
                     `_bqsync_event_id`, `_bqsync_version`, `_bqsync_deleted`, `_bqsync_landed_at` FROM `p.d._bqsync_load_contacts_master_ab`";
        assert_eq!(sql.matches(union).count(), 2, "the DELETE's and the INSERT's winners: {sql}");
        assert!(sql.contains("`_bqsync_landed_at` <= hi UNION ALL"), "{sql}");
        assert!(sql.contains(") WHERE TRUE QUALIFY ROW_NUMBER()"), "the dedup covers the union: {sql}");
    }

    #[test]
    fn the_apply_is_one_transaction_with_a_compare_and_set_on_the_watermark() {
        let catalog = crate::schema::project_catalog();
        let atoms = catalog.get("atoms").unwrap();
        let mut w = window("bqsync_apply_atoms_1; DROP");
        w.target = "`p.d.atoms`";
        let sql = apply_script(atoms, &w);
        let begin = sql.find("BEGIN TRANSACTION;").unwrap();
        let insert = sql.find("INSERT INTO `p.d.atoms`").unwrap();
        let cas = sql.find("WHERE table_name = 'atoms' AND watermark = lo;").unwrap();
        let check = sql.find("SELECT IF(@@row_count > 0, 0, ERROR(").unwrap();
        let commit = sql.find("COMMIT TRANSACTION;").unwrap();
        assert!(begin < insert && insert < cas && cas < check && check < commit, "{sql}");
        assert!(sql.contains("job_id = 'bqsync_apply_atoms_1DROP'"), "job ids are sanitised: {sql}");
        assert!(sql.contains("INTERVAL 30 SECOND"), "{sql}");
        assert!(sql.contains("INTERVAL 54000 MILLISECOND) THEN SELECT 'skipped'"), "{sql}");
        // The window is bounded on both sides on the landing time (partition pruning of the landing).
        assert!(sql.contains("`_bqsync_landed_at` > lo AND `_bqsync_landed_at` <= hi"), "{sql}");
        // The event-id check reads only the window's partitions of the target.
        assert!(sql.contains("SET plo = (SELECT TIMESTAMP_TRUNC(MIN(`created_at`), DAY)"), "{sql}");
        assert!(sql.find("DECLARE plo TIMESTAMP;").unwrap() < sql.find("IF lo IS NULL").unwrap(), "declarations first");
        assert!(sql.contains("t.`created_at` >= plo AND t.`created_at` < phi"), "{sql}");
        assert!(sql.contains("PARTITION BY `_bqsync_event_id` ORDER BY `_bqsync_landed_at`) = 1"), "{sql}");
        assert!(!sql.contains("SET plo = GREATEST"), "no dedup window by default: {sql}");
        w.dedup_window_days = 7;
        assert!(apply_script(atoms, &w).contains("SET plo = GREATEST(plo, TIMESTAMP_SUB("), "clamped");
    }

    #[test]
    fn the_upsert_apply_is_version_guarded_and_never_updates_keys_in_place() {
        let catalog = crate::schema::project_catalog();
        let contacts = catalog.get("contacts_master").unwrap();
        let sql = apply_script(contacts, &window("j"));
        let delete = sql
            .find("DELETE FROM `p.d.t` t WHERE EXISTS (SELECT 1 FROM (SELECT * FROM (SELECT `contact_id`, ")
            .unwrap();
        let insert = sql.find("INSERT INTO `p.d.t` (").unwrap();
        let counted = sql.find("SET applied = @@row_count;").unwrap();
        assert!(sql.find("BEGIN TRANSACTION;").unwrap() < delete && delete < insert && insert < counted, "{sql}");
        assert!(
            sql.contains("WHERE t.`contact_id` = s.`contact_id` AND s.`_bqsync_version` > t.`_bqsync_version`)"),
            "{sql}"
        );
        assert!(
            sql.contains("WHERE NOT EXISTS (SELECT 1 FROM `p.d.t` t WHERE t.`contact_id` = s.`contact_id`)"),
            "{sql}"
        );
        assert!(
            sql.contains(
                "PARTITION BY `contact_id` ORDER BY `_bqsync_version` DESC, `_bqsync_deleted` DESC, `_bqsync_event_id` DESC"
            ),
            "{sql}"
        );
        assert!(!sql.contains("plo"), "no partition bound of its own: {sql}");
    }

    #[test]
    fn the_patch_apply_folds_onto_the_stored_row_before_deleting_it() {
        let mut contacts = crate::schema::project_catalog().get("contacts_master").unwrap().clone();
        contacts.upsert = crate::schema::UpsertMode::Patch;
        let sql = apply_script(&contacts, &window("j"));
        let insert = sql.find("INSERT INTO `p.d.t` (").unwrap();
        let counted = sql.find("SET applied = @@row_count;").unwrap();
        let delete = sql.find("DELETE FROM `p.d.t` t WHERE EXISTS").unwrap();
        assert!(insert < counted && counted < delete && delete < sql.find("UPDATE `p.d._bqsync_apply_state`").unwrap());
        assert!(sql.contains("`_bqsync_landed_at`, `_bqsync_absent` FROM `p.d._bqsync_landing_t`"), "{sql}");
        assert!(
            sql.contains(
                "ARRAY_AGG(STRUCT(s.`email` AS v) ORDER BY IF('email' IN UNNEST(s.`_bqsync_absent`), 0, 1) DESC"
            ),
            "{sql}"
        );
        assert!(sql.contains("IF(a.p1, a.v1, t.`email`) AS `email`"), "{sql}");
        assert!(
            sql.contains("WHERE t.`_bqsync_version` IS NULL OR s.`_bqsync_version` > t.`_bqsync_version`"),
            "{sql}"
        );
        let live = create_live_view("`v`", &contacts, "`p.d.c`", "`p.d.l`", "`p.d.s`");
        assert!(live.contains("WITH patched AS (SELECT "), "{live}");
        assert!(live.contains("a.w.l AS `_bqsync_landed_at`"), "{live}");
        assert!(
            live.contains("WHERE NOT EXISTS (SELECT 1 FROM patched p WHERE p.`contact_id` = t.`contact_id`)"),
            "{live}"
        );
    }

    #[test]
    fn views_union_the_table_with_the_tail_past_the_watermark() {
        let catalog = crate::schema::project_catalog();
        let contacts = catalog.get("contacts_master").unwrap();
        let live = create_live_view("`p.d.c_live`", contacts, "`p.d.c`", "`p.d.l`", "`p.d.s`");
        assert!(live.starts_with("CREATE OR REPLACE VIEW `p.d.c_live` AS SELECT * EXCEPT"), "{live}");
        assert!(live.contains("ORDER BY `_bqsync_version` DESC, _bqsync_applied DESC"), "{live}");
        assert!(live.contains("FROM `p.d.s` WHERE table_name = 'contacts_master'"), "{live}");
        let atoms = catalog.get("atoms").unwrap();
        let live = create_live_view("`v`", atoms, "`p.d.a`", "`p.d.l`", "`p.d.s`");
        assert!(live.contains("WHERE NOT EXISTS (SELECT 1 FROM `p.d.a` t WHERE"), "{live}");
        let current = create_current_view("`p.d.c_current`", contacts, "`p.d.c_live`");
        assert!(current.ends_with("FROM `p.d.c_live` WHERE NOT `_bqsync_deleted`"), "{current}");
        assert!(!current.contains("_bqsync_event_id"), "{current}");
        assert_eq!(
            seed_state("`s`", "atoms"),
            "INSERT INTO `s` (table_name, watermark, applied_at, job_id, rows_applied) SELECT 'atoms', \
             TIMESTAMP_MICROS(0), TIMESTAMP_MICROS(0), NULL, 0 FROM UNNEST([1]) WHERE NOT EXISTS \
             (SELECT 1 FROM `s` WHERE table_name = 'atoms')"
        );
    }
}
