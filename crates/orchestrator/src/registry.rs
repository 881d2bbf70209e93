//! The Live Runner registry, as go-livepeer keeps it (`ai/runner/live_runner.go`): runners
//! bootstrap with the orchestrator secret and then heartbeat with their own secret; one
//! that misses its TTL leaves discovery at once and is purged at the next sweep; a call
//! reserves one of a runner's slots for as long as it runs. The orchestrator's own models
//! (its `aiModels.json`) are entries here too, which never heartbeat and never expire.
//!
//! Errors carry go-livepeer's statuses and words; the routes answer them as go-livepeer's
//! `http.Error` does (plain text and a newline).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tessera_api::auth::secret_matches;
use tessera_api::live::{
    HeartbeatRequest, HeartbeatResponse, PriceInfo, HEARTBEAT_INTERVAL_SECS, HEARTBEAT_TTL_SECS,
    MODE_PERSISTENT, MODE_SINGLE_SHOT, STATUS_READY,
};

/// A refusal in go-livepeer's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryError {
    pub status: StatusCode,
    pub msg: String,
}

fn refuse(status: StatusCode, msg: impl Into<String>) -> RegistryError {
    RegistryError {
        status,
        msg: msg.into(),
    }
}

fn bad(msg: impl Into<String>) -> RegistryError {
    refuse(StatusCode::BAD_REQUEST, msg)
}

/// Who answers a runner's calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    /// A runner that registered by heartbeat: calls go to its `runner_url`.
    Registered { runner_url: String },
    /// One of the orchestrator's own models, by its index in the model list.
    Local(usize),
}

struct Entry {
    request: HeartbeatRequest,
    upstream: Upstream,
    /// The heartbeat secret; the orchestrator's own models have none.
    secret: Option<String>,
    last_heartbeat: Instant,
    /// Session ids of the calls running now, oldest first.
    sessions: Vec<String>,
}

impl Entry {
    fn expired(&self, ttl: Duration) -> bool {
        self.secret.is_some() && self.last_heartbeat.elapsed() > ttl
    }

    fn ready(&self, ttl: Duration) -> bool {
        !self.expired(ttl)
            && (self.request.status.is_empty() || self.request.status == STATUS_READY)
    }
}

/// The registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    bootstrap_secret: Option<String>,
    /// The base URL runners are told (`orchestrator` in the heartbeat answer).
    orchestrator_url: String,
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

/// A slot held for one call; dropping it releases the slot.
pub struct Reservation {
    registry: Registry,
    pub runner_id: String,
    pub session_id: String,
    /// What go-livepeer sends as `Livepeer-Session-Token`: the runner's credential for
    /// calling back about this session.
    pub session_token: String,
    pub upstream: Upstream,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(entry) = self.registry.lock().get_mut(&self.runner_id) {
            entry.sessions.retain(|s| *s != self.session_id);
        }
    }
}

impl Registry {
    /// A registry taking dynamic registrations when `bootstrap_secret` is set (else only
    /// the orchestrator's own models are in it).
    pub fn new(bootstrap_secret: Option<String>, orchestrator_url: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                bootstrap_secret: bootstrap_secret.filter(|s| !s.is_empty()),
                orchestrator_url,
                ttl: Duration::from_secs(HEARTBEAT_TTL_SECS),
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    #[cfg(test)]
    fn with_ttl(mut self, ttl: Duration) -> Self {
        Arc::get_mut(&mut self.inner).expect("unshared").ttl = ttl;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Every update leaves the map consistent, whatever a panicking holder did.
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one of the orchestrator's own models; returns its runner id.
    pub fn add_local(&self, index: usize, request: HeartbeatRequest) -> String {
        let mut entries = self.lock();
        let id = fresh_id(&entries);
        entries.insert(
            id.clone(),
            Entry {
                request: HeartbeatRequest {
                    runner_id: id.clone(),
                    ..request
                },
                upstream: Upstream::Local(index),
                secret: None,
                last_heartbeat: Instant::now(),
                sessions: Vec::new(),
            },
        );
        id
    }

    /// Adds a runner from the static config (see `static_runners`), checked as a heartbeat
    /// body is; it is hidden until [`Registry::set_status`] says `ready`. Returns its id.
    pub fn add_static(&self, request: HeartbeatRequest) -> Result<String, RegistryError> {
        let request = normalize(request)?;
        let mut entries = self.lock();
        let id = fresh_id(&entries);
        entries.insert(
            id.clone(),
            Entry {
                upstream: Upstream::Registered {
                    runner_url: request.runner_url.trim_end_matches('/').to_owned(),
                },
                request: HeartbeatRequest {
                    runner_id: id.clone(),
                    ..request
                },
                secret: None,
                last_heartbeat: Instant::now(),
                sessions: Vec::new(),
            },
        );
        Ok(id)
    }

    /// Sets a static runner's status (`ready` lists it) as its health checks find it.
    pub fn set_status(&self, runner_id: &str, status: &str) {
        if let Some(e) = self.lock().get_mut(runner_id) {
            if e.request.status != status {
                tracing::info!(runner_id, status, "static live runner health changed");
                e.request.status = status.to_owned();
            }
        }
    }

    /// Updates what discovery says of a local model (its warmth, in `metadata`).
    pub fn set_local_metadata(&self, runner_id: &str, metadata: String) {
        if let Some(e) = self.lock().get_mut(runner_id) {
            e.request.metadata = metadata;
        }
    }

    /// `POST /runners/heartbeat`, in go-livepeer's order: the body first, then who asks.
    pub fn heartbeat(
        &self,
        request: HeartbeatRequest,
        authorization: &str,
    ) -> Result<HeartbeatResponse, RegistryError> {
        let mut request = normalize(request)?;
        let mut entries = self.lock();
        if request.runner_id.is_empty() {
            request.runner_id = fresh_id(&entries);
        }
        let id = request.runner_id.clone();
        let answer = |entry: &Entry, secret: Option<String>| HeartbeatResponse {
            runner_id: id.clone(),
            orchestrator: self.inner.orchestrator_url.clone(),
            heartbeat_interval: format!("{HEARTBEAT_INTERVAL_SECS}s"),
            heartbeat_ttl: format!("{}s", self.inner.ttl.as_secs()),
            heartbeat_secret: secret,
            session_ids: entry.sessions.clone(),
        };
        match entries.get_mut(&id) {
            None => {
                let Some(bootstrap) = &self.inner.bootstrap_secret else {
                    return Err(refuse(
                        StatusCode::NOT_FOUND,
                        "dynamic live runner registration is disabled",
                    ));
                };
                if !secret_matches(authorization, bootstrap) {
                    return Err(refuse(
                        StatusCode::UNAUTHORIZED,
                        "invalid registration authorization",
                    ));
                }
                let secret = random_token(32);
                let entry = Entry {
                    upstream: Upstream::Registered {
                        runner_url: request.runner_url.trim_end_matches('/').to_owned(),
                    },
                    request,
                    secret: Some(secret.clone()),
                    last_heartbeat: Instant::now(),
                    sessions: Vec::new(),
                };
                let response = answer(&entry, Some(secret));
                entries.insert(id.clone(), entry);
                tracing::info!(runner_id = %id, "live runner registered");
                Ok(response)
            }
            Some(entry) => {
                if entry.expired(self.inner.ttl) {
                    return Err(refuse(StatusCode::NOT_FOUND, "runner not found"));
                }
                let Some(secret) = &entry.secret else {
                    return Err(bad("static runner cannot heartbeat"));
                };
                if !secret_matches(authorization, secret) {
                    return Err(refuse(
                        StatusCode::UNAUTHORIZED,
                        "invalid heartbeat authorization",
                    ));
                }
                entry.upstream = Upstream::Registered {
                    runner_url: request.runner_url.trim_end_matches('/').to_owned(),
                };
                entry.request = request;
                entry.last_heartbeat = Instant::now();
                Ok(answer(entry, None))
            }
        }
    }

    /// `POST /runners/{id}/unregister`.
    pub fn unregister(&self, runner_id: &str, authorization: &str) -> Result<(), RegistryError> {
        let mut entries = self.lock();
        let Some(entry) = entries
            .get(runner_id)
            .filter(|e| !e.expired(self.inner.ttl))
        else {
            return Err(refuse(StatusCode::NOT_FOUND, "runner not found"));
        };
        let Some(secret) = &entry.secret else {
            return Err(bad(
                "static runner cannot unregister with heartbeat credentials",
            ));
        };
        if !secret_matches(authorization, secret) {
            return Err(refuse(StatusCode::UNAUTHORIZED, "invalid authorization"));
        }
        entries.remove(runner_id);
        tracing::info!(runner_id, "live runner unregistered");
        Ok(())
    }

    /// Forgets runners past their TTL (they already left discovery when it passed).
    pub fn purge_expired(&self) -> usize {
        let ttl = self.inner.ttl;
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|id, e| {
            let keep = !e.expired(ttl);
            if !keep {
                tracing::info!(runner_id = %id, "live runner expired");
            }
            keep
        });
        before - entries.len()
    }

    /// The ready runners, for `GET /discovery`: `(runner id, what it registered, calls
    /// running now)`, by id (go-livepeer's order is its map's: none to rely on).
    pub fn ready(&self) -> Vec<(String, HeartbeatRequest, usize)> {
        let ttl = self.inner.ttl;
        let mut ready: Vec<_> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.ready(ttl))
            .map(|(id, e)| (id.clone(), e.request.clone(), e.sessions.len()))
            .collect();
        ready.sort_by(|a, b| a.0.cmp(&b.0));
        ready
    }

    /// How many calls runner `runner_id` is running now.
    pub fn calls_running(&self, runner_id: &str) -> usize {
        self.lock().get(runner_id).map_or(0, |e| e.sessions.len())
    }

    /// Takes a slot of a ready single-shot runner for one call.
    pub fn reserve(&self, runner_id: &str) -> Result<Reservation, RegistryError> {
        let ttl = self.inner.ttl;
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(runner_id).filter(|e| e.ready(ttl)) else {
            return Err(refuse(StatusCode::NOT_FOUND, "runner not found"));
        };
        if entry.request.mode != MODE_SINGLE_SHOT {
            return Err(bad("runner is not single-shot"));
        }
        if entry.sessions.len() as i64 >= entry.request.capacity {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "no capacity available for runner",
            ));
        }
        let session_id = format!("session_{}", random_token(5));
        entry.sessions.push(session_id.clone());
        Ok(Reservation {
            registry: self.clone(),
            runner_id: runner_id.to_owned(),
            session_id,
            session_token: random_token(32),
            upstream: entry.upstream.clone(),
        })
    }
}

/// go-livepeer's `normalizeHeartbeat`: required fields, defaults, and the checks it makes.
fn normalize(mut r: HeartbeatRequest) -> Result<HeartbeatRequest, RegistryError> {
    r.runner_id = r.runner_id.trim().to_owned();
    if r.runner_id.contains(['/', '?', '#']) || r.runner_id.chars().any(char::is_control) {
        // go-livepeer routes by the id in a path segment without checking it; one that
        // cannot be a path segment would register a runner nobody can call.
        return Err(bad("runner_id must be usable as a URL path segment"));
    }
    let url_ok = reqwest::Url::parse(&r.runner_url).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if !url_ok {
        return Err(bad("invalid runner_url"));
    }
    if r.app.is_empty() || r.app.trim() != r.app {
        return Err(bad("app must be trimmed"));
    }
    if r.capacity < 0 {
        return Err(bad("capacity must be >= 0"));
    }
    if r.capacity == 0 {
        r.capacity = 1;
    }
    r.mode = match r.mode.as_str() {
        "" | MODE_PERSISTENT => MODE_PERSISTENT.into(),
        "single_shot" | MODE_SINGLE_SHOT => MODE_SINGLE_SHOT.into(),
        _ => return Err(bad(r#"mode must be "persistent" or "single-shot""#)),
    };
    if r.metadata.len() > 1024 {
        return Err(bad("metadata must be at most 1024 bytes"));
    }
    if r.metadata.contains('\u{FFFD}') {
        return Err(bad(
            "metadata must not contain Unicode replacement character U+FFFD",
        ));
    }
    if r.status.trim().to_lowercase() != r.status {
        return Err(bad("status must be lowercase and trimmed"));
    }
    if let Some(p) = &mut r.price_info {
        normalize_price(p)?;
    }
    Ok(r)
}

/// Offchain, go-livepeer does not check prices; tessera's gateways read them, so they are
/// checked here: a number >= 0, `usd` (or `wei`), and one of go-livepeer's units or
/// tessera's `pixel`.
fn normalize_price(p: &mut PriceInfo) -> Result<(), RegistryError> {
    if !p.price.is_finite() || p.price < 0.0 {
        return Err(bad("price_info.price must be a positive decimal"));
    }
    p.currency = p.currency.trim().to_lowercase();
    if p.currency.is_empty() {
        p.currency = "usd".into();
    }
    if !matches!(p.currency.as_str(), "usd" | "wei") {
        return Err(bad("price_info.currency must be usd"));
    }
    p.unit = p.unit.trim().to_lowercase();
    if p.unit.is_empty() {
        p.unit = "hour".into();
    }
    if !matches!(p.unit.as_str(), "hour" | "720p" | "fixed" | "pixel") {
        return Err(bad("price_info.unit must be hour, 720p, fixed, or pixel"));
    }
    Ok(())
}

/// `runner_` and eight random characters, as go-livepeer names runners; never one in use.
fn fresh_id(entries: &HashMap<String, Entry>) -> String {
    loop {
        let id = format!("runner_{}", random_token(5));
        if !entries.contains_key(&id) {
            return id;
        }
    }
}

/// `bytes` random bytes in lowercase unpadded base32, as go-livepeer's `randomStr`.
fn random_token(bytes: usize) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let data: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(id: &str) -> HeartbeatRequest {
        HeartbeatRequest {
            runner_id: id.into(),
            runner_url: "http://127.0.0.1:9/".into(),
            app: "tessera/image-to-image/org/m".into(),
            mode: MODE_SINGLE_SHOT.into(),
            capacity: 1,
            ..HeartbeatRequest::default()
        }
    }

    fn status(r: Result<impl Sized, RegistryError>) -> StatusCode {
        match r {
            Ok(_) => StatusCode::OK,
            Err(e) => e.status,
        }
    }

    #[test]
    fn bootstrap_then_heartbeat_with_the_runners_own_secret() {
        let reg = Registry::new(Some("orch".into()), "http://o".into());
        assert_eq!(
            status(reg.heartbeat(runner(""), "wrong")),
            StatusCode::UNAUTHORIZED
        );
        let first = reg.heartbeat(runner(""), "orch").unwrap();
        assert!(first.runner_id.starts_with("runner_") && first.runner_id.len() == 15);
        assert_eq!(
            (
                first.heartbeat_interval.as_str(),
                first.heartbeat_ttl.as_str()
            ),
            ("5s", "20s")
        );
        let secret = first.heartbeat_secret.clone().unwrap();
        let again = reg.heartbeat(runner(&first.runner_id), &secret).unwrap();
        assert_eq!(again.heartbeat_secret, None);
        // The bootstrap secret does not heartbeat a live runner.
        assert_eq!(
            status(reg.heartbeat(runner(&first.runner_id), "orch")),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(reg.ready().len(), 1);
        assert_eq!(
            status(reg.unregister(&first.runner_id, "orch")),
            StatusCode::UNAUTHORIZED
        );
        reg.unregister(&first.runner_id, &secret).unwrap();
        assert!(reg.ready().is_empty());
        assert_eq!(
            status(reg.unregister(&first.runner_id, &secret)),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn without_a_secret_only_local_models_are_served() {
        let reg = Registry::new(None, "http://o".into());
        assert_eq!(status(reg.heartbeat(runner(""), "")), StatusCode::NOT_FOUND);
        let id = reg.add_local(0, runner(""));
        assert_eq!(
            status(reg.heartbeat(runner(&id), "")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(reg.reserve(&id).unwrap().upstream, Upstream::Local(0));
    }

    #[test]
    fn expired_runners_leave_discovery_then_are_purged() {
        let reg = Registry::new(Some("orch".into()), "http://o".into()).with_ttl(Duration::ZERO);
        let first = reg.heartbeat(runner("r1"), "orch").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(reg.ready().is_empty());
        let secret = first.heartbeat_secret.unwrap();
        assert_eq!(
            status(reg.heartbeat(runner("r1"), &secret)),
            StatusCode::NOT_FOUND
        );
        assert_eq!(reg.purge_expired(), 1);
        assert_eq!(
            status(reg.heartbeat(runner("r1"), &secret)),
            StatusCode::UNAUTHORIZED
        );
        assert!(reg.heartbeat(runner("r1"), "orch").is_ok());
    }

    #[test]
    fn capacity_is_held_while_a_call_runs() {
        let reg = Registry::new(Some("orch".into()), "http://o".into());
        reg.heartbeat(runner("r1"), "orch").unwrap();
        let slot = reg.reserve("r1").unwrap();
        assert!(slot.session_id.starts_with("session_"));
        assert_eq!(status(reg.reserve("r1")), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reg.ready()[0].2, 1);
        drop(slot);
        assert!(reg.reserve("r1").is_ok());
        assert_eq!(status(reg.reserve("nobody")), StatusCode::NOT_FOUND);
    }

    #[test]
    fn bodies_are_checked_as_go_livepeer_checks_them() {
        let reg = Registry::new(Some("orch".into()), "http://o".into());
        let cases: Vec<(HeartbeatRequest, &str)> = vec![
            (
                HeartbeatRequest {
                    runner_url: "ftp://x".into(),
                    ..runner("")
                },
                "invalid runner_url",
            ),
            (
                HeartbeatRequest {
                    app: " a".into(),
                    ..runner("")
                },
                "app must be trimmed",
            ),
            (
                HeartbeatRequest {
                    capacity: -1,
                    ..runner("")
                },
                "capacity must be >= 0",
            ),
            (
                HeartbeatRequest {
                    mode: "batch".into(),
                    ..runner("")
                },
                r#"mode must be "persistent" or "single-shot""#,
            ),
            (
                HeartbeatRequest {
                    status: "Ready".into(),
                    ..runner("")
                },
                "status must be lowercase and trimmed",
            ),
            (
                HeartbeatRequest {
                    metadata: "x".repeat(1025),
                    ..runner("")
                },
                "metadata must be at most 1024 bytes",
            ),
            (
                runner("a/b"),
                "runner_id must be usable as a URL path segment",
            ),
        ];
        for (request, msg) in cases {
            // Checked before the secret: a wrong secret still gets the 400.
            let err = reg.heartbeat(request, "wrong").unwrap_err();
            assert_eq!(
                (err.status, err.msg.as_str()),
                (StatusCode::BAD_REQUEST, msg)
            );
        }
        let r = reg
            .heartbeat(
                HeartbeatRequest {
                    capacity: 0,
                    mode: "single_shot".into(),
                    ..runner("")
                },
                "orch",
            )
            .unwrap();
        let ready = reg.ready();
        let (_, registered, _) = ready.iter().find(|(id, ..)| *id == r.runner_id).unwrap();
        assert_eq!(
            (registered.capacity, registered.mode.as_str()),
            (1, MODE_SINGLE_SHOT)
        );
    }

    #[test]
    fn tokens_are_lowercase_base32() {
        let t = random_token(32);
        assert_eq!(t.len(), 52);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        assert_eq!(random_token(5).len(), 8);
    }
}
