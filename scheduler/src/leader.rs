//! Leadership: a PostgreSQL session advisory lock held on a dedicated
//! connection. Whoever holds it leads; if its process or connection dies,
//! the lock is released and a standby takes over on its next attempt.

use floq_shared::db::StoreError;
use sqlx::{Connection, PgConnection};

use floq_shared::Config;

pub struct Leadership {
    conn: PgConnection,
}

impl Leadership {
    /// Tries once; `Ok(None)` while another scheduler leads.
    pub async fn try_acquire(config: &Config) -> Result<Option<Self>, StoreError> {
        let mut conn = PgConnection::connect(config.database_url.expose()).await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('floq.scheduler:' || $1))")
            .bind(&config.queue_prefix)
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(Self { conn }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// True while the lock's connection is alive (and so the lock is held).
    pub async fn still_held(&mut self) -> bool {
        sqlx::query("SELECT 1").execute(&mut self.conn).await.is_ok()
    }

    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}
