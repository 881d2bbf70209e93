//! The runner as a Live Runner: it registers with an orchestrator (go-livepeer's or
//! tessera's) by heartbeat, as the `livepeer-gateway` SDK's `LiveRunnerRegistration` does:
//! the first call carries the orchestrator secret and gets the runner's own secret back,
//! later calls carry that; the interval comes from the answer; a 401 or 404 (the
//! orchestrator restarted, or forgot the runner) means bootstrapping again; an
//! orchestrator that is away is retried at every interval while the runner keeps serving.
//! The runner reports `ready` only once its model has loaded, and unregisters when asked to
//! stop.

use std::future::Future;
use std::time::Duration;

use reqwest::StatusCode;
use tessera_api::live::{
    parse_go_duration_secs, Gpu, HeartbeatRequest, HeartbeatResponse, PriceInfo,
    HEARTBEAT_INTERVAL_SECS, MODE_SINGLE_SHOT, STATUS_READY,
};
use tessera_api::wire::Health;

use crate::state::Runner;

/// How long one heartbeat may take (the SDK's default timeout).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a runner registers as.
#[derive(Clone)]
pub struct Registration {
    /// The orchestrator's base URL (`http://host:port`).
    pub orchestrator_url: String,
    /// The orchestrator secret (go-livepeer's `-orchSecret`), sent as the whole
    /// `Authorization` value on the first heartbeat.
    pub secret: String,
    /// Where the orchestrator reaches this runner.
    pub runner_url: String,
    pub app: String,
    pub capacity: i64,
    pub price_info: Option<PriceInfo>,
    pub version: String,
    pub gpu: Option<Gpu>,
}

impl std::fmt::Debug for Registration {
    // Written out so that the secret never lands in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("orchestrator_url", &self.orchestrator_url)
            .field("runner_url", &self.runner_url)
            .field("app", &self.app)
            .field("capacity", &self.capacity)
            .field("price_info", &self.price_info)
            .finish_non_exhaustive()
    }
}

/// Where the heartbeats stand.
struct Session {
    orchestrator_url: String,
    runner_id: String,
    /// The runner's own secret, once bootstrapped.
    secret: Option<String>,
    interval: Duration,
}

impl Registration {
    /// Heartbeats until `stop` resolves, then unregisters. Never fails: an orchestrator
    /// that does not answer is logged and tried again.
    pub async fn run(self, runner: Runner, stop: impl Future<Output = ()>) {
        let client = reqwest::Client::new();
        let mut session = Session {
            orchestrator_url: self.orchestrator_url.trim_end_matches('/').to_owned(),
            runner_id: String::new(),
            secret: None,
            interval: Duration::from_secs(HEARTBEAT_INTERVAL_SECS),
        };
        tokio::pin!(stop);
        loop {
            self.beat(&client, &runner, &mut session).await;
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(session.interval) => {}
            }
        }
        self.unregister(&client, &session).await;
    }

    fn request(&self, runner: &Runner, runner_id: &str) -> HeartbeatRequest {
        HeartbeatRequest {
            runner_id: runner_id.to_owned(),
            runner_url: self.runner_url.clone(),
            app: self.app.clone(),
            capacity: self.capacity,
            mode: MODE_SINGLE_SHOT.into(),
            price_info: self.price_info.clone(),
            version: self.version.clone(),
            // Hidden from discovery until the model can take a request.
            status: match runner.health() {
                Health::Ok => STATUS_READY.into(),
                Health::Loading | Health::Idle => "loading".into(),
                Health::Error => "error".into(),
            },
            gpu: self.gpu.clone(),
            ..HeartbeatRequest::default()
        }
    }

    /// One heartbeat; bootstraps again right away when the orchestrator has forgotten us.
    async fn beat(&self, client: &reqwest::Client, runner: &Runner, session: &mut Session) {
        for _ in 0..2 {
            let auth = session
                .secret
                .clone()
                .unwrap_or_else(|| self.secret.clone());
            let sent = client
                .post(format!("{}/runners/heartbeat", session.orchestrator_url))
                .header(reqwest::header::AUTHORIZATION, auth)
                .json(&self.request(runner, &session.runner_id))
                .timeout(CALL_TIMEOUT)
                .send()
                .await;
            let answer = match sent {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(orchestrator = %session.orchestrator_url, error = %e, "heartbeat failed");
                    return;
                }
            };
            let status = answer.status();
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND)
                && session.secret.is_some()
            {
                tracing::info!(%status, "the orchestrator forgot this runner; registering again");
                session.secret = None;
                continue;
            }
            if !status.is_success() {
                let body = answer.text().await.unwrap_or_default();
                tracing::warn!(%status, body = body.trim(), "heartbeat refused");
                return;
            }
            match answer.json::<HeartbeatResponse>().await {
                Ok(r) => {
                    if session.secret.is_none() {
                        tracing::info!(runner_id = %r.runner_id, "registered with the orchestrator");
                    }
                    session.runner_id = r.runner_id;
                    if r.heartbeat_secret.is_some() {
                        session.secret = r.heartbeat_secret;
                    }
                    if !r.orchestrator.is_empty() {
                        session.orchestrator_url = r.orchestrator.trim_end_matches('/').to_owned();
                    }
                    if let Some(secs) = parse_go_duration_secs(&r.heartbeat_interval) {
                        session.interval = Duration::from_secs_f64(secs.clamp(0.1, 3600.0));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable heartbeat answer"),
            }
            return;
        }
    }

    async fn unregister(&self, client: &reqwest::Client, session: &Session) {
        let Some(secret) = &session.secret else {
            return;
        };
        let url = format!(
            "{}/runners/{}/unregister",
            session.orchestrator_url, session.runner_id
        );
        match client
            .post(url)
            .header(reqwest::header::AUTHORIZATION, secret)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
        {
            Ok(a) if a.status().is_success() => {
                tracing::info!("unregistered from the orchestrator")
            }
            Ok(a) => tracing::warn!(status = %a.status(), "unregister refused"),
            Err(e) => tracing::warn!(error = %e, "unregister failed"),
        }
    }
}
