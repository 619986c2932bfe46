//! The seed's simulated origin: a fixed delay, then `"value_for_{key}"`.

use std::time::Duration;

use bytes::Bytes;

use super::{CacheHeaders, Fetched, Origin, OriginError, Validators};

/// Stands in for a slow data source on a laptop, exactly as the seed's did.
#[derive(Debug, Clone)]
pub struct SimulatedOrigin {
    /// How long each fetch takes.
    latency: Duration,
}

impl SimulatedOrigin {
    /// An origin answering after `latency`.
    pub fn new(latency: Duration) -> Self {
        SimulatedOrigin { latency }
    }
}

impl Origin for SimulatedOrigin {
    async fn fetch(
        &self,
        key: &str,
        _traceparent: Option<String>,
        _validators: Option<&Validators>,
    ) -> Result<Fetched, OriginError> {
        tokio::time::sleep(self.latency).await;
        let value = serde_json::to_vec(&format!("value_for_{key}")).expect("a string serialises");
        // No headers: the configured lifetimes apply, as in the seed.
        Ok(Fetched::Value(Bytes::from(value), CacheHeaders::default()))
    }
}
