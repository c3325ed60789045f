//! `sign`: a node type that signs or hashes data — HMAC-SHA256/512 (webhook
//! signatures most APIs ask for), SHA-256/512 digests, and HS256 JWTs.
//!
//! `key` may be a secret reference (`{"$secret": "signing_key"}`): the worker
//! resolves it for this node only, and it never appears in the output. A
//! secret bound to origins (`allowed_origins`) is refused: it may only be
//! sent to those origins, and a signature made with it goes wherever the flow
//! sends it next. The plugin needs no table.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use floq_shared::config::ConfigError;
use floq_shared::flow::NodeKind;
use floq_shared::flow::catalog::{NodeSpec, Ports};
use floq_shared::plugin::{NodeCall, NodeFailure, NodeOutcome, NodeType, Plugin, PluginFactory, Settings};
use futures_util::future::{BoxFuture, ready};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha512};

pub const NAME: &str = "sign";
pub const KIND: NodeKind = NodeKind::registered("sign");

const ALGORITHMS: [&str; 5] = ["hmac_sha256", "hmac_sha512", "sha256", "sha512", "jwt_hs256"];
/// A year: a longer-lived token should be a credential, not a flow's output.
const EXPIRES_MAX: u64 = 31_536_000;

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(&self, _settings: &Settings) -> Result<Arc<dyn Plugin>, ConfigError> {
        Ok(Arc::new(SignPlugin))
    }
}

pub struct SignPlugin;

impl Plugin for SignPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn node_types(&self) -> Vec<Arc<dyn NodeType>> {
        vec![Arc::new(Sign)]
    }
}

pub struct Sign;

impl NodeType for Sign {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            kind: KIND,
            name: KIND.as_str(),
            summary: "Signs or hashes `data` (a string as its UTF-8 bytes, other JSON as its text): `hmac_sha256`, \
                      `hmac_sha512` and `jwt_hs256` with `key` (a secret reference works), `sha256` and `sha512` \
                      without; outputs `{algorithm, encoding, value}`.",
            params_schema: json!({
                "type": "object",
                "properties": {
                    "algorithm": {"enum": ALGORITHMS},
                    "data": {},
                    "key": {"type": "string", "minLength": 1},
                    "encoding": {"enum": ["hex", "base64", "base64url"]},
                    "expires_in": {"type": "integer", "minimum": 1, "maximum": EXPIRES_MAX}
                },
                "required": ["algorithm", "data"],
                "additionalProperties": false,
                "if": {"properties": {"algorithm": {"enum": ["sha256", "sha512"]}}},
                "then": {"not": {"required": ["key"]}},
                "else": {"required": ["key"]}
            }),
            ports: Ports::Single,
            raw_params: &[],
            runs_scripts: false,
            secret_params: &["key"],
        }
    }

    fn run(&self, call: NodeCall) -> BoxFuture<'static, NodeOutcome> {
        Box::pin(ready(sign(&call.params, &call.bound_secrets)))
    }
}

fn invalid(message: impl Into<String>) -> NodeFailure {
    NodeFailure::new("invalid_params", message)
}

fn bytes_of(data: &Value) -> Vec<u8> {
    match data {
        Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

fn encode(raw: &[u8], encoding: &str) -> String {
    match encoding {
        "base64" => STANDARD.encode(raw),
        "base64url" => URL_SAFE_NO_PAD.encode(raw),
        _ => hex::encode(raw),
    }
}

fn hmac<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub fn sign(p: &Value, bound_secrets: &[String]) -> NodeOutcome {
    if let Some(bound) = bound_secrets.first() {
        return Err(NodeFailure::new(
            "destination_not_allowed",
            format!(
                "the secret `{}` is bound to origins (allowed_origins), so it may not sign data that goes anywhere",
                bound
            ),
        ));
    }
    let algorithm = p["algorithm"]
        .as_str()
        .filter(|a| ALGORITHMS.contains(a))
        .ok_or_else(|| invalid(format!("`algorithm` must be one of {}", ALGORITHMS.join(", "))))?;
    let encoding = match &p["encoding"] {
        Value::Null => "hex",
        Value::String(e) if ["hex", "base64", "base64url"].contains(&e.as_str()) => e.as_str(),
        _ => return Err(invalid("`encoding` must be hex, base64 or base64url")),
    };
    let key = || {
        p["key"]
            .as_str()
            .filter(|k| !k.is_empty())
            .map(str::as_bytes)
            .ok_or_else(|| invalid(format!("`{algorithm}` needs `key`")))
    };
    let data = bytes_of(&p["data"]);
    let value = match algorithm {
        "hmac_sha256" => encode(&hmac::<Hmac<Sha256>>(key()?, &data), encoding),
        "hmac_sha512" => encode(&hmac::<Hmac<Sha512>>(key()?, &data), encoding),
        "sha256" => encode(&Sha256::digest(&data), encoding),
        "sha512" => encode(&Sha512::digest(&data), encoding),
        _ => jwt(p, key()?)?,
    };
    Ok(
        json!({"algorithm": algorithm, "encoding": if algorithm == "jwt_hs256" { "jwt" } else { encoding }, "value": value}),
    )
}

fn jwt(p: &Value, key: &[u8]) -> Result<String, NodeFailure> {
    let Value::Object(mut claims) = p["data"].clone() else {
        return Err(invalid("`jwt_hs256` signs claims: `data` must be an object"));
    };
    // The token's lifetime is `expires_in`'s alone, so its cap holds.
    if let Some(claim) = ["exp", "iat", "nbf"].into_iter().find(|c| claims.contains_key(*c)) {
        return Err(invalid(format!(
            "`data.{claim}` is set by the node: give `expires_in` instead"
        )));
    }
    if let Some(ttl) = p.get("expires_in").filter(|v| !v.is_null()) {
        let ttl = ttl
            .as_u64()
            .filter(|t| (1..=EXPIRES_MAX).contains(t))
            .ok_or_else(|| invalid(format!("`expires_in` must be 1 to {EXPIRES_MAX} seconds")))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + ttl));
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .map_err(|e| NodeFailure::new("sign_failed", format!("the token could not be made: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(params: Value) -> NodeOutcome {
        sign(&params, &[])
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let out =
            call(json!({"algorithm": "hmac_sha256", "key": "Jefe", "data": "what do ya want for nothing?"})).unwrap();
        assert_eq!(
            out["value"],
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn digests_and_encodings() {
        let out = call(json!({"algorithm": "sha256", "data": "abc", "encoding": "base64"})).unwrap();
        assert_eq!(out["value"], "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
        let e = call(json!({"algorithm": "hmac_sha512", "data": "abc"})).unwrap_err();
        assert_eq!(e.code, "invalid_params");
    }

    #[test]
    fn jwt_is_verifiable_with_its_key() {
        let out =
            call(json!({"algorithm": "jwt_hs256", "key": "k3y", "data": {"sub": "42"}, "expires_in": 60})).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.required_spec_claims.clear();
        let decoded = jsonwebtoken::decode::<Value>(
            out["value"].as_str().unwrap(),
            &jsonwebtoken::DecodingKey::from_secret(b"k3y"),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims["sub"], "42");
        assert!(decoded.claims["exp"].as_u64().is_some());
    }

    #[test]
    fn a_secret_bound_to_origins_is_refused() {
        let params = json!({"algorithm": "hmac_sha256", "key": "x", "data": "y"});
        assert_eq!(
            sign(&params, &["partner_key".into()]).unwrap_err().code,
            "destination_not_allowed"
        );
    }
}
