//! Logs: human-readable on a terminal, or one JSON object a line in the shape Google Cloud Logging
//! reads (`severity`, `message`, `time`, `logging.googleapis.com/spanId`, the event's fields).
//!
//! `BQSYNC_LOG` sets the level filter (default `info`); `BQSYNC_LOG_FORMAT` is `text`, `json`, or
//! `auto` (default: JSON inside Kubernetes, text elsewhere). The JSON layer is hand-written because
//! `tracing-subscriber`'s JSON format nests the message under `fields`, where Cloud Logging does not
//! look for it.

use std::io::Write;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Installs the global subscriber.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BQSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match std::env::var("BQSYNC_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(JsonLayer).init();
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).init();
    }
}

/// Cloud Logging's severity names.
fn severity(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::ERROR => "ERROR",
        tracing::Level::WARN => "WARNING",
        tracing::Level::INFO => "INFO",
        tracing::Level::DEBUG | tracing::Level::TRACE => "DEBUG",
    }
}

struct JsonLayer;

#[derive(Default)]
struct Fields(serde_json::Map<String, serde_json::Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for JsonLayer {
    fn on_event(&self, event: &Event<'_>, context: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = serde_json::Map::new();
        line.insert("severity".into(), severity(event.metadata().level()).into());
        line.insert("message".into(), fields.0.remove("message").unwrap_or_default());
        line.insert("time".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        line.insert("target".into(), event.metadata().target().into());
        if let Some(span) = context.event_span(event) {
            line.insert("logging.googleapis.com/spanId".into(), format!("{:016x}", span.id().into_u64()).into());
            line.insert("span".into(), span.name().into());
        }
        line.extend(fields.0);
        let mut text = serde_json::to_vec(&serde_json::Value::Object(line)).unwrap_or_default();
        text.push(b'\n');
        let _ = std::io::stderr().lock().write_all(&text);
    }
}
