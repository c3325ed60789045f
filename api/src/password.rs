//! Password hashing with Argon2id (OWASP parameters: 19 MiB, 2 passes, 1 lane),
//! off the async runtime because a hash takes tens of milliseconds.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use std::sync::LazyLock;

pub const MIN_LENGTH: usize = 12;
pub const MAX_LENGTH: usize = 1024;

/// Verified against when the e-mail is unknown, so both paths cost one hash
/// and the answer time does not reveal whether an account exists.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(b"floq-dummy-password-for-timing")
        .expect("hashing a constant cannot fail")
        .to_string()
});

pub async fn hash(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
    })
    .await?
}

/// Constant-work verification: `None` (unknown user) still runs one hash.
pub async fn verify(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| DUMMY_HASH.clone());
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok();
        ok && known
    })
    .await
    .unwrap_or(false)
}
