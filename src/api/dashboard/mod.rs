//! The dashboard at `/`: pages rendered on the server (maud) from the data
//! the API serves, with one stylesheet and one small script embedded in
//! the binary (`cargo build` makes it; nothing is fetched at run time).
//! Pages update live from the API's server-sent event streams
//! (`/api/v1/stream`, `/api/v1/runs/{id}/stream`), and their buttons call
//! the API itself.
//!
//! With `api.token` set, every page asks for it once (`/login`) and keeps a
//! session cookie derived from it (HttpOnly, SameSite=Strict), which the
//! API accepts in place of the bearer token; changing the token ends every
//! session.

mod dag;
mod pages;

use axum::Router;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::{AppState, Error};

/// The session cookie's name.
const SESSION_COOKIE: &str = "switchyard_session";

const CSS: &str = include_str!("app.css");
const JS: &str = include_str!("app.js");
/// Three tracks meeting at a switch.
const ICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 32 32\"><rect width=\"32\" height=\"32\" rx=\"6\" fill=\"#0b5cad\"/><path d=\"M6 26 L16 14 L26 26 M16 14 V5\" stroke=\"#fff\" stroke-width=\"3\" fill=\"none\" stroke-linecap=\"round\"/></svg>";

/// The dashboard's routes (merged at the root of the router).
pub fn routes(state: AppState) -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(pages::home))
        .route("/workflows", get(pages::workflows))
        .route("/workflows/{name}", get(pages::workflow))
        .route("/runs/{id}", get(pages::run))
        .route("/events", get(pages::events))
        .route("/workers", get(pages::workers))
        .layer(axum::middleware::from_fn_with_state(state, require_session));
    Router::new()
        .merge(pages)
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .route(
            "/assets/app.css",
            get(|| asset(CSS, "text/css; charset=utf-8")),
        )
        .route("/favicon.svg", get(|| asset(ICON, "image/svg+xml")))
        .route(
            "/assets/app.js",
            get(|| asset(JS, "text/javascript; charset=utf-8")),
        )
}

/// Assets are linked as `…?v=<hash of the content>`, so a browser keeps
/// them until the binary serves other content: no request, and no
/// render-blocking wait for the stylesheet, on every page after the first.
async fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// The first 12 hex digits of the SHA-256 of the embedded stylesheet and
/// script, which versions their URLs.
fn asset_version() -> &'static str {
    static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use sha2::Digest as _;
        let digest = sha2::Sha256::new()
            .chain_update(CSS)
            .chain_update(JS)
            .chain_update(ICON)
            .finalize();
        hex::encode(&digest[..6])
    });
    &VERSION
}

/// Every page's `<head>`; the login page goes without the script.
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · switchyard" }
            link rel="icon" href={ "/favicon.svg?v=" (asset_version()) } type="image/svg+xml";
            link rel="stylesheet" href={ "/assets/app.css?v=" (asset_version()) };
            @if script {
                script src={ "/assets/app.js?v=" (asset_version()) } defer {}
            }
        }
    }
}

/// The cookie value of a session for `token`: an HMAC of a fixed label
/// keyed by the token (the token itself never sits in the browser).
fn session_value(token: &str) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"switchyard dashboard session v1");
    hex::encode(mac.finalize().into_bytes())
}

/// Whether the request carries a valid session cookie (no token: always).
pub(super) fn has_session(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let expected = session_value(token);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| {
            name == SESSION_COOKIE && super::constant_time_eq(value.as_bytes(), expected.as_bytes())
        })
}

async fn require_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if has_session(&state, &headers) {
        return next.run(request).await;
    }
    let next_path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("next", &next_path)
        .finish();
    Redirect::to(&format!("/login?{query}")).into_response()
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Only a path on this server (not `//host`) is a place to go after login.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => {
            path
        }
        _ => "/",
    }
}

async fn login_form(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<LoginQuery>,
) -> Response {
    if state.token.is_none() {
        return Redirect::to("/").into_response();
    }
    login_page(safe_next(query.next.as_deref()), None, StatusCode::OK)
}

fn login_page(next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in", false))
            body {
                main.login {
                    div.panel {
                        h1 { "switchyard" }
                        @if let Some(error) = error {
                            p.flash.error role="alert" { (error) }
                        }
                        form method="post" action="/login" {
                            label for="token" { "API token" }
                            input #token type="password" name="token" autocomplete="current-password" required autofocus;
                            input type="hidden" name="next" value=(next);
                            button.primary type="submit" { "Sign in" }
                        }
                        p.muted { "The token is the server's " code { "api.token" } "." }
                    }
                }
            }
        }
    };
    (status, Html(body.into_string())).into_response()
}

async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let Some(token) = &state.token else {
        return Redirect::to("/").into_response();
    };
    let next = safe_next(form.next.as_deref());
    if !super::constant_time_eq(form.token.as_bytes(), token.as_bytes()) {
        return login_page(next, Some("Wrong token."), StatusCode::UNAUTHORIZED);
    }
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        session_value(token)
    );
    let mut response = Redirect::to(next).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "switchyard_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

/// Which top-level section a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Home,
    Workflows,
    Events,
    Workers,
}

/// What the page's script does live.
#[derive(Debug, Default)]
struct Live<'a> {
    /// `runs`: rows of runs update; `run`: the run page.
    mode: Option<&'static str>,
    run: Option<String>,
    workflow: Option<&'a str>,
}

/// The common frame: header, navigation, the time-zone toggle.
fn page(state: &AppState, title: &str, section: Section, live: &Live, content: Markup) -> Response {
    let nav = [
        (Section::Home, "/", "Home"),
        (Section::Workflows, "/workflows", "Workflows"),
        (Section::Events, "/events", "Events"),
        (Section::Workers, "/workers", "Workers"),
    ];
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body data-live=[live.mode] data-run=[live.run.as_deref()] data-workflow=[live.workflow] {
                header.top {
                    a.brand href="/" { "switchyard" }
                    nav aria-label="Main" {
                        @for (s, href, label) in nav {
                            @if s == section {
                                a href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                    }
                    div.right {
                        button #tz-toggle type="button" title="Show times in UTC or in this browser's zone" { "Times: local" }
                        @if state.token.is_some() {
                            form method="post" action="/logout" { button type="submit" { "Sign out" } }
                        }
                    }
                }
                main {
                    div #flash hidden {}
                    (content)
                }
            }
        }
    };
    Html(body.into_string()).into_response()
}

/// An error as a page (the API's message, its status).
fn error_page(state: &AppState, error: Error) -> Response {
    let status = error.status;
    let content = html! {
        h1 { "Not available" }
        p.flash.error role="alert" { (error.message) }
        p { a href="/" { "Back to the home page" } }
    };
    let mut response = page(state, "Error", Section::Home, &Live::default(), content);
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next(Some("/runs/1?x=2")), "/runs/1?x=2");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn a_session_is_derived_from_the_token() {
        assert_eq!(session_value("a"), session_value("a"));
        assert_ne!(session_value("a"), session_value("b"));
        assert!(!session_value("secret").contains("secret"));
    }
}
