//! image-sync's own registry client: the digest of a tag by one manifest HEAD over a
//! pooled connection, with the registry's token or basic auth, and no child process.
//!
//! A HEAD costs no Docker Hub pull quota. Per host the client remembers the scheme that
//! answered, the kind of auth it asked for (so a new repository fetches its token
//! without a 401 first) and whether its HEAD carries `Docker-Content-Digest`; where it
//! does not, the check is a manifest GET, counted as a pull and warned about once per
//! host. Whatever it does not understand (an unexpected status, a TLS surprise, a 401 on
//! a host it has no credentials for) it hands to crane with [`Checked::Delegate`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap, RETRY_AFTER};

use super::auth::{self, Challenge, TokenResponse, Tokens};
use super::credentials::{Basic, Keyring, Lookup};
use super::failure::{Class, Failure, Side};
use super::quota::{self, Ledger};
use crate::input::reference::{DOCKER_HUB, Digest, Repository, Tag};
use crate::tls::{TlsPolicy, crane_speaks_http};

mod referrers;
pub use referrers::{Listed, Referrer};

/// Every manifest type a tag may point at; the registry answers with the stored one and
/// its digest, without conversion.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Bound on an attempt with a scheme that may be the wrong one, while another remains.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A manifest larger than this is not one (the check GETs manifests only).
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The answer of one check.
#[derive(Debug)]
pub enum Checked {
    /// The registry's digest for the tag, and the manifest GETs (pulls) it cost.
    Digest {
        /// The digest.
        digest: Digest,
        /// Manifest GETs sent (0 when a HEAD answered).
        gets: u32,
        /// How many manifests an index lists (0 for an image manifest), when the body was
        /// read.
        children: Option<u32>,
    },
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

/// The auth a host asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthKind {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// What the client learnt about a host during this run.
#[derive(Debug, Clone, Default)]
struct HostFacts {
    scheme: Option<Scheme>,
    auth: Option<AuthKind>,
    /// Its manifest HEAD has no `Docker-Content-Digest`: checks there are GETs.
    head_gives_no_digest: bool,
}

/// One attempt with one scheme.
enum Attempt {
    /// The registry answered (or clearly did not): final.
    Answer(Checked),
    /// The scheme looks wrong (a TLS or protocol error, or an HTTPS server asked in plain
    /// HTTP): the next scheme may work.
    WrongScheme(Checked),
}

/// What a check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The digest: a HEAD (a GET only where HEAD gives none).
    Digest,
    /// The manifest itself: a GET (for a cache, where GETs cost no quota), so that the
    /// children of an index are known.
    Manifest,
    /// The response headers of a HEAD (the quota): never a GET.
    Headers,
}

/// The credentials a request carries.
enum Auth {
    Bearer(String),
    Basic(Basic),
}

/// The client shared by every check of a run.
pub struct Client {
    client: reqwest::Client,
    /// For hosts listed in `insecure_registries` only: no certificate checks (as crane's
    /// `--insecure`), and redirects only to the same host.
    listed_client: reqwest::Client,
    keyring: Arc<Keyring>,
    ledger: Arc<Ledger>,
    tls: TlsPolicy,
    tokens: Tokens,
    hosts: Mutex<HashMap<String, HostFacts>>,
}

/// One check in progress: what every request of it shares.
struct Check<'a> {
    repository: &'a Repository,
    tag: &'a Tag,
    side: Side,
    credentials: Option<&'a Basic>,
    /// The whole check's bound, for messages.
    budget: Duration,
    want: Want,
}

impl Check<'_> {
    fn fail(&self, class: Class, detail: impl AsRef<str>) -> Failure {
        Failure::new(class, detail).on(self.side, Some(self.repository.host()))
    }
}

impl Client {
    /// A client; `None` when no HTTP client can be built (crane does every check then).
    pub fn new(tls: TlsPolicy, keyring: Arc<Keyring>, ledger: Arc<Ledger>) -> Option<Self> {
        let builder = |same_host_redirects: bool| {
            reqwest::Client::builder()
                .user_agent(concat!("image-sync/", env!("CARGO_PKG_VERSION")))
                .redirect(redirect_policy(same_host_redirects))
        };
        Some(Self {
            client: builder(false).build().ok()?,
            listed_client: builder(true)
                .danger_accept_invalid_certs(true)
                .build()
                .ok()?,
            keyring,
            ledger,
            tls,
            tokens: Tokens::default(),
            hosts: Mutex::new(HashMap::new()),
        })
    }

    fn facts(&self, host: &str) -> HostFacts {
        self.hosts
            .lock()
            .map(|hosts| hosts.get(host).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    fn learn(&self, host: &str, learn: impl FnOnce(&mut HostFacts)) {
        if let Ok(mut hosts) = self.hosts.lock() {
            learn(hosts.entry(host.to_owned()).or_default());
        }
    }

    /// Reads the digest of `repository:tag` within `budget`: one HEAD (plus a token
    /// request the first time a repository needs one), or one GET on a host whose HEAD
    /// gives no digest or when `want` is the manifest. The scheme follows crane: HTTPS,
    /// with plain HTTP as well for the hosts crane speaks it to and those listed as
    /// insecure.
    pub async fn digest(
        &self,
        repository: &Repository,
        tag: &Tag,
        side: Side,
        budget: Duration,
        want: Want,
    ) -> Checked {
        let deadline = Instant::now() + budget;
        let host = repository.host();
        let credentials = match self.keyring.lookup(host, repository.path()).await {
            Lookup::Delegate => {
                return Checked::Delegate(
                    "credentials need crane (identity token, or a config it must judge)".into(),
                );
            }
            Lookup::Anonymous => None,
            Lookup::Basic(basic) => Some(basic),
        };
        let check = Check {
            repository,
            tag,
            side,
            credentials: credentials.as_ref(),
            budget,
            want,
        };
        let candidates = self.schemes_for(host);
        let count = candidates.len();
        let mut outcome = Checked::Delegate(format!("no scheme reached {host}"));
        for (index, scheme) in candidates.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // While another scheme remains, a server that hangs on this one (a plain-HTTP
            // server waiting out a TLS hello) gets a short bound (at most half of what is
            // left), then the next scheme: one deadline covers them all.
            let probing = index + 1 < count;
            let limit = if probing {
                (left / 2).min(PROBE_TIMEOUT)
            } else {
                left
            };
            match self.check(scheme, &check, Instant::now() + limit).await {
                Attempt::Answer(Checked::Failed(failure))
                    if probing && failure.class == Class::TimedOut =>
                {
                    outcome = Checked::Failed(failure);
                }
                Attempt::Answer(checked) => {
                    self.learn(host, |facts| facts.scheme = Some(scheme));
                    return checked;
                }
                Attempt::WrongScheme(checked) => outcome = checked,
            }
        }
        match outcome {
            Checked::Delegate(why) if Instant::now() >= deadline => Checked::Failed(check.fail(
                Class::TimedOut,
                format!(
                    "the digest check of {} ran out of time ({why})",
                    repository.with_tag(tag)
                ),
            )),
            outcome => outcome,
        }
    }

    /// The schemes to try for a host, in order.
    fn schemes_for(&self, host: &str) -> Vec<Scheme> {
        if let Some(known) = self.facts(host).scheme {
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

    /// The HTTP client for a host and its API base URL (`https://registry-1.docker.io` for
    /// Docker Hub) over `scheme`.
    fn endpoint(&self, scheme: Scheme, host: &str) -> (&reqwest::Client, String) {
        let api_host = if host == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            host
        };
        let client = if self.tls.is_listed(host) {
            &self.listed_client
        } else {
            &self.client
        };
        let prefix = if scheme == Scheme::Http {
            "http"
        } else {
            "https"
        };
        (client, format!("{prefix}://{api_host}"))
    }

    /// The credentials for a request to a host whose auth kind this run already learnt:
    /// a token (not `stale`) where it asked for bearer tokens, the user's basic credentials
    /// where it asked for those, else none (the first request finds out).
    async fn known_auth(
        &self,
        scheme: Scheme,
        check: &Check<'_>,
        stale: Option<&str>,
        deadline: Instant,
    ) -> Result<Option<Auth>, Checked> {
        let known = self.facts(check.repository.host()).auth;
        Ok(match (known, check.credentials) {
            (Some(AuthKind::Bearer { realm, service }), _) => Some(Auth::Bearer(
                self.token(scheme, check, &realm, service.as_deref(), stale, deadline)
                    .await?,
            )),
            (Some(AuthKind::Basic), Some(basic)) => Some(Auth::Basic(basic.clone())),
            _ => None,
        })
    }

    /// One check over one scheme, with the authentication rounds it may need.
    async fn check(&self, scheme: Scheme, check: &Check<'_>, deadline: Instant) -> Attempt {
        let (repository, tag) = (check.repository, check.tag);
        let host = repository.host();
        let (client, base) = self.endpoint(scheme, host);
        let url = format!("{base}/v2/{}/manifests/{tag}", repository.path());
        let facts = self.facts(host);
        let mut use_get = check.want == Want::Manifest
            || (facts.head_gives_no_digest && check.want == Want::Digest);
        let mut auth = match self.known_auth(scheme, check, None, deadline).await {
            Ok(auth) => auth,
            Err(checked) => return Attempt::Answer(checked),
        };
        let mut refreshed = false;
        let mut gets = 0;
        // At most: the request, a token (re)fetch and the request again, a switch to GET.
        for _ in 0..4 {
            let method = if use_get {
                reqwest::Method::GET
            } else {
                reqwest::Method::HEAD
            };
            let what = format!("{method} {url}");
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Attempt::Answer(Checked::Failed(
                    Failure::timed_out(check.budget, &what).on(check.side, Some(host)),
                ));
            }
            let mut request = client
                .request(method.clone(), &url)
                .header(ACCEPT, MANIFEST_TYPES)
                .timeout(left);
            request = authorize(request, auth.as_ref());
            let response = match request.send().await {
                Ok(response) => response,
                Err(err) => return transport_failure(&err, &what, check),
            };
            if use_get {
                gets += 1;
            }
            let status = response.status();
            self.account(check, use_get, status, response.headers());
            // Go's HTTPS server answers a plain-HTTP request with a bare 400.
            if scheme == Scheme::Http && status == StatusCode::BAD_REQUEST {
                return Attempt::WrongScheme(Checked::Delegate(format!(
                    "{what}: 400 (an HTTPS server?)"
                )));
            }
            match status {
                StatusCode::OK => {
                    let header = response
                        .headers()
                        .get("docker-content-digest")
                        .and_then(|value| value.to_str().ok())
                        .and_then(Digest::parse);
                    if !use_get {
                        if let Some(digest) = header {
                            return Attempt::Answer(Checked::Digest {
                                digest,
                                gets,
                                children: None,
                            });
                        }
                        if check.want == Want::Headers {
                            return Attempt::Answer(Checked::Delegate(format!(
                                "{what}: no Docker-Content-Digest (headers read)"
                            )));
                        }
                        self.no_digest_on_head(host);
                        use_get = true;
                        continue;
                    }
                    return Attempt::Answer(match read_manifest(response).await {
                        Some(body) => {
                            let digest = Digest::of_bytes(&body);
                            match header {
                                Some(stated) if stated != digest => Checked::Failed(check.fail(
                                    Class::DigestDrift,
                                    format!("{what}: the registry says it holds {stated}, but serves a manifest whose digest is {digest}"),
                                )),
                                _ => Checked::Digest {
                                    digest,
                                    gets,
                                    children: Some(children_of(&body)),
                                },
                            }
                        }
                        None => {
                            Checked::Delegate(format!("{what}: the manifest could not be read"))
                        }
                    });
                }
                StatusCode::UNAUTHORIZED => {
                    let challenge = auth::challenge(response.headers());
                    let sent_token = match &auth {
                        Some(Auth::Bearer(token)) => Some(token.clone()),
                        _ => None,
                    };
                    let final_401 = || {
                        Attempt::Answer(Checked::Failed(
                            check
                                .fail(
                                    Class::Unauthorized,
                                    format!("{what}: 401 Unauthorized after authenticating"),
                                )
                                .status(Some(401)),
                        ))
                    };
                    match challenge {
                        Some(Challenge::Bearer { realm, service }) => {
                            if refreshed {
                                // A fresh token was refused too: no credentials we have
                                // open it. crane may know better (a helper, an identity).
                                return if check.credentials.is_none() {
                                    Attempt::Answer(Checked::Delegate(format!(
                                        "{what}: 401 with an anonymous token"
                                    )))
                                } else {
                                    final_401()
                                };
                            }
                            refreshed = true;
                            self.learn(host, |facts| {
                                facts.auth = Some(AuthKind::Bearer {
                                    realm: realm.clone(),
                                    service: service.clone(),
                                });
                            });
                            match self
                                .token(
                                    scheme,
                                    check,
                                    &realm,
                                    service.as_deref(),
                                    sent_token.as_deref(),
                                    deadline,
                                )
                                .await
                            {
                                Ok(token) => auth = Some(Auth::Bearer(token)),
                                Err(checked) => return Attempt::Answer(checked),
                            }
                        }
                        Some(Challenge::Basic) => match check.credentials {
                            None => {
                                return Attempt::Answer(Checked::Delegate(format!(
                                    "{what}: basic auth asked and no credentials found here"
                                )));
                            }
                            Some(_) if matches!(auth, Some(Auth::Basic(_))) => return final_401(),
                            Some(basic) => {
                                self.learn(host, |facts| facts.auth = Some(AuthKind::Basic));
                                auth = Some(Auth::Basic(basic.clone()));
                            }
                        },
                        None => {
                            return Attempt::Answer(Checked::Delegate(format!(
                                "{what}: 401 without a usable challenge"
                            )));
                        }
                    }
                }
                _ => {
                    return Attempt::Answer(status_answer(
                        status,
                        response.headers(),
                        &what,
                        check,
                    ));
                }
            }
        }
        Attempt::Answer(Checked::Delegate(format!(
            "{url}: no answer after authenticating"
        )))
    }

    /// Counts an upstream manifest request and reads the quota its answer reports.
    fn account(&self, check: &Check<'_>, get: bool, status: StatusCode, headers: &HeaderMap) {
        if check.side != Side::Upstream {
            return;
        }
        let registry = check.repository.host();
        self.ledger.count(registry, u32::from(!get), u32::from(get));
        if let Some((limit, source)) = quota::rate_limit(headers) {
            self.ledger.observe(registry, limit, source);
            if status == StatusCode::TOO_MANY_REQUESTS {
                self.ledger.exhausted(registry);
            }
        }
    }

    fn no_digest_on_head(&self, host: &str) {
        let mut first = false;
        self.learn(host, |facts| {
            first = !facts.head_gives_no_digest;
            facts.head_gives_no_digest = true;
        });
        if first {
            tracing::warn!(
                registry = %host,
                "the registry answers manifest HEAD requests without Docker-Content-Digest: every digest check there is a manifest GET, which counts as a pull on registries that meter them"
            );
        }
    }

    /// A token for the check's repository (not `stale`), fetched from a realm that is
    /// safe to follow.
    async fn token(
        &self,
        scheme: Scheme,
        check: &Check<'_>,
        realm: &str,
        service: Option<&str>,
        stale: Option<&str>,
        deadline: Instant,
    ) -> Result<String, Checked> {
        let host = check.repository.host();
        auth::realm_allowed(realm, host, scheme == Scheme::Http)
            .map_err(|why| Checked::Failed(check.fail(Class::Denied, why)))?;
        let scope = format!("repository:{}:pull", check.repository.path());
        self.tokens
            .get(host, check.repository.path(), stale, || {
                self.fetch_token(realm, service, &scope, check, deadline)
            })
            .await
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        check: &Check<'_>,
        deadline: Instant,
    ) -> Result<(String, Option<Duration>), Checked> {
        let mut query = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let mut request = self.client.get(realm).query(&query).timeout(left);
        if let Some(basic) = check.credentials {
            request = request.basic_auth(&basic.username, Some(&basic.password));
        }
        let what = format!("GET {realm} (token)");
        let response =
            request
                .send()
                .await
                .map_err(|err| match transport_failure(&err, &what, check) {
                    Attempt::Answer(checked) | Attempt::WrongScheme(checked) => checked,
                })?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(status_answer(status, response.headers(), &what, check));
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|_| Checked::Delegate(format!("{what}: the token response is not JSON")))?;
        body.into_token()
            .ok_or_else(|| Checked::Delegate(format!("{what}: no token in the response")))
    }
}

/// Upper bound on the pages of one tag listing: a registry whose `Link` never ends must
/// not hold the run.
pub const MAX_TAG_PAGES: u32 = 1000;

/// One tag listing: the tags (or why not), and the HTTP requests it took (token fetches
/// excluded), which the report counts.
#[derive(Debug)]
pub struct TagList {
    /// Every tag of every page, in the registry's order.
    pub tags: Result<Vec<String>, Failure>,
    /// `tags/list` requests the registry answered, 401 challenges included.
    pub requests: u32,
}

impl Client {
    /// Lists the tags of `repository` upstream: `GET /v2/<path>/tags/list?n=<page>`, then
    /// every `Link: <...>; rel="next"` page, with the auth and tokens of a manifest check
    /// (a pull-scoped token on Docker Hub; a listing is not a pull), within `budget`.
    pub async fn list_tags(&self, repository: &Repository, page: u32, budget: Duration) -> TagList {
        let deadline = Instant::now() + budget;
        let host = repository.host();
        let placeholder = Tag::parse("latest").ok();
        let fail = |class: Class, detail: String| {
            Failure::new(class, detail).on(Side::Upstream, Some(host))
        };
        let Some(tag) = placeholder.as_ref() else {
            return TagList {
                tags: Err(fail(Class::Other, "internal: no placeholder tag".into())),
                requests: 0,
            };
        };
        let credentials = match self.keyring.lookup(host, repository.path()).await {
            Lookup::Delegate => {
                return TagList {
                    tags: Err(fail(
                        Class::Unauthorized,
                        format!(
                            "listing the tags of {repository}: its credentials need crane (an identity token or a credential helper it must judge), which cannot list tags for image-sync; name the tags with `tag`"
                        ),
                    )),
                    requests: 0,
                };
            }
            Lookup::Anonymous => None,
            Lookup::Basic(basic) => Some(basic),
        };
        let check = Check {
            repository,
            tag,
            side: Side::Upstream,
            credentials: credentials.as_ref(),
            budget,
            want: Want::Headers,
        };
        let mut requests = 0;
        let mut last = None;
        for scheme in self.schemes_for(host) {
            match self
                .list_pages(scheme, &check, page, deadline, &mut requests)
                .await
            {
                Ok(tags) => {
                    self.learn(host, |facts| facts.scheme = Some(scheme));
                    return TagList {
                        tags: Ok(tags),
                        requests,
                    };
                }
                Err((wrong_scheme, failure)) => {
                    last = Some(failure);
                    if !wrong_scheme {
                        break;
                    }
                }
            }
        }
        TagList {
            tags: Err(last
                .unwrap_or_else(|| fail(Class::Unreachable, format!("no scheme reached {host}")))),
            requests,
        }
    }

    /// Every page over one scheme; the error says whether another scheme may work.
    async fn list_pages(
        &self,
        scheme: Scheme,
        check: &Check<'_>,
        page: u32,
        deadline: Instant,
        requests: &mut u32,
    ) -> Result<Vec<String>, (bool, Failure)> {
        let host = check.repository.host();
        let (client, base) = self.endpoint(scheme, host);
        let first = format!("{base}/v2/{}/tags/list?n={page}", check.repository.path());
        let mut url = reqwest::Url::parse(&first)
            .map_err(|err| (false, check.fail(Class::Other, format!("{first}: {err}"))))?;
        let origin = (
            url.scheme().to_owned(),
            url.host_str().map(str::to_owned),
            url.port_or_known_default(),
        );
        let facts = self.facts(host);
        let mut auth = match (&facts.auth, check.credentials) {
            (Some(AuthKind::Bearer { realm, service }), _) => Some(Auth::Bearer(
                self.token(scheme, check, realm, service.as_deref(), None, deadline)
                    .await
                    .map_err(|checked| (false, listing_failure(checked, check)))?,
            )),
            (Some(AuthKind::Basic), Some(basic)) => Some(Auth::Basic(basic.clone())),
            _ => None,
        };
        let mut tags = Vec::new();
        let mut pages = 0;
        let mut refreshed = false;
        loop {
            let what = format!("GET {url}");
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err((
                    false,
                    Failure::timed_out(check.budget, &what).on(Side::Upstream, Some(host)),
                ));
            }
            let mut request = client
                .get(url.clone())
                .header(ACCEPT, "application/json")
                .timeout(left);
            request = authorize(request, auth.as_ref());
            let response = match request.send().await {
                Ok(response) => {
                    // Counted when answered: a TLS hello to a plain-HTTP port is no request.
                    *requests += 1;
                    response
                }
                Err(err) => {
                    return Err(match transport_failure(&err, &what, check) {
                        Attempt::Answer(checked) => (false, listing_failure(checked, check)),
                        Attempt::WrongScheme(checked) => (true, listing_failure(checked, check)),
                    });
                }
            };
            let status = response.status();
            if scheme == Scheme::Http && status == StatusCode::BAD_REQUEST {
                return Err((
                    true,
                    check.fail(Class::Other, format!("{what}: 400 (an HTTPS server?)")),
                ));
            }
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                refreshed = true;
                let sent = match &auth {
                    Some(Auth::Bearer(token)) => Some(token.clone()),
                    _ => None,
                };
                auth = match (auth::challenge(response.headers()), check.credentials) {
                    (Some(Challenge::Bearer { realm, service }), _) => {
                        self.learn(host, |facts| {
                            facts.auth = Some(AuthKind::Bearer {
                                realm: realm.clone(),
                                service: service.clone(),
                            });
                        });
                        Some(Auth::Bearer(
                            self.token(
                                scheme,
                                check,
                                &realm,
                                service.as_deref(),
                                sent.as_deref(),
                                deadline,
                            )
                            .await
                            .map_err(|checked| (false, listing_failure(checked, check)))?,
                        ))
                    }
                    (Some(Challenge::Basic), Some(basic)) => {
                        self.learn(host, |facts| facts.auth = Some(AuthKind::Basic));
                        Some(Auth::Basic(basic.clone()))
                    }
                    _ => {
                        return Err((
                            false,
                            check
                                .fail(Class::Unauthorized, format!("{what}: 401 Unauthorized"))
                                .status(Some(401)),
                        ));
                    }
                };
                continue;
            }
            if status != StatusCode::OK {
                let answer = status_answer(status, response.headers(), &what, check);
                return Err((false, listing_failure(answer, check)));
            }
            refreshed = false;
            let next = next_link(response.headers(), &url);
            #[derive(serde::Deserialize)]
            struct Page {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let body: Page = response.json().await.map_err(|err| {
                (
                    false,
                    check.fail(
                        Class::Other,
                        format!("{what}: the tag list is not JSON: {err}"),
                    ),
                )
            })?;
            tags.extend(body.tags.unwrap_or_default());
            pages += 1;
            match next {
                None => return Ok(tags),
                Some(_) if pages >= MAX_TAG_PAGES => {
                    return Err((
                        false,
                        check.fail(
                            Class::Other,
                            format!("{what}: more than {MAX_TAG_PAGES} pages of tags"),
                        ),
                    ));
                }
                Some(next) => {
                    let same = (
                        next.scheme().to_owned(),
                        next.host_str().map(str::to_owned),
                        next.port_or_known_default(),
                    );
                    if same != origin {
                        return Err((false, check.fail(Class::Denied, format!("{what}: the next page `{next}` is on another host; not followed"))));
                    }
                    url = next;
                }
            }
        }
    }
}

/// A request with the credentials of `auth`, if any.
fn authorize(request: reqwest::RequestBuilder, auth: Option<&Auth>) -> reqwest::RequestBuilder {
    match auth {
        Some(Auth::Bearer(token)) => request.bearer_auth(token),
        Some(Auth::Basic(basic)) => request.basic_auth(&basic.username, Some(&basic.password)),
        None => request,
    }
}

/// A listing's answer as a failure (a check hands over to crane; a listing cannot).
fn listing_failure(checked: Checked, check: &Check<'_>) -> Failure {
    match checked {
        Checked::Failed(failure) => failure,
        Checked::Delegate(why) => check.fail(Class::Other, format!("listing tags: {why}")),
        Checked::Digest { .. } => {
            check.fail(Class::Other, "listing tags: unexpected digest answer")
        }
    }
}

/// The `rel="next"` target of a `Link` header, resolved against the page's URL.
pub fn next_link(headers: &HeaderMap, base: &reqwest::Url) -> Option<reqwest::Url> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().split_once(';')?;
            let is_next = params.split(';').any(|param| {
                param.trim().replace(' ', "") == "rel=\"next\"" || param.trim() == "rel=next"
            });
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            is_next.then(|| base.join(target).ok()).flatten()
        })
}

/// Follows at most 5 redirects, never from HTTPS to plain HTTP, and for a listed
/// (insecure) host only to that same host.
fn redirect_policy(same_host_only: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let Some(first) = attempt.previous().first().cloned() else {
            return attempt.follow();
        };
        let next = attempt.url();
        let downgrade = first.scheme() == "https" && next.scheme() != "https";
        let other_host = next.host_str() != first.host_str()
            || next.port_or_known_default() != first.port_or_known_default();
        if attempt.previous().len() >= 5 || downgrade || (same_host_only && other_host) {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

/// How many manifests an index lists (0 for an image manifest or anything else).
fn children_of(manifest: &[u8]) -> u32 {
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Index>(manifest)
        .map(|index| u32::try_from(index.manifests.len()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

async fn read_manifest(response: reqwest::Response) -> Option<Vec<u8>> {
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_MANIFEST_BYTES {
            return None;
        }
    }
    Some(body)
}

/// The meaning of a final status; an unexpected one goes to crane.
fn status_answer(
    status: StatusCode,
    headers: &HeaderMap,
    what: &str,
    check: &Check<'_>,
) -> Checked {
    let class = match status {
        StatusCode::NOT_FOUND => Class::ManifestUnknown,
        StatusCode::UNAUTHORIZED => Class::Unauthorized,
        StatusCode::FORBIDDEN => Class::Denied,
        StatusCode::TOO_MANY_REQUESTS => Class::RateLimited,
        StatusCode::REQUEST_TIMEOUT => Class::Transient,
        status if status.is_server_error() => Class::Transient,
        _ => return Checked::Delegate(format!("{what}: {status}")),
    };
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
        .map(Duration::from_secs);
    let shown = retry_after
        .map(|after| format!("; Retry-After: {}", after.as_secs()))
        .unwrap_or_default();
    Checked::Failed(
        check
            .fail(class, format!("{what}: {status}{shown}"))
            .status(Some(status.as_u16()))
            .retry_after(retry_after),
    )
}

/// Connection-level errors: refusals, NXDOMAIN and timeouts are answers, a temporary DNS
/// failure is transient; anything else (TLS, a protocol surprise) may mean the other
/// scheme, and otherwise goes to crane, whose message is the reference.
fn transport_failure(err: &reqwest::Error, what: &str, check: &Check<'_>) -> Attempt {
    let host = Some(check.repository.host());
    if err.is_timeout() {
        return Attempt::Answer(Checked::Failed(
            Failure::timed_out(check.budget, what).on(check.side, host),
        ));
    }
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(cause) = source {
        chain.push_str(&cause.to_string());
        chain.push_str(": ");
        source = cause.source();
    }
    let lower = chain.to_ascii_lowercase();
    let answer = |class: Class, cause: &str| {
        Attempt::Answer(Checked::Failed(
            check.fail(class, format!("{what}: {cause}")),
        ))
    };
    if err.is_connect() {
        if lower.contains("temporary failure in name resolution") || lower.contains("try again") {
            return answer(Class::Transient, "temporary DNS failure (EAI_AGAIN)");
        }
        if lower.contains("dns error") {
            return answer(Class::Unreachable, "no such host");
        }
        if lower.contains("connection refused") {
            return answer(Class::Unreachable, "connection refused");
        }
    }
    Attempt::WrongScheme(Checked::Delegate(format!(
        "{what}: {}",
        super::failure::redact(&chain)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_of<'a>(repository: &'a Repository, tag: &'a Tag) -> Check<'a> {
        Check {
            repository,
            tag,
            side: Side::Upstream,
            credentials: None,
            budget: Duration::from_secs(1),
            want: Want::Digest,
        }
    }

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        let base = reqwest::Url::parse("http://127.0.0.1:5000/v2/a/tags/list?n=10").expect("url");
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::LINK,
            "</v2/a/tags/list?last=t9&n=10>; rel=\"next\""
                .parse()
                .expect("header"),
        );
        assert_eq!(
            next_link(&headers, &base).map(|url| url.to_string()),
            Some("http://127.0.0.1:5000/v2/a/tags/list?last=t9&n=10".to_owned())
        );
        headers.insert(
            reqwest::header::LINK,
            "<http://x/other>; rel=\"prev\"".parse().expect("header"),
        );
        assert_eq!(next_link(&headers, &base), None);
        assert_eq!(next_link(&HeaderMap::new(), &base), None);
    }

    #[test]
    fn statuses_map_to_typed_failures() {
        let repository = Repository::new("reg.example", "a");
        let tag = Tag::parse("1").expect("tag");
        let check = check_of(&repository, &tag);
        let headers = HeaderMap::new();
        let class = |status: u16| match status_answer(
            StatusCode::from_u16(status).expect("status"),
            &headers,
            "HEAD x",
            &check,
        ) {
            Checked::Failed(failure) => {
                assert_eq!(failure.status, Some(status));
                assert_eq!(failure.side, Some(Side::Upstream));
                assert_eq!(failure.host.as_deref(), Some("reg.example"));
                Some(failure.class)
            }
            _ => None,
        };
        assert_eq!(class(404), Some(Class::ManifestUnknown));
        assert_eq!(class(401), Some(Class::Unauthorized));
        assert_eq!(class(403), Some(Class::Denied));
        assert_eq!(class(429), Some(Class::RateLimited));
        assert_eq!(class(503), Some(Class::Transient));
        assert_eq!(class(418), None, "unexpected: handed to crane");
        let mut limited = HeaderMap::new();
        limited.insert(RETRY_AFTER, "17".parse().expect("header"));
        match status_answer(StatusCode::TOO_MANY_REQUESTS, &limited, "HEAD x", &check) {
            Checked::Failed(failure) => {
                assert_eq!(failure.retry_after, Some(Duration::from_secs(17)))
            }
            other => panic!("{other:?}"),
        }
    }
}
