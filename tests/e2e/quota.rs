//! Quota stewardship and metrics against a real registry behind the fault proxy, taught
//! to meter manifest GETs like Docker Hub, and a real Pushgateway.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::fault::{Fault, FaultProxy, Quota, Rule};
use crate::support::image::{self, Format, Kind};
use crate::support::registry::free_port;
use crate::support::runner::{self, ImageSync, Outcome};
use crate::support::{self, pair};

fn yaml(cache: &str, images: &[String], settings: &str) -> String {
    let mut yaml = format!("cache_registry: \"{cache}\"\nimages:\n");
    for source in images {
        yaml.push_str(&format!("  - {{source: \"{source}\", tag: \"1\"}}\n"));
    }
    yaml.push_str("settings:\n  pull_timeout_secs: 60\n");
    yaml.push_str(settings);
    yaml
}

/// GETs of manifests the proxy passed to the registry (the pulls Docker Hub would count).
fn pulls(proxy: &FaultProxy) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|seen| {
            seen.method == "GET" && seen.path.contains("/manifests/") && seen.status == Some(200)
        })
        .count()
}

fn quota_of<'a>(run: &'a Outcome, registry: &str) -> &'a Value {
    let quota = &run.report()["quota"][registry];
    assert!(quota.is_object(), "no quota for {registry}: {}", run.stdout);
    quota
}

/// The report's `quota` equals what the headers said and what the access log counted,
/// for single-platform and multi-arch copies; a no-op run sends no GET and says so.
#[test]
fn the_report_carries_the_quota_the_registry_reported_and_every_pull() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "q1",
        &format!("{up}/app/one:1"),
        Format::Oci,
    );
    image::push_new(
        &p.tools,
        Kind::Single,
        "q2",
        &format!("{up}/app/two:1"),
        Format::DockerV2S2,
    );
    image::push_new(
        &p.tools,
        Kind::MultiArch,
        "q3",
        &format!("{up}/app/multi:1"),
        Format::Oci,
    );
    let quota = Arc::new(Quota::new(100, 50, 21_600, "203.0.113.7"));
    let hub = FaultProxy::start(up.clone()).with_quota(Arc::clone(&quota));
    let images: Vec<String> = ["app/one", "app/two", "app/multi"]
        .iter()
        .map(|repo| format!("{}/{repo}", hub.host()))
        .collect();
    let config = yaml(&p.cache.host(), &images, "");
    let run = ImageSync::new().config(&config).run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled", "pulled", "pulled"]);
    let counted = pulls(&hub);
    assert_eq!(counted, 5, "1 + 1 + (index + 2 platforms)");
    let reported = quota_of(&run, &hub.host());
    assert_eq!(reported["limit"], 100);
    assert_eq!(reported["window_secs"], 21_600);
    assert_eq!(reported["remaining_at_start"], 50);
    assert_eq!(reported["remaining_at_end"], 45);
    assert_eq!(quota.remaining(), 45);
    assert_eq!(reported["source"], "203.0.113.7");
    assert_eq!(reported["reserve"], 10, "10 % of 100 by default");
    assert_eq!(reported["manifest_gets"], counted);
    assert!(
        run.stderr.contains("upstream quota") && run.stderr.contains("remaining_at_end=45"),
        "{}",
        run.stderr
    );

    let before = hub.requests().len();
    let noop = ImageSync::new().config(&config).run();
    noop.expect_code(0);
    assert_eq!(noop.actions(), ["already_cached"; 3]);
    let new: Vec<_> = hub.requests().into_iter().skip(before).collect();
    assert!(new.iter().all(|seen| seen.method == "HEAD"), "{new:?}");
    assert_eq!(
        new.len(),
        3,
        "one HEAD per image, no end-of-run HEAD without pulls"
    );
    let reported = quota_of(&noop, &hub.host());
    assert_eq!(reported["manifest_gets"], 0);
    assert_eq!(reported["remaining_at_start"], 45);
    assert_eq!(reported["remaining_at_end"], 45);
}

/// With a reserve, exactly the copies that would cross it are deferred; checks go on,
/// the run does not fail, and no copy starts below the reserve.
#[test]
fn a_reserve_defers_exactly_the_copies_that_would_cross_it() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    let repos = ["app/r0", "app/r1", "app/r2", "app/r3", "app/r4"];
    image::push_singles(&p.tools, &up, &repos);
    let quota = Arc::new(Quota::new(100, 10, 3_600, "198.51.100.9"));
    let hub = FaultProxy::start(up.clone()).with_quota(Arc::clone(&quota));
    let images: Vec<String> = repos
        .iter()
        .map(|repo| format!("{}/{repo}", hub.host()))
        .collect();
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &images,
            "  concurrency: 1\n  check_concurrency: 1\n  quota_reserve: 7\n",
        ))
        .run();
    run.expect_code(0);
    assert_eq!(
        run.actions(),
        ["pulled", "pulled", "pulled", "deferred", "deferred"]
    );
    for index in 3..5 {
        let error = run.result(index)["error"].as_str().expect("error");
        assert!(
            error.starts_with(&format!(
                "quota reserve: {} has 7 pulls left and 7 are kept in reserve",
                hub.host()
            )),
            "{error}"
        );
        assert!(
            run.result(index)["remote_digest"].is_string(),
            "checked all the same"
        );
    }
    assert_eq!(pulls(&hub), 3);
    assert_eq!(quota.remaining(), 7, "never below the reserve");
    let reported = quota_of(&run, &hub.host());
    assert_eq!(
        (
            reported["remaining_at_start"].as_u64(),
            reported["remaining_at_end"].as_u64()
        ),
        (Some(10), Some(7))
    );
    assert_eq!(reported["reserve"], 7);

    let percent = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &images,
            "  quota_reserve: \"7%\"\n  concurrency: 1\n",
        ))
        .arg("--dry-run")
        .run();
    percent.expect_code(0);
    assert_eq!(quota_of(&percent, &hub.host())["reserve"], 7);
}

/// Issue 18 item 2: the reserve follows what later answers say. While the second image is
/// checked, other clients behind the same address spend the quota down to 5 (against a
/// reserve of 10): the third image's HEAD says so, and its copy does not start (it did:
/// the ledger froze `remaining` at the first copy, 40).
#[test]
fn a_lower_remaining_reported_later_defers_the_next_copy() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    let repos = ["app/l0", "app/l1", "app/l2"];
    image::push_singles(&p.tools, &up, &repos);
    let quota = Arc::new(Quota::new(100, 40, 3_600, "198.51.100.9"));
    // The second image's HEAD waits (its answer says 39), so that the test spends the
    // quota before the third image's HEAD.
    let hub = FaultProxy::start(up.clone())
        .with_quota(Arc::clone(&quota))
        .rule(Rule::new("HEAD", "/app/l1/manifests/").respond(Fault::delay_ms(1_500)));
    let images: Vec<String> = repos
        .iter()
        .map(|repo| format!("{}/{repo}", hub.host()))
        .collect();
    let config = yaml(
        &p.cache.host(),
        &images,
        "  concurrency: 1\n  check_concurrency: 1\n  quota_reserve: 10\n",
    );
    let sync = ImageSync::new().config(&config);
    let mut child = sync.spawn();
    // The first copy's GET, and the second image's HEAD (its answer said 39).
    let waited = hub.wait_for("GET", "/app/l0/manifests/", 1, Duration::from_secs(60))
        && hub.wait_for("HEAD", "/app/l1/manifests/", 1, Duration::from_secs(60));
    if !waited {
        let _ = child.kill();
        let run = runner::outcome(child.wait_with_output().expect("wait"));
        panic!(
            "no check of the second image: {:?}\n{}",
            hub.requests(),
            run.stderr
        );
    }
    quota.set_remaining(5);
    let run = runner::outcome(child.wait_with_output().expect("wait"));
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled", "pulled", "deferred"]);
    let error = run.result(2)["error"].as_str().expect("error");
    // The lowest answer, 5 (or 4, when it came after the second copy's GET), minus the
    // second copy while in flight.
    assert!(
        [3, 4, 5].iter().any(|left| error.starts_with(&format!(
            "quota reserve: {} has {left} pulls left and 10 are kept in reserve",
            hub.host()
        ))),
        "{error}"
    );
    assert_eq!(
        pulls(&hub),
        2,
        "two copies, one GET each: {:?}",
        hub.requests()
    );
    assert_eq!(quota.remaining(), 4);
    let reported = quota_of(&run, &hub.host());
    assert_eq!(reported["remaining_at_start"], 40);
    assert_eq!(reported["remaining_at_end"], 4);
}

/// Issue 18 item 2, shards: four shards started together against one metered upstream
/// each keep a quarter of what is left and of the reserve, so that together they stop
/// above the reserve (each alone, seeing 20 left and keeping 10, would copy all of its
/// images and take the registry to 8).
#[test]
fn four_shards_against_one_metered_upstream_keep_the_reserve_together() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    let repos: Vec<String> = (0..12).map(|i| format!("app/shq{i}")).collect();
    let names: Vec<&str> = repos.iter().map(String::as_str).collect();
    image::push_singles(&p.tools, &up, &names);
    let quota = Arc::new(Quota::new(100, 20, 3_600, "198.51.100.9"));
    let hub = FaultProxy::start(up.clone()).with_quota(Arc::clone(&quota));
    let images: Vec<String> = repos
        .iter()
        .map(|repo| format!("{}/{repo}", hub.host()))
        .collect();
    let config = yaml(&p.cache.host(), &images, "  quota_reserve: 10\n");
    let runs: Vec<ImageSync> = (0..4)
        .map(|index| {
            ImageSync::new()
                .config(&config)
                .arg("--shard")
                .arg(format!("{index}/4"))
        })
        .collect();
    let children: Vec<_> = runs.iter().map(ImageSync::spawn).collect();
    let outcomes: Vec<Outcome> = children
        .into_iter()
        .map(|child| runner::outcome(child.wait_with_output().expect("wait")))
        .collect();
    let (mut pulled, mut deferred) = (0, 0);
    for run in &outcomes {
        run.expect_code(0);
        for (index, action) in run.actions().iter().enumerate() {
            match action.as_str() {
                "pulled" => pulled += 1,
                "deferred" => {
                    deferred += 1;
                    let error = run.result(index)["error"].as_str().expect("error");
                    assert!(
                        error.starts_with(&format!("quota reserve: {}", hub.host()))
                            && error.contains("this shard's share: 1/4"),
                        "{error}"
                    );
                }
                other => panic!("{other}: {}", run.stdout),
            }
        }
    }
    assert_eq!(pulled + deferred, 12);
    assert_eq!(pulls(&hub), pulled, "one GET per copy");
    assert!(pulled >= 1, "the shards copied something");
    assert!(
        quota.remaining() >= 10,
        "never below the reserve: {} left after {pulled} pulls",
        quota.remaining()
    );
}

/// A 429 with the headers leaves nothing: `remaining_at_end` is 0 and the failure costs
/// no more than the refused requests.
#[test]
fn a_429_with_quota_headers_leaves_remaining_at_end_zero() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["app/last", "app/over"]);
    let quota = Arc::new(Quota::new(100, 1, 3_600, "198.51.100.9"));
    let hub = FaultProxy::start(up.clone()).with_quota(quota);
    let images = vec![
        format!("{}/app/last", hub.host()),
        format!("{}/app/over", hub.host()),
    ];
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &images,
            "  concurrency: 1\n  check_concurrency: 1\n  quota_reserve: 0\n",
        ))
        .run();
    run.expect_code(1);
    assert_eq!(run.actions(), ["pulled", "failed"]);
    let error = run.result(1)["error"].as_str().expect("error");
    assert!(error.starts_with("rate limited:"), "{error}");
    let reported = quota_of(&run, &hub.host());
    assert_eq!(reported["remaining_at_end"], 0);
    assert_eq!(pulls(&hub), 1, "one pull passed");
    let refused = hub
        .requests()
        .iter()
        .filter(|seen| seen.status == Some(429))
        .count();
    assert_eq!(
        reported["manifest_gets"].as_u64(),
        Some(1 + refused as u64),
        "every GET sent is counted"
    );
}

/// A real Pushgateway on a free loopback port, killed on drop.
struct Pushgateway {
    child: Child,
    port: u16,
}

impl Pushgateway {
    fn start() -> Option<Self> {
        let Some(program) = support::find_tool("prometheus-pushgateway") else {
            let message = "prometheus-pushgateway is needed on PATH; install it with scripts/install-test-tools";
            assert!(
                std::env::var_os(support::REQUIRE_TOOLS_VAR).is_none(),
                "{message}"
            );
            eprintln!("SKIPPED: {message}");
            return None;
        };
        let port = free_port();
        let child = Command::new(program)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the pushgateway");
        let gateway = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if gateway.scrape().is_some() {
                return Some(gateway);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the pushgateway on port {port} did not start");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn scrape(&self) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        text.starts_with("HTTP/1.0 200").then_some(text)
    }

    /// The value of the sample line that starts with `series` (labels in the gateway's
    /// order: `job` and `instance` come along).
    fn value(&self, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        let text = self.scrape()?;
        text.lines()
            .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
            .filter(|line| line.contains("job=\"image_sync\""))
            .find(|line| {
                label.is_none_or(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
            })
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Pushgateway receives every gauge; a failed run after a successful one keeps
/// `last_success_timestamp_seconds`; a dead Pushgateway changes neither the report nor
/// the exit code; `--metrics-file` holds the same text, valid for promtool.
#[test]
fn metrics_reach_a_real_pushgateway_and_a_failed_run_keeps_the_last_success() {
    let Some(p) = pair() else { return };
    let Some(gateway) = Pushgateway::start() else {
        return;
    };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "metrics",
        &format!("{up}/app/seen:1"),
        Format::Oci,
    );
    let quota = Arc::new(Quota::new(100, 60, 21_600, "203.0.113.7"));
    let hub = FaultProxy::start(up.clone()).with_quota(quota);
    let good = yaml(&p.cache.host(), &[format!("{}/app/seen", hub.host())], "");
    let dir = tempfile::tempdir().expect("dir");
    let metrics_file = dir.path().join("image_sync.prom");

    let run = ImageSync::new()
        .config(&good)
        .arg("--metrics-file")
        .arg(&metrics_file)
        .env("IMAGE_SYNC_PUSHGATEWAY", gateway.url())
        .run();
    run.expect_code(0);
    let success = gateway
        .value("image_sync_last_success_timestamp_seconds", None)
        .expect("last success pushed");
    assert!(success > 1.7e9, "{success}");
    for (name, label) in [
        ("image_sync_last_run_timestamp_seconds", None),
        ("image_sync_run_duration_seconds", None),
        ("image_sync_exit_code", None),
        ("image_sync_images", Some(("action", "pulled"))),
        ("image_sync_images", Some(("action", "failed"))),
        ("image_sync_manifest_requests", Some(("method", "HEAD"))),
        ("image_sync_manifest_requests", Some(("method", "GET"))),
        (
            "image_sync_ratelimit_limit",
            Some(("registry", hub.host().as_str())),
        ),
        (
            "image_sync_ratelimit_remaining",
            Some(("registry", hub.host().as_str())),
        ),
    ] {
        assert!(
            gateway.value(name, label).is_some(),
            "{name} {label:?} in\n{:?}",
            gateway.scrape()
        );
    }
    assert_eq!(
        gateway.value("image_sync_images", Some(("action", "pulled"))),
        Some(1.0)
    );
    assert_eq!(
        gateway.value("image_sync_ratelimit_remaining", None),
        Some(59.0)
    );
    let text = std::fs::read_to_string(&metrics_file).expect("metrics file");
    assert!(text.contains("image_sync_exit_code 0"), "{text}");
    if let Some(promtool) = support::find_tool("promtool") {
        let checked = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&metrics_file).expect("open"))
            .output()
            .expect("promtool");
        assert!(
            checked.status.success(),
            "{}",
            String::from_utf8_lossy(&checked.stderr)
        );
    } else {
        assert!(
            std::env::var_os(support::REQUIRE_TOOLS_VAR).is_none(),
            "promtool is needed"
        );
    }

    std::thread::sleep(Duration::from_millis(1_100));
    let broken = yaml(
        &p.cache.host(),
        &[format!("{}/app/missing", hub.host())],
        "",
    );
    let failed = ImageSync::new()
        .config(&broken)
        .arg("--pushgateway")
        .arg(gateway.url())
        .run();
    failed.expect_code(1);
    assert_eq!(gateway.value("image_sync_exit_code", None), Some(1.0));
    assert_eq!(
        gateway.value("image_sync_images", Some(("action", "failed"))),
        Some(1.0)
    );
    assert_eq!(
        gateway.value("image_sync_last_success_timestamp_seconds", None),
        Some(success),
        "a failed run keeps the last success"
    );
    let last_run = gateway
        .value("image_sync_last_run_timestamp_seconds", None)
        .expect("last run");
    assert!(last_run > success, "{last_run} > {success}");

    let dead = format!("http://127.0.0.1:{}", free_port());
    let unpushed = ImageSync::new()
        .config(&broken)
        .arg("--pushgateway")
        .arg(&dead)
        .run();
    unpushed.expect_code(1);
    assert_eq!(unpushed.report()["summary"], failed.report()["summary"]);
    assert!(
        unpushed.stderr.contains("cannot push the metrics"),
        "{}",
        unpushed.stderr
    );
}

/// The `image_sync_failures` samples of a metrics text as (labels, value).
fn failures_series(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("image_sync_failures{"))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once("} ")?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Failed images are counted in `image_sync_failures` by their typed failure: a tag the
/// upstream lacks (upstream, the upstream's host) twice, a manifest the cache refuses (cache,
/// the cache's host as configured) once; the pulled image adds no series; a clean run
/// writes none.
#[test]
fn failed_images_are_counted_by_class_side_and_host_in_the_metrics() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "fail-ok",
        &format!("{up}/app/ok:1"),
        Format::Oci,
    );
    image::push_new(
        &p.tools,
        Kind::Single,
        "fail-refused",
        &format!("{up}/app/refused:1"),
        Format::Oci,
    );
    // The cache refuses manifests of app/refused only (and every attempt at them).
    let cache = FaultProxy::start(p.cache.host()).rule(
        Rule::new("PUT", "/app/refused/manifests/").respond(Fault::registry_error(
            400,
            "MANIFEST_INVALID",
            "manifest invalid",
        )),
    );
    let config = yaml(
        &cache.host(),
        &[
            format!("{up}/app/ok"),
            format!("{up}/app/missing-one"),
            format!("{up}/app/refused"),
            format!("{up}/app/missing-two"),
        ],
        "",
    );
    let dir = tempfile::tempdir().expect("dir");
    let metrics_file = dir.path().join("image_sync.prom");
    let before = p.upstream.counts();
    let run = ImageSync::new()
        .config(&config)
        .arg("--metrics-file")
        .arg(&metrics_file)
        .run();
    run.expect_code(1);
    assert_eq!(run.actions(), ["pulled", "failed", "failed", "failed"]);
    let spent = p.upstream.counts() - before;
    // One GET per copy (app/ok, and app/refused's copy the cache refused); the missing tags
    // cost a HEAD each and no GET.
    assert_eq!(spent.manifest_gets, 2, "{spent:?}\n{}", run.stdout);

    let text = std::fs::read_to_string(&metrics_file).expect("metrics file");
    let mut series = failures_series(&text);
    series.sort_by(|a, b| a.0.cmp(&b.0));
    let cache_host = cache.host();
    assert_eq!(
        series,
        [
            (
                format!("class=\"manifest_unknown\",side=\"upstream\",host=\"{up}\""),
                2.0
            ),
            (
                format!("class=\"write_refused\",side=\"cache\",host=\"{cache_host}\""),
                1.0
            ),
        ],
        "{text}\n{}",
        run.stdout
    );
    assert!(
        text.contains("image_sync_images{action=\"failed\"} 3"),
        "{text}"
    );

    // A run without a failure writes no series (and no family).
    let clean = yaml(&cache.host(), &[format!("{up}/app/ok")], "");
    let before = p.upstream.counts();
    ImageSync::new()
        .config(&clean)
        .arg("--metrics-file")
        .arg(&metrics_file)
        .run()
        .expect_code(0);
    assert_eq!((p.upstream.counts() - before).manifest_gets, 0, "cached");
    let text = std::fs::read_to_string(&metrics_file).expect("metrics file");
    assert!(!text.contains("image_sync_failures"), "{text}");
    assert!(text.contains("image_sync_exit_code 0"), "{text}");
}
