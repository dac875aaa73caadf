//! Logs: human-readable on a terminal, or one JSON object a line in the shape Google Cloud Logging
//! reads (`severity`, `message`, `time`, `logging.googleapis.com/spanId`, the event's fields).
//!
//! `BQSYNC_LOG` sets the level filter (default `info`); `BQSYNC_LOG_FORMAT` is `text`, `json`, or
//! `auto` (default: JSON inside Kubernetes, text elsewhere). A value of either that means nothing is
//! refused at start, rather than silently falling back to the default. Text logs are coloured only
//! when stderr is a terminal and `NO_COLOR` is unset or empty (<https://no-color.org>), so a
//! redirected log file holds plain text.
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans (one per landed batch, among others) and the
//! metrics of [`crate::metrics`] are also exported over OTLP/HTTP (protobuf); the standard `OTEL_*`
//! variables apply (`OTEL_SERVICE_NAME`, `OTEL_METRIC_EXPORT_INTERVAL`, headers, …).
//!
//! Why a JSON layer of its own (about 60 lines): `tracing-subscriber`'s `json` formatter can put the
//! message and fields at the top level (`flatten_event`), but it names the level `level`, with
//! tracing's names, where Cloud Logging reads only `severity` with its own (`WARNING`, not `WARN`);
//! and it cannot add the exported OpenTelemetry trace and span ids under the
//! `logging.googleapis.com/trace` and `…/spanId` keys that link a log line to its trace. Everything
//! else (filtering, spans, the text format) is `tracing-subscriber`'s.

use std::io::{IsTerminal, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// A logging variable set to a value that means nothing.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value:?}: {problem}")]
pub struct LogSettingError {
    variable: &'static str,
    value: String,
    problem: String,
}

/// The level filter of `BQSYNC_LOG` (unset or empty: `info`).
///
/// tracing's filter syntax takes any bare word as a target name, so `BQSYNC_LOG=verbose` would be
/// accepted and log nothing of bqsync's. A bare word must therefore be a level or name a bqsync module.
fn level_filter(value: Option<String>) -> Result<tracing_subscriber::EnvFilter, LogSettingError> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(tracing_subscriber::EnvFilter::new("info"));
    };
    let refuse = |problem: String| LogSettingError { variable: "BQSYNC_LOG", value: value.clone(), problem };
    let hint = "use a level (trace, debug, info, warn, error, off) or directives such as `info,bqsync::bus=trace`";
    for directive in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains('=') && !directive.contains('[');
        let level = directive.parse::<tracing_subscriber::filter::LevelFilter>().is_ok();
        if bare && !level && !directive.starts_with("bqsync") {
            return Err(refuse(format!("`{directive}` is not a level; {hint}")));
        }
    }
    tracing_subscriber::EnvFilter::builder().parse(&value).map_err(|e| refuse(format!("{e}; {hint}")))
}

/// Whether logs are JSON, from `BQSYNC_LOG_FORMAT` (unset, empty or `auto`: JSON inside Kubernetes).
fn json_format(value: Option<String>, in_kubernetes: bool) -> Result<bool, LogSettingError> {
    match value.as_deref().map(str::trim) {
        None | Some("") | Some("auto") => Ok(in_kubernetes),
        Some("json") => Ok(true),
        Some("text") => Ok(false),
        Some(_) => Err(LogSettingError {
            variable: "BQSYNC_LOG_FORMAT",
            value: value.unwrap_or_default(),
            problem: "expected `text`, `json` or `auto`".into(),
        }),
    }
}

/// Whether text logs are coloured: only on a terminal, and never with `NO_COLOR` set (non-empty).
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber; refuses values of `BQSYNC_LOG` and `BQSYNC_LOG_FORMAT` that mean
/// nothing.
pub fn init() -> Result<(), LogSettingError> {
    let filter = level_filter(std::env::var("BQSYNC_LOG").ok())?;
    let json =
        json_format(std::env::var("BQSYNC_LOG_FORMAT").ok(), std::env::var_os("KUBERNETES_SERVICE_HOST").is_some())?;
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"));
    let _ = JSON_LOGS.set(json);
    let otel = otlp_layer();
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    if json {
        registry.with(JsonLayer).init();
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)).init();
    }
    Ok(())
}

/// Whether logs are JSON lines (set once by [`init`]).
static JSON_LOGS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether logs are JSON lines: progress bars then stay hidden (see [`crate::progress`]).
pub fn json_logs() -> bool {
    JSON_LOGS.get().copied().unwrap_or(false)
}

/// The OTLP providers, kept to flush them at exit.
static PROVIDERS: std::sync::OnceLock<(
    opentelemetry_sdk::trace::SdkTracerProvider,
    opentelemetry_sdk::metrics::SdkMeterProvider,
)> = std::sync::OnceLock::new();

/// Spans and metrics over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
fn otlp_layer<S: Subscriber + for<'a> LookupSpan<'a>>() -> Option<impl Layer<S>> {
    use opentelemetry::trace::TracerProvider as _;
    std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    // The exporter's HTTP client (reqwest, rustls without a built-in provider) needs one installed.
    crate::gcp::install_crypto_provider();
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "bqsync".into());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    let spans = match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("bqsync: OTLP span exporter not started: {e}");
            return None;
        }
    };
    let metrics = match opentelemetry_otlp::MetricExporter::builder().with_http().build() {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("bqsync: OTLP metric exporter not started: {e}");
            return None;
        }
    };
    let tracer_provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();
    let meter_provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_periodic_exporter(metrics)
        .with_resource(resource)
        .build();
    register_metrics(&meter_provider);
    let tracer = tracer_provider.tracer("bqsync");
    let _ = PROVIDERS.set((tracer_provider, meter_provider));
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// One observable gauge per registry metric, read at each export.
fn register_metrics(provider: &opentelemetry_sdk::metrics::SdkMeterProvider) {
    use opentelemetry::metrics::MeterProvider as _;
    let meter = provider.meter("bqsync");
    let names = [
        "bqsync.events_in",
        "bqsync.rows_landed",
        "bqsync.rows_offered",
        "bqsync.dead_letters",
        "bqsync.events_published",
        "bqsync.redeliveries",
        "bqsync.flushes",
        "bqsync.outstanding_messages",
        "bqsync.bigquery_bytes_billed",
    ];
    for name in names {
        // Instruments live as long as the provider; the handle itself is not needed.
        let _gauge = meter
            .f64_observable_gauge(name)
            .with_callback(move |observer| {
                for (sample, labels, value) in crate::metrics::global().samples() {
                    if sample == name {
                        let attributes: Vec<opentelemetry::KeyValue> =
                            labels.into_iter().map(|(k, v)| opentelemetry::KeyValue::new(k, v)).collect();
                        observer.observe(value, &attributes);
                    }
                }
            })
            .build();
    }
}

/// The OpenTelemetry trace and span ids of a tracing span, when spans are exported.
fn otel_ids(id: &tracing::span::Id) -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt as _;
    PROVIDERS.get()?;
    let context = tracing::dispatcher::get_default(|dispatch| tracing_opentelemetry::get_otel_context(id, dispatch))?;
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
}

/// Flushes spans and metrics still buffered for OTLP (call before exit).
pub fn shutdown() {
    if let Some((tracer, meter)) = PROVIDERS.get() {
        let _ = tracer.force_flush();
        let _ = meter.force_flush();
        let _ = tracer.shutdown();
        let _ = meter.shutdown();
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
            line.insert("span".into(), span.name().into());
            match otel_ids(&span.id()) {
                // Exported to OTLP: the ids Cloud Trace knows, so the log entry links to the trace.
                Some((trace_id, span_id)) => {
                    let trace = match std::env::var("GOOGLE_CLOUD_PROJECT") {
                        Ok(project) => format!("projects/{project}/traces/{trace_id}"),
                        Err(_) => trace_id,
                    };
                    line.insert("logging.googleapis.com/trace".into(), trace.into());
                    line.insert("logging.googleapis.com/spanId".into(), span_id.into());
                }
                None => {
                    line.insert(
                        "logging.googleapis.com/spanId".into(),
                        format!("{:016x}", span.id().into_u64()).into(),
                    );
                }
            }
        }
        line.extend(fields.0);
        let mut text = serde_json::to_vec(&serde_json::Value::Object(line)).unwrap_or_default();
        text.push(b'\n');
        let _ = std::io::stderr().lock().write_all(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_and_directives_are_taken_and_bare_words_that_are_no_level_are_refused() {
        for good in [None, Some(""), Some("debug"), Some("WARN"), Some("info,bqsync::bus=trace"), Some("bqsync=debug")]
        {
            assert!(level_filter(good.map(String::from)).is_ok(), "{good:?}");
        }
        let error = level_filter(Some("verbose".into())).unwrap_err().to_string();
        assert!(error.starts_with("BQSYNC_LOG=\"verbose\": `verbose` is not a level"), "{error}");
        assert!(level_filter(Some("info,bqsync=loud".into())).is_err());
    }

    #[test]
    fn log_format_is_text_json_or_auto_and_nothing_else() {
        assert!(!json_format(None, false).unwrap());
        assert!(json_format(None, true).unwrap());
        assert!(json_format(Some("auto".into()), true).unwrap());
        assert!(json_format(Some("json".into()), false).unwrap());
        assert!(!json_format(Some("text".into()), true).unwrap());
        let error = json_format(Some("xml".into()), false).unwrap_err().to_string();
        assert_eq!(error, "BQSYNC_LOG_FORMAT=\"xml\": expected `text`, `json` or `auto`");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
