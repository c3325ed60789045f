//! Accepting runs with group commit (design §3.1, §8).
//!
//! Concurrent requests hand their run to a few committer tasks. Each commits
//! everything that queued up while the previous commit was in flight in one
//! transaction (tenant by tenant under RLS): run rows and outbox rows
//! together. Only then does the request get its `202`. Publishing follows,
//! with a confirm window, and confirmed outbox rows are deleted in batches;
//! whatever is not confirmed stays in the outbox for the scheduler's sweep.
//! A batch the database refuses for what one request holds is split until
//! that request is pinned down (`batch::isolate`): it alone gets the error,
//! every other tenant's run commits.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::error::ApiError;
use floq_shared::audit::{self, Actor, Entry};
use floq_shared::backlog::{self, Backlog, Pressure};
use floq_shared::db::{Pool, StoreError};
use floq_shared::ids::{CompanyId, FlowId, RunId};
use floq_shared::queue::{Envelope, Publisher};
use floq_shared::replies::{Replies, Waiter};
use floq_shared::retry::{self, Policy};
use floq_shared::run::Trigger;
use floq_shared::telemetry::METRICS;
use floq_shared::{batch, db, idempotency, outbox, runs};

const MAX_BATCH: usize = 1000;
const COMMITTERS: usize = 4;

struct Request {
    company_id: Uuid,
    /// Set for non-admin callers: the run is only accepted if this user holds `execute` on the flow.
    grantee: Option<Uuid>,
    flow_id: Uuid,
    run_id: Uuid,
    input: Value,
    trigger: Trigger,
    version: Option<i32>,
    retry_of: Option<Uuid>,
    /// The run's `run.create` (or `run.retry`) entry, appended in the same commit as the run.
    audit: Entry,
    idempotency_key: Option<String>,
    /// The worker should send the outcome back (a synchronous webhook waits for it).
    wants_reply: bool,
    /// The accepting span's W3C `traceparent`, when traces are exported.
    traceparent: Option<String>,
    reply: oneshot::Sender<Result<Reply, Arc<StoreError>>>,
}

enum Reply {
    Committed(i32),
    /// The idempotency key already names this run.
    Existing(Uuid),
    NotRunnable,
}

/// What a caller asks to run.
pub struct RunRequest {
    pub company_id: Uuid,
    /// Set for non-admin callers: the run is only accepted if this user holds `execute` on the flow.
    pub grantee: Option<Uuid>,
    pub flow_id: Uuid,
    pub input: Value,
    pub trigger: Trigger,
    pub actor: Actor,
    /// `Idempotency-Key`: the same key for the same flow within 24 hours returns the first run.
    pub idempotency_key: Option<String>,
    /// Ask the worker for the outcome: `Accepted::New` then carries a waiter for it.
    pub wait: bool,
    /// Run this deployed version rather than the latest.
    pub version: Option<i32>,
    /// The run this one retries: recorded as `retry_of` and audited as `run.retry`.
    pub retry_of: Option<Uuid>,
}

pub enum Accepted {
    /// A new run, with the flow version it pinned, and its outcome's waiter if one was asked for.
    New {
        run_id: Uuid,
        version: i32,
        reply: Option<Waiter>,
    },
    /// The run an earlier request with the same idempotency key created.
    Existing { run_id: Uuid },
}

#[derive(Clone)]
pub struct Acceptor {
    tx: mpsc::Sender<Request>,
    /// Refuses runs while the queues or the company's backlog are past their bounds.
    backlog: Arc<Backlog>,
    /// Where waiting callers get their runs' outcomes; `None` if the publisher takes no replies.
    replies: Option<Arc<Replies>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("the flow does not exist, is not executable by the caller, or has no deployed version")]
    NotRunnable,
    #[error("database error while accepting a run")]
    Database(#[source] Arc<StoreError>),
    #[error("the API is shutting down")]
    ShuttingDown,
    #[error("too many runs are waiting")]
    Backlog(Pressure),
}

impl AcceptError {
    /// The one answer to a run that was not accepted, for every route that
    /// starts runs. `not_runnable` says why this caller's flow cannot run (a
    /// route may need a lookup for that); it is awaited only in that case.
    pub async fn into_api_error(self, not_runnable: impl Future<Output = ApiError>) -> ApiError {
        match self {
            AcceptError::NotRunnable => not_runnable.await,
            e @ AcceptError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
            }
            // Only this request's row was refused: the acceptor isolates it from the rest of its batch.
            AcceptError::Database(e) => e.into(),
            AcceptError::Backlog(Pressure::Full) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backlog_full",
                "too many runs are waiting to be executed; retry later",
            )
            .retry_after(backlog::RETRY_AFTER_SECS),
            AcceptError::Backlog(Pressure::CompanyFull) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "company_backlog_full",
                "too many of this company's runs are waiting to be executed; retry later",
            )
            .retry_after(backlog::RETRY_AFTER_SECS),
        }
    }
}

impl Acceptor {
    /// Starts the committer, publisher and outbox-cleaner tasks. They finish
    /// after every `Acceptor` clone is dropped and all accepted work is flushed.
    pub fn start(pool: Pool, publisher: Arc<Publisher>, backlog: Arc<Backlog>) -> (Self, JoinSet<()>) {
        let replies = publisher.replies().cloned();
        let (tx, rx) = mpsc::channel::<Request>(MAX_BATCH * COMMITTERS * 2);
        let rx = Arc::new(Mutex::new(rx));
        let (publish_tx, publish_rx) = mpsc::channel::<Vec<Publish>>(1024);
        let (clean_tx, clean_rx) = mpsc::channel::<Vec<(Uuid, i64)>>(1024);
        let mut tasks = JoinSet::new();
        for _ in 0..COMMITTERS {
            tasks.spawn(commit_loop(pool.clone(), rx.clone(), publish_tx.clone()));
        }
        drop(publish_tx);
        tasks.spawn(publish_loop(publisher, replies.clone(), publish_rx, clean_tx));
        tasks.spawn(clean_loop(pool, clean_rx));
        (Self { tx, backlog, replies }, tasks)
    }

    /// Synchronous calls on this replica waiting for their runs.
    pub fn waiting(&self) -> usize {
        self.replies.as_ref().map_or(0, |r| r.waiting())
    }

    pub async fn accept(&self, request: RunRequest) -> Result<Accepted, AcceptError> {
        let RunRequest {
            company_id,
            grantee,
            flow_id,
            input,
            trigger,
            actor,
            idempotency_key,
            wait,
            version,
            retry_of,
        } = request;
        // Sampled in the background: refusing costs no I/O.
        if let Err(pressure) = self.backlog.check(company_id) {
            METRICS
                .backpressure_rejections
                .with_label_values(&[pressure.as_str()])
                .inc();
            return Err(AcceptError::Backlog(pressure));
        }
        let (reply, rx) = oneshot::channel();
        let run_id = Uuid::now_v7();
        // The accept's span: the run's trace continues from it on the worker (the envelope carries it).
        let span = tracing::info_span!("accept", run.id = %run_id, flow.id = %flow_id, company.id = %company_id);
        // Registered before the run can be published, so even an instant outcome finds it.
        let waiter = self.replies.as_ref().filter(|_| wait).map(|r| r.register(run_id));
        let mut details = json!({"flow_id": flow_id, "trigger": trigger, "input": audit::shape(&input)});
        if let Some(original) = retry_of {
            details["retry_of"] = json!(original);
        }
        let action = if retry_of.is_some() { "run.retry" } else { "run.create" };
        let audit = Entry::new(company_id, actor, action)
            .resource("run", run_id)
            .details(details);
        self.tx
            .send(Request {
                company_id,
                grantee,
                flow_id,
                run_id,
                input,
                trigger,
                version,
                retry_of,
                audit,
                idempotency_key,
                wants_reply: waiter.is_some(),
                traceparent: span.in_scope(floq_shared::telemetry::current_traceparent),
                reply,
            })
            .await
            .map_err(|_| AcceptError::ShuttingDown)?;
        match rx.await.map_err(|_| AcceptError::ShuttingDown)? {
            Ok(Reply::Committed(version)) => {
                METRICS.runs_enqueued.with_label_values(&[trigger.as_str()]).inc();
                Ok(Accepted::New {
                    run_id,
                    version,
                    reply: waiter,
                })
            }
            Ok(Reply::Existing(run_id)) => Ok(Accepted::Existing { run_id }),
            Ok(Reply::NotRunnable) => Err(AcceptError::NotRunnable),
            Err(e) => Err(AcceptError::Database(e)),
        }
    }
}

async fn commit_loop(pool: Pool, rx: Arc<Mutex<mpsc::Receiver<Request>>>, publish: mpsc::Sender<Vec<Publish>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        // A request the database refuses (something in its row) is isolated, so only it fails.
        let parts = batch::isolate(&batch, |part| commit(&pool, part), StoreError::is_refusal).await;
        let to_publish = settle(batch, parts);
        // If the publisher is gone (shutdown) the rows stay in the outbox for the sweep.
        if !to_publish.is_empty() {
            let _ = publish.send(to_publish).await;
        }
    }
}

/// Answers every request of a batch from the parts `batch::isolate` tried:
/// a request in a failed part gets that part's error, every other one its
/// new run, the run its idempotency key already names, or `NotRunnable`.
/// Returns the new runs to publish, in request order.
fn settle(batch: Vec<Request>, parts: Vec<(Range<usize>, Result<Committed, StoreError>)>) -> Vec<Publish> {
    let mut created = BTreeMap::new();
    let mut existing = HashMap::new();
    let mut failed = HashMap::new();
    for (range, result) in parts {
        match result {
            Ok(part) => {
                created.extend(part.runs);
                existing.extend(part.existing);
            }
            Err(e) => {
                if e.is_refusal() {
                    METRICS.batch_rows_refused.with_label_values(&["acceptor"]).inc();
                    tracing::warn!(error = %e, "the database refused a run request; only it fails");
                } else {
                    tracing::error!(error = %e, runs = range.len(), "accepting a batch of runs failed");
                }
                let e = Arc::new(e);
                failed.extend(batch[range].iter().map(|r| (r.run_id, e.clone())));
            }
        }
    }
    let mut to_publish = Vec::with_capacity(created.len());
    for req in batch {
        if let Some(e) = failed.remove(&req.run_id) {
            let _ = req.reply.send(Err(e));
            continue;
        }
        let reply = match (created.remove(&req.run_id), existing.get(&req.run_id)) {
            (Some(new), _) => {
                to_publish.push(Publish {
                    company_id: req.company_id,
                    outbox_id: new.outbox_id,
                    envelope: new.envelope,
                    wants_reply: req.wants_reply,
                });
                Reply::Committed(new.version)
            }
            (None, Some(prior)) => Reply::Existing(*prior),
            (None, None) => Reply::NotRunnable,
        };
        let _ = req.reply.send(Ok(reply));
    }
    to_publish
}

struct Committed {
    /// New runs by id.
    runs: BTreeMap<Uuid, runs::Enqueued>,
    /// Requests whose idempotency key already named a run: request's run id → that run.
    existing: HashMap<Uuid, Uuid>,
}

/// Claims each request's idempotency key, or finds the run that holds it.
/// Runs under the batch's transaction: a concurrent duplicate in another
/// commit waits on the key row, then sees the winner's run.
async fn claim_keys(tx: &mut db::Tx, reqs: &[&Request], existing: &mut HashMap<Uuid, Uuid>) -> Result<(), StoreError> {
    for req in reqs {
        let Some(key) = &req.idempotency_key else { continue };
        let (company, flow, run) = (CompanyId(req.company_id), FlowId(req.flow_id), RunId(req.run_id));
        if let Some(prior) = idempotency::claim(tx, company, flow, key, run).await? {
            existing.insert(req.run_id, prior.as_uuid());
        }
    }
    Ok(())
}

/// One transaction for the whole batch, one insert statement per company.
async fn commit(pool: &Pool, batch: &[Request]) -> Result<Committed, StoreError> {
    let mut by_company: BTreeMap<Uuid, Vec<&Request>> = BTreeMap::new();
    for req in batch {
        by_company.entry(req.company_id).or_default().push(req);
    }
    let mut tx = db::multi_tenant_tx(pool).await?;
    let mut committed = BTreeMap::new();
    let mut existing = HashMap::new();
    for (company_id, reqs) in by_company {
        db::set_tenant(&mut tx, company_id).await?;
        claim_keys(&mut tx, &reqs, &mut existing).await?;
        let reqs: Vec<&Request> = reqs.into_iter().filter(|r| !existing.contains_key(&r.run_id)).collect();
        let new_runs: Vec<runs::NewRun> = reqs
            .iter()
            .map(|r| runs::NewRun {
                id: r.run_id,
                flow_id: r.flow_id,
                trigger: r.trigger,
                input: &r.input,
                grantee: r.grantee,
                version: r.version,
                retry_of: r.retry_of,
                traceparent: r.traceparent.clone(),
            })
            .collect();
        let created = runs::enqueue(&mut tx, company_id, &new_runs).await?;
        let by_id: HashMap<Uuid, &Request> = reqs.iter().map(|r| (r.run_id, *r)).collect();
        let mut entries = Vec::with_capacity(created.len());
        for run in created {
            let run_id = run.envelope.run_id();
            if let Some(req) = by_id.get(&run_id) {
                let mut entry = req.audit.clone();
                entry.details["version"] = run.version.into();
                entries.push(entry);
            }
            committed.insert(run_id, run);
        }
        audit::append(&mut tx, &entries).await?;
        // A key claimed for a run that could not be created must not keep pointing at it.
        let unclaimed: Vec<RunId> = reqs
            .iter()
            .filter(|r| r.idempotency_key.is_some() && !committed.contains_key(&r.run_id))
            .map(|r| RunId(r.run_id))
            .collect();
        if !unclaimed.is_empty() {
            idempotency::release(&mut tx, CompanyId(company_id), &unclaimed).await?;
            existing.retain(|_, prior| !unclaimed.contains(&RunId(*prior)));
        }
    }
    db::commit(tx).await?;
    Ok(Committed {
        runs: committed,
        existing,
    })
}

/// A committed run on its way to the broker.
struct Publish {
    company_id: Uuid,
    outbox_id: i64,
    envelope: Envelope,
    wants_reply: bool,
}

async fn publish_loop(
    publisher: Arc<Publisher>,
    replies: Option<Arc<Replies>>,
    mut rx: mpsc::Receiver<Vec<Publish>>,
    clean: mpsc::Sender<Vec<(Uuid, i64)>>,
) {
    let mut batches = Vec::new();
    while rx.recv_many(&mut batches, 64).await > 0 {
        let items: Vec<Publish> = batches.drain(..).flatten().collect();
        // The fault tests' crash between commit and publish: these runs are committed and answered, not yet sent.
        #[cfg(feature = "failpoints")]
        if floq_shared::failpoint::fires("accept.before_publish") {
            eprintln!(
                "floq-api: fail point accept.before_publish: aborting with {} runs unpublished",
                items.len()
            );
            std::process::abort();
        }
        let envelopes: Vec<(&Envelope, bool)> = items.iter().map(|p| (&p.envelope, p.wants_reply)).collect();
        match publisher.publish_asking(&envelopes).await {
            Ok(()) => {
                let _ = clean
                    .send(items.iter().map(|p| (p.company_id, p.outbox_id)).collect())
                    .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, runs = envelopes.len(), "publishing runs failed; the outbox sweep will retry");
                // The sweep re-publishes without a reply address: nobody should wait for these.
                if let Some(replies) = &replies {
                    replies.forget(items.iter().filter(|p| p.wants_reply).map(|p| p.envelope.run_id()));
                }
            }
        }
    }
}

/// Deletes outbox rows whose messages the broker confirmed, batched across
/// publishes. A crash here only means the sweep publishes them again, and
/// workers treat duplicates as no-ops.
async fn clean_loop(pool: Pool, mut rx: mpsc::Receiver<Vec<(Uuid, i64)>>) {
    let mut batches = Vec::new();
    while rx.recv_many(&mut batches, 256).await > 0 {
        let mut by_company: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
        for (company, id) in batches.drain(..).flatten() {
            by_company.entry(company).or_default().push(id);
        }
        let mut backoff = retry::backoff(Policy::Brief);
        while let Err(e) = delete_published(&pool, &by_company).await {
            let Some(delay) = backoff.next() else {
                tracing::warn!(error = %e, "deleting published outbox rows failed; the sweep will republish them");
                break;
            };
            tracing::warn!(error = %e, "deleting published outbox rows failed; retrying");
            tokio::time::sleep(delay).await;
        }
        // Let confirmations pile up a little so each delete covers many rows.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn delete_published(pool: &Pool, by_company: &BTreeMap<Uuid, Vec<i64>>) -> Result<(), StoreError> {
    let mut tx = db::multi_tenant_tx(pool).await?;
    for (company_id, ids) in by_company {
        db::set_tenant(&mut tx, *company_id).await?;
        outbox::delete_published(&mut tx, CompanyId(*company_id), ids).await?;
    }
    db::commit(tx).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use floq_shared::db::fake;
    use floq_shared::queue::RunFlowV1;

    type Answer = oneshot::Receiver<Result<Reply, Arc<StoreError>>>;

    fn request(company_id: Uuid, input: Value, key: Option<&str>) -> (Request, Answer) {
        let (reply, rx) = oneshot::channel();
        let run_id = Uuid::now_v7();
        let request = Request {
            company_id,
            grantee: None,
            flow_id: Uuid::now_v7(),
            run_id,
            input,
            trigger: Trigger::Api,
            audit: Entry::new(company_id, Actor::system("test"), "run.create"),
            idempotency_key: key.map(str::to_string),
            wants_reply: false,
            version: None,
            retry_of: None,
            traceparent: None,
            reply,
        };
        (request, rx)
    }

    fn enqueued(req: &Request, outbox_id: i64) -> runs::Enqueued {
        runs::Enqueued {
            outbox_id,
            version: 1,
            envelope: Envelope::RunFlowV1(RunFlowV1 {
                run_id: req.run_id,
                company_id: req.company_id,
                flow_id: req.flow_id,
                version: 1,
                attempt: 1,
                trigger: req.trigger,
                input: None,
                traceparent: None,
            }),
        }
    }

    /// Stands in for the database: refuses a part holding a NUL (as
    /// PostgreSQL refuses `\u0000` in jsonb, 22P05), leaves out a part's
    /// request whose input says `not_deployed`, and answers a request keyed
    /// `seen` with the run its key names.
    fn fake_commit(part: &[Request], prior: Uuid) -> Result<Committed, StoreError> {
        if part.iter().any(|r| r.input.to_string().contains("\\u0000")) {
            return Err(fake::refused("22P05"));
        }
        let mut committed = Committed {
            runs: BTreeMap::new(),
            existing: HashMap::new(),
        };
        for (i, req) in part.iter().enumerate() {
            if req.idempotency_key.as_deref() == Some("seen") {
                committed.existing.insert(req.run_id, prior);
            } else if req.input != json!("not_deployed") {
                committed.runs.insert(req.run_id, enqueued(req, i as i64));
            }
        }
        Ok(committed)
    }

    #[tokio::test]
    async fn a_poisoned_request_fails_alone_and_the_rest_of_its_batch_commits() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let prior = Uuid::now_v7();
        let inputs = [
            (a, json!({"n": 1}), None),
            (b, json!({"n": "bad\u{0}"}), None),
            (a, json!("not_deployed"), None),
            (b, json!({"n": 3}), Some("seen")),
            (a, json!({"n": 4}), Some("new")),
        ];
        let (batch, answers): (Vec<Request>, Vec<Answer>) = inputs
            .into_iter()
            .map(|(company, input, key)| request(company, input, key))
            .unzip();
        let ids: Vec<Uuid> = batch.iter().map(|r| r.run_id).collect();
        let commits = std::sync::atomic::AtomicUsize::new(0);
        let parts = batch::isolate(
            &batch,
            |part| {
                commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::future::ready(fake_commit(part, prior))
            },
            StoreError::is_refusal,
        )
        .await;
        assert!(commits.into_inner() > 1, "the refused batch was split");
        let published = settle(batch, parts);
        assert_eq!(
            published.iter().map(|p| p.envelope.run_id()).collect::<Vec<_>>(),
            vec![ids[0], ids[4]],
            "every new run is published, in request order"
        );
        let mut answers = answers
            .into_iter()
            .map(|mut rx| rx.try_recv().expect("every request is answered"));
        assert!(matches!(answers.next(), Some(Ok(Reply::Committed(1)))));
        match answers.next() {
            Some(Err(e)) => assert!(e.is_refusal(), "the poisoned request gets its refusal"),
            _ => panic!("the poisoned request must fail"),
        }
        assert!(matches!(answers.next(), Some(Ok(Reply::NotRunnable))));
        assert!(matches!(answers.next(), Some(Ok(Reply::Existing(run))) if run == prior));
        assert!(matches!(answers.next(), Some(Ok(Reply::Committed(1)))));
    }

    #[tokio::test]
    async fn an_outage_fails_every_request_of_the_batch_without_splitting_it() {
        let (batch, answers): (Vec<Request>, Vec<Answer>) =
            (0..4).map(|n| request(Uuid::now_v7(), json!({ "n": n }), None)).unzip();
        let mut commits = 0;
        let parts = batch::isolate(
            &batch,
            |_| {
                commits += 1;
                std::future::ready(Err::<Committed, _>(fake::connection_reset()))
            },
            StoreError::is_refusal,
        )
        .await;
        assert_eq!(commits, 1);
        assert!(settle(batch, parts).is_empty());
        for mut rx in answers {
            assert!(matches!(rx.try_recv(), Ok(Err(e)) if !e.is_refusal()));
        }
    }

    #[tokio::test]
    async fn each_refusal_maps_to_the_answer_its_route_gives() {
        let not_runnable = || async { ApiError::new(StatusCode::CONFLICT, "not_deployed", "deploy it first") };
        let status = |e: ApiError| axum::response::IntoResponse::into_response(e).status();
        assert_eq!(
            status(AcceptError::NotRunnable.into_api_error(not_runnable()).await),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(AcceptError::ShuttingDown.into_api_error(not_runnable()).await),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let refused = AcceptError::Database(Arc::new(fake::refused("22P05")));
        assert_eq!(
            status(refused.into_api_error(not_runnable()).await),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
