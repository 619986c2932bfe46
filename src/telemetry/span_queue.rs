//! The span pipeline to the OTLP exporter: a bounded queue that never blocks a request and counts
//! what it drops (`otel_spans_dropped_total`), and one worker thread that exports in batches.
//!
//! The SDK's `BatchSpanProcessor` drops silently (one log line, a total at shutdown); a full
//! queue is exactly what an operator needs to see while it happens, so this replaces it.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry::metrics::Counter;
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

enum Message {
    Span(Box<SpanData>),
    Flush(SyncSender<OTelSdkResult>),
    Shutdown(SyncSender<OTelSdkResult>),
}

/// A `SpanProcessor` with a bounded queue and a drop counter.
#[derive(Debug)]
pub struct QueueProcessor {
    /// The queue; `try_send` on the request path, so a full queue drops instead of waiting.
    queue: SyncSender<Message>,
    /// `otel_spans_dropped_total`.
    dropped: Counter<u64>,
    /// The export thread, joined at shutdown.
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Message")
    }
}

impl QueueProcessor {
    /// Starts the export thread for `exporter` (its resource already set).
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        settings: QueueSettings,
        dropped: Counter<u64>,
    ) -> Self {
        let (queue, rx) = sync_channel(settings.max_queue);
        let worker = std::thread::Builder::new()
            .name("otlp-spans".to_owned())
            .spawn(move || run(rx, exporter, settings))
            .expect("spawn the span export thread");
        QueueProcessor {
            queue,
            dropped,
            worker: Mutex::new(Some(worker)),
        }
    }

    /// Sends a control message and waits for its answer, at most `timeout`.
    fn control(&self, make: fn(SyncSender<OTelSdkResult>) -> Message, timeout: Duration) -> OTelSdkResult {
        let (ack, answer) = sync_channel(1);
        if self.queue.send(make(ack)).is_err() {
            return Err(OTelSdkError::AlreadyShutdown);
        }
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
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(Message::Span(Box::new(span)))
        {
            self.dropped.add(1, &[]);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.control(Message::Flush, Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.control(Message::Shutdown, timeout);
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        // A worker stuck in an export past the timeout is left to the process exit.
        if let (Ok(()), Some(worker)) = (&result, worker) {
            let _ = worker.join();
        }
        result
    }
}

/// The export thread: batches by size or by `delay`, exports, answers control messages.
fn run<E: SpanExporter>(rx: Receiver<Message>, exporter: E, settings: QueueSettings) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(settings.max_batch);
    let mut deadline = Instant::now() + settings.delay;
    let export = |batch: &mut Vec<SpanData>| {
        if !batch.is_empty() {
            // The exporter's own timeout (OTEL_EXPORTER_OTLP_TIMEOUT) bounds this.
            let _ = futures_executor::block_on(exporter.export(std::mem::take(batch)));
        }
    };
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Message::Span(span)) => {
                batch.push(*span);
                if batch.len() >= settings.max_batch {
                    export(&mut batch);
                    deadline = Instant::now() + settings.delay;
                }
            }
            Ok(Message::Flush(ack)) => {
                export(&mut batch);
                let _ = ack.send(exporter.force_flush());
            }
            Ok(Message::Shutdown(ack)) => {
                // Spans queued behind nothing: everything before this message is in `batch`.
                export(&mut batch);
                let _ = ack.send(exporter.shutdown());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                export(&mut batch);
                deadline = Instant::now() + settings.delay;
            }
            Err(RecvTimeoutError::Disconnected) => {
                export(&mut batch);
                return;
            }
        }
    }
}
