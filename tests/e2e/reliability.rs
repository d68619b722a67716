//! Faults a real cluster produces: a dead cache, a refusing or hanging upstream, the run
//! deadline, signals, and scale. Each test fails without the behaviour it names.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::image::{self, Format, Kind};
use crate::support::registry::{HungSocket, Registry, free_port};
use crate::support::runner::{ImageSync, outcome};
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
        Some(1),
        "one probe, nothing else"
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
    assert!(first.starts_with("unreachable: crane digest"), "{first}");
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
fn sigterm_stops_the_run_reports_everything_and_leaves_no_child() {
    let Some(p) = pair() else { return };
    let hung = HungSocket::start();
    let images: Vec<String> = vec![
        format!("{}/app/hung", hung.host()),
        format!("{}/app/later1", p.upstream.host()),
        format!("{}/app/later2", p.upstream.host()),
    ];
    let settings = "  check_concurrency: 1\n  check_timeout_secs: 30\n";
    let run = ImageSync::new().config(&yaml(&p.cache.host(), &images, settings));
    let child = run
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    wait_for_child_process(pid, Duration::from_secs(10));
    let stopped = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
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
    assert_eq!(
        finished_field(&result.stderr, "live_children"),
        Some(0),
        "{}",
        result.stderr
    );
}

/// Waits until `pid` has a child process (the first crane of the run).
fn wait_for_child_process(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        // Children of any of its threads: /proc/*/stat field 4 is the parent pid.
        let has_child = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| {
                std::fs::read_to_string(entry.path().join("stat"))
                    .ok()
                    .and_then(|stat| {
                        stat.rsplit_once(')').and_then(|(_, rest)| {
                            rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                        })
                    })
                    == Some(pid)
            });
        if has_child {
            // Let the child get into its request.
            std::thread::sleep(Duration::from_millis(300));
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("image-sync {pid} started no child within {limit:?}");
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
    assert_eq!(finished_field(&run.stderr, "processes"), Some(4_001));
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
