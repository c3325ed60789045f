//! PostgreSQL for flows: the credential's URI must name a TCP host; it is
//! resolved and vetted here and the connection goes to that address (never a
//! Unix socket, never a default host picked from the environment).

use sqlx::postgres::PgConnectOptions;

use super::{EgressError, Policy};

#[derive(Debug, thiserror::Error)]
pub enum PgTargetError {
    #[error("the connection URI is not a valid postgres:// URI with a host")]
    Invalid,
    #[error("the connection URI must name a user, a password and a database")]
    Incomplete,
    #[error(transparent)]
    Egress(#[from] EgressError),
}

impl Policy {
    /// Connect options for `uri`, pinned to one vetted address.
    pub async fn postgres_options(&self, uri: &str) -> Result<PgConnectOptions, PgTargetError> {
        let url = url::Url::parse(uri).map_err(|_| PgTargetError::Invalid)?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(PgTargetError::Invalid);
        }
        // Only parameters that change nothing on this machine: `host`/`hostaddr`/`port`
        // would override the vetted authority (sockets included), and the `ssl*` file
        // parameters would make the worker read (and present) files of its own host.
        const ALLOWED: [&str; 4] = ["sslmode", "application_name", "connect_timeout", "options"];
        if url.query_pairs().any(|(k, _)| !ALLOWED.contains(&k.as_ref())) {
            return Err(PgTargetError::Invalid);
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(PgTargetError::Invalid),
        };
        // sqlx fills a missing user, password or database from the worker's own `PG*`
        // environment and `~/.pgpass`: a tenant's credential must name all three.
        if url.username().is_empty() || url.password().is_none_or(str::is_empty) || matches!(url.path(), "" | "/") {
            return Err(PgTargetError::Incomplete);
        }
        let port = url.port().unwrap_or(5432);
        let options: PgConnectOptions = uri.parse().map_err(|_| PgTargetError::Invalid)?;
        if options.get_socket().is_some() {
            return Err(PgTargetError::Invalid);
        }
        let addr = *self.resolve(&host, port).await?.first().ok_or(PgTargetError::Invalid)?;
        Ok(options.host(&addr.ip().to_string()).port(addr.port()))
    }
}
