//! Registry authentication for image-sync's own requests: `WWW-Authenticate` challenges,
//! token realms that are safe to follow, and bearer tokens per repository that expire.
//!
//! A token lives `expires_in` seconds (60 when the response omits it, per the Docker
//! token spec), less a small margin; a 401 with a challenge on a request that carried a
//! token makes the caller fetch a fresh one once. Concurrent checks of one repository
//! share one token fetch.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};

/// `expires_in` when the token response has none (Docker token spec).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Fetch a token from `realm`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter to pass on.
        service: Option<String>,
    },
    /// Send the user name and password.
    Basic,
}

/// The challenge to answer among every `WWW-Authenticate` header: bearer first (it is
/// what registries mean when they offer both), else basic.
pub fn challenge(headers: &HeaderMap) -> Option<Challenge> {
    let all: Vec<Challenge> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(parse_challenge)
        .collect();
    all.iter()
        .find(|c| matches!(c, Challenge::Bearer { .. }))
        .or_else(|| all.first())
        .cloned()
}

/// `Bearer realm="https://auth",service="registry",scope="repository:a:pull"` or `Basic realm=...`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut fields = HashMap::new();
    let mut rest = params.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        fields.insert(key, value.to_owned());
        rest = remaining.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
    }
    let realm = fields
        .remove("realm")
        .filter(|realm| realm.starts_with("http"))?;
    Some(Challenge::Bearer {
        realm,
        service: fields.remove("service"),
    })
}

/// Whether a token realm may be followed (with credentials) from `registry_host`,
/// reached in plain HTTP or not. An HTTPS realm is fine unless it points a remote
/// registry's client at this machine or its link-local neighbours (a registry must not
/// make us probe internal addresses); a plain-HTTP realm only on the registry's own
/// host, which is already spoken to in plain HTTP.
pub fn realm_allowed(
    realm: &str,
    registry_host: &str,
    registry_plain_http: bool,
) -> Result<(), String> {
    let url =
        reqwest::Url::parse(realm).map_err(|_| format!("token realm `{realm}` is not a URL"))?;
    let realm_host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
    let (registry_name, _) = crate::input::reference::split_port(registry_host);
    let registry_name = registry_name.trim_matches(['[', ']']);
    if is_internal(realm_host) && !is_internal(registry_name) {
        return Err(format!(
            "token realm `{realm}` points at a loopback or link-local address, and the registry {registry_host} is not on one: not followed"
        ));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if registry_plain_http && realm_host.eq_ignore_ascii_case(registry_name) => Ok(()),
        _ => Err(format!(
            "token realm `{realm}` is not HTTPS (plain HTTP only on the registry's own host when it is spoken to in plain HTTP): not followed"
        )),
    }
}

fn is_internal(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
        Err(_) => false,
    }
}

/// A bearer token and when to stop using it.
#[derive(Clone)]
struct Token {
    value: String,
    usable_until: Instant,
}

/// One repository's token slot; its lock is held while a token is fetched, so that
/// concurrent checks wait for that one fetch.
type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Bearer tokens by (registry host, repository).
#[derive(Default)]
pub struct Tokens {
    slots: Mutex<HashMap<(String, String), Slot>>,
}

impl Tokens {
    fn slot(&self, host: &str, repository: &str) -> Slot {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(
            slots
                .entry((host.to_owned(), repository.to_owned()))
                .or_default(),
        )
    }

    /// A token for the repository that is not `stale`: the stored one while it lives,
    /// else one from `fetch` (which gets the lifetime the response gave, or `None`).
    /// Concurrent callers share one fetch.
    pub async fn get<F, Fut, E>(
        &self,
        host: &str,
        repository: &str,
        stale: Option<&str>,
        fetch: F,
    ) -> Result<String, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(String, Option<Duration>), E>>,
    {
        let slot = self.slot(host, repository);
        let mut token = slot.lock().await;
        if let Some(current) = token.as_ref() {
            let fresh = Instant::now() < current.usable_until;
            if fresh && stale != Some(current.value.as_str()) {
                return Ok(current.value.clone());
            }
        }
        let (value, lifetime) = fetch().await?;
        let lifetime = lifetime.unwrap_or(DEFAULT_TOKEN_LIFETIME);
        *token = Some(Token {
            value: value.clone(),
            usable_until: Instant::now() + lifetime - margin(lifetime),
        });
        Ok(value)
    }

    /// The stored token, while it lives.
    pub async fn current(&self, host: &str, repository: &str) -> Option<String> {
        let slot = self.slot(host, repository);
        let token = slot.lock().await;
        token
            .as_ref()
            .filter(|token| Instant::now() < token.usable_until)
            .map(|token| token.value.clone())
    }
}

/// Stop using a token a little before it expires (a tenth of its life, at most 10 s), so
/// that a request sent just before expiry does not arrive just after.
fn margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(10))
}

/// A token endpoint's answer: `token` or `access_token`, whichever is non-empty, and
/// `expires_in`.
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and its lifetime, when the response has a token.
    pub fn into_token(self) -> Option<(String, Option<Duration>)> {
        let value = [self.token, self.access_token]
            .into_iter()
            .flatten()
            .find(|token| !token.is_empty())?;
        let lifetime = self
            .expires_in
            .filter(|&secs| secs > 0)
            .map(Duration::from_secs);
        Some((value, lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://ghcr.io/token", service="ghcr.io""#),
            Some(Challenge::Bearer {
                realm: "https://ghcr.io/token".into(),
                service: Some("ghcr.io".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None, "no realm");
        assert_eq!(
            parse_challenge(r#"Bearer realm="file:///etc/passwd""#),
            None
        );
    }

    #[test]
    fn every_challenge_header_is_read_and_bearer_wins() {
        let mut headers = HeaderMap::new();
        headers.append(
            WWW_AUTHENTICATE,
            "Basic realm=\"x\"".parse().expect("header"),
        );
        headers.append(
            WWW_AUTHENTICATE,
            "Bearer realm=\"https://auth.example/token\""
                .parse()
                .expect("header"),
        );
        assert!(matches!(
            challenge(&headers),
            Some(Challenge::Bearer { .. })
        ));
        let mut basic_only = HeaderMap::new();
        basic_only.append(WWW_AUTHENTICATE, "Negotiate".parse().expect("header"));
        basic_only.append(
            WWW_AUTHENTICATE,
            "Basic realm=\"x\"".parse().expect("header"),
        );
        assert_eq!(challenge(&basic_only), Some(Challenge::Basic));
    }

    #[test]
    fn realms_are_followed_only_where_safe() {
        assert!(realm_allowed("https://auth.docker.io/token", "docker.io", false).is_ok());
        assert!(
            realm_allowed("https://127.0.0.1/token", "ghcr.io", false).is_err(),
            "loopback from a remote registry"
        );
        assert!(
            realm_allowed("https://169.254.169.254/latest", "ghcr.io", false).is_err(),
            "link-local metadata"
        );
        assert!(realm_allowed("https://[::1]:8443/token", "ghcr.io", false).is_err());
        assert!(realm_allowed("https://localhost/token", "quay.io", false).is_err());
        assert!(
            realm_allowed("http://auth.example/token", "reg.example", false).is_err(),
            "plain HTTP"
        );
        assert!(
            realm_allowed("http://reg.example:5001/token", "reg.example:5000", true).is_ok(),
            "same plain-HTTP host"
        );
        assert!(realm_allowed("http://other.example/token", "reg.example:5000", true).is_err());
        assert!(
            realm_allowed("http://127.0.0.1:9/token", "127.0.0.1:5000", true).is_ok(),
            "a local registry's own realm"
        );
        assert!(realm_allowed("not a url", "reg.example", false).is_err());
    }

    #[test]
    fn token_responses_take_the_non_empty_field_and_the_lifetime() {
        let parse = |json: &str| {
            serde_json::from_str::<TokenResponse>(json)
                .expect("json")
                .into_token()
        };
        assert_eq!(
            parse(r#"{"token": "", "access_token": "a", "expires_in": 300}"#),
            Some(("a".into(), Some(Duration::from_secs(300))))
        );
        assert_eq!(parse(r#"{"token": "t"}"#), Some(("t".into(), None)));
        assert_eq!(parse(r#"{"token": ""}"#), None);
    }

    #[tokio::test]
    async fn tokens_expire_are_refreshed_when_stale_and_fetched_once_for_concurrent_callers() {
        let tokens = Arc::new(Tokens::default());
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let fetch = |lifetime: u64| {
            let fetches = Arc::clone(&fetches);
            move || async move {
                let n = fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, ()>((format!("t{n}"), Some(Duration::from_millis(lifetime))))
            }
        };
        let mut joins = Vec::new();
        for _ in 0..8 {
            let (tokens, fetch) = (Arc::clone(&tokens), fetch(400));
            joins.push(tokio::spawn(async move {
                tokens.get("reg", "a", None, fetch).await
            }));
        }
        for join in joins {
            assert_eq!(join.await.expect("join"), Ok("t0".to_owned()));
        }
        assert_eq!(
            fetches.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one fetch shared"
        );
        assert_eq!(
            tokens.get("reg", "a", Some("t0"), fetch(400)).await,
            Ok("t1".into()),
            "a stale token is replaced"
        );
        assert_eq!(tokens.current("reg", "a").await.as_deref(), Some("t1"));
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(tokens.current("reg", "a").await, None, "expired");
        assert_eq!(
            tokens.get("reg", "a", None, fetch(400)).await,
            Ok("t2".into())
        );
        assert_eq!(
            tokens.get("reg", "b", None, fetch(400)).await,
            Ok("t3".into()),
            "per repository"
        );
    }
}
