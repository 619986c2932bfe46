//! A real OTLP receiver for the tests: opentelemetry-proto's tonic servers for gRPC, and the
//! same protobuf messages over HTTP (`POST /v1/traces`, `POST /v1/metrics`).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::harness::free_port;

/// What the receiver got: spans (with their service name) and metric names.
#[derive(Default)]
pub struct Received {
    pub spans: Vec<(String, Span)>,
    pub metric_names: Vec<String>,
}

#[derive(Clone, Default)]
pub struct Receiver {
    pub got: Arc<Mutex<Received>>,
}

impl Receiver {
    fn take_traces(&self, req: ExportTraceServiceRequest) {
        let mut got = self.got.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref()?.value.clone())
                .map(|v| match v {
                    AnyValue::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.spans.push((service.clone(), span));
                }
            }
        }
    }

    fn take_metrics(&self, req: ExportMetricsServiceRequest) {
        let mut got = self.got.lock().unwrap();
        for rm in req.resource_metrics {
            for sm in rm.scope_metrics {
                got.metric_names.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
    }

    pub fn spans(&self) -> Vec<(String, Span)> {
        self.got.lock().unwrap().spans.clone()
    }

    pub fn metric_names(&self) -> Vec<String> {
        self.got.lock().unwrap().metric_names.clone()
    }

    /// Waits until a pushed metric named `name` has arrived.
    pub async fn wait_metric(&self, name: &str) {
        crate::harness::eventually("pushed metrics to arrive", || async {
            self.metric_names().iter().any(|n| n == name).then_some(())
        })
        .await;
    }

    /// Starts a gRPC receiver; returns its endpoint.
    pub async fn start_grpc(&self) -> String {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let router = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .add_service(MetricsServiceServer::new(self.clone()));
        tokio::spawn(async move { router.serve(addr).await.unwrap() });
        wait_listening(port).await;
        format!("http://127.0.0.1:{port}")
    }

    /// Starts an HTTP/protobuf receiver; returns its endpoint.
    pub async fn start_http(&self) -> String {
        let port = free_port();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_traces))
            .route("/v1/metrics", axum::routing::post(http_metrics))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://127.0.0.1:{port}")
    }
}

async fn wait_listening(port: u16) {
    crate::harness::eventually("the OTLP receiver to listen", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

async fn http_traces(State(r): State<Receiver>, body: Bytes) -> Vec<u8> {
    r.take_traces(ExportTraceServiceRequest::decode(body).expect("OTLP/HTTP traces decode"));
    ExportTraceServiceResponse::default().encode_to_vec()
}

async fn http_metrics(State(r): State<Receiver>, body: Bytes) -> Vec<u8> {
    r.take_metrics(ExportMetricsServiceRequest::decode(body).expect("OTLP/HTTP metrics decode"));
    ExportMetricsServiceResponse::default().encode_to_vec()
}

#[async_trait::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take_traces(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[async_trait::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.take_metrics(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}
