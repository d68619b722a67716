//! The fault proxy (support/fault.rs) against a real Distribution registry and real crane
//! and skopeo: it passes traffic through unchanged (keep-alive, uploads with bodies, HEAD),
//! and each fault does what reliability tests rely on.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::support::fault::{Fault, FaultProxy, Rule};
use crate::support::image::{self, Format, Kind, OciLayout};
use crate::support::registry::Registry;
use crate::support::{Tools, tools};

fn crane(tools: &Tools, args: &[&str]) -> Output {
    Command::new(&tools.crane)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run crane")
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A registry holding `demo/app:1.0` (multi-arch) and its digest.
fn seeded(tools: &Tools) -> (Registry, String) {
    let registry = Registry::start(tools);
    let reference = format!("{}/demo/app:1.0", registry.host());
    image::push_new(
        tools,
        Kind::MultiArch,
        "fault-proxy",
        &reference,
        Format::Oci,
    );
    let digest = image::digest_of(tools, &reference).expect("seeded image");
    (registry, digest)
}

/// One raw HTTP/1.1 exchange (`Connection: close`): the status, the head and the body.
fn http(host: &str, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream.write_all(request).expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status");
    (status, head, response[split + 4..].to_vec())
}

fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    format!(
        "sha256:{}",
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Bytes gzip or a registry cannot shrink.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Uploads a blob as a monolithic upload: `POST` to open it, then one `PUT ?digest=` with
/// a `Content-Length` body, each on its own connection.
fn upload_monolithic(host: &str, repository: &str, blob: &[u8]) -> String {
    let digest = sha256(blob);
    let (status, head, _) = http(
        host,
        format!(
            "POST /v2/{repository}/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(status, 202, "open upload: {head}");
    let location = header(&head, "Location");
    let path = &location[location.find("/v2/").expect("upload path")..];
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut request = format!(
        "PUT {path}{separator}digest={digest} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        blob.len()
    )
    .into_bytes();
    request.extend_from_slice(blob);
    let (status, head, body) = http(host, &request);
    assert_eq!(
        status,
        201,
        "monolithic upload: {head}\n{}",
        String::from_utf8_lossy(&body)
    );
    digest
}

#[test]
fn pass_through_serves_crane_and_skopeo_over_keep_alive() {
    let Some(tools) = tools() else { return };
    let (registry, digest) = seeded(&tools);
    let proxy = FaultProxy::start(registry.host());
    assert_eq!(proxy.upstream(), registry.host());
    assert_eq!(proxy.host(), format!("127.0.0.1:{}", proxy.port()));

    let through = crane(
        &tools,
        &["digest", &format!("{}/demo/app:1.0", proxy.host())],
    );
    assert!(through.status.success(), "{}", stderr_of(&through));
    assert_eq!(stdout_of(&through), digest);

    // A copy inside the registry, both sides through the proxy: manifest GETs, blob
    // HEADs, cross-repository mounts and uploads.
    let copy = crane(
        &tools,
        &[
            "copy",
            &format!("{}/demo/app:1.0", proxy.host()),
            &format!("{}/copied/app:1.0", proxy.host()),
        ],
    );
    assert!(copy.status.success(), "{}", stderr_of(&copy));
    assert_eq!(
        image::digest_of(&tools, &format!("{}/copied/app:1.0", registry.host())),
        Some(digest.clone())
    );

    // skopeo uploads new blobs (POST, PATCH/PUT with bodies) through the proxy.
    OciLayout::new(Kind::Single, "fault-proxy-skopeo", 200_000).push(
        &tools,
        &format!("{}/pushed/app:2.0", proxy.host()),
        Format::Oci,
    );
    let pushed = image::digest_of(&tools, &format!("{}/pushed/app:2.0", registry.host()));
    assert!(pushed.is_some(), "skopeo's push through the proxy landed");

    let seen = proxy.requests();
    assert!(
        seen.iter()
            .all(|s| s.rule.is_none() && s.fault == Fault::PassThrough),
        "no rule, nothing injected: {seen:#?}"
    );
    assert!(
        seen.iter()
            .all(|s| s.status.is_some() && s.duration.is_some()),
        "every request answered: {seen:#?}"
    );
    assert!(proxy.count("HEAD", "/manifests/1.0") >= 1, "{seen:#?}");
    assert!(proxy.count("PUT", "/manifests/") >= 2, "{seen:#?}");
    assert!(
        proxy.count("PATCH", "/blobs/uploads/") + proxy.count("PUT", "/blobs/uploads/") >= 2,
        "{seen:#?}"
    );
    // Every request the proxy saw reached the registry, and nothing else did.
    let upstream = registry.requests();
    let proxied = seen.iter().filter(|s| s.path.starts_with("/v2/")).count();
    assert!(
        upstream.len() >= proxied,
        "registry saw {} requests, proxy {proxied}",
        upstream.len()
    );
    assert!(
        proxy.connections() < seen.len() as u64,
        "keep-alive: {} connections for {} requests",
        proxy.connections(),
        seen.len()
    );
}

#[test]
fn request_bodies_pass_with_content_length_and_chunked_framing() {
    let Some(tools) = tools() else { return };
    let registry = Registry::start(&tools);
    let proxy = FaultProxy::start(registry.host());

    let blob = noise(300_000);
    let digest = upload_monolithic(&proxy.host(), "raw/blob", &blob);
    let (status, _, body) = http(
        &proxy.host(),
        format!("GET /v2/raw/blob/blobs/{digest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!((status, sha256(&body)), (200, digest.clone()));

    // A chunked PATCH, as a streaming client sends it, on one keep-alive connection.
    let chunked = noise(70_001);
    let chunked_digest = sha256(&chunked);
    let mut stream = TcpStream::connect(proxy.host()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
    stream
        .write_all(
            b"POST /v2/raw/chunked/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("start upload");
    let (status, head) = read_response(&mut reader, false);
    assert_eq!(status, 202, "{head}");
    let location = header(&head, "Location");
    let path = location
        .find("/v2/")
        .map(|i| location[i..].to_owned())
        .expect("upload location");
    let mut patch = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in chunked.chunks(16_384) {
        patch.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
        patch.extend_from_slice(piece);
        patch.extend_from_slice(b"\r\n");
    }
    patch.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&patch).expect("patch");
    let (status, head) = read_response(&mut reader, false);
    assert_eq!(status, 202, "{head}");
    let location = header(&head, "Location");
    let path = location
        .find("/v2/")
        .map(|i| location[i..].to_owned())
        .expect("upload location");
    let separator = if path.contains('?') { '&' } else { '?' };
    stream
        .write_all(
            format!(
                "PUT {path}{separator}digest={chunked_digest} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("finish upload");
    let (status, head) = read_response(&mut reader, false);
    assert_eq!(status, 201, "{head}");
    // A HEAD on the same connection: the answer has a Content-Length but no body, so the
    // next request on the connection must still work.
    stream
        .write_all(
            format!("HEAD /v2/raw/chunked/blobs/{chunked_digest} HTTP/1.1\r\nHost: x\r\n\r\n")
                .as_bytes(),
        )
        .expect("head");
    let (status, head) = read_response(&mut reader, true);
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "Content-Length"), chunked.len().to_string());
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("get");
    let (status, _) = read_response(&mut reader, false);
    assert_eq!(status, 200);
    // Two for the monolithic upload, one for its GET, one for the rest.
    assert_eq!(proxy.connections(), 4, "{:#?}", proxy.requests());
    let (status, _, body) = http(
        &registry.host(),
        format!(
            "GET /v2/raw/chunked/blobs/{chunked_digest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!((status, body.len()), (200, chunked.len()));
}

/// Reads one response on a keep-alive connection: its status and head; the body (small
/// here, framed by `Content-Length`) is drained unless the response answers a HEAD.
fn read_response(reader: &mut impl std::io::BufRead, answers_head: bool) -> (u16, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read head line");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in `{head}`"));
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    if !answers_head {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("read body");
    }
    (status, head)
}

fn header(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {name} in `{head}`"))
}

#[test]
fn crane_retries_an_injected_429_and_the_proxy_counts_each_attempt() {
    let Some(tools) = tools() else { return };
    let (registry, digest) = seeded(&tools);
    let before = registry.counts();
    let proxy = FaultProxy::start(registry.host()).rule(
        Rule::new("HEAD", "/manifests/")
            .attempts(1..=2)
            .respond(Fault::too_many_requests().header("Retry-After", "1")),
    );
    let output = crane(
        &tools,
        &["digest", &format!("{}/demo/app:1.0", proxy.host())],
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stdout_of(&output), digest);
    let seen = proxy.requests();
    assert_eq!(proxy.count("HEAD", "/manifests/"), 3, "{seen:#?}");
    assert_eq!(proxy.fired(0), 2, "{seen:#?}");
    assert_eq!(
        seen.iter()
            .filter(|s| s.method == "HEAD")
            .map(|s| (s.attempt, s.status))
            .collect::<Vec<_>>(),
        [(1, Some(429)), (2, Some(429)), (0, Some(200))],
        "the third attempt passed through"
    );
    assert_eq!(proxy.count("GET", "/manifests/"), 0, "no fallback GET");
    let heads: Vec<_> = seen.iter().filter(|s| s.method == "HEAD").collect();
    assert!(
        heads.windows(2).all(|pair| pair[0].at < pair[1].at),
        "attempts recorded in order: {heads:#?}"
    );
    assert_eq!(
        (registry.counts() - before).manifest_heads,
        1,
        "only the third reached it"
    );

    // Every attempt limited: crane gives up after its own retries and says why.
    let limited = FaultProxy::start(registry.host())
        .rule(Rule::new("*", "/manifests/").respond(Fault::too_many_requests()));
    let output = crane(
        &tools,
        &["digest", &format!("{}/demo/app:1.0", limited.host())],
    );
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("TOOMANYREQUESTS"),
        "{}",
        stderr_of(&output)
    );
    assert!(
        limited.count("*", "/manifests/") >= 3,
        "{:#?}",
        limited.requests()
    );
}

#[test]
fn server_errors_and_delays_are_injected_then_pass() {
    let Some(tools) = tools() else { return };
    let (registry, digest) = seeded(&tools);
    let proxy = FaultProxy::start(registry.host())
        .rule(
            Rule::new("GET", "/manifests/1.0")
                .attempts(1..=1)
                .respond(Fault::status(503).body("injected")),
        )
        .rule(
            Rule::new("GET", "/manifests/1.0")
                .attempts(2..=2)
                .respond(Fault::registry_error(500, "UNKNOWN", "injected")),
        )
        .rule(
            Rule::new("GET", "/manifests/1.0")
                .attempts(3..=3)
                .respond(Fault::delay_ms(600)),
        );
    let started = Instant::now();
    let output = crane(
        &tools,
        &["manifest", &format!("{}/demo/app:1.0", proxy.host())],
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(sha256(&output.stdout), digest, "the manifest itself");
    assert!(started.elapsed() >= Duration::from_millis(600));
    let gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.contains("/manifests/"))
        .map(|s| (s.rule, s.status))
        .collect();
    assert_eq!(
        gets,
        [
            (Some(0), Some(503)),
            (Some(1), Some(500)),
            (Some(2), Some(200))
        ]
    );
}

#[test]
fn reset_sends_a_tcp_rst_and_fails_crane() {
    let Some(tools) = tools() else { return };
    let (registry, _) = seeded(&tools);
    let before = registry.counts();
    let proxy = FaultProxy::start(registry.host())
        .rule(
            Rule::new("GET", "/v2/")
                .attempts(1..=1)
                .respond(Fault::Reset),
        )
        .rule(
            Rule::new("GET", "/v2/")
                .attempts(2..=2)
                .respond(Fault::Close),
        )
        .rule(Rule::new("*", "/manifests/").respond(Fault::Reset));

    let mut stream = TcpStream::connect(proxy.host()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut buf = [0_u8; 64];
    let read = stream.read(&mut buf);
    assert!(
        matches!(&read, Err(err) if err.kind() == ErrorKind::ConnectionReset),
        "a reset, not a clean close: {read:?}"
    );
    // Close, by contrast, is a clean end of stream.
    let mut stream = TcpStream::connect(proxy.host()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    assert_eq!(stream.read(&mut buf).expect("a clean close"), 0);

    let output = crane(
        &tools,
        &["digest", &format!("{}/demo/app:1.0", proxy.host())],
    );
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("connection reset") || stderr.contains("EOF"),
        "{stderr}"
    );
    assert!(proxy.count("*", "/manifests/") >= 1);
    let reached = registry.counts() - before;
    assert_eq!(
        reached.manifest_heads + reached.manifest_gets,
        0,
        "nothing reached the registry"
    );
    assert!(
        proxy
            .requests()
            .iter()
            .filter(|s| s.path.contains("/manifests/"))
            .all(|s| s.status.is_none())
    );
}

#[test]
fn reset_after_cuts_a_body_midway() {
    let Some(tools) = tools() else { return };
    let registry = Registry::start(&tools);
    let digest = upload_monolithic(&registry.host(), "raw/cut", &noise(1_000_000));
    let proxy = FaultProxy::start(registry.host())
        .rule(Rule::new("GET", "/blobs/").respond(Fault::reset_after(100_000)));
    let output = crane(
        &tools,
        &["blob", &format!("{}/raw/cut@{digest}", proxy.host())],
    );
    assert!(!output.status.success(), "a cut blob must not succeed");
    assert!(
        output.stdout.len() < 1_000_000,
        "got {} bytes",
        output.stdout.len()
    );
    let cut = proxy.requests();
    assert!(
        cut.iter()
            .any(|s| s.status == Some(200) && s.duration.is_none()),
        "head sent, body never completed: {cut:#?}"
    );
}

#[test]
fn stall_accepts_and_never_answers() {
    let Some(tools) = tools() else { return };
    let (registry, _) = seeded(&tools);
    let before = registry.counts();
    let proxy =
        FaultProxy::start(registry.host()).rule(Rule::new("*", "/v2/").respond(Fault::Stall));

    let mut stream = TcpStream::connect(proxy.host()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("read timeout");
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut buf = [0_u8; 64];
    let read = stream.read(&mut buf);
    assert!(
        matches!(&read, Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "no answer, connection still open: {read:?}"
    );

    let mut child = Command::new(&tools.crane)
        .args(["digest", &format!("{}/demo/app:1.0", proxy.host())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn crane");
    assert!(proxy.wait_for("*", "/v2/", 2, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().expect("poll crane").is_none(),
        "crane still waits on a stalled registry"
    );
    child.kill().expect("kill crane");
    child.wait().expect("reap crane");
    assert!(proxy.requests().iter().all(|s| s.status.is_none()));
    assert_eq!((registry.counts() - before).manifest_heads, 0);
}

#[test]
fn throttle_makes_a_20_mb_blob_take_over_a_second() {
    let Some(tools) = tools() else { return };
    let registry = Registry::start(&tools);
    let blob = noise(20 * 1024 * 1024);
    let digest = upload_monolithic(&registry.host(), "raw/big", &blob);
    let proxy = FaultProxy::start(registry.host())
        .rule(Rule::new("GET", "/blobs/sha256:").respond(Fault::throttle(12 * 1024 * 1024)));
    let started = Instant::now();
    let output = crane(
        &tools,
        &["blob", &format!("{}/raw/big@{digest}", proxy.host())],
    );
    let elapsed = started.elapsed();
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(sha256(&output.stdout), digest, "the whole blob, intact");
    assert!(elapsed > Duration::from_secs(1), "took {elapsed:?}");
    let get = proxy
        .requests()
        .into_iter()
        .find(|s| s.method == "GET" && s.path.contains("/blobs/"))
        .expect("the blob GET");
    assert_eq!(get.rule, Some(0));
    let duration = get.duration.expect("completed");
    assert!(duration > Duration::from_millis(1500), "{duration:?}");
}

#[test]
fn rewrite_digest_changes_what_crane_reports() {
    let Some(tools) = tools() else { return };
    let (registry, digest) = seeded(&tools);
    let fake = format!("sha256:{}", "0".repeat(64));
    let proxy = FaultProxy::start(registry.host())
        .rule(Rule::new("HEAD", "/manifests/1.0").respond(Fault::rewrite_digest(&fake)));
    let output = crane(
        &tools,
        &["digest", &format!("{}/demo/app:1.0", proxy.host())],
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stdout_of(&output), fake);
    assert_ne!(fake, digest);
    // The registry itself still says the real digest.
    assert_eq!(
        image::digest_of(&tools, &format!("{}/demo/app:1.0", registry.host())),
        Some(digest)
    );
}

#[test]
fn rules_added_while_running_apply_and_clear() {
    let Some(tools) = tools() else { return };
    let (registry, digest) = seeded(&tools);
    let proxy = FaultProxy::start(registry.host());
    let reference = format!("{}/demo/app:1.0", proxy.host());
    assert_eq!(stdout_of(&crane(&tools, &["digest", &reference])), digest);
    proxy.add_rule(Rule::new("*", "/manifests/").respond(Fault::registry_error(
        404,
        "MANIFEST_UNKNOWN",
        "injected",
    )));
    let output = crane(&tools, &["digest", &reference]);
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("MANIFEST_UNKNOWN"),
        "{}",
        stderr_of(&output)
    );
    proxy.clear_rules();
    assert_eq!(stdout_of(&crane(&tools, &["digest", &reference])), digest);
}
