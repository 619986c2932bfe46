//! Logs, traces and metrics, set up once: structured logs to stdout, metrics through
//! OpenTelemetry to Prometheus (pull) and optionally OTLP (push), traces through
//! tracing-opentelemetry to OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

pub mod disk_engine;
mod metrics;
mod span_queue;

use std::collections::HashMap;

use opentelemetry::global;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter as _};
use span_queue::{QueueProcessor, QueueSettings};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub use metrics::{Metrics, ProxyCounts};

/// The target of the request, tier and origin spans. Only the OpenTelemetry layer listens to it,
/// so without an OTLP endpoint those spans are disabled at their call site and cost nothing.
pub const TRACE_TARGET: &str = "cache_layer::trace";

/// An OpenTelemetry setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A variable holds a value we cannot use.
    #[error("invalid configuration: {var}={value:?}: expected {expected}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// An exporter could not be built.
    #[error("OpenTelemetry set-up failed: {0}")]
    Setup(String),
}

/// The longest the exit waits for spans and metrics to be flushed.
pub const FLUSH_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// The running telemetry: keep it for the life of the process and call `shutdown` at the end.
pub struct Telemetry {
    /// What `/metrics` encodes.
    pub registry: prometheus::Registry,
    /// The instruments.
    pub metrics: std::sync::Arc<Metrics>,
    meter_provider: SdkMeterProvider,
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporters.
    ///
    /// Spans and metrics are flushed side by side, and the exit waits for them at most
    /// [`FLUSH_BUDGET`] in all: a silent collector would otherwise hold it for the span flush
    /// plus the metrics exporter's own timeout (10 s), past the pod's grace period.
    pub fn shutdown(&self) {
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let mut flushing = 0;
        if let Some(tp) = self.tracer_provider.clone() {
            let done = done.clone();
            flushing += 1;
            std::thread::spawn(move || {
                let _ = tp.shutdown_with_timeout(FLUSH_BUDGET * 2);
                let _ = done.send(());
            });
        }
        let mp = self.meter_provider.clone();
        flushing += 1;
        // The providers' own timeouts are longer than the budget, so a silent collector always
        // ends in the budget below (and its log line), never in a race between two 5 s timers.
        std::thread::spawn(move || {
            let _ = mp.shutdown_with_timeout(FLUSH_BUDGET * 2);
            let _ = done.send(());
        });
        let deadline = std::time::Instant::now() + FLUSH_BUDGET;
        for _ in 0..flushing {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if finished.recv_timeout(left).is_err() {
                tracing::warn!(
                    budget_secs = FLUSH_BUDGET.as_secs(),
                    "telemetry flush abandoned: the collector did not take it in time"
                );
                return;
            }
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Which OTLP transport `OTEL_EXPORTER_OTLP_PROTOCOL` (or its per-signal variant) asks for.
fn protocol(signal_var: &'static str) -> Result<Protocol, TelemetryError> {
    let (var, value) = match env(signal_var) {
        Some(v) => (signal_var, v),
        None => (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            env("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_default(),
        ),
    };
    match value.as_str() {
        "" | "http/protobuf" => Ok(Protocol::HttpBinary),
        "grpc" => Ok(Protocol::Grpc),
        _ => Err(TelemetryError::Invalid {
            var,
            value,
            expected: "grpc or http/protobuf",
        }),
    }
}

/// Whether a signal is pushed: an endpoint is set and `OTEL_<SIGNAL>_EXPORTER` is not `none`.
fn pushes(exporter_var: &str, endpoint_var: &str) -> bool {
    let endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT")
        .or_else(|| env(endpoint_var))
        .is_some();
    endpoint && env(exporter_var).is_none_or(|v| v != "none")
}

/// The span queue's sizes from the standard `OTEL_BSP_*` variables.
fn queue_settings() -> Result<QueueSettings, TelemetryError> {
    let number = |var: &'static str, default: u64| match env(var) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(TelemetryError::Invalid {
                var,
                value: v,
                expected: "a whole number above 0",
            }),
    };
    let max_queue = number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)? as usize;
    Ok(QueueSettings {
        max_queue,
        max_batch: (number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)? as usize).min(max_queue),
        delay: std::time::Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)?),
    })
}

fn resource() -> Resource {
    let named = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name("cache-layer").build()
    }
}

/// Sets up logging (`RUST_LOG`, `LOG_FORMAT`), metrics and, when configured, OTLP push.
pub fn init(log_json: bool) -> Result<Telemetry, TelemetryError> {
    // The OTLP/HTTP exporter builds a rustls client.
    crate::tls::install_crypto_provider();
    global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = resource();
    let registry = prometheus::Registry::new();
    let meter_provider = meter_provider(&resource, &registry)?;
    let metrics = std::sync::Arc::new(Metrics::new(meter_provider.meter("cache-layer")));
    let tracer_provider = tracer_provider(resource, &metrics)?;
    install_subscriber(log_json, tracer_provider.as_ref())?;
    Ok(Telemetry {
        registry,
        metrics,
        meter_provider,
        tracer_provider,
    })
}

/// An OTLP exporter of one signal (`$builder`: `MetricExporter` or `SpanExporter`) over the
/// transport its `OTEL_EXPORTER_OTLP_*_PROTOCOL` asks for. A macro: the two builders share no
/// trait to be generic over.
macro_rules! otlp_exporter {
    ($builder:path, $protocol_var:literal) => {
        match protocol($protocol_var)? {
            Protocol::Grpc => <$builder>::builder().with_tonic().build(),
            other => <$builder>::builder().with_http().with_protocol(other).build(),
        }
        .map_err(|e| TelemetryError::Setup(e.to_string()))
    };
}

/// Metrics: read by Prometheus from `registry`, and pushed over OTLP when configured.
fn meter_provider(
    resource: &Resource,
    registry: &prometheus::Registry,
) -> Result<SdkMeterProvider, TelemetryError> {
    let prometheus_reader = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()
        .map_err(|e| TelemetryError::Setup(e.to_string()))?;
    let mut meters = SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_reader(prometheus_reader);
    if pushes("OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
        let exporter = otlp_exporter!(
            opentelemetry_otlp::MetricExporter,
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
        )?;
        meters = meters.with_reader(PeriodicReader::builder(exporter).build());
    }
    Ok(meters.build())
}

/// Traces pushed over OTLP through our bounded span queue, when configured.
fn tracer_provider(
    resource: Resource,
    metrics: &std::sync::Arc<Metrics>,
) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    if !pushes("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    let mut exporter = otlp_exporter!(
        opentelemetry_otlp::SpanExporter,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    )?;
    exporter.set_resource(&resource);
    let queue = QueueProcessor::start(exporter, queue_settings()?, metrics.clone());
    Ok(Some(
        SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(queue)
            .build(),
    ))
}

/// Installs the subscriber: log lines to stdout as `RUST_LOG` filters them, and our trace spans
/// to the OpenTelemetry layer when traces are pushed.
fn install_subscriber(
    log_json: bool,
    tracer_provider: Option<&SdkTracerProvider>,
) -> Result<(), TelemetryError> {
    // Logs: RUST_LOG decides, our span-only target is left to the OpenTelemetry layer.
    let not_trace_spans = filter_fn(|m| !(m.is_span() && m.target() == TRACE_TARGET));
    let log_filter = match env("RUST_LOG") {
        None => EnvFilter::new("info"),
        Some(v) => EnvFilter::try_new(&v).map_err(|_| TelemetryError::Invalid {
            var: "RUST_LOG",
            value: v,
            expected: "a tracing filter such as info or cache_layer=debug,warn",
        })?,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = tracing_subscriber::fmt::layer().with_target(true).with_ansi(ansi);
    let fmt = if log_json {
        fmt.json()
            .flatten_event(true)
            .with_filter(log_filter.and(not_trace_spans))
            .boxed()
    } else {
        fmt.with_filter(log_filter.and(not_trace_spans)).boxed()
    };
    let otel = tracer_provider.map(|tp| {
        tracing_opentelemetry::layer()
            .with_tracer(tp.tracer("cache-layer"))
            .with_filter(filter_fn(|m| m.target() == TRACE_TARGET))
    });
    // Not `.with(Option<layer>)`: a `None` layer reports interest in every call site, which
    // would make the registry build every request span even with no exporter.
    // The disk engine's failures are counted from its log, whatever RUST_LOG prints.
    let engine = disk_engine::layer();
    let installed = match otel {
        Some(otel) => Registry::default().with(fmt).with(engine).with(otel).try_init(),
        None => Registry::default().with(fmt).with(engine).try_init(),
    };
    installed.map_err(|e| TelemetryError::Setup(e.to_string()))
}

/// The W3C `traceparent` of `span`, when it is traced.
pub fn traceparent(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Continues the caller's trace: sets `span`'s parent from an incoming `traceparent`.
pub fn continue_trace(span: &Span, headers: &http::HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = global::get_text_map_propagator(|p| p.extract(&opentelemetry_http::HeaderExtractor(headers)));
    let _ = span.set_parent(cx);
}
