//! Administrative commands run from the CLI (`floq-api admin …`).

use chrono::{DateTime, Utc};
use floq_shared::access::Role;
use floq_shared::db::{Pool as PgPool, StoreError};
use floq_shared::email::Email;
use floq_shared::ids::{CompanyId, UserId};
use serde::Serialize;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

use crate::auth::{self, Keys, MAX_KEY_TTL_SECS, MIN_KEY_TTL_SECS, SCOPES};
use crate::{audit, password};
use floq_shared::audit::{Actor, Entry, PLATFORM};
use floq_shared::{Config, db, sessions, users};

/// The actor of every entry an operator command writes.
pub const OPERATOR: &str = "admin-cli";

#[derive(Debug, Serialize)]
pub struct Bootstrapped {
    pub company_id: Uuid,
    pub user_id: Uuid,
    pub key_id: Uuid,
    pub api_key: String,
}

/// Creates a company, makes `email` its admin (creating the user if new) and
/// issues an API key for them.
pub async fn bootstrap(pool: &PgPool, config: &Config, company: &str, email: &str) -> anyhow::Result<Bootstrapped> {
    let company = company.trim();
    anyhow::ensure!(
        (1..=200).contains(&company.chars().count()),
        "--company must be 1 to 200 characters"
    );
    let email = address(email)?;
    anyhow::ensure!(
        email.as_str().len() <= 254
            && email
                .as_str()
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && d.contains('.')),
        "--email must be an e-mail address"
    );
    let company_id = Uuid::now_v7();
    // Users are global; an existing one simply joins the new company (the
    // operator running this command vouches for it, unlike a company admin).
    let existing = existing_user_id(pool, &email).await?;
    let mut tx = db::tenant_tx(pool, company_id).await?;
    users::create_company(&mut tx, CompanyId(company_id), company).await?;
    let user_id = match existing {
        Some(id) => UserId(id),
        None => {
            let new = users::NewIdentity {
                email: &email,
                name: "",
                password_hash: None,
                owner: Some(CompanyId(company_id)),
            };
            users::create(&mut tx, new).await?
        }
    };
    users::add_member(&mut tx, CompanyId(company_id), user_id, &[Role::Admin]).await?;
    let user_id = user_id.as_uuid();
    let keys = Keys::new(config.jwt_secret.expose());
    let expires_at = Utc::now() + config.api_key_ttl;
    let scopes = vec!["api".to_string()];
    let (key_id, api_key) =
        auth::issue_key(&mut tx, &keys, company_id, user_id, "bootstrap", &scopes, expires_at).await?;
    db::commit(tx).await?;
    Ok(Bootstrapped {
        company_id,
        user_id,
        key_id,
        api_key,
    })
}

/// An address given on the command line, by the API's rule for addresses.
fn address(raw: &str) -> anyhow::Result<Email> {
    Email::parse(raw).map_err(|e| anyhow::anyhow!("--email: {e}"))
}

/// Looks a user up by e-mail across companies, as the operator duty.
async fn existing_user_id(pool: &PgPool, email: &Email) -> Result<Option<Uuid>, StoreError> {
    let mut tx = db::duty_tx(pool, db::Duty::Operator).await?;
    let found = users::by_email(&mut tx, email).await?;
    db::commit(tx).await?;
    Ok(found.map(|identity| identity.id.as_uuid()))
}

/// Adds a user with the given roles to a company and issues them a key
/// (used by tests and by operators before the user-management API exists).
pub async fn add_member(
    pool: &PgPool,
    config: &Config,
    company_id: Uuid,
    email: &str,
    roles: &[&str],
) -> anyhow::Result<Bootstrapped> {
    let email = address(email)?;
    let roles = roles
        .iter()
        .map(|r| r.parse::<Role>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tx = db::tenant_tx(pool, company_id).await?;
    let new = users::NewIdentity {
        email: &email,
        name: "",
        password_hash: None,
        owner: Some(CompanyId(company_id)),
    };
    let user = users::create(&mut tx, new).await?;
    users::add_member(&mut tx, CompanyId(company_id), user, &roles).await?;
    let user_id = user.as_uuid();
    let keys = Keys::new(config.jwt_secret.expose());
    let scopes = vec!["api".to_string()];
    let (key_id, api_key) = auth::issue_key(
        &mut tx,
        &keys,
        company_id,
        user_id,
        "member",
        &scopes,
        Utc::now() + config.api_key_ttl,
    )
    .await?;
    db::commit(tx).await?;
    Ok(Bootstrapped {
        company_id,
        user_id,
        key_id,
        api_key,
    })
}

#[derive(Debug, Serialize)]
pub struct IssuedKey {
    pub company_id: Uuid,
    pub user_id: Uuid,
    pub key_id: Uuid,
    pub api_key: String,
    pub expires_at: DateTime<Utc>,
}

/// Issues a new key to an existing member (`floq-api admin issue-key`): the
/// way back in once the bootstrap key has expired. `company` may be left out
/// when the identity belongs to exactly one company. Audited as
/// `api_key.create` in the key's company and as `user.key_issued` in the
/// identity's other companies (without naming the company, which is not theirs
/// to know).
pub async fn issue_key(
    pool: &PgPool,
    config: &Config,
    email: &str,
    company: Option<Uuid>,
    ttl_seconds: Option<u64>,
    scope: &str,
) -> anyhow::Result<IssuedKey> {
    let scope = scope.trim();
    anyhow::ensure!(SCOPES.contains(&scope), "--scope must be one of: {}", SCOPES.join(", "));
    if let Some(ttl) = ttl_seconds {
        anyhow::ensure!(
            (MIN_KEY_TTL_SECS..=MAX_KEY_TTL_SECS).contains(&ttl),
            "--ttl must be {MIN_KEY_TTL_SECS} to {MAX_KEY_TTL_SECS} seconds"
        );
    }
    let email = address(email)?;
    let user_id = existing_user_id(pool, &email)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no identity has the e-mail address {email}"))?;
    let companies = companies_of(pool, user_id).await?;
    let company_id = match (company, companies.as_slice()) {
        (Some(id), _) if companies.iter().any(|(c, _)| *c == id) => id,
        (Some(id), _) => anyhow::bail!("{email} is not a member of company {id}"),
        (None, []) => anyhow::bail!("{email} is not a member of any company"),
        (None, [(id, _)]) => *id,
        (None, many) => anyhow::bail!(
            "{email} belongs to {} companies; choose one with --company: {}",
            many.len(),
            many.iter()
                .map(|(id, name)| format!("{id} ({name})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let ttl = ttl_seconds.map(Duration::from_secs).unwrap_or(config.api_key_ttl);
    let expires_at = Utc::now() + ttl;
    let scopes = vec![scope.to_string()];
    let keys = Keys::new(config.jwt_secret.expose());
    let name = OPERATOR;
    let mut tx = db::tenant_tx(pool, company_id).await?;
    let (key_id, api_key) = auth::issue_key(&mut tx, &keys, company_id, user_id, name, &scopes, expires_at).await?;
    let actor = Actor::system(OPERATOR);
    let key = json!({"id": key_id, "user_id": user_id, "name": name, "scopes": scopes, "expires_at": expires_at});
    audit::record(
        &mut tx,
        &[Entry::new(company_id, actor.clone(), "api_key.create")
            .resource("api_key", key_id)
            .change(None::<&serde_json::Value>, Some(&key))],
    )
    .await?;
    // One transaction for every company's entry, switching the tenant as
    // `accounts::accept` does: the key and its record commit together.
    for (other, _) in companies.iter().filter(|(c, _)| *c != company_id) {
        db::set_tenant(&mut tx, *other).await?;
        let entry = Entry::new(*other, actor.clone(), "user.key_issued")
            .resource("user", user_id)
            .details(json!({"scopes": scopes, "expires_at": expires_at}));
        audit::record(&mut tx, &[entry]).await?;
    }
    db::commit(tx).await?;
    Ok(IssuedKey {
        company_id,
        user_id,
        key_id,
        api_key,
        expires_at,
    })
}

/// The outcome of `floq-api admin set-password`.
#[derive(Debug, Serialize)]
pub struct PasswordSet {
    pub user_id: Uuid,
    pub companies: Vec<Uuid>,
    pub sessions_revoked: u64,
}

/// Sets an identity's password (`floq-api admin set-password`) by the rule and
/// hash the API uses, and ends its sessions so a browser signed in with the
/// old password is out. API keys stay: the operator may have just issued one.
/// Audited as `auth.password_set` in every company of the identity (the
/// platform's log when it belongs to none).
pub async fn set_password(pool: &PgPool, email: &str, new_password: String) -> anyhow::Result<PasswordSet> {
    let length = new_password.chars().count();
    anyhow::ensure!(
        (password::MIN_LENGTH..=password::MAX_LENGTH).contains(&length),
        "passwords are {} to {} characters",
        password::MIN_LENGTH,
        password::MAX_LENGTH
    );
    let email = address(email)?;
    let user_id = existing_user_id(pool, &email)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no identity has the e-mail address {email}"))?;
    let hash = password::hash(new_password).await?;
    let mut tx = db::duty_tx(pool, db::Duty::Operator).await?;
    users::set_password(&mut tx, UserId(user_id), &hash).await?;
    let sessions_revoked = sessions::revoke_all_of(&mut tx, UserId(user_id)).await?;
    let mut companies: Vec<Uuid> = users::companies_joined(&mut tx, UserId(user_id))
        .await?
        .into_iter()
        .map(CompanyId::as_uuid)
        .collect();
    companies.sort();
    let owners = if companies.is_empty() {
        vec![PLATFORM]
    } else {
        companies.clone()
    };
    let actor = Actor::system(OPERATOR);
    let entries: Vec<Entry> = owners
        .iter()
        .map(|c| {
            Entry::new(*c, actor.clone(), "auth.password_set")
                .resource("user", user_id)
                .details(json!({"sessions_revoked": sessions_revoked}))
        })
        .collect();
    audit::record(&mut tx, &entries).await?;
    db::commit(tx).await?;
    Ok(PasswordSet {
        user_id,
        companies,
        sessions_revoked,
    })
}

/// The companies an identity belongs to, with their names, by id, as the operator duty.
async fn companies_of(pool: &PgPool, user_id: Uuid) -> Result<Vec<(Uuid, String)>, StoreError> {
    let mut tx = db::duty_tx(pool, db::Duty::Operator).await?;
    let memberships = users::memberships_of(&mut tx, UserId(user_id)).await?;
    db::commit(tx).await?;
    let mut companies: Vec<(Uuid, String)> = memberships
        .into_iter()
        .map(|m| (m.company_id.as_uuid(), m.company_name))
        .collect();
    companies.sort();
    Ok(companies)
}

/// `floq-api admin verify-domain`: the operator vouches that the company
/// controls `domain` (instead of its DNS TXT record). The company must
/// already claim it on one of its SSO connections; a domain another company
/// verified stays theirs. Returns the connection it verified the domain for.
pub async fn verify_domain(pool: &PgPool, company: &str, domain: &str) -> anyhow::Result<Uuid> {
    let company_id: Uuid = company
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("--company must be a company id (a UUID)"))?;
    let domain = crate::domains::parse(domain).map_err(|e| anyhow::anyhow!("--domain {e}"))?;
    anyhow::ensure!(
        !crate::domains::is_webmail(&domain),
        "{domain} is a public webmail domain and cannot be claimed for single sign-on"
    );
    let mut tx = db::tenant_tx(pool, company_id).await?;
    let Some((connection_id, _, verified)) = floq_shared::sso::claim(&mut tx, CompanyId(company_id), &domain).await?
    else {
        anyhow::bail!(
            "company {company_id} has no SSO connection claiming {domain}: add it to a connection's email_domains first"
        );
    };
    if verified {
        return Ok(connection_id);
    }
    if let Err(e) = floq_shared::sso::mark_verified(
        &mut tx,
        CompanyId(company_id),
        &domain,
        floq_shared::sso::VerifiedBy::Operator,
    )
    .await
    {
        anyhow::ensure!(
            !matches!(e.fault(), db::Fault::Conflict { .. }),
            "{domain} is already verified by another company; it belongs to one connection only"
        );
        return Err(e.into());
    }
    let entry = Entry::new(company_id, Actor::system(OPERATOR), "sso.domain_verify")
        .resource("sso_connection", connection_id)
        .details(json!({"domain": domain, "by": "operator"}));
    audit::record(&mut tx, &[entry]).await?;
    db::commit(tx).await?;
    Ok(connection_id)
}
