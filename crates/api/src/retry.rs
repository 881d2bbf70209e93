//! How long a client refused with 503 is told to wait (`Retry-After`): the work ahead of it
//! at the pace recent jobs went. One rule for the runner (its queue) and the gateway (its
//! orchestrators' slots).

/// The wait advised before any job has finished (so nothing is known of how long jobs take
/// there): about one short edit.
pub const FIRST_RETRY_AFTER_SECS: u64 = 5;
/// The longest wait a refusal advises; past it a client is better off elsewhere.
pub const MAX_RETRY_AFTER_SECS: u64 = 3600;

/// Seconds to wait for `ahead` jobs (the queued ones and the one running) of
/// `recent_job_secs` each, rounded up; never 0, which would mean "now".
pub fn retry_after_secs(ahead: usize, recent_job_secs: Option<f64>) -> u64 {
    match recent_job_secs {
        Some(secs) if secs.is_finite() && secs >= 0.0 => {
            ((ahead as f64 * secs).ceil() as u64).clamp(1, MAX_RETRY_AFTER_SECS)
        }
        _ => FIRST_RETRY_AFTER_SECS,
    }
}

#[cfg(test)]
mod tests {
    use super::retry_after_secs;

    #[test]
    fn retry_after_follows_the_queue_and_recent_jobs() {
        assert_eq!(retry_after_secs(3, None), 5, "nothing known yet");
        assert_eq!(
            retry_after_secs(3, Some(2.5)),
            8,
            "3 jobs ahead of 2.5 s, rounded up"
        );
        assert_eq!(
            retry_after_secs(1, Some(0.01)),
            1,
            "never 0: that would mean now"
        );
        assert_eq!(retry_after_secs(10_000, Some(60.0)), 3600);
        assert_eq!(retry_after_secs(2, Some(f64::NAN)), 5);
    }
}
