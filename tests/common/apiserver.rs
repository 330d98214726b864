//! The one local HTTP stand-in for the Kubernetes API server, on 127.0.0.1, serving recorded,
//! realistic responses:
//! - `GET /version`: the body a real v1.23.2 API server sends (the recorded fixture
//!   `tests/fixtures/upgrade/apiserver-version-v1.23.2.json`), counting the requests and
//!   remembering their Authorization header (what `etcdsafe upgrade` reads);
//! - the coordination.k8s.io/v1 Lease endpoints with the response bodies a real API server sends
//!   (Status objects for 404 and 409, Lease objects with uid, resourceVersion and
//!   creationTimestamp) and optimistic concurrency on metadata.resourceVersion (what the
//!   service's lease coordination uses).
//!
//! It is NOT a Kubernetes API server; it stands in for one. (The kubelet harness in `kubelet.rs`
//! runs a different, TLS `/readyz` stand-in as the static pod of a node's manifest.)
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
pub struct StandInState {
    pub leases: HashMap<(String, String), Value>,
    pub resource_version: u64,
    /// (method, path) of every Lease request, for assertions.
    pub requests: Vec<(String, String)>,
    /// How many `GET /version` requests came.
    pub version_hits: usize,
    /// The Authorization header of the last `GET /version` request.
    pub authorization: Option<String>,
}

pub struct ApiServerStandIn {
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub state: Arc<Mutex<StandInState>>,
    runtime: Option<tokio::runtime::Runtime>,
}

fn status(code: StatusCode, reason: &str, message: String, name: &str) -> Response {
    (
        code,
        Json(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": { "name": name, "group": "coordination.k8s.io", "kind": "leases" },
            "code": code.as_u16()
        })),
    )
        .into_response()
}

type Shared = Arc<Mutex<StandInState>>;

async fn get_lease(State(s): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
    let mut s = s.lock().unwrap();
    s.requests.push(("GET".into(), format!("{ns}/{name}")));
    match s.leases.get(&(ns, name.clone())) {
        Some(lease) => Json(lease.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("leases.coordination.k8s.io \"{name}\" not found"),
            &name,
        ),
    }
}

async fn create_lease(
    State(s): State<Shared>,
    Path(ns): Path<String>,
    Json(mut body): Json<Value>,
) -> Response {
    let mut s = s.lock().unwrap();
    let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
    s.requests.push(("POST".into(), format!("{ns}/{name}")));
    if s.leases.contains_key(&(ns.clone(), name.clone())) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("leases.coordination.k8s.io \"{name}\" already exists"),
            &name,
        );
    }
    s.resource_version += 1;
    body["apiVersion"] = json!("coordination.k8s.io/v1");
    body["kind"] = json!("Lease");
    body["metadata"]["namespace"] = json!(ns);
    body["metadata"]["uid"] = json!("6f0c9a4e-2b1d-4c53-9d2e-8f1a7b3c5d10");
    body["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
    body["metadata"]["creationTimestamp"] = json!("2026-11-24T12:00:00Z");
    s.leases.insert((ns, name), body.clone());
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn replace_lease(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    Json(mut body): Json<Value>,
) -> Response {
    let mut s = s.lock().unwrap();
    s.requests.push(("PUT".into(), format!("{ns}/{name}")));
    let Some(current) = s.leases.get(&(ns.clone(), name.clone())).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("leases.coordination.k8s.io \"{name}\" not found"),
            &name,
        );
    };
    if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
            &name,
        );
    }
    s.resource_version += 1;
    body["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
    body["metadata"]["uid"] = current["metadata"]["uid"].clone();
    body["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
    s.leases.insert((ns, name), body.clone());
    Json(body).into_response()
}

/// The recorded `/version` body of a v1.23.2 API server.
pub fn version_fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upgrade/apiserver-version-v1.23.2.json")
}

async fn version(State(s): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    let body = std::fs::read_to_string(version_fixture()).unwrap();
    let mut s = s.lock().unwrap();
    s.version_hits += 1;
    s.authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    ([("content-type", "application/json")], body).into_response()
}

/// A kubeconfig at `path` for `server`, with the token `stand-in-token` (what kubeadm's
/// admin.conf looks like, for the upgrade's version lookup).
pub fn write_kubeconfig(path: &std::path::Path, server: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: {server}\n  name: stand-in\ncontexts:\n- context:\n    cluster: stand-in\n    user: etcdsafe\n  name: etcdsafe@stand-in\ncurrent-context: etcdsafe@stand-in\npreferences: {{}}\nusers:\n- name: etcdsafe\n  user:\n    token: stand-in-token\n"
        ),
    )
    .unwrap();
}

impl ApiServerStandIn {
    pub fn start() -> ApiServerStandIn {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state: Shared = Arc::default();
        let app = Router::new()
            .route("/version", get(version))
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                get(get_lease).put(replace_lease),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                post(create_lease),
            )
            .with_state(state.clone());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        runtime.spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ApiServerStandIn {
            port,
            url: format!("http://127.0.0.1:{port}"),
            state,
            runtime: Some(runtime),
        }
    }

    /// A kubeconfig pointing at the stand-in.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: etcdsafe\n    namespace: etcdsafe\ncurrent-context: stand-in\nusers:\n- name: etcdsafe\n  user:\n    token: stand-in-token\n",
                self.port
            ),
        )
        .unwrap();
        path
    }

    /// How many `GET /version` requests came.
    pub fn version_hits(&self) -> usize {
        self.state.lock().unwrap().version_hits
    }

    /// The Authorization header of the last `GET /version` request.
    pub fn authorization(&self) -> Option<String> {
        self.state.lock().unwrap().authorization.clone()
    }

    /// The holder of a Lease, if it exists.
    pub fn holder(&self, ns: &str, name: &str) -> Option<String> {
        let s = self.state.lock().unwrap();
        s.leases
            .get(&(ns.to_string(), name.to_string()))
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    }
}

impl Drop for ApiServerStandIn {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
