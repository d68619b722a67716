//! How requests reach a registry: the schemes a host is tried with, the HTTP clients
//! (certificates verified; unverified only for hosts listed as insecure; one for token
//! endpoints), their redirect rules, a DNS resolver whose failures keep their kind, what
//! went wrong before any HTTP answer (typed from error kinds, never from text), and bodies
//! read with a cap.

use std::error::Error as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::tls::{TlsPolicy, crane_speaks_http};

/// How a registry is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTPS, certificate verified.
    Https,
    /// HTTPS without certificate checks: only for hosts the user listed as insecure.
    HttpsUnverified,
    /// Plain HTTP: hosts crane speaks plain HTTP to by itself, and listed hosts.
    Http,
}

impl Scheme {
    /// The URL scheme.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https | Self::HttpsUnverified => "https",
        }
    }

    /// The schemes to try for a host crane would reach, in crane's order: a listed host is
    /// usually the plain-HTTP cache (crane's `--insecure` also allows HTTPS without
    /// verification there); HTTPS, then plain HTTP, for hosts crane speaks plain HTTP to.
    pub fn candidates(tls: &TlsPolicy, host: &str) -> Vec<Self> {
        match (tls.is_listed(host), crane_speaks_http(host)) {
            (true, _) => vec![Self::Http, Self::HttpsUnverified],
            (false, true) => vec![Self::Https, Self::Http],
            (false, false) => vec![Self::Https],
        }
    }
}

/// The HTTP clients of a run.
pub struct Transport {
    verified: reqwest::Client,
    /// For hosts listed in `insecure_registries` only: no certificate checks (as crane's
    /// `--insecure`), and redirects only to the same host.
    listed: reqwest::Client,
    /// For token endpoints: certificates verified, and no redirect to an internal address
    /// unless the realm itself is on one.
    tokens: reqwest::Client,
}

impl Transport {
    /// The clients; `None` when none can be built.
    pub fn new() -> Option<Self> {
        let resolver = Arc::new(TypedResolver);
        let builder = |redirects: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .user_agent(concat!("image-sync/", env!("CARGO_PKG_VERSION")))
                .dns_resolver(Arc::clone(&resolver))
                .redirect(redirects)
        };
        Some(Self {
            verified: builder(redirect_policy(Redirects::AnyHost)).build().ok()?,
            listed: builder(redirect_policy(Redirects::SameHost))
                .danger_accept_invalid_certs(true)
                .build()
                .ok()?,
            tokens: builder(redirect_policy(Redirects::NotInternal))
                .build()
                .ok()?,
        })
    }

    /// The client for a registry (listed as insecure or not).
    pub fn registry(&self, listed: bool) -> &reqwest::Client {
        if listed { &self.listed } else { &self.verified }
    }

    /// The client for token endpoints.
    pub fn tokens(&self) -> &reqwest::Client {
        &self.tokens
    }
}

/// Which redirects a client follows (at most 5, never from HTTPS to plain HTTP).
#[derive(Debug, Clone, Copy)]
enum Redirects {
    AnyHost,
    /// Only to the host (and port) of the first request.
    SameHost,
    /// Not to a private, loopback or link-local address unless the first request went to
    /// one (a token endpoint must not lead us into this machine's network).
    NotInternal,
}

fn redirect_policy(rule: Redirects) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let Some(first) = attempt.previous().first().cloned() else {
            return attempt.follow();
        };
        let next = attempt.url();
        let downgrade = first.scheme() == "https" && next.scheme() != "https";
        let refused = match rule {
            Redirects::AnyHost => false,
            Redirects::SameHost => {
                next.host_str() != first.host_str()
                    || next.port_or_known_default() != first.port_or_known_default()
            }
            Redirects::NotInternal => internal_url(next) && !internal_url(&first),
        };
        if attempt.previous().len() >= 5 || downgrade || refused {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

fn internal_url(url: &reqwest::Url) -> bool {
    url.host_str()
        .map(|host| host.trim_matches(['[', ']']))
        .is_some_and(|host| match host.parse::<IpAddr>() {
            Ok(address) => super::super::auth::is_internal_address(address),
            Err(_) => host.eq_ignore_ascii_case("localhost"),
        })
}

/// A name lookup that failed, with getaddrinfo's own code kept (std's resolver turns it
/// into text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFailure {
    /// `EAI_AGAIN`: a temporary failure (SERVFAIL, no server answered): may pass.
    Temporary,
    /// `EAI_NONAME` / `EAI_NODATA`: the name does not exist (NXDOMAIN) or has no address.
    NoSuchHost,
    /// Any other resolver error.
    Other,
}

impl std::fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Temporary => "temporary DNS failure (EAI_AGAIN)",
            Self::NoSuchHost => "no such host",
            Self::Other => "the name could not be resolved",
        })
    }
}

impl std::error::Error for DnsFailure {}

/// getaddrinfo, as std and hyper call it, but with the failure's kind kept as a
/// [`DnsFailure`] in the error's source chain.
struct TypedResolver;

impl reqwest::dns::Resolve for TypedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::task::spawn_blocking(move || lookup(&host))
                .await
                .map_err(|_| {
                    Box::new(DnsFailure::Other) as Box<dyn std::error::Error + Send + Sync>
                })?;
            let addresses = found
                .map_err(|failure| Box::new(failure) as Box<dyn std::error::Error + Send + Sync>)?;
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

fn lookup(host: &str) -> Result<Vec<SocketAddr>, DnsFailure> {
    use dns_lookup::LookupErrorKind;
    let found =
        dns_lookup::getaddrinfo(Some(host), None, None).map_err(|err| match err.kind() {
            LookupErrorKind::Again => DnsFailure::Temporary,
            LookupErrorKind::NoName | LookupErrorKind::NoData => DnsFailure::NoSuchHost,
            _ => DnsFailure::Other,
        })?;
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for info in found.flatten() {
        if !addresses.contains(&info.sockaddr) {
            addresses.push(info.sockaddr);
        }
    }
    if addresses.is_empty() {
        return Err(DnsFailure::NoSuchHost);
    }
    Ok(addresses)
}

/// What went wrong before a registry answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broken {
    /// No answer within the bound.
    TimedOut,
    /// The name lookup failed.
    Dns(DnsFailure),
    /// Nothing listens there (connection refused).
    Refused,
    /// The connection broke (reset, aborted, closed early): may pass.
    Interrupted,
    /// Anything else (TLS, a protocol surprise): maybe the other scheme; the text is for
    /// the message only.
    Other(String),
}

/// Types a request's failure from the error's kinds: reqwest's `is_timeout`, the resolver's
/// [`DnsFailure`], and the [`io::ErrorKind`] of an I/O error in its source chain.
pub fn classify(err: &reqwest::Error) -> Broken {
    if err.is_timeout() {
        return Broken::TimedOut;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(cause) = source {
        if let Some(dns) = cause.downcast_ref::<DnsFailure>() {
            return Broken::Dns(*dns);
        }
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::TimedOut => return Broken::TimedOut,
                io::ErrorKind::ConnectionRefused => return Broken::Refused,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => return Broken::Interrupted,
                _ => {}
            }
        }
        source = cause.source();
    }
    Broken::Other(chain_text(err))
}

/// The error and its causes, for a message.
pub fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    crate::registry::failure::redact(&text)
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum BodyError {
    /// It is larger than the cap.
    TooLarge,
    /// The transfer broke or ran past the deadline.
    Broken(Broken),
}

/// The response body, at most `cap` bytes (a larger one is refused as soon as it is seen,
/// by its `Content-Length` or while reading).
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > cap as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > cap {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(err) => return Err(BodyError::Broken(classify(&err))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_hosts_try_plain_http_first_and_public_ones_only_https() {
        let tls = TlsPolicy::new(["cache:5000".to_owned()].into_iter().collect());
        assert_eq!(
            Scheme::candidates(&tls, "cache:5000"),
            [Scheme::Http, Scheme::HttpsUnverified]
        );
        assert_eq!(
            Scheme::candidates(&tls, "127.0.0.1:5000"),
            [Scheme::Https, Scheme::Http]
        );
        assert_eq!(Scheme::candidates(&tls, "ghcr.io"), [Scheme::Https]);
    }

    #[test]
    fn localhost_resolves_through_the_typed_resolver() {
        assert!(lookup("localhost").is_ok_and(|found| !found.is_empty()));
    }
}
