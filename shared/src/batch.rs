//! Group commit that isolates bad rows. A batch writer (the acceptor, the
//! outcome writer, the audit writer) commits many tenants' rows in one
//! transaction; when PostgreSQL refuses the batch because of what one row
//! holds, the batch is halved until the refusal is pinned on single rows,
//! so only their callers get the error and every other row commits.
//! An outage (connection lost, server shutting down) is not split: nothing
//! would commit, so the whole part is handed back for the caller to retry.

use std::future::Future;
use std::ops::Range;

/// Commits `items` with `commit`, splitting a part in two whenever `refused`
/// says its error came from its data, down to single items. Returns every
/// part that was tried last with its result, in item order. A batch with one
/// bad item costs about `2·log2(n)` extra commits; a clean batch costs one.
pub async fn isolate<'a, T, R, E, F, Fut>(
    items: &'a [T],
    mut commit: F,
    refused: impl Fn(&E) -> bool,
) -> Vec<(Range<usize>, Result<R, E>)>
where
    F: FnMut(&'a [T]) -> Fut,
    Fut: Future<Output = Result<R, E>>,
{
    let mut done = Vec::new();
    if items.is_empty() {
        return done;
    }
    // Parts still to try, as index ranges; the last pushed is tried next.
    #[allow(clippy::single_range_in_vec_init, reason = "a list of ranges, one so far")]
    let mut pending = vec![0..items.len()];
    while let Some(range) = pending.pop() {
        match commit(&items[range.clone()]).await {
            Err(e) if range.len() > 1 && refused(&e) => {
                let mid = range.start + range.len() / 2;
                // Popped first half first, so parts finish in item order.
                pending.push(mid..range.end);
                pending.push(range.start..mid);
            }
            result => done.push((range, result)),
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake commit: refuses any part holding a poison item, fails everything during an outage.
    async fn commit(part: &[i32], log: &std::sync::Mutex<Vec<usize>>) -> Result<Vec<i32>, &'static str> {
        log.lock().unwrap().push(part.len());
        if part.contains(&-1) {
            return Err("outage");
        }
        if part.contains(&0) {
            Err("refused")
        } else {
            Ok(part.to_vec())
        }
    }

    type Parts = Vec<(Range<usize>, Result<Vec<i32>, &'static str>)>;

    fn run(items: &[i32]) -> (Parts, usize) {
        let log = std::sync::Mutex::new(Vec::new());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let done = rt.block_on(isolate(items, |part| commit(part, &log), |e| *e == "refused"));
        let commits = log.lock().unwrap().len();
        (done, commits)
    }

    #[test]
    fn a_clean_batch_commits_once() {
        let (done, commits) = run(&[1, 2, 3]);
        assert_eq!(done, vec![(0..3, Ok(vec![1, 2, 3]))]);
        assert_eq!(commits, 1);
    }

    #[test]
    fn only_the_poisoned_items_fail_and_everything_else_commits_in_order() {
        let items: Vec<i32> = (1..=1000).map(|i| if i == 17 || i == 600 { 0 } else { i }).collect();
        let (done, commits) = run(&items);
        let failed: Vec<Range<usize>> = done
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(r, _)| r.clone())
            .collect();
        assert_eq!(failed, vec![16..17, 599..600]);
        let committed: Vec<i32> = done
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flatten()
            .copied()
            .collect();
        assert_eq!(committed, items.iter().copied().filter(|&i| i != 0).collect::<Vec<_>>());
        let starts: Vec<usize> = done.iter().map(|(r, _)| r.start).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "parts come back in item order");
        assert!(
            commits <= 2 * 2 * 10 + 1,
            "bisection, not row by row: {commits} commits"
        );
    }

    #[test]
    fn an_outage_is_not_split() {
        let (done, commits) = run(&[1, -1, 0, 3]);
        assert_eq!(done, vec![(0..4, Err("outage"))]);
        assert_eq!(commits, 1);
    }

    #[test]
    fn an_empty_batch_commits_nothing() {
        let (done, commits) = run(&[]);
        assert!(done.is_empty());
        assert_eq!(commits, 0);
    }
}
