//! The span pipeline to the OTLP exporter: a bounded queue that never blocks a request and counts
//! what it drops (`otel_spans_dropped_total`), and one worker thread that exports in batches.
//!
//! The SDK's `BatchSpanProcessor` drops silently (one log line, a total at shutdown); a full
//! queue is exactly what an operator needs to see while it happens, so this replaces it.

use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

/// Sizes and timing, from the standard `OTEL_BSP_*` variables.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// Spans held at most (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048); beyond it they are dropped.
    pub max_queue: usize,
    /// Spans per export at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512).
    pub max_batch: usize,
    /// Longest wait before a partial batch is sent (`OTEL_BSP_SCHEDULE_DELAY`, 5000 ms).
    pub delay: Duration,
}

/// What the request path and the export thread share.
#[derive(Debug)]
struct Queue {
    /// Ended spans waiting for export. Pushing takes the lock for a moment and does not wake the
    /// export thread unless a batch is full, so a traced request costs no thread switch.
    spans: Mutex<Vec<SpanData>>,
    settings: QueueSettings,
}

impl Queue {
    fn spans(&self) -> MutexGuard<'_, Vec<SpanData>> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Flush and shutdown requests, with where to answer.
enum Control {
    Flush(Sender<OTelSdkResult>),
    Shutdown(Sender<OTelSdkResult>),
}

/// A `SpanProcessor` with a bounded queue and a drop counter.
#[derive(Debug)]
pub struct QueueProcessor {
    queue: Arc<Queue>,
    /// Flush and shutdown requests for the export thread.
    control: Mutex<Sender<Control>>,
    /// The export thread, woken when a batch is full or a control request is sent.
    thread: Thread,
    /// `otel_spans_dropped_total`.
    dropped: Arc<super::Metrics>,
    /// The export thread, joined at shutdown.
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

impl QueueProcessor {
    /// Starts the export thread for `exporter` (its resource already set).
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        settings: QueueSettings,
        dropped: Arc<super::Metrics>,
    ) -> Self {
        let queue = Arc::new(Queue {
            spans: Mutex::new(Vec::with_capacity(settings.max_batch)),
            settings,
        });
        let (control, requests) = channel();
        let worker = std::thread::Builder::new()
            .name("otlp-spans".to_owned())
            .spawn({
                let queue = queue.clone();
                move || run(&queue, &requests, exporter)
            })
            .expect("spawn the span export thread");
        QueueProcessor {
            queue,
            control: Mutex::new(control),
            thread: worker.thread().clone(),
            dropped,
            worker: Mutex::new(Some(worker)),
        }
    }

    /// Sends a control request and waits for its answer, at most `timeout`.
    fn control(&self, make: fn(Sender<OTelSdkResult>) -> Control, timeout: Duration) -> OTelSdkResult {
        let (ack, answer) = channel();
        let sent = self
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(make(ack));
        if sent.is_err() {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        self.thread.unpark();
        answer
            .recv_timeout(timeout)
            .unwrap_or(Err(OTelSdkError::Timeout(timeout)))
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let settings = self.queue.settings;
        let mut spans = self.queue.spans();
        if spans.len() >= settings.max_queue {
            drop(spans);
            self.dropped.span_dropped();
            return;
        }
        spans.push(span);
        let full_batch = spans.len() == settings.max_batch;
        drop(spans);
        if full_batch {
            self.thread.unpark();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.control(Control::Flush, Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.control(Control::Shutdown, timeout);
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        // A worker stuck in an export past the timeout is left to the process exit.
        if let (Ok(()), Some(worker)) = (&result, worker) {
            let _ = worker.join();
        }
        result
    }
}

/// The export thread: sleeps until a batch is full, `delay` has passed or a control request
/// comes, then exports what is queued in batches of at most `max_batch`.
fn run<E: SpanExporter>(queue: &Queue, requests: &Receiver<Control>, exporter: E) {
    let settings = queue.settings;
    let mut deadline = Instant::now() + settings.delay;
    let export = |batch: Vec<SpanData>| {
        // The exporter's own timeout (OTEL_EXPORTER_OTLP_TIMEOUT) bounds this.
        let _ = futures_executor::block_on(exporter.export(batch));
    };
    let export_queued = || {
        // Allocated here, not under the lock the request path takes.
        let fresh = Vec::with_capacity(settings.max_batch);
        let mut spans = std::mem::replace(&mut *queue.spans(), fresh);
        while spans.len() > settings.max_batch {
            let rest = spans.split_off(settings.max_batch);
            export(std::mem::replace(&mut spans, rest));
        }
        if !spans.is_empty() {
            export(spans);
        }
    };
    loop {
        std::thread::park_timeout(deadline.saturating_duration_since(Instant::now()));
        match requests.try_recv() {
            Ok(Control::Flush(ack)) => {
                export_queued();
                let _ = ack.send(exporter.force_flush());
            }
            Ok(Control::Shutdown(ack)) => {
                export_queued();
                let _ = ack.send(exporter.shutdown());
                return;
            }
            Err(TryRecvError::Disconnected) => {
                export_queued();
                return;
            }
            Err(TryRecvError::Empty) => {
                let now = Instant::now();
                if now >= deadline || queue.spans().len() >= settings.max_batch {
                    export_queued();
                    deadline = now + settings.delay;
                }
            }
        }
    }
}
