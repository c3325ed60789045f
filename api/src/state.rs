use std::sync::Arc;

use sqlx::PgPool;

use crate::accept::Acceptor;
use crate::auth::Keys;
use floq_shared::Config;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub keys: Arc<Keys>,
    pub acceptor: Acceptor,
}
