//! Registry authentication for image-sync's own requests: `WWW-Authenticate` challenges,
//! token realms that are safe to follow, and bearer tokens per repository that expire.
//!
//! A token lives `expires_in` seconds (60 when the response omits it, per the Docker
//! token spec, at most an hour whatever it says), less a small margin; a 401 with a
//! challenge on a request that carried a token makes the caller fetch a fresh one once.
//! Token requests for one registry go one at a time, each asking for every repository
//! that waits for one (at most 16 scopes): concurrent checks share requests.

use std::collections::{HashMap, HashSet, VecDeque};
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

/// Whether a token realm may be followed (with credentials) from `registry_host`, whose
/// challenge came over plain HTTP or not. go-containerregistry's rule: a realm on a
/// private, loopback, link-local or unspecified address (IPv4-mapped IPv6 forms included)
/// or on `localhost` is refused from a registry that is not on such an address itself (a
/// registry must not make us probe this machine, its neighbours or a cloud metadata
/// service); an HTTPS realm is otherwise fine; a plain-HTTP realm only on the registry's
/// own host, and only when the challenge itself came over plain HTTP.
pub fn realm_allowed(
    realm: &str,
    registry_host: &str,
    challenged_over_http: bool,
) -> Result<(), String> {
    let shown = crate::input::reference::shorten(realm);
    let url =
        reqwest::Url::parse(realm).map_err(|_| format!("token realm `{shown}` is not a URL"))?;
    // The URL parser normalises IP literals (`0x7f.1` is `127.0.0.1`, IPv6 is bracketed).
    let Some(realm_host) = url.host_str().map(|host| host.trim_matches(['[', ']'])) else {
        return Err(format!("token realm `{shown}` names no host"));
    };
    let (registry_name, _) = crate::input::reference::split_port(registry_host);
    let registry_name = registry_name.trim_matches(['[', ']']);
    let internal = |host: &str| match host.parse::<IpAddr>() {
        Ok(address) => is_internal_address(address),
        Err(_) => is_localhost(host),
    };
    if internal(realm_host) && !internal(registry_name) {
        return Err(format!(
            "token realm `{shown}` points at a private, loopback or link-local address, and the registry {registry_host} is not on one: not followed"
        ));
    }
    let same_host = match (
        realm_host.parse::<IpAddr>(),
        registry_name.parse::<IpAddr>(),
    ) {
        (Ok(realm), Ok(registry)) => realm == registry,
        _ => realm_host.eq_ignore_ascii_case(registry_name),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if challenged_over_http && same_host => Ok(()),
        _ => Err(format!(
            "token realm `{shown}` is not HTTPS (plain HTTP only on the registry's own host when it is spoken to in plain HTTP): not followed"
        )),
    }
}

fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// go-containerregistry's set (Go's `IsLoopback`, `IsPrivate`, `IsLinkLocalUnicast`,
/// `IsLinkLocalMulticast`, `IsUnspecified`), with IPv4-mapped IPv6 addresses judged by
/// their IPv4 address and all of `0.0.0.0/8` (which Linux connects to this machine).
pub fn is_internal_address(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [first, second, third, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || first == 0
                || (first == 224 && second == 0 && third == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xff0f) == 0xff02
        }
    }
}

/// Longest a token is used, whatever its `expires_in` says: a registry's "forever" (or a
/// number near `u64::MAX`) neither overflows a clock nor keeps a revoked token in use.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Most repository scopes one token request asks for (Docker Hub and Distribution's token
/// servers take several `scope` parameters): concurrent checks of different repositories
/// share one token request, and no token grows with the run.
pub const MAX_SCOPES_PER_TOKEN: usize = 16;

/// A bearer token and when to stop using it.
#[derive(Clone)]
struct Token {
    value: Arc<str>,
    usable_until: Instant,
    /// How many scopes it was asked for.
    scopes: usize,
}

/// One registry's tokens and the token requests waiting for them.
struct HostTokens<E> {
    state: Mutex<HostState<E>>,
    /// Held while a token request is in flight: one at a time per registry, so that the
    /// scopes that want a token meanwhile go into the next request together.
    fetching: tokio::sync::Mutex<()>,
}

struct HostState<E> {
    tokens: HashMap<String, Token>,
    /// Scopes waiting for a token (or expected to), oldest first; an entry no longer in
    /// `queued` was served meanwhile and is skipped.
    waiting: VecDeque<String>,
    /// The scopes in `waiting` that still want a token.
    queued: HashSet<String>,
    /// The last failed request's answer for the scopes it was made for (beside the
    /// one that made it), with its number.
    failed: HashMap<String, (u64, E)>,
    /// Token requests answered so far.
    answered: u64,
    /// A token for several scopes was refused: this registry gets one scope per
    /// request from now on.
    one_scope: bool,
}

impl<E> Default for HostState<E> {
    fn default() -> Self {
        Self {
            tokens: HashMap::new(),
            waiting: VecDeque::new(),
            queued: HashSet::new(),
            failed: HashMap::new(),
            answered: 0,
            one_scope: false,
        }
    }
}

/// Bearer tokens by registry host and scope (`repository:<path>:pull`, or `:pull,push` for
/// a write). Requests for tokens of one registry go one at a time; the scopes that want one
/// while a request is in flight are asked for together in the next (at most
/// [`MAX_SCOPES_PER_TOKEN`]), so a run fetches far fewer tokens than it has repositories,
/// and concurrent requests for one scope share one.
pub struct Tokens<E> {
    hosts: Mutex<HashMap<String, Arc<HostTokens<E>>>>,
}

impl<E> Default for Tokens<E> {
    fn default() -> Self {
        Self {
            hosts: Mutex::new(HashMap::new()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<E: Clone> Tokens<E> {
    fn host(&self, host: &str) -> Arc<HostTokens<E>> {
        Arc::clone(lock(&self.hosts).entry(host.to_owned()).or_insert_with(|| {
            Arc::new(HostTokens {
                state: Mutex::new(HostState::default()),
                fetching: tokio::sync::Mutex::new(()),
            })
        }))
    }

    /// A token for the scope that is not `stale`: the stored one while it lives, else
    /// one from `fetch`, which gets the scopes to ask for (this one first) and
    /// answers with the token and the lifetime the response gave (`None`: absent). After a
    /// refused (`stale`) token the request is for this scope alone, and a refused token
    /// that covered several scopes, or a failed request for several, makes every later
    /// request for the registry a single-scope one. A failed request answers every scope it
    /// was made for (once). The caller bounds the wait.
    pub async fn get<F, Fut>(
        &self,
        host: &str,
        scope: &str,
        stale: Option<&str>,
        fetch: F,
    ) -> Result<Arc<str>, E>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Result<(String, Option<Duration>), E>>,
    {
        let tokens = self.host(host);
        let asked_after = {
            let mut state = lock(&tokens.state);
            if let Some(token) = usable(&state, scope, stale) {
                return Ok(token);
            }
            if stale.is_none() {
                state.queue(scope);
            }
            state.answered
        };
        let _turn = tokens.fetching.lock().await;
        let batch = {
            let mut state = lock(&tokens.state);
            if let Some(token) = usable(&state, scope, stale) {
                return Ok(token);
            }
            if let Some((number, failure)) = state.failed.get(scope)
                && *number > asked_after
            {
                return Err(failure.clone());
            }
            if let Some(refused) = stale.and_then(|stale| {
                state
                    .tokens
                    .get(scope)
                    .filter(|token| &*token.value == stale)
            }) && refused.scopes > 1
            {
                state.one_scope = true;
            }
            let mut batch = vec![scope.to_owned()];
            state.queued.remove(scope);
            if stale.is_none() && !state.one_scope {
                let now = Instant::now();
                while batch.len() < MAX_SCOPES_PER_TOKEN {
                    let Some(next) = state.waiting.pop_front() else {
                        break;
                    };
                    let wanted = state.queued.remove(&next)
                        && state
                            .tokens
                            .get(&next)
                            .is_none_or(|token| now >= token.usable_until);
                    if wanted {
                        batch.push(next);
                    }
                }
            }
            batch
        };
        let fetched = fetch(batch.clone()).await;
        let mut state = lock(&tokens.state);
        state.answered += 1;
        let number = state.answered;
        match fetched {
            Ok((value, lifetime)) => {
                let lifetime = lifetime
                    .unwrap_or(DEFAULT_TOKEN_LIFETIME)
                    .min(MAX_TOKEN_LIFETIME);
                let token = Token {
                    value: Arc::from(value),
                    usable_until: Instant::now() + lifetime - margin(lifetime),
                    scopes: batch.len(),
                };
                for scope in batch {
                    state.failed.remove(&scope);
                    state.tokens.insert(scope, token.clone());
                }
                Ok(token.value)
            }
            Err(failure) => {
                // A registry that refuses a request for several scopes may take them one by
                // one: the retries (and every later request) ask for one scope.
                state.one_scope |= batch.len() > 1;
                for other in batch.into_iter().skip(1) {
                    state.failed.insert(other, (number, failure.clone()));
                }
                Err(failure)
            }
        }
    }

    /// Scopes that requests to `host` will want a token for, in the order they will: the
    /// registry's next token requests ask for them too (up to [`MAX_SCOPES_PER_TOKEN`]
    /// each), so a run over many repositories fetches about one token per 16 of them.
    /// Nothing is fetched for a registry that never asks for tokens.
    pub fn expect(&self, host: &str, scopes: impl IntoIterator<Item = String>) {
        let tokens = self.host(host);
        let mut state = lock(&tokens.state);
        for scope in scopes {
            state.queue(&scope);
        }
    }

    /// The stored token, while it lives.
    pub fn current(&self, host: &str, scope: &str) -> Option<Arc<str>> {
        usable(&lock(&self.host(host).state), scope, None)
    }
}

impl<E> HostState<E> {
    /// Puts `scope` in line for the next token requests, once.
    fn queue(&mut self, scope: &str) {
        if self.queued.insert(scope.to_owned()) {
            self.waiting.push_back(scope.to_owned());
        }
    }
}

/// The scope's token while it lives, unless it is the `stale` one.
fn usable<E>(state: &HostState<E>, scope: &str, stale: Option<&str>) -> Option<Arc<str>> {
    state
        .tokens
        .get(scope)
        .filter(|token| Instant::now() < token.usable_until && stale != Some(&*token.value))
        .map(|token| Arc::clone(&token.value))
}

/// Stop using a token a little before it expires (a tenth of its life, at most 10 s), so
/// that a request sent just before expiry does not arrive just after.
fn margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(10))
}

/// A token endpoint's answer: `token` or `access_token`, whichever is non-empty, and
/// `expires_in`, read leniently (any JSON value: a number that is not a positive count of
/// seconds means "absent").
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

impl TokenResponse {
    /// Parses a token endpoint's body.
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// The token and its lifetime, when the response has a token; the lifetime is at most
    /// [`MAX_TOKEN_LIFETIME`].
    pub fn into_token(self) -> Option<(String, Option<Duration>)> {
        let value = [self.token, self.access_token]
            .into_iter()
            .flatten()
            .find(|token| !token.is_empty())?;
        let seconds = self.expires_in.and_then(|value| match value {
            serde_json::Value::Number(number) => number.as_u64().or_else(|| {
                number
                    .as_f64()
                    .filter(|secs| *secs >= 1.0)
                    .map(|_| u64::MAX)
            }),
            _ => None,
        });
        let lifetime = seconds
            .filter(|&secs| secs > 0)
            .map(|secs| Duration::from_secs(secs.min(MAX_TOKEN_LIFETIME.as_secs())));
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
        for internal in [
            "https://127.0.0.1/token",
            "https://169.254.169.254/latest",
            "https://[::1]:8443/token",
            "https://localhost/token",
            "https://10.0.0.8/token",
            "https://172.20.1.1/token",
            "https://192.168.1.1/token",
            "https://[fd00::1]/token",
            "https://[fe80::1]/token",
            "https://[::ffff:127.0.0.1]/token",
            "https://[::ffff:169.254.169.254]/token",
            "https://[::ffff:10.1.2.3]/token",
            "https://0.0.0.0:9999/token",
            "https://[::]/token",
            "https://0x7f.1/token",
            "https://2130706433/token",
            "https://224.0.0.1/token",
        ] {
            assert!(
                realm_allowed(internal, "ghcr.io", false).is_err(),
                "{internal} from a public registry"
            );
        }
        assert!(realm_allowed("https://8.8.8.8/token", "ghcr.io", false).is_ok());
        assert!(
            realm_allowed("https://10.0.0.8/token", "10.0.0.7:5000", false).is_ok(),
            "a private registry's neighbour"
        );
        assert!(
            realm_allowed("http://auth.example/token", "reg.example", false).is_err(),
            "plain HTTP"
        );
        assert!(
            realm_allowed("http://reg.example:5001/token", "reg.example:5000", true).is_ok(),
            "same plain-HTTP host"
        );
        assert!(
            realm_allowed("http://reg.example:5001/token", "reg.example:5000", false).is_err(),
            "a plain-HTTP realm from an HTTPS answer"
        );
        assert!(realm_allowed("http://other.example/token", "reg.example:5000", true).is_err());
        assert!(
            realm_allowed("http://127.0.0.1:9/token", "127.0.0.1:5000", true).is_ok(),
            "a local registry's own realm"
        );
        assert!(realm_allowed("not a url", "reg.example", false).is_err());
    }

    #[test]
    fn token_responses_take_the_non_empty_field_and_a_bounded_lifetime() {
        let parse =
            |json: &str| TokenResponse::parse(json.as_bytes()).and_then(TokenResponse::into_token);
        assert_eq!(
            parse(r#"{"token": "", "access_token": "a", "expires_in": 300}"#),
            Some(("a".into(), Some(Duration::from_secs(300))))
        );
        assert_eq!(parse(r#"{"token": "t"}"#), Some(("t".into(), None)));
        assert_eq!(parse(r#"{"token": ""}"#), None);
        let hour = Some(MAX_TOKEN_LIFETIME);
        for huge in [
            "18446744073709551615",
            "18446744073709551616",
            "1e300",
            "99999999999999999999999999",
        ] {
            assert_eq!(
                parse(&format!(r#"{{"token": "t", "expires_in": {huge}}}"#)),
                Some(("t".into(), hour)),
                "{huge}"
            );
        }
        for odd in ["0", "-5", "0.5", "\"300\"", "null", "[]"] {
            assert_eq!(
                parse(&format!(r#"{{"token": "t", "expires_in": {odd}}}"#)),
                Some(("t".into(), None)),
                "{odd}"
            );
        }
        assert!(TokenResponse::parse(b"<html>").is_none());
    }

    type Fetched<E = ()> = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(String, Option<Duration>), E>> + Send>,
    >;

    fn counting_fetch(
        fetches: &Arc<Mutex<Vec<Vec<String>>>>,
        lifetime: Option<Duration>,
    ) -> impl FnOnce(Vec<String>) -> Fetched + use<> {
        let fetches = Arc::clone(fetches);
        move |repositories: Vec<String>| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut fetches = fetches.lock().expect("lock");
                fetches.push(repositories);
                Ok((format!("t{}", fetches.len() - 1), lifetime))
            })
        }
    }

    #[tokio::test]
    async fn concurrent_repositories_share_token_requests_of_bounded_scope() {
        let tokens = Arc::new(Tokens::<()>::default());
        let fetches = Arc::new(Mutex::new(Vec::new()));
        let mut joins = Vec::new();
        for n in 0..40 {
            let (tokens, fetch) = (Arc::clone(&tokens), counting_fetch(&fetches, None));
            joins.push(tokio::spawn(async move {
                tokens.get("reg", &format!("r{n}"), None, fetch).await
            }));
            // The first request is in flight before the others ask.
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        for join in joins {
            assert!(join.await.expect("join").is_ok());
        }
        let fetches = fetches.lock().expect("lock").clone();
        assert_eq!(
            fetches[0],
            ["r0"],
            "the first request asks for its own repository"
        );
        assert!(
            fetches
                .iter()
                .all(|batch| batch.len() <= MAX_SCOPES_PER_TOKEN),
            "{fetches:?}"
        );
        assert_eq!(
            fetches.len(),
            1 + 39_usize.div_ceil(MAX_SCOPES_PER_TOKEN),
            "the waiting repositories go in full batches: {fetches:?}"
        );
        let asked: usize = fetches.iter().map(Vec::len).sum();
        assert_eq!(asked, 40, "every repository once: {fetches:?}");
        assert!(tokens.current("reg", "r39").is_some());
    }

    #[tokio::test]
    async fn a_refused_shared_token_is_replaced_for_its_repository_alone_and_stops_sharing() {
        let tokens = Tokens::<()>::default();
        let fetches = Arc::new(Mutex::new(Vec::new()));
        let later = |repository: &'static str| {
            let (tokens, fetch) = (&tokens, counting_fetch(&fetches, None));
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tokens.get("reg", repository, None, fetch).await
            }
        };
        let (a, b, c) = tokio::join!(
            tokens.get("reg", "a", None, counting_fetch(&fetches, None)),
            later("b"),
            later("c")
        );
        assert_eq!(
            (a.as_deref(), b.as_deref(), c.as_deref()),
            (Ok("t0"), Ok("t1"), Ok("t1"))
        );
        // b's token, shared with c, is refused: b alone gets a new one, c keeps its own, and
        // the registry gets one scope per request from now on.
        let renewed = tokens
            .get("reg", "b", Some("t1"), counting_fetch(&fetches, None))
            .await;
        assert_eq!(renewed.as_deref(), Ok("t2"));
        assert_eq!(tokens.current("reg", "c").as_deref(), Some("t1"));
        let (d, e) = tokio::join!(
            tokens.get("reg", "d", None, counting_fetch(&fetches, None)),
            later("e")
        );
        assert!(d.is_ok() && e.is_ok());
        let fetches = fetches.lock().expect("lock").clone();
        assert_eq!(
            fetches,
            [vec!["a"], vec!["b", "c"], vec!["b"], vec!["d"], vec!["e"]]
        );
    }

    #[tokio::test]
    async fn expected_scopes_ride_along_in_config_order_sixteen_per_request() {
        let tokens = Tokens::<()>::default();
        let fetches = Arc::new(Mutex::new(Vec::new()));
        tokens.expect("reg", (0..40).map(|n| format!("r{n}")));
        for n in 0..40 {
            let scope = format!("r{n}");
            assert!(
                tokens
                    .get("reg", &scope, None, counting_fetch(&fetches, None))
                    .await
                    .is_ok()
            );
        }
        let fetches = fetches.lock().expect("lock").clone();
        assert_eq!(fetches.len(), 3, "{fetches:?}");
        assert_eq!(fetches[0].len(), MAX_SCOPES_PER_TOKEN);
        assert_eq!(fetches[1][0], "r16");
        assert!(tokens.current("other", "r0").is_none(), "per registry");
    }

    #[tokio::test]
    async fn tokens_expire_and_a_huge_lifetime_is_capped_without_overflow() {
        let tokens = Tokens::<()>::default();
        let fetches = Arc::new(Mutex::new(Vec::new()));
        let short = Some(Duration::from_millis(300));
        assert_eq!(
            tokens
                .get("reg", "a", None, counting_fetch(&fetches, short))
                .await
                .as_deref(),
            Ok("t0")
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(tokens.current("reg", "a").is_none(), "expired");
        let forever = Some(Duration::from_secs(u64::MAX));
        assert_eq!(
            tokens
                .get("reg", "a", None, counting_fetch(&fetches, forever))
                .await
                .as_deref(),
            Ok("t1")
        );
        assert!(tokens.current("reg", "a").is_some());
    }

    fn counting_err(
        scopes: &Arc<Mutex<Vec<Vec<String>>>>,
    ) -> impl FnOnce(Vec<String>) -> Fetched<&'static str> + use<> {
        let scopes = Arc::clone(scopes);
        move |asked: Vec<String>| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                scopes.lock().expect("lock").push(asked);
                Err("html")
            })
        }
    }

    #[tokio::test]
    async fn a_failed_request_answers_every_repository_it_was_made_for_once() {
        let tokens = Tokens::<&'static str>::default();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failing = |calls: &Arc<std::sync::atomic::AtomicUsize>| {
            let calls = Arc::clone(calls);
            move |_: Vec<String>| async move {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err::<(String, Option<Duration>), _>("html")
            }
        };
        let (a, b, c) = tokio::join!(
            tokens.get("reg", "a", None, failing(&calls)),
            async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tokens.get("reg", "b", None, failing(&calls)).await
            },
            async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tokens.get("reg", "c", None, failing(&calls)).await
            }
        );
        assert_eq!((a, b, c), (Err("html"), Err("html"), Err("html")));
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "one for a, one for b and c together"
        );
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let (d, e) = tokio::join!(tokens.get("reg", "d", None, counting_err(&scopes)), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tokens.get("reg", "e", None, counting_err(&scopes)).await
        });
        assert!(d.is_err() && e.is_err());
        assert_eq!(
            *scopes.lock().expect("lock"),
            [vec!["d"], vec!["e"]],
            "after a failed request for several scopes, one scope per request"
        );
    }
}
