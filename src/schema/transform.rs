//! Column transforms: what a producer does to a record's fields before it is published, so raw
//! values never reach the bus, a dead letter or the warehouse (the BigQuerySyncer hashed API keys
//! before they left).
//!
//! Declared per table in its schema file, keyed by field name as the record arrives (after a
//! source's `columns` renames):
//!
//! ```json
//! "transforms": { "api_key": {"hash": {"salt_env": "BQSYNC_HASH_SALT"}}, "ssn": "redact",
//!                 "debug_blob": "drop", "apiKey": {"rename": "api_key_raw"} }
//! ```
//!
//! - `hash`: SHA-256, as lowercase hex, of the salt (from the environment variable `salt_env`, if
//!   set) followed by the value's text (a string's characters, any other JSON value's JSON text);
//! - `redact`: the value becomes `"REDACTED"`;
//! - `drop`: the field is removed;
//! - `rename`: the field moves to another name.
//!
//! Nulls stay null. The schema records the transformed type: a hashed or redacted column is STRING.
//! Invariant: [`apply`] runs exactly once per record, in the producer, before the record is published
//! or made a poison message; a record that cannot be read as a JSON object is never published raw
//! for a table with transforms ([`withheld`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Digest;

/// What happens to one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub enum Transform {
    Hash { salt_env: Option<String> },
    Redact,
    Drop,
    Rename(String),
}

/// A table's transforms, by field.
pub type Transforms = BTreeMap<String, Transform>;

/// The value a redacted field takes.
pub const REDACTED: &str = "REDACTED";

impl TryFrom<Value> for Transform {
    type Error = String;

    fn try_from(value: Value) -> Result<Transform, String> {
        let expected = r#"expected "hash", "redact", "drop", {"hash": {"salt_env": "VAR"}} or {"rename": "new_name"}"#;
        match &value {
            Value::String(name) => match name.as_str() {
                "hash" => Ok(Transform::Hash { salt_env: None }),
                "redact" => Ok(Transform::Redact),
                "drop" => Ok(Transform::Drop),
                other => Err(format!("unknown transform `{other}`: {expected}")),
            },
            Value::Object(map) if map.len() == 1 => match map.iter().next().expect("one entry") {
                (kind, Value::String(to)) if kind == "rename" => Ok(Transform::Rename(to.clone())),
                (kind, Value::Object(spec)) if kind == "hash" => {
                    let salt_env = match spec.get("salt_env") {
                        None => None,
                        Some(Value::String(var)) if spec.len() == 1 => Some(var.clone()),
                        _ => return Err(format!("`hash` takes only `salt_env`, a variable name: {expected}")),
                    };
                    Ok(Transform::Hash { salt_env })
                }
                _ => Err(expected.to_string()),
            },
            _ => Err(expected.to_string()),
        }
    }
}

impl From<Transform> for Value {
    fn from(transform: Transform) -> Value {
        match transform {
            Transform::Hash { salt_env: None } => "hash".into(),
            Transform::Hash { salt_env: Some(var) } => serde_json::json!({"hash": {"salt_env": var}}),
            Transform::Redact => "redact".into(),
            Transform::Drop => "drop".into(),
            Transform::Rename(to) => serde_json::json!({ "rename": to }),
        }
    }
}

/// The salts the transforms need, read from the environment: an error names a variable not set
/// (checked when a producer starts, so a missing salt never lets a raw value through).
pub fn check_salts(transforms: &Transforms) -> Result<(), String> {
    for transform in transforms.values() {
        if let Transform::Hash { salt_env: Some(var) } = transform {
            if std::env::var_os(var).is_none() {
                return Err(format!("the `hash` transform's salt variable {var} is not set"));
            }
        }
    }
    Ok(())
}

fn hash(value: &Value, salt_env: Option<&str>) -> Value {
    let salt = salt_env.and_then(|var| std::env::var(var).ok()).unwrap_or_default();
    let mut digest = sha2::Sha256::new();
    digest.update(salt.as_bytes());
    match value {
        Value::String(s) => digest.update(s.as_bytes()),
        other => digest.update(other.to_string().as_bytes()),
    }
    let bytes = digest.finalize();
    Value::String(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Applies `transforms` to a record's fields, in place.
pub fn apply(transforms: &Transforms, record: &mut Map<String, Value>) {
    for (field, transform) in transforms {
        match transform {
            Transform::Drop => {
                record.remove(field);
            }
            Transform::Rename(to) => {
                if let Some(value) = record.remove(field) {
                    record.insert(to.clone(), value);
                }
            }
            Transform::Hash { salt_env } => {
                if let Some(value) = record.get_mut(field).filter(|v| !v.is_null()) {
                    *value = hash(value, salt_env.as_deref());
                }
            }
            Transform::Redact => {
                if let Some(value) = record.get_mut(field).filter(|v| !v.is_null()) {
                    *value = Value::String(REDACTED.into());
                }
            }
        }
    }
}

/// What a poison message of a table with transforms carries instead of a record that is not a JSON
/// object (the transforms cannot run on it, so its bytes are not kept).
pub fn withheld(bytes: &[u8]) -> Vec<u8> {
    format!("(record withheld: its table has transforms and it is not a JSON object; {} bytes)", bytes.len())
        .into_bytes()
}

/// The bytes of a record to publish as poison for a table with `transforms`: the record with the
/// transforms applied when it is a JSON object, else [`withheld`].
pub fn shield(transforms: &Transforms, bytes: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(mut record)) => {
            apply(transforms, &mut record);
            Value::Object(record).to_string().into_bytes()
        }
        _ => withheld(bytes),
    }
}

/// Checks transforms against the table's columns: a hashed or redacted column must be STRING (the
/// transformed type), a rename must lead to a column, a dropped field must not be a REQUIRED column.
pub fn check(table: &super::TableSchema) -> Result<(), String> {
    for (field, transform) in &table.transforms {
        let column = table.column(field);
        match transform {
            Transform::Hash { .. } | Transform::Redact => {
                if let Some(c) = column.filter(|c| c.column_type != super::ColumnType::String) {
                    return Err(format!(
                        "transform of `{field}` makes it text, but the column is {:?}: declare it STRING",
                        c.column_type
                    ));
                }
            }
            Transform::Drop => {
                if column.is_some_and(|c| c.mode == super::ColumnMode::Required) {
                    return Err(format!("`{field}` is dropped but is a REQUIRED column"));
                }
            }
            Transform::Rename(to) => {
                if table.column(to).is_none() {
                    return Err(format!("`{field}` is renamed to `{to}`, which is not a column"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn transforms_parse_apply_and_never_keep_the_raw_value() {
        let transforms: Transforms = serde_json::from_value(json!({
            "key": "hash", "ssn": "redact", "blob": "drop", "apiKey": {"rename": "api_key"},
            "n": {"hash": {"salt_env": "BQSYNC_TEST_SALT_UNSET_1"}}
        }))
        .unwrap();
        assert!(check_salts(&transforms).unwrap_err().contains("BQSYNC_TEST_SALT_UNSET_1"));
        let mut record = json!({"key": "secret", "ssn": "123", "blob": "x", "apiKey": "k", "n": null, "other": 1})
            .as_object()
            .unwrap()
            .clone();
        apply(&transforms, &mut record);
        // SHA-256("secret"), by `printf secret | sha256sum`.
        assert_eq!(record["key"], "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b");
        assert_eq!(record["ssn"], REDACTED);
        assert!(!record.contains_key("blob") && !record.contains_key("apiKey"));
        assert_eq!((&record["api_key"], &record["n"], &record["other"]), (&json!("k"), &Value::Null, &json!(1)));
        let shielded = String::from_utf8(shield(&transforms, br#"{"key":"secret","kind":5}"#)).unwrap();
        assert!(!shielded.contains("\"secret\""), "{shielded}");
        assert!(!String::from_utf8(shield(&transforms, b"{not json secret")).unwrap().contains("secret"));
        assert!(serde_json::from_value::<Transforms>(json!({"a": "encrypt"}))
            .unwrap_err()
            .to_string()
            .contains("encrypt"));
        let round: Transforms = serde_json::from_value(serde_json::to_value(&transforms).unwrap()).unwrap();
        assert_eq!(round, transforms);
    }
}
