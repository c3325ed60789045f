//! The audit export streams: 100 000 entries (about 120 MB of NDJSON) pass
//! through the API while this process's resident memory stays flat. Its own
//! test binary, so no other test's allocations blur the measurement.

use reqwest::StatusCode;

use floq_tests::{Options, TestApp};

const ENTRIES: i64 = 100_000;
/// A buffered export would hold the whole body (and more) at once.
const MAX_GROWTH_BYTES: u64 = 48 << 20;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn exporting_100_000_entries_streams_in_constant_memory() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    sqlx::query(
        "INSERT INTO audit_log (company_id, at, actor_type, action, outcome, details)
         SELECT $1, now(), 'system', 'test.bulk', 'success',
                jsonb_build_object('n', n, 'padding', repeat('x', 1000))
           FROM generate_series(1, $2) n",
    )
    .bind(app.admin.company_id)
    .bind(ENTRIES)
    .execute(&app.pool)
    .await
    .unwrap();

    let baseline = resident_bytes();
    let mut resp = app
        .client
        .get(format!("{}/api/v1/audit/export", app.base))
        .bearer_auth(&app.admin.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.content_length().is_none(),
        "a streamed body has no length up front"
    );
    let (mut lines, mut bytes, mut peak) = (0i64, 0u64, baseline);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as i64;
        bytes += chunk.len() as u64;
        peak = peak.max(resident_bytes());
    }
    assert!(lines >= ENTRIES, "got {lines} lines");
    assert!(bytes > 100_000_000, "the export was {bytes} bytes");
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < MAX_GROWTH_BYTES,
        "resident memory grew by {} MiB while streaming {} MiB",
        growth >> 20,
        bytes >> 20
    );
    app.teardown().await;
}
