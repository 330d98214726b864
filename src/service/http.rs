//! The HTTP API: `/metrics`, `/healthz`, `/readyz`, `POST /v1/snapshots`, `GET /v1/backups`.
//! The `/v1` endpoints need `Authorization: Bearer <server.token-file>` whenever a token is
//! configured (always, when the listener is not loopback).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{RunError, Service};
use crate::catalog;
use crate::pipeline::SaveRequest;

pub async fn serve(service: Arc<Service>, listener: tokio::net::TcpListener) {
    let shutdown = service.shutdown.clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/snapshots", axum::routing::post(create_snapshot))
        .route("/v1/backups", get(list_backups))
        .with_state(service);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the HTTP server stopped");
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Checks the bearer token in constant time; `None` when allowed.
fn unauthorized(service: &Service, headers: &HeaderMap) -> Option<Response> {
    let expected = service.token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    (!same).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: send Authorization: Bearer <the token in server.token-file>",
        )
    })
}

async fn metrics(State(service): State<Arc<Service>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        service.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(service): State<Arc<Service>>) -> Response {
    match service.readiness().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    reason: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

async fn create_snapshot(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(denied) = unauthorized(&service, &headers) {
        return denied;
    }
    let body: SnapshotBody = if body.iter().all(u8::is_ascii_whitespace) {
        SnapshotBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("body: {e}; send {{\"reason\": \"pre-upgrade\", \"labels\": {{\"to\": \"v1.23.3\"}}}} or nothing"),
                )
            }
        }
    };
    let request = SaveRequest {
        reason: body.reason.unwrap_or_else(|| "manual".to_string()),
        labels: body.labels,
    };
    match service.backup_now(request).await {
        Ok(manifest) => (StatusCode::CREATED, Json(manifest)).into_response(),
        Err(RunError::ShuttingDown) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn list_backups(State(service): State<Arc<Service>>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(&service, &headers) {
        return denied;
    }
    match catalog::list(service.store.as_ref()).await {
        Ok(listing) => {
            let problems: Vec<String> = listing.problems.iter().map(|p| p.to_string()).collect();
            Json(json!({ "backups": listing.backups, "problems": problems })).into_response()
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}
