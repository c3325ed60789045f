//! The exact accounting every fault test ends with: every accepted run is
//! final exactly once (`succeeded`, `failed` or `cancelled`), none is left
//! `queued` or `running`, none is lost, and the counting server shows no side
//! effect twice except where the documented rule allows it: a call repeats
//! only when the worker that made it died before the run's running mark or
//! before the next checkpoint flush (docs/architecture.md).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::counting::{Call, Counter};

/// Which repeated side effects a fault may cause.
#[derive(Clone, Debug)]
pub enum Rule {
    /// None: no worker died with a call behind it.
    Never,
    /// A run whose worker died (or lost its broker or database) at one of
    /// these instants may call again if its earlier call came before that
    /// instant. What holds without checkpoints: a redelivered run starts
    /// again from its first node.
    InFlightAt(Vec<Instant>),
    /// With checkpoints: a call repeats only if it was made less than
    /// `window` (the running mark plus the checkpoint flush, plus slack)
    /// before one of these deaths; a call older than that was checkpointed.
    Checkpointed { deaths: Vec<Instant>, window: Duration },
}

#[derive(Debug, Default)]
pub struct Accounting {
    pub accepted: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub cancelled: usize,
    /// Accepted runs still `queued` or `running` when the bound ran out, plus
    /// any other run in the database in that state (committed, answer lost).
    pub unfinished: usize,
    /// Accepted runs the database does not hold.
    pub lost: usize,
    /// Runs whose outcome (node audit entries) was recorded more than once.
    pub recorded_twice: usize,
    pub runs_in_db: usize,
    pub calls: usize,
    pub keyed_calls: usize,
    pub unkeyed_calls: usize,
    /// Idempotency keys the server saw more than once.
    pub keys_twice: usize,
    /// Runs that called the server more than once (by run id).
    pub repeated_side_effects: usize,
    /// Of those, the ones the rule does not allow (must be 0).
    pub repeats_against_rule: usize,
    /// Failed runs by error code.
    pub failure_codes: BTreeMap<String, usize>,
}

impl Accounting {
    pub fn line(&self) -> String {
        format!(
            "accounting: accepted={} succeeded={} failed={} cancelled={} unfinished={} lost={} recorded_twice={} \
             runs_in_db={} calls={} keyed_calls={} unkeyed_calls={} keys_twice={} repeated_side_effects={} \
             repeats_against_rule={} failure_codes={:?}",
            self.accepted,
            self.succeeded,
            self.failed,
            self.cancelled,
            self.unfinished,
            self.lost,
            self.recorded_twice,
            self.runs_in_db,
            self.calls,
            self.keyed_calls,
            self.unkeyed_calls,
            self.keys_twice,
            self.repeated_side_effects,
            self.repeats_against_rule,
            self.failure_codes
        )
    }

    /// The invariants every fault test asserts: all final, none lost, none recorded twice, no repeat against the rule.
    #[track_caller]
    pub fn assert_exact(&self) {
        assert_eq!(self.unfinished, 0, "runs left unfinished: {}", self.line());
        assert_eq!(self.lost, 0, "accepted runs lost: {}", self.line());
        assert_eq!(self.recorded_twice, 0, "outcomes recorded twice: {}", self.line());
        assert_eq!(
            self.succeeded + self.failed + self.cancelled,
            self.accepted,
            "not every accepted run is final: {}",
            self.line()
        );
        assert_eq!(
            self.repeats_against_rule,
            0,
            "side effects repeated against the rule: {}",
            self.line()
        );
    }
}

/// Waits (at most `bound`) until no run in the database is `queued` or
/// `running`, then counts. `accepted` are the runs the API answered `202`
/// for; the database may hold more (a request committed whose answer was
/// lost in a crash): those must be final too. Prints the accounting line.
pub async fn settle(pool: &PgPool, accepted: &[Uuid], counter: &Counter, rule: &Rule, bound: Duration) -> Accounting {
    let deadline = Instant::now() + bound;
    loop {
        let open: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM runs WHERE status IN ('queued', 'running')")
                .fetch_one(pool)
                .await;
        if matches!(open, Ok(0)) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows: Vec<(Uuid, String, Option<String>)> = sqlx::query_as("SELECT id, status, error->>'code' FROM runs")
        .fetch_all(pool)
        .await
        .expect("reading runs");
    let mut acc = Accounting {
        accepted: accepted.len(),
        runs_in_db: rows.len(),
        ..Default::default()
    };
    let by_id: HashMap<Uuid, (&str, Option<&str>)> = rows
        .iter()
        .map(|(id, status, code)| (*id, (status.as_str(), code.as_deref())))
        .collect();
    acc.unfinished = rows
        .iter()
        .filter(|(_, s, _)| matches!(s.as_str(), "queued" | "running"))
        .count();
    for id in accepted {
        match by_id.get(id) {
            None => acc.lost += 1,
            Some(("succeeded", _)) => acc.succeeded += 1,
            Some(("failed", code)) => {
                acc.failed += 1;
                *acc.failure_codes
                    .entry(code.unwrap_or("(none)").to_string())
                    .or_default() += 1;
            }
            Some(("cancelled", _)) => acc.cancelled += 1,
            Some(_) => {}
        }
    }
    acc.recorded_twice = sqlx::query_scalar::<_, i64>(
        "SELECT count(DISTINCT resource_id) FROM (
           SELECT resource_id FROM audit_log WHERE action = 'node.execute'
            GROUP BY resource_id, details->>'node_id' HAVING count(*) > 1) twice",
    )
    .fetch_one(pool)
    .await
    .expect("reading audit") as usize;

    let calls = counter.calls();
    acc.calls = calls.len();
    acc.keyed_calls = calls.iter().filter(|c| c.key.is_some()).count();
    acc.unkeyed_calls = acc.calls - acc.keyed_calls;
    let mut keys: HashMap<&str, usize> = HashMap::new();
    for key in calls.iter().filter_map(|c| c.key.as_deref()) {
        *keys.entry(key).or_default() += 1;
    }
    acc.keys_twice = keys.values().filter(|n| **n > 1).count();
    let (repeated, against) = repeats(&calls, rule);
    acc.repeated_side_effects = repeated;
    acc.repeats_against_rule = against.len();
    println!("{}", acc.line());
    if !against.is_empty() {
        println!(
            "repeated against the rule ({rule:?}): {:?}",
            against.iter().take(10).collect::<Vec<_>>()
        );
        for run in against.iter().take(5) {
            explain(pool, &calls, rule, run).await;
        }
    }
    acc
}

type At = chrono::DateTime<chrono::Utc>;

/// Prints what the database recorded of a run that repeated a call against
/// the rule, on one time line with its calls and the deaths (wall clock,
/// seconds relative to the run's first call): what a defect report needs.
async fn explain(pool: &PgPool, calls: &[Call], rule: &Rule, run: &str) {
    let (now_i, now_w) = (Instant::now(), chrono::Utc::now());
    let wall = |at: Instant| now_w - chrono::Duration::from_std(now_i.duration_since(at)).unwrap_or_default();
    let mine: Vec<&Call> = calls.iter().filter(|c| c.run.as_deref() == Some(run)).collect();
    let Some(first) = mine.first().map(|c| wall(c.at)) else {
        return;
    };
    let rel = |t: chrono::DateTime<chrono::Utc>| (t - first).num_milliseconds() as f64 / 1000.0;
    let mut line: Vec<(f64, String)> = mine
        .iter()
        .map(|c| (rel(wall(c.at)), format!("call key={:?}", c.key)))
        .collect();
    if let Rule::InFlightAt(deaths) | Rule::Checkpointed { deaths, .. } = rule {
        line.extend(deaths.iter().map(|d| (rel(wall(*d)), "fault".to_string())));
    }
    let id = Uuid::parse_str(run).unwrap_or_default();
    let entries: Vec<(At, String, serde_json::Value)> =
        sqlx::query_as("SELECT at, action, details FROM audit_log WHERE resource_id = $1 ORDER BY id")
            .bind(run)
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    line.extend(
        entries
            .into_iter()
            .map(|(at, action, d)| (rel(at), format!("audit {action} {d}"))),
    );
    let steps: Vec<(String, i32, Option<At>)> =
        sqlx::query_as("SELECT node_id, seq, finished_at FROM run_steps WHERE run_id = $1")
            .bind(id)
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    line.extend(
        steps
            .into_iter()
            .filter_map(|(node, seq, at)| at.map(|at| (rel(at), format!("step {node} seq={seq} finished")))),
    );
    let row: Option<(i32, Option<At>, Option<At>)> =
        sqlx::query_as("SELECT attempt, started_at, finished_at FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .unwrap_or_default();
    line.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!("run {run}: attempt/started/finished {row:?}");
    for (t, what) in line {
        println!("  {t:>8.3}s {what}");
    }
}

/// How many runs called more than once, and which of them the rule does not allow.
pub fn repeats<'a>(calls: &'a [Call], rule: &Rule) -> (usize, Vec<&'a str>) {
    let mut by_run: HashMap<&str, Vec<&Call>> = HashMap::new();
    for call in calls {
        if let Some(run) = call.run.as_deref() {
            by_run.entry(run).or_default().push(call);
        }
    }
    let mut repeated = 0;
    let mut against = Vec::new();
    for (run, calls) in by_run {
        if calls.len() < 2 {
            continue;
        }
        repeated += 1;
        // Every call after the first needs a death between it and the one before.
        let allowed = calls.windows(2).all(|pair| {
            let (before, again) = (pair[0].at, pair[1].at);
            match rule {
                Rule::Never => false,
                Rule::InFlightAt(deaths) => deaths.iter().any(|d| before <= *d && *d <= again),
                Rule::Checkpointed { deaths, window } => deaths
                    .iter()
                    .any(|d| before <= *d && *d <= again && d.duration_since(before) < *window),
            }
        });
        if !allowed {
            against.push(run);
        }
    }
    against.sort_unstable();
    (repeated, against)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(run: &str, at: Instant) -> Call {
        Call {
            run: Some(run.into()),
            key: None,
            at,
        }
    }

    #[test]
    fn a_repeat_is_allowed_only_across_a_death_and_inside_the_checkpoint_window() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let calls = [
            call("once", t0),
            call("across", t0),
            call("across", t0 + s(10)),
            call("no_death_between", t0 + s(20)),
            call("no_death_between", t0 + s(21)),
            call("old", t0),
            call("old", t0 + s(10)),
        ];
        let death = t0 + s(5);
        assert_eq!(
            repeats(&calls, &Rule::Never),
            (3, vec!["across", "no_death_between", "old"])
        );
        assert_eq!(
            repeats(&calls, &Rule::InFlightAt(vec![death])),
            (3, vec!["no_death_between"])
        );
        // A checkpoint window of 1 s: the calls 5 s before the death were checkpointed.
        let checkpointed = Rule::Checkpointed {
            deaths: vec![death, t0 + s(20) + Duration::from_millis(500)],
            window: s(1),
        };
        assert_eq!(repeats(&calls, &checkpointed), (3, vec!["across", "old"]));
    }
}
