//! Faults a real cluster produces: a dead cache, a refusing or hanging upstream, the run
//! deadline, signals, and scale. Each test fails without the behaviour it names.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::fault::{Fault, FaultProxy, Rule};
use crate::support::image::{self, Format, Kind, OciLayout};
use crate::support::registry::{HungSocket, Registry, free_port};
use crate::support::runner::{ImageSync, outcome};
use crate::support::tls_registry::TlsRegistry;
use crate::support::{self, Tools, pair};

fn yaml(cache: &str, images: &[String], settings: &str) -> String {
    let mut yaml = format!("cache_registry: \"{cache}\"\nimages:\n");
    for (i, source) in images.iter().enumerate() {
        yaml.push_str(&format!("  - {{source: \"{source}\", tag: \"t{i}\"}}\n"));
    }
    yaml.push_str("settings:\n  pull_timeout_secs: 60\n");
    yaml.push_str(settings);
    yaml
}

/// The `key=value` field of the log's last "run finished" line.
fn finished_field(stderr: &str, key: &str) -> Option<u64> {
    let line = stderr
        .lines()
        .rev()
        .find(|line| line.contains("run finished"))?;
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_dead_cache_fails_the_whole_run_at_once_with_one_cause() {
    let Some(tools) = support::tools() else {
        return;
    };
    let upstream = Registry::start(&tools);
    let dead_cache = format!("127.0.0.1:{}", free_port());
    let images: Vec<String> = (0..5)
        .map(|i| format!("{}/app/i{i}", upstream.host()))
        .collect();
    let before = upstream.counts();
    let run = ImageSync::new()
        .config(&yaml(&dead_cache, &images, ""))
        .run();
    run.expect_code(1);
    assert_eq!(run.actions(), vec!["failed"; 5]);
    for i in 0..5 {
        let error = run.result(i)["error"].as_str().expect("error");
        assert!(
            error.starts_with(&format!("skipped: {dead_cache} unreachable;"))
                && error.contains("connection refused"),
            "{error}"
        );
    }
    assert!(
        run.stderr.contains("the cache registry is down"),
        "{}",
        run.stderr
    );
    // No image spent an upstream request on a run that could not cache anything.
    assert_eq!(upstream.counts() - before, Default::default());
    assert_eq!(
        finished_field(&run.stderr, "processes"),
        Some(0),
        "one in-process probe, nothing else"
    );
}

#[test]
fn a_refusing_upstream_gets_no_more_requests_and_other_registries_go_on() {
    let Some(p) = pair() else { return };
    let refusing = format!("127.0.0.1:{}", free_port());
    image::push_new(
        &p.tools,
        Kind::Single,
        "fine",
        &format!("{}/app/fine:t3", p.upstream.host()),
        Format::Oci,
    );
    let images = vec![
        format!("{refusing}/app/a"),
        format!("{refusing}/app/b"),
        format!("{refusing}/app/c"),
        format!("{}/app/fine", p.upstream.host()),
    ];
    let run = ImageSync::new()
        .config(&yaml(&p.cache.host(), &images, "  check_concurrency: 1\n"))
        .run();
    run.expect_code(1);
    assert_eq!(run.actions(), ["failed", "failed", "failed", "pulled"]);
    let first = run.result(0)["error"].as_str().expect("error");
    assert!(
        first.starts_with("unreachable: HEAD https://") && first.contains("connection refused"),
        "{first}"
    );
    assert_eq!(run.result(0)["attempts"], 1, "a refusal is not retried");
    for i in 1..3 {
        let error = run.result(i)["error"].as_str().expect("error");
        assert!(
            error.starts_with(&format!("skipped: {refusing} unreachable;")),
            "{error}"
        );
        assert_eq!(
            run.result(i)["tool"],
            serde_json::Value::Null,
            "no tool ran for a skipped image"
        );
    }
}

#[test]
fn past_the_run_deadline_nothing_new_starts_and_the_rest_is_deferred() {
    let Some(p) = pair() else { return };
    let hung = HungSocket::start();
    for i in 1..4 {
        image::push_new(
            &p.tools,
            Kind::Single,
            &format!("d{i}"),
            &format!("{}/app/d{i}:t{i}", p.upstream.host()),
            Format::Oci,
        );
    }
    let mut images = vec![format!("{}/app/hung", hung.host())];
    images.extend((1..4).map(|i| format!("{}/app/d{i}", p.upstream.host())));
    let settings = "  check_concurrency: 1\n  check_timeout_secs: 2\n  retries: 0\n";
    let started = Instant::now();
    let run = ImageSync::new()
        .config(&yaml(&p.cache.host(), &images, settings))
        .arg("--deadline")
        .arg("1")
        .run();
    let elapsed = started.elapsed();
    run.expect_code(1);
    assert_eq!(
        run.actions(),
        ["failed", "deferred", "deferred", "deferred"]
    );
    assert_eq!(run.report()["summary"]["deferred"], 3);
    let reason = run.result(1)["error"].as_str().expect("reason");
    assert!(
        reason.starts_with("deferred: run deadline reached"),
        "{reason}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "the run ended in time: {elapsed:?}"
    );
    let deferred = run.result(2)["tool"].clone();
    assert_eq!(deferred, serde_json::Value::Null);
}

#[test]
fn sigterm_stops_the_run_reports_everything_and_exits_143() {
    let Some(p) = pair() else { return };
    let proxy = FaultProxy::start(p.upstream.host())
        .rule(Rule::new("HEAD", "/app/hung/").respond(Fault::Stall));
    let images: Vec<String> = vec![
        format!("{}/app/hung", proxy.host()),
        format!("{}/app/later1", p.upstream.host()),
        format!("{}/app/later2", p.upstream.host()),
    ];
    let settings = "  check_concurrency: 1\n  check_timeout_secs: 30\n";
    let run = ImageSync::new().config(&yaml(&p.cache.host(), &images, settings));
    let child = run.spawn();
    assert!(
        proxy.wait_for("HEAD", "/app/hung/", 1, Duration::from_secs(10)),
        "the hung check started"
    );
    let stopped = Instant::now();
    signal(child.id(), Signal::SIGTERM);
    let result = outcome(child.wait_with_output().expect("wait"));
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "stopped promptly: {:?}",
        stopped.elapsed()
    );
    result.expect_code(143);
    assert_eq!(result.actions(), ["failed", "deferred", "deferred"]);
    let error = result.result(0)["error"].as_str().expect("error");
    assert!(error.starts_with("interrupted"), "{error}");
    let reason = result.result(1)["error"].as_str().expect("reason");
    assert!(reason.contains("interrupted by SIGTERM"), "{reason}");
    assert_eq!(result.report()["summary"]["deferred"], 2);
}

#[test]
fn a_copy_killed_mid_transfer_leaves_the_old_digest_and_the_next_run_completes_it() {
    let Some(p) = pair() else { return };
    let proxy = FaultProxy::start(p.upstream.host());
    let upstream_ref = format!("{}/app/big:t0", p.upstream.host());
    image::push_new(&p.tools, Kind::Single, "small", &upstream_ref, Format::Oci);
    let images = vec![format!("{}/app/big", proxy.host())];
    let config = yaml(&p.cache.host(), &images, "");
    ImageSync::new().config(&config).run().expect_code(0);
    let cached_ref = format!("{}/app/big:t0", p.cache.host());
    let old = image::digest_of(&p.tools, &cached_ref).expect("cached");

    // The tag moves to a large image whose blobs now come at 1 MB/s.
    OciLayout::new(Kind::Single, "big", 8 * 1024 * 1024).push(&p.tools, &upstream_ref, Format::Oci);
    let new = image::digest_of(&p.tools, &upstream_ref).expect("moved");
    assert_ne!(old, new);
    proxy.add_rule(Rule::new("GET", "/blobs/").respond(Fault::throttle(1024 * 1024)));
    let run = ImageSync::new().config(&config);
    let child = run.spawn();
    assert!(
        proxy.wait_for("GET", "/blobs/", 1, Duration::from_secs(20)),
        "the copy started"
    );
    std::thread::sleep(Duration::from_millis(500));
    signal(child.id(), Signal::SIGTERM);
    let killed = outcome(child.wait_with_output().expect("wait"));
    killed.expect_code(143);
    assert_eq!(killed.actions(), ["failed"]);
    let error = killed.result(0)["error"].as_str().expect("error");
    assert!(error.starts_with("interrupted: crane copy"), "{error}");
    assert_eq!(
        finished_field(&killed.stderr, "live_children"),
        Some(0),
        "{}",
        killed.stderr
    );
    assert!(
        processes_naming(&["crane", &p.cache.host()]).is_empty(),
        "the copy's process group is gone"
    );
    assert_eq!(
        image::digest_of(&p.tools, &cached_ref),
        Some(old.clone()),
        "the tag still names the old image"
    );

    proxy.clear_rules();
    let resumed = ImageSync::new().config(&config).run();
    resumed.expect_code(0);
    assert_eq!(resumed.actions(), ["pulled"]);
    assert_eq!(resumed.result(0)["cached_digest"], old.as_str());
    assert_eq!(image::digest_of(&p.tools, &cached_ref), Some(new));
}

fn signal(pid: u32, signal: Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    nix::sys::signal::kill(pid, signal).expect("signal");
}

/// Pids of processes whose command line holds every one of `terms`.
fn processes_naming(terms: &[&str]) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            terms
                .iter()
                .all(|term| cmdline.contains(term))
                .then(|| entry.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

#[test]
fn two_thousand_images_finish_in_order_with_bounded_memory_and_no_leaks() {
    let Some(p) = pair() else { return };
    const REPOS: usize = 20;
    const TAGS: usize = 100;
    // One small image per repository in both registries, then 100 tags of it by manifest
    // PUTs: a no-op run over 2,000 images, the CronJob's common case.
    for repo in 0..REPOS {
        for registry in [&p.upstream, &p.cache] {
            image::push_new(
                &p.tools,
                Kind::Single,
                "scale",
                &format!("{}/scale/r{repo}:seed", registry.host()),
                Format::Oci,
            );
        }
    }
    let manifest = crane_manifest(&p.tools, &format!("{}/scale/r0:seed", p.upstream.host()));
    let mut images = Vec::new();
    for repo in 0..REPOS {
        for tag in 0..TAGS {
            for registry in [&p.upstream, &p.cache] {
                put_manifest(
                    registry.port(),
                    &format!("scale/r{repo}"),
                    &format!("t{}", repo * TAGS + tag),
                    &manifest,
                );
            }
            images.push(format!("{}/scale/r{repo}", p.upstream.host()));
        }
    }
    let run = ImageSync::new()
        .config(&yaml(&p.cache.host(), &images, "  check_concurrency: 16\n"))
        .run();
    run.expect_code(0);
    let results = run.report()["results"].as_array().expect("results");
    assert_eq!(results.len(), REPOS * TAGS);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["tag"], format!("t{i}"), "config order");
        assert_eq!(result["action"], "already_cached", "{result}");
    }
    let peak_kib = finished_field(&run.stderr, "peak_rss_kib").expect("peak rss");
    eprintln!(
        "2,000 images: peak RSS {peak_kib} KiB, {:?} processes",
        finished_field(&run.stderr, "processes")
    );
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
    assert!(
        finished_field(&run.stderr, "open_fds").expect("fds") < 32,
        "{}",
        run.stderr
    );
    assert_eq!(finished_field(&run.stderr, "live_children"), Some(0));
    assert_eq!(
        finished_field(&run.stderr, "processes"),
        Some(0),
        "checks spawn no process"
    );
}

fn crane_manifest(tools: &Tools, reference: &str) -> Vec<u8> {
    let output = std::process::Command::new(&tools.crane)
        .args(["manifest", reference])
        .output()
        .expect("crane manifest");
    assert!(output.status.success());
    output.stdout
}

/// PUTs an OCI manifest under a tag with a bare HTTP/1.0 request (fast enough for
/// thousands of tags).
fn put_manifest(port: u16, repo: &str, tag: &str, manifest: &[u8]) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let head = format!(
        "PUT /v2/{repo}/manifests/{tag} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n",
        manifest.len()
    );
    stream.write_all(head.as_bytes()).expect("write head");
    stream.write_all(manifest).expect("write body");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(
        response.starts_with("HTTP/1.0 201") || response.starts_with("HTTP/1.1 201"),
        "{response}"
    );
}

#[test]
fn a_rate_limited_upstream_gets_one_request_and_its_other_images_are_skipped() {
    let Some(p) = pair() else { return };
    let proxy = FaultProxy::start(p.upstream.host()).rule(
        Rule::new("HEAD", "/manifests/")
            .respond(Fault::too_many_requests().header("Retry-After", "60")),
    );
    image::push_new(
        &p.tools,
        Kind::Single,
        "other",
        &format!("{}/app/other:t3", p.upstream.host()),
        Format::Oci,
    );
    let images = vec![
        format!("{}/app/a", proxy.host()),
        format!("{}/app/b", proxy.host()),
        format!("{}/app/c", proxy.host()),
        format!("{}/app/other", p.upstream.host()),
    ];
    let run = ImageSync::new()
        .config(&yaml(&p.cache.host(), &images, "  check_concurrency: 1\n"))
        .run();
    run.expect_code(1);
    assert_eq!(run.actions(), ["failed", "failed", "failed", "pulled"]);
    let first = run.result(0)["error"].as_str().expect("error");
    assert!(first.starts_with("rate limited: HEAD http://"), "{first}");
    assert_eq!(
        run.result(0)["attempts"],
        1,
        "a 429 is not retried by image-sync"
    );
    for i in 1..3 {
        let error = run.result(i)["error"].as_str().expect("error");
        assert!(
            error.starts_with(&format!("skipped: {} rate limited;", proxy.host())),
            "{error}"
        );
    }
    assert_eq!(
        proxy.count("*", "/v2/"),
        1,
        "one request reached the rate-limited registry: {:?}",
        proxy.requests()
    );
}

#[test]
fn a_transient_server_error_is_retried_after_retry_after() {
    let Some(p) = pair() else { return };
    image::push_new(
        &p.tools,
        Kind::Single,
        "flaky",
        &format!("{}/app/flaky:t0", p.upstream.host()),
        Format::Oci,
    );
    let proxy = FaultProxy::start(p.upstream.host()).rule(
        Rule::new("HEAD", "/manifests/").attempts(1..=1).respond(
            Fault::registry_error(503, "UNAVAILABLE", "maintenance").header("Retry-After", "2"),
        ),
    );
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[format!("{}/app/flaky", proxy.host())],
            "",
        ))
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"]);
    assert_eq!(run.result(0)["attempts"], 2);
    let heads: Vec<Duration> = proxy
        .requests()
        .into_iter()
        .filter(|seen| seen.method == "HEAD" && seen.path.contains("/manifests/"))
        .map(|seen| seen.at)
        .collect();
    assert_eq!(heads.len(), 2, "one failed HEAD, one retry");
    assert!(
        heads[1] - heads[0] >= Duration::from_secs(2),
        "Retry-After honoured: {:?}",
        heads[1] - heads[0]
    );
    assert!(
        run.stderr.contains("transient failure; retrying"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_reset_connection_is_handed_to_crane_and_the_image_still_syncs() {
    let Some(p) = pair() else { return };
    image::push_new(
        &p.tools,
        Kind::Single,
        "reset",
        &format!("{}/app/reset:t0", p.upstream.host()),
        Format::Oci,
    );
    let proxy = FaultProxy::start(p.upstream.host()).rule(
        Rule::new("HEAD", "/manifests/")
            .attempts(1..=1)
            .respond(Fault::Reset),
    );
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[format!("{}/app/reset", proxy.host())],
            "",
        ))
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"]);
    assert!(
        proxy.count("HEAD", "/manifests/") >= 2,
        "crane asked again after the reset"
    );
}

#[test]
fn a_cache_that_rewrites_the_manifest_fails_the_image_with_digest_drift() {
    let Some(p) = pair() else { return };
    image::push_new(
        &p.tools,
        Kind::MultiArch,
        "drift",
        &format!("{}/app/drift:t0", p.upstream.host()),
        Format::Oci,
    );
    let rewritten = format!("sha256:{}", "d".repeat(64));
    // The cache reports another digest on every manifest answer. The verification reads
    // the manifest back (a GET: free on the cache), so the digest it serves is checked too.
    let cache_proxy = FaultProxy::start(p.cache.host())
        .rule(Rule::new("*", "/manifests/").respond(Fault::rewrite_digest(&rewritten)));
    let images = vec![format!("{}/app/drift", p.upstream.host())];
    let run = ImageSync::new()
        .config(&yaml(&cache_proxy.host(), &images, ""))
        .run();
    run.expect_code(1);
    let error = run.result(0)["error"].as_str().expect("error");
    assert!(
        error.starts_with(&format!("digest drift: GET http://{}/v2/app/drift/manifests/t0: the registry says it holds {rewritten}, but serves a manifest whose digest is sha256:", cache_proxy.host())),
        "{error}"
    );
    assert_eq!(run.result(0)["attempts"], 1, "drift is final");
    // A registry that rewrites is not Zot: Zot refuses a manifest type it does not take
    // (see registry_client.rs) and never converts it.
    assert!(!error.contains("docker2s2"), "{error}");
}

#[test]
fn marking_the_cache_insecure_never_weakens_tls_towards_the_upstream() {
    let Some(tools) = support::tools() else {
        return;
    };
    let Some(tls) = TlsRegistry::start(&tools) else {
        return;
    };
    let source = format!("{}/team/secure", tls.host());
    tls.push_trusted(
        &tools,
        Kind::MultiArch,
        "tls-insecure-cache",
        &format!("{source}:t0"),
    );
    // The cache is listed insecure, by its loopback address and by this machine's name
    // (a fresh cache each time, so that both runs copy).
    let caches = [Registry::start(&tools), Registry::start(&tools)];
    let named_cache = format!("{}:{}", tls.name(), caches[1].port());
    for cache_host in [caches[0].host(), named_cache] {
        let config = yaml(
            &cache_host,
            std::slice::from_ref(&source),
            &format!("  insecure_registries: [\"{cache_host}\"]\n"),
        );
        let dir = tempfile::tempdir().expect("dir");
        let only_skopeo = support::bin_with(dir.path(), &[&tools.skopeo]);
        for path in [
            std::env::var_os("PATH").unwrap_or_default(),
            only_skopeo.into_os_string(),
        ] {
            let untrusted = ImageSync::new()
                .config(&config)
                .env("PATH", &path)
                .env("SSL_CERT_FILE", "/nonexistent/ca.pem")
                .env("SSL_CERT_DIR", "/nonexistent")
                .run();
            untrusted.expect_code(1);
            let error = untrusted.result(0)["error"].as_str().expect("error");
            assert!(
                error.starts_with("TLS certificate not trusted"),
                "cache {cache_host}, PATH {path:?}: {error}"
            );
            assert!(
                !untrusted.stderr.contains(&format!("http://{}", tls.host())),
                "no plain HTTP to the upstream"
            );
        }
        let trusted = ImageSync::new()
            .config(&config)
            .env("SSL_CERT_FILE", tls.ca_cert_path())
            .run();
        trusted.expect_code(0);
        assert_eq!(
            trusted.actions(),
            ["pulled"],
            "cache {cache_host}: {}",
            trusted.stderr
        );
    }
}

#[test]
fn credentials_a_registry_echoes_never_reach_the_report_or_logs() {
    let Some(p) = pair() else { return };
    image::push_new(
        &p.tools,
        Kind::Single,
        "echo",
        &format!("{}/app/echo:t0", p.upstream.host()),
        Format::Oci,
    );
    let (password, token) = ("hunter2-pa55", "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.sig");
    let echo = format!(
        "invalid credentials for https://sync-bot:{password}@registry.example/v2/ with Authorization: Bearer {token} (token={token})"
    );
    let proxy = FaultProxy::start(p.upstream.host()).rule(
        Rule::new("GET", "/manifests/").respond(Fault::registry_error(401, "UNAUTHORIZED", &echo)),
    );
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[format!("{}/app/echo", proxy.host())],
            "",
        ))
        .run();
    run.expect_code(1);
    let error = run.result(0)["error"].as_str().expect("error");
    assert!(error.starts_with("unauthorized: crane copy"), "{error}");
    assert!(
        error.contains("https://***@registry.example"),
        "the echo was seen and redacted: {error}"
    );
    for secret in [password, token, "c2VjcmV0"] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{secret} leaked"
        );
    }
}

#[test]
fn a_second_signal_kills_the_children_and_exits_at_once() {
    let Some(p) = pair() else { return };
    image::push_new(
        &p.tools,
        Kind::Single,
        "stubborn",
        &format!("{}/app/stubborn:t0", p.upstream.host()),
        Format::Oci,
    );
    // A copy that ignores SIGTERM (a wedged child): the first signal's graceful stop has to
    // wait for its grace period, the second must not.
    let dir = tempfile::tempdir().expect("dir");
    let bin = support::bin_with(dir.path(), &[]);
    let cache = p.cache.host();
    support::write_script(&bin.join("crane"), "#!/bin/sh\ntrap '' TERM\nsleep 30\n");
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[format!("{}/app/stubborn", p.upstream.host())],
            "",
        ))
        .env("PATH", path);
    let child = run.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_naming(&["crane", &cache]).is_empty() {
        assert!(Instant::now() < deadline, "the copy never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id(), Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let second = Instant::now();
    signal(child.id(), Signal::SIGTERM);
    let result = outcome(child.wait_with_output().expect("wait"));
    assert!(
        second.elapsed() < Duration::from_millis(1_500),
        "exited at once: {:?}",
        second.elapsed()
    );
    result.expect_code(143);
    assert!(result.stderr.contains("second signal"), "{}", result.stderr);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        processes_naming(&["crane", &cache]).is_empty(),
        "the wedged child's group was killed"
    );
}

/// Waits (bounded) until no process's command line holds every one of `terms`.
fn wait_until_gone(terms: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_naming(terms);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until a process's command line holds every one of `terms`.
fn wait_until_running(terms: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_naming(terms).is_empty() {
        assert!(Instant::now() < deadline, "never started: {terms:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 18 item 13: a crane copy does not outlive a SIGKILLed image-sync (nothing of
/// image-sync runs to kill it: the kernel does, `PR_SET_PDEATHSIG`). The upstream's blobs
/// are slowed so that the copy is running when image-sync is killed.
#[test]
fn a_sigkilled_run_leaves_no_child_behind() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "orphan",
        &format!("{up}/app/orphan:t0"),
        Format::Oci,
    );
    let slow = FaultProxy::start(up.clone())
        .rule(Rule::new("GET", "/blobs/").respond(Fault::delay_ms(60_000)));
    let cache = p.cache.host();
    let run = ImageSync::new().config(&yaml(&cache, &[format!("{}/app/orphan", slow.host())], ""));
    let mut child = run.spawn();
    wait_until_running(&["crane", "copy", &cache]);
    assert!(slow.wait_for("GET", "/blobs/", 1, Duration::from_secs(30)));
    signal(child.id(), Signal::SIGKILL);
    let _ = child.wait();
    let left = wait_until_gone(&["crane", "copy", &cache]);
    assert!(left.is_empty(), "crane outlived image-sync: pids {left:?}");
    // crane had read the manifest (one GET) and was waiting for a blob.
    assert_eq!(p.upstream.counts().manifest_gets, 1);
}

/// Issue 18 item 13: the private credentials file for the cache's IP literal, left by a
/// SIGKILLed run (nothing of it runs to remove it), is removed by the next run's start;
/// a run that exits at once on a second SIGTERM removes its own before exiting.
#[test]
fn private_credentials_do_not_outlive_a_killed_run() {
    let Some(tools) = support::tools() else {
        return;
    };
    let Some(tls) = TlsRegistry::start(&tools) else {
        return;
    };
    let cache = Registry::start_with_auth(&tools, "writer", "cache-s3cret");
    // Blob uploads to the cache hang, so that the first run is copying when it is killed.
    let slow = FaultProxy::start(cache.host())
        .rule(Rule::new("POST", "/blobs/uploads/").respond(Fault::delay_ms(60_000)));
    tls.push_trusted(
        &tools,
        Kind::Single,
        "killed-literal",
        &format!("{}/app/lit:t0", tls.host()),
    );
    let cache_host = format!("{}:{}", tls.name(), slow.port());
    let auth_dir = tempfile::tempdir().expect("dir");
    support::write_docker_config(auth_dir.path(), &cache_host, "writer", "cache-s3cret");
    let tmp = tempfile::tempdir().expect("tmp");
    let config = yaml(
        &cache_host,
        &[format!("{}/app/lit", tls.host())],
        &format!("  insecure_registries: [\"{cache_host}\"]\n"),
    );
    let run = || {
        ImageSync::new()
            .config(&config)
            .env("DOCKER_CONFIG", auth_dir.path())
            .env("SSL_CERT_FILE", tls.ca_cert_path())
            .env("TMPDIR", tmp.path())
    };
    let private_dirs = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(tmp.path())
            .expect("tmp")
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("image-sync-auth-")
            })
            .map(|entry| entry.path())
            .collect()
    };

    let literal = format!("127.0.0.1:{}", slow.port());
    // The runner's working directory (with the config) lives as long as it does.
    let first_run = run();
    let mut first = first_run.spawn();
    wait_until_running(&["crane", "copy", &literal]);
    assert!(slow.wait_for("POST", "/blobs/uploads/", 1, Duration::from_secs(30)));
    let written = private_dirs();
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(written[0].join("config.json").exists());
    signal(first.id(), Signal::SIGKILL);
    let _ = first.wait();
    assert!(wait_until_gone(&["crane", "copy", &literal]).is_empty());
    assert_eq!(
        private_dirs(),
        written,
        "nothing of a SIGKILLed run removes it"
    );
    assert_eq!(tls.counts().manifest_gets, 1, "the killed copy's GET");

    // A directory younger than 2 s may belong to a run still setting it up.
    std::thread::sleep(Duration::from_millis(2_100));
    slow.clear_rules();
    let second = run().run();
    second.expect_code(0);
    assert_eq!(second.actions(), ["pulled"]);
    assert!(
        second
            .stderr
            .contains("removed the private credentials directory a killed run left"),
        "{}",
        second.stderr
    );
    assert!(private_dirs().is_empty(), "{:?}", private_dirs());
    assert!(!second.stderr.contains("cache-s3cret") && !second.stdout.contains("cache-s3cret"));
    assert_eq!(tls.counts().manifest_gets, 2, "one GET per copy");

    // A second SIGTERM exits at once, but removes the directory first.
    tls.push_trusted(
        &tools,
        Kind::Single,
        "twice-literal",
        &format!("{}/app/twice:t0", tls.host()),
    );
    slow.add_rule(Rule::new("POST", "/blobs/uploads/").respond(Fault::delay_ms(60_000)));
    let uploads = slow.count("POST", "/blobs/uploads/");
    let third_run = ImageSync::new()
        .config(&yaml(
            &cache_host,
            &[format!("{}/app/twice", tls.host())],
            &format!("  insecure_registries: [\"{cache_host}\"]\n"),
        ))
        .env("DOCKER_CONFIG", auth_dir.path())
        .env("SSL_CERT_FILE", tls.ca_cert_path())
        .env("TMPDIR", tmp.path());
    let third = third_run.spawn();
    assert!(slow.wait_for(
        "POST",
        "/blobs/uploads/",
        uploads + 1,
        Duration::from_secs(30)
    ));
    assert_eq!(private_dirs().len(), 1);
    signal(third.id(), Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(50));
    signal(third.id(), Signal::SIGTERM);
    let third = outcome(third.wait_with_output().expect("wait"));
    third.expect_code(143);
    assert!(third.stderr.contains("second signal"), "{}", third.stderr);
    assert!(private_dirs().is_empty(), "{:?}", private_dirs());
    assert!(wait_until_gone(&["crane", "copy", &literal]).is_empty());
    assert_eq!(tls.counts().manifest_gets, 3, "one GET per copy");
}
