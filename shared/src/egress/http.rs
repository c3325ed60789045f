//! HTTP for flows: a client that cannot resolve a name by itself. Every
//! request goes through [`Policy::send`], which vets the URL's host and
//! hands the client exactly the vetted addresses (through a task-local the
//! resolver reads), so the connection goes where the check looked.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{EgressError, Policy};

tokio::task_local! {
    static PINNED: Pinned;
}

struct Pinned {
    host: String,
    addrs: Vec<SocketAddr>,
}

/// Answers only for the host of the request being sent, with its vetted
/// addresses; any other lookup fails closed.
struct PinnedResolver;

impl reqwest::dns::Resolve for PinnedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let vetted = PINNED
            .try_with(|p| p.host.eq_ignore_ascii_case(name.as_str()).then(|| p.addrs.clone()))
            .ok()
            .flatten();
        Box::pin(async move {
            match vetted {
                Some(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                None => Err("egress: name resolution outside a vetted request".into()),
            }
        })
    }
}

/// The client every flow-driven HTTP call uses: no redirects (callers follow
/// and vet each hop), no proxy from the environment, pinned resolution.
pub fn client(user_agent: &str) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(PinnedResolver))
        .user_agent(user_agent)
        .build()
}

/// A refused connection, or the transport's own failure.
#[derive(Debug)]
pub enum SendError {
    Egress(EgressError),
    Http(reqwest::Error),
}

impl Policy {
    /// Sends one request (one hop: redirects are the caller's) to vetted addresses only.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        request: reqwest::Request,
    ) -> Result<reqwest::Response, SendError> {
        let url = request.url();
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(0);
        let addrs = self.resolve(&host, port).await.map_err(SendError::Egress)?;
        let pinned = Pinned {
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            addrs,
        };
        PINNED
            .scope(pinned, client.execute(request))
            .await
            .map_err(SendError::Http)
    }
}

#[cfg(test)]
mod tests {
    /// The client alone resolves nothing: a name reaches a socket only through `Policy::send`.
    #[tokio::test]
    async fn the_client_cannot_resolve_a_name_outside_a_vetted_send() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = super::client("test").unwrap();
        let err = client
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
    }
}
