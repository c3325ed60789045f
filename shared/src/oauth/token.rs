//! Calls to a registered provider's token endpoint (RFC 6749 §4.1.3 and §6):
//! exchanging an authorization code (the API, once per connect) and
//! refreshing an access token (the worker). Each goes through the egress
//! policy with the provider's token endpoint trusted (the operator
//! registered it; no tenant can name another), never follows a redirect, and
//! never puts a token or secret into an error.

use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::providers::{ClientAuth, Provider};
use crate::egress::{Policy, SendError};

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BODY: usize = 64 * 1024;

/// What is asked for.
pub enum Grant<'a> {
    Code {
        code: &'a str,
        redirect_uri: &'a str,
        verifier: Option<&'a str>,
    },
    Refresh {
        refresh_token: &'a str,
    },
}

/// The client's own credentials at the provider.
pub struct Client<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// A successful token response.
pub struct Tokens {
    pub access_token: Zeroizing<String>,
    /// Absent when the provider keeps the refresh token it had issued.
    pub refresh_token: Option<Zeroizing<String>>,
    /// Seconds the access token lives, if the provider says.
    pub expires_in: Option<i64>,
    /// The scopes granted, if the provider says (space-separated in the response).
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The grant is no longer good (`invalid_grant`): only a new connect helps.
    #[error("the provider refused the grant ({0}); connect the credential again")]
    InvalidGrant(String),
    /// Any other refusal: a client misconfiguration or the provider's trouble.
    #[error("the provider refused the token request ({0})")]
    Refused(String),
    #[error("{0}")]
    Egress(crate::egress::EgressError),
    #[error("the provider's token endpoint could not be reached")]
    Transport,
    #[error("the provider's token response was not understood")]
    Malformed,
}

#[derive(Deserialize)]
struct Answer {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
    error: Option<String>,
}

/// Error codes that mean the refresh token (or code) is dead; Slack answers
/// `invalid_refresh_token` where RFC 6749 says `invalid_grant`.
fn dead_grant(error: &str) -> bool {
    matches!(
        error,
        "invalid_grant" | "invalid_refresh_token" | "token_revoked" | "bad_refresh_token"
    )
}

/// One token request to `provider` through `egress` (with its token endpoint trusted).
pub async fn request(
    http: &reqwest::Client,
    egress: &Policy,
    provider: &Provider,
    client: Client<'_>,
    grant: Grant<'_>,
) -> Result<Tokens, TokenError> {
    let url = url::Url::parse(&provider.token_url).map_err(|_| TokenError::Malformed)?;
    let request = build(http, &url, provider, &client, &grant)?;
    let trusted = egress.trusting(&url);
    let mut response = trusted.send(http, request).await.map_err(|e| match e {
        SendError::Egress(e) => TokenError::Egress(e),
        SendError::Http(_) => TokenError::Transport,
    })?;
    let status = response.status();
    let mut bytes = Zeroizing::new(Vec::new());
    while let Some(chunk) = response.chunk().await.map_err(|_| TokenError::Transport)? {
        if bytes.len() + chunk.len() > MAX_BODY {
            return Err(TokenError::Malformed);
        }
        bytes.extend_from_slice(&chunk);
    }
    let answer: Answer = match serde_json::from_slice(&bytes) {
        Ok(a) => a,
        Err(_) if !status.is_success() => return Err(TokenError::Refused(format!("HTTP {}", status.as_u16()))),
        Err(_) => return Err(TokenError::Malformed),
    };
    if let Some(error) = answer.error.filter(|_| answer.access_token.is_none()) {
        // Error codes are short ASCII words by the RFC; anything else is not echoed.
        let code = if error.len() <= 64 && error.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            error
        } else {
            "unknown_error".into()
        };
        return Err(if dead_grant(&code) {
            TokenError::InvalidGrant(code)
        } else {
            TokenError::Refused(code)
        });
    }
    if !status.is_success() {
        return Err(TokenError::Refused(format!("HTTP {}", status.as_u16())));
    }
    let access_token = answer
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or(TokenError::Malformed)?;
    let expires_in = match answer.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        // Some providers send it as a string.
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    Ok(Tokens {
        access_token: Zeroizing::new(access_token),
        refresh_token: answer.refresh_token.filter(|t| !t.is_empty()).map(Zeroizing::new),
        expires_in,
        scopes: answer.scope.map(|s| s.split_whitespace().map(str::to_string).collect()),
    })
}

/// The token request: synchronous, so the form serializer (not `Send`) never lives across an await.
fn build(
    http: &reqwest::Client,
    url: &url::Url,
    provider: &Provider,
    client: &Client<'_>,
    grant: &Grant<'_>,
) -> Result<reqwest::Request, TokenError> {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    match grant {
        Grant::Code {
            code,
            redirect_uri,
            verifier,
        } => {
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", redirect_uri);
            if let Some(v) = verifier {
                form.append_pair("code_verifier", v);
            }
        }
        Grant::Refresh { refresh_token } => {
            form.append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", refresh_token);
        }
    }
    let mut builder = http
        .post(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .timeout(TIMEOUT);
    match provider.client_auth {
        ClientAuth::Post => {
            form.append_pair("client_id", client.id)
                .append_pair("client_secret", client.secret);
        }
        ClientAuth::Basic => {
            // RFC 6749 §2.3.1: each part form-encoded before Basic encoding.
            let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            builder = builder.basic_auth(enc(client.id), Some(enc(client.secret)));
        }
    }
    let body = Zeroizing::new(form.finish());
    builder
        .body(body.as_str().to_owned())
        .build()
        .map_err(|_| TokenError::Malformed)
}
