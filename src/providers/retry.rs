//! Retries: exponential backoff with full jitter (the AWS recipe), never shorter than the
//! server's `Retry-After`, for errors worth retrying only.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::limits::RateLimiter;
use super::{ChatRequest, Deltas, Outcome, Provider};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `attempt` (1-based): uniform in [0, min(cap, base·2^(n-1))],
    /// and at least what the server asked for.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << (attempt - 1).min(20))
            .min(self.cap);
        let jittered = ceiling.mul_f64(rand::rng().random::<f64>());
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.cap * 5)),
            None => jittered,
        }
    }
}

/// A rough token count for rate limiting before the provider says (4 characters a token).
pub fn estimate_tokens(req: &ChatRequest) -> f64 {
    let chars: usize = req.messages.iter().map(|m| m.content.len() + 8).sum();
    chars as f64 / 4.0 + req.max_tokens as f64
}

/// Send `req` with rate limiting and retries. A streamed request is retried only while none of
/// its text has been passed on.
pub async fn send(
    provider: &dyn Provider,
    req: &ChatRequest,
    limiter: &RateLimiter,
    policy: &RetryPolicy,
    deltas: Option<&Deltas>,
) -> Outcome {
    let estimate = estimate_tokens(req);
    let mut waited = 0.0;
    let mut attempts = 0;
    loop {
        let t = tokio::time::Instant::now();
        limiter.acquire(estimate).await;
        waited += t.elapsed().as_secs_f64();
        attempts += 1;
        let result = provider.chat(req, deltas).await;
        if let Ok(r) = &result {
            let used = (r.prompt_tokens.unwrap_or(0) + r.completion_tokens.unwrap_or(0)) as f64;
            if used > 0.0 {
                limiter.settle(estimate, used).await;
            }
        }
        match result {
            Err(e)
                if e.retryable()
                    && attempts <= policy.max_retries
                    && !deltas.is_some_and(Deltas::started) =>
            {
                let pause = policy.backoff(attempts, e.retry_after());
                tracing::debug!("attempt {attempts} failed ({e}); retrying in {pause:.2?}");
                waited += pause.as_secs_f64();
                tokio::time::sleep(pause).await;
            }
            result => {
                return Outcome {
                    result,
                    attempts,
                    waited_s: waited,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            max_retries: 9,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        for _ in 0..200 {
            assert!(p.backoff(1, None) <= Duration::from_millis(100));
            assert!(p.backoff(4, None) <= Duration::from_millis(800));
            assert!(p.backoff(30, None) <= Duration::from_secs(2));
            assert!(p.backoff(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
        // Full jitter spreads retries out.
        let mut seen: Vec<u128> = (0..50).map(|_| p.backoff(5, None).as_micros()).collect();
        seen.dedup();
        assert!(seen.len() > 40);
    }
}
