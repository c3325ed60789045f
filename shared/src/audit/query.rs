//! Reading a company's audit log: pages filtered as the API offers them,
//! the export's pages, and one step of verifying the hash chain. Entries
//! are rendered by the database (`floq_audit_json`), the same text the chain
//! hashes. Every statement runs in the company's tenant transaction and
//! names the company; nothing here writes.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, UserId};

/// Which entries to read; absent filters match everything.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub actor_id: Option<UserId>,
    /// The label of a system or anonymous actor.
    pub actor_label: Option<String>,
    /// An exact action, or a prefix ending in `*` (`auth.*`).
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
}

/// An entry as the database renders it.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub id: i64,
    /// `floq_audit_json(entry)`: one JSON object.
    pub json: String,
}

/// Where a listing goes from `cursor`.
#[derive(Clone, Copy, Debug)]
pub enum Order {
    /// Entries below the cursor, newest first (the listing).
    NewestBefore(Option<i64>),
    /// Entries above the cursor, oldest first (the export).
    OldestAfter(i64),
}

/// One page of entries matching `filters`. Rows are limited first and
/// rendered after, so a plan that sorts many candidates never renders more
/// than one page.
pub async fn page(
    tx: &mut Tx,
    company_id: CompanyId,
    filters: &Filters,
    order: Order,
    limit: i64,
) -> Result<Vec<Rendered>, StoreError> {
    let mut clause = filters.clause(company_id);
    let direction = match order {
        Order::NewestBefore(Some(before)) => {
            clause.and("id < $?", [Param::Id(before)]);
            " DESC"
        }
        Order::NewestBefore(None) => " DESC",
        Order::OldestAfter(after) => {
            clause.and("id > $?", [Param::Id(after)]);
            ""
        }
    };
    let sql = format!(
        "SELECT id, floq_audit_json(a)::text FROM (
            SELECT * FROM audit_log WHERE {} ORDER BY id{direction} LIMIT ${}
         ) a ORDER BY id{direction}",
        clause.sql,
        clause.params.len() + 1
    );
    let rows: Vec<(i64, String)> = clause
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .bind(limit)
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows.into_iter().map(|(id, json)| Rendered { id, json }).collect())
}

/// What one verification step found (`floq_audit_verify_range`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub checked: i64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub broken: Option<Broken>,
}

/// The first link that did not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub seq: Option<i64>,
    pub entry_id: Option<i64>,
    pub reason: String,
}

/// Recomputes up to `limit` links of the transaction's company's chain from
/// `from_seq` (its oldest remaining seal when absent).
pub async fn verify(tx: &mut Tx, from_seq: Option<i64>, limit: i64) -> Result<Verified, StoreError> {
    type Report = (i64, Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<String>);
    let (checked, first_seq, last_seq, broken_seq, broken_entry, reason): Report =
        sqlx::query_as("SELECT * FROM floq_audit_verify_range($1, $2::int)")
            .bind(from_seq)
            .bind(limit)
            .fetch_one(&mut **tx)
            .await?;
    Ok(Verified {
        checked,
        first_seq,
        last_seq,
        broken: reason.map(|reason| Broken {
            seq: broken_seq,
            entry_id: broken_entry,
            reason,
        }),
    })
}

/// Entries of the company not sealed yet.
pub async fn unsealed(tx: &mut Tx, company_id: CompanyId) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_log
          WHERE company_id = $1 AND xact >= (SELECT watermark FROM audit_seal_state)",
    )
    .bind(company_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// One bound parameter of a [`Where`].
enum Param<'a> {
    Company(Uuid),
    At(DateTime<Utc>),
    Uuid(Uuid),
    Text(Cow<'a, str>),
    Id(i64),
}

/// A WHERE clause holding a condition for each filter given, and only those,
/// each value a bound parameter. A catch-all `($n IS NULL OR col = $n)`
/// would let one statement serve every combination, but the plan PostgreSQL
/// caches for a prepared statement cannot assume which `$n` are null, so it
/// cannot pick the index of the filter that was given and scans the tenant's
/// whole log instead. Every clause starts with the company (the second lock
/// besides row-level security, and the leading column of every index).
struct Where<'a> {
    sql: String,
    params: Vec<Param<'a>>,
}

impl<'a> Where<'a> {
    fn new(company_id: CompanyId) -> Self {
        Where {
            sql: "company_id = $1".into(),
            params: vec![Param::Company(company_id.0)],
        }
    }

    /// Adds `condition`, in which `$?` stands for the next parameter.
    fn and(&mut self, condition: &str, values: impl IntoIterator<Item = Param<'a>>) {
        let mut condition = condition.to_string();
        for value in values {
            self.params.push(value);
            condition = condition.replacen("$?", &format!("${}", self.params.len()), 1);
        }
        self.sql.push_str(" AND ");
        self.sql.push_str(&condition);
    }

    fn bind<'q>(
        self,
        mut query: sqlx::query::QueryAs<'q, sqlx::Postgres, (i64, String), sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, (i64, String), sqlx::postgres::PgArguments>
    where
        'a: 'q,
    {
        for param in self.params {
            query = match param {
                Param::Company(id) | Param::Uuid(id) => query.bind(id),
                Param::At(at) => query.bind(at),
                Param::Text(text) => query.bind(text.into_owned()),
                Param::Id(id) => query.bind(id),
            };
        }
        query
    }
}

/// The smallest string above every string starting with `prefix`, in
/// byte order (UTF-8 orders like code points): `prefix` with its last
/// character incremented. None when nothing is above (an empty prefix, or one
/// ending in the last code point).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    let last = chars.pop()?;
    let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32)?;
    chars.push(next);
    Some(chars.into_iter().collect())
}

impl Filters {
    /// The filters as a [`Where`], each served by an index of
    /// `migrations/0019_bounded_work.sql`: `(company_id, action, id)` (an
    /// action prefix is a byte-order range of it), `(company_id, actor_id,
    /// id)` or `(company_id, actor_label, id)`, `(company_id, resource_type,
    /// resource_id, id)`, and a BRIN index on `at` for from/to.
    fn clause(&self, company_id: CompanyId) -> Where<'_> {
        let mut w = Where::new(company_id);
        if let Some(from) = self.from {
            w.and("at >= $?", [Param::At(from)]);
        }
        if let Some(to) = self.to {
            w.and("at < $?", [Param::At(to)]);
        }
        if let Some(actor_id) = self.actor_id {
            w.and("actor_id = $?", [Param::Uuid(actor_id.0)]);
        }
        if let Some(label) = self.actor_label.as_deref() {
            w.and("actor_label = $?", [Param::Text(label.into())]);
        }
        match self.action.as_deref() {
            None => {}
            Some(action) => match action.strip_suffix('*') {
                None => w.and("action = $?", [Param::Text(action.into())]),
                Some("") => {}
                Some(prefix) => match prefix_end(prefix) {
                    // `~>=~`/`~<~` compare bytes, the order of the text_pattern_ops index.
                    Some(end) => w.and(
                        "action ~>=~ $? AND action ~<~ $?",
                        [Param::Text(prefix.into()), Param::Text(end.into())],
                    ),
                    None => w.and("starts_with(action, $?)", [Param::Text(prefix.into())]),
                },
            },
        }
        if let Some(resource_type) = self.resource_type.as_deref() {
            w.and("resource_type = $?", [Param::Text(resource_type.into())]);
        }
        if let Some(resource_id) = self.resource_id.as_deref() {
            w.and("resource_id = $?", [Param::Text(resource_id.into())]);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clause_holds_only_the_filters_given_each_bound() {
        let company = CompanyId(Uuid::nil());
        assert_eq!(Filters::default().clause(company).sql, "company_id = $1");
        let filters = Filters {
            action: Some("auth.*".into()),
            resource_type: Some("flow".into()),
            ..Filters::default()
        };
        let w = filters.clause(company);
        assert_eq!(
            w.sql,
            "company_id = $1 AND action ~>=~ $2 AND action ~<~ $3 AND resource_type = $4"
        );
        assert_eq!(w.params.len(), 4);
        let everything = Filters {
            action: Some("*".into()),
            ..Filters::default()
        };
        assert_eq!(everything.clause(company).sql, "company_id = $1");
        assert_eq!(prefix_end("auth."), Some("auth/".into()));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end(&char::MAX.to_string()), None);
    }
}
