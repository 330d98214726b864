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

/// Checks the bearer token; `None` when allowed.
fn unauthorized(service: &Service, headers: &HeaderMap) -> Option<Response> {
    let expected = service.token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let allowed = given.is_some_and(|given| same_token(given, expected));
    (!allowed).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: send Authorization: Bearer <the token in server.token-file>",
        )
    })
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110, section 11.1); an empty token is no token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares tokens in constant time: SHA-256 digests (always 32 bytes, so not even the length
/// leaks) compared without an early exit. An empty expected token never matches.
fn same_token(given: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    let differ = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    differ == 0 && !expected.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in [
            "Bearer t0k",
            "bearer t0k",
            "BEARER t0k",
            "bEaReR   t0k",
            " Bearer t0k ",
        ] {
            assert_eq!(bearer_token(value), Some("t0k"), "{value:?}");
        }
        for value in ["Bearer", "Bearer ", "Basic t0k", "Bearert0k", "", "t0k"] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }

    #[test]
    fn tokens_match_only_exactly_and_never_when_empty() {
        assert!(same_token("s3cr3t", "s3cr3t"));
        assert!(!same_token("s3cr3", "s3cr3t"));
        assert!(!same_token("s3cr3t-", "s3cr3t"));
        assert!(!same_token("S3CR3T", "s3cr3t"));
        assert!(!same_token("", ""));
    }
}
