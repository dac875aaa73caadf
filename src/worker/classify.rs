//! Turns a delivered message into either a row for its table or a dead letter with a precise reason.
//! It sees the message's bytes, attributes and delivery history, never its ack handle.

use crate::batch::{event_row, StagedRow};
use crate::dead_letter::{salvage_identity, DeadLetter, DeadLetterReason};
use crate::envelope::decode;
use crate::message::{attr, Message};
use crate::schema::Catalog;

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

/// Classifies deliveries against the catalog.
pub struct Classifier<'a> {
    pub catalog: &'a Catalog,
    pub max_event_bytes: usize,
}

impl Classifier<'_> {
    /// A message from the main subscription.
    pub fn classify(&self, message: Message<'_>) -> Classified {
        match self.try_row(message) {
            Ok((table, row, produced_micros)) => Classified::Row { table, row, produced_micros },
            Err((reason, detail, table, event_id)) => {
                Classified::DeadLetter(DeadLetter { reason, detail, table, event_id })
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn try_row(
        &self,
        message: Message<'_>,
    ) -> Result<(String, StagedRow, i64), (DeadLetterReason, String, Option<String>, Option<String>)> {
        let table_attr = message.attributes.get(attr::TABLE).cloned();
        if let Some(reason) = message.attributes.get(attr::POISON_REASON) {
            let detail = message.attributes.get(attr::POISON_DETAIL).cloned().unwrap_or_default();
            return Err((
                DeadLetterReason::parse(reason).unwrap_or(DeadLetterReason::Decode),
                detail,
                table_attr,
                None,
            ));
        }
        if message.data.len() > self.max_event_bytes {
            let detail = format!(
                "message of {} bytes exceeds worker.max_event_bytes = {}",
                message.data.len(),
                self.max_event_bytes
            );
            return Err((
                DeadLetterReason::Oversize,
                detail,
                table_attr,
                message.attributes.get(attr::EVENT_ID).cloned(),
            ));
        }
        let event = decode(message.data).map_err(|e| {
            let (table, event_id) = salvage_identity(message.data);
            (DeadLetterReason::Decode, e.to_string(), table_attr.clone().or(table), event_id)
        })?;
        let event_id = Some(event.event_id.clone());
        let table_name = event.table.to_string();
        let fail = |reason, detail: String| (reason, detail, Some(table_name.clone()), event_id.clone());
        let Some(schema) = self.catalog.get(&table_name) else {
            return Err(fail(DeadLetterReason::UnknownTable, crate::dead_letter::unknown_table_detail(&table_name)));
        };
        let produced_micros = event.produced_micros;
        let row = event_row(schema, event.op, event.key.as_ref(), event.version, event.event_id, &event.payload)
            .map_err(|detail| fail(DeadLetterReason::Schema, detail))?;
        Ok((table_name, row, produced_micros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ChangeEvent;
    use crate::envelope::Op;
    use crate::message::Attributes;
    use crate::schema::CellValue;

    fn classify(payload: &str) -> Classified {
        let catalog = Catalog::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
        let event = ChangeEvent {
            event_id: "e1".into(),
            table: "atoms",
            op: Op::Insert,
            key: None,
            version: None,
            payload,
            source: "test",
            produced_at: "2024-01-01T00:00:00Z",
        };
        let data = event.to_bytes();
        let attributes = Attributes::new();
        let message = Message { data: &data, attributes: &attributes, delivery_attempt: 1, first_attempt_micros: 0 };
        Classifier { catalog: &catalog, max_event_bytes: 1 << 20 }.classify(message)
    }

    #[test]
    fn payload_fields_are_read_from_the_raw_message() {
        let payload = r#"{"event_id":"e1","kind":"a\"b","text":null,"score":"2.5","tags":["x"],"created_at":"1970-01-01T00:00:01Z"}"#;
        let row = match classify(payload) {
            Classified::Row { row, .. } => row,
            Classified::DeadLetter(dead) => panic!("a valid row: {dead:?}"),
        };
        assert_eq!(row.cells[0], CellValue::String("e1".into()));
        assert_eq!(row.cells[2], CellValue::String("a\"b".into()), "escapes decoded");
        assert_eq!(row.cells[3], CellValue::Null);
        assert_eq!(row.cells[4], CellValue::Float64(2.5));
        assert_eq!(row.cells[5], CellValue::JsonText("[\"x\"]".into()));
        assert_eq!(row.cells[6], CellValue::Timestamp(1_000_000));
    }

    #[test]
    fn a_number_beyond_f64_in_a_column_is_a_schema_dead_letter_not_a_panic() {
        let payload = r#"{"event_id":"e1","score":1e400,"created_at":"1970-01-01T00:00:01Z"}"#;
        let Classified::DeadLetter(dead) = classify(payload) else { panic!("dead-lettered") };
        assert_eq!(dead.reason, DeadLetterReason::Schema);
        assert!(dead.detail.contains("`score`"), "{}", dead.detail);
    }

    /// The event's id is `e1`; a payload whose id field says otherwise names the row.
    #[test]
    fn an_append_row_takes_its_id_from_its_id_field() {
        let payload = r#"{"event_id":"e2","created_at":"1970-01-01T00:00:01Z"}"#;
        let Classified::Row { row, .. } = classify(payload) else { panic!("a valid row") };
        assert_eq!(row.event_id, "e2");
        let same = r#"{"event_id":"e1","created_at":"1970-01-01T00:00:01Z"}"#;
        let Classified::Row { row, .. } = classify(same) else { panic!("a valid row") };
        assert_eq!(row.event_id, "e1");
    }
}
