//! The operator console (`api/src/console`) over HTTP: every page shell is
//! HTML with its heading and the console's own CSP, nothing inline, no
//! secret in any page; the two assets; the public URL's origin may write with
//! a session cookie while any other origin still may not; and the whole
//! console in a real browser (`tests/browser/console.py`).

use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::identity::{PASSWORD, login, session_of, user_with_password, with_cookie};
use floq_tests::{Options, TestApp, assert_error};

const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                           connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
const PUBLIC_URL: &str = "https://console.floq.test:8443";

fn no_services() -> Options {
    Options {
        worker: false,
        scheduler: false,
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Fails naming the page when its HTML carries an inline script body, a style
/// attribute or element, or an inline event handler.
fn assert_nothing_inline(path: &str, html: &str) {
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("style="), "{path}: a style attribute\n{html}");
    assert!(!lower.contains("<style"), "{path}: a style element\n{html}");
    for (i, _) in lower.match_indices("<script") {
        let tag_end = i + lower[i..].find('>').expect("a closed tag");
        assert!(
            lower[i..tag_end].contains(" src="),
            "{path}: a script without src\n{html}"
        );
        assert!(
            lower[tag_end + 1..].starts_with("</script>"),
            "{path}: an inline script body\n{html}"
        );
    }
    for handler in [" onclick=", " onload=", " onerror=", " onsubmit=", "javascript:"] {
        assert!(!lower.contains(handler), "{path}: inline handler {handler}\n{html}");
    }
}

#[tokio::test]
async fn every_console_page_is_html_with_its_heading_the_console_csp_and_nothing_inline() {
    let app = TestApp::spawn_configured(no_services(), |c| c.public_url = PUBLIC_URL.into()).await;
    user_with_password(&app, "ops@acme.test", &["admin"]).await;
    let (status, set_cookie, _) = login(&app, "ops@acme.test", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = session_of(&set_cookie.unwrap());
    let token = cookie.trim_start_matches("floq_session=").to_string();
    let flow = app
        .post(
            "/api/v1/flows",
            &app.admin.api_key,
            json!({"name": "console-shell", "definition": {"nodes": [{"id": "a", "type": "set", "params": {"values": {}}}], "edges": []}}),
        )
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = uuid::Uuid::now_v7().to_string();
    let pages = [
        ("/login".to_string(), "<h1 id=\"title\">Sign in</h1>".to_string()),
        ("/flows".into(), "<h1 id=\"title\">Flows</h1>".into()),
        (format!("/flows/{flow}"), "<h1 id=\"title\">Flow</h1>".into()),
        ("/runs".into(), "<h1 id=\"title\">Runs</h1>".into()),
        (
            format!("/runs/{run}"),
            format!("<h1 id=\"title\">Run <span class=\"mono\">{run}</span> <span id=\"run-status\""),
        ),
        ("/credentials".into(), "<h1 id=\"title\">Credentials</h1>".into()),
        ("/audit".into(), "<h1 id=\"title\">Audit</h1>".into()),
        ("/admin".into(), "<h1 id=\"title\">Admin</h1>".into()),
    ];
    let secrets = [
        app.admin.api_key.as_str(),
        token.as_str(),
        app.config.jwt_secret.expose(),
        PASSWORD,
    ];
    for (path, heading) in &pages {
        // Signed in or not, a shell is the same: no data, no database.
        for with_session in [false, true] {
            let mut req = app.client.get(format!("{}{path}", app.base));
            if with_session {
                req = req.header("cookie", &cookie);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let headers = resp.headers().clone();
            assert_eq!(headers[CONTENT_TYPE], "text/html; charset=utf-8", "{path}");
            assert_eq!(headers[CONTENT_SECURITY_POLICY], CONSOLE_CSP, "{path}");
            assert_eq!(headers["x-frame-options"], "DENY", "{path}");
            assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
            assert_eq!(headers[CACHE_CONTROL], "no-store", "{path}");
            let html = resp.text().await.unwrap();
            assert!(html.starts_with("<!doctype html>"), "{path}: {html}");
            assert!(html.contains("<main id=\"main\">"), "{path}: {html}");
            assert!(html.contains(heading.as_str()), "{path}: no {heading}\n{html}");
            assert!(html.contains("role=\"alert\""), "{path}: no alert region");
            assert!(html.contains("<script src=\"/assets/console.js?v="), "{path}");
            assert!(
                html.contains("<link rel=\"stylesheet\" href=\"/assets/console.css?v="),
                "{path}"
            );
            assert_nothing_inline(path, &html);
            for secret in secrets {
                assert!(!html.contains(secret), "{path} shows a secret");
            }
        }
    }
    // The sign-in form: real labels for Email and Password, a Sign in button, and the SSO path.
    let login_page = app
        .client
        .get(format!("{}/login", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for part in [
        "<label for=\"login-email\">Email</label>",
        "<input id=\"login-email\"",
        "<label for=\"login-password\">Password</label>",
        "<input id=\"login-password\" name=\"password\" type=\"password\"",
        ">Sign in</button>",
        ">Sign in with SSO</button>",
    ] {
        assert!(login_page.contains(part), "no {part}: {login_page}");
    }
    // Ids that are not ids are the API's 404, under the console CSP no more.
    let resp = app.client.get(format!("{}/flows/nope", app.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // The API itself keeps its strict policy.
    let resp = app
        .client
        .get(format!("{}/api/v1/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()[CONTENT_SECURITY_POLICY],
        "default-src 'none'; frame-ancestors 'none'"
    );
    app.teardown().await;
}

#[tokio::test]
async fn the_root_sends_a_browser_to_the_flows_with_a_session_cookie_else_to_sign_in() {
    let app = TestApp::spawn_with(no_services()).await;
    let client = no_redirects();
    let resp = client.get(format!("{}/", app.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/login");
    assert_eq!(resp.headers()[CONTENT_SECURITY_POLICY], CONSOLE_CSP);
    let resp = client
        .get(format!("{}/", app.base))
        .header("cookie", "floq_session=whatever")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/flows");
    app.teardown().await;
}

#[tokio::test]
async fn the_two_assets_are_served_with_their_types_an_etag_and_no_cache() {
    let app = TestApp::spawn_with(no_services()).await;
    let shell = app
        .client
        .get(format!("{}/flows", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (path, content_type, marker) in [
        ("/assets/console.js", "text/javascript; charset=utf-8", "'use strict';"),
        ("/assets/console.css", "text/css; charset=utf-8", ":root"),
    ] {
        let resp = app.client.get(format!("{}{path}", app.base)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let headers = resp.headers().clone();
        assert_eq!(headers[CONTENT_TYPE], content_type, "{path}");
        assert_eq!(headers[CACHE_CONTROL], "no-cache", "{path}");
        assert_eq!(headers[CONTENT_SECURITY_POLICY], CONSOLE_CSP, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let etag = headers[ETAG].to_str().unwrap().to_string();
        // The shells link the same version the ETag names.
        let version = etag.trim_matches('"');
        assert!(shell.contains(&format!("{path}?v={version}")), "{path} {etag}: {shell}");
        assert!(resp.text().await.unwrap().contains(marker), "{path}");
        let again = app
            .client
            .get(format!("{}{path}", app.base))
            .header(IF_NONE_MATCH, &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(again.headers()[ETAG], etag.as_str());
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_cookie_write_from_the_public_urls_origin_succeeds_and_from_any_other_origin_is_refused() {
    // No FLOQ_CORS_ORIGINS at all, as on the README's local stack.
    let app = TestApp::spawn_configured(no_services(), |c| {
        c.public_url = PUBLIC_URL.into();
        c.cors_origins = vec![];
    })
    .await;
    user_with_password(&app, "ed@acme.test", &["flow_editor"]).await;
    let (_, set_cookie, _) = login(&app, "ed@acme.test", PASSWORD).await;
    let cookie = session_of(&set_cookie.unwrap());
    let flow = |name: &str| {
        Some(
            json!({"name": name, "definition": {"nodes": [{"id": "a", "type": "set", "params": {"values": {}}}], "edges": []}}),
        )
    };

    let (status, body) = with_cookie(
        &app,
        Method::POST,
        "/api/v1/flows",
        &cookie,
        Some(PUBLIC_URL),
        flow("from-console"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "from-console");

    let refused = "cookie-authenticated requests that change state must come from an allowed Origin";
    for origin in [
        Some("https://evil.example"),
        Some("https://console.floq.test"),
        Some("http://console.floq.test:8443"),
        Some("null"),
        None,
    ] {
        let (status, body) = with_cookie(&app, Method::POST, "/api/v1/flows", &cookie, origin, flow("elsewhere")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin:?}: {body}");
        assert_error(&body, "origin_not_allowed", refused, serde_json::Value::Null);
    }
    app.teardown().await;
}

/// The whole console in Chromium, driven by `tests/browser/console.py`
/// (Playwright for Python; `deploy/local/test.sh --slow` installs it into a
/// venv, FLOQ_PLAYWRIGHT_PYTHON names its python). The API listens at the
/// public URL, as on the local stack, with no CORS setting: the console's
/// writes pass the Origin check through the public URL's own origin.
#[tokio::test]
#[ignore = "slow: drives Chromium with Playwright (deploy/local/test.sh --slow)"]
async fn a_real_browser_drives_the_console() {
    let python =
        std::env::var("FLOQ_PLAYWRIGHT_PYTHON").unwrap_or_else(|_| "/var/tmp/floq-playwright/bin/python".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public = format!("http://127.0.0.1:{port}");
    let app = TestApp::spawn_configured(Options::default(), {
        let public = public.clone();
        move |c| {
            c.http_addr = format!("127.0.0.1:{port}").parse().unwrap();
            c.public_url = public;
            c.cors_origins = vec![];
        }
    })
    .await;
    user_with_password(&app, "operator@acme.test", &["admin"]).await;
    let viewer = user_with_password(&app, "viewer@acme.test", &["viewer"]).await;
    // A flow the viewer may see, with a finished run.
    let shown = app
        .deployed_flow(
            json!({"nodes": [{"id": "hello", "type": "set", "params": {"values": {"hi": "there"}}}], "edges": []}),
        )
        .await;
    app.grant("user", &viewer, "flow", &shown, "view").await;
    // A flow editor whose grant on that flow is only `view`: the console shows
    // the editing controls the role has, and the API refuses the save.
    let editor = user_with_password(&app, "editor@acme.test", &["flow_editor"]).await;
    app.grant("user", &editor, "flow", &shown, "view").await;
    let shown_run = app.start_run(&shown, json!({})).await;
    app.wait_run(&shown_run).await;

    let shots = std::env::var("FLOQ_CONSOLE_SCREENSHOTS").unwrap_or_else(|_| {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "/var/tmp/floq-target".into());
        format!("{target}/console-screenshots")
    });
    std::fs::create_dir_all(&shots).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/console.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .env("CONSOLE_URL", &public)
        .env("CONSOLE_ADMIN_EMAIL", "operator@acme.test")
        .env("CONSOLE_VIEWER_EMAIL", "viewer@acme.test")
        .env("CONSOLE_EDITOR_EMAIL", "editor@acme.test")
        .env("CONSOLE_PASSWORD", PASSWORD)
        .env("CONSOLE_VIEWER_FLOW", &shown)
        .env("CONSOLE_VIEWER_RUN", &shown_run)
        .env("CONSOLE_SCREENSHOTS", &shots)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run {python} (set FLOQ_PLAYWRIGHT_PYTHON, or run deploy/local/test.sh --slow): {e}")
        });
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "the console walk-through failed:\n{stdout}\n{stderr}"
    );
    app.teardown().await;
}
