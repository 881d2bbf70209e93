//! Choosing runners for a job: never above the maximum price; warm models first, then
//! faster, then cheaper.

use tessera_api::price::PixelPrice;

/// A runner serving the job's model, as an orchestrator's discovery lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The runner's URL in discovery: the orchestrator's `/apps/{runner_id}/app`.
    pub url: String,
    /// The orchestrator listing it, as configured (what the ledger records).
    pub orchestrator: String,
    pub offer: Offer,
    /// Seconds per input pixel per step on this runner and model, learned from completed
    /// jobs; `None` until one completes.
    pub latency_score: Option<f64>,
}

/// What a runner offers a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Loaded now; cold models load on their first call. Warm ones come first.
    pub warm: bool,
    /// Per input pixel of this job (a `fixed` price spread over its pixels).
    pub price: PixelPrice,
    /// Calls taken at once, and how many are free as discovery last said.
    pub capacity: i64,
    pub free: i64,
}

/// Latency scores are compared in steps of this factor (on a log scale): smaller
/// differences are mostly noise, and within a step price decides.
const SCORE_STEP: f64 = 1.25;

/// The candidates to try, in order: those within `max` (any price when `None`), warm
/// before cold, then by latency score, then by price. A runner with no score yet comes
/// first among its peers: one job is how it gets measured.
pub fn rank(candidates: Vec<Candidate>, max: Option<&PixelPrice>) -> Vec<Candidate> {
    let mut usable: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| max.is_none_or(|m| c.offer.price.within(m)))
        .collect();
    usable.sort_by(|a, b| {
        (!a.offer.warm)
            .cmp(&!b.offer.warm)
            .then(score_rank(a.latency_score).cmp(&score_rank(b.latency_score)))
            .then(
                a.offer
                    .price
                    .price_per_pixel
                    .total_cmp(&b.offer.price.price_per_pixel),
            )
    });
    usable
}

/// Scores in steps of [`SCORE_STEP`] (a log scale), unmeasured first.
fn score_rank(score: Option<f64>) -> i64 {
    match score {
        None => i64::MIN,
        Some(s) if s > 0.0 => (s.ln() / SCORE_STEP.ln()).floor() as i64,
        Some(_) => i64::MIN + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::price::Currency;

    fn candidate(url: &str, warm: bool, price: f64, score: Option<f64>) -> Candidate {
        Candidate {
            url: url.into(),
            orchestrator: url.into(),
            offer: Offer {
                warm,
                price: PixelPrice::from_unit(price, 1.0, Currency::Usd).unwrap(),
                capacity: 1,
                free: 1,
            },
            latency_score: score,
        }
    }

    fn order(candidates: Vec<Candidate>, max: Option<f64>) -> Vec<String> {
        let max = max.map(|m| PixelPrice::from_unit(m, 1.0, Currency::Usd).unwrap());
        rank(candidates, max.as_ref())
            .into_iter()
            .map(|c| c.url)
            .collect()
    }

    #[test]
    fn warm_before_cold_then_faster_then_cheaper() {
        let ranked = order(
            vec![
                candidate("cold-cheap", false, 1.0, Some(1e-6)),
                candidate("warm-slow-cheap", true, 1.0, Some(8e-6)),
                candidate("warm-fast-dear", true, 5.0, Some(1e-6)),
                candidate("warm-fast-cheap", true, 2.0, Some(1.1e-6)),
            ],
            None,
        );
        assert_eq!(
            ranked,
            [
                "warm-fast-cheap",
                "warm-fast-dear",
                "warm-slow-cheap",
                "cold-cheap"
            ]
        );
    }

    #[test]
    fn unmeasured_orchestrators_get_a_job_to_be_measured() {
        let ranked = order(
            vec![
                candidate("measured", true, 1.0, Some(1e-6)),
                candidate("new", true, 2.0, None),
            ],
            None,
        );
        assert_eq!(ranked, ["new", "measured"]);
    }

    #[test]
    fn nothing_above_the_maximum_or_in_another_currency() {
        let mut wei = candidate("wei", true, 0.5, None);
        wei.offer.price.currency = Currency::Wei;
        let ranked = order(
            vec![
                candidate("dear", true, 3.0, None),
                candidate("at-max", true, 2.0, None),
                wei,
            ],
            Some(2.0),
        );
        assert_eq!(ranked, ["at-max"]);
        assert!(order(vec![candidate("dear", true, 3.0, None)], Some(2.0)).is_empty());
    }
}
