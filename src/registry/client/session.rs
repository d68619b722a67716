//! One session: the requests of one operation (a check, a listing) about one repository on
//! one side, within one deadline, with the credentials found for it. Every request of the
//! client goes through [`Session::send`], which picks the scheme (probing crane's order the
//! first time a host is seen, each probe bounded so that one deadline covers them all),
//! authenticates (the auth the host asked for before, else the 401 challenge: bearer tokens
//! or basic credentials, one refresh of a refused token), counts upstream manifest
//! requests, and types what went wrong. A new operation builds its request path and reads
//! the [`Answer`]; it never repeats the dance.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};

use super::core::{AuthKind, Client, Credential, broken_class};
use super::transport::{Broken, Scheme, classify};
use crate::input::reference::Repository;
use crate::registry::auth::{self, Challenge};
use crate::registry::credentials::Basic;
use crate::registry::docker_hub;
use crate::registry::failure::{Class, Failure, Side};

/// Bound on an attempt with a scheme that may be the wrong one, while another remains.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a request (or an operation) has no usable answer.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// A failure the registry (or the network) made clear.
    Failed(Failure),
    /// Not understood here: crane may do better (`why`, for the debug log); an operation
    /// crane cannot do fails with `failure`.
    Unhandled {
        /// What was not understood.
        why: String,
        /// The failure for an operation that cannot hand over to crane.
        failure: Failure,
    },
}

impl Refusal {
    /// The failure, for an operation crane cannot take over.
    pub fn into_failure(self) -> Failure {
        match self {
            Self::Failed(failure) | Self::Unhandled { failure, .. } => failure,
        }
    }
}

/// One request of a session: built with [`Request::new`] and the builder methods.
pub struct Request<'a> {
    method: Method,
    path: &'a str,
    accept: &'a str,
    manifest: bool,
    push: bool,
    body: Option<(&'a str, &'a [u8])>,
}

impl<'a> Request<'a> {
    /// `method` on `path` (and query) under the registry's API root
    /// (`/v2/<repo>/manifests/<tag>`), accepting `accept`.
    pub fn new(method: Method, path: &'a str, accept: &'a str) -> Self {
        Self {
            method,
            path,
            accept,
            manifest: false,
            push: false,
            body: None,
        }
    }

    /// A manifest request: counted (upstream) and read for the quota headers.
    pub fn manifest(mut self) -> Self {
        self.manifest = true;
        self
    }

    /// A write: its token asks for `pull,push` on the repository.
    pub fn push(mut self) -> Self {
        self.push = true;
        self
    }

    /// A body of this content type (sent again after a 401).
    pub fn body(mut self, content_type: &'a str, bytes: &'a [u8]) -> Self {
        self.body = Some((content_type, bytes));
        self
    }
}

/// A registry's answer (any status but a 401 the session could not get past).
pub struct Answer {
    /// The response; its body is unread.
    pub response: reqwest::Response,
    /// `METHOD URL`, for messages.
    pub what: String,
    /// The URL asked.
    pub url: reqwest::Url,
}

/// How one scheme's attempt ended without an answer.
enum Attempt {
    /// Final: no other scheme can change it.
    Final(Refusal),
    /// The scheme looks wrong (a TLS or protocol error, or an HTTPS server asked in plain
    /// HTTP), or its probe bound passed: the next scheme may work.
    NextScheme(Refusal),
}

/// The requests of one operation.
pub struct Session<'a> {
    client: &'a Client,
    repository: &'a Repository,
    side: Side,
    credentials: Option<Basic>,
    deadline: Instant,
    budget: Duration,
    /// Requests the registry answered (401 challenges included).
    answered: AtomicU32,
    /// Of those, GETs.
    gets: AtomicU32,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        client: &'a Client,
        repository: &'a Repository,
        side: Side,
        credentials: Option<Basic>,
        deadline: Instant,
        budget: Duration,
    ) -> Self {
        Self {
            client,
            repository,
            side,
            credentials,
            deadline,
            budget,
            answered: AtomicU32::new(0),
            gets: AtomicU32::new(0),
        }
    }

    /// The repository.
    pub fn repository(&self) -> &Repository {
        self.repository
    }

    /// The side.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The deadline of every request.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The whole bound, for messages.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The time left.
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The user's credentials for the repository.
    pub fn credentials(&self) -> Option<&Basic> {
        self.credentials.as_ref()
    }

    /// Requests the registry answered so far.
    pub fn answered(&self) -> u32 {
        self.answered.load(Ordering::Relaxed)
    }

    /// GETs the registry answered so far.
    pub fn gets(&self) -> u32 {
        self.gets.load(Ordering::Relaxed)
    }

    /// A failure of this session's registry.
    pub fn fail(&self, class: Class, detail: impl AsRef<str>) -> Failure {
        Failure::new(class, detail).on(self.side, Some(self.repository.host()))
    }

    /// The session's deadline passed during `what`.
    pub fn timed_out(&self, what: &str) -> Failure {
        Failure::timed_out(self.budget, what).on(self.side, Some(self.repository.host()))
    }

    /// A request that got no HTTP answer.
    pub fn broken(&self, broken: &Broken, what: &str) -> Refusal {
        if *broken == Broken::TimedOut {
            return Refusal::Failed(self.timed_out(what));
        }
        match broken_class(broken) {
            Some((class, cause)) => Refusal::Failed(self.fail(class, format!("{what}: {cause}"))),
            None => {
                let text = match broken {
                    Broken::Other(text) => text.clone(),
                    Broken::Interrupted => "the connection broke".to_owned(),
                    Broken::Dns(dns) => dns.to_string(),
                    Broken::TimedOut | Broken::Refused => "no answer".to_owned(),
                };
                Refusal::Unhandled {
                    why: format!("{what}: {text}"),
                    failure: self.fail(Class::Other, format!("{what}: {text}")),
                }
            }
        }
    }

    /// The meaning of a final status other than 200; an unexpected one is unhandled
    /// (crane decides a check; a listing fails with it).
    pub fn status_refusal(&self, status: StatusCode, headers: &HeaderMap, what: &str) -> Refusal {
        let class = match status {
            StatusCode::NOT_FOUND => Class::ManifestUnknown,
            StatusCode::UNAUTHORIZED => Class::Unauthorized,
            StatusCode::FORBIDDEN => Class::Denied,
            StatusCode::TOO_MANY_REQUESTS => Class::RateLimited,
            StatusCode::REQUEST_TIMEOUT => Class::Transient,
            status if status.is_server_error() => Class::Transient,
            _ => {
                return Refusal::Unhandled {
                    why: format!("{what}: {status}"),
                    failure: self
                        .fail(Class::Other, format!("{what}: {status}"))
                        .status(Some(status.as_u16())),
                };
            }
        };
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs.min(3600)));
        let shown = retry_after
            .map(|after| format!("; Retry-After: {}", after.as_secs()))
            .unwrap_or_default();
        Refusal::Failed(
            self.fail(class, format!("{what}: {status}{shown}"))
                .status(Some(status.as_u16()))
                .retry_after(retry_after),
        )
    }

    /// Sends one request: over the scheme the host answered before, else over crane's
    /// schemes in order (each but the last bounded to at most half of what is left, and 3
    /// s, until the host answers), authenticating as the host asks.
    pub async fn send(&self, request: &Request<'_>) -> Result<Answer, Refusal> {
        let host = self.repository.host();
        let candidates = self.client.schemes_for(host);
        let count = candidates.len();
        let mut last = None;
        for (index, scheme) in candidates.into_iter().enumerate() {
            let left = self.left();
            if left.is_zero() {
                break;
            }
            let probe = (index + 1 < count).then(|| Instant::now() + (left / 2).min(PROBE_TIMEOUT));
            match self.send_over(scheme, request, probe).await {
                Ok(answer) => return Ok(answer),
                Err(Attempt::Final(refusal)) => return Err(refusal),
                Err(Attempt::NextScheme(refusal)) => last = Some(refusal),
            }
        }
        let what = format!("{} {}", request.method, request.path);
        match last {
            Some(Refusal::Unhandled { why, .. }) if Instant::now() >= self.deadline => {
                Err(Refusal::Failed(self.fail(
                    Class::TimedOut,
                    format!(
                        "{what} on {host} ran out of time after {} s ({why})",
                        self.budget.as_secs_f64().ceil()
                    ),
                )))
            }
            Some(refusal) => Err(refusal),
            None => Err(Refusal::Failed(self.timed_out(&what))),
        }
    }

    /// One request over one scheme, with the authentication rounds it may need. Until the
    /// host answers, `probe` bounds each attempt; an answer proves the scheme.
    async fn send_over(
        &self,
        scheme: Scheme,
        request: &Request<'_>,
        mut probe: Option<Instant>,
    ) -> Result<Answer, Attempt> {
        let host = self.repository.host();
        let url = format!(
            "{}://{}{}",
            scheme.prefix(),
            docker_hub::api_host(host),
            request.path
        );
        let url = reqwest::Url::parse(&url).map_err(|err| {
            Attempt::Final(Refusal::Failed(
                self.fail(Class::Other, format!("{url}: {err}")),
            ))
        })?;
        let what = format!("{} {url}", request.method);
        let client = self
            .client
            .transport
            .registry(self.client.tls.is_listed(host));
        let scope = format!(
            "repository:{}:{}",
            self.repository.path(),
            if request.push { "pull,push" } else { "pull" }
        );
        let mut credential = self
            .client
            .known_auth(self, &scope)
            .await
            .map_err(Attempt::Final)?;
        let mut refreshed = false;
        // At most: the request, a token (re)fetch or basic credentials and the request
        // again, one refresh of a refused token and the request again.
        for _ in 0..3 {
            let until = probe.unwrap_or(self.deadline).min(self.deadline);
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let timed_out = Refusal::Failed(self.timed_out(&what));
                return Err(if probe.is_some() {
                    Attempt::NextScheme(timed_out)
                } else {
                    Attempt::Final(timed_out)
                });
            }
            let mut builder = client
                .request(request.method.clone(), url.clone())
                .header(ACCEPT, request.accept)
                .timeout(left);
            if let Some((content_type, bytes)) = request.body {
                builder = builder
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .body(bytes.to_vec());
            }
            builder = match &credential {
                Some(Credential::Bearer(token)) => builder.bearer_auth(token),
                Some(Credential::Basic(basic)) => {
                    builder.basic_auth(&basic.username, Some(&basic.password))
                }
                None => builder,
            };
            let response = match builder.send().await {
                Ok(response) => response,
                Err(err) => {
                    let broken = classify(&err);
                    let refusal = self.broken(&broken, &what);
                    return Err(match (&broken, probe.is_some()) {
                        (Broken::TimedOut, true) => Attempt::NextScheme(refusal),
                        (_, _) if broken_class(&broken).is_some() => Attempt::Final(refusal),
                        (Broken::TimedOut, false) => Attempt::Final(refusal),
                        _ => Attempt::NextScheme(refusal),
                    });
                }
            };
            let status = response.status();
            // Go's HTTPS server answers a plain-HTTP request with a bare 400.
            if scheme == Scheme::Http && status == StatusCode::BAD_REQUEST && probe.is_some() {
                return Err(Attempt::NextScheme(Refusal::Unhandled {
                    why: format!("{what}: 400 (an HTTPS server?)"),
                    failure: self.fail(Class::Other, format!("{what}: 400 (an HTTPS server?)")),
                }));
            }
            // An answer proves the scheme: no more probing, and later requests use it.
            probe = None;
            self.client.learn(host, |facts| facts.scheme = Some(scheme));
            self.answered.fetch_add(1, Ordering::Relaxed);
            let get = request.method == Method::GET;
            if get {
                self.gets.fetch_add(1, Ordering::Relaxed);
            }
            if request.manifest && self.side == Side::Upstream {
                self.client.account(host, get, status, response.headers());
            }
            if status != StatusCode::UNAUTHORIZED {
                return Ok(Answer {
                    response,
                    what,
                    url,
                });
            }
            let answered = self
                .answer_challenge(
                    (scheme, &scope),
                    response.headers(),
                    credential.as_ref(),
                    &mut refreshed,
                    &what,
                )
                .await;
            credential = Some(answered.map_err(Attempt::Final)?);
        }
        Err(Attempt::Final(Refusal::Unhandled {
            why: format!("{what}: no answer after authenticating"),
            failure: self
                .fail(
                    Class::Unauthorized,
                    format!("{what}: 401 Unauthorized after authenticating"),
                )
                .status(Some(401)),
        }))
    }

    /// The credentials that answer a 401's challenge, or why there are none.
    async fn answer_challenge(
        &self,
        (scheme, scope): (Scheme, &str),
        headers: &HeaderMap,
        sent: Option<&Credential>,
        refreshed: &mut bool,
        what: &str,
    ) -> Result<Credential, Refusal> {
        let host = self.repository.host();
        let unauthorized = |why: &str| Refusal::Unhandled {
            why: format!("{what}: {why}"),
            failure: self
                .fail(Class::Unauthorized, format!("{what}: 401 Unauthorized"))
                .status(Some(401)),
        };
        let after_authenticating = || {
            Refusal::Failed(
                self.fail(
                    Class::Unauthorized,
                    format!("{what}: 401 Unauthorized after authenticating"),
                )
                .status(Some(401)),
            )
        };
        match auth::challenge(headers) {
            Some(Challenge::Bearer { realm, service }) => {
                if *refreshed {
                    // A fresh token was refused too: no credentials we have open it. crane
                    // may know better (a helper, an identity).
                    return Err(if self.credentials.is_none() {
                        unauthorized("401 with an anonymous token")
                    } else {
                        after_authenticating()
                    });
                }
                *refreshed = true;
                self.client.learn(host, |facts| {
                    facts.auth = Some(AuthKind::Bearer {
                        realm: realm.clone(),
                        service: service.clone(),
                        over: scheme,
                    });
                });
                let stale = match sent {
                    Some(Credential::Bearer(token)) => Some(Arc::clone(token)),
                    _ => None,
                };
                let token = self
                    .client
                    .bearer_token(
                        self,
                        (&realm, service.as_deref(), scheme),
                        scope,
                        stale.as_deref(),
                    )
                    .await?;
                Ok(Credential::Bearer(token))
            }
            Some(Challenge::Basic) => match &self.credentials {
                None => Err(unauthorized(
                    "basic auth asked and no credentials found here",
                )),
                Some(_) if matches!(sent, Some(Credential::Basic(_))) => {
                    Err(after_authenticating())
                }
                Some(basic) => {
                    self.client
                        .learn(host, |facts| facts.auth = Some(AuthKind::Basic));
                    Ok(Credential::Basic(basic.clone()))
                }
            },
            None => Err(unauthorized("401 without a usable challenge")),
        }
    }
}
