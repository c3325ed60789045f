//! The API's OpenAPI document, as served (`GET /api/v1/openapi.json`), read
//! for the tests: the permission and tenancy sweeps iterate its operations,
//! so an endpoint the router serves cannot be left out of them (every route
//! is registered with its documentation, and a test fails on one that is not).
//!
//! The document states each operation's guard in its `security`: none for a
//! public operation; the API-key and session schemes otherwise, whose scopes
//! name the capability needed (empty: any authenticated caller).

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::TestApp;
use floq_api::openapi::{BEARER, SESSION};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guard {
    /// No credential (signing in, a webhook's token, the document itself).
    Public,
    /// Any authenticated caller; what they reach is limited by ownership.
    Authenticated,
    /// A role holding this capability (`flow:edit`).
    Capability(String),
    /// An API key carrying this scope, whatever the role (`mcp`: the MCP
    /// endpoint, documented with the API-key scheme alone).
    KeyScope(String),
}

#[derive(Clone, Debug)]
pub struct Operation {
    pub method: Method,
    /// The path with `{placeholders}`, as documented.
    pub template: String,
    pub guard: Guard,
    /// The operation object itself.
    pub spec: Value,
}

impl Operation {
    /// The names of the template's `{placeholders}`.
    pub fn placeholders(&self) -> Vec<String> {
        placeholders(&self.template)
    }

    /// The template with every placeholder replaced by its fixture; panics
    /// naming a placeholder without one, so a new parameter needs a fixture.
    pub fn path(&self, fixtures: &[(&str, &str)]) -> String {
        let mut path = self.template.clone();
        for name in self.placeholders() {
            let value = fixtures
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("no fixture for {{{name}}} in {} {}", self.method, self.template));
            path = path.replace(&format!("{{{name}}}"), value);
        }
        path
    }

    pub fn has_request_body(&self) -> bool {
        self.spec.get("requestBody").is_some()
    }
}

pub fn placeholders(template: &str) -> Vec<String> {
    template
        .split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_string()))
        .collect()
}

/// The served document, fetched without credentials.
pub async fn document(app: &TestApp) -> Value {
    let resp = app
        .client
        .get(format!("{}/api/v1/openapi.json", app.base))
        .send()
        .await
        .expect("request sent");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.expect("the document is JSON")
}

/// Every operation the served document lists.
pub async fn operations(app: &TestApp) -> Vec<Operation> {
    operations_of(&document(app).await)
}

pub const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

pub fn operations_of(doc: &Value) -> Vec<Operation> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut ops = Vec::new();
    for (template, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for key in item.keys() {
            assert!(
                METHODS.contains(&key.as_str()) || key == "parameters",
                "unexpected `{key}` under {template}"
            );
        }
        for method in METHODS {
            let Some(spec) = item.get(method) else { continue };
            ops.push(Operation {
                method: method.to_uppercase().parse().expect("a method"),
                template: template.clone(),
                guard: guard(method, template, spec),
                spec: spec.clone(),
            });
        }
    }
    assert!(
        ops.len() > 20,
        "the document lists too little: {} operations",
        ops.len()
    );
    ops
}

/// The guard an operation's `security` states: the API-key and the session
/// scheme, both with the same scopes (at most one capability).
fn guard(method: &str, template: &str, spec: &Value) -> Guard {
    let Some(requirements) = spec.get("security") else {
        return Guard::Public;
    };
    let requirements = requirements.as_array().expect("security is a list");
    let mut schemes: Vec<&str> = Vec::new();
    let mut scopes: Option<Vec<String>> = None;
    for requirement in requirements {
        let requirement = requirement.as_object().expect("a security requirement is an object");
        assert_eq!(requirement.len(), 1, "{method} {template}: one scheme per requirement");
        let (scheme, these) = requirement.iter().next().expect("one entry");
        schemes.push(scheme);
        let these: Vec<String> = serde_json::from_value(these.clone()).expect("scopes are strings");
        if let Some(seen) = &scopes {
            assert_eq!(
                seen, &these,
                "{method} {template}: every scheme needs the same capability"
            );
        }
        scopes = Some(these);
    }
    schemes.sort();
    if schemes == [BEARER] {
        let scopes = scopes.unwrap_or_default();
        assert_eq!(
            scopes,
            ["mcp"],
            "{method} {template}: only the MCP endpoint takes an API key alone"
        );
        return Guard::KeyScope(scopes[0].clone());
    }
    assert_eq!(
        schemes,
        [BEARER, SESSION],
        "{method} {template}: a guarded operation takes an API key or a session"
    );
    let scopes = scopes.unwrap_or_default();
    match scopes.as_slice() {
        [] => Guard::Authenticated,
        [capability] => Guard::Capability(capability.clone()),
        more => panic!("{method} {template}: one capability per operation, not {more:?}"),
    }
}
