//! The runners a gateway can reach: each configured orchestrator's `GET /discovery`,
//! refreshed periodically, and the latency each runner has shown per model.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tessera_api::live::{model_of_app, DiscoveryEntry, DiscoveryRunner, PriceInfo};
use tessera_api::price::{Currency, PixelPrice};

use crate::select::{Candidate, Offer};

/// How long one `/discovery` call may take before the orchestrator counts as down.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Weight of the newest job in a latency score (an exponential moving average: recent jobs
/// count most, one odd job does not decide).
const SCORE_WEIGHT: f64 = 0.5;

pub struct Registry {
    orchestrators: Vec<Known>,
    /// Seconds per pixel per step, by (runner URL, model id).
    scores: Mutex<HashMap<(String, String), f64>>,
    /// When a refresh first found each model served (Unix seconds), for `GET /v1/models`'
    /// `created`: discovery tells no model's age, and this one is at least true and stable.
    first_seen: Mutex<HashMap<String, u64>>,
}

struct Known {
    url: String,
    /// Its ready runners as last listed; empty until the first successful refresh, and
    /// after a failed one.
    runners: RwLock<Vec<DiscoveryRunner>>,
}

/// What tessera's runners and orchestrators say of themselves in discovery's `metadata`.
#[derive(Deserialize)]
struct Metadata {
    /// A cold model loads on its first call; registered runners are warm (they report
    /// `ready` only once loaded).
    #[serde(default = "yes")]
    warm: bool,
}

fn yes() -> bool {
    true
}

impl Registry {
    pub fn new(urls: &[String]) -> Self {
        Self {
            orchestrators: urls
                .iter()
                .map(|u| Known {
                    url: u.trim_end_matches('/').to_owned(),
                    runners: RwLock::new(Vec::new()),
                })
                .collect(),
            scores: Mutex::new(HashMap::new()),
            first_seen: Mutex::new(HashMap::new()),
        }
    }

    /// Asks every orchestrator for its runners, all at once; one that does not answer is
    /// left out of selection until it does.
    pub async fn refresh(&self, client: &reqwest::Client) {
        let asks = self.orchestrators.iter().map(|o| async move {
            let got = async {
                client
                    .get(format!("{}/discovery", o.url))
                    .timeout(DISCOVERY_TIMEOUT)
                    .send()
                    .await?
                    .error_for_status()?
                    .json::<Vec<DiscoveryEntry>>()
                    .await
            }
            .await;
            let runners = match got {
                Ok(entries) => entries.into_iter().flat_map(|e| e.runners).collect(),
                Err(e) => {
                    tracing::warn!(orchestrator = %o.url, error = %e, "no discovery");
                    Vec::new()
                }
            };
            *o.runners.write().unwrap_or_else(|e| e.into_inner()) = runners;
        });
        futures::future::join_all(asks).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let served = self.models();
        let mut first_seen = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
        for model in served.into_keys() {
            first_seen.entry(model).or_insert(now);
        }
    }

    /// The model ids some ready runner serves at a price an image job can be charged in (so
    /// each is one [`Registry::offered`] says yes to), sorted, each with when it was first
    /// seen served (Unix seconds; 0 until a refresh has recorded it).
    pub fn models(&self) -> BTreeMap<String, u64> {
        let first_seen = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut models = BTreeMap::new();
        for o in &self.orchestrators {
            let runners = o.runners.read().unwrap_or_else(|e| e.into_inner());
            for r in runners.iter() {
                let Some(model) = model_of_app(&r.app) else {
                    continue;
                };
                if job_price(r.price_info.as_ref(), 1).is_some() {
                    let seen = first_seen.get(model).copied().unwrap_or(0);
                    models.insert(model.to_owned(), seen);
                }
            }
        }
        models
    }

    /// Every runner serving `model_id`, priced for a job of `pixels` input pixels, with
    /// its score. Runners priced per `hour` or `720p` (video units) cannot price an image
    /// and are left out.
    pub fn candidates(&self, model_id: &str, pixels: u64) -> Vec<Candidate> {
        let scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = Vec::new();
        for o in &self.orchestrators {
            let runners = o.runners.read().unwrap_or_else(|e| e.into_inner());
            for r in runners
                .iter()
                .filter(|r| model_of_app(&r.app) == Some(model_id))
            {
                let Some(price) = job_price(r.price_info.as_ref(), pixels) else {
                    tracing::debug!(runner = %r.url, "a price unit images cannot be priced in");
                    continue;
                };
                let warm = serde_json::from_str::<Metadata>(&r.metadata).map_or(true, |m| m.warm);
                found.push(Candidate {
                    latency_score: scores.get(&(r.url.clone(), model_id.to_owned())).copied(),
                    orchestrator: o.url.clone(),
                    url: r.url.clone(),
                    offer: Offer {
                        warm,
                        price,
                        capacity: r.capacity,
                        free: r.capacity_available,
                    },
                });
            }
        }
        found
    }

    /// Whether any ready runner serves `model_id`, whatever its price.
    pub fn offered(&self, model_id: &str) -> bool {
        !self.candidates(model_id, 1).is_empty()
    }

    /// Folds a completed job's seconds per pixel per step into the runner's score.
    pub fn record_latency(&self, url: &str, model_id: &str, secs_per_pixel_step: f64) {
        if !secs_per_pixel_step.is_finite() || secs_per_pixel_step < 0.0 {
            return;
        }
        let mut scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        scores
            .entry((url.to_owned(), model_id.to_owned()))
            .and_modify(|s| *s = SCORE_WEIGHT * secs_per_pixel_step + (1.0 - SCORE_WEIGHT) * *s)
            .or_insert(secs_per_pixel_step);
    }
}

/// A runner's price for one job, per input pixel: tessera's `pixel` unit as it is, a
/// `fixed` price spread over the job's pixels; no price (go-livepeer offchain lists none)
/// is free. `hour` and `720p` are video units: `None`.
fn job_price(price: Option<&PriceInfo>, pixels: u64) -> Option<PixelPrice> {
    let Some(p) = price else {
        return Some(PixelPrice {
            price_per_pixel: 0.0,
            currency: Currency::Usd,
        });
    };
    let currency = match p.currency.as_str() {
        "wei" => Currency::Wei,
        _ => Currency::Usd,
    };
    let per_pixel = match p.unit.as_str() {
        "pixel" => p.price,
        "fixed" => p.price / pixels.max(1) as f64,
        _ => return None,
    };
    Some(PixelPrice {
        price_per_pixel: per_pixel,
        currency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(price: f64, unit: &str) -> PriceInfo {
        PriceInfo {
            price,
            currency: "usd".into(),
            unit: unit.into(),
        }
    }

    #[test]
    fn prices_per_pixel_fixed_and_none() {
        let p = job_price(Some(&info(2e-6, "pixel")), 1000).unwrap();
        assert_eq!((p.price_per_pixel, p.currency), (2e-6, Currency::Usd));
        let p = job_price(Some(&info(0.5, "fixed")), 1000).unwrap();
        assert_eq!(p.fee(1000), 0.5);
        assert_eq!(job_price(None, 10).unwrap().price_per_pixel, 0.0);
        assert!(job_price(Some(&info(1.0, "hour")), 10).is_none());
    }
}
