//! When to try again: the retry schedule, jitter, and `Retry-After`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// Waits between attempts, in seconds, each counted from the attempt that failed: 5 s,
/// 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (eight attempts over about 27.6 h).
pub const DEFAULT_SCHEDULE: &[f64] = &[5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0];

/// The longest wait a `Retry-After` may ask for; a longer one is treated as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The longest schedule accepted (globally or per webhook).
pub const MAX_STEPS: usize = 50;
const MAX_DELAY_SECS: f64 = 7.0 * 86_400.0;

/// Delays between attempts: entry `i` is the wait after attempt `i + 1` fails.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule(Vec<f64>);

impl Default for RetrySchedule {
    fn default() -> Self {
        Self(DEFAULT_SCHEDULE.to_vec())
    }
}

impl RetrySchedule {
    /// From seconds; each between 0 and 7 days, at most 50 of them (an empty schedule means
    /// a single attempt).
    pub fn new(delays: Vec<f64>) -> Result<Self, String> {
        if delays.len() > MAX_STEPS {
            return Err(format!("holds at most {MAX_STEPS} delays"));
        }
        if let Some(bad) = delays
            .iter()
            .find(|d| !d.is_finite() || **d < 0.0 || **d > MAX_DELAY_SECS)
        {
            return Err(format!(
                "delays are seconds from 0 to {MAX_DELAY_SECS} (got {bad})"
            ));
        }
        Ok(Self(delays))
    }

    /// Parse `1,2,4`: seconds to wait after the first, second and third attempts fail.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Self::new(Vec::new());
        }
        let delays = s
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("`{}` is not a number of seconds", p.trim()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(delays)
    }

    pub fn delays(&self) -> &[f64] {
        &self.0
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.0.len() as u32 + 1
    }

    /// The wait after attempt `attempt` (1-based) failed, with ±10 % jitter so that a burst of
    /// failures does not come back as a burst; `None` once the schedule is exhausted.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        let base = *self.0.get(attempt.checked_sub(1)? as usize)?;
        let jitter = rand::thread_rng().gen_range(0.9..=1.1);
        Some(Duration::from_secs_f64(base * jitter))
    }
}

/// Parse a `Retry-After` value: delay-seconds or an HTTP date; capped at `MAX_RETRY_AFTER`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = DateTime::parse_from_rfc2822(value)
            .ok()?
            .with_timezone(&Utc);
        (at - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_is_eight_attempts() {
        let s = RetrySchedule::default();
        assert_eq!(s.max_attempts(), 8);
        let d = s.delay_after(1).unwrap().as_secs_f64();
        assert!((4.5..=5.5).contains(&d), "{d}");
        assert!(s.delay_after(8).is_none());
        assert!(s.delay_after(0).is_none());
    }

    #[test]
    fn schedules_parse_from_comma_separated_seconds() {
        let s = RetrySchedule::parse("1, 2,4").unwrap();
        assert_eq!(s.delays(), &[1.0, 2.0, 4.0]);
        assert_eq!(s.max_attempts(), 4);
        assert_eq!(RetrySchedule::parse("").unwrap().max_attempts(), 1);
        assert!(RetrySchedule::parse("1,x").is_err());
        assert!(RetrySchedule::parse("-1").is_err());
        assert!(RetrySchedule::parse(&vec!["1"; 51].join(",")).is_err());
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let s = RetrySchedule::parse("100").unwrap();
        for _ in 0..200 {
            let d = s.delay_after(1).unwrap().as_secs_f64();
            assert!((90.0..=110.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates_and_is_capped() {
        let now = DateTime::parse_from_rfc3339("2026-11-27T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Fri, 27 Nov 2026 09:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Fri, 27 Nov 2026 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
