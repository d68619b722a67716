//! Backoff between retries of a transient failure: exponential, with jitter, honouring a
//! `Retry-After` the tool showed, and capped so a run never waits minutes on one step.

use std::time::Duration;

/// The first retry waits about this long.
const BASE: Duration = Duration::from_secs(1);
/// No single wait is longer than this, whatever `Retry-After` says.
const CAP: Duration = Duration::from_secs(30);

/// The wait before retry number `retry` (0 for the first), with `jitter` in `[0, 1)`.
pub fn backoff(retry: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let exponential = BASE.saturating_mul(2_u32.saturating_pow(retry.min(16)));
    // Jitter spreads the retries of parallel images: 75% to 125% of the nominal wait.
    let jittered = exponential.mul_f64(0.75 + jitter.clamp(0.0, 1.0) * 0.5);
    jittered.max(retry_after.unwrap_or_default()).min(CAP)
}

/// A jitter value in `[0, 1)` without a random-number dependency: good enough to
/// de-synchronise retries, not for anything secret.
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (hasher.finish() >> 11) as f64 / (1_u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_exponentially_with_bounded_jitter_and_a_cap() {
        assert_eq!(backoff(0, None, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(1, None, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(2, None, 0.0), Duration::from_millis(3_000));
        assert_eq!(backoff(2, None, 1.0), Duration::from_millis(5_000));
        assert_eq!(backoff(20, None, 0.5), CAP);
    }

    #[test]
    fn retry_after_is_a_floor_under_the_cap() {
        assert_eq!(
            backoff(0, Some(Duration::from_secs(7)), 0.5),
            Duration::from_secs(7)
        );
        assert_eq!(backoff(0, Some(Duration::from_secs(3600)), 0.5), CAP);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let value = jitter();
            assert!((0.0..1.0).contains(&value));
        }
    }
}
