//! image-sync's own digest check: one manifest HEAD over a pooled connection, with the
//! registry's token or basic auth, and no child process.
//!
//! A HEAD costs no Docker Hub pull quota. Doing it in-process saves a crane start-up and
//! crane's `/v2/` ping per check, and reuses connections and tokens across images. Any
//! answer this module does not fully understand (an unexpected status, a TLS problem, a
//! credential helper) is handed to crane with [`Checked::Delegate`], so crane stays the
//! reference behaviour.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};

use crate::credentials::{Basic, Credentials, Lookup};
use crate::failure::{Failure, FailureKind};
use crate::reference::{DOCKER_HUB, Digest, Repository, Tag};
use crate::tls::{TlsPolicy, crane_speaks_http};

/// Every manifest type a tag may point at; the registry answers with the stored one and
/// its digest, without conversion.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Bound on an attempt with a scheme that may be the wrong one, while another remains.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The answer of one check.
#[derive(Debug)]
pub enum Checked {
    /// The registry's digest for the tag.
    Digest(Digest),
    /// A failure the registry (or the network) made clear.
    Failed(Failure),
    /// Not handled here; crane should do this check (the reason is for the debug log).
    Delegate(String),
}

/// How a registry is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// HTTPS, certificate verified.
    Https,
    /// HTTPS without certificate checks: only for hosts the user listed as insecure.
    HttpsUnverified,
    /// Plain HTTP: hosts crane speaks plain HTTP to by itself, and listed hosts.
    Http,
}

/// One attempt with one scheme.
enum Attempt {
    /// The registry answered (or clearly did not): final.
    Answer(Checked),
    /// The scheme looks wrong (a TLS or protocol error, or an HTTPS server asked in plain
    /// HTTP): the next scheme may work.
    WrongScheme(Checked),
}

/// The client shared by every check of a run.
pub struct HeadChecker {
    client: reqwest::Client,
    /// For hosts listed in `insecure_registries` only, as crane's `--insecure`.
    unverified_client: reqwest::Client,
    credentials: Credentials,
    tls: TlsPolicy,
    /// Bearer tokens by (registry host, repository path).
    tokens: Mutex<HashMap<(String, String), String>>,
    /// The scheme that answered, by registry host.
    schemes: Mutex<HashMap<String, Scheme>>,
}

impl HeadChecker {
    /// A checker; `None` when no HTTP client can be built (crane does every check then).
    pub fn new(tls: TlsPolicy, credentials: Credentials) -> Option<Self> {
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("image-sync/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::limited(5))
        };
        Some(Self {
            client: builder().build().ok()?,
            unverified_client: builder().danger_accept_invalid_certs(true).build().ok()?,
            credentials,
            tls,
            tokens: Mutex::new(HashMap::new()),
            schemes: Mutex::new(HashMap::new()),
        })
    }

    /// Reads the digest of `repository:tag` with one HEAD (plus a token request the first
    /// time a repository needs one). The scheme follows crane: HTTPS, with plain HTTP as
    /// well for the hosts crane speaks it to and those listed as insecure; the one that
    /// answers is remembered per host.
    pub async fn digest(&self, repository: &Repository, tag: &Tag, timeout: Duration) -> Checked {
        let host = repository.host();
        let credentials = match self.credentials.lookup(host) {
            Lookup::Delegate => {
                return Checked::Delegate(
                    "credentials need crane (helper, store or identity token)".into(),
                );
            }
            Lookup::Anonymous => None,
            Lookup::Basic(basic) => Some(basic),
        };
        let candidates = self.schemes_for(host);
        let count = candidates.len();
        let mut outcome = Checked::Delegate(format!("no scheme reached {host}"));
        for (index, scheme) in candidates.into_iter().enumerate() {
            // While another scheme remains, a server that hangs on this one (a plain-HTTP
            // server waiting out a TLS hello) gets a short bound, then the next scheme.
            let probing = index + 1 < count;
            let limit = if probing {
                timeout.min(PROBE_TIMEOUT)
            } else {
                timeout
            };
            match self
                .head(scheme, repository, tag, credentials.as_ref(), limit)
                .await
            {
                Attempt::Answer(Checked::Failed(failure))
                    if probing && failure.kind == FailureKind::TimedOut =>
                {
                    outcome = Checked::Failed(failure);
                }
                Attempt::Answer(checked) => {
                    if let Ok(mut schemes) = self.schemes.lock() {
                        schemes.insert(host.to_owned(), scheme);
                    }
                    return checked;
                }
                Attempt::WrongScheme(checked) => outcome = checked,
            }
        }
        outcome
    }

    /// The schemes to try for a host, in order.
    fn schemes_for(&self, host: &str) -> Vec<Scheme> {
        if let Some(&known) = self
            .schemes
            .lock()
            .ok()
            .as_ref()
            .and_then(|schemes| schemes.get(host))
        {
            return vec![known];
        }
        match (self.tls.is_listed(host), crane_speaks_http(host)) {
            // A listed host is usually the plain-HTTP cache; crane's --insecure also allows
            // HTTPS without verification there.
            (true, _) => vec![Scheme::Http, Scheme::HttpsUnverified],
            (false, true) => vec![Scheme::Https, Scheme::Http],
            (false, false) => vec![Scheme::Https],
        }
    }

    /// One HEAD (with the authentication round it may need) over one scheme.
    async fn head(
        &self,
        scheme: Scheme,
        repository: &Repository,
        tag: &Tag,
        credentials: Option<&Basic>,
        timeout: Duration,
    ) -> Attempt {
        let host = repository.host();
        let api_host = if host == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            host
        };
        let (client, prefix) = match scheme {
            Scheme::Https => (&self.client, "https"),
            Scheme::HttpsUnverified => (&self.unverified_client, "https"),
            Scheme::Http => (&self.client, "http"),
        };
        let url = format!(
            "{prefix}://{api_host}/v2/{}/manifests/{tag}",
            repository.path()
        );
        let what = format!("HEAD {url}");
        let token_key = (host.to_owned(), repository.path().to_owned());
        let mut auth = self.cached_token(&token_key).map(Auth::Bearer);

        for _ in 0..2 {
            let mut request = client
                .head(&url)
                .header(ACCEPT, MANIFEST_TYPES)
                .timeout(timeout);
            request = match &auth {
                Some(Auth::Bearer(token)) => request.bearer_auth(token),
                Some(Auth::Basic(basic)) => {
                    request.basic_auth(&basic.username, Some(&basic.password))
                }
                None => request,
            };
            let response = match request.send().await {
                Ok(response) => response,
                Err(err) => return transport_failure(&err, &what, timeout),
            };
            let status = response.status();
            // Go's HTTPS server answers a plain-HTTP request with a bare 400.
            if scheme == Scheme::Http && status == StatusCode::BAD_REQUEST {
                return Attempt::WrongScheme(Checked::Delegate(format!(
                    "{what}: 400 (an HTTPS server?)"
                )));
            }
            let answer = |checked| Attempt::Answer(checked);
            match status {
                StatusCode::OK => {
                    let digest = response
                        .headers()
                        .get("docker-content-digest")
                        .and_then(|value| value.to_str().ok())
                        .and_then(Digest::parse);
                    return answer(match digest {
                        Some(digest) => Checked::Digest(digest),
                        None => {
                            Checked::Delegate(format!("{what}: no Docker-Content-Digest header"))
                        }
                    });
                }
                StatusCode::UNAUTHORIZED if auth.is_none() => {
                    let challenge = parse_challenge(response.headers());
                    auth = match challenge {
                        Some(Challenge::Bearer { realm, service, .. }) => {
                            let scope = format!("repository:{}:pull", repository.path());
                            // Credentials travel in clear text only where the user
                            // already talks plain HTTP to the registry.
                            let secure_realm =
                                realm.starts_with("https://") || scheme == Scheme::Http;
                            let basic = credentials.filter(|_| secure_realm);
                            match self
                                .fetch_token(&realm, service.as_deref(), &scope, basic, timeout)
                                .await
                            {
                                Ok(token) => {
                                    self.store_token(&token_key, &token);
                                    Some(Auth::Bearer(token))
                                }
                                Err(checked) => return answer(checked),
                            }
                        }
                        Some(Challenge::Basic) => match credentials {
                            Some(basic) => Some(Auth::Basic(basic.clone())),
                            None => {
                                return answer(Checked::Failed(status_failure(
                                    status,
                                    response.headers(),
                                    &what,
                                )));
                            }
                        },
                        None => {
                            return answer(Checked::Delegate(format!(
                                "{what}: 401 without a usable challenge"
                            )));
                        }
                    };
                }
                _ => return answer(status_answer(status, response.headers(), &what)),
            }
        }
        Attempt::Answer(Checked::Failed(Failure::new(
            FailureKind::Unauthorized,
            format!("{what}: 401 Unauthorized after authenticating"),
        )))
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        basic: Option<&Basic>,
        timeout: Duration,
    ) -> Result<String, Checked> {
        let mut query = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.client.get(realm).query(&query).timeout(timeout);
        if let Some(basic) = basic {
            request = request.basic_auth(&basic.username, Some(&basic.password));
        }
        let what = format!("GET {realm} (token)");
        let response =
            request
                .send()
                .await
                .map_err(|err| match transport_failure(&err, &what, timeout) {
                    Attempt::Answer(checked) | Attempt::WrongScheme(checked) => checked,
                })?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(status_answer(status, response.headers(), &what));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|_| Checked::Delegate(format!("{what}: the token response is not JSON")))?;
        body.token
            .or(body.access_token)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Checked::Delegate(format!("{what}: no token in the response")))
    }

    fn cached_token(&self, key: &(String, String)) -> Option<String> {
        self.tokens.lock().ok()?.get(key).cloned()
    }

    fn store_token(&self, key: &(String, String), token: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(key.clone(), token.to_owned());
        }
    }
}

enum Auth {
    Bearer(String),
    Basic(Basic),
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

fn parse_challenge(headers: &HeaderMap) -> Option<Challenge> {
    let value = headers.get(WWW_AUTHENTICATE)?.to_str().ok()?;
    parse_challenge_text(value)
}

/// `Bearer realm="https://auth",service="registry",scope="repository:a:pull"` or `Basic realm=...`.
fn parse_challenge_text(value: &str) -> Option<Challenge> {
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
            None => after.split_once(',').map_or((after, ""), |(v, r)| (v, r)),
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
        scope: fields.remove("scope"),
    })
}

/// The meaning of a final status.
fn status_answer(status: StatusCode, headers: &HeaderMap, what: &str) -> Checked {
    let failure = status_failure(status, headers, what);
    match failure.kind {
        FailureKind::Other => Checked::Delegate(failure.message),
        _ => Checked::Failed(failure),
    }
}

fn status_failure(status: StatusCode, headers: &HeaderMap, what: &str) -> Failure {
    let kind = match status {
        StatusCode::NOT_FOUND => FailureKind::ManifestUnknown,
        StatusCode::UNAUTHORIZED => FailureKind::Unauthorized,
        StatusCode::FORBIDDEN => FailureKind::Denied,
        StatusCode::TOO_MANY_REQUESTS => FailureKind::RateLimited,
        status if status.is_server_error() => FailureKind::Transient,
        _ => FailureKind::Other,
    };
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .map(|value| format!("; Retry-After: {value}"))
        .unwrap_or_default();
    Failure::new(kind, format!("{what}: {status}{retry_after}"))
}

/// Connection-level errors: refusals and timeouts are answers; anything else (TLS, a
/// protocol surprise) may mean the other scheme, and otherwise goes to crane, whose
/// message is the reference.
fn transport_failure(err: &reqwest::Error, what: &str, timeout: Duration) -> Attempt {
    if err.is_timeout() {
        return Attempt::Answer(Checked::Failed(Failure::timed_out(timeout, what)));
    }
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(cause) = source {
        chain.push_str(&cause.to_string());
        chain.push_str(": ");
        source = cause.source();
    }
    let lower = chain.to_ascii_lowercase();
    if err.is_connect() && (lower.contains("connection refused") || lower.contains("dns error")) {
        let cause = if lower.contains("dns error") {
            "no such host"
        } else {
            "connection refused"
        };
        return Attempt::Answer(Checked::Failed(Failure::new(
            FailureKind::Unreachable,
            format!("{what}: {cause}"),
        )));
    }
    Attempt::WrongScheme(Checked::Delegate(format!(
        "{what}: {}",
        crate::failure::redact(&chain)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed() {
        assert_eq!(
            parse_challenge_text(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge_text(r#"Bearer realm="https://ghcr.io/token", service="ghcr.io""#),
            Some(Challenge::Bearer {
                realm: "https://ghcr.io/token".into(),
                service: Some("ghcr.io".into()),
                scope: None
            })
        );
        assert_eq!(
            parse_challenge_text(r#"Basic realm="registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge_text("Negotiate"), None);
        assert_eq!(
            parse_challenge_text(r#"Bearer service="x""#),
            None,
            "no realm"
        );
        assert_eq!(
            parse_challenge_text(r#"Bearer realm="file:///etc/passwd""#),
            None
        );
    }

    #[test]
    fn statuses_map_to_failure_classes() {
        let headers = HeaderMap::new();
        let kind = |status: u16| {
            status_failure(
                StatusCode::from_u16(status).expect("status"),
                &headers,
                "HEAD x",
            )
            .kind
        };
        assert_eq!(kind(404), FailureKind::ManifestUnknown);
        assert_eq!(kind(401), FailureKind::Unauthorized);
        assert_eq!(kind(403), FailureKind::Denied);
        assert_eq!(kind(429), FailureKind::RateLimited);
        assert_eq!(kind(503), FailureKind::Transient);
        assert_eq!(kind(418), FailureKind::Other);
        let mut limited = HeaderMap::new();
        limited.insert(RETRY_AFTER, "17".parse().expect("header"));
        let failure = status_failure(StatusCode::TOO_MANY_REQUESTS, &limited, "HEAD x");
        assert_eq!(
            crate::failure::retry_after(&failure.message),
            Some(Duration::from_secs(17))
        );
        assert!(matches!(
            status_answer(StatusCode::IM_A_TEAPOT, &headers, "HEAD x"),
            Checked::Delegate(_)
        ));
    }
}
