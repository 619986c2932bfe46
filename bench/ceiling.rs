//! `bench-ceiling`: the benchmark's ceiling. A bare axum handler, same axum and tokio as the
//! service, answering `GET /items/{key}` with the same JSON body as a cache hit, with no cache
//! at all. What the service serves per second on a hit is measured against this.

use axum::Router;
use axum::extract::Path;
use axum::routing::get;

#[tokio::main]
async fn main() {
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:5099".to_owned());
    let app = Router::new().route(
        "/items/{key}",
        get(|Path(key): Path<String>| async move {
            let value = format!("value_for_{key}");
            axum::Json(serde_json::json!({ "key": key, "value": value, "source": "cache" }))
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("bind LISTEN_ADDR");
    axum::serve(listener, app).await.expect("serve");
}
