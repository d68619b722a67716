//! A fault-injecting HTTP/1.1 proxy in front of a real registry, for reliability tests.
//!
//! [`FaultProxy`] listens on a free 127.0.0.1 port and forwards every request to an upstream
//! (`127.0.0.1:PORT`, plain HTTP). A table of [`Rule`]s, matched on method, a path substring
//! and the attempt number (the n-th request matching that rule), decides per request
//! whether to pass it through or to inject a [`Fault`]: an error status (429 with
//! `Retry-After`, 5xx), a connection reset (a real TCP RST), a stall, a delay, a throttled
//! response body, a body cut after N bytes, or a rewritten `Docker-Content-Digest` header.
//! Every request is recorded ([`Seen`]) for assertions.
//!
//! It speaks just enough HTTP/1.1 for registry clients (crane, skopeo): keep-alive
//! connections with several requests, request bodies framed by `Content-Length` or chunked
//! transfer encoding (blob uploads), `Expect: 100-continue`, and HEAD responses without a
//! body. Bodies are forwarded as raw bytes; only heads and framing are parsed. Each
//! forwarded request uses a fresh upstream connection, so an upstream that closes an idle
//! keep-alive connection can never fail a request. Threads, not tokio: every connection
//! has its own thread, blocking I/O keeps the framing code short, and dropping the proxy
//! shuts every socket down and joins every thread.
//!
//! ```ignore
//! let proxy = FaultProxy::start(registry.host()).rule(
//!     Rule::new("HEAD", "/manifests/")
//!         .attempts(1..=2)
//!         .respond(Fault::too_many_requests().header("Retry-After", "1")),
//! );
//! // ... run crane against proxy.host() ...
//! assert_eq!(proxy.count("HEAD", "/manifests/"), 3);
//! ```

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The largest request or response head the proxy reads; anything longer is not a registry.
const MAX_HEAD_BYTES: u64 = 64 * 1024;

/// What the proxy does with a request that a rule matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward it unchanged (also what happens when no rule fires).
    PassThrough,
    /// Answer without asking the upstream. The request body is read and discarded, and the
    /// connection stays usable (keep-alive). `Content-Length` is added unless given.
    Status {
        /// HTTP status code.
        code: u16,
        /// Extra headers, e.g. `Retry-After`.
        headers: Vec<(String, String)>,
        /// The body (not sent for HEAD).
        body: Vec<u8>,
    },
    /// Close the connection abruptly with a TCP RST (SO_LINGER 0), before any response.
    Reset,
    /// Close the connection cleanly (FIN) without answering.
    Close,
    /// Accept the request and never answer; the socket is held open until the proxy drops.
    Stall,
    /// Wait, then pass the request through.
    Delay(Duration),
    /// Pass through, but send the response body at most this fast.
    Throttle {
        /// Response body bytes per second.
        bytes_per_sec: u64,
    },
    /// Pass through, send the response head and the first `bytes` of the body, then reset
    /// the connection: a transfer that breaks in the middle.
    ResetAfter {
        /// Body bytes sent before the reset.
        bytes: u64,
    },
    /// Pass through, with the response's `Docker-Content-Digest` header replaced by (or set
    /// to) this value: a registry or cache that reports a different digest.
    RewriteDigest(String),
    /// Pass through, without the response's `Docker-Content-Digest` header: a proxy that
    /// drops it (clients then have to GET the manifest to know its digest).
    StripDigest,
}

impl Fault {
    /// An error status without a body; add headers and a body with [`Fault::header`] and
    /// [`Fault::body`].
    pub fn status(code: u16) -> Self {
        Self::Status {
            code,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A registry error in the distribution format:
    /// `{"errors":[{"code":"<code>","message":"<message>"}]}` with a JSON content type.
    pub fn registry_error(status: u16, code: &str, message: &str) -> Self {
        let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
        Self::status(status)
            .header("Content-Type", "application/json")
            .body(body.to_string())
    }

    /// Docker Hub's answer over the pull limit: 429 `TOOMANYREQUESTS`.
    pub fn too_many_requests() -> Self {
        Self::registry_error(
            429,
            "TOOMANYREQUESTS",
            "You have reached your pull rate limit. (injected by the fault proxy)",
        )
    }

    /// Adds a header to a [`Fault::Status`]. Panics on any other fault (a test bug).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match &mut self {
            Self::Status { headers, .. } => headers.push((name.to_owned(), value.to_owned())),
            other => panic!("Fault::header applies to Fault::status, not {other:?}"),
        }
        self
    }

    /// Sets the body of a [`Fault::Status`]. Panics on any other fault (a test bug).
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        match &mut self {
            Self::Status { body, .. } => *body = bytes.into(),
            other => panic!("Fault::body applies to Fault::status, not {other:?}"),
        }
        self
    }

    /// [`Fault::Delay`] in milliseconds.
    pub fn delay_ms(ms: u64) -> Self {
        Self::Delay(Duration::from_millis(ms))
    }

    /// [`Fault::Throttle`].
    pub fn throttle(bytes_per_sec: u64) -> Self {
        assert!(bytes_per_sec > 0, "a throttle needs a positive rate");
        Self::Throttle { bytes_per_sec }
    }

    /// [`Fault::ResetAfter`].
    pub fn reset_after(bytes: u64) -> Self {
        Self::ResetAfter { bytes }
    }

    /// [`Fault::RewriteDigest`].
    pub fn rewrite_digest(digest: &str) -> Self {
        Self::RewriteDigest(digest.to_owned())
    }

    /// What Zot v2.1 without `http.compat: ["docker2s2"]` answers to a Docker-format
    /// manifest PUT: 415 `MANIFEST_INVALID` naming the media type. Zot never rewrites it.
    pub fn zot_refuses_media_type(media_type: &str) -> Self {
        let body = serde_json::json!({"errors": [{
            "code": "MANIFEST_INVALID",
            "message": "manifest invalid",
            "detail": {"mediaType": media_type},
        }]});
        Self::status(415)
            .header("Content-Type", "application/json")
            .body(body.to_string())
    }
}

/// Docker Hub's pull quota: every manifest response carries `ratelimit-limit`,
/// `ratelimit-remaining` (`N;w=WINDOW`) and `docker-ratelimit-source`; each manifest GET
/// that passes spends one pull; with none left a GET gets 429 `TOOMANYREQUESTS` (a HEAD is
/// free and still answers).
#[derive(Debug)]
pub struct Quota {
    /// Pulls per window.
    pub limit: u64,
    /// The window in seconds.
    pub window_secs: u64,
    /// The source the registry names (an IP address or account id).
    pub source: String,
    remaining: Mutex<u64>,
}

impl Quota {
    /// A quota with `remaining` of `limit` pulls left.
    pub fn new(limit: u64, remaining: u64, window_secs: u64, source: &str) -> Self {
        Self {
            limit,
            window_secs,
            source: source.to_owned(),
            remaining: Mutex::new(remaining),
        }
    }

    /// Pulls left now.
    pub fn remaining(&self) -> u64 {
        *lock(&self.remaining)
    }

    fn headers(&self, remaining: u64) -> Vec<(String, String)> {
        vec![
            (
                "ratelimit-limit".to_owned(),
                format!("{};w={}", self.limit, self.window_secs),
            ),
            (
                "ratelimit-remaining".to_owned(),
                format!("{remaining};w={}", self.window_secs),
            ),
            ("docker-ratelimit-source".to_owned(), self.source.clone()),
        ]
    }
}

/// A bearer-token gate in front of the registry, like Docker Hub's: every `/v2/` request
/// without a live token gets a 401 challenge naming the proxy's own `/token` endpoint,
/// which hands out tokens. A rule for `/token` (a stall, an HTML page) fires instead of the
/// token endpoint.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// `expires_in` in the token response (`None`: the field is left out).
    pub expires_in: Option<u64>,
    /// How long a token is really accepted (a server may revoke earlier than it said).
    pub valid_for: Duration,
}

/// One line of the rule table: which requests it matches and what it does to them.
#[derive(Debug, Clone)]
pub struct Rule {
    method: String,
    path: String,
    content_type: Option<String>,
    first: usize,
    last: usize,
    fault: Fault,
}

impl Rule {
    /// Matches requests with this method (`"*"` for any) whose path (with query) contains
    /// `path_contains`. By default every matching attempt fires and passes through.
    pub fn new(method: &str, path_contains: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path_contains.to_owned(),
            content_type: None,
            first: 1,
            last: usize::MAX,
            fault: Fault::PassThrough,
        }
    }

    /// Fires only on these attempts, counted from 1 over the requests that match this
    /// rule's method and path (`1..=2`: the first two; `3..`: from the third on).
    pub fn attempts(mut self, range: impl RangeBounds<usize>) -> Self {
        self.first = match range.start_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n + 1,
            Bound::Unbounded => 1,
        };
        self.last = match range.end_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n.saturating_sub(1),
            Bound::Unbounded => usize::MAX,
        };
        self
    }

    /// Matches only requests whose `Content-Type` contains this (a manifest's media type).
    pub fn content_type(mut self, contains: &str) -> Self {
        self.content_type = Some(contains.to_owned());
        self
    }

    /// What to do when the rule fires.
    pub fn respond(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    fn matches(&self, method: &str, target: &str, content_type: Option<&str>) -> bool {
        (self.method == "*" || self.method.eq_ignore_ascii_case(method))
            && target.contains(&self.path)
            && self
                .content_type
                .as_deref()
                .is_none_or(|wanted| content_type.is_some_and(|given| given.contains(wanted)))
    }
}

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The request target (path and query), e.g. `/v2/demo/manifests/1.0`.
    pub path: String,
    /// The client's `User-Agent` (`image-sync/...`, `go-containerregistry/...`, ...).
    pub user_agent: String,
    /// When the request head arrived, since the proxy started.
    pub at: Duration,
    /// Index (in order of addition) of the rule that fired, if any.
    pub rule: Option<usize>,
    /// The n-th request matching that rule (0 when no rule fired).
    pub attempt: usize,
    /// What the proxy did ([`Fault::PassThrough`] when no rule fired).
    pub fault: Fault,
    /// The status sent to the client; `None` when no response head was sent.
    pub status: Option<u16>,
    /// From the request head to the end of the response body; `None` when no response
    /// was completed (reset, stall, cut).
    pub duration: Option<Duration>,
}

/// A running fault proxy; stops (shutting down every socket and joining every thread) on
/// drop.
pub struct FaultProxy {
    shared: Arc<Shared>,
    port: u16,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: String,
    /// The proxy's own port (for the token realm it names).
    port: u16,
    token_auth: Option<TokenAuth>,
    quota: Mutex<Option<Arc<Quota>>>,
    /// Tokens handed out, with when.
    issued: Mutex<HashMap<String, Instant>>,
    started: Instant,
    stop: AtomicBool,
    rules: Mutex<Vec<(Rule, usize)>>,
    seen: Mutex<Vec<Seen>>,
    /// A clone of every open socket, so that drop can shut them down and unblock threads.
    open: Mutex<HashMap<u64, TcpStream>>,
    /// Stalled client connections.
    held: Mutex<Vec<TcpStream>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
    connections: AtomicU64,
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port in front of `upstream` (`127.0.0.1:PORT`),
    /// with an empty rule table (everything passes through).
    pub fn start(upstream: impl Into<String>) -> Self {
        Self::start_with(upstream, None)
    }

    /// Starts a proxy that asks for bearer tokens like Docker Hub ([`TokenAuth`]).
    pub fn start_with_tokens(upstream: impl Into<String>, auth: TokenAuth) -> Self {
        Self::start_with(upstream, Some(auth))
    }

    fn start_with(upstream: impl Into<String>, token_auth: Option<TokenAuth>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let port = listener.local_addr().expect("fault proxy address").port();
        let shared = Arc::new(Shared {
            upstream: upstream.into(),
            port,
            token_auth,
            quota: Mutex::new(None),
            issued: Mutex::new(HashMap::new()),
            started: Instant::now(),
            stop: AtomicBool::new(false),
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            open: Mutex::new(HashMap::new()),
            held: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let acceptor_shared = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("fault-proxy-accept".to_owned())
            .spawn(move || accept_loop(&listener, &acceptor_shared))
            .expect("spawn the fault proxy");
        Self {
            shared,
            port,
            acceptor: Some(acceptor),
        }
    }

    /// Adds a rule (builder style).
    pub fn rule(self, rule: Rule) -> Self {
        self.add_rule(rule);
        self
    }

    /// Adds a rule to a running proxy. Rules are tried in order of addition; the first one
    /// whose attempt range holds the request's attempt number fires.
    pub fn add_rule(&self, rule: Rule) {
        lock(&self.shared.rules).push((rule, 0));
    }

    /// Meters manifest requests like Docker Hub ([`Quota`]).
    pub fn with_quota(self, quota: Arc<Quota>) -> Self {
        *lock(&self.shared.quota) = Some(quota);
        self
    }

    /// Removes every rule (and their attempt counters): everything passes through.
    pub fn clear_rules(&self) {
        lock(&self.shared.rules).clear();
    }

    /// `127.0.0.1:PORT`, to use in place of the upstream's host.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The upstream `host:port`.
    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// How many requests with this method (`"*"`: any) had a path containing
    /// `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        let probe = Rule::new(method, path_contains);
        lock(&self.shared.seen)
            .iter()
            .filter(|seen| probe.matches(&seen.method, &seen.path, None))
            .count()
    }

    /// How many client connections the proxy accepted (fewer than requests: keep-alive).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How many times rule `index` (in order of addition) fired.
    pub fn fired(&self, index: usize) -> usize {
        lock(&self.shared.seen)
            .iter()
            .filter(|seen| seen.rule == Some(index))
            .count()
    }

    /// Waits until [`FaultProxy::count`] reaches `at_least`; false when `timeout` passed.
    pub fn wait_for(
        &self,
        method: &str,
        path_contains: &str,
        at_least: usize,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count(method, path_contains) >= at_least {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so that it sees the stop flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for stream in lock(&self.shared.open).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for stream in lock(&self.shared.held).drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

/// Locks a mutex, ignoring poisoning: a panicking test thread must not hide the proxy's
/// records from the test's assertions.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let worker_shared = Arc::clone(shared);
        let worker = std::thread::Builder::new()
            .name("fault-proxy-conn".to_owned())
            .spawn(move || {
                let _ = serve(&worker_shared, stream);
            })
            .expect("spawn a fault proxy connection thread");
        let mut workers = lock(&shared.workers);
        workers.retain(|worker| !worker.is_finished());
        workers.push(worker);
    }
}

impl Shared {
    /// Registers a socket so that drop can shut it down; unregistered when the guard drops.
    fn track(&self, stream: &TcpStream) -> io::Result<Tracked<'_>> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let clone = stream.try_clone()?;
        let mut open = lock(&self.open);
        // Checked under the lock that drop takes too: either drop sees this socket, or this
        // sees the stop flag.
        if self.stop.load(Ordering::SeqCst) {
            let _ = clone.shutdown(Shutdown::Both);
        }
        open.insert(id, clone);
        Ok(Tracked { shared: self, id })
    }

    /// Applies the rule table to a request and records it; returns its record index and
    /// what to do.
    fn decide(&self, method: &str, target: &str, request: &Head) -> (usize, Fault) {
        let mut fired = None;
        let content_type = request.header("Content-Type");
        for (index, (rule, count)) in lock(&self.rules).iter_mut().enumerate() {
            if rule.matches(method, target, content_type) {
                *count += 1;
                if fired.is_none() && (rule.first..=rule.last).contains(count) {
                    fired = Some((index, *count, rule.fault.clone()));
                }
            }
        }
        let (rule, attempt, fault) = match fired {
            Some((index, attempt, fault)) => (Some(index), attempt, fault),
            None => (None, 0, Fault::PassThrough),
        };
        let mut seen = lock(&self.seen);
        seen.push(Seen {
            method: method.to_owned(),
            path: target.to_owned(),
            user_agent: request.header("User-Agent").unwrap_or_default().to_owned(),
            at: self.started.elapsed(),
            rule,
            attempt,
            fault: fault.clone(),
            status: None,
            duration: None,
        });
        (seen.len() - 1, fault)
    }

    /// Whether a rule would fire for this request (without counting it as an attempt).
    fn rule_fires(&self, method: &str, target: &str, request: &Head) -> bool {
        let content_type = request.header("Content-Type");
        lock(&self.rules).iter().any(|(rule, count)| {
            rule.matches(method, target, content_type)
                && (rule.first..=rule.last).contains(&(count + 1))
        })
    }

    /// Records a request the proxy answered itself (the token gate), outside the rules.
    fn record(&self, method: &str, target: &str, request: &Head, status: u16) {
        lock(&self.seen).push(Seen {
            method: method.to_owned(),
            path: target.to_owned(),
            user_agent: request.header("User-Agent").unwrap_or_default().to_owned(),
            at: self.started.elapsed(),
            rule: None,
            attempt: 0,
            fault: Fault::PassThrough,
            status: Some(status),
            duration: Some(Duration::ZERO),
        });
    }

    fn set_status(&self, index: usize, status: u16) {
        if let Some(seen) = lock(&self.seen).get_mut(index) {
            seen.status = Some(status);
        }
    }

    fn finish(&self, index: usize, since: Instant) {
        if let Some(seen) = lock(&self.seen).get_mut(index) {
            seen.duration = Some(since.elapsed());
        }
    }

    /// Sleeps in small steps; false when the proxy stopped meanwhile.
    fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
        false
    }
}

struct Tracked<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        lock(&self.shared.open).remove(&self.id);
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// A request or response head: the start line and the headers, in order.
#[derive(Debug)]
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .flat_map(|(_, value)| value.split(','))
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    }

    fn set_header(&mut self, name: &str, value: &str) {
        self.headers
            .retain(|(key, _)| !key.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
    }

    fn remove_header(&mut self, name: &str) {
        self.headers
            .retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    }

    /// The body framing its headers declare (a response to HEAD, 1xx, 204 and 304 have no
    /// body whatever they declare: the caller handles those).
    fn framing(&self) -> io::Result<Framing> {
        if self.has_token("Transfer-Encoding", "chunked") {
            return Ok(Framing::Chunked);
        }
        match self.header("Content-Length") {
            Some(length) => length
                .trim()
                .parse()
                .map(Framing::Length)
                .map_err(|_| invalid(format!("bad Content-Length `{length}`"))),
            None => Ok(Framing::UntilClose),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = format!("{}\r\n", self.start).into_bytes();
        for (key, value) in &self.headers {
            bytes.extend_from_slice(format!("{key}: {value}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        bytes
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads a head; `None` on a clean end of stream before its first byte.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut limited = reader.take(MAX_HEAD_BYTES);
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        let read = limited.read_until(b'\n', &mut line)?;
        if read == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if !line.ends_with(b"\n") {
            return Err(invalid("head too long or cut".to_owned()));
        }
        let text = String::from_utf8(line)
            .map_err(|_| invalid("head is not UTF-8".to_owned()))?
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        if text.is_empty() {
            if lines.is_empty() {
                continue; // Tolerated blank line before a request line.
            }
            break;
        }
        lines.push(text);
    }
    let mut lines = lines.into_iter();
    let start = lines.next().unwrap_or_default();
    let headers = lines
        .map(|line| {
            line.split_once(':')
                .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
                .ok_or_else(|| invalid(format!("bad header line `{line}`")))
        })
        .collect::<io::Result<_>>()?;
    Ok(Some(Head { start, headers }))
}

/// Copies one body from `reader` to `writer`, exactly as framed (chunk framing included).
fn copy_body(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
    framing: Framing,
) -> io::Result<()> {
    match framing {
        Framing::Length(length) => {
            let copied = io::copy(&mut reader.take(length), writer)?;
            if copied != length {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Framing::UntilClose => {
            io::copy(reader, writer)?;
        }
        Framing::Chunked => loop {
            let line = read_line(reader)?;
            writer.write_all(&line)?;
            let text = String::from_utf8_lossy(&line);
            let size_text = text.split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(size_text, 16)
                .map_err(|_| invalid(format!("bad chunk size `{size_text}`")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let trailer = read_line(reader)?;
                    writer.write_all(&trailer)?;
                    if trailer == b"\r\n" || trailer == b"\n" {
                        break;
                    }
                }
                break;
            }
            copy_body(reader, writer, Framing::Length(size))?;
            writer.write_all(&read_line(reader)?)?;
        },
    }
    Ok(())
}

fn read_line(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    reader.take(4096).read_until(b'\n', &mut line)?;
    if line.ends_with(b"\n") {
        Ok(line)
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

/// Closes a connection with a TCP RST: SO_LINGER 0, then the caller drops every handle.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// The token gate's own answer to a request, when it answers instead of the registry:
/// a token from `/token`, or a 401 challenge for a `/v2/` request without a live token.
fn gate_answer(
    shared: &Shared,
    gate: &TokenAuth,
    method: &str,
    target: &str,
    request: &Head,
) -> Option<(Vec<u8>, u16)> {
    if target.starts_with("/token") {
        let token = format!(
            "proxy-token-{}",
            shared.next_id.fetch_add(1, Ordering::SeqCst)
        );
        lock(&shared.issued).insert(token.clone(), Instant::now());
        let mut body = serde_json::json!({"token": token});
        if let Some(expires_in) = gate.expires_in {
            body["expires_in"] = serde_json::json!(expires_in);
        }
        let body = body.to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        return Some(([head.into_bytes(), body.into_bytes()].concat(), 200));
    }
    if !target.starts_with("/v2/") {
        return None;
    }
    let live = request
        .header("Authorization")
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| lock(&shared.issued).get(token).copied())
        .is_some_and(|issued| issued.elapsed() < gate.valid_for);
    if live {
        return None;
    }
    let repository = target
        .trim_start_matches("/v2/")
        .split("/manifests/")
        .next()
        .and_then(|rest| rest.split("/blobs/").next())
        .unwrap_or_default();
    let actions = if matches!(method, "GET" | "HEAD") {
        "pull"
    } else {
        "pull,push"
    };
    let challenge = format!(
        "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"fault-proxy\",scope=\"repository:{repository}:{actions}\"",
        shared.port
    );
    let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
    let head = format!(
        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nWWW-Authenticate: {challenge}\r\nContent-Length: {}\r\n\r\n",
        if method == "HEAD" { 0 } else { body.len() }
    );
    let mut bytes = head.into_bytes();
    if method != "HEAD" {
        bytes.extend_from_slice(body.as_bytes());
    }
    Some((bytes, 401))
}

/// Serves one client connection until it closes or a fault ends it.
fn serve(shared: &Shared, client: TcpStream) -> io::Result<()> {
    let _tracked = shared.track(&client)?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        // A TLS ClientHello (crane tries https first): answer like Go's plain HTTP server,
        // so the client falls back to http at once.
        match reader.fill_buf()?.first() {
            None => return Ok(()),
            Some(byte) if !byte.is_ascii_alphabetic() && *byte != b'\r' && *byte != b'\n' => {
                let _ = client.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n");
                return Ok(());
            }
            Some(_) => {}
        }
        let Some(mut request) = read_head(&mut reader)? else {
            return Ok(());
        };
        let mut parts = request.start.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let http10 = parts.next() == Some("HTTP/1.0");
        let close = request.has_token("Connection", "close")
            || (http10 && !request.has_token("Connection", "keep-alive"));
        let request_framing = match request.framing()? {
            Framing::UntilClose => Framing::Length(0),
            framing => framing,
        };
        // A rule for the token endpoint (a hang, an HTML page) fires before the gate answers.
        let token_rule = shared.token_auth.is_some()
            && target.starts_with("/token")
            && shared.rule_fires(&method, &target, &request);
        if let (Some(gate), false) = (&shared.token_auth, token_rule)
            && let Some(answer) = gate_answer(shared, gate, &method, &target, &request)
        {
            copy_body(&mut reader, &mut io::sink(), request_framing)?;
            client.write_all(&answer.0)?;
            client.flush()?;
            shared.record(&method, &target, &request, answer.1);
            if close {
                return Ok(());
            }
            continue;
        }
        let quota = lock(&shared.quota).clone();
        let mut quota_headers = Vec::new();
        if let Some(quota) = quota.filter(|_| target.contains("/manifests/")) {
            let mut remaining = lock(&quota.remaining);
            if method == "GET" && *remaining == 0 {
                drop(remaining);
                copy_body(&mut reader, &mut io::sink(), request_framing)?;
                let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit. (fault proxy quota)"}]}"#;
                let mut head = Head {
                    start: "HTTP/1.1 429 Too Many Requests".to_owned(),
                    headers: quota.headers(0),
                };
                head.set_header("Content-Type", "application/json");
                head.set_header("Content-Length", &body.len().to_string());
                client.write_all(&head.to_bytes())?;
                client.write_all(body.as_bytes())?;
                client.flush()?;
                shared.record(&method, &target, &request, 429);
                continue;
            }
            if method == "GET" {
                *remaining -= 1;
            }
            quota_headers = quota.headers(*remaining);
        }
        let (record, fault) = shared.decide(&method, &target, &request);
        let started = Instant::now();
        if request.has_token("Expect", "100-continue") {
            // Answered here, so that the body follows at once and the upstream never sends
            // an interim response.
            request.remove_header("Expect");
            client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        match &fault {
            Fault::Reset => {
                reset(&client);
                return Ok(());
            }
            Fault::Close => {
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Fault::Stall => {
                lock(&shared.held).push(client);
                return Ok(());
            }
            Fault::Status {
                code,
                headers,
                body,
            } => {
                copy_body(&mut reader, &mut io::sink(), request_framing)?;
                let mut head = Head {
                    start: format!("HTTP/1.1 {code} {}", reason(*code)),
                    headers: headers.clone(),
                };
                if head.header("Content-Length").is_none() {
                    head.set_header("Content-Length", &body.len().to_string());
                }
                if close {
                    head.set_header("Connection", "close");
                }
                client.write_all(&head.to_bytes())?;
                if method != "HEAD" {
                    client.write_all(body)?;
                }
                client.flush()?;
                shared.set_status(record, *code);
                shared.finish(record, started);
                if close {
                    return Ok(());
                }
                continue;
            }
            Fault::Delay(duration) => {
                if !shared.sleep(*duration) {
                    return Ok(());
                }
            }
            Fault::PassThrough
            | Fault::Throttle { .. }
            | Fault::ResetAfter { .. }
            | Fault::RewriteDigest(_)
            | Fault::StripDigest => {}
        }
        let exchange = Exchange {
            method: &method,
            request: &request,
            request_framing,
            fault: &fault,
            record,
            started,
            extra_headers: quota_headers,
        };
        match forward(shared, &exchange, &mut reader, &mut client) {
            Ok(keep_alive) if keep_alive && !close => {}
            Ok(_) => return Ok(()),
            Err(err) => {
                reset(&client);
                return Err(err);
            }
        }
    }
}

/// One request being forwarded.
struct Exchange<'a> {
    method: &'a str,
    request: &'a Head,
    request_framing: Framing,
    fault: &'a Fault,
    record: usize,
    started: Instant,
    /// Headers added to the upstream's response (the quota's).
    extra_headers: Vec<(String, String)>,
}

/// Forwards one request over a fresh upstream connection and relays the response through
/// the fault; true when the client connection may carry another request.
fn forward(
    shared: &Shared,
    exchange: &Exchange<'_>,
    reader: &mut BufReader<TcpStream>,
    client: &mut TcpStream,
) -> io::Result<bool> {
    let upstream = match TcpStream::connect(&shared.upstream) {
        Ok(upstream) => upstream,
        Err(err) => {
            let body = format!(
                "fault proxy: upstream {} unreachable: {err}\n",
                shared.upstream
            );
            copy_body(reader, &mut io::sink(), exchange.request_framing)?;
            client.write_all(
                format!(
                    "HTTP/1.1 502 Bad Gateway\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )?;
            shared.set_status(exchange.record, 502);
            shared.finish(exchange.record, exchange.started);
            return Ok(true);
        }
    };
    let _tracked = shared.track(&upstream)?;
    let mut upstream_reader = BufReader::new(upstream.try_clone()?);
    let mut upstream_writer = io::BufWriter::new(upstream);
    upstream_writer.write_all(&exchange.request.to_bytes())?;
    copy_body(reader, &mut upstream_writer, exchange.request_framing)?;
    upstream_writer.flush()?;

    let mut response = loop {
        let head = read_head(&mut upstream_reader)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let status = status_of(&head)?;
        // Interim responses (we strip `Expect`, so hardly ever) are not the answer.
        if !(100..200).contains(&status) || status == 101 {
            break head;
        }
    };
    let status = status_of(&response)?;
    match exchange.fault {
        Fault::RewriteDigest(digest) => response.set_header("Docker-Content-Digest", digest),
        Fault::StripDigest => response.remove_header("Docker-Content-Digest"),
        _ => {}
    }
    for (name, value) in &exchange.extra_headers {
        response.set_header(name, value);
    }
    let framing = if exchange.method == "HEAD" || status < 200 || status == 204 || status == 304 {
        Framing::Length(0)
    } else {
        response.framing()?
    };
    client.write_all(&response.to_bytes())?;
    shared.set_status(exchange.record, status);
    let mut body_writer = FaultWriter {
        inner: client,
        stop: &shared.stop,
        started: Instant::now(),
        written: 0,
        bytes_per_sec: match exchange.fault {
            Fault::Throttle { bytes_per_sec } => Some(*bytes_per_sec),
            _ => None,
        },
        cut_after: match exchange.fault {
            Fault::ResetAfter { bytes } => Some(*bytes),
            _ => None,
        },
    };
    copy_body(&mut upstream_reader, &mut body_writer, framing)?;
    body_writer.flush()?;
    shared.finish(exchange.record, exchange.started);
    Ok(framing != Framing::UntilClose && !response.has_token("Connection", "close"))
}

fn status_of(head: &Head) -> io::Result<u16> {
    head.start
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line `{}`", head.start)))
}

/// Writes a response body to the client, paced ([`Fault::Throttle`]) or cut
/// ([`Fault::ResetAfter`]).
struct FaultWriter<'a> {
    inner: &'a mut TcpStream,
    stop: &'a AtomicBool,
    started: Instant,
    written: u64,
    bytes_per_sec: Option<u64>,
    cut_after: Option<u64>,
}

impl Write for FaultWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(io::Error::other("fault proxy stopped"));
        }
        let mut len = buf.len();
        if let Some(limit) = self.cut_after {
            if self.written >= limit && !buf.is_empty() {
                self.inner.flush()?;
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("fault: connection reset after {limit} body bytes"),
                ));
            }
            len = len.min(usize::try_from(limit - self.written).unwrap_or(usize::MAX));
        }
        if let Some(rate) = self.bytes_per_sec {
            // Slices of 1/20 s, each sent no earlier than the rate allows.
            len = len.min(usize::try_from((rate / 20).max(1)).unwrap_or(usize::MAX));
            let due = Duration::from_secs_f64((self.written + len as u64) as f64 / rate as f64);
            let elapsed = self.started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        let written = self.inner.write(&buf[..len])?;
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected",
    }
}
