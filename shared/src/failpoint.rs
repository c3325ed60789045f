//! Fail points for the fault tests (`tests/tests/faults/`), compiled only with
//! the cargo feature `failpoints`: the tests crate turns it on for the
//! services it spawns; the release builds of the services (`deploy/local/up.sh`
//! builds `-p floq-api -p floq-worker -p floq-scheduler`) never have it.
//!
//! `FLOQ_FAILPOINT=<name>` arms one point from the first time it is reached,
//! `<name>@<n>` from the n-th time (so a stream gets going before the fault).
//! What a point does when it fires is up to its call site (abort the process,
//! panic): a crash at an exact place that no signal sent from outside can hit.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

static ARMED: LazyLock<Option<(String, u64)>> = LazyLock::new(|| {
    let spec = std::env::var("FLOQ_FAILPOINT").ok()?;
    let (name, from) = match spec.split_once('@') {
        Some((name, n)) => (name.to_string(), n.parse().ok()?),
        None => (spec, 1),
    };
    Some((name, from))
});

static HITS: AtomicU64 = AtomicU64::new(0);

/// Whether the point `name` fires now (counting this visit when it is the armed one).
pub fn fires(name: &str) -> bool {
    match &*ARMED {
        Some((armed, from)) if armed == name => HITS.fetch_add(1, Ordering::SeqCst) + 1 >= *from,
        _ => false,
    }
}
