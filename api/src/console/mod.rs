//! The operator console: the browser UI of the same JSON API, served by
//! floq-api at `/`, `/login`, `/flows`, `/flows/{id}`, `/runs`, `/runs/{id}`,
//! `/credentials`, `/audit` and `/admin` (not in the OpenAPI document: these
//! are pages, not API operations).
//!
//! The choice: **no front-end toolchain**. Each page is a small
//! server-rendered HTML shell built here with `format!` and [`escape`]
//! (no template crate: nine shells do not need one), plus exactly one script
//! and one style sheet, embedded with `include_str!` and served at
//! `/assets/console.js` and `/assets/console.css` (`Cache-Control: no-cache`
//! with an `ETag`, and the same version as a query in the shells' links).
//! Nothing inline: every response here is marked [`ConsolePage`], and the
//! envelope gives it [`crate::middleware::CONSOLE_CSP`] (`script-src 'self';
//! style-src 'self'`, no inline script or style), so all behaviour lives in
//! `console.js` (vanilla ES2020, no build step) and all styling in
//! `console.css`.
//!
//! What this module must never do: touch the database, read a session or
//! render data. A shell is the same for every caller (the path's id aside,
//! escaped); `console.js` fetches everything through the API with the
//! session cookie, and every decision (who may see or change what) stays the
//! API's. The console only hides controls the caller's roles could not use.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;
use crate::middleware::ConsolePage;
use crate::session;
use crate::state::AppState;

const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// A digest of both assets: their `ETag`, and the `?v=` the shells link them with.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hash = Sha256::new();
    hash.update(SCRIPT.as_bytes());
    hash.update([0]);
    hash.update(STYLE.as_bytes());
    hex::encode(&hash.finalize()[..8])
});

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(root))
        .route("/login", get(|| page(Page::Login, None)))
        .route("/flows", get(|| page(Page::Flows, None)))
        .route("/flows/{id}", get(flow))
        .route("/runs", get(|| page(Page::Runs, None)))
        .route("/runs/{id}", get(run))
        .route("/credentials", get(|| page(Page::Credentials, None)))
        .route("/audit", get(|| page(Page::Audit, None)))
        .route("/admin", get(|| page(Page::Admin, None)))
        .route(
            "/assets/console.js",
            get(|h: HeaderMap| async move { asset(h, SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/console.css",
            get(|h: HeaderMap| async move { asset(h, STYLE, "text/css; charset=utf-8") }),
        )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Page {
    Login,
    Flows,
    Flow,
    Runs,
    Run,
    Credentials,
    Audit,
    Admin,
}

impl Page {
    /// `data-page`, which `console.js` dispatches on.
    fn key(self) -> &'static str {
        match self {
            Page::Login => "login",
            Page::Flows => "flows",
            Page::Flow => "flow",
            Page::Runs => "runs",
            Page::Run => "run",
            Page::Credentials => "credentials",
            Page::Audit => "audit",
            Page::Admin => "admin",
        }
    }

    fn heading(self) -> &'static str {
        match self {
            Page::Login => "Sign in",
            Page::Flows => "Flows",
            // Replaced by the flow's name once loaded.
            Page::Flow => "Flow",
            Page::Runs => "Runs",
            Page::Run => "Run",
            Page::Credentials => "Credentials",
            Page::Audit => "Audit",
            Page::Admin => "Admin",
        }
    }

    /// The navigation entry this page sits under.
    fn section(self) -> Option<&'static str> {
        match self {
            Page::Login => None,
            Page::Flows | Page::Flow => Some("/flows"),
            Page::Runs | Page::Run => Some("/runs"),
            Page::Credentials => Some("/credentials"),
            Page::Audit => Some("/audit"),
            Page::Admin => Some("/admin"),
        }
    }
}

const NAV: [(&str, &str); 5] = [
    ("/flows", "Flows"),
    ("/runs", "Runs"),
    ("/credentials", "Credentials"),
    ("/audit", "Audit"),
    ("/admin", "Admin"),
];

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `/`: the flows when the browser carries a session cookie, else the sign-in
/// page. Whether the session is still live is the API's to say (the flows
/// page sends an expired one on to `/login`).
async fn root(headers: HeaderMap) -> Response {
    let to = if session::cookie_token(&headers).is_some() {
        "/flows"
    } else {
        "/login"
    };
    let mut response = Redirect::to(to).into_response();
    response.extensions_mut().insert(ConsolePage);
    response
}

async fn flow(Path(id): Path<String>) -> Response {
    match Uuid::parse_str(&id) {
        Ok(id) => page(Page::Flow, Some(id)).await,
        Err(_) => ApiError::not_found("flow").into_response(),
    }
}

async fn run(Path(id): Path<String>) -> Response {
    match Uuid::parse_str(&id) {
        Ok(id) => page(Page::Run, Some(id)).await,
        Err(_) => ApiError::not_found("run").into_response(),
    }
}

async fn page(page: Page, id: Option<Uuid>) -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], shell(page, id)).into_response();
    response.extensions_mut().insert(ConsolePage);
    response
}

fn asset(headers: HeaderMap, body: &'static str, content_type: &'static str) -> Response {
    let etag = format!("\"{}\"", *VERSION);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    response.extensions_mut().insert(ConsolePage);
    response
}

fn shell(page: Page, id: Option<Uuid>) -> String {
    let version = &*VERSION;
    let key = page.key();
    let id_attr = id.map(|id| format!(" data-id=\"{id}\"")).unwrap_or_default();
    let heading = match (page, id) {
        (Page::Run, Some(id)) => {
            format!("Run <span class=\"mono\">{id}</span> <span id=\"run-status\" class=\"badge\">loading</span>")
        }
        _ => escape(page.heading()),
    };
    let title = match (page, id) {
        (Page::Run, Some(id)) => format!("Run {id}"),
        _ => page.heading().to_string(),
    };
    let header = match page.section() {
        None => String::from("<header class=\"top\"><span class=\"brand\">floq</span></header>"),
        Some(current) => {
            let links: String = NAV
                .iter()
                .map(|(href, label)| {
                    let current = if *href == current { " aria-current=\"page\"" } else { "" };
                    format!("<li><a href=\"{href}\"{current}>{label}</a></li>")
                })
                .collect();
            format!(
                "<header class=\"top\"><a class=\"brand\" href=\"/flows\">floq</a>\
                 <nav aria-label=\"Main\"><ul>{links}</ul></nav>\
                 <div id=\"account\" class=\"account\"></div></header>"
            )
        }
    };
    let body = if page == Page::Login {
        LOGIN_FORM
    } else {
        "<div id=\"app\" class=\"app\"><p class=\"muted\">Loading…</p>\
         <noscript><p>The console needs JavaScript.</p></noscript></div>"
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · floq</title>\
         <link rel=\"icon\" href=\"data:,\">\
         <link rel=\"stylesheet\" href=\"/assets/console.css?v={version}\">\
         <script src=\"/assets/console.js?v={version}\" defer></script></head>\
         <body data-page=\"{key}\"{id_attr}><a class=\"skip\" href=\"#main\">Skip to content</a>{header}\
         <main id=\"main\"><h1 id=\"title\">{heading}</h1>\
         <div id=\"alert\" class=\"alert\" role=\"alert\"></div>\
         <div id=\"notice\" class=\"notice\" role=\"status\"></div>{body}</main></body></html>\n"
    )
}

/// The sign-in form is in the shell itself: real labels, real buttons.
const LOGIN_FORM: &str = "<form id=\"login-form\" class=\"card narrow\" method=\"post\" action=\"/login\">\
     <p><label for=\"login-email\">Email</label>\
     <input id=\"login-email\" name=\"email\" type=\"email\" autocomplete=\"username\" required></p>\
     <p><label for=\"login-password\">Password</label>\
     <input id=\"login-password\" name=\"password\" type=\"password\" autocomplete=\"current-password\"></p>\
     <p class=\"actions\"><button type=\"submit\" id=\"login-submit\">Sign in</button>\
     <button type=\"button\" id=\"login-sso\" class=\"secondary\">Sign in with SSO</button></p></form>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn shells_carry_no_inline_script_or_style() {
        for page in [
            Page::Login,
            Page::Flows,
            Page::Flow,
            Page::Runs,
            Page::Run,
            Page::Credentials,
            Page::Audit,
            Page::Admin,
        ] {
            let html = shell(page, Some(Uuid::nil()));
            assert!(!html.contains("style="), "{html}");
            assert!(!html.contains("<style"), "{html}");
            assert_eq!(html.matches("<script").count(), 1, "{html}");
            assert!(html.contains("<script src=\"/assets/console.js?v="), "{html}");
        }
    }
}
