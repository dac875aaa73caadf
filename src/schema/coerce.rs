//! Coercion of event payloads to their table's columns: the one place that decides whether a value
//! fits a column, and the error that names the column, what was expected and what came.

use serde_json::Value;

use super::{Column, ColumnMode, ColumnType, TableSchema, UnknownFields};

/// A payload value after coercion to its column's type.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum CellValue {
    Null,
    String(String),
    Int64(i64),
    Float64(f64),
    Bool(bool),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// Days since the Unix epoch.
    Date(i32),
    /// JSON text: JSON, RECORD and REPEATED columns, and NUMERIC as its decimal text.
    JsonText(String),
    /// Raw bytes (BYTES columns arrive base64-encoded).
    Bytes(Vec<u8>),
}

/// Why a payload does not fit its table: names the column, what was expected and what came.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaViolation(pub String);

fn describe(value: &Value) -> String {
    let text = value.to_string();
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if text.len() > 80 {
        format!("{kind} {}…", &text[..text.char_indices().nth(77).map(|(i, _)| i).unwrap_or(text.len())])
    } else {
        format!("{kind} {text}")
    }
}

/// Parses RFC 3339 (`2024-01-01T00:00:00.123456Z`, offsets allowed), `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC)
/// or epoch seconds into microseconds since the epoch.
pub fn parse_timestamp_micros(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => parse_timestamp_text(s),
        Value::Number(n) => n.as_f64().filter(|f| f.is_finite()).map(|secs| (secs * 1_000_000.0).round() as i64),
        _ => None,
    }
}

/// [`parse_timestamp_micros`] of a string.
pub fn parse_timestamp_text(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    let trimmed = s.trim_end_matches(" UTC");
    NAIVE_FORMATS.iter().find_map(|items| {
        // What `NaiveDateTime::parse_from_str` does, with the format parsed once, not per value
        // (re-reading the format was 2 % of a 1M-row SQLite sync's CPU).
        let mut parsed = chrono::format::Parsed::new();
        chrono::format::parse(&mut parsed, trimmed, items.iter()).ok()?;
        parsed.to_naive_datetime_with_offset(0).ok().map(|t| t.and_utc().timestamp_micros())
    })
}

/// `YYYY-MM-DD HH:MM:SS[.f]` and `YYYY-MM-DDTHH:MM:SS[.f]` (UTC), parsed into chrono's items once.
static NAIVE_FORMATS: std::sync::LazyLock<[Vec<chrono::format::Item<'static>>; 2]> = std::sync::LazyLock::new(|| {
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"].map(|format| chrono::format::StrftimeItems::new(format).collect())
});

/// BigQuery's TIMESTAMP range, 0001-01-01 00:00:00 to 9999-12-31 23:59:59.999999 UTC, in µs since the
/// epoch; DATE's is the same days ("GoogleSQL data types", cloud.google.com/bigquery/docs/reference/
/// standard-sql/data-types). A value outside it is a schema violation on both warehouses: BigQuery
/// would refuse the row at landing, and DuckDB (whose range is wider) would keep what BigQuery cannot.
/// Found by the coercion fuzz target: epoch seconds of ±9.2e18 saturated to i64::MIN/MAX µs.
const TIMESTAMP_RANGE_MICROS: std::ops::RangeInclusive<i64> = -62_135_596_800_000_000..=253_402_300_799_999_999;
const DATE_RANGE_DAYS: std::ops::RangeInclusive<i64> = -719_162..=2_932_896;

fn out_of_range(column: &Column, value: &Value) -> String {
    format!(
        "column `{}`: {} is outside {:?}'s range, 0001-01-01 to 9999-12-31 (BigQuery's)",
        column.name,
        describe(value),
        column.column_type
    )
}

fn coerce_scalar(column: &Column, value: &Value) -> Result<CellValue, String> {
    let mismatch = || format!("column `{}`: expected {:?}, got {}", column.name, column.column_type, describe(value));
    Ok(match column.column_type {
        ColumnType::String => match value {
            Value::String(s) => CellValue::String(s.clone()),
            Value::Number(n) => CellValue::String(n.to_string()),
            Value::Bool(b) => CellValue::String(b.to_string()),
            _ => return Err(mismatch()),
        },
        ColumnType::Int64 => match value {
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => CellValue::Int64(i),
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => CellValue::Int64(f as i64),
                _ => return Err(mismatch()),
            },
            Value::String(s) => CellValue::Int64(s.trim().parse().map_err(|_| mismatch())?),
            _ => return Err(mismatch()),
        },
        ColumnType::Float64 => match value {
            Value::Number(n) => CellValue::Float64(n.as_f64().ok_or_else(mismatch)?),
            Value::String(s) => CellValue::Float64(s.trim().parse().map_err(|_| mismatch())?),
            _ => return Err(mismatch()),
        },
        ColumnType::Bool => match value {
            Value::Bool(b) => CellValue::Bool(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => CellValue::Bool(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => CellValue::Bool(false),
            _ => return Err(mismatch()),
        },
        ColumnType::Timestamp => {
            let micros = parse_timestamp_micros(value).ok_or_else(mismatch)?;
            if !TIMESTAMP_RANGE_MICROS.contains(&micros) {
                return Err(out_of_range(column, value));
            }
            CellValue::Timestamp(micros)
        }
        ColumnType::Date => match value {
            Value::String(s) => {
                let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| mismatch())?;
                let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
                let days = (date - epoch).num_days();
                if !DATE_RANGE_DAYS.contains(&days) {
                    return Err(out_of_range(column, value));
                }
                CellValue::Date(days as i32)
            }
            _ => return Err(mismatch()),
        },
        ColumnType::Numeric => {
            let text = match value {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.trim().to_string(),
                _ => return Err(mismatch()),
            };
            if !is_numeric_38_9(&text) {
                return Err(format!(
                    "column `{}`: expected NUMERIC (at most 29 integer and 9 fractional digits), got {}",
                    column.name,
                    describe(value)
                ));
            }
            CellValue::JsonText(text)
        }
        ColumnType::Json => CellValue::JsonText(value.to_string()),
        ColumnType::Bytes => match value {
            Value::String(s) => CellValue::Bytes(decode_base64(s).ok_or_else(mismatch)?),
            _ => return Err(mismatch()),
        },
        ColumnType::Record => match value {
            Value::Object(_) => CellValue::JsonText(value.to_string()),
            _ => return Err(mismatch()),
        },
    })
}

/// True for a plain decimal that fits BigQuery's NUMERIC (precision 38, scale 9): checked here so
/// the warehouse never rejects a whole batch over one value.
fn is_numeric_38_9(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (integer, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !(integer.is_empty() && fraction.is_empty())
        && all_digits(integer)
        && all_digits(fraction)
        && integer.trim_start_matches('0').len() <= 29
        && fraction.len() <= 9
}

/// Standard base64 with padding (the `base64` crate), as BigQuery's JSON carries BYTES.
pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Standard or URL-safe base64, with or without padding; `None` for anything else.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::{alphabet, Engine as _};
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
    STANDARD.decode(text).or_else(|_| URL_SAFE.decode(text)).ok()
}

/// Coerces one payload value to its column. `Null` for absent NULLABLE values; REQUIRED columns must
/// be present unless `allow_missing` (tombstones carry only their key and version).
pub fn coerce_value(column: &Column, value: Option<&Value>, allow_missing: bool) -> Result<CellValue, SchemaViolation> {
    let value = match value {
        None | Some(Value::Null) => {
            if column.mode == ColumnMode::Required && !allow_missing {
                return Err(SchemaViolation(format!(
                    "column `{}` is REQUIRED but {}",
                    column.name,
                    if value.is_none() { "absent" } else { "null" }
                )));
            }
            return Ok(if column.mode == ColumnMode::Repeated {
                CellValue::JsonText("[]".into())
            } else {
                CellValue::Null
            });
        }
        Some(v) => v,
    };
    if column.mode == ColumnMode::Repeated {
        let Value::Array(items) = value else {
            return Err(SchemaViolation(format!(
                "column `{}`: expected REPEATED {:?} (a JSON array), got {}",
                column.name,
                column.column_type,
                describe(value)
            )));
        };
        let mut normalized = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let cell = coerce_scalar(column, item).map_err(|e| SchemaViolation(format!("{e} (element {i})")))?;
            normalized.push(cell_to_json(cell, item));
        }
        return Ok(CellValue::JsonText(Value::Array(normalized).to_string()));
    }
    coerce_scalar(column, value).map_err(SchemaViolation)
}

/// The JSON form of a coerced array element (so `["1", 2]` in an INT64 list becomes `[1,2]`).
fn cell_to_json(cell: CellValue, original: &Value) -> Value {
    match cell {
        CellValue::String(s) => Value::String(s),
        CellValue::Int64(i) => Value::from(i),
        CellValue::Float64(f) => Value::from(f),
        CellValue::Bool(b) => Value::Bool(b),
        _ => original.clone(),
    }
}

/// Validates a payload object against the table and returns one cell per column, in column order.
pub fn coerce_row(
    table: &TableSchema,
    payload: &serde_json::Map<String, Value>,
    tombstone: bool,
) -> Result<Vec<CellValue>, SchemaViolation> {
    coerce_columns(
        table,
        payload.keys().map(String::as_str),
        tombstone,
        |name| payload.get(name),
        |column, value, allow_missing| coerce_owned(column, value.cloned(), allow_missing),
    )
}

/// [`coerce_row`] over each field's JSON text, as a message carries it (`raw_of`: the text of a
/// field, `None` when absent). A plain string, a number or a timestamp is decoded straight from its
/// text, into the cell [`coerce_value`] would give; anything else is parsed into a `Value` first.
/// Why: a `Value` per field was a quarter of the worker's allocations on the 1M-atoms benchmark.
pub fn coerce_raw_fields<'a, 'r>(
    table: &TableSchema,
    fields: impl ExactSizeIterator<Item = &'a str>,
    raw_of: impl Fn(&str) -> Option<&'r str>,
    tombstone: bool,
) -> Result<Vec<CellValue>, SchemaViolation> {
    coerce_columns(table, fields, tombstone, raw_of, |column, raw, allow_missing| {
        coerce_raw_value(column, raw, allow_missing)
    })
}

/// [`coerce_value`] of a value given as its JSON text (valid JSON; `None` when absent). The same
/// cell or error as [`coerce_value`] on the parsed value, which the `coercion` fuzz target checks.
pub fn coerce_raw_value(column: &Column, raw: Option<&str>, allow_missing: bool) -> Result<CellValue, SchemaViolation> {
    if let Some(cell) = raw.and_then(|raw| coerce_raw_scalar(column, raw)) {
        return Ok(cell);
    }
    let value = raw
        .map(serde_json::from_str::<Value>)
        .transpose()
        .map_err(|e| SchemaViolation(format!("field `{}`: {e}", column.name)))?;
    coerce_owned(column, value, allow_missing)
}

/// Makes one cell per column with `cell(column, value, allow_missing)`, the value found by
/// `lookup(name)`, and checks the payload's field names (`fields`, each once).
///
/// The names are checked by counting, not by looking each one up among the columns (a linear search
/// per field was a tenth of the source's time on the 200k-contacts benchmark): every field names a
/// column exactly when as many columns were found as the payload has fields. Only a payload that
/// fails either check is searched for its unknown field, whose error comes first, as before.
fn coerce_columns<'a, V>(
    table: &TableSchema,
    fields: impl ExactSizeIterator<Item = &'a str>,
    tombstone: bool,
    lookup: impl Fn(&str) -> Option<V>,
    cell: impl Fn(&Column, Option<V>, bool) -> Result<CellValue, SchemaViolation>,
) -> Result<Vec<CellValue>, SchemaViolation> {
    let field_count = fields.len();
    let mut found = 0;
    let mut cells = Vec::with_capacity(table.columns.len());
    for column in &table.columns {
        let value = lookup(&column.name);
        found += usize::from(value.is_some());
        let is_key = table.primary_key.contains(&column.name) || table.version_column.as_deref() == Some(&column.name);
        match cell(column, value, tombstone && !is_key) {
            Ok(value) => cells.push(value),
            Err(error) => return Err(unknown_field(table, fields).unwrap_or(error)),
        }
    }
    if found < field_count {
        if let Some(error) = unknown_field(table, fields) {
            return Err(error);
        }
    }
    Ok(cells)
}

/// The error for the first field that names no column, when the table rejects unknown fields.
fn unknown_field<'a>(table: &TableSchema, mut fields: impl Iterator<Item = &'a str>) -> Option<SchemaViolation> {
    if table.unknown_fields != UnknownFields::Reject {
        return None;
    }
    let unknown = fields.find(|k| table.column(k).is_none())?;
    Some(SchemaViolation(format!(
        "field `{unknown}` is not a column of table `{}` (add it to schemas/{}.json, or set \"unknown_fields\": \"ignore\")",
        table.table, table.table
    )))
}

/// [`coerce_value`] on an owned value: a string for a STRING column is taken as it is, no copy.
fn coerce_owned(column: &Column, value: Option<Value>, allow_missing: bool) -> Result<CellValue, SchemaViolation> {
    match value {
        Some(Value::String(text))
            if column.column_type == ColumnType::String && column.mode != ColumnMode::Repeated =>
        {
            Ok(CellValue::String(text))
        }
        value => coerce_value(column, value.as_ref(), allow_missing),
    }
}

/// The cell of a non-null scalar from its JSON text alone, when that is certain to be what
/// [`coerce_value`] gives for the parsed value; `None` otherwise (the caller takes the slow way).
/// Strings qualify without escapes (JSON that parsed holds no bare quote or control character
/// then), numbers when they parse whole (Rust's and serde_json's float parsing both round
/// correctly), timestamps when they parse and are in range.
fn coerce_raw_scalar(column: &Column, raw: &str) -> Option<CellValue> {
    if column.mode == ColumnMode::Repeated {
        return (column.column_type == ColumnType::String).then(|| plain_string_list(raw)).flatten();
    }
    let number = || raw.starts_with(|c: char| c == '-' || c.is_ascii_digit());
    match column.column_type {
        ColumnType::String => plain_json_string(raw).map(|s| CellValue::String(s.to_owned())),
        ColumnType::Int64 if number() => raw.parse().ok().map(CellValue::Int64),
        ColumnType::Float64 if number() => raw.parse().ok().filter(|f: &f64| f.is_finite()).map(CellValue::Float64),
        ColumnType::Bool => match raw {
            "true" => Some(CellValue::Bool(true)),
            "false" => Some(CellValue::Bool(false)),
            _ => None,
        },
        ColumnType::Timestamp => {
            let micros = parse_timestamp_text(plain_json_string(raw)?)?;
            TIMESTAMP_RANGE_MICROS.contains(&micros).then_some(CellValue::Timestamp(micros))
        }
        _ => None,
    }
}

/// The normalized JSON text of a REPEATED STRING cell given as an array of strings none of which
/// holds an escape: compact, as `Value::to_string` writes it. Such a string holds no `"`, `\` or
/// control character, so it is written as it came. `None` for anything else (a number, a `null`,
/// an escape): the `Value` path. Why: a `Value` per list was a twentieth of the 1M atoms' CPU.
fn plain_string_list(raw: &str) -> Option<CellValue> {
    let items: Vec<&str> = serde_json::from_str(raw).ok()?;
    let mut text = String::with_capacity(raw.len());
    text.push('[');
    for (i, item) in items.iter().enumerate() {
        text.push_str(if i == 0 { "\"" } else { ",\"" });
        text.push_str(item);
        text.push('"');
    }
    text.push(']');
    Some(CellValue::JsonText(text))
}

/// The text of a JSON string literal that holds no escape; `None` for anything else.
pub fn plain_json_string(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn column(name: &str, column_type: ColumnType, mode: ColumnMode) -> Column {
        Column { name: name.into(), column_type, mode, description: None, fields: vec![] }
    }

    /// The text path gives what the `Value` path gives, on the texts it decodes itself and on those
    /// it hands on.
    #[test]
    fn raw_text_coerces_as_its_parsed_value() {
        let raws = [
            r#""plain""#,
            r#""with \"escape\"""#,
            r#""""#,
            "0",
            "-0",
            "42",
            "-17",
            "1.5",
            "1e3",
            "1E-2",
            "-0.0",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "12345678901234567890123",
            "1e400",
            "true",
            "false",
            "null",
            r#""2024-01-01T00:00:00.079275Z""#,
            r#""2024-01-01 00:00:00""#,
            r#""2024-01-01T00:00:00+02:00""#,
            r#""0000-12-31T23:59:59Z""#,
            r#""10000-01-01T00:00:00Z""#,
            r#""2024-02-30""#,
            r#""2024-01-01""#,
            r#""true""#,
            r#""12""#,
            "[1,2]",
            r#"["a","b"]"#,
            r#"[ "a" , "b" ]"#,
            "[]",
            "[ ]",
            r#"["a",null]"#,
            r#"["a",1,true]"#,
            r#"["\u00e9","é","a\"b"]"#,
            r#"["é",""]"#,
            r#"[["a"]]"#,
            r#"{"a":1}"#,
            "1704067200",
            "1704067200.5",
            r#""AAEC""#,
            r#""12.5""#,
        ];
        let types = [
            ColumnType::String,
            ColumnType::Int64,
            ColumnType::Float64,
            ColumnType::Bool,
            ColumnType::Timestamp,
            ColumnType::Date,
            ColumnType::Numeric,
            ColumnType::Json,
            ColumnType::Bytes,
            ColumnType::Record,
        ];
        for column_type in types {
            for mode in [ColumnMode::Nullable, ColumnMode::Required, ColumnMode::Repeated] {
                let col = column("c", column_type, mode);
                for raw in raws {
                    let Ok(value) = serde_json::from_str::<Value>(raw) else { continue };
                    for allow_missing in [false, true] {
                        assert_eq!(
                            coerce_raw_value(&col, Some(raw), allow_missing),
                            coerce_value(&col, Some(&value), allow_missing),
                            "{raw} into {column_type:?} {mode:?}"
                        );
                    }
                }
                assert_eq!(coerce_raw_value(&col, None, false), coerce_value(&col, None, false));
            }
        }
        // A number beyond f64's range has no `Value`: the field is named.
        let err = coerce_raw_value(&column("n", ColumnType::Float64, ColumnMode::Nullable), Some("1e400"), false);
        assert!(err.unwrap_err().0.starts_with("field `n`:"));
    }

    /// Fuzz finding: epoch seconds far out of range saturated to i64::MIN/MAX µs and were accepted; a
    /// TIMESTAMP or DATE outside BigQuery's range is now a schema violation that names it.
    #[test]
    fn timestamps_and_dates_outside_bigquerys_range_are_refused() {
        let at = column("at", ColumnType::Timestamp, ColumnMode::Nullable);
        let day = column("day", ColumnType::Date, ColumnMode::Nullable);
        for value in
            [json!(-9_223_372_036_854_775_808i64), json!(1e300), json!("0000-12-31T23:59:59Z"), json!(253402300800u64)]
        {
            let err = coerce_value(&at, Some(&value), false).unwrap_err();
            assert!(err.0.contains("outside Timestamp's range"), "{value}: {}", err.0);
        }
        for (value, micros) in [
            (json!("0001-01-01T00:00:00Z"), -62_135_596_800_000_000),
            (json!("9999-12-31T23:59:59.999999Z"), 253_402_300_799_999_999),
            (json!(253402300799u64), 253_402_300_799_000_000),
        ] {
            assert_eq!(coerce_value(&at, Some(&value), false).unwrap(), CellValue::Timestamp(micros), "{value}");
        }
        assert!(coerce_value(&day, Some(&json!("+10000-01-01")), false).is_err());
        assert_eq!(coerce_value(&day, Some(&json!("9999-12-31")), false).unwrap(), CellValue::Date(2_932_896));
        assert_eq!(coerce_value(&day, Some(&json!("0001-01-01")), false).unwrap(), CellValue::Date(-719_162));
    }

    #[test]
    fn coercion_names_the_column_and_the_value() {
        let c = column("score", ColumnType::Float64, ColumnMode::Nullable);
        assert_eq!(coerce_value(&c, Some(&json!("1.5")), false).unwrap(), CellValue::Float64(1.5));
        let err = coerce_value(&c, Some(&json!("abc")), false).unwrap_err();
        assert_eq!(err.0, "column `score`: expected Float64, got string \"abc\"");
        let required = column("id", ColumnType::String, ColumnMode::Required);
        assert!(coerce_value(&required, None, false).unwrap_err().0.contains("REQUIRED but absent"));
        assert_eq!(coerce_value(&required, None, true).unwrap(), CellValue::Null);
    }

    #[test]
    fn timestamps_and_lists() {
        let ts = column("t", ColumnType::Timestamp, ColumnMode::Nullable);
        assert_eq!(
            coerce_value(&ts, Some(&json!("1970-01-01T00:00:01.5Z")), false).unwrap(),
            CellValue::Timestamp(1_500_000)
        );
        assert_eq!(
            coerce_value(&ts, Some(&json!("1970-01-01 00:00:02")), false).unwrap(),
            CellValue::Timestamp(2_000_000)
        );
        let tags = column("tags", ColumnType::Int64, ColumnMode::Repeated);
        assert_eq!(coerce_value(&tags, Some(&json!(["1", 2])), false).unwrap(), CellValue::JsonText("[1,2]".into()));
        assert!(coerce_value(&tags, Some(&json!(["x"])), false).unwrap_err().0.contains("element 0"));
        assert_eq!(coerce_value(&tags, None, false).unwrap(), CellValue::JsonText("[]".into()));
    }

    /// The formats parsed once read every text as `NaiveDateTime::parse_from_str` does.
    #[test]
    fn naive_timestamps_parse_as_chrono_parses_them() {
        let reference = |text: &str| {
            let trimmed = text.trim_end_matches(" UTC");
            ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"].iter().find_map(|format| {
                chrono::NaiveDateTime::parse_from_str(trimmed, format).ok().map(|t| t.and_utc().timestamp_micros())
            })
        };
        for text in [
            "2024-01-01 00:00:00",
            "2024-02-29 23:59:59.123456",
            "2024-01-01T10:00:00.5",
            "2024-01-01 10:00:00 UTC",
            "2023-02-29 00:00:00",
            "2024-01-01 24:00:00",
            "2024-01-01",
            "2024-01-01 00:00",
            "2024-01-01 00:00:00x",
            " 2024-01-01 00:00:00",
            "",
        ] {
            let expected =
                chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros()).or(reference(text));
            assert_eq!(parse_timestamp_text(text), expected, "{text:?}");
        }
        assert_eq!(parse_timestamp_text("1970-01-01 00:00:01.5"), Some(1_500_000));
    }

    #[test]
    fn numeric_values_must_fit_precision_38_scale_9() {
        let c = column("amount", ColumnType::Numeric, ColumnMode::Nullable);
        assert_eq!(coerce_value(&c, Some(&json!("-12.5")), false).unwrap(), CellValue::JsonText("-12.5".into()));
        assert_eq!(coerce_value(&c, Some(&json!(7)), false).unwrap(), CellValue::JsonText("7".into()));
        for bad in [json!(1e40), json!("1.0000000001"), json!("12a"), json!("."), json!(true)] {
            assert!(coerce_value(&c, Some(&bad), false).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert!(decode_base64("a*b").is_none());
    }
}
