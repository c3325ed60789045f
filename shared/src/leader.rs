//! Leadership among scheduler replicas: a PostgreSQL session advisory lock
//! held on a dedicated connection, outside the pool. Whoever holds it leads;
//! if its process or connection dies, the lock is released and a standby
//! takes over on its next attempt. This module touches no table.

use sqlx::{Connection, PgConnection};

use crate::db::StoreError;

pub struct Leadership {
    conn: PgConnection,
}

impl Leadership {
    /// Tries once to take the lock named by `name` (a deployment's queue
    /// prefix, so deployments sharing a database lead apart); `Ok(None)`
    /// while another holder leads.
    pub async fn try_acquire(database_url: &str, name: &str) -> Result<Option<Self>, StoreError> {
        let mut conn = PgConnection::connect(database_url).await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('floq.scheduler:' || $1))")
            .bind(name)
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
