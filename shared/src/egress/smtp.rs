//! SMTP for flows: `smtps://` (implicit TLS), `smtp+starttls://` (STARTTLS
//! required) or `smtp://` (plain, for local relays), with credentials in the
//! user info. The server name is resolved and vetted here; the transport
//! connects to the vetted address and still checks TLS against the name.

use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, Tokio1Executor};

use super::{EgressError, Policy};

#[derive(Debug, thiserror::Error)]
pub enum SmtpTargetError {
    #[error("not a valid smtp://, smtps:// or smtp+starttls:// URI")]
    Invalid,
    #[error(transparent)]
    Egress(#[from] EgressError),
}

impl Policy {
    pub async fn smtp_transport(
        &self,
        uri: &str,
        timeout: Duration,
    ) -> Result<AsyncSmtpTransport<Tokio1Executor>, SmtpTargetError> {
        let url = url::Url::parse(uri).map_err(|_| SmtpTargetError::Invalid)?;
        let (default_port, tls_kind) = match url.scheme() {
            "smtps" => (465, 2),
            "smtp+starttls" => (587, 1),
            "smtp" => (25, 0),
            _ => return Err(SmtpTargetError::Invalid),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(SmtpTargetError::Invalid)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port().unwrap_or(default_port);
        let addr = *self
            .resolve(&host, port)
            .await?
            .first()
            .ok_or(SmtpTargetError::Invalid)?;
        let tls = |name: String| TlsParameters::new(name).map_err(|_| SmtpTargetError::Invalid);
        // `smtp://…?tls=required` is lettre's spelling of STARTTLS; honour it rather than downgrade.
        let starttls = url.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned());
        let tls = match (tls_kind, starttls.as_deref()) {
            (2, _) => Tls::Wrapper(tls(host.clone())?),
            (1, _) | (0, Some("required")) => Tls::Required(tls(host.clone())?),
            (0, Some("opportunistic")) => Tls::Opportunistic(tls(host.clone())?),
            (0, None) => Tls::None,
            _ => return Err(SmtpTargetError::Invalid),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
            .port(addr.port())
            .tls(tls)
            .timeout(Some(timeout));
        if !url.username().is_empty() {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|d| d.into_owned())
                    .map_err(|_| SmtpTargetError::Invalid)
            };
            builder = builder.credentials(Credentials::new(
                decode(url.username())?,
                decode(url.password().unwrap_or_default())?,
            ));
        }
        Ok(builder.build())
    }
}
