//! bqsync: gets local and operational data into a warehouse (BigQuery in production, an embedded
//! DuckDB on one machine) in near real time, exactly once in effect.
//!
//! Data flow, one module a stage: [`sources`] (watch where data appears, publish change events) →
//! [`bus`] (durable, leased delivery) → [`worker`] (batch per table, land, ack after commit) →
//! [`warehouse`] (idempotent landing). [`envelope`] is the event format, [`schema`] the table
//! definitions, [`config`] the user's settings, [`pipeline`] wires them together; [`dlq`] reads and
//! replays the dead letters.
//!
//! Exactly once in effect: producers derive deterministic event ids and checkpoint after the bus
//! accepted; the bus redelivers until acked; workers ack only after the warehouse committed; the
//! warehouse deduplicates on event id (append) or keeps the highest version per key (upsert). Every
//! failure point therefore leads to redelivery, and every redelivery to a no-op.

// With neither backend feature only the library's parsers and types build (the fuzz targets use
// that): the plumbing between them is then unused.
#![cfg_attr(not(any(feature = "embedded", feature = "gcp")), allow(dead_code))]

pub mod ack;
pub mod admin;
pub mod batch;
pub mod bus;
pub mod config;
pub mod dead_letter;
pub mod dlq;
pub mod envelope;
pub mod features;
pub mod gcp;
#[cfg(feature = "gcp")]
pub mod gcs;
#[cfg(feature = "gcp")]
pub mod infra;
#[cfg(feature = "gcp")]
pub mod load;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod retry;
pub mod schema;
pub mod shutdown;
pub mod sources;
pub mod status;
pub mod warehouse;
pub mod worker;
