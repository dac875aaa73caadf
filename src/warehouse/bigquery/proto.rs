//! Rows as protocol buffers for the Storage Write API: the writer schema (a `DescriptorProto` built
//! from the landing table's fields) and each row's bytes.
//!
//! Why protobuf and not Arrow: BigQuery's change data capture (the `cdc` table option) accepts only
//! protobuf rows on the default stream, and both encodings are the same work here. Why encoded by
//! hand with prost's wire primitives: the row type is known only at run time (from `schemas/`), and
//! a dynamic-message crate would add a descriptor pool and reflection for what is a dozen lines of
//! tag-length-value writing.
//!
//! Types follow Google's "Supported protocol buffer data types" for the Storage Write API: STRING,
//! NUMERIC and JSON as `string`; INT64 as `int64`; FLOAT64 as `double`; BOOL as `bool`; BYTES as
//! `bytes`; TIMESTAMP as `int64` microseconds since the epoch; DATE as `int32` days since the epoch;
//! RECORD as a nested message; REPEATED as a repeated field. Fields are proto2 `optional`: a NULL is
//! an absent field.

use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto};
use serde_json::Value;

use super::cdc::{change_type, sequence_number, CHANGE_SEQUENCE_NUMBER, CHANGE_TYPE};
use super::sql::{canonical_type, ABSENT, DELETED, EVENT_ID, LANDED_AT, VERSION};
use crate::batch::StagedRow;
use crate::envelope::Op;
use crate::schema::{CdcDeletes, CellValue};

/// How one column is written.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Text,
    Int64,
    Double,
    Bool,
    Timestamp,
    Date,
    Bytes,
    Record(Vec<FieldCodec>),
}

#[derive(Debug, Clone, PartialEq)]
struct FieldCodec {
    name: String,
    number: u32,
    kind: Kind,
    repeated: bool,
}

/// The writer schema and row encoder of one landing table.
#[derive(Debug, Clone)]
pub struct RowCodec {
    descriptor: DescriptorProto,
    user: Vec<FieldCodec>,
    /// Field numbers of event id, version, tombstone and landing time.
    system: [u32; 4],
    /// CDC tables: the pseudo-columns' field numbers and how deletes are written.
    cdc: Option<CdcColumns>,
    /// Patch tables: the field number of `_bqsync_absent` and the schema's column names.
    absent: Option<(u32, Vec<String>)>,
}

#[derive(Debug, Clone, Copy)]
struct CdcColumns {
    change_type: u32,
    sequence_number: u32,
    deletes: CdcDeletes,
}

fn type_name(field: &TableFieldSchema) -> String {
    let name = serde_json::to_value(&field.r#type).ok().and_then(|v| v.as_str().map(str::to_string));
    canonical_type(&name.unwrap_or_default()).to_string()
}

fn codec(field: &TableFieldSchema, number: u32) -> FieldCodec {
    let kind = match type_name(field).as_str() {
        "INTEGER" => Kind::Int64,
        "FLOAT" => Kind::Double,
        "BOOLEAN" => Kind::Bool,
        "TIMESTAMP" => Kind::Timestamp,
        "DATE" => Kind::Date,
        "BYTES" => Kind::Bytes,
        "RECORD" => {
            Kind::Record(field.fields.iter().flatten().enumerate().map(|(i, f)| codec(f, i as u32 + 1)).collect())
        }
        // STRING, NUMERIC, BIGNUMERIC, JSON, and anything newer: text, which BigQuery converts.
        _ => Kind::Text,
    };
    FieldCodec { name: field.name.clone(), number, kind, repeated: field.mode.as_deref() == Some("REPEATED") }
}

fn descriptor(name: &str, fields: &[FieldCodec]) -> DescriptorProto {
    let mut message = DescriptorProto { name: Some(name.into()), ..Default::default() };
    for f in fields {
        let (proto_type, type_name) = match &f.kind {
            Kind::Text => (Type::String, None),
            Kind::Int64 | Kind::Timestamp => (Type::Int64, None),
            Kind::Double => (Type::Double, None),
            Kind::Bool => (Type::Bool, None),
            Kind::Date => (Type::Int32, None),
            Kind::Bytes => (Type::Bytes, None),
            Kind::Record(sub) => {
                let nested = format!("Rec_{}", f.name);
                message.nested_type.push(descriptor(&nested, sub));
                (Type::Message, Some(nested))
            }
        };
        message.field.push(FieldDescriptorProto {
            name: Some(f.name.clone()),
            number: Some(f.number as i32),
            label: Some(if f.repeated { Label::Repeated } else { Label::Optional } as i32),
            r#type: Some(proto_type as i32),
            type_name,
            ..Default::default()
        });
    }
    message
}

impl RowCodec {
    /// The codec of a landing table whose user columns are `user_fields` (in the order of the
    /// table's schema columns), followed by the system columns.
    pub fn new(user_fields: &[TableFieldSchema]) -> RowCodec {
        let user: Vec<FieldCodec> = user_fields.iter().enumerate().map(|(i, f)| codec(f, i as u32 + 1)).collect();
        let n = user.len() as u32;
        let system = [n + 1, n + 2, n + 3, n + 4];
        let system_codecs =
            [(EVENT_ID, Kind::Text), (VERSION, Kind::Int64), (DELETED, Kind::Bool), (LANDED_AT, Kind::Timestamp)]
                .into_iter()
                .zip(system)
                .map(|((name, kind), number)| FieldCodec { name: name.into(), number, kind, repeated: false });
        let all: Vec<FieldCodec> = user.iter().cloned().chain(system_codecs).collect();
        RowCodec { descriptor: descriptor("LandingRow", &all), user, system, cdc: None, absent: None }
    }

    /// This codec writing CDC changes: each row also carries `_CHANGE_TYPE` and
    /// `_CHANGE_SEQUENCE_NUMBER` (see [`super::cdc`]), as proto `string` fields after the others.
    pub fn with_cdc(mut self, deletes: CdcDeletes) -> RowCodec {
        let next = self.system[3] + 1;
        let cdc = CdcColumns { change_type: next, sequence_number: next + 1, deletes };
        for (name, number) in [(CHANGE_TYPE, cdc.change_type), (CHANGE_SEQUENCE_NUMBER, cdc.sequence_number)] {
            self.descriptor.field.push(FieldDescriptorProto {
                name: Some(name.into()),
                number: Some(number as i32),
                label: Some(Label::Optional as i32),
                r#type: Some(Type::String as i32),
                ..Default::default()
            });
        }
        self.cdc = Some(cdc);
        self
    }

    /// This codec writing a patch table's landing rows: each row also carries the names of the
    /// columns its record did not carry (`_bqsync_absent`, a repeated `string` after the others).
    /// `columns`: the schema's column names, which [`StagedRow::absent`] indexes.
    pub fn with_absent(mut self, columns: Vec<String>) -> RowCodec {
        let number = self.descriptor.field.iter().filter_map(|f| f.number).max().unwrap_or(0) as u32 + 1;
        self.descriptor.field.push(FieldDescriptorProto {
            name: Some(ABSENT.into()),
            number: Some(number as i32),
            label: Some(Label::Repeated as i32),
            r#type: Some(Type::String as i32),
            ..Default::default()
        });
        self.absent = Some((number, columns));
        self
    }

    /// The writer schema sent with the first request of a connection.
    pub fn descriptor(&self) -> &DescriptorProto {
        &self.descriptor
    }

    /// One row's bytes without its landing time (each attempt [`RowCodec::stamp`]s it); `Err` names
    /// the column whose value cannot be written (the row is then dead-lettered, not the batch failed).
    pub fn encode(&self, row: &StagedRow) -> Result<Vec<u8>, String> {
        let mut buf = Vec::with_capacity(64 + row.cells.len() * 16);
        for (field, cell) in self.user.iter().zip(&row.cells) {
            encode_cell(field, cell, &mut buf).map_err(|e| format!("column `{}`: {e}", field.name))?;
        }
        let [event_id, version, deleted, _] = self.system;
        put_bytes(event_id, row.event_id.as_bytes(), &mut buf);
        if let Some(v) = row.version {
            put_varint(version, v as u64, &mut buf);
        }
        put_varint(deleted, u64::from(row.op == Op::Delete), &mut buf);
        if let Some((number, columns)) = &self.absent {
            for name in row.absent.iter().filter_map(|&i| columns.get(i)) {
                put_bytes(*number, name.as_bytes(), &mut buf);
            }
        }
        if let Some(cdc) = self.cdc {
            put_bytes(cdc.change_type, change_type(row.op, cdc.deletes).as_bytes(), &mut buf);
            let sequence = sequence_number(row.version, row.op == Op::Delete, &row.event_id);
            put_bytes(cdc.sequence_number, sequence.as_bytes(), &mut buf);
        }
        Ok(buf)
    }

    /// `encoded` with the landing time appended (a field may come in any order on the wire).
    pub fn stamp(&self, encoded: &[u8], landed_at_micros: i64) -> Vec<u8> {
        let mut buf = Vec::with_capacity(encoded.len() + 12);
        buf.extend_from_slice(encoded);
        put_varint(self.system[3], landed_at_micros as u64, &mut buf);
        buf
    }
}

fn put_varint(number: u32, value: u64, buf: &mut Vec<u8>) {
    encode_key(number, WireType::Varint, buf);
    encode_varint(value, buf);
}

fn put_bytes(number: u32, value: &[u8], buf: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

fn put_double(number: u32, value: f64, buf: &mut Vec<u8>) {
    encode_key(number, WireType::SixtyFourBit, buf);
    buf.extend_from_slice(&value.to_le_bytes());
}

fn encode_cell(field: &FieldCodec, cell: &CellValue, buf: &mut Vec<u8>) -> Result<(), String> {
    let n = field.number;
    match (cell, &field.kind) {
        (CellValue::Null, _) => {}
        (CellValue::String(s), _) => put_bytes(n, s.as_bytes(), buf),
        (CellValue::Int64(v), _) => put_varint(n, *v as u64, buf),
        (CellValue::Float64(v), _) => put_double(n, *v, buf),
        (CellValue::Bool(v), _) => put_varint(n, u64::from(*v), buf),
        (CellValue::Timestamp(micros), _) => put_varint(n, *micros as u64, buf),
        // int32 on the wire: sign-extended to 64 bits, as protobuf writes negative int32s.
        (CellValue::Date(days), _) => put_varint(n, i64::from(*days) as u64, buf),
        (CellValue::Bytes(bytes), _) => put_bytes(n, bytes, buf),
        (CellValue::JsonText(text), Kind::Text) if !field.repeated => put_bytes(n, text.as_bytes(), buf),
        (CellValue::JsonText(text), _) => {
            let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
            encode_json(field, &value, buf)?;
        }
    }
    Ok(())
}

/// A JSON value (RECORD and REPEATED columns, and their sub-fields) as the field's wire form.
fn encode_json(field: &FieldCodec, value: &Value, buf: &mut Vec<u8>) -> Result<(), String> {
    if value.is_null() {
        return Ok(());
    }
    if field.repeated {
        let items = value.as_array().ok_or_else(|| format!("expected an array, got {value}"))?;
        let single = FieldCodec { repeated: false, ..field.clone() };
        for item in items {
            if item.is_null() {
                return Err("an array element is null (BigQuery arrays hold no NULLs)".into());
            }
            encode_json(&single, item, buf)?;
        }
        return Ok(());
    }
    let n = field.number;
    let wrong = || format!("`{}` cannot hold {value}", field.name);
    match &field.kind {
        Kind::Text => match value {
            Value::String(s) => put_bytes(n, s.as_bytes(), buf),
            other => put_bytes(n, other.to_string().as_bytes(), buf),
        },
        Kind::Int64 => {
            let v = match value {
                Value::Number(num) => num.as_i64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            };
            put_varint(n, v.ok_or_else(wrong)? as u64, buf);
        }
        Kind::Double => {
            let v = match value {
                Value::Number(num) => num.as_f64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            };
            put_double(n, v.ok_or_else(wrong)?, buf);
        }
        Kind::Bool => put_varint(n, u64::from(value.as_bool().ok_or_else(wrong)?), buf),
        Kind::Timestamp => {
            let micros = match value {
                Value::Number(num) => num.as_i64(),
                Value::String(s) => chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_micros()),
                _ => None,
            };
            put_varint(n, micros.ok_or_else(wrong)? as u64, buf);
        }
        Kind::Date => {
            let days = value
                .as_str()
                .and_then(|s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
                .map(|d| i64::from(d.signed_duration_since(chrono::NaiveDate::default()).num_days() as i32));
            put_varint(n, days.ok_or_else(wrong)? as u64, buf);
        }
        Kind::Bytes => {
            let bytes = value.as_str().and_then(crate::schema::decode_base64).ok_or_else(wrong)?;
            put_bytes(n, &bytes, buf);
        }
        Kind::Record(sub) => {
            let object = value.as_object().ok_or_else(wrong)?;
            let mut inner = Vec::new();
            for f in sub {
                if let Some(v) = object.get(&f.name) {
                    encode_json(f, v, &mut inner).map_err(|e| format!("{}.{e}", field.name))?;
                }
            }
            put_bytes(n, &inner, buf);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcp_bigquery_client::model::field_type::FieldType;

    fn field(name: &str, kind: FieldType, mode: &str) -> TableFieldSchema {
        let mut f = TableFieldSchema::new(name, kind);
        f.mode = Some(mode.into());
        f
    }

    fn row(cells: Vec<CellValue>, op: Op, version: Option<i64>) -> StagedRow {
        StagedRow::whole("e1".into(), op, version, cells)
    }

    /// Bytes computed by hand from the protobuf encoding rules (key = number << 3 | wire type).
    #[test]
    fn rows_encode_to_the_expected_wire_bytes() {
        let codec = RowCodec::new(&[
            field("name", FieldType::String, "NULLABLE"),
            field("n", FieldType::Integer, "NULLABLE"),
            field("x", FieldType::Float, "NULLABLE"),
            field("day", FieldType::Date, "NULLABLE"),
        ]);
        let cells =
            vec![CellValue::String("ab".into()), CellValue::Int64(-1), CellValue::Float64(1.0), CellValue::Date(-1)];
        let bytes = codec.stamp(&codec.encode(&row(cells, Op::Upsert, Some(300))).unwrap(), 1);
        let mut want = vec![0x0a, 2, b'a', b'b']; // 1: "ab"
        want.push(0x10); // 2: varint -1 as ten bytes
        want.extend([0xff; 9]);
        want.push(0x01);
        want.push(0x19); // 3: fixed64 1.0
        want.extend(1.0f64.to_le_bytes());
        want.push(0x20); // 4: int32 -1, sign-extended
        want.extend([0xff; 9]);
        want.push(0x01);
        want.extend([0x2a, 2, b'e', b'1']); // 5: event id
        want.extend([0x30, 0xac, 0x02]); // 6: version 300
        want.extend([0x38, 0x00]); // 7: not deleted
        want.extend([0x40, 0x01]); // 8: landed at 1 µs
        assert_eq!(bytes, want);
        // NULL cells and a missing version are absent fields; a delete sets the tombstone.
        let bytes = codec.stamp(&codec.encode(&row(vec![CellValue::Null; 4], Op::Delete, None)).unwrap(), 0);
        assert_eq!(bytes, [0x2a, 2, b'e', b'1', 0x38, 0x01, 0x40, 0x00]);
    }

    /// A patch row names the columns it did not carry in field 7 (after the four system fields), once
    /// each; a whole row writes nothing there.
    #[test]
    fn patch_rows_carry_the_names_of_their_absent_columns() {
        let fields = [field("a", FieldType::String, "NULLABLE"), field("b", FieldType::String, "NULLABLE")];
        let codec = RowCodec::new(&fields).with_absent(vec!["a".into(), "b".into()]);
        let absent = codec.descriptor().field.last().unwrap();
        assert_eq!((absent.name.as_deref(), absent.number, absent.label), (Some(ABSENT), Some(7), Some(3)));
        let mut patch = row(vec![CellValue::Null, CellValue::String("x".into())], Op::Upsert, Some(1));
        patch.absent = vec![0];
        let bytes = codec.encode(&patch).unwrap();
        assert!(bytes.ends_with(&[0x3a, 1, b'a']), "{bytes:x?}");
        let whole = row(vec![CellValue::Null, CellValue::Null], Op::Upsert, Some(1));
        assert_eq!(codec.encode(&whole).unwrap(), RowCodec::new(&fields).encode(&whole).unwrap());
    }

    /// The CDC tail, by hand: field 9 (key 0x4a) "UPSERT", field 10 (key 0x52) the 52-byte sequence
    /// number; the row before it is byte for byte the landing row, so the emulator test of those
    /// rows covers the rest of a CDC request.
    #[test]
    fn cdc_rows_are_landing_rows_plus_the_two_pseudo_columns() {
        let fields = [
            field("name", FieldType::String, "NULLABLE"),
            field("n", FieldType::Integer, "NULLABLE"),
            field("x", FieldType::Float, "NULLABLE"),
            field("day", FieldType::Date, "NULLABLE"),
        ];
        let plain = RowCodec::new(&fields);
        let cdc = RowCodec::new(&fields).with_cdc(CdcDeletes::Delete);
        let upsert = row(
            vec![CellValue::String("ab".into()), CellValue::Null, CellValue::Null, CellValue::Null],
            Op::Upsert,
            Some(300),
        );
        let base = plain.encode(&upsert).unwrap();
        let bytes = cdc.encode(&upsert).unwrap();
        let mut want = base.clone();
        want.extend([0x4a, 6]);
        want.extend(b"UPSERT");
        want.extend([0x52, 52]);
        want.extend(b"800000000000012C/0/6531000000000000/0000000000000000");
        assert_eq!(bytes, want);
        let delete = cdc.encode(&row(vec![CellValue::Null; 4], Op::Delete, Some(301))).unwrap();
        let tail = &delete[delete.len() - 62..];
        assert_eq!(&tail[..8], b"\x4a\x06DELETE");
        assert_eq!(&tail[10..], b"800000000000012D/1/6531000000000000/0000000000000000");
        let d = cdc.descriptor();
        let names: Vec<&str> = d.field.iter().map(|f| f.name()).collect();
        assert_eq!(names[8..], [CHANGE_TYPE, CHANGE_SEQUENCE_NUMBER]);
        assert_eq!((d.field[9].number(), d.field[9].r#type()), (10, Type::String));
    }

    /// `tags` (REPEATED STRING) and `who` (REPEATED RECORD of `id` STRING, `at` TIMESTAMP).
    fn nested_codec() -> RowCodec {
        let mut record = field("who", FieldType::Record, "REPEATED");
        record.fields =
            Some(vec![field("id", FieldType::String, "NULLABLE"), field("at", FieldType::Timestamp, "NULLABLE")]);
        RowCodec::new(&[field("tags", FieldType::String, "REPEATED"), record])
    }

    #[test]
    fn the_descriptor_names_each_column_with_its_storage_type() {
        let codec = nested_codec();
        let d = codec.descriptor();
        let names: Vec<&str> = d.field.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["tags", "who", EVENT_ID, VERSION, DELETED, LANDED_AT]);
        assert_eq!(d.field[0].label(), Label::Repeated);
        assert_eq!(d.field[1].r#type(), Type::Message);
        assert_eq!(d.field[1].type_name(), "Rec_who");
        assert_eq!(d.nested_type[0].field[1].r#type(), Type::Int64, "TIMESTAMP is int64 micros");
        assert_eq!(d.field[5].r#type(), Type::Int64);
        assert_eq!(d.field[4].r#type(), Type::Bool);
    }

    #[test]
    fn repeated_and_record_values_encode_from_their_json() {
        let codec = nested_codec();
        let cells = vec![
            CellValue::JsonText(r#"["a","b"]"#.into()),
            CellValue::JsonText(r#"[{"id":"x","at":"1970-01-01T00:00:00.000002Z"}]"#.into()),
        ];
        let bytes = codec.encode(&row(cells, Op::Insert, None)).unwrap();
        let mut want = vec![0x0a, 1, b'a', 0x0a, 1, b'b'];
        want.extend([0x12, 5, 0x0a, 1, b'x', 0x10, 0x02]);
        assert_eq!(&bytes[..want.len()], &want[..]);
        let bad = codec.encode(&row(vec![CellValue::JsonText("[null]".into()), CellValue::Null], Op::Insert, None));
        assert!(bad.unwrap_err().contains("column `tags`: an array element is null"));
    }
}
