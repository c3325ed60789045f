//! The store's one error type and what each database failure means, decided
//! here once: the API turns a [`Fault`] into its status, batch writers ask
//! [`StoreError::is_refusal`] whether splitting a batch can help, and nobody
//! outside this module reads SQLSTATEs or constraint names.

use std::fmt;

/// A statement failed. Wraps the driver's error so callers never depend on
/// the driver; the cause stays attached for the log line that reports it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StoreError(#[from] sqlx::Error);

/// What a failure means to whoever asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A unique value another writer holds; the client chose it when `field` is known.
    Conflict { field: Option<&'static str> },
    /// Something the statement refers to was deleted meanwhile (a foreign key).
    Removed,
    /// Text PostgreSQL cannot store (NUL, or not in the server encoding).
    InvalidText,
    /// A deadlock or serialization failure that outlived the statement's retries.
    Busy,
    /// The database is down, restarting, out of connections or unreachable.
    Unavailable,
    /// Anything no client can fix: a bug, a statement the server cannot run.
    Other,
}

impl StoreError {
    /// A row the store read back that breaks its own invariants.
    pub fn corrupt(what: impl fmt::Display) -> Self {
        Self(sqlx::Error::Decode(what.to_string().into()))
    }

    /// The pool is gone (shutting down).
    pub fn closed() -> Self {
        Self(sqlx::Error::PoolClosed)
    }

    pub fn fault(&self) -> Fault {
        if self.is_outage() {
            return Fault::Unavailable;
        }
        let sqlx::Error::Database(db) = &self.0 else {
            return Fault::Other;
        };
        match db.code().as_deref() {
            // untranslatable_character, character_not_in_repertoire
            Some("22P05" | "22021") => Fault::InvalidText,
            Some("23505") => Fault::Conflict {
                field: db.constraint().and_then(unique_field),
            },
            Some("23503") => Fault::Removed,
            // serialization_failure, deadlock_detected
            Some("40001" | "40P01") => Fault::Busy,
            _ => Fault::Other,
        }
    }

    /// The SQLSTATE the server sent, if any.
    pub fn sqlstate(&self) -> Option<String> {
        match &self.0 {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }

    /// Whether PostgreSQL refused a statement because of the rows it carried,
    /// as opposed to being unreachable or unable to run anything. Refusals are
    /// worth splitting a batch over: data exceptions (class 22, e.g. 22P05 for a
    /// NUL), integrity violations (23), program limits such as an oversized
    /// value (54), a raised exception (P0), and deadlocks or serialization
    /// failures (40), which a smaller batch usually avoids. Everything else —
    /// I/O, pool timeouts, connection exceptions (08), insufficient resources
    /// (53), operator intervention (57), system errors (58), or a statement the
    /// server cannot run at all (42) — fails every part alike, so splitting
    /// would only multiply the load.
    pub fn is_refusal(&self) -> bool {
        match &self.0 {
            sqlx::Error::Encode(_) => true,
            sqlx::Error::Database(_) => self
                .sqlstate()
                .is_some_and(|code| matches!(code.get(..2), Some("22" | "23" | "54" | "P0" | "40"))),
            _ => false,
        }
    }

    /// The server cancelled the statement (`statement_timeout`).
    pub fn is_timeout(&self) -> bool {
        self.sqlstate().as_deref() == Some("57014")
    }

    /// The server's own message for a refused statement (the `postgres` node
    /// shows it to the flow's author; it names their query, not ours).
    pub fn server_message(&self) -> Option<&str> {
        match &self.0 {
            sqlx::Error::Database(db) => Some(db.message()),
            _ => None,
        }
    }

    fn is_outage(&self) -> bool {
        match &self.0 {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // connection_exception (08), too_many_connections, admin_shutdown,
                // crash_shutdown, cannot_connect_now, database_dropped
                code.starts_with("08") || matches!(code.as_ref(), "53300" | "57P01" | "57P02" | "57P03" | "57P04")
            }),
            _ => false,
        }
    }
}

/// The request field a unique constraint (or unique index) protects, for a
/// `409` that names it. Constraints not listed protect nothing a client
/// chooses (random tokens, internal keys) and name no field.
fn unique_field(constraint: &str) -> Option<&'static str> {
    Some(match constraint {
        "users_email_key" => "email",
        "groups_company_id_name_key" | "flow_groups_company_id_name_key" | "credentials_company_id_name_key" => "name",
        "kv_pkey" => "key",
        "sso_domains_verified_key" | "sso_domains_company_id_domain_key" => "email_domains",
        "sso_connections_company_id_name_key" => "name",
        "flow_mcp_tools_company_id_tool_name_key" => "tool_name",
        "memberships_pkey" | "group_members_pkey" => "user_id",
        "idempotency_keys_pkey" => "Idempotency-Key",
        c if c.starts_with("grants_company_id_subject_type") => "grant",
        _ => return None,
    })
}

/// A database refusal with a given SQLSTATE and constraint, for tests of
/// code that reacts to refusals without a database.
pub mod fake {
    use std::borrow::Cow;
    use std::fmt;

    use super::StoreError;

    #[derive(Debug)]
    struct Refused {
        code: &'static str,
        constraint: Option<&'static str>,
    }

    impl fmt::Display for Refused {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "refused with {}", self.code)
        }
    }

    impl std::error::Error for Refused {}

    impl sqlx::error::DatabaseError for Refused {
        fn message(&self) -> &str {
            "refused"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.code))
        }
        fn constraint(&self) -> Option<&str> {
            self.constraint
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    /// A refusal with `code` (a SQLSTATE).
    pub fn refused(code: &'static str) -> StoreError {
        refused_on(code, None)
    }

    /// A refusal with `code` naming `constraint`.
    pub fn refused_on(code: &'static str, constraint: Option<&'static str>) -> StoreError {
        StoreError(sqlx::Error::Database(Box::new(Refused { code, constraint })))
    }

    /// The pool timed out: an outage.
    pub fn pool_timeout() -> StoreError {
        StoreError(sqlx::Error::PoolTimedOut)
    }

    /// The connection dropped: an outage.
    pub fn connection_reset() -> StoreError {
        StoreError(sqlx::Error::Io(std::io::Error::other("connection reset")))
    }

    /// The driver could not encode a value: a refusal of the row.
    pub fn unencodable() -> StoreError {
        StoreError(sqlx::Error::Encode("out of range".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn faults_follow_sqlstates_and_constraints() {
        assert_eq!(refused("22P05").fault(), Fault::InvalidText);
        assert_eq!(refused("22021").fault(), Fault::InvalidText);
        assert_eq!(
            refused_on("23505", Some("users_email_key")).fault(),
            Fault::Conflict { field: Some("email") }
        );
        assert_eq!(
            refused_on("23505", Some("api_keys_token_hash_key")).fault(),
            Fault::Conflict { field: None }
        );
        assert_eq!(refused("23503").fault(), Fault::Removed);
        assert_eq!(refused("40001").fault(), Fault::Busy);
        assert_eq!(refused("40P01").fault(), Fault::Busy);
        for code in ["08006", "57P01", "53300"] {
            assert_eq!(refused(code).fault(), Fault::Unavailable, "{code}");
        }
        assert_eq!(pool_timeout().fault(), Fault::Unavailable);
        assert_eq!(connection_reset().fault(), Fault::Unavailable);
        assert_eq!(refused("42601").fault(), Fault::Other);
    }

    #[test]
    fn refusals_are_the_rows_fault_outages_are_not() {
        for code in ["22P05", "23505", "54000", "P0001", "40P01"] {
            assert!(refused(code).is_refusal(), "{code}");
        }
        for code in ["08006", "53300", "57P01", "58000", "42601"] {
            assert!(!refused(code).is_refusal(), "{code}");
        }
        assert!(!pool_timeout().is_refusal());
        assert!(!connection_reset().is_refusal());
        assert!(unencodable().is_refusal());
    }
}
