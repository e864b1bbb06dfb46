//! Rate limits: requests per minute and tokens per minute, as providers publish them. Two token
//! buckets that refill continuously; a request waits until both have room. Token use is estimated
//! before the call and corrected after it, so a run settles at the limit instead of bursting past.

use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Mutex;

#[derive(Debug)]
struct Bucket {
    /// Units per second.
    rate: f64,
    capacity: f64,
    level: f64,
}

impl Bucket {
    /// A bucket for `per_minute` units that holds at most ten seconds' worth, so that a start does
    /// not spend a whole minute's allowance at once.
    fn new(per_minute: f64) -> Self {
        let rate = per_minute / 60.0;
        let capacity = (rate * 10.0).max(1.0);
        Self {
            rate,
            capacity,
            level: capacity,
        }
    }

    fn refill(&mut self, dt: f64) {
        self.level = (self.level + dt * self.rate).min(self.capacity);
    }

    /// Seconds until `n` units are there (a request bigger than the bucket waits for a full one).
    fn wait_for(&self, n: f64) -> f64 {
        let need = n.min(self.capacity);
        if self.level >= need {
            0.0
        } else {
            (need - self.level) / self.rate
        }
    }
}

#[derive(Debug)]
struct State {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    last: Instant,
}

/// A target's rate limits; `None` for a limit means unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<State>,
}

impl RateLimiter {
    pub fn new(rpm: Option<f64>, tpm: Option<f64>) -> Self {
        Self {
            state: Mutex::new(State {
                requests: rpm.filter(|r| *r > 0.0).map(Bucket::new),
                tokens: tpm.filter(|t| *t > 0.0).map(Bucket::new),
                last: Instant::now(),
            }),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.state
            .try_lock()
            .map(|s| s.requests.is_none() && s.tokens.is_none())
            .unwrap_or(false)
    }

    /// Wait for room for one request of about `tokens` tokens, then take it.
    pub async fn acquire(&self, tokens: f64) {
        loop {
            let wait = {
                let mut s = self.state.lock().await;
                let now = Instant::now();
                let dt = now.duration_since(s.last).as_secs_f64();
                s.last = now;
                let mut wait: f64 = 0.0;
                if let Some(b) = s.requests.as_mut() {
                    b.refill(dt);
                    wait = wait.max(b.wait_for(1.0));
                }
                if let Some(b) = s.tokens.as_mut() {
                    b.refill(dt);
                    wait = wait.max(b.wait_for(tokens));
                }
                if wait <= 0.0 {
                    if let Some(b) = s.requests.as_mut() {
                        b.level -= 1.0;
                    }
                    if let Some(b) = s.tokens.as_mut() {
                        b.level -= tokens.min(b.capacity);
                    }
                    return;
                }
                wait
            };
            tokio::time::sleep(Duration::from_secs_f64(wait.min(60.0))).await;
        }
    }

    /// Correct the token estimate once the provider has said what the request used.
    pub async fn settle(&self, estimated: f64, actual: f64) {
        let mut s = self.state.lock().await;
        if let Some(b) = s.tokens.as_mut() {
            b.level -= actual - estimated.min(b.capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_are_held() {
        // 120 rpm = 2/s with a 20-request bucket: 60 requests take (60 - 20) / 2 = 20 s.
        let rl = RateLimiter::new(Some(120.0), None);
        let t0 = tokio::time::Instant::now();
        for _ in 0..60 {
            rl.acquire(0.0).await;
        }
        let took = t0.elapsed().as_secs_f64();
        assert!((19.0..=21.5).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_per_minute_are_held_and_settled() {
        // 6000 tpm = 100/s, bucket 1000. Ten requests estimated at 100 but using 300 tokens each.
        let rl = RateLimiter::new(None, Some(6000.0));
        let t0 = tokio::time::Instant::now();
        for _ in 0..10 {
            rl.acquire(100.0).await;
            rl.settle(100.0, 300.0).await;
        }
        // 3000 tokens against 1000 in the bucket: about 20 s of refill before the last one.
        let took = t0.elapsed().as_secs_f64();
        assert!((15.0..=25.0).contains(&took), "{took}");
    }
}
