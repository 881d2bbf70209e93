//! The orchestrators a gateway knows: their last `/capabilities`, refreshed periodically,
//! and the latency each has shown per model.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use tessera_api::capabilities::Capabilities;

use crate::select::Candidate;

/// How long one `/capabilities` call may take before the orchestrator counts as down.
const CAPABILITIES_TIMEOUT: Duration = Duration::from_secs(5);

/// Weight of the newest job in a latency score (an exponential moving average: recent jobs
/// count most, one odd job does not decide).
const SCORE_WEIGHT: f64 = 0.5;

pub struct Registry {
    orchestrators: Vec<Known>,
    /// Seconds per pixel per step, by (orchestrator URL, model id).
    scores: Mutex<HashMap<(String, String), f64>>,
}

struct Known {
    url: String,
    /// `None` until the first successful refresh, and after a failed one.
    capabilities: RwLock<Option<Capabilities>>,
}

impl Registry {
    pub fn new(urls: &[String]) -> Self {
        Self {
            orchestrators: urls
                .iter()
                .map(|u| Known {
                    url: u.trim_end_matches('/').to_owned(),
                    capabilities: RwLock::new(None),
                })
                .collect(),
            scores: Mutex::new(HashMap::new()),
        }
    }

    /// Asks every orchestrator for its capabilities, all at once; one that does not answer
    /// is left out of selection until it does.
    pub async fn refresh(&self, client: &reqwest::Client) {
        let asks = self.orchestrators.iter().map(|o| async move {
            let got = async {
                client
                    .get(format!("{}/capabilities", o.url))
                    .timeout(CAPABILITIES_TIMEOUT)
                    .send()
                    .await?
                    .error_for_status()?
                    .json::<Capabilities>()
                    .await
            }
            .await;
            let got = match got {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(orchestrator = %o.url, error = %e, "no capabilities");
                    None
                }
            };
            *o.capabilities.write().unwrap_or_else(|e| e.into_inner()) = got;
        });
        futures::future::join_all(asks).await;
    }

    /// Every orchestrator that last said it serves `model_id`, with its score.
    pub fn candidates(&self, model_id: &str) -> Vec<Candidate> {
        let scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        self.orchestrators
            .iter()
            .filter_map(|o| {
                let caps = o.capabilities.read().unwrap_or_else(|e| e.into_inner());
                let offer = caps.as_ref()?.model(model_id)?.clone();
                Some(Candidate {
                    latency_score: scores.get(&(o.url.clone(), model_id.to_owned())).copied(),
                    url: o.url.clone(),
                    offer,
                })
            })
            .collect()
    }

    /// Whether any orchestrator offers `model_id` at all, whatever its price.
    pub fn offered(&self, model_id: &str) -> bool {
        !self.candidates(model_id).is_empty()
    }

    /// Folds a completed job's seconds per pixel per step into the orchestrator's score.
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
