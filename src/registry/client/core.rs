//! The client shared by every request of a run: its HTTP clients, the credentials, the
//! bearer tokens, the upstream quota ledger, and what it learnt about each host (the
//! scheme that answered, the auth it asked for, whether its HEADs carry a digest).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::session::{Refusal, Session};
use super::transport::{BodyError, Broken, Scheme, Transport, read_capped};
use crate::input::reference::Repository;
use crate::registry::auth::{self, TokenResponse, Tokens};
use crate::registry::credentials::{Basic, Keyring, Lookup};
use crate::registry::failure::{Class, Failure, Side};
use crate::registry::quota::{self, Ledger};
use crate::tls::TlsPolicy;

/// HEADs without `Docker-Content-Digest` in a row after which a host is taken to never
/// send it (its checks then GET at once, without the HEAD first).
pub const NO_DIGEST_STREAK: u32 = 3;

/// A token endpoint's answer larger than this is not a token.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// The auth a host asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthKind {
    /// User name and password on every request.
    Basic,
    /// Tokens from `realm`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter.
        service: Option<String>,
        /// The scheme the challenge came over (a plain-HTTP realm is followed only from a
        /// plain-HTTP answer).
        over: Scheme,
    },
}

/// What the client learnt about a host during this run.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// The scheme that answered.
    pub scheme: Option<Scheme>,
    /// The auth it asked for.
    pub auth: Option<AuthKind>,
    /// Its last manifest HEADs in a row that had no `Docker-Content-Digest`.
    pub heads_without_digest: u32,
    /// That streak reached [`NO_DIGEST_STREAK`]: digest checks there are GETs.
    pub head_gives_no_digest: bool,
}

/// The client shared by every check and listing of a run.
pub struct Client {
    pub(super) transport: Transport,
    pub(super) keyring: Arc<Keyring>,
    ledger: Arc<Ledger>,
    pub(super) tls: TlsPolicy,
    tokens: Tokens<Refusal>,
    hosts: Mutex<HashMap<String, HostFacts>>,
}

impl Client {
    /// A client; `None` when no HTTP client can be built (crane does every check then).
    pub fn new(tls: TlsPolicy, keyring: Arc<Keyring>, ledger: Arc<Ledger>) -> Option<Self> {
        Some(Self {
            transport: Transport::new()?,
            keyring,
            ledger,
            tls,
            tokens: Tokens::default(),
            hosts: Mutex::new(HashMap::new()),
        })
    }

    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostFacts>> {
        self.hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What this run learnt about `host`.
    pub(super) fn facts(&self, host: &str) -> HostFacts {
        self.hosts().get(host).cloned().unwrap_or_default()
    }

    /// Records something learnt about `host`.
    pub(super) fn learn<T>(&self, host: &str, learn: impl FnOnce(&mut HostFacts) -> T) -> T {
        learn(self.hosts().entry(host.to_owned()).or_default())
    }

    /// The schemes to try for a host: the one that answered before, else crane's order.
    pub(super) fn schemes_for(&self, host: &str) -> Vec<Scheme> {
        match self.facts(host).scheme {
            Some(known) => vec![known],
            None => Scheme::candidates(&self.tls, host),
        }
    }

    /// A session for requests about `repository` on `side` within `budget`: its
    /// credentials are looked up (a credential helper waited for) within that budget too.
    pub(super) async fn session<'a>(
        &'a self,
        repository: &'a Repository,
        side: Side,
        budget: Duration,
    ) -> Result<Session<'a>, Refusal> {
        let deadline = Instant::now() + budget;
        let lookup = self
            .keyring
            .lookup(repository.host(), repository.path(), deadline)
            .await
            .map_err(Refusal::Failed)?;
        let credentials = match lookup {
            Lookup::Delegate => {
                return Err(Refusal::Unhandled {
                    why: "credentials need crane (identity token, or a config it must judge)"
                        .into(),
                    failure: Failure::new(
                        Class::Unauthorized,
                        format!(
                            "the credentials of {repository} need crane (an identity token or a credential helper it must judge), which cannot do this for image-sync"
                        ),
                    )
                    .on(side, Some(repository.host())),
                });
            }
            Lookup::Anonymous => None,
            Lookup::Basic(basic) => Some(basic),
        };
        Ok(Session::new(
            self,
            repository,
            side,
            credentials,
            deadline,
            budget,
        ))
    }

    /// Repositories this run will check, in the order it will: a registry that asks for
    /// tokens gets their scopes in its next token requests (see [`Tokens::expect`]).
    pub fn expect<'r>(&self, repositories: impl IntoIterator<Item = &'r Repository>) {
        let mut by_host: HashMap<&str, Vec<String>> = HashMap::new();
        for repository in repositories {
            by_host
                .entry(repository.host())
                .or_default()
                .push(format!("repository:{}:pull", repository.path()));
        }
        for (host, scopes) in by_host {
            self.tokens.expect(host, scopes);
        }
    }

    /// Counts an upstream manifest request and reads the quota its answer reports.
    pub(super) fn account(
        &self,
        registry: &str,
        get: bool,
        status: StatusCode,
        headers: &HeaderMap,
    ) {
        let limit = quota::rate_limit(headers);
        let rate_limited = limit.is_some() && status == StatusCode::TOO_MANY_REQUESTS;
        self.ledger.answered(
            registry,
            quota::Answer {
                heads: u32::from(!get),
                gets: u32::from(get),
                limit,
                rate_limited,
            },
        );
    }

    /// A manifest HEAD of `host` answered with a digest: the streak of HEADs without one
    /// ends.
    pub(super) fn head_had_digest(&self, host: &str) {
        self.learn(host, |facts| facts.heads_without_digest = 0);
    }

    /// A manifest HEAD of `host` answered without a digest (this check GETs the manifest):
    /// after [`NO_DIGEST_STREAK`] in a row the host is remembered as one whose HEADs never
    /// carry it, with one warning.
    pub(super) fn head_lacked_digest(&self, host: &str) {
        let remembered = self.learn(host, |facts| {
            facts.heads_without_digest = facts.heads_without_digest.saturating_add(1);
            let now = facts.heads_without_digest >= NO_DIGEST_STREAK && !facts.head_gives_no_digest;
            facts.head_gives_no_digest |= now;
            now
        });
        if remembered {
            tracing::warn!(
                registry = %host,
                "the registry answered {NO_DIGEST_STREAK} manifest HEAD requests in a row without Docker-Content-Digest: from now on every digest check there is a manifest GET, which counts as a pull on registries that meter them"
            );
        } else {
            tracing::debug!(registry = %host, "a manifest HEAD without Docker-Content-Digest: this check GETs the manifest");
        }
    }

    /// A token for `scope` on the session's registry (not `stale`), from a realm that is
    /// safe to follow, waited for until the session's deadline.
    pub(super) async fn bearer_token(
        &self,
        session: &Session<'_>,
        challenge: (&str, Option<&str>, Scheme),
        scope: &str,
        stale: Option<&str>,
    ) -> Result<Arc<str>, Refusal> {
        let (realm, service, over) = challenge;
        let host = session.repository().host();
        auth::realm_allowed(realm, host, over == Scheme::Http)
            .map_err(|why| Refusal::Failed(session.fail(Class::Denied, why)))?;
        let wait = self.tokens.get(host, scope, stale, |scopes| {
            self.fetch_token(session, realm, service, scopes)
        });
        match tokio::time::timeout_at(session.deadline().into(), wait).await {
            Ok(token) => token,
            Err(_) => Err(Refusal::Failed(
                Failure::timed_out(
                    session.budget(),
                    format!(
                        "waiting for a token from {}",
                        crate::input::reference::shorten(realm)
                    ),
                )
                .on(session.side(), Some(host)),
            )),
        }
    }

    /// One token request: every scope, the service, the user's basic credentials when
    /// there are some.
    async fn fetch_token(
        &self,
        session: &Session<'_>,
        realm: &str,
        service: Option<&str>,
        scopes: Vec<String>,
    ) -> Result<(String, Option<Duration>), Refusal> {
        let mut query: Vec<(&str, String)> =
            scopes.into_iter().map(|scope| ("scope", scope)).collect();
        if let Some(service) = service {
            query.push(("service", service.to_owned()));
        }
        let what = format!("GET {} (token)", crate::input::reference::shorten(realm));
        let left = session.left();
        if left.is_zero() {
            return Err(Refusal::Failed(session.timed_out(&what)));
        }
        let mut request = self
            .transport
            .tokens()
            .get(realm)
            .query(&query)
            .timeout(left);
        if let Some(basic) = session.credentials() {
            request = request.basic_auth(&basic.username, Some(&basic.password));
        }
        let response = request
            .send()
            .await
            .map_err(|err| session.broken(&super::transport::classify(&err), &what))?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(session.status_refusal(status, response.headers(), &what));
        }
        let malformed = |detail: &str| Refusal::Unhandled {
            why: format!("{what}: {detail}"),
            failure: session.fail(Class::Malformed, format!("{what}: {detail}")),
        };
        let body = match read_capped(response, MAX_TOKEN_RESPONSE_BYTES).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                return Err(malformed(&format!(
                    "the token response is larger than {} KiB",
                    MAX_TOKEN_RESPONSE_BYTES / 1024
                )));
            }
            Err(BodyError::Broken(broken)) => return Err(session.broken(&broken, &what)),
        };
        TokenResponse::parse(&body)
            .ok_or_else(|| malformed("the token response is not JSON"))?
            .into_token()
            .ok_or_else(|| malformed("no token in the response"))
    }

    /// The credentials for a request to a host whose auth kind this run already learnt:
    /// a token for `scope` where it asked for bearer tokens, the user's basic credentials
    /// where it asked for those, else none (the first request finds out).
    pub(super) async fn known_auth(
        &self,
        session: &Session<'_>,
        scope: &str,
    ) -> Result<Option<Credential>, Refusal> {
        let known = self.facts(session.repository().host()).auth;
        Ok(match (known, session.credentials()) {
            (
                Some(AuthKind::Bearer {
                    realm,
                    service,
                    over,
                }),
                _,
            ) => Some(Credential::Bearer(
                self.bearer_token(session, (&realm, service.as_deref(), over), scope, None)
                    .await?,
            )),
            (Some(AuthKind::Basic), Some(basic)) => Some(Credential::Basic(basic.clone())),
            _ => None,
        })
    }
}

/// The credentials a request carries.
#[derive(Clone)]
pub enum Credential {
    /// A bearer token.
    Bearer(Arc<str>),
    /// The user's name and password.
    Basic(Basic),
}

/// What a transport failure means for a request that has no HTTP answer.
pub(super) fn broken_class(broken: &Broken) -> Option<(Class, String)> {
    use super::transport::DnsFailure;
    match broken {
        Broken::Dns(DnsFailure::Temporary) => {
            Some((Class::Transient, DnsFailure::Temporary.to_string()))
        }
        Broken::Dns(DnsFailure::NoSuchHost) => {
            Some((Class::Unreachable, DnsFailure::NoSuchHost.to_string()))
        }
        Broken::Refused => Some((Class::Unreachable, "connection refused".to_owned())),
        // A broken connection, TLS or a protocol surprise: maybe the other scheme, else crane
        // (whose message is the reference) tries the check.
        Broken::Interrupted
        | Broken::TimedOut
        | Broken::Dns(DnsFailure::Other)
        | Broken::Other(_) => None,
    }
}
