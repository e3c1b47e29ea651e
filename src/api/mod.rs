//! The HTTP API (SPEC §11): the only code that knows HTTP.
//!
//! [`app`] builds the router, so tests drive it with `oneshot` and the daemon
//! serves it. Every error is `{"error": {"code", "message"}}` through one
//! mapping ([`Error`]); 5xx bodies carry no internals.

mod dashboard;
mod events;
mod follow;
mod handlers;
mod hooks;
mod operations;
mod stream;

pub use events::{api_event, binding_json};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::json;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::metrics::DaemonMetrics;
use crate::registry::SharedRegistry;
use crate::runtime::{self, RuntimeHandle};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub runtime: RuntimeHandle,
    pub registry: SharedRegistry,
    /// Bearer token required on `/api` when set.
    pub token: Option<Arc<str>>,
    pub metrics: Arc<DaemonMetrics>,
    /// Turns webhook and API events into runs.
    pub reactor: crate::reactor::Reactor,
    /// For webhook secrets (`${secrets.name}`) and header redaction.
    pub secrets: Arc<crate::spec::Secrets>,
    /// Wakes the adapters' reconcile (a pause or resume changes which run).
    pub bindings_changed: Arc<tokio::sync::Notify>,
    /// Remote workers (`GET /workers`); None without a usable broker URL.
    pub remote: Option<crate::remote::Remote>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// The loaded workflows and bindings, read-locked.
    fn registry(&self) -> Result<std::sync::RwLockReadGuard<'_, crate::registry::Registry>, Error> {
        self.registry
            .read()
            .map_err(|_| internal("registry lock poisoned"))
    }

    /// A loaded workflow by name, or 404.
    fn workflow(&self, name: &str) -> Result<crate::registry::Entry, Error> {
        self.registry()?
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("no workflow named `{name}`")))
    }
}

/// The `/api/v1` routes, each registered from its handler's
/// `#[utoipa::path]`: the router and the OpenAPI document come from the
/// same place, so neither can name a route the other lacks.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(handlers::list_workflows))
        .routes(routes!(handlers::show_workflow))
        .routes(routes!(handlers::start_run))
        .routes(routes!(handlers::list_runs))
        .routes(routes!(handlers::show_run))
        .routes(routes!(handlers::run_history))
        .routes(routes!(stream::one_run))
        .routes(routes!(stream::all_runs))
        .routes(routes!(handlers::task_logs))
        .routes(routes!(handlers::cancel_run))
        .routes(routes!(handlers::rerun))
        .routes(routes!(events::post_event, events::list_events))
        .routes(routes!(events::show_event))
        .routes(routes!(operations::replay_event))
        .routes(routes!(events::list_bindings))
        .routes(routes!(handlers::list_workers))
        .routes(routes!(operations::backtest))
        .routes(routes!(operations::backfill_binding))
        .routes(routes!(operations::binding_occurrences))
        .routes(routes!(operations::show_backfill))
        .routes(routes!(operations::cancel_backfill))
        .routes(routes!(operations::pause_binding))
        .routes(routes!(operations::resume_binding))
        .routes(routes!(operations::pause_workflow))
        .routes(routes!(operations::resume_workflow))
        .routes(routes!(operations::list_versions))
        .routes(routes!(operations::diff_versions))
        .routes(routes!(operations::pin_workflow))
        .routes(routes!(operations::unpin_workflow))
}

/// The OpenAPI document of `/api/v1` (what `GET /api/v1/openapi.json`
/// serves), generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// The document's fixed parts; the paths come from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "switchyard",
        description = "The HTTP API of switchyard, the event-triggered workflow orchestrator. Errors are `{\"error\": {\"code\", \"message\"}}`. With `api.token` set, every request needs `Authorization: Bearer <token>` (or the dashboard's session cookie)."
    ),
    servers((url = "/api/v1", description = "this server")),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerToken),
    security(("bearer" = [])),
    tags(
        (name = "workflows", description = "Workflows, their versions and pins"),
        (name = "runs", description = "Runs: start, list, follow, cancel, rerun"),
        (name = "events", description = "Events and what each binding did with them"),
        (name = "bindings", description = "Bindings: pause, backfill, backtest, occurrences"),
        (name = "workers", description = "Remote workers"),
    )
)]
struct ApiDoc;

/// The bearer token as the document's security scheme.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every error's body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: errors are built by `Error`
pub struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// A stable code: `bad_request`, `unauthorized`, `not_found`, `conflict`, `invalid`, `unavailable`, `internal`.
    code: String,
    /// For people: what is wrong and where.
    message: String,
}

/// The router: `/healthz`, `/metrics`, `/hooks/…`, `/api/v1/…` (and its
/// OpenAPI document at `/api/v1/openapi.json`) and the dashboard's pages.
pub fn app(state: AppState) -> Router {
    let (api, document) = api_routes().split_for_parts();
    let document = Arc::new(document.to_json().unwrap_or_else(|_| "{}".into()));
    let api = api
        .route(
            "/openapi.json",
            get(move || {
                let document = Arc::clone(&document);
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        document.as_str().to_string(),
                    )
                }
            }),
        )
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/metrics", get(handlers::metrics))
        .nest("/api/v1", api)
        // Webhooks carry their own auth (signatures), not the API token.
        .route("/hooks/{*path}", any(hooks::hook))
        .merge(dashboard::routes(state.clone()))
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_rejections,
        ))
        .with_state(state)
}

/// Checks `Authorization: Bearer <token>` in constant time when a token is
/// set, or the dashboard's session cookie; a change made through the cookie
/// must be a JSON request, which a form on another site cannot send.
async fn require_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let bearer = constant_time_eq(given.as_bytes(), token.as_bytes());
        let session = !bearer
            && dashboard::has_session(&state, &headers)
            && (request.method() == axum::http::Method::GET
                || request.method() == axum::http::Method::HEAD
                || headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/json")));
        if !bearer && !session {
            let mut response = Error::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer <api.token>)",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

/// Counts refusals and times every request by its route's pattern (so
/// `/runs/{id}`, not each run's path: the labels stay few).
async fn count_rejections(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = match request.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "other",
    }
    .to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .histograms
        .http_request_seconds
        .get_or_create(&crate::metrics::RouteLabels {
            method,
            route,
            status: response.status().as_u16().to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
    if response.status().is_client_error() {
        state
            .metrics
            .requests_rejected
            .fetch_add(1, Ordering::Relaxed);
    }
    response
}

/// Validation errors as the API shows them.
pub(crate) fn diagnostics_json(diagnostics: &[crate::spec::Diagnostic]) -> Vec<serde_json::Value> {
    diagnostics
        .iter()
        .map(
            |d| json!({"file": d.file.display().to_string(), "path": d.path, "message": d.message}),
        )
        .collect()
}

/// Checks a `limit` query parameter (default 50, at most 1000).
pub(crate) fn page_limit(limit: Option<usize>) -> Result<usize, Error> {
    let limit = limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(Error::bad_request("`limit` must be between 1 and 1000"));
    }
    Ok(limit)
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Both sides hashed first: the comparison is of two 32-byte digests,
    // so its time says nothing about the token, not even its length.
    use sha2::Digest as _;
    let (a, b) = (sha2::Sha256::digest(a), sha2::Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A query string, its errors in the API's error shape and in user words
/// (axum's own `Query` answers a plain-text 400).
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Error> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => {
                let text = rejection.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                Err(Error::bad_request(format!(
                    "invalid query string: {}",
                    crate::spec::in_user_words(detail)
                )))
            }
        }
    }
}

/// Parses an optional JSON object body; empty means `{}`.
fn json_object(
    body: &axum::body::Bytes,
) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::bad_request("the request body must be a JSON object")),
        Err(e) => Err(Error::bad_request(format!("invalid JSON body: {e}"))),
    }
}

/// An API error: status, a stable code, and a message for people.
#[derive(Debug)]
pub struct Error {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Error {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// Well-formed but not doable (422).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<runtime::Error> for Error {
    fn from(e: runtime::Error) -> Self {
        match e {
            runtime::Error::NotFound(id) => Error::not_found(format!("run {id} not found")),
            runtime::Error::Conflict(message) => {
                Error::new(StatusCode::CONFLICT, "conflict", message)
            }
            runtime::Error::Invalid(message) => {
                Error::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
            }
            runtime::Error::Unavailable(reason) => {
                Error::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason)
            }
            runtime::Error::Stopped(reason) => {
                tracing::warn!(reason = %reason, "API request while the engine is stopped.");
                Error::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the engine is not running",
                )
            }
            other => internal(other),
        }
    }
}

impl From<crate::log::Error> for Error {
    fn from(e: crate::log::Error) -> Self {
        internal(e)
    }
}

/// A 500 whose cause goes to the log, not to the client.
fn internal(e: impl std::fmt::Display) -> Error {
    tracing::error!(error = %e, "API request failed.");
    Error::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; see the server log",
    )
}
