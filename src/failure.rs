//! What went wrong in one step, classified from a tool's error text, and made safe to print.
//!
//! Both crane and skopeo exit 1 for every failure, so the class comes from the message.
//! Definite answers from a registry (a missing manifest, denied access) are final: they are
//! never handed to the fallback tool, which would only spend another request.

use std::fmt;

/// The class of a failed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The tag (or the manifest) does not exist.
    ManifestUnknown,
    /// The repository does not exist.
    NameUnknown,
    /// The registry wants (other) credentials. Docker Hub also says this for a missing
    /// or private repository.
    Unauthorized,
    /// Credentials were accepted but access is denied.
    Denied,
    /// The registry is rate limiting us (429).
    RateLimited,
    /// Nothing answers at that address (connection refused, no such host).
    Unreachable,
    /// A server error or a broken connection (5xx, reset, EOF, I/O timeout): may pass.
    Transient,
    /// The registry speaks plain HTTP but was reached with HTTPS.
    PlainHttp,
    /// The TLS certificate could not be verified.
    Certificate,
    /// The step ran past its timeout.
    TimedOut,
    /// The run was interrupted.
    Interrupted,
    /// Neither crane nor skopeo can run.
    NoTool,
    /// The cache holds a different digest after the copy.
    DigestDrift,
    /// Not attempted: the registry's circuit breaker tripped earlier in this run.
    Skipped,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// Whether handing the step to the fallback tool can help. Timeouts and interruptions
    /// have spent the step's budget already; the other tool would hang the same way. A
    /// registry that refuses connections or rate limits us refuses skopeo too.
    pub fn worth_fallback(self) -> bool {
        matches!(self, Self::Transient | Self::Other)
    }

    /// Whether the step may be retried after a backoff. Rate limits are not: crane and
    /// skopeo already retry a 429 themselves, and more attempts only deepen the hole.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Transient | Self::Other | Self::TimedOut)
    }

    /// Whether this failure means the registry should get no more requests in this run.
    pub fn trips_breaker(self) -> bool {
        matches!(self, Self::RateLimited | Self::Unreachable)
    }

    /// The short cause that opens the report's `error` line.
    pub fn cause(self) -> &'static str {
        match self {
            Self::ManifestUnknown => "manifest unknown",
            Self::NameUnknown => "name unknown",
            Self::Unauthorized => "unauthorized",
            Self::Denied => "denied",
            Self::RateLimited => "rate limited",
            Self::Unreachable => "unreachable",
            Self::Transient => "server error or broken connection",
            Self::PlainHttp => "registry speaks plain HTTP",
            Self::Certificate => "TLS certificate not trusted",
            Self::TimedOut => "timed out",
            Self::Interrupted => "interrupted",
            Self::NoTool => "no tool",
            Self::DigestDrift => "digest drift",
            Self::Skipped => "skipped",
            Self::Other => "failed",
        }
    }

    /// What the operator can do about it, when there is something to do.
    pub fn hint(self) -> Option<&'static str> {
        match self {
            Self::Unauthorized => Some(
                "check the credentials in $DOCKER_CONFIG/config.json (Docker Hub: key `https://index.docker.io/v1/`); Docker Hub also answers this for a missing or private repository",
            ),
            Self::PlainHttp => Some("add the registry to settings.insecure_registries"),
            Self::RateLimited => {
                Some("wait for the quota window, or authenticate to raise the limit")
            }
            Self::NoTool => Some("install crane (preferred) or skopeo on PATH"),
            _ => None,
        }
    }
}

/// Classifies a tool's error text.
pub fn classify(message: &str) -> FailureKind {
    let text = message.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|needle| text.contains(needle));
    if has(&[
        "toomanyrequests",
        "429 too many",
        "too many requests",
        "status code 429",
    ]) {
        FailureKind::RateLimited
    } else if has(&["manifest_unknown", "manifest unknown"]) {
        FailureKind::ManifestUnknown
    } else if has(&["name_unknown", "name unknown", "repository name not known"]) {
        FailureKind::NameUnknown
    } else if has(&[
        "unauthorized",
        "authentication required",
        "status code 401",
        "401 unauthorized",
    ]) {
        FailureKind::Unauthorized
    } else if has(&["denied", "status code 403", "403 forbidden"]) {
        FailureKind::Denied
    } else if has(&["server gave http response to https client"]) {
        FailureKind::PlainHttp
    } else if has(&[
        "x509:",
        "certificate signed by unknown",
        "tls: failed to verify",
    ]) {
        FailureKind::Certificate
    } else if has(&["404 not found", "status code 404", "not found"]) && has(&["/manifests/"]) {
        FailureKind::ManifestUnknown
    } else if has(&[
        "connection refused",
        "no such host",
        "network is unreachable",
        "no route to host",
    ]) {
        FailureKind::Unreachable
    } else if has(&[
        "connection reset",
        "broken pipe",
        "eof",
        "i/o timeout",
        "tls handshake timeout",
        "status code 5",
        "500 internal server error",
        "502 bad gateway",
        "503 service unavailable",
        "504 gateway timeout",
        "internal server error",
        "bad gateway",
        "service unavailable",
    ]) {
        FailureKind::Transient
    } else {
        FailureKind::Other
    }
}

/// A `Retry-After` delay in seconds, when the tool's message shows one.
pub fn retry_after(message: &str) -> Option<std::time::Duration> {
    let lower = message.to_ascii_lowercase();
    let start = lower.find("retry-after")? + "retry-after".len();
    let digits: String = lower[start..]
        .trim_start_matches(|c: char| c == ':' || c == '=' || c == '"' || c.is_whitespace())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().map(std::time::Duration::from_secs)
}

/// A failed step: its class and one line that names the cause first, already redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The class.
    pub kind: FailureKind,
    /// One line: the cause, then the tool and what it said.
    pub message: String,
}

impl Failure {
    /// A failure with evidence from a tool or from image-sync itself.
    pub fn new(kind: FailureKind, detail: impl AsRef<str>) -> Self {
        let message = format!("{}: {}", kind.cause(), detail.as_ref());
        Self {
            kind,
            message: one_line(&redact(&message)),
        }
    }

    /// A step that ran past its bound (`timed out after 300 s: crane copy ...`).
    pub fn timed_out(after: std::time::Duration, what: impl AsRef<str>) -> Self {
        let message = format!(
            "timed out after {} s: {}",
            after.as_secs_f64().ceil(),
            what.as_ref()
        );
        Self {
            kind: FailureKind::TimedOut,
            message: one_line(&redact(&message)),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = self.kind.hint() {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// At most this many characters of evidence go into a report line.
const MAX_DETAIL_CHARS: usize = 600;

fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= MAX_DETAIL_CHARS {
        joined
    } else {
        format!(
            "{}...",
            joined.chars().take(MAX_DETAIL_CHARS).collect::<String>()
        )
    }
}

/// Removes credentials a tool may echo: `user:pass@` in URLs, bearer and basic tokens,
/// and `token=`/`password=`-style parameters.
pub fn redact(text: &str) -> String {
    let mut out = redact_userinfo(text);
    for marker in ["Bearer ", "bearer ", "Basic ", "basic "] {
        out = redact_after(&out, marker, |c: char| {
            c.is_whitespace() || c == '"' || c == ','
        });
    }
    for marker in [
        "token=",
        "access_token=",
        "password=",
        "passwd=",
        "secret=",
        "\"auth\":\"",
        "\"auth\": \"",
    ] {
        out = redact_after(&out, marker, |c: char| {
            matches!(c, '&' | '"' | ' ' | ',' | ';' | '\n')
        });
    }
    out
}

/// `scheme://user:pass@host` -> `scheme://***@host`.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (before, after) = rest.split_at(pos + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"')
            .unwrap_or(after.len());
        match after[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &after[at..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

fn redact_after(text: &str, marker: &str, ends: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(marker) {
        let (before, after) = rest.split_at(pos + marker.len());
        out.push_str(before);
        let end = after.find(&ends).unwrap_or(after.len());
        if end > 0 {
            out.push_str("***");
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_answers_are_classified() {
        let cases = [
            (
                "GET http://x/v2/a/manifests/b: MANIFEST_UNKNOWN: manifest unknown; map[Tag:b]",
                FailureKind::ManifestUnknown,
            ),
            (
                "GET http://x/v2/a/manifests/b: NAME_UNKNOWN: repository name not known to registry",
                FailureKind::NameUnknown,
            ),
            (
                "GET https://x/token: UNAUTHORIZED: authentication required",
                FailureKind::Unauthorized,
            ),
            (
                "reading manifest b in x/a: denied: requested access to the resource is denied",
                FailureKind::Denied,
            ),
            (
                "GET https://x: TOOMANYREQUESTS: You have reached your pull rate limit",
                FailureKind::RateLimited,
            ),
            (
                "HEAD https://x/v2/a/manifests/b: unexpected status code 429 Too Many Requests",
                FailureKind::RateLimited,
            ),
            (
                "Get \"https://x/v2/\": dial tcp 127.0.0.1:1: connect: connection refused",
                FailureKind::Unreachable,
            ),
            (
                "Get \"https://x/v2/\": http: server gave HTTP response to HTTPS client",
                FailureKind::PlainHttp,
            ),
            (
                "x509: certificate signed by unknown authority",
                FailureKind::Certificate,
            ),
            (
                "HEAD http://x/v2/a/manifests/b: unexpected status code 404 Not Found",
                FailureKind::ManifestUnknown,
            ),
            (
                "GET http://x/v2/a/manifests/b: unexpected status code 502 Bad Gateway",
                FailureKind::Transient,
            ),
            (
                "Get \"http://x/v2/\": read tcp 127.0.0.1:2->127.0.0.1:1: read: connection reset by peer",
                FailureKind::Transient,
            ),
            (
                "GET http://x/v2/a/manifests/b: unexpected EOF",
                FailureKind::Transient,
            ),
            ("something odd", FailureKind::Other),
        ];
        for (text, kind) in cases {
            assert_eq!(classify(text), kind, "{text}");
        }
    }

    #[test]
    fn only_non_definite_failures_go_to_the_fallback() {
        assert!(!FailureKind::ManifestUnknown.worth_fallback());
        assert!(!FailureKind::Unauthorized.worth_fallback());
        assert!(!FailureKind::TimedOut.worth_fallback());
        assert!(FailureKind::Transient.worth_fallback());
        assert!(FailureKind::Other.worth_fallback());
        assert!(!FailureKind::RateLimited.worth_fallback());
        assert!(!FailureKind::Unreachable.worth_fallback());
    }

    #[test]
    fn retry_after_is_read_when_shown() {
        assert_eq!(
            retry_after("429 Too Many Requests; Retry-After: 7"),
            Some(std::time::Duration::from_secs(7))
        );
        assert_eq!(
            retry_after("retry-after=\"12\""),
            Some(std::time::Duration::from_secs(12))
        );
        assert_eq!(retry_after("no header"), None);
    }

    #[test]
    fn only_transient_failures_are_retried_and_only_refusals_and_limits_trip_the_breaker() {
        assert!(FailureKind::Transient.is_retryable() && FailureKind::TimedOut.is_retryable());
        assert!(
            !FailureKind::RateLimited.is_retryable()
                && !FailureKind::ManifestUnknown.is_retryable()
        );
        assert!(
            FailureKind::RateLimited.trips_breaker() && FailureKind::Unreachable.trips_breaker()
        );
        assert!(
            !FailureKind::Transient.trips_breaker() && !FailureKind::Unauthorized.trips_breaker()
        );
    }

    #[test]
    fn credentials_never_survive_redaction() {
        let text = "GET https://alice:s3cr3t@reg.example/v2/: Authorization: Bearer eyJhbGciOi.abc token=xyz&scope=repo password=hunter2 {\"auth\":\"YWxpY2U6czNjcjN0\"}";
        let clean = redact(text);
        for secret in [
            "alice",
            "s3cr3t",
            "eyJhbGciOi",
            "xyz",
            "hunter2",
            "YWxpY2U6czNjcjN0",
        ] {
            assert!(!clean.contains(secret), "{secret} leaked in {clean}");
        }
        assert!(clean.contains("https://***@reg.example/v2/"), "{clean}");
        assert!(clean.contains("scope=repo"), "{clean}");
        assert_eq!(redact("no secrets here"), "no secrets here");
    }

    #[test]
    fn failures_print_as_one_line_with_cause_first() {
        let failure = Failure::new(
            FailureKind::ManifestUnknown,
            "crane digest:\n  GET x: MANIFEST_UNKNOWN\n",
        );
        assert_eq!(
            failure.to_string(),
            "manifest unknown: crane digest: GET x: MANIFEST_UNKNOWN"
        );
        let long = Failure::new(FailureKind::Other, "x".repeat(5_000));
        assert!(long.message.len() < 650);
        let slow = Failure::timed_out(std::time::Duration::from_secs(300), "crane copy a b");
        assert_eq!(slow.to_string(), "timed out after 300 s: crane copy a b");
    }
}
