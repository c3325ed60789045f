//! What a request carries about its caller, as plain data: the request's id
//! and client address ([`RequestMeta`], set by the request envelope), and the
//! authenticated caller ([`Principal`], made by the `auth` extractor). Audit
//! entries name their actor from these. This module depends on nothing else
//! in the API, so authentication, authorization, auditing and the handlers
//! can all use it without depending on one another.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use floq_shared::access::Role;
use floq_shared::audit::{self, Actor, ActorType, Entry, Via};
use uuid::Uuid;

/// Set by the request envelope on every request.
#[derive(Debug)]
pub struct RequestMeta {
    pub request_id: String,
    pub client_ip: IpAddr,
    caller: OnceLock<Caller>,
    /// Set when the plugins' `on_authorize` ran, so it runs once per request.
    authorized: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Copy, Debug)]
struct Caller {
    user_id: Uuid,
    company_id: Uuid,
    credential: Credential,
}

impl RequestMeta {
    pub fn new(request_id: String, client_ip: IpAddr) -> Arc<Self> {
        Arc::new(Self {
            request_id,
            client_ip,
            caller: OnceLock::new(),
            authorized: Default::default(),
        })
    }

    /// True the first time it is asked in this request.
    pub fn first_authorization(&self) -> bool {
        !self.authorized.swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// Called once authentication succeeds, so the request's own entry names the caller.
    pub fn authenticated(&self, principal: &Principal) {
        let _ = self.caller.set(Caller {
            user_id: principal.user_id,
            company_id: principal.company_id,
            credential: principal.credential,
        });
    }

    /// The company the request's entries belong to: the caller's, or the platform's.
    pub fn company_id(&self) -> Uuid {
        self.caller.get().map_or(audit::PLATFORM, |c| c.company_id)
    }

    pub fn actor(&self) -> Actor {
        match self.caller.get() {
            Some(c) => user_actor(c.user_id, c.credential, self),
            None => Actor::anonymous(Some(self.client_ip.to_string()), Some(self.request_id.clone())),
        }
    }
}

fn user_actor(user_id: Uuid, credential: Credential, meta: &RequestMeta) -> Actor {
    Actor {
        kind: ActorType::User,
        id: Some(user_id),
        label: None,
        via: Some(match credential {
            Credential::ApiKey(id) => (Via::ApiKey, id),
            Credential::Session(id) => (Via::Session, id),
        }),
        client_ip: Some(meta.client_ip.to_string()),
        request_id: Some(meta.request_id.clone()),
    }
}

impl Principal {
    pub fn actor(&self) -> Actor {
        user_actor(self.user_id, self.credential, &self.request)
    }

    /// An entry by this caller, in their company, about one resource.
    pub fn audit(&self, action: &str, resource_type: &str, resource_id: impl ToString) -> Entry {
        Entry::new(self.company_id, self.actor(), action).resource(resource_type, resource_id)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Credential {
    ApiKey(Uuid),
    Session(Uuid),
}

/// Who is calling, in which company, with which roles there.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: Uuid,
    pub company_id: Uuid,
    pub credential: Credential,
    pub roles: Vec<Role>,
    /// The request this caller made: its id and client address, for audit entries.
    pub request: Arc<RequestMeta>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }
}
