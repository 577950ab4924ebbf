//! The admin HTTP server: `/healthz` (the process is alive), `/readyz` (policy loaded, label
//! sources synced, every worker running: what the GWLB health check should probe) and
//! `/metrics` (Prometheus text). Runs on the control plane's tokio runtime and serves any
//! number of concurrent probes.
//! Must not depend on: the data plane's internals (it reads what workers publish), the policy
//! compiler, kube.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::control::ControlState;
use crate::dataplane::WorkerStatus;

/// What the admin endpoints read.
#[derive(Debug)]
pub struct AdminState {
    pub registry: Registry,
    pub workers: Arc<[Arc<WorkerStatus>]>,
    pub control: Arc<ControlState>,
}

impl AdminState {
    /// Every reason the appliance is not ready; empty when it is.
    /// The policy is loaded before the admin server starts, so readiness waits for label
    /// sources' first sync and for every worker.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons: Vec<String> = self
            .control
            .unsynced_sources()
            .into_iter()
            .map(|s| format!("label source {s} has not synced yet"))
            .collect();
        reasons.extend(
            self.workers
                .iter()
                .enumerate()
                .filter(|(_, w)| !w.is_running())
                .map(|(i, _)| format!("data-plane worker {i} is not running")),
        );
        reasons
    }
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let reasons = state.not_ready_reasons();
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n{}\n", reasons.join("\n")))
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::metrics::render(&state.registry),
    )
}
