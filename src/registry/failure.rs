//! The one failure type of every registry operation: which side failed (upstream, cache,
//! or this machine), the registry host, the HTTP status and registry error code when
//! known, and the class that decides retry, fallback and circuit breaker.
//!
//! Failures are built where an answer enters the program (the built-in client from HTTP
//! responses, [`super::tool_errors`] from crane's and skopeo's stderr); everything else
//! matches on their fields, never on their text. The message is redacted and one line.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// Which end of a step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The registry images come from.
    Upstream,
    /// The cache registry.
    Cache,
    /// This machine: a tool, a file, the process itself.
    Local,
}

impl Side {
    /// The word used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Cache => "cache",
            Self::Local => "local",
        }
    }
}

/// The class of a failed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
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
    /// A server error, a broken connection or a temporary DNS failure: may pass.
    Transient,
    /// The registry speaks plain HTTP but was reached with HTTPS.
    PlainHttp,
    /// The TLS certificate could not be verified.
    Certificate,
    /// The cache refused what a copy wrote (a manifest type it does not accept, a missing
    /// blob, an invalid name or size, no push permission): final, another attempt would
    /// spend the same pulls for the same answer.
    WriteRefused,
    /// The step ran past its deadline.
    TimedOut,
    /// The run was interrupted.
    Interrupted,
    /// Neither crane nor skopeo can run.
    NoTool,
    /// The tool itself crashed (a panic, a signal): the other tool may do better.
    ToolFailed,
    /// An error on this machine (a file, a permission, the tool's own configuration).
    Local,
    /// The cache holds a different digest after the copy.
    DigestDrift,
    /// The registry's answer cannot be used: malformed, truncated, or beyond every bound a
    /// real one keeps (a 50 MB manifest, a tag list that pages forever). Final: asking
    /// again gets the same answer.
    Malformed,
    /// Not attempted: the registry's circuit breaker tripped earlier in this run.
    Skipped,
    /// Anything else.
    Other,
}

impl Class {
    /// Whether the next attempt should use the fallback tool: only when the tool itself
    /// may be the problem, never for a registry's answer.
    pub fn worth_fallback(self) -> bool {
        matches!(self, Self::ToolFailed | Self::Local)
    }

    /// Whether the step may be attempted again (within `settings.retries`). Rate limits
    /// are not: crane and skopeo already retry a 429, and more attempts deepen the hole.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Transient | Self::Other | Self::TimedOut | Self::ToolFailed | Self::Local
        )
    }

    /// Whether this failure means its registry should get no more requests in this run.
    pub fn trips_breaker(self) -> bool {
        matches!(self, Self::RateLimited | Self::Unreachable)
    }

    /// The class as a metric label (`image_sync_failures{class="manifest_unknown"}`).
    pub fn label(self) -> &'static str {
        match self {
            Self::ManifestUnknown => "manifest_unknown",
            Self::NameUnknown => "name_unknown",
            Self::Unauthorized => "unauthorized",
            Self::Denied => "denied",
            Self::RateLimited => "rate_limited",
            Self::Unreachable => "unreachable",
            Self::Transient => "transient",
            Self::PlainHttp => "plain_http",
            Self::Certificate => "certificate",
            Self::WriteRefused => "write_refused",
            Self::TimedOut => "timed_out",
            Self::Interrupted => "interrupted",
            Self::NoTool => "no_tool",
            Self::ToolFailed => "tool_failed",
            Self::Local => "local",
            Self::DigestDrift => "digest_drift",
            Self::Malformed => "malformed",
            Self::Skipped => "skipped",
            Self::Other => "other",
        }
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
            Self::WriteRefused => "the cache refused the copy",
            Self::TimedOut => "timed out",
            Self::Interrupted => "interrupted",
            Self::NoTool => "no tool",
            Self::ToolFailed => "the tool failed",
            Self::Local => "local error",
            Self::DigestDrift => "digest drift",
            Self::Malformed => "malformed answer",
            Self::Skipped => "skipped",
            Self::Other => "failed",
        }
    }
}

/// Why the cache refuses a manifest type, and the fix.
const DOCKER2S2: &str = "the cache does not accept this manifest's media type; Zot refuses Docker-format manifests unless its config has http.compat: [\"docker2s2\"] (zot >= 2.1.2); image-sync never converts, so that digests stay equal";

/// A failed step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The class: decides retry, fallback and breaker.
    pub class: Class,
    /// Which end failed, when known.
    pub side: Option<Side>,
    /// The registry host as the config names it (the cache's name even when a copy
    /// reached it by IP literal), when the failure is a registry's.
    pub host: Option<String>,
    /// The HTTP status, when one was answered.
    pub status: Option<u16>,
    /// The registry's error code (`MANIFEST_INVALID`, `TOOMANYREQUESTS`, ...), when sent.
    pub code: Option<String>,
    /// A `Retry-After` the registry sent.
    pub retry_after: Option<Duration>,
    /// One line: the cause, then what failed and what was said. Redacted.
    pub message: String,
}

impl Failure {
    /// A failure with evidence (a tool's line, a request).
    pub fn new(class: Class, detail: impl AsRef<str>) -> Self {
        Self::with_message(class, format!("{}: {}", class.cause(), detail.as_ref()))
    }

    /// A step that ran past its bound (`timed out after 300 s: crane copy ...`).
    pub fn timed_out(after: Duration, what: impl AsRef<str>) -> Self {
        Self::with_message(
            Class::TimedOut,
            format!(
                "timed out after {} s: {}",
                after.as_secs_f64().ceil(),
                what.as_ref()
            ),
        )
    }

    fn with_message(class: Class, message: String) -> Self {
        Self {
            class,
            side: None,
            host: None,
            status: None,
            code: None,
            retry_after: None,
            message: one_line(&redact(&message)),
        }
    }

    /// Names the side and the registry host that failed.
    pub fn on(mut self, side: Side, host: Option<&str>) -> Self {
        self.side = Some(side);
        self.host = host.map(str::to_owned);
        self
    }

    /// Records the HTTP status.
    pub fn status(mut self, status: Option<u16>) -> Self {
        self.status = status;
        self
    }

    /// Records the registry's error code.
    pub fn code(mut self, code: Option<&str>) -> Self {
        self.code = code.map(str::to_owned);
        self
    }

    /// Records a `Retry-After`.
    pub fn retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// What the operator can do about it, when there is something to do.
    pub fn hint(&self) -> Option<Cow<'static, str>> {
        let fixed = match (self.class, self.code.as_deref()) {
            (Class::WriteRefused, Some("MANIFEST_INVALID" | "UNSUPPORTED")) => Some(DOCKER2S2),
            (Class::WriteRefused, None) if self.status == Some(415) => Some(DOCKER2S2),
            (Class::WriteRefused, Some("DENIED" | "UNAUTHORIZED")) => Some(
                "the cache refused the push: give the credentials in the Docker config write access to the cache",
            ),
            (Class::WriteRefused, None) if self.status == Some(413) => Some(
                "HTTP 413 Request Entity Too Large: the cache, or an ingress in front of it, limits the request body size; raise that limit above the largest layer (nginx ingress: the `nginx.ingress.kubernetes.io/proxy-body-size` annotation, e.g. \"0\"; nginx: client_max_body_size); final, the image is tried again at the next run",
            ),
            (Class::WriteRefused, None) if self.status.is_some() => {
                return self.status.map(|status| {
                    Cow::Owned(format!(
                        "the cache refused the write with HTTP {status}: final, no retry in this run; the upstream image is unchanged and the next run tries again"
                    ))
                });
            }
            (Class::WriteRefused, _) => Some(
                "the cache refused what was written; the upstream image is unchanged and the next run tries again",
            ),
            (Class::Unauthorized, _) => Some(
                "check the credentials in $DOCKER_CONFIG/config.json (Docker Hub: key `https://index.docker.io/v1/`); Docker Hub also answers this for a missing or private repository",
            ),
            (Class::PlainHttp, _) => Some("add the registry to settings.insecure_registries"),
            (Class::RateLimited, _) => {
                Some("wait for the quota window, or authenticate to raise the limit")
            }
            (Class::NoTool, _) => Some("install crane (preferred) or skopeo on PATH"),
            (Class::Local, _) => Some(
                "a problem on this machine, not the registry's answer: check the file or permission named",
            ),
            _ => None,
        };
        fixed.map(Cow::Borrowed)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = self.hint() {
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

/// Secrets that JSON bodies may carry, as `"name"` keys.
const SECRET_JSON_FIELDS: [&str; 8] = [
    "auth",
    "token",
    "access_token",
    "refresh_token",
    "password",
    "secret",
    "identitytoken",
    "registrytoken",
];

/// Removes credentials a tool or registry may echo: `user:pass@` in URLs, bearer and
/// basic tokens, `token=`/`password=`-style parameters, and secret JSON fields
/// (`"token": "..."`, `"password":"..."`, ...).
pub fn redact(text: &str) -> String {
    let mut out = redact_userinfo(text);
    for marker in ["Bearer ", "bearer ", "Basic ", "basic "] {
        out = redact_after(&out, marker, |c: char| {
            c.is_whitespace() || c == '"' || c == ','
        });
    }
    for marker in ["token=", "access_token=", "password=", "passwd=", "secret="] {
        out = redact_after(&out, marker, |c: char| {
            matches!(c, '&' | '"' | ' ' | ',' | ';' | '\n')
        });
    }
    for field in SECRET_JSON_FIELDS {
        out = redact_json_field(&out, field);
    }
    out
}

/// `"field" : "value"` -> `"field" : "***"`, case-insensitive on the field name, with
/// escaped quotes inside the value handled.
fn redact_json_field(text: &str, field: &str) -> String {
    let needle = format!("\"{field}\"");
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find(&needle) {
        let key_end = search + found + needle.len();
        search = key_end;
        let rest = &text[key_end..];
        let after_colon = rest.trim_start();
        let Some(after_colon) = after_colon.strip_prefix(':') else {
            continue;
        };
        let value = after_colon.trim_start();
        if !value.starts_with('"') {
            continue;
        }
        let value_start = text.len() - value.len() + 1;
        let mut end = None;
        let mut escaped = false;
        for (offset, c) in text[value_start..].char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(value_start + offset);
                    break;
                }
                _ => escaped = false,
            }
        }
        let value_end = end.unwrap_or(text.len());
        out.push_str(&text[last..value_start]);
        if value_end > value_start {
            out.push_str("***");
        }
        last = value_end;
        search = value_end;
    }
    out.push_str(&text[last..]);
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
    fn fallback_only_when_the_tool_may_be_the_problem() {
        assert!(Class::ToolFailed.worth_fallback() && Class::Local.worth_fallback());
        for class in [
            Class::ManifestUnknown,
            Class::Unauthorized,
            Class::TimedOut,
            Class::Transient,
            Class::Other,
            Class::RateLimited,
            Class::Unreachable,
            Class::WriteRefused,
        ] {
            assert!(!class.worth_fallback(), "{class:?}");
        }
    }

    #[test]
    fn only_transient_failures_are_retried_and_only_refusals_and_limits_trip_the_breaker() {
        assert!(Class::Transient.is_retryable() && Class::TimedOut.is_retryable());
        for final_class in [
            Class::RateLimited,
            Class::ManifestUnknown,
            Class::WriteRefused,
            Class::Unauthorized,
            Class::Denied,
        ] {
            assert!(!final_class.is_retryable(), "{final_class:?}");
        }
        assert!(Class::RateLimited.trips_breaker() && Class::Unreachable.trips_breaker());
        assert!(!Class::Transient.trips_breaker() && !Class::WriteRefused.trips_breaker());
    }

    #[test]
    fn credentials_never_survive_redaction() {
        let text = "GET https://alice:s3cr3t@reg.example/v2/: Authorization: Bearer eyJhbGciOi.abc token=xyz&scope=repo password=hunter2 {\"auth\":\"YWxpY2U6czNjcjN0\"} {\"token\": \"qz1\\\"qz2\", \"access_token\":\"acc2\", \"Password\" : \"pw3\", \"expires_in\": 300}";
        let clean = redact(text);
        for secret in [
            "alice",
            "s3cr3t",
            "eyJhbGciOi",
            "xyz",
            "hunter2",
            "YWxpY2U6czNjcjN0",
            "qz1",
            "qz2",
            "acc2",
            "pw3",
        ] {
            assert!(!clean.contains(secret), "{secret} leaked in {clean}");
        }
        assert!(clean.contains("https://***@reg.example/v2/"), "{clean}");
        assert!(clean.contains("scope=repo"), "{clean}");
        assert!(clean.contains("\"expires_in\": 300"), "{clean}");
        assert_eq!(redact("no secrets here"), "no secrets here");
        assert_eq!(redact("{\"token\": 5}"), "{\"token\": 5}");
    }

    #[test]
    fn failures_print_as_one_line_with_cause_first_and_keep_their_fields() {
        let failure = Failure::new(
            Class::ManifestUnknown,
            "crane digest:\n  GET x: MANIFEST_UNKNOWN\n",
        )
        .on(Side::Upstream, Some("ghcr.io"))
        .status(Some(404))
        .code(Some("MANIFEST_UNKNOWN"));
        assert_eq!(
            failure.to_string(),
            "manifest unknown: crane digest: GET x: MANIFEST_UNKNOWN"
        );
        assert_eq!(failure.side, Some(Side::Upstream));
        assert_eq!(failure.host.as_deref(), Some("ghcr.io"));
        let long = Failure::new(Class::Other, "x".repeat(5_000));
        assert!(long.message.len() < 650);
        let slow = Failure::timed_out(Duration::from_secs(300), "crane copy a b");
        assert_eq!(slow.to_string(), "timed out after 300 s: crane copy a b");
    }

    #[test]
    fn a_refused_docker_manifest_names_docker2s2() {
        let refused = Failure::new(Class::WriteRefused, "PUT x: MANIFEST_INVALID")
            .status(Some(415))
            .code(Some("MANIFEST_INVALID"));
        assert!(refused.to_string().contains("docker2s2"), "{refused}");
    }
}
