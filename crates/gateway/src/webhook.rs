//! Webhooks of async jobs: the `webhook_url` a request gives gets the job's final document
//! (what `GET /jobs/<id>` answers) by POST, signed with `X-Tessera-Signature:
//! sha256=<hex HMAC-SHA256(webhook secret, body)>`, retried with doubling waits for a
//! bounded time.
//!
//! The URL is the client's: left alone it would make the gateway call its own internal
//! services. So unless the operator allows it (`webhook_allow_private`), a URL whose host is
//! or resolves to an address on loopback, private, link-local (the cloud metadata services
//! are there), shared, multicast or otherwise reserved ranges is refused; every address a
//! name resolves to is checked, and the call goes to the checked addresses only (no second
//! lookup a DNS trick could answer differently, no redirects).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::Url;
use sha2::Sha256;
use tessera_api::jobs::{WebhookStatus, SIGNATURE_HEADER};

/// The request field that names the webhook.
pub(crate) const FIELD: &str = "webhook_url";

/// How long one POST may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The first wait between tries; each next one is twice as long.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// How webhooks are sent.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The HMAC key; without one, requests with a `webhook_url` are refused.
    pub secret: Option<String>,
    /// Lets webhooks reach loopback and private addresses (tests, a receiver on the LAN).
    pub allow_private: bool,
    /// How long a delivery is retried before it counts as failed.
    pub retry_for: Duration,
}

/// Where a webhook goes: the URL and the addresses its host was checked at.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub url: Url,
    addrs: Vec<SocketAddr>,
}

/// Parses and checks a webhook URL, resolving its host; the error says what is wrong.
pub(crate) async fn target(text: &str, allow_private: bool) -> Result<Target, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("webhook_url is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "webhook_url must be an http or https URL, not {}:",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("webhook_url must not carry a user name or password".into());
    }
    let port = url
        .port_or_known_default()
        .ok_or("webhook_url has no port")?;
    let addrs: Vec<SocketAddr> = match url.host() {
        None => return Err("webhook_url has no host".into()),
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(url::Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| format!("webhook_url's host {name} does not resolve: {e}"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err("webhook_url's host resolves to no address".into());
    }
    if !allow_private {
        for addr in &addrs {
            if let Some(range) = forbidden(addr.ip()) {
                return Err(format!(
                    "webhook_url must not point at a {range} address ({}); \
                     this gateway refuses those",
                    addr.ip()
                ));
            }
        }
    }
    Ok(Target { url, addrs })
}

/// The kind of range an address webhooks must not reach lies in, if it does.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            // IPv4 addresses written as IPv6 are checked as what they are.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if seg[0] & 0xffc0 == 0xfe80 || seg[0] & 0xffc0 == 0xfec0 {
                Some("link-local")
            } else if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || seg[..6] == [0; 6] {
                // NAT64 and IPv4-compatible addresses embed an IPv4 address.
                let [a, b] = seg[6].to_be_bytes();
                let [c, d] = seg[7].to_be_bytes();
                forbidden_v4(Ipv4Addr::new(a, b, c, d))
            } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        // 169.254.169.254 and its neighbours: the cloud metadata services.
        Some("link-local or metadata")
    } else if a == 0 {
        Some("unspecified")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if a == 192 && b == 0 && c == 0 {
        Some("IETF protocol")
    } else if a == 198 && (18..20).contains(&b) {
        Some("benchmarking")
    } else if ip.is_documentation() {
        Some("documentation")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if a >= 240 {
        Some("reserved or broadcast")
    } else {
        None
    }
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`, the signature header's value.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// What became of a delivery.
pub(crate) struct Delivery {
    pub status: WebhookStatus,
    pub attempts: u32,
    pub error: Option<String>,
}

/// POSTs `body` (the job's JSON document) to `url` until a receiver answers 2xx or the
/// retry time is up. The host is checked again before every try: what it resolves to may
/// have changed since the job was accepted.
pub(crate) async fn deliver(config: &WebhookConfig, url: &str, body: Vec<u8>) -> Delivery {
    let secret = config.secret.as_deref().unwrap_or_default();
    let signed = signature(secret.as_bytes(), &body);
    let deadline = Instant::now() + config.retry_for;
    let mut wait = FIRST_RETRY;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match post_once(config, url, &body, &signed).await {
            Ok(()) => {
                return Delivery {
                    status: WebhookStatus::Delivered,
                    attempts,
                    error: None,
                }
            }
            Err(e) => e,
        };
        tracing::warn!(webhook = url, attempt = attempts, error = %error, "webhook not delivered");
        if Instant::now() + wait > deadline {
            return Delivery {
                status: WebhookStatus::Failed,
                attempts,
                error: Some(error),
            };
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

async fn post_once(
    config: &WebhookConfig,
    url: &str,
    body: &[u8],
    signed: &str,
) -> Result<(), String> {
    let target = target(url, config.allow_private).await?;
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(CALL_TIMEOUT);
    if let Some(url::Host::Domain(name)) = target.url.host() {
        client = client.resolve_to_addrs(name, &target.addrs);
    }
    let client = client
        .build()
        .map_err(|e| format!("cannot build the webhook client: {e}"))?;
    let answer = client
        .post(target.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signed)
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {}", answer.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges_are_named_and_public_ones_pass() {
        for (ip, range) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local or metadata"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("255.255.255.255", "reserved or broadcast"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local or metadata"),
            ("fd00:ec2::254", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("64:ff9b::a00:1", "private"),
            ("ff02::1", "multicast"),
        ] {
            assert_eq!(forbidden(ip.parse().unwrap()), Some(range), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert_eq!(forbidden(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_before_anything_is_sent() {
        for (url, needle) in [
            ("ftp://example.com/x", "http or https"),
            ("not a url", "not a URL"),
            ("http://user:pw@example.com/", "user name"),
            ("http://127.0.0.1:9/hook", "loopback"),
            ("http://[::1]/hook", "loopback"),
            ("http://169.254.169.254/latest/meta-data", "metadata"),
            ("http://localhost:9/hook", "loopback"),
        ] {
            let e = target(url, false).await.unwrap_err();
            assert!(e.contains(needle), "{url}: {e}");
        }
        assert!(target("http://127.0.0.1:9/hook", true).await.is_ok());
    }

    #[test]
    fn the_signature_is_rfc_4231s_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
