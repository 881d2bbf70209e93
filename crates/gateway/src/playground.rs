//! The playground: one page at `GET /` where a person tries the API in a browser — upload
//! an image, set the fields, watch the async job's progress and previews, download the
//! results. Plain HTML, CSS and JS from `assets/playground/`, embedded in the binary (no
//! CDN, no build step: it works offline), speaking only the public API the page documents
//! by using it (`POST /image-to-image` with `Prefer: respond-async`, `GET /jobs/<id>/events`,
//! `POST /jobs/<id>/cancel`, `GET /v1/models` when the gateway has it).
//!
//! The page, its assets and `GET /playground/config.json` (the default model and whether
//! API keys are required, which the page cannot learn otherwise) need no API key: they
//! hold nothing a key protects. The API calls the page makes carry the key the user enters.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::Gateway;

/// Where the page and its assets are served.
pub(crate) const PAGE: &str = "/";
pub(crate) const SCRIPT: &str = "/playground/app.js";
pub(crate) const STYLE: &str = "/playground/style.css";
pub(crate) const CONFIG: &str = "/playground/config.json";

/// What the page may load and where it may send things: only this origin, plus the
/// `blob:` URLs of the user's own picked image and the `data:` URLs of latent previews.
/// No inline script or style, no frames, no form posts elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: OnceLock<String>,
}

static INDEX: Asset = Asset {
    body: include_str!("../assets/playground/index.html"),
    content_type: "text/html; charset=utf-8",
    etag: OnceLock::new(),
};
static APP_JS: Asset = Asset {
    body: include_str!("../assets/playground/app.js"),
    content_type: "text/javascript; charset=utf-8",
    etag: OnceLock::new(),
};
static STYLE_CSS: Asset = Asset {
    body: include_str!("../assets/playground/style.css"),
    content_type: "text/css; charset=utf-8",
    etag: OnceLock::new(),
};

impl Asset {
    /// A strong validator of the file's bytes, computed once: browsers revalidate
    /// (`no-cache`) and get a 304 until the binary serves other bytes.
    fn etag(&'static self) -> &'static str {
        self.etag.get_or_init(|| {
            let digest = Sha256::digest(self.body.as_bytes());
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
    }

    fn respond(&'static self, request: &HeaderMap) -> Response {
        let etag = self.etag();
        let fresh = request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| {
                let tag = tag.trim();
                tag == etag || tag == "*"
            });
        let mut response = if fresh {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(self.content_type),
                )],
                self.body,
            )
                .into_response()
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, HeaderValue::from_static(etag));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        secure(headers);
        response
    }
}

/// The headers every playground response carries.
fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// The playground's routes, to merge into the gateway's router.
pub(crate) fn routes() -> Router<Gateway> {
    Router::new()
        .route(PAGE, get(|h: HeaderMap| async move { INDEX.respond(&h) }))
        .route(
            SCRIPT,
            get(|h: HeaderMap| async move { APP_JS.respond(&h) }),
        )
        .route(
            STYLE,
            get(|h: HeaderMap| async move { STYLE_CSS.respond(&h) }),
        )
        .route(CONFIG, get(config))
}

/// What the page needs to know of this gateway before its first call: the model requests
/// get when they name none (the model field's value until `/v1/models` lists others), and
/// whether calls need an API key (the page then asks for one).
async fn config(State(gateway): State<Gateway>) -> Response {
    let config = &gateway.inner.config;
    let mut response = Json(json!({
        "default_model": config.default_model,
        "api_key_required": !config.api_keys.is_empty(),
    }))
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secure(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GatewayConfig;
    use reqwest::StatusCode as Status;

    /// A real gateway on a loopback port (no orchestrators: the playground needs none).
    async fn gateway(dir: &std::path::Path, api_keys: &[&str]) -> String {
        let config = GatewayConfig {
            default_model: "org/default-model".into(),
            api_keys: api_keys.iter().map(|k| k.to_string()).collect(),
            storage: crate::StorageConfig::Local {
                path: dir.join("results"),
            },
            ledger: dir.join("ledger.sqlite"),
            ..GatewayConfig::default()
        };
        let gateway = Gateway::start(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(crate::serve_on(listener, gateway));
        url
    }

    fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_their_types_policy_and_validators() {
        let dir = tempfile::tempdir().unwrap();
        // With API keys configured: the page itself needs none, the API still does.
        let base = gateway(dir.path(), &["secret-key"]).await;
        let client = reqwest::Client::new();
        for (path, asset) in [(PAGE, &INDEX), (SCRIPT, &APP_JS), (STYLE, &STYLE_CSS)] {
            let res = client.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(res.status(), Status::OK, "{path}");
            assert_eq!(header(&res, "content-type"), asset.content_type, "{path}");
            assert_eq!(
                header(&res, "content-security-policy"),
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(header(&res, "x-content-type-options"), "nosniff");
            assert_eq!(header(&res, "cache-control"), "no-cache");
            let etag = header(&res, "etag").to_owned();
            assert!(etag.starts_with('"'), "{path}: {etag}");
            assert_eq!(res.text().await.unwrap(), asset.body, "{path}");
            // Revalidation: the same bytes are a 304 without a body.
            let again = client
                .get(format!("{base}{path}"))
                .header("if-none-match", &etag)
                .send()
                .await
                .unwrap();
            assert_eq!(again.status(), Status::NOT_MODIFIED, "{path}");
            assert_eq!(header(&again, "etag"), etag);
            assert!(again.bytes().await.unwrap().is_empty());
            let other = client
                .get(format!("{base}{path}"))
                .header("if-none-match", "\"something-else\"")
                .send()
                .await
                .unwrap();
            assert_eq!(other.status(), Status::OK, "{path}");
        }
        let res = client
            .post(format!("{base}/image-to-image"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), Status::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn the_config_names_the_default_model_and_whether_keys_are_needed() {
        let dir = tempfile::tempdir().unwrap();
        for (keys, required) in [(&[][..], false), (&["k1", "k2"][..], true)] {
            let base = gateway(&dir.path().join(keys.len().to_string()), keys).await;
            let res = reqwest::get(format!("{base}{CONFIG}")).await.unwrap();
            assert_eq!(res.status(), Status::OK);
            assert_eq!(header(&res, "cache-control"), "no-store");
            assert!(header(&res, "content-type").starts_with("application/json"));
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(
                body,
                json!({"default_model": "org/default-model", "api_key_required": required})
            );
        }
    }

    /// The page names its assets by the paths they are served at, and loads nothing else
    /// (the CSP would block it, and offline there is nothing else).
    #[test]
    fn the_page_loads_its_own_assets_and_nothing_from_elsewhere() {
        assert!(INDEX.body.contains(&format!("src=\"{SCRIPT}\"")));
        assert!(INDEX.body.contains(&format!("href=\"{STYLE}\"")));
        for asset in [&INDEX, &APP_JS, &STYLE_CSS] {
            assert!(!asset.body.contains("http://"), "{}", asset.content_type);
            assert!(!asset.body.contains("https://"), "{}", asset.content_type);
        }
        // No inline script or style attribute, which the CSP refuses.
        assert!(!INDEX.body.contains("<script>"));
        assert!(!INDEX.body.contains(" style=\""));
        assert!(!INDEX.body.contains(" onclick="));
        assert!(APP_JS.body.contains(CONFIG));
    }

    #[test]
    fn etags_are_quoted_hashes_that_differ_per_file() {
        let (a, b) = (INDEX.etag(), APP_JS.etag());
        assert!(
            a.starts_with('"') && a.ends_with('"') && a.len() == 26,
            "{a}"
        );
        assert_ne!(a, b);
        // Computed once, the same after.
        assert_eq!(INDEX.etag(), a);
    }
}
