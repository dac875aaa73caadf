//! Turns a delivery into either a row for its table or a dead letter with a precise reason.

use crate::bus::{attr, Delivery};
use crate::envelope::{decode, derive_event_id, Op};
use crate::schema::{coerce_row, Catalog, CellValue, WriteMode};
use crate::warehouse::StagedRow;

/// Table name of the dead-letter table.
pub const DEAD_LETTER_TABLE: &str = "dead_letters";

/// Reason classes of dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The bytes are not a change event (invalid UTF-8, invalid JSON, missing or unknown fields).
    Decode,
    /// The payload does not fit the table schema.
    Schema,
    /// No schema file for the event's table.
    UnknownTable,
    /// The message is larger than the configured maximum.
    Oversize,
    /// The warehouse refused the row (per-row errors, as BigQuery reports them; the DuckDB path
    /// validates rows before landing and does not produce it).
    WarehouseRejected,
    /// Delivered the maximum number of times without being acked.
    MaxAttempts,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Decode => "decode",
            DeadLetterReason::Schema => "schema",
            DeadLetterReason::UnknownTable => "unknown_table",
            DeadLetterReason::Oversize => "oversize",
            DeadLetterReason::WarehouseRejected => "warehouse_rejected",
            DeadLetterReason::MaxAttempts => "max_attempts",
        }
    }

    pub fn parse(text: &str) -> Option<DeadLetterReason> {
        Some(match text {
            "decode" => DeadLetterReason::Decode,
            "schema" => DeadLetterReason::Schema,
            "unknown_table" => DeadLetterReason::UnknownTable,
            "oversize" => DeadLetterReason::Oversize,
            "warehouse_rejected" => DeadLetterReason::WarehouseRejected,
            "max_attempts" => DeadLetterReason::MaxAttempts,
            _ => return None,
        })
    }
}

/// What a delivery becomes.
#[derive(Debug)]
pub enum Classified {
    /// `produced_micros`: the event's `produced_at`, µs since the epoch (for the lag metric).
    Row {
        table: String,
        row: StagedRow,
        produced_micros: i64,
    },
    DeadLetter(DeadLetter),
}

/// Why a delivery cannot land, and what is known of it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub reason: DeadLetterReason,
    pub detail: String,
    pub table: Option<String>,
    pub event_id: Option<String>,
}

/// Pub/Sub's limit on an attribute value, in bytes.
const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// Classifies deliveries against the catalog.
pub struct Classifier<'a> {
    pub catalog: &'a Catalog,
    pub max_event_bytes: usize,
}

impl Classifier<'_> {
    /// A delivery from the main subscription.
    pub fn classify(&self, delivery: &Delivery) -> Classified {
        match self.try_row(delivery) {
            Ok((table, row, produced_micros)) => Classified::Row { table, row, produced_micros },
            Err((reason, detail, table, event_id)) => {
                Classified::DeadLetter(DeadLetter { reason, detail, table, event_id })
            }
        }
    }

    /// A delivery from the dead-letter queue: a poison event the worker put there (its reason is in
    /// the attributes) or a message moved there after the maximum delivery attempts.
    pub fn classify_exhausted(&self, delivery: &Delivery) -> DeadLetter {
        let attributes = &delivery.attributes;
        let reason = attributes
            .get(attr::DEAD_LETTER_REASON)
            .and_then(|r| DeadLetterReason::parse(r))
            .unwrap_or(DeadLetterReason::MaxAttempts);
        let detail = match attributes.get(attr::DEAD_LETTER_DETAIL) {
            Some(detail) if reason != DeadLetterReason::MaxAttempts => detail.clone(),
            _ => format!(
                "not acked after {} delivery attempts (worker crash, warehouse outage or a failing batch)",
                attempts_of(delivery)
            ),
        };
        let (salvaged_table, salvaged_id) = salvage_identity(&delivery.data);
        DeadLetter {
            reason,
            detail,
            table: attributes.get(attr::TABLE).cloned().or(salvaged_table),
            event_id: attributes.get(attr::EVENT_ID).cloned().or(salvaged_id),
        }
    }

    /// The attributes of a dead letter published to the bus's dead-letter topic: the original ones
    /// plus reason, detail (cut to Pub/Sub's limit), attempts, and table and event id when known.
    pub fn dead_letter_attributes(&self, delivery: &Delivery, dead: &DeadLetter) -> crate::bus::Attributes {
        let mut attributes = delivery.attributes.clone();
        let mut set = |name: &str, value: String| {
            attributes.insert(name.to_string(), value);
        };
        set(attr::DEAD_LETTER_REASON, dead.reason.as_str().to_string());
        set(attr::DEAD_LETTER_DETAIL, truncate_utf8(&dead.detail, MAX_ATTRIBUTE_BYTES).to_string());
        set(attr::DEAD_LETTER_ATTEMPTS, attempts_of(delivery).to_string());
        set(attr::DEAD_LETTER_FIRST_ATTEMPT_MICROS, first_failed_micros(delivery).to_string());
        if let Some(table) = &dead.table {
            set(attr::TABLE, table.clone());
        }
        if let Some(event_id) = &dead.event_id {
            set(attr::EVENT_ID, truncate_utf8(event_id, MAX_ATTRIBUTE_BYTES).to_string());
        }
        attributes
    }

    #[allow(clippy::type_complexity)]
    fn try_row(
        &self,
        delivery: &Delivery,
    ) -> Result<(String, StagedRow, i64), (DeadLetterReason, String, Option<String>, Option<String>)> {
        let table_attr = delivery.attributes.get(attr::TABLE).cloned();
        if let Some(reason) = delivery.attributes.get(attr::POISON_REASON) {
            let detail = delivery.attributes.get(attr::POISON_DETAIL).cloned().unwrap_or_default();
            return Err((
                DeadLetterReason::parse(reason).unwrap_or(DeadLetterReason::Decode),
                detail,
                table_attr,
                None,
            ));
        }
        if delivery.data.len() > self.max_event_bytes {
            let detail = format!(
                "message of {} bytes exceeds worker.max_event_bytes = {}",
                delivery.data.len(),
                self.max_event_bytes
            );
            return Err((
                DeadLetterReason::Oversize,
                detail,
                table_attr,
                delivery.attributes.get(attr::EVENT_ID).cloned(),
            ));
        }
        let event = decode(&delivery.data).map_err(|e| {
            let (table, event_id) = salvage_identity(&delivery.data);
            (DeadLetterReason::Decode, e.to_string(), table_attr.clone().or(table), event_id)
        })?;
        let event_id = Some(event.event_id.clone());
        let table_name = event.table.to_string();
        let fail = |reason, detail: String| (reason, detail, Some(table_name.clone()), event_id.clone());
        let Some(schema) = self.catalog.get(&table_name) else {
            return Err(fail(
                DeadLetterReason::UnknownTable,
                format!("table `{table_name}` has no schema file (schemas/{table_name}.json)"),
            ));
        };
        match (schema.write_mode, event.op) {
            (WriteMode::Append, Op::Insert) | (WriteMode::Upsert, Op::Upsert | Op::Delete) => {}
            (mode, op) => {
                return Err(fail(
                    DeadLetterReason::Schema,
                    format!("op `{op:?}` does not apply to table `{table_name}` (write_mode {mode:?})").to_lowercase(),
                ))
            }
        }
        let mut cells = coerce_row(schema, &event.payload, event.op == Op::Delete)
            .map_err(|e| fail(DeadLetterReason::Schema, e.0))?;
        if let Some(key) = &event.key {
            for (column, value) in key {
                let payload_value = event.payload.get(column);
                if schema.primary_key.contains(column) && payload_value.is_some_and(|p| p != value) {
                    return Err(fail(
                        DeadLetterReason::Schema,
                        format!("key `{column}` is {value} but the payload says {}", payload_value.expect("checked")),
                    ));
                }
            }
        }
        if event.op == Op::Delete {
            // A tombstone keeps only its key and version; the other columns are cleared.
            for (cell, column) in cells.iter_mut().zip(&schema.columns) {
                if !schema.primary_key.contains(&column.name) && schema.version_column.as_deref() != Some(&column.name)
                {
                    *cell = CellValue::Null;
                }
            }
            for key in &schema.primary_key {
                let index = schema.column_index(key).expect("checked key");
                if cells[index] == CellValue::Null {
                    let from_key = event.key.as_ref().and_then(|k| k.get(key));
                    cells[index] = crate::schema::coerce_value(&schema.columns[index], from_key, false)
                        .map_err(|e| fail(DeadLetterReason::Schema, e.0))?;
                }
            }
        }
        let row = StagedRow { event_id: event.event_id, op: event.op, version: event.version, cells };
        Ok((table_name, row, event.produced_micros))
    }

    /// The `dead_letters` row for a delivery; its id is derived from the bytes and the reason, so a
    /// re-delivered poison message lands as one dead letter.
    pub fn dead_letter_row(&self, delivery: &Delivery, dead: &DeadLetter) -> StagedRow {
        let (reason, detail) = (dead.reason, dead.detail.as_str());
        let (table, event_id) = (dead.table.as_deref(), dead.event_id.as_deref());
        // A replayed dead letter that fails again is a new dead letter (its lineage differs), but
        // the same replay failing twice is one.
        let dead_letter_id = match delivery.attributes.get(attr::REPLAY_OF) {
            Some(original) => derive_event_id(&[&delivery.data, reason.as_str().as_bytes(), original.as_bytes()]),
            None => derive_event_id(&[&delivery.data, reason.as_str().as_bytes()]),
        };
        let now = chrono::Utc::now().timestamp_micros();
        let first_failed = first_failed_micros(delivery);
        let attempts = attempts_of(delivery);
        let source = delivery.attributes.get(attr::SOURCE).cloned();
        let text = |s: Option<&str>| s.map_or(CellValue::Null, |s| CellValue::String(s.to_string()));
        let value_of = |column: &str| -> CellValue {
            match column {
                "dead_letter_id" => CellValue::String(dead_letter_id.clone()),
                "event_id" => text(event_id),
                "table_name" => text(table),
                "reason" => CellValue::String(reason.as_str().into()),
                "detail" => CellValue::String(detail.into()),
                "source" => text(source.as_deref()),
                "message" => CellValue::String(String::from_utf8_lossy(&delivery.data).into_owned()),
                "message_bytes" => CellValue::Bytes(delivery.data.clone()),
                "attributes" => {
                    CellValue::JsonText(serde_json::to_string(&delivery.attributes).unwrap_or_else(|_| "{}".into()))
                }
                "delivery_attempts" => CellValue::Int64(attempts),
                "first_failed_at" => CellValue::Timestamp(first_failed),
                "last_failed_at" => CellValue::Timestamp(now),
                "bqsync_version" => CellValue::String(env!("CARGO_PKG_VERSION").into()),
                _ => CellValue::Null,
            }
        };
        let cells = match self.catalog.get(DEAD_LETTER_TABLE) {
            Some(schema) => schema.columns.iter().map(|c| value_of(&c.name)).collect(),
            None => Vec::new(),
        };
        StagedRow { event_id: dead_letter_id, op: Op::Insert, version: None, cells }
    }
}

/// Deliveries a message had: as recorded on a dead letter (by bqsync or by Pub/Sub's policy), else
/// this delivery's attempt.
fn attempts_of(delivery: &Delivery) -> i64 {
    [attr::DEAD_LETTER_ATTEMPTS, attr::PUBSUB_DELIVERY_COUNT]
        .iter()
        .find_map(|name| delivery.attributes.get(*name).and_then(|v| v.parse().ok()))
        .unwrap_or(delivery.delivery_attempt as i64)
}

fn first_failed_micros(delivery: &Delivery) -> i64 {
    delivery
        .attributes
        .get(attr::DEAD_LETTER_FIRST_ATTEMPT_MICROS)
        .and_then(|v| v.parse().ok())
        .unwrap_or(delivery.first_attempt_micros)
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Table and event id of a body that is JSON but not a valid envelope, so its dead letter is filed
/// under the right table. The table name is kept only if it is a valid identifier.
fn salvage_identity(data: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(serde_json::Value::Object(body)) = serde_json::from_slice::<serde_json::Value>(data) else {
        return (None, None);
    };
    let text = |name: &str| body.get(name).and_then(|v| v.as_str()).map(str::to_string);
    (text("table").filter(|t| crate::schema::is_valid_identifier(t)), text("event_id"))
}
