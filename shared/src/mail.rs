//! Platform mail: the messages floq itself sends (invitations, password
//! resets) through the operator's relay, `FLOQ_SMTP_URL`. This is operator
//! configuration, not flow traffic, so the flow egress policy does not apply;
//! flows send mail with the `smtp_send` node and their own credentials.
//!
//! Never log a message body: it carries a single-use sign-in link.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::Config;

const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// `FLOQ_SMTP_URL` is not set: the deployment sends no mail.
    #[error("platform mail is not configured (set FLOQ_SMTP_URL)")]
    NotConfigured,
    #[error("`{0}` is not an e-mail address")]
    Address(String),
    #[error("the message cannot be built")]
    Build(#[source] lettre::error::Error),
    /// Deliberately without the URL, which may hold the relay's password.
    #[error("FLOQ_SMTP_URL is not a usable SMTP URL")]
    Url,
    #[error("the SMTP relay did not take the message")]
    Send(#[source] lettre::transport::smtp::Error),
    #[error("the SMTP relay did not answer in time")]
    Timeout,
}

/// One plain-text message to one recipient.
pub struct Mail<'a> {
    pub to: &'a str,
    pub subject: &'a str,
    pub text: String,
}

/// Whether the deployment can send platform mail at all.
pub fn configured(config: &Config) -> bool {
    config.smtp_url.is_some()
}

pub async fn send(config: &Config, mail: Mail<'_>) -> Result<(), MailError> {
    let url = config.smtp_url.as_ref().ok_or(MailError::NotConfigured)?;
    // lettre spells STARTTLS as a query flag on smtp:// (as the smtp_send node does).
    let url = zeroize::Zeroizing::new(match url.expose().strip_prefix("smtp+starttls://") {
        Some(rest) => format!("smtp://{rest}?tls=required"),
        None => url.expose().to_string(),
    });
    let from: Mailbox = config
        .mail_from
        .parse()
        .map_err(|_| MailError::Address(config.mail_from.clone()))?;
    let to: Mailbox = mail.to.parse().map_err(|_| MailError::Address(mail.to.to_string()))?;
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(mail.subject)
        .header(ContentType::TEXT_PLAIN)
        .body(mail.text)
        .map_err(MailError::Build)?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.as_str())
        .map_err(|_| MailError::Url)?
        .timeout(Some(TIMEOUT))
        .build();
    tokio::time::timeout(TIMEOUT, transport.send(message))
        .await
        .map_err(|_| MailError::Timeout)?
        .map_err(MailError::Send)?;
    Ok(())
}

/// Sends in the background and logs a failure (without the body). Callers
/// whose answer must not depend on whether a message was sent use this, so
/// the relay's latency cannot tell an observer either.
pub fn send_detached(config: std::sync::Arc<Config>, to: String, subject: &'static str, text: String) {
    tokio::spawn(async move {
        let mail = Mail { to: &to, subject, text };
        if let Err(e) = send(&config, mail).await {
            tracing::warn!(error = %e, "platform mail not sent");
        }
    });
}
