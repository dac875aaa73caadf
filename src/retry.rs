//! One retry policy for every transient failure: exponential backoff with jitter, built on the
//! `backon` crate and driven by each error type's [`Transient::is_transient`].
//!
//! Two shapes of waiting share it:
//! - [`retry`] and [`retry_with`]: one operation tried again until it succeeds, fails permanently,
//!   or the policy is spent (attempts, or the wall-clock budget).
//! - [`Pacer`]: the pause of a loop that goes on after failures (a source pass, a reopened stream,
//!   a job being polled), reset after a success.
//!
//! No other module computes a backoff delay.

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{Backoff, BackoffBuilder, ExponentialBuilder, Retryable};

/// What a retry needs to know of an error.
pub trait Transient {
    /// Whether trying the same thing again can succeed (a timeout, a 5xx, a lock).
    fn is_transient(&self) -> bool;
    /// The wait the service asked for (an HTTP `Retry-After`), used instead of the backoff delay.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// Exponential backoff: `initial`, doubling up to `max_delay`, each delay jittered by ±25 % so that
/// many clients failing together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub initial: Duration,
    pub max_delay: Duration,
    /// Tries in all, the first included; `None`: no limit.
    pub max_attempts: Option<usize>,
    /// No retry starts once this much time has passed since the first try, counting the wait
    /// before it; `None`: no limit.
    pub budget: Option<Duration>,
    /// ±25 % jitter on every delay (default on).
    pub jitter: bool,
}

impl Policy {
    pub const fn exponential(initial: Duration, max_delay: Duration) -> Policy {
        Policy { initial, max_delay, max_attempts: None, budget: None, jitter: true }
    }

    pub const fn with_max_attempts(mut self, attempts: usize) -> Policy {
        self.max_attempts = Some(attempts);
        self
    }

    pub const fn with_budget(mut self, budget: Duration) -> Policy {
        self.budget = Some(budget);
        self
    }

    pub const fn without_jitter(mut self) -> Policy {
        self.jitter = false;
        self
    }

    /// The delay sequence, from `backon` (jitter is applied by [`Policy::shape`]: backon's own adds
    /// 0–100 %, which would double the worst case of every wait).
    fn delays(&self) -> impl Backoff {
        let builder =
            ExponentialBuilder::default().with_min_delay(self.initial).with_max_delay(self.max_delay).with_factor(2.0);
        match self.max_attempts {
            Some(attempts) => builder.with_max_times(attempts.saturating_sub(1)),
            None => builder.without_max_times(),
        }
        .build()
    }

    /// The wait before the next try: the service's own ask, else the jittered backoff delay; none
    /// once the attempts or the budget are spent.
    fn shape(&self, started: Instant, next: Option<Duration>, asked: Option<Duration>) -> Option<Duration> {
        let next = next?;
        let wait = match asked {
            Some(asked) => asked.min(self.max_delay),
            None if self.jitter => next.mul_f64(0.75 + fastrand::f64() * 0.5),
            None => next,
        };
        match self.budget {
            Some(budget) if started.elapsed() + wait > budget => None,
            _ => Some(wait),
        }
    }

    /// A pacer for a loop that goes on after failures.
    pub fn pacer(&self) -> Pacer {
        Pacer { policy: *self, delays: Box::new(self.delays()), started: Instant::now(), waited: false }
    }
}

/// Runs `call` until it succeeds, fails permanently, or `policy` is spent; `on_retry` sees each
/// transient failure with the wait before the next try (for logs and metrics).
pub async fn retry<T, E, F, Fut>(policy: Policy, mut on_retry: impl FnMut(&E, Duration), call: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Transient,
{
    let started = Instant::now();
    call.retry(BuilderOf(policy))
        .sleep(tokio::time::sleep)
        .when(|e: &E| e.is_transient())
        .adjust(|e: &E, next| policy.shape(started, next, e.retry_after()))
        .notify(|e: &E, wait| on_retry(e, wait))
        .await
}

/// [`retry`] for an operation that owns something across tries (a batch's receipts): `call` takes
/// it and hands it back with its result.
///
/// `backon`'s own context variant cannot adjust a delay, which the wall-clock budget needs, so this
/// walks the same delay sequence itself.
pub async fn retry_with<C, T, E, F, Fut>(
    policy: Policy,
    mut context: C,
    mut on_retry: impl FnMut(&E, Duration),
    mut call: F,
) -> (C, Result<T, E>)
where
    F: FnMut(C) -> Fut,
    Fut: Future<Output = (C, Result<T, E>)>,
    E: Transient,
{
    let mut pacer = policy.pacer();
    loop {
        let (back, result) = call(context).await;
        context = back;
        let error = match result {
            Ok(value) => return (context, Ok(value)),
            Err(error) if !error.is_transient() => return (context, Err(error)),
            Err(error) => error,
        };
        match pacer.next_wait(error.retry_after()) {
            Some(wait) => {
                on_retry(&error, wait);
                tokio::time::sleep(wait).await;
            }
            None => return (context, Err(error)),
        }
    }
}

/// The growing pause of a loop that goes on after failures; [`Pacer::reset`] after a success.
pub struct Pacer {
    policy: Policy,
    delays: Box<dyn Backoff>,
    started: Instant,
    /// Whether a wait was handed out since the last reset (a reset without one costs nothing, so
    /// a loop may reset after every success).
    waited: bool,
}

impl Pacer {
    /// The wait after a failure (`asked`: what the service asked for), or `None` once the policy's
    /// attempts or budget are spent.
    pub fn next_wait(&mut self, asked: Option<Duration>) -> Option<Duration> {
        self.waited = true;
        let next = self.delays.next();
        self.policy.shape(self.started, next, asked)
    }

    /// The wait after a failure, for a loop that never gives up (the policy sets no limits).
    pub fn next_pause(&mut self) -> Duration {
        self.next_wait(None).unwrap_or(self.policy.max_delay)
    }

    /// Waits [`Pacer::next_pause`].
    pub async fn pause(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }

    /// Starts over from the initial delay (after a success).
    pub fn reset(&mut self) {
        if self.waited {
            *self = self.policy.pacer();
        }
    }
}

/// A [`Policy`] as a `backon` builder.
struct BuilderOf(Policy);

impl BackoffBuilder for BuilderOf {
    type Backoff = Box<dyn Backoff>;

    fn build(self) -> Self::Backoff {
        Box::new(self.0.delays())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Flaky {
        transient: bool,
        asked: Option<Duration>,
    }

    impl Transient for Flaky {
        fn is_transient(&self) -> bool {
            self.transient
        }
        fn retry_after(&self) -> Option<Duration> {
            self.asked
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_without_jitter() {
        let policy = Policy::exponential(Duration::from_millis(100), Duration::from_millis(350)).without_jitter();
        let mut pacer = policy.pacer();
        let waits: Vec<u128> = (0..4).map(|_| pacer.next_pause().as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        pacer.reset();
        assert_eq!(pacer.next_pause(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        let policy = Policy::exponential(Duration::from_millis(1000), Duration::from_secs(10));
        for _ in 0..100 {
            let wait = policy.pacer().next_pause().as_millis();
            assert!((750..=1250).contains(&wait), "{wait}");
        }
    }

    #[tokio::test]
    async fn retries_transient_errors_until_the_attempts_are_spent() {
        let policy = Policy::exponential(Duration::from_millis(1), Duration::from_millis(2)).with_max_attempts(3);
        let mut calls = 0;
        let mut notified = 0;
        let result: Result<(), Flaky> = retry(
            policy,
            |_, _| notified += 1,
            || {
                calls += 1;
                async { Err(Flaky { transient: true, asked: None }) }
            },
        )
        .await;
        assert!(result.is_err());
        assert_eq!((calls, notified), (3, 2));
    }

    #[tokio::test]
    async fn a_permanent_error_is_not_retried_and_a_service_ask_is_honoured() {
        let policy = Policy::exponential(Duration::from_millis(1), Duration::from_secs(1)).with_max_attempts(5);
        let mut calls = 0;
        let _: Result<(), Flaky> = retry(
            policy,
            |_, _| {},
            || {
                calls += 1;
                async { Err(Flaky { transient: false, asked: None }) }
            },
        )
        .await;
        assert_eq!(calls, 1);
        let mut waits = Vec::new();
        let _: Result<(), Flaky> = retry(
            policy.with_max_attempts(2),
            |_, wait| waits.push(wait),
            || async { Err(Flaky { transient: true, asked: Some(Duration::from_millis(30)) }) },
        )
        .await;
        assert_eq!(waits, [Duration::from_millis(30)]);
    }

    #[tokio::test]
    async fn the_budget_stops_retries_and_the_context_comes_back() {
        // Without jitter: with it three waits may each be 15 ms and fit a fourth try in the budget.
        let policy = Policy::exponential(Duration::from_millis(20), Duration::from_millis(20))
            .without_jitter()
            .with_budget(Duration::from_millis(50));
        let (tries, result): (u32, Result<(), Flaky>) = retry_with(
            policy,
            0u32,
            |_, _| {},
            |tries| async move { (tries + 1, Err(Flaky { transient: true, asked: None })) },
        )
        .await;
        assert!(result.is_err());
        assert!((2..=3).contains(&tries), "{tries} tries within a 50 ms budget of 20 ms waits");
    }
}
