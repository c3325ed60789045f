//! Trigger rate limits: token buckets per flow and per company, checked
//! before a run is accepted (API calls and webhooks alike). A refused call
//! gets `429` with `Retry-After`. Buckets live in each API replica, so the
//! company-wide ceiling is the configured one times the replica count.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::error::ApiError;
use floq_shared::Config;

pub struct TriggerLimits {
    per_flow: DefaultKeyedRateLimiter<Uuid>,
    per_company: DefaultKeyedRateLimiter<Uuid>,
    checks: AtomicU64,
}

fn quota(rate: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(rate.max(1)).expect("at least 1");
    Quota::per_second(rate).allow_burst(NonZeroU32::new(burst.max(1)).expect("at least 1"))
}

impl TriggerLimits {
    pub fn new(config: &Config) -> Self {
        Self {
            per_flow: RateLimiter::keyed(quota(config.trigger_rate_per_flow, config.trigger_burst_per_flow)),
            per_company: RateLimiter::keyed(quota(config.trigger_rate_per_company, config.trigger_burst_per_company)),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes a token from the flow's bucket and the company's, or says how long to wait.
    pub fn check(&self, company_id: Uuid, flow_id: Uuid) -> Result<(), ApiError> {
        // Forget idle keys now and then, so the maps track only active flows.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 10_000 == 9_999 {
            self.per_flow.retain_recent();
            self.per_company.retain_recent();
        }
        for (limiter, key, what) in [
            (&self.per_company, company_id, "this company"),
            (&self.per_flow, flow_id, "this flow"),
        ] {
            if let Err(not_until) = limiter.check_key(&key) {
                // The limiter's own clock: building a clock calibrates it (cpuid), far too slow per call.
                let wait = not_until.wait_time_from(limiter.clock().now()).as_secs().max(1);
                return Err(ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many runs started for {what}; retry in {wait} s"),
                )
                .retry_after(wait));
            }
        }
        Ok(())
    }
}

/// MCP request limits: token buckets per API key and per company, checked
/// before a message is read (every JSON-RPC request counts, not only tool
/// calls, which also take from the trigger buckets). Per API replica, as above.
pub struct McpLimits {
    per_key: DefaultKeyedRateLimiter<Uuid>,
    per_company: DefaultKeyedRateLimiter<Uuid>,
    checks: AtomicU64,
}

impl McpLimits {
    pub fn new(config: &Config) -> Self {
        Self {
            per_key: RateLimiter::keyed(quota(config.mcp_rate_per_key, config.mcp_burst_per_key)),
            per_company: RateLimiter::keyed(quota(config.mcp_rate_per_company, config.mcp_burst_per_company)),
            checks: AtomicU64::new(0),
        }
    }

    pub fn check(&self, company_id: Uuid, key_id: Uuid) -> Result<(), ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 10_000 == 9_999 {
            self.per_key.retain_recent();
            self.per_company.retain_recent();
        }
        for (limiter, key, what) in [
            (&self.per_company, company_id, "this company"),
            (&self.per_key, key_id, "this API key"),
        ] {
            if let Err(not_until) = limiter.check_key(&key) {
                let wait = not_until.wait_time_from(limiter.clock().now()).as_secs().max(1);
                return Err(ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many MCP requests for {what}; retry in {wait} s"),
                )
                .retry_after(wait));
            }
        }
        Ok(())
    }
}
