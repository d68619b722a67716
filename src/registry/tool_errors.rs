//! The one place where crane's and skopeo's error text becomes a typed [`Failure`].
//!
//! Both tools exit 1 for every failure, so the text is all there is. It is read once,
//! here: the failing request's URL (crane prints `METHOD URL: CODE: message`, Go's HTTP
//! client `Get "URL": ...`; skopeo names `reading manifest T in HOST/...`, `uploading
//! manifest T to HOST/...`, `pinging container registry HOST`), the registry's error code
//! and status, and the transport cause. The side comes from the host of the failing
//! request, never from whichever host name appears somewhere in the message: a copy's
//! message names both ends.

use super::failure::{Class, Failure, Side};

/// The registries one command talks to, as the config names them.
#[derive(Debug, Clone, Copy)]
pub struct Ends<'a> {
    /// The upstream host (`None` for a command that only touches the cache).
    pub upstream: Option<&'a str>,
    /// The cache host (`None` for a command that only touches the upstream).
    pub cache: Option<&'a str>,
    /// Another name the cache is reached by in this command (its IP literal).
    pub cache_alias: Option<&'a str>,
    /// Whether the command writes to the cache (a copy): a refusal there is final.
    pub writes: bool,
}

/// What a failed tool run left: its exit code and the error line of its stderr.
#[derive(Debug, Clone, Copy)]
pub struct ToolExit<'a> {
    /// The exit code; `None` when a signal ended the tool.
    pub code: Option<i32>,
    /// The line that says why (crane's `Error:` line, skopeo's `msg="..."`).
    pub line: &'a str,
    /// The command, for the message (`crane copy SRC DST`).
    pub what: &'a str,
}

/// Registry error codes that mean the cache refused what a copy wrote.
const WRITE_REFUSALS: [&str; 8] = [
    "MANIFEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "NAME_INVALID",
    "SIZE_INVALID",
    "DIGEST_INVALID",
    "UNSUPPORTED",
];

/// Reads a failed crane run.
pub fn crane_failure(exit: ToolExit<'_>, ends: Ends<'_>) -> Failure {
    let request = crane_request(exit.line);
    let code = registry_code(exit.line);
    let status = status_code(exit.line);
    classify(exit, ends, request, code, status)
}

/// Reads a failed skopeo run.
pub fn skopeo_failure(exit: ToolExit<'_>, ends: Ends<'_>) -> Failure {
    let request = skopeo_request(exit.line);
    let code = skopeo_code(exit.line);
    let status = status_code(exit.line);
    classify(exit, ends, request, code, status)
}

/// The failing request: its host and whether it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    host: String,
    /// `PUT`, `POST`, `PATCH`, or a skopeo write phrase.
    writes: bool,
    /// For a token request (a URL with `scope=`): whether the scope asks to push.
    token_push: Option<bool>,
}

fn classify(
    exit: ToolExit<'_>,
    ends: Ends<'_>,
    request: Option<Request>,
    code: Option<String>,
    status: Option<u16>,
) -> Failure {
    let lower = exit.line.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|needle| lower.contains(needle));
    let side = request
        .as_ref()
        .and_then(|request| side_of(request, ends))
        .or_else(|| skopeo_phase_side(&lower, ends));
    let host = match side {
        Some(Side::Upstream) => ends.upstream,
        Some(Side::Cache) => ends.cache,
        _ => None,
    };
    let on_cache_write = ends.writes
        && side == Some(Side::Cache)
        && (request.as_ref().is_some_and(|r| r.writes)
            || has(&["uploading manifest", "writing manifest"]));
    let detail = format!("{}: {}", exit.what, exit.line);
    let class = match (code.as_deref(), status) {
        (Some("TOOMANYREQUESTS"), _) | (_, Some(429)) => Class::RateLimited,
        (Some(code), _) if on_cache_write && WRITE_REFUSALS.contains(&code) => Class::WriteRefused,
        (Some("DENIED" | "UNAUTHORIZED"), _) if on_cache_write => Class::WriteRefused,
        // Every other 4xx to a write is the cache's (or its ingress's) final word, HTML or
        // JSON: 413 from a body-size limit, 400, 404, 405... Only 408 and 429 may pass.
        (_, Some(400..=499)) if on_cache_write && !matches!(status, Some(408 | 429)) => {
            Class::WriteRefused
        }
        (Some("MANIFEST_UNKNOWN"), _) => Class::ManifestUnknown,
        (Some("NAME_UNKNOWN"), _) => Class::NameUnknown,
        (Some("UNAUTHORIZED"), _) | (_, Some(401)) => Class::Unauthorized,
        (Some("DENIED"), _) | (_, Some(403)) => Class::Denied,
        (_, Some(404)) if lower.contains("/manifests/") => Class::ManifestUnknown,
        (_, Some(408 | 500..=599)) => Class::Transient,
        (Some(_), _) | (_, Some(_)) => Class::Other,
        (None, None) => transport_class(&lower, exit.code, request.is_some()),
    };
    let side = match class {
        Class::Local | Class::ToolFailed => Some(Side::Local),
        _ => side,
    };
    let failure = Failure::new(class, detail)
        .status(status)
        .code(code.as_deref());
    match side {
        Some(side) => failure.on(side, host),
        None => failure,
    }
}

/// The class of a failure without a registry code or status: the network, DNS, TLS, or
/// this machine.
fn transport_class(lower: &str, exit_code: Option<i32>, named_a_request: bool) -> Class {
    let has = |needles: &[&str]| needles.iter().any(|needle| lower.contains(needle));
    if has(&["toomanyrequests", "too many requests"]) {
        Class::RateLimited
    } else if has(&["manifest unknown", "manifest_unknown"]) {
        Class::ManifestUnknown
    } else if has(&["name unknown", "repository name not known"]) {
        Class::NameUnknown
    } else if has(&["requested access to the resource is denied"]) || lower.ends_with(": denied") {
        Class::Denied
    } else if has(&["unauthorized", "authentication required"]) {
        Class::Unauthorized
    } else if has(&["manifest invalid"]) {
        Class::WriteRefused
    } else if has(&["server gave http response to https client"]) {
        Class::PlainHttp
    } else if has(&[
        "x509:",
        "certificate signed by unknown",
        "tls: failed to verify",
    ]) {
        Class::Certificate
    } else if has(&[
        "temporary failure in name resolution",
        "server misbehaving",
        "try again",
    ]) {
        // EAI_AGAIN / SERVFAIL: the resolver could not answer now. NXDOMAIN is an answer.
        Class::Transient
    } else if has(&[
        "connection refused",
        "no such host",
        "name or service not known",
        "network is unreachable",
        "no route to host",
    ]) {
        Class::Unreachable
    } else if has(&[
        "parsing config file",
        "loading config file",
        "reading json file",
    ]) {
        // crane's and skopeo's words for a Docker config they cannot read (a truncated
        // one ends in `unexpected EOF`): this machine, not the connection.
        Class::Local
    } else if has(&[
        "connection reset",
        "broken pipe",
        "eof",
        "i/o timeout",
        "tls handshake timeout",
        "received unexpected http status: 5",
    ]) {
        Class::Transient
    } else if exit_code != Some(1) || has(&["panic:", "goroutine ", "signal: "]) {
        // Go exits 2 on a panic; no exit code means a signal killed it.
        Class::ToolFailed
    } else if has(&[
        "permission denied",
        "read-only file system",
        "no space left on device",
        "operation not permitted",
        "too many open files",
    ]) || !named_a_request
    {
        Class::Local
    } else {
        Class::Other
    }
}

/// Which end a request went to.
fn side_of(request: &Request, ends: Ends<'_>) -> Option<Side> {
    let is = |configured: Option<&str>| {
        configured.is_some_and(|host| same_registry(host, &request.host))
    };
    let upstream = is(ends.upstream);
    let cache = is(ends.cache) || is(ends.cache_alias);
    match (upstream, cache) {
        (true, false) => Some(Side::Upstream),
        (false, true) => Some(Side::Cache),
        // Both ends on one registry: a write went to the cache.
        (true, true) => Some(if request.writes {
            Side::Cache
        } else {
            Side::Upstream
        }),
        // A token endpoint on another host: a push scope served the cache; a pull-only
        // scope could be either end's, and is left unattributed.
        (false, false) if request.token_push == Some(true) => Some(Side::Cache),
        (false, false) => None,
    }
}

/// skopeo's phase words when no request is named: `initializing source` or
/// `... at destination` / `writing manifest`.
fn skopeo_phase_side(lower: &str, ends: Ends<'_>) -> Option<Side> {
    if lower.starts_with("initializing source") && ends.upstream.is_some() {
        Some(Side::Upstream)
    } else if (lower.contains("at destination")
        || lower.starts_with("writing manifest")
        || lower.starts_with("initializing destination"))
        && ends.cache.is_some()
    {
        Some(Side::Cache)
    } else {
        None
    }
}

/// `docker.io` is served as `index.docker.io` and `registry-1.docker.io`, its tokens by
/// `auth.docker.io`.
fn same_registry(configured: &str, seen: &str) -> bool {
    let hub = crate::registry::docker_hub::serves;
    configured.eq_ignore_ascii_case(seen) || (hub(configured) && hub(seen))
}

/// The request crane's line names: `METHOD http(s)://HOST/...: ` (its transport error)
/// or `Method "http(s)://HOST/...": ` (Go's HTTP client error).
fn crane_request(line: &str) -> Option<Request> {
    let start = line.find("http://").or_else(|| line.find("https://"))?;
    let method = line[..start]
        .trim_end_matches(['"', ' '])
        .rsplit([' ', ':', '"'])
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    url_request(
        &line[start..],
        matches!(method.as_str(), "PUT" | "POST" | "PATCH"),
    )
}

/// The host skopeo names: a URL in the line, else `... in HOST/repo`, `... to HOST/repo`,
/// `pinging container registry HOST`.
fn skopeo_request(line: &str) -> Option<Request> {
    let lower = line.to_ascii_lowercase();
    let writes = lower.contains("uploading")
        || lower.contains("at destination")
        || lower.starts_with("writing manifest");
    if let Some(start) = line.find("http://").or_else(|| line.find("https://")) {
        let method_writes = {
            let before = line[..start].trim_end_matches(['"', ' ', '\\']);
            let method = before.rsplit([' ', ':', '"']).next().unwrap_or_default();
            matches!(
                method.to_ascii_uppercase().as_str(),
                "PUT" | "POST" | "PATCH"
            )
        };
        return url_request(&line[start..], writes || method_writes);
    }
    for marker in [" in ", " to ", "container registry "] {
        for (at, _) in line.match_indices(marker) {
            let after = &line[at + marker.len()..];
            let end = after.find(['/', ' ', '"']).unwrap_or(after.len());
            let candidate = after[..end].trim_end_matches(':');
            // A registry host has a dot, a port or is localhost; skip prose (`in order`).
            if candidate.contains('.') || candidate.contains(':') || candidate == "localhost" {
                return Some(Request {
                    host: candidate.to_ascii_lowercase(),
                    writes,
                    token_push: None,
                });
            }
        }
    }
    None
}

fn url_request(url: &str, writes: bool) -> Option<Request> {
    let after_scheme = &url[url.find("://")? + 3..];
    let end = after_scheme
        .find(['/', '"', ' ', '?', '\\'])
        .unwrap_or(after_scheme.len());
    let host = after_scheme[..end]
        .trim_end_matches(':')
        .to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    let url_end = url.find([' ', '"']).unwrap_or(url.len());
    let full = &url[..url_end];
    let token_push = full.find("scope=").map(|at| full[at..].contains("push"));
    Some(Request {
        host,
        writes,
        token_push,
    })
}

/// crane's `URL: CODE: message` (the code is upper snake case right after the URL).
fn registry_code(line: &str) -> Option<String> {
    let start = line.find("http://").or_else(|| line.find("https://"))?;
    let after_url = &line[start..];
    let colon = after_url.find(": ")?;
    let rest = &after_url[colon + 2..];
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_uppercase() || *c == '_')
        .collect();
    (word.len() >= 4 && rest[word.len()..].starts_with(':')).then_some(word)
}

/// skopeo lowercases the registry's code: `reading manifest T in H: manifest unknown`.
fn skopeo_code(line: &str) -> Option<String> {
    let lower = line.to_ascii_lowercase();
    let codes = [
        ("toomanyrequests", "TOOMANYREQUESTS"),
        ("manifest unknown", "MANIFEST_UNKNOWN"),
        ("name unknown", "NAME_UNKNOWN"),
        ("manifest invalid", "MANIFEST_INVALID"),
        ("blob unknown", "BLOB_UNKNOWN"),
        ("name invalid", "NAME_INVALID"),
        ("size invalid", "SIZE_INVALID"),
        ("requested access to the resource is denied", "DENIED"),
    ];
    if let Some((_, code)) = codes.iter().find(|(text, _)| lower.contains(text)) {
        return Some((*code).to_owned());
    }
    let last = lower.rsplit(": ").next().unwrap_or_default().trim();
    match last {
        "unauthorized" | "authentication required" => Some("UNAUTHORIZED".to_owned()),
        "denied" => Some("DENIED".to_owned()),
        _ => None,
    }
}

/// `status code 429`, `unexpected HTTP status: 500`.
fn status_code(line: &str) -> Option<u16> {
    let lower = line.to_ascii_lowercase();
    ["status code ", "http status: "].iter().find_map(|marker| {
        let at = lower.find(marker)? + marker.len();
        lower[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|digits| digits.parse().ok())
            .filter(|status| (100..600).contains(status))
    })
}

/// The line of crane's stderr that says why it failed: the last `Error:` line.
pub fn crane_error_line(stderr: &str) -> String {
    let lines = || {
        stderr
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
    };
    lines()
        .rev()
        .find_map(|line| line.strip_prefix("Error:").map(str::trim))
        .or_else(|| lines().next_back())
        .unwrap_or("exited without a message")
        .to_owned()
}

/// What a tool run sent upstream, read from its output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    /// Manifest HEADs.
    pub heads: u32,
    /// Manifest GETs (the top manifest's, with retries; an index's children not included).
    pub gets: u32,
    /// The child manifests of an index the tool reported handling (each one GET).
    pub children: Option<u32>,
}

/// `crane digest`: one HEAD; when the HEAD fails crane logs it and GETs (a pull).
pub fn crane_digest_spent(stderr: &str, _stdout: &[u8], _ok: bool) -> Spent {
    Spent {
        heads: 1,
        gets: u32::from(stderr.contains("falling back on GET")),
        children: None,
    }
}

/// `skopeo inspect --raw`: one GET.
pub fn skopeo_inspect_spent(_stderr: &str, _stdout: &[u8], _ok: bool) -> Spent {
    Spent {
        heads: 0,
        gets: 1,
        children: None,
    }
}

/// `crane copy SRC@DIGEST DST`: the top manifest is one GET (crane logs each failed one it
/// retried, `retrying GET .../manifests/...`, the last one included), then every child of an index is one GET, whether
/// the destination has it or not. crane logs a child it pushed (`REPO@sha256:...:
/// digest: ...`) or found (`existing manifest: sha256:...`); the caller counts children
/// from the manifest itself where it can, as crane logs a child digest once.
pub fn crane_copy_spent(stderr: &str, _stdout: &[u8], ok: bool) -> Spent {
    let retried = stderr
        .lines()
        .filter(|line| line.contains("retrying GET") && line.contains("/manifests/"))
        .count();
    let children = stderr
        .lines()
        .filter(|line| {
            line.contains("existing manifest: ")
                || (line.contains("@sha256:") && line.contains(": digest: "))
        })
        .count();
    // crane logs every failed GET it retries, the last one included; a GET that then
    // succeeded is one more.
    let top_fetched = ok || !crane_error_line(stderr).starts_with("fetching \"");
    let gets = if top_fetched {
        retried + 1
    } else {
        retried.max(1)
    };
    Spent {
        heads: 0,
        gets: u32::try_from(gets).unwrap_or(u32::MAX),
        children: top_fetched.then(|| u32::try_from(children).unwrap_or(u32::MAX)),
    }
}

/// `skopeo copy --all`: the top manifest is one GET, and an index's children one each,
/// as `Copying N of M images in list` (on stdout) says.
pub fn skopeo_copy_spent(_stderr: &str, stdout: &[u8], _ok: bool) -> Spent {
    let stdout = String::from_utf8_lossy(stdout);
    let children = stdout.lines().find_map(|line| {
        line.strip_prefix("Copying ")?
            .split(' ')
            .next()?
            .parse::<u32>()
            .ok()
            .filter(|_| line.contains("images in list"))
    });
    Spent {
        heads: 0,
        gets: 1,
        children: Some(children.unwrap_or(0)),
    }
}

/// The message of skopeo's `level=fatal msg="..."` line, or its last line.
pub fn skopeo_error_line(stderr: &str) -> String {
    let lines = || {
        stderr
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
    };
    let fatal = lines().rev().find_map(|line| {
        let start = line.find("msg=\"")? + 5;
        let end = line.rfind('"').filter(|&end| end >= start)?;
        Some(line[start..end].replace("\\\"", "\""))
    });
    fatal
        .or_else(|| lines().next_back().map(str::to_owned))
        .unwrap_or_else(|| "exited without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::docker_hub::HOST as DOCKER_HUB;

    const UP: &str = "127.0.0.1:5599";
    const CACHE: &str = "cache.local:5000";
    const LITERAL: &str = "127.0.0.1:5621";

    fn copy_ends() -> Ends<'static> {
        Ends {
            upstream: Some(UP),
            cache: Some(CACHE),
            cache_alias: Some(LITERAL),
            writes: true,
        }
    }

    fn check_ends(host: &'static str) -> Ends<'static> {
        Ends {
            upstream: Some(host),
            cache: None,
            cache_alias: None,
            writes: false,
        }
    }

    fn crane(line: &str, ends: Ends<'_>) -> Failure {
        crane_failure(
            ToolExit {
                code: Some(1),
                line,
                what: "crane",
            },
            ends,
        )
    }

    fn skopeo(line: &str, ends: Ends<'_>) -> Failure {
        skopeo_failure(
            ToolExit {
                code: Some(1),
                line,
                what: "skopeo",
            },
            ends,
        )
    }

    /// An ingress in front of the cache answers a blob upload with an HTML 413 (or any
    /// other 4xx but 408 and 429): a final refusal of the write, whose hint names the
    /// status; the same status on a read, or 408/429 on a write, stays what it was.
    #[test]
    fn every_4xx_to_a_cache_write_but_408_and_429_is_a_final_refusal() {
        let html = "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>";
        let too_large = crane(
            &format!(
                "PATCH http://{CACHE}/v2/app/one/blobs/uploads/3f1c?_state=x: unexpected status code 413 Request Entity Too Large: {html}"
            ),
            copy_ends(),
        );
        assert_eq!(too_large.class, Class::WriteRefused);
        assert_eq!(too_large.side, Some(Side::Cache));
        assert_eq!(too_large.status, Some(413));
        assert!(!too_large.class.is_retryable());
        let shown = too_large.to_string();
        assert!(
            shown.contains("HTTP 413") && shown.contains("body size"),
            "{shown}"
        );
        for status in [400_u16, 404, 405, 409, 411, 422] {
            let refused = crane(
                &format!(
                    "PUT http://{CACHE}/v2/app/one/blobs/uploads/3f1c?digest=sha256:ab: unexpected status code {status} Whatever: <html></html>"
                ),
                copy_ends(),
            );
            assert_eq!(refused.class, Class::WriteRefused, "{status}");
            assert!(
                refused.to_string().contains(&format!("HTTP {status}")),
                "{refused}"
            );
        }
        for (status, class) in [(408_u16, Class::Transient), (429, Class::RateLimited)] {
            let passing = crane(
                &format!(
                    "PATCH http://{CACHE}/v2/app/one/blobs/uploads/3f1c: unexpected status code {status} X: <html></html>"
                ),
                copy_ends(),
            );
            assert_eq!(passing.class, class, "{status}");
        }
        let read = crane(
            &format!(
                "GET http://{UP}/v2/app/one/blobs/sha256:ab: unexpected status code 413 Request Entity Too Large: {html}"
            ),
            copy_ends(),
        );
        assert_ne!(read.class, Class::WriteRefused, "a read is not a write");
    }

    /// Lines printed by crane v0.22.1 and skopeo 1.9.3 against Distribution 2.8 and a
    /// registry answering like Zot, Docker Hub or a broken proxy.
    #[test]
    fn real_crane_lines_are_typed_by_the_failing_request() {
        type Case = (
            &'static str,
            Class,
            Option<Side>,
            Option<u16>,
            Option<&'static str>,
        );
        let copy: [Case; 9] = [
            (
                "PUT http://127.0.0.1:5621/v2/app/docker/manifests/1: MANIFEST_INVALID: manifest invalid; map[mediaType:application/vnd.docker.distribution.manifest.v2+json]",
                Class::WriteRefused,
                Some(Side::Cache),
                None,
                Some("MANIFEST_INVALID"),
            ),
            (
                "PUT http://127.0.0.1:5621/v2/app/one/manifests/1: NAME_INVALID: invalid repository name",
                Class::WriteRefused,
                Some(Side::Cache),
                None,
                Some("NAME_INVALID"),
            ),
            (
                "PUT http://127.0.0.1:5621/v2/app/one/manifests/1: BLOB_UNKNOWN: blob unknown to registry",
                Class::WriteRefused,
                Some(Side::Cache),
                None,
                Some("BLOB_UNKNOWN"),
            ),
            (
                "fetching \"127.0.0.1:5599/app/x:1\": GET http://127.0.0.1:5599/v2/app/x/manifests/1: TOOMANYREQUESTS: You have reached your pull rate limit.",
                Class::RateLimited,
                Some(Side::Upstream),
                None,
                Some("TOOMANYREQUESTS"),
            ),
            (
                "fetching \"127.0.0.1:5599/app/one:1\": GET http://127.0.0.1:5599/v2/app/one/manifests/1: unexpected status code 500 Internal Server Error: boom",
                Class::Transient,
                Some(Side::Upstream),
                Some(500),
                None,
            ),
            (
                "Get \"https://127.0.0.1:5621/v2/\": dial tcp 127.0.0.1:5621: connect: connection refused; Get \"http://127.0.0.1:5621/v2/\": dial tcp 127.0.0.1:5621: connect: connection refused",
                Class::Unreachable,
                Some(Side::Cache),
                None,
                None,
            ),
            (
                "HEAD http://127.0.0.1:5621/v2/app/one/manifests/1: unexpected status code 401 Unauthorized (HEAD responses have no body, use GET for details)",
                Class::Unauthorized,
                Some(Side::Cache),
                Some(401),
                None,
            ),
            (
                "POST http://127.0.0.1:5621/v2/app/one/blobs/uploads/: TOOMANYREQUESTS: slow down",
                Class::RateLimited,
                Some(Side::Cache),
                None,
                Some("TOOMANYREQUESTS"),
            ),
            (
                "GET https://auth.docker.io/token?scope=repository%3Alibrary%2Fnginx%3Apull&service=registry.docker.io: UNAUTHORIZED: incorrect username or password",
                Class::Unauthorized,
                None,
                None,
                Some("UNAUTHORIZED"),
            ),
        ];
        for (line, class, side, status, code) in copy {
            let failure = crane(line, copy_ends());
            assert_eq!(failure.class, class, "{line}");
            assert_eq!(failure.side, side, "{line}");
            assert_eq!(failure.status, status, "{line}");
            assert_eq!(failure.code.as_deref(), code, "{line}");
            let host = match side {
                Some(Side::Cache) => Some(CACHE),
                Some(Side::Upstream) => Some(UP),
                _ => None,
            };
            assert_eq!(failure.host.as_deref(), host, "{line}");
        }
        let hub = Ends {
            upstream: Some(DOCKER_HUB),
            ..copy_ends()
        };
        let token = crane(
            "GET https://auth.docker.io/token?scope=repository%3Alibrary%2Fnginx%3Apull&service=registry.docker.io: UNAUTHORIZED: incorrect username or password",
            hub,
        );
        assert_eq!(token.side, Some(Side::Upstream), "a pull-scoped token");
        let index = crane(
            "GET https://index.docker.io/v2/library/nginx/manifests/sha256:1: TOOMANYREQUESTS: You have reached your pull rate limit.",
            hub,
        );
        assert_eq!(
            (index.side, index.host.as_deref()),
            (Some(Side::Upstream), Some(DOCKER_HUB))
        );
    }

    #[test]
    fn real_crane_check_lines() {
        let cases = [
            (
                "GET http://127.0.0.1:5599/v2/app/one/manifests/nope: MANIFEST_UNKNOWN: manifest unknown; map[Tag:nope]",
                Class::ManifestUnknown,
            ),
            (
                "GET http://127.0.0.1:5599/v2/app/x/manifests/1: UNAUTHORIZED: authentication required",
                Class::Unauthorized,
            ),
            (
                "GET http://127.0.0.1:5599/v2/app/x/manifests/1: DENIED: requested access to the resource is denied",
                Class::Denied,
            ),
            (
                "GET http://127.0.0.1:5599/v2/app/x/manifests/1: unexpected status code 429 Too Many Requests: Too Many Requests",
                Class::RateLimited,
            ),
            (
                "GET http://127.0.0.1:5599/v2/app/x/manifests/1: unexpected status code 500 Internal Server Error: boom",
                Class::Transient,
            ),
            (
                "Get \"https://nosuchhost.invalid/v2/\": dial tcp: lookup nosuchhost.invalid on 10.255.255.53:53: no such host",
                Class::Unreachable,
            ),
            (
                "Get \"https://flaky.test/v2/\": dial tcp: lookup flaky.test on 127.0.0.77:53: server misbehaving",
                Class::Transient,
            ),
            (
                "Get \"https://127.0.0.1:5599/v2/\": http: server gave HTTP response to HTTPS client",
                Class::PlainHttp,
            ),
            (
                "Get \"https://127.0.0.1:5599/v2/\": tls: failed to verify certificate: x509: certificate signed by unknown authority",
                Class::Certificate,
            ),
            (
                "Get \"http://127.0.0.1:5599/v2/\": read tcp 127.0.0.1:2->127.0.0.1:5599: read: connection reset by peer",
                Class::Transient,
            ),
            (
                "GET http://127.0.0.1:5599/v2/app/x/manifests/1: unexpected EOF",
                Class::Transient,
            ),
            (
                "open /secrets/docker/config.json: permission denied",
                Class::Local,
            ),
            (
                "Error: parsing config file (/secrets/docker/config.json): unexpected EOF",
                Class::Local,
            ),
        ];
        for (line, class) in cases {
            let failure = crane(
                line,
                check_ends(if line.contains("5599") {
                    UP
                } else if line.contains("flaky") {
                    "flaky.test"
                } else {
                    "nosuchhost.invalid"
                }),
            );
            assert_eq!(failure.class, class, "{line}");
            let expected_side = if class == Class::Local {
                Side::Local
            } else {
                Side::Upstream
            };
            assert_eq!(failure.side, Some(expected_side), "{line}");
        }
        let crashed = crane_failure(
            ToolExit {
                code: Some(2),
                line: "panic: runtime error: invalid memory address",
                what: "crane",
            },
            copy_ends(),
        );
        assert_eq!(crashed.class, Class::ToolFailed);
        let killed = crane_failure(
            ToolExit {
                code: None,
                line: "exited without a message",
                what: "crane",
            },
            copy_ends(),
        );
        assert_eq!(killed.class, Class::ToolFailed);
    }

    #[test]
    fn real_skopeo_lines_are_typed_by_phase_and_host() {
        let up = |line: &str| skopeo(line, check_ends(UP));
        let cases = [
            (
                "Error parsing image name \"docker://127.0.0.1:5599/app/one:nope\": reading manifest nope in 127.0.0.1:5599/app/one: manifest unknown: manifest unknown",
                Class::ManifestUnknown,
            ),
            (
                "Error parsing image name \"docker://127.0.0.1:5599/app/x:1\": reading manifest 1 in 127.0.0.1:5599/app/x: unauthorized",
                Class::Unauthorized,
            ),
            (
                "Error parsing image name \"docker://127.0.0.1:5599/app/x:1\": reading manifest 1 in 127.0.0.1:5599/app/x: denied",
                Class::Denied,
            ),
            (
                "Error parsing image name \"docker://127.0.0.1:5599/app/x:1\": reading manifest 1 in 127.0.0.1:5599/app/x: toomanyrequests: You have reached your pull rate limit.",
                Class::RateLimited,
            ),
            (
                "Error parsing image name \"docker://127.0.0.1:5599/app/x:1\": reading manifest 1 in 127.0.0.1:5599/app/x: received unexpected HTTP status: 500 Internal Server Error",
                Class::Transient,
            ),
            (
                "Error parsing image name \"docker://127.0.0.1:5599/app/one:1\": pinging container registry 127.0.0.1:5599: Get \"http://127.0.0.1:5599/v2/\": dial tcp 127.0.0.1:5599: connect: connection refused",
                Class::Unreachable,
            ),
        ];
        for (line, class) in cases {
            let failure = up(line);
            assert_eq!(failure.class, class, "{line}");
            assert_eq!(failure.side, Some(Side::Upstream), "{line}");
            assert_eq!(failure.host.as_deref(), Some(UP), "{line}");
        }
        let ends = Ends {
            cache_alias: None,
            cache: Some("127.0.0.1:5622"),
            ..copy_ends()
        };
        let refused = skopeo(
            "writing manifest: uploading manifest 1 to 127.0.0.1:5622/app/docker: manifest invalid: manifest invalid",
            ends,
        );
        assert_eq!(refused.class, Class::WriteRefused);
        assert_eq!(refused.side, Some(Side::Cache));
        assert_eq!(refused.code.as_deref(), Some("MANIFEST_INVALID"));
        let denied = skopeo(
            "writing manifest: uploading manifest 1 to 127.0.0.1:5622/app/one: denied",
            ends,
        );
        assert_eq!(denied.class, Class::WriteRefused);
        let cache_down = skopeo(
            "trying to reuse blob sha256:48bc at destination: pinging container registry 127.0.0.1:5622: Get \"http://127.0.0.1:5622/v2/\": dial tcp 127.0.0.1:5622: connect: connection refused",
            ends,
        );
        assert_eq!(
            (cache_down.class, cache_down.side),
            (Class::Unreachable, Some(Side::Cache))
        );
        let source_limited = skopeo(
            "initializing source docker://127.0.0.1:5599/app/x:1: reading manifest 1 in 127.0.0.1:5599/app/x: toomanyrequests: You have reached your pull rate limit.",
            ends,
        );
        assert_eq!(
            (source_limited.class, source_limited.side),
            (Class::RateLimited, Some(Side::Upstream))
        );
    }

    #[test]
    fn a_hosts_name_in_the_message_does_not_decide_the_side() {
        // The copy's own description names both ends; only the failing request counts.
        let failure = crane_failure(
            ToolExit {
                code: Some(1),
                line: "fetching \"127.0.0.1:5599/app/x@sha256:1\": GET http://127.0.0.1:5599/v2/app/x/manifests/sha256:1: TOOMANYREQUESTS: limit",
                what: "crane copy 127.0.0.1:5599/app/x@sha256:1 cache.local:5000/app/x:1",
            },
            copy_ends(),
        );
        assert_eq!(failure.host.as_deref(), Some(UP));
    }

    #[test]
    fn what_a_copy_sent_is_read_from_real_output() {
        let crane_index = "2026/11/30 09:12:31 Copying from 127.0.0.1:5599/app/multi:1 to 127.0.0.1:5598/app/multi:1\n2026/11/30 09:12:32 127.0.0.1:5598/app/multi@sha256:fad8: digest: sha256:fad8 size: 422\n2026/11/30 09:12:32 127.0.0.1:5598/app/multi:1: digest: sha256:ba9f size: 541\n";
        assert_eq!(
            crane_copy_spent(crane_index, b"", true),
            Spent {
                heads: 0,
                gets: 1,
                children: Some(1)
            }
        );
        let existing = "2026/11/30 09:12:36 existing manifest: sha256:fad8\n2026/11/30 09:12:36 127.0.0.1:5598/app/multi:2: digest: sha256:ba9f size: 541\n";
        assert_eq!(crane_copy_spent(existing, b"", true).children, Some(1));
        let limited = "2026/11/30 09:00:00 retrying GET http://up/v2/a/manifests/sha256:1: TOOMANYREQUESTS\n2026/11/30 09:00:01 retrying GET http://up/v2/a/manifests/sha256:1: TOOMANYREQUESTS\n2026/11/30 09:00:04 retrying GET http://up/v2/a/manifests/sha256:1: TOOMANYREQUESTS\nError: fetching \"up/a@sha256:1\": GET http://up/v2/a/manifests/sha256:1: TOOMANYREQUESTS: limit\n";
        assert_eq!(
            crane_copy_spent(limited, b"", false),
            Spent {
                heads: 0,
                gets: 3,
                children: None
            }
        );
        let skopeo_list = b"Getting image list signatures\nCopying 2 of 2 images in list\nCopying image sha256:fad8 (1/2)\n";
        assert_eq!(skopeo_copy_spent("", skopeo_list, true).children, Some(2));
        assert_eq!(
            skopeo_copy_spent("", b"Copying blob sha256:1\n", true).children,
            Some(0)
        );
    }

    #[test]
    fn error_lines_are_read_from_the_right_lines() {
        let stderr = "2026/11/27 12:00:00 HEAD request failed, falling back on GET: HEAD http://x: unexpected status code 404\nError: GET http://127.0.0.1:5000/v2/a/manifests/b: MANIFEST_UNKNOWN: manifest unknown; map[Tag:b]\n";
        assert_eq!(
            crane_error_line(stderr),
            "GET http://127.0.0.1:5000/v2/a/manifests/b: MANIFEST_UNKNOWN: manifest unknown; map[Tag:b]"
        );
        assert_eq!(crane_digest_spent(stderr, b"", false).gets, 1);
        assert_eq!(
            crane_digest_spent("", b"sha256:1", true),
            Spent {
                heads: 1,
                gets: 0,
                children: None
            }
        );
        assert_eq!(crane_error_line("panic: boom\n"), "panic: boom");
        assert_eq!(crane_error_line(""), "exited without a message");
        let stderr = "time=\"2026-11-27T12:00:00Z\" level=fatal msg=\"Error parsing image name \\\"docker://x\\\": reading manifest y in x: manifest unknown\"\n";
        assert_eq!(
            skopeo_error_line(stderr),
            "Error parsing image name \"docker://x\": reading manifest y in x: manifest unknown"
        );
        assert_eq!(skopeo_error_line("plain failure\n"), "plain failure");
    }
}
