//! Creating runs: the one home of `INSERT INTO runs` and of the outbox row
//! that carries each new run's message, for API calls, webhooks and cron
//! alike. The message is encoded once, here, in Rust ([`Envelope`]); the
//! outbox holds exactly what is published.

pub mod backlog;
pub mod cancel;
pub mod checkpoints;
pub mod delivery;
pub mod lost;
pub mod outcomes;
pub mod query;
pub mod retry;
pub mod steps;
pub mod trim;
pub mod waiting;

use serde_json::Value;
use uuid::Uuid;

use crate::db::{StoreError, Tx};
use crate::queue::{Envelope, INLINE_INPUT_MAX, RunFlowV1};
use crate::run::Trigger;

/// A run to create from its flow's latest deployed version.
#[derive(Debug)]
pub struct NewRun<'a> {
    pub id: Uuid,
    pub flow_id: Uuid,
    pub trigger: Trigger,
    pub input: &'a Value,
    /// Set for callers that are not admins: the run is created only if this
    /// user holds `execute` on the flow.
    pub grantee: Option<Uuid>,
    /// A deployed version to run instead of the latest (a retry of the same version).
    pub version: Option<i32>,
    /// The run this one retries (`runs.retry_of`).
    pub retry_of: Option<Uuid>,
    /// W3C `traceparent` of the span that accepted it: the worker continues the trace.
    pub traceparent: Option<String>,
}

/// A run [`enqueue`] created, with the message its outbox row holds.
#[derive(Debug, Clone)]
pub struct Enqueued {
    pub outbox_id: i64,
    pub version: i32,
    pub envelope: Envelope,
}

/// The grant level `execute` has in `floq_access` (see migration 0006).
const EXECUTE: i32 = 2;

/// Creates the runs of one company whose flows are deployed (and, for a
/// grantee, executable), with their outbox rows, inside the caller's tenant
/// transaction for `company_id` — the company is checked explicitly as well
/// as by row-level security. Runs of flows that are gone, never deployed or
/// not executable are left out of the answer.
pub async fn enqueue(tx: &mut Tx, company_id: Uuid, runs: &[NewRun<'_>]) -> Result<Vec<Enqueued>, StoreError> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    let flows: Vec<Uuid> = runs.iter().map(|r| r.flow_id).collect();
    let triggers: Vec<&str> = runs.iter().map(|r| r.trigger.as_str()).collect();
    let inputs: Vec<&Value> = runs.iter().map(|r| r.input).collect();
    let grantees: Vec<Option<Uuid>> = runs.iter().map(|r| r.grantee).collect();
    let versions: Vec<Option<i32>> = runs.iter().map(|r| r.version).collect();
    let retries: Vec<Option<Uuid>> = runs.iter().map(|r| r.retry_of).collect();
    // Each message is encoded here; only the version the insert picks (the
    // flow's latest) and the attempt are merged in by the database, so runs
    // and outbox rows are written in one statement, one round trip.
    let mut envelopes: Vec<Envelope> = runs.iter().map(|r| envelope(company_id, r, 0, 1)).collect();
    let messages = envelopes
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<Value>, _>>()
        .map_err(StoreError::corrupt)?;
    let created: Vec<(Uuid, i32, i32, i64)> = sqlx::query_as(
        "WITH r AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[], $5::uuid[], $8::jsonb[],
                                  $9::int[], $10::uuid[])
                 AS r(id, flow_id, trigger, input, grantee, message, version, retry_of)),
         created AS (
             INSERT INTO runs (id, company_id, flow_id, version, status, trigger, input, retry_of)
             SELECT r.id, f.company_id, f.id, coalesce(r.version, f.latest_version), 'queued', r.trigger, r.input,
                    r.retry_of
               FROM r JOIN flows f ON f.id = r.flow_id AND f.company_id = $6
                                  AND f.latest_version IS NOT NULL AND f.deleted_at IS NULL
                                  AND (r.version IS NULL OR r.version <= f.latest_version)
              WHERE r.grantee IS NULL OR floq_access(r.grantee, 'flow', f.id, f.group_id) >= $7
             RETURNING id, version, attempt),
         sent AS (
             INSERT INTO outbox (company_id, run_id, payload)
             SELECT $6, c.id, r.message || jsonb_build_object('version', c.version, 'attempt', c.attempt)
               FROM created c JOIN r ON r.id = c.id
             RETURNING run_id, id)
         SELECT c.id, c.version, c.attempt, s.id FROM created c JOIN sent s ON s.run_id = c.id",
    )
    .bind(&ids)
    .bind(&flows)
    .bind(&triggers)
    .bind(&inputs)
    .bind(&grantees)
    .bind(company_id)
    .bind(EXECUTE)
    .bind(&messages)
    .bind(&versions)
    .bind(&retries)
    .fetch_all(&mut **tx)
    .await?;
    let mut by_id: std::collections::HashMap<Uuid, Envelope> = ids.iter().copied().zip(envelopes.drain(..)).collect();
    // The statement returns only runs it was given; anything else is skipped, not trusted.
    Ok(created
        .into_iter()
        .filter_map(|(id, version, attempt, outbox_id)| {
            let mut envelope = by_id.remove(&id)?;
            let Envelope::RunFlowV1(m) = &mut envelope;
            (m.version, m.attempt) = (version, attempt);
            Some(Enqueued {
                outbox_id,
                version,
                envelope,
            })
        })
        .collect())
}

/// The one encoder of a new run's message: its input travels inline when
/// small, so the worker need not read it back.
fn envelope(company_id: Uuid, run: &NewRun, version: i32, attempt: i32) -> Envelope {
    let inline = crate::audit::json_len(run.input) <= INLINE_INPUT_MAX as usize;
    Envelope::RunFlowV1(RunFlowV1 {
        run_id: run.id,
        company_id,
        flow_id: run.flow_id,
        version,
        attempt,
        trigger: run.trigger,
        input: inline.then(|| run.input.clone()),
        traceparent: run.traceparent.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_inputs_travel_inline_and_large_ones_are_loaded_by_the_worker() {
        let small = json!({"name": "Ada"});
        let large = json!({"blob": "x".repeat(INLINE_INPUT_MAX as usize)});
        let run = |input| NewRun {
            id: Uuid::now_v7(),
            flow_id: Uuid::now_v7(),
            trigger: Trigger::Cron,
            input,
            grantee: None,
            version: None,
            retry_of: None,
            traceparent: None,
        };
        let company = Uuid::now_v7();
        let Envelope::RunFlowV1(m) = envelope(company, &run(&small), 3, 1);
        assert_eq!(
            (m.input, m.version, m.attempt, m.trigger),
            (Some(small.clone()), 3, 1, Trigger::Cron)
        );
        let Envelope::RunFlowV1(m) = envelope(company, &run(&large), 3, 1);
        assert_eq!(m.input, None);
        assert_eq!(crate::audit::json_len(&small), small.to_string().len());
    }

    #[test]
    fn the_database_merges_version_and_attempt_into_top_level_fields() {
        // `enqueue` lets PostgreSQL fill these two with `message || {...}`;
        // that is only right while they are top-level keys of the message.
        let input = json!({});
        let run = NewRun {
            id: Uuid::now_v7(),
            flow_id: Uuid::now_v7(),
            trigger: Trigger::Api,
            input: &input,
            grantee: None,
            version: None,
            retry_of: None,
            traceparent: None,
        };
        let company = Uuid::now_v7();
        let mut message = serde_json::to_value(envelope(company, &run, 0, 1)).unwrap();
        let merged = message.as_object_mut().unwrap();
        assert!(merged.contains_key("version") && merged.contains_key("attempt"));
        merged.insert("version".into(), json!(7));
        merged.insert("attempt".into(), json!(2));
        let decoded: Envelope = serde_json::from_value(message).unwrap();
        assert_eq!(decoded, envelope(company, &run, 7, 2));
    }
}
