//! `smtp_send`: sends one e-mail through the server of `smtp_uri`:
//! `smtps://` (implicit TLS), `smtp+starttls://` (STARTTLS required) or
//! `smtp://` (plain, for local relays). Credentials come in the URI's user
//! info. The server is reached through the egress policy. Outputs the accepted recipients and the server's reply code.

use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::{AsyncTransport, Message};
use serde_json::{Value, json};

use super::{Node, NodeCtx, NodeError, NodeOutput, NodeResult, egress_error, millis};
use floq_shared::egress::{Policy, SmtpTargetError, origin};

pub struct SmtpSend;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

impl Node for SmtpSend {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        async move {
            let uri = match (&ctx.credential, field(&ctx.params, "smtp_uri")) {
                (Some(c), _) if c.kind == "smtp" => c.field("uri").unwrap_or_default().to_string(),
                (Some(c), _) => {
                    return Err(NodeError::invalid(format!(
                        "a `{}` credential is not an SMTP server",
                        c.kind
                    )));
                }
                (None, Some(uri)) => uri.to_string(),
                (None, None) => return Err(NodeError::invalid("`smtp_uri` or `credential_id` is required")),
            };
            ctx.check_destination(&origin::of_uri(&uri).unwrap_or_default(), true)?;
            let message_id = message_id(&ctx.idempotency_key(), &ctx.params);
            send(&ctx.params, &ctx.env.egress, zeroize::Zeroizing::new(uri), message_id).await
        }
        .boxed()
    }
}

fn field<'a>(params: &'a Value, name: &str) -> Option<&'a str> {
    params.get(name).and_then(Value::as_str)
}

fn mailbox(raw: &str, what: &str) -> Result<Mailbox, NodeError> {
    raw.parse()
        .map_err(|_| NodeError::invalid(format!("`{what}` is not an e-mail address: {raw}")))
}

/// A `Message-ID` that is the same each time this node sends in this run
/// (its idempotency key, hashed: the key holds node ids, which an address
/// may not), so receiving systems can drop a repeated send as a duplicate.
/// The domain is the sender's.
fn message_id(key: &str, params: &Value) -> String {
    use sha2::Digest;
    let digest = hex::encode(&sha2::Sha256::digest(key.as_bytes())[..16]);
    let domain = field(params, "from")
        .and_then(|f| f.parse::<Mailbox>().ok())
        .map(|m| m.email.domain().to_string())
        .unwrap_or_else(|| "floq.invalid".into());
    format!("<{digest}.floq@{domain}>")
}

async fn send(params: &Value, egress: &Policy, uri: zeroize::Zeroizing<String>, message_id: String) -> NodeResult {
    let timeout = millis(params, "timeout_ms", DEFAULT_TIMEOUT, MAX_TIMEOUT)?;
    let from = mailbox(field(params, "from").unwrap_or_default(), "from")?;
    let to: Vec<Mailbox> = match params.get("to") {
        Some(Value::String(one)) => vec![mailbox(one, "to")?],
        Some(Value::Array(many)) if !many.is_empty() => many
            .iter()
            .map(|v| mailbox(v.as_str().unwrap_or_default(), "to"))
            .collect::<Result<_, _>>()?,
        _ => return Err(NodeError::invalid("`to` must be an address or a list of addresses")),
    };
    let mut message = Message::builder()
        .message_id(Some(message_id))
        .from(from)
        .subject(field(params, "subject").unwrap_or_default());
    for rcpt in &to {
        message = message.to(rcpt.clone());
    }
    let text = field(params, "text").map(str::to_string);
    let html = field(params, "html").map(str::to_string);
    let message = match (text, html) {
        (Some(text), Some(html)) => message.multipart(MultiPart::alternative_plain_html(text, html)),
        (None, Some(html)) => message.header(ContentType::TEXT_HTML).body(html),
        (text, None) => message.header(ContentType::TEXT_PLAIN).body(text.unwrap_or_default()),
    }
    .map_err(|e| NodeError::invalid(format!("the message cannot be built: {e}")))?;

    let transport = egress.smtp_transport(&uri, timeout).await.map_err(|e| match e {
        SmtpTargetError::Egress(e) => egress_error(&e),
        SmtpTargetError::Invalid => NodeError::invalid("`smtp_uri` is not a valid SMTP URI"),
    })?;
    let response = tokio::time::timeout(timeout, transport.send(message))
        .await
        .map_err(|_| NodeError::new("smtp_timeout", "the SMTP server did not answer in time"))?
        // The server's reply may quote addresses but never our credentials.
        .map_err(|e| NodeError::new("smtp_error", format!("sending failed: {}", smtp_reason(&e))))?;
    Ok(NodeOutput::value(json!({
        "accepted": to.iter().map(|m| m.email.to_string()).collect::<Vec<_>>(),
        "code": response.code().to_string(),
    })))
}

fn smtp_reason(e: &lettre::transport::smtp::Error) -> String {
    if e.is_permanent() {
        "the server refused the message permanently".into()
    } else if e.is_transient() {
        "the server refused the message for now".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        "could not talk to the SMTP server".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_id_is_stable_per_key_and_in_the_senders_domain() {
        let params = json!({"from": "ops@example.com"});
        let a = message_id("r:send", &params);
        assert_eq!(a, message_id("r:send", &params));
        assert_ne!(a, message_id("r:each[1]/send", &params));
        assert!(a.starts_with('<') && a.ends_with(".floq@example.com>"), "{a}");
    }
}
