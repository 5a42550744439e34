//! Rate-limit and spend counters: reservation before forwarding, release when the call is not
//! forwarded or the upstream fails.
//!
//! Windows slide: a limit of N per hour counts the calls of the last hour at any instant, not
//! since the top of the hour. Each counter keeps its window as 60 sub-buckets (for a one-minute
//! window, one per second), so memory per counter is bounded whatever the traffic, and the
//! window slides in steps of 1/60 of its length. A reservation checks every limit of a decision
//! and takes all of them or none.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sub-buckets per window.
const SLOTS: u32 = 60;

/// One limit to reserve against, with its full key (scope ids included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey {
    pub key: String,
    pub max: u64,
    pub window: Duration,
    pub increment: u64,
}

/// One amount taken from one counter's sub-bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub key: String,
    pub slot: u64,
    pub amount: u64,
}

/// What was taken, to give back on release.
#[derive(Debug, Clone, Default)]
pub struct Reservation {
    taken: Vec<Taken>,
    /// Taken in Redis rather than in this process.
    remote: bool,
}

impl Reservation {
    pub(crate) fn remote(taken: Vec<Taken>) -> Self {
        Reservation {
            taken,
            remote: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }
}

/// The answer to a reservation.
#[derive(Debug)]
pub enum Outcome {
    Reserved(Reservation),
    /// The limit at this index of the request is exhausted; retry after this long.
    Exhausted {
        index: usize,
        retry_after: Duration,
    },
    /// The shared counters cannot be reached and the gateway runs with `--limits-fail-closed`:
    /// a call with limits is refused rather than counted in this process alone.
    Unavailable,
}

/// Counters kept in this process.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    counters: Mutex<HashMap<String, Window>>,
}

#[derive(Debug)]
struct Window {
    span: Duration,
    /// (slot number, amount), oldest first.
    slots: VecDeque<(u64, u64)>,
    total: u64,
    last_used: Instant,
}

impl Window {
    fn slot_len(span: Duration) -> Duration {
        (span / SLOTS).max(Duration::from_millis(1))
    }

    fn slot_of(span: Duration, at: Duration) -> u64 {
        (at.as_nanos() / Window::slot_len(span).as_nanos()) as u64
    }

    fn expire(&mut self, now_slot: u64) {
        while let Some(&(slot, amount)) = self.slots.front() {
            if slot + u64::from(SLOTS) <= now_slot {
                self.slots.pop_front();
                self.total -= amount;
            } else {
                break;
            }
        }
    }

    /// How long until `needed` more fits under `max`.
    fn retry_after(&self, needed: u64, max: u64, now: Duration) -> Duration {
        let slot_len = Window::slot_len(self.span);
        let mut freed = 0;
        for &(slot, amount) in &self.slots {
            freed += amount;
            if (self.total - freed).saturating_add(needed) <= max {
                let expires = slot_len * (slot as u32 + SLOTS);
                return expires.saturating_sub(now).max(Duration::from_secs(1));
            }
        }
        // More than the limit at once can never pass; answer the whole window.
        self.span
    }
}

impl MemoryCounters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves every limit, or none. `now` is time since an arbitrary fixed origin.
    pub fn reserve_at(&self, limits: &[LimitKey], now: Duration, clock: Instant) -> Outcome {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        // Limits with the same key share one count: a call adds to it once (the largest
        // increment asked of it), and must fit under every one of their maxima.
        let mut wanted: HashMap<&str, u64> = HashMap::new();
        for limit in limits {
            let w = wanted.entry(limit.key.as_str()).or_insert(0);
            *w = (*w).max(limit.increment);
        }
        for (index, limit) in limits.iter().enumerate() {
            let wanted = wanted[limit.key.as_str()];
            let current = match counters.get_mut(&limit.key) {
                Some(w) => {
                    w.expire(Window::slot_of(limit.window, now));
                    w.total
                }
                None => 0,
            };
            // Increments come from arguments: never let them wrap a counter around.
            if current.saturating_add(wanted) > limit.max {
                let retry_after = match counters.get(&limit.key) {
                    Some(w) if wanted <= limit.max => w.retry_after(wanted, limit.max, now),
                    _ => limit.window,
                };
                return Outcome::Exhausted { index, retry_after };
            }
        }
        let mut reservation = Reservation::default();
        for limit in limits {
            let Some(amount) = wanted.remove(limit.key.as_str()) else {
                continue; // already taken for an earlier limit with this key
            };
            if amount == 0 {
                continue;
            }
            let slot = Window::slot_of(limit.window, now);
            let window = counters.entry(limit.key.clone()).or_insert_with(|| Window {
                span: limit.window,
                slots: VecDeque::new(),
                total: 0,
                last_used: clock,
            });
            window.last_used = clock;
            match window.slots.back_mut() {
                Some((s, a)) if *s == slot => *a = a.saturating_add(amount),
                _ => window.slots.push_back((slot, amount)),
            }
            window.total = window.total.saturating_add(amount);
            reservation.taken.push(Taken {
                key: limit.key.clone(),
                slot,
                amount,
            });
        }
        Outcome::Reserved(reservation)
    }

    /// Gives back what a reservation took (if it has not expired already).
    pub fn release(&self, reservation: Reservation) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for Taken { key, slot, amount } in reservation.taken {
            if let Some(w) = counters.get_mut(&key)
                && let Some(entry) = w.slots.iter_mut().find(|(s, _)| *s == slot)
            {
                let give_back = amount.min(entry.1);
                entry.1 -= give_back;
                w.total -= give_back;
            }
        }
    }

    /// Drops counters unused for longer than their window (called periodically).
    pub fn sweep(&self, clock: Instant) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        counters.retain(|_, w| clock.duration_since(w.last_used) <= w.span);
    }

    pub fn len(&self) -> usize {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The gateway's counters: in Redis when configured (shared by every gateway), else in this
/// process. When Redis cannot be reached (an error, or no answer within [`REDIS_TIMEOUT`]),
/// decisions fall back to this process's counters: limits then hold per process until Redis
/// returns, a call is never refused for want of Redis. Only the call that finds Redis gone
/// waits for it: while it is down, one call per [`REDIS_PROBE_INTERVAL`] asks it again and the
/// others count here at once (a Redis that hangs would otherwise add [`REDIS_TIMEOUT`] to every
/// call with limits). The log says so once when
/// Redis goes and once when it returns, and the metrics `portcullis_limits_redis_up` and
/// `portcullis_limits_fallback_decisions` say so all along. With `fail_closed`
/// (`--limits-fail-closed`), a call with limits is refused instead while Redis is unreachable.
#[derive(Debug, Default)]
pub struct Counters {
    pub memory: MemoryCounters,
    pub redis: Option<crate::redis_limits::RedisCounters>,
    pub fail_closed: bool,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    redis_down: std::sync::atomic::AtomicBool,
    /// While Redis is down: when (ms, on the decisions' clock) the next call may ask it again.
    next_probe_ms: std::sync::atomic::AtomicU64,
}

/// How long a decision waits for Redis before counting in this process.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// While Redis is down, how often one call asks it again.
pub const REDIS_PROBE_INTERVAL: Duration = Duration::from_secs(1);

fn millis(at: Duration) -> u64 {
    u64::try_from(at.as_millis()).unwrap_or(u64::MAX)
}

/// When (ms, on the decisions' clock) Redis may next be asked, seen from `now`.
fn next_probe(now: Duration) -> u64 {
    millis(now).saturating_add(millis(REDIS_PROBE_INTERVAL))
}

impl Counters {
    pub fn new(
        redis: Option<crate::redis_limits::RedisCounters>,
        fail_closed: bool,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Counters {
        metrics.set_redis_up(redis.is_some());
        Counters {
            memory: MemoryCounters::new(),
            redis,
            fail_closed,
            metrics,
            redis_down: std::sync::atomic::AtomicBool::new(false),
            next_probe_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether this call should ask Redis: always while it is up; while it is down, one call
    /// per probe interval (the one that claims the next probe).
    fn asks_redis(&self, now: Duration) -> bool {
        use std::sync::atomic::Ordering;
        if !self.redis_down.load(Ordering::Relaxed) {
            return true;
        }
        let next = self.next_probe_ms.load(Ordering::Relaxed);
        millis(now) >= next
            && self
                .next_probe_ms
                .compare_exchange(next, next_probe(now), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub async fn reserve(&self, limits: &[LimitKey], now: Duration, clock: Instant) -> Outcome {
        use std::sync::atomic::Ordering;
        if limits.is_empty() {
            return Outcome::Reserved(Reservation::default());
        }
        if self.redis.is_some() && !self.asks_redis(now) {
            // Down, and another call is asking it: count here without waiting.
            self.metrics.limits_fallback();
            if self.fail_closed {
                return Outcome::Unavailable;
            }
            return self.memory.reserve_at(limits, now, clock);
        }
        if let Some(redis) = &self.redis {
            let error = match tokio::time::timeout(REDIS_TIMEOUT, redis.reserve(limits)).await {
                Ok(Ok(outcome)) => {
                    if self.redis_down.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            "Redis is back: rate limits are shared between gateways again"
                        );
                        self.metrics.set_redis_up(true);
                    }
                    return outcome;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", REDIS_TIMEOUT.as_millis()),
            };
            // Never earlier than a probe another call already claimed.
            self.next_probe_ms
                .fetch_max(next_probe(now), Ordering::Relaxed);
            if !self.redis_down.swap(true, Ordering::Relaxed) {
                self.metrics.set_redis_up(false);
                if self.fail_closed {
                    tracing::error!(
                        error,
                        "Redis unavailable: refusing calls with rate limits until it returns (--limits-fail-closed)"
                    );
                } else {
                    tracing::warn!(
                        error,
                        "Redis unavailable: counting rate limits in this process until it returns (limits hold per gateway meanwhile)"
                    );
                }
            }
            self.metrics.limits_fallback();
            if self.fail_closed {
                return Outcome::Unavailable;
            }
        }
        self.memory.reserve_at(limits, now, clock)
    }

    /// Gives a reservation back (in the background for Redis: never delays an answer).
    pub fn release(&self, reservation: Reservation) {
        if reservation.taken.is_empty() {
            return;
        }
        if reservation.remote {
            if let Some(redis) = self.redis.clone() {
                tokio::spawn(async move {
                    if let Err(e) = redis.release(&reservation.taken).await {
                        // Said once already when Redis went; the reservation expires with its
                        // window.
                        tracing::debug!(error = %e, "could not release a limit reservation in Redis");
                    }
                });
            }
        } else {
            self.memory.release(reservation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(key: &str, max: u64, window_secs: u64, increment: u64) -> LimitKey {
        LimitKey {
            key: key.into(),
            max,
            window: Duration::from_secs(window_secs),
            increment,
        }
    }

    fn at(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn allows_up_to_max_then_says_when_to_retry() {
        let c = MemoryCounters::new();
        let clock = Instant::now();
        let l = [limit("a", 3, 60, 1)];
        for i in 0..3 {
            assert!(matches!(
                c.reserve_at(&l, at(10.0 + f64::from(i)), clock),
                Outcome::Reserved(_)
            ));
        }
        match c.reserve_at(&l, at(13.0), clock) {
            Outcome::Exhausted { index, retry_after } => {
                assert_eq!(index, 0);
                // The first call (at 10 s) leaves the window at 70 s.
                assert_eq!(retry_after, Duration::from_secs(57));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_window_slides() {
        let c = MemoryCounters::new();
        let clock = Instant::now();
        let l = [limit("a", 2, 60, 1)];
        assert!(matches!(
            c.reserve_at(&l, at(30.0), clock),
            Outcome::Reserved(_)
        ));
        assert!(matches!(
            c.reserve_at(&l, at(59.0), clock),
            Outcome::Reserved(_)
        ));
        // A calendar minute would reset at 60 s; a sliding one still holds both calls.
        assert!(matches!(
            c.reserve_at(&l, at(61.0), clock),
            Outcome::Exhausted { .. }
        ));
        // At 90 s the call from 30 s has left the window.
        assert!(matches!(
            c.reserve_at(&l, at(90.5), clock),
            Outcome::Reserved(_)
        ));
        assert!(matches!(
            c.reserve_at(&l, at(91.0), clock),
            Outcome::Exhausted { .. }
        ));
    }

    #[test]
    fn all_or_nothing_across_limits() {
        let c = MemoryCounters::new();
        let clock = Instant::now();
        let both = [limit("calls", 10, 60, 1), limit("spend", 100, 60, 80)];
        assert!(matches!(
            c.reserve_at(&both, at(1.0), clock),
            Outcome::Reserved(_)
        ));
        // The spend limit is exhausted: nothing is taken from the call counter either.
        assert!(matches!(
            c.reserve_at(&both, at(2.0), clock),
            Outcome::Exhausted { index: 1, .. }
        ));
        // Had the refused reservation taken a call, this would be the third of two.
        let calls_only = [limit("calls", 2, 60, 1)];
        assert!(
            matches!(
                c.reserve_at(&calls_only, at(3.0), clock),
                Outcome::Reserved(_)
            ),
            "1 call counted, not 2"
        );
    }

    #[test]
    fn release_gives_back_the_reservation() {
        let c = MemoryCounters::new();
        let clock = Instant::now();
        let l = [limit("a", 1, 60, 1)];
        let Outcome::Reserved(r) = c.reserve_at(&l, at(1.0), clock) else {
            panic!()
        };
        assert!(matches!(
            c.reserve_at(&l, at(2.0), clock),
            Outcome::Exhausted { .. }
        ));
        c.release(r);
        assert!(matches!(
            c.reserve_at(&l, at(3.0), clock),
            Outcome::Reserved(_)
        ));
    }

    #[test]
    fn limits_sharing_a_counter_count_a_call_once_against_every_maximum() {
        let c = MemoryCounters::new();
        let clock = Instant::now();
        // An all-tools limit and a tool limit on the same counter: one call adds 1, not 2.
        let shared = [limit("k", 3, 60, 1), limit("k", 2, 60, 1)];
        assert!(matches!(
            c.reserve_at(&shared, at(1.0), clock),
            Outcome::Reserved(_)
        ));
        assert!(matches!(
            c.reserve_at(&shared, at(2.0), clock),
            Outcome::Reserved(_)
        ));
        // The stricter maximum decides.
        assert!(matches!(
            c.reserve_at(&shared, at(3.0), clock),
            Outcome::Exhausted { index: 1, .. }
        ));
    }

    #[test]
    fn increments_near_the_integer_limit_never_wrap_a_counter() {
        let c = MemoryCounters::new();
        let clock = Instant::now();
        assert!(matches!(
            c.reserve_at(&[limit("spend", 100, 60, 1)], at(1.0), clock),
            Outcome::Reserved(_)
        ));
        let huge = [limit("spend", 100, 60, u64::MAX)];
        assert!(matches!(
            c.reserve_at(&huge, at(2.0), clock),
            Outcome::Exhausted { .. }
        ));
        // The counter still holds the first call.
        assert!(matches!(
            c.reserve_at(&[limit("spend", 100, 60, 99)], at(3.0), clock),
            Outcome::Reserved(_)
        ));
        assert!(matches!(
            c.reserve_at(&[limit("spend", 100, 60, 1)], at(4.0), clock),
            Outcome::Exhausted { .. }
        ));
    }

    #[test]
    fn an_increment_above_max_never_passes() {
        let c = MemoryCounters::new();
        let clock = Instant::now();
        match c.reserve_at(&[limit("spend", 100, 3600, 500)], at(1.0), clock) {
            Outcome::Exhausted { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(3600))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sweep_forgets_idle_counters() {
        let c = MemoryCounters::new();
        let clock = Instant::now();
        let _ = c.reserve_at(&[limit("a", 5, 1, 1)], at(1.0), clock);
        assert_eq!(c.len(), 1);
        c.sweep(clock + Duration::from_secs(5));
        assert!(c.is_empty());
    }
}
