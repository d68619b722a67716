//! The sync path end to end: digest-first checks, copies that keep digests, failures that
//! stay per image, the skopeo fallback, credentials, timeouts and concurrency.

use std::time::Duration;

use crate::support::fault::{Fault, FaultProxy, Rule};
use crate::support::image::{self, Format, Kind, OciLayout};
use crate::support::registry::{HungSocket, Registry};
use crate::support::runner::ImageSync;
use crate::support::{self, pair};

/// A config syncing `images` (source, tag) into `cache`, with extra `settings` lines.
fn config(cache: &str, images: &[(String, &str)], settings: &str) -> String {
    let mut yaml = format!("cache_registry: \"{cache}\"\nimages:\n");
    for (source, tag) in images {
        yaml.push_str(&format!("  - source: \"{source}\"\n    tag: \"{tag}\"\n"));
    }
    yaml.push_str("settings:\n  check_timeout_secs: 20\n  pull_timeout_secs: 60\n");
    yaml.push_str(settings);
    yaml
}

#[test]
fn first_run_copies_with_identical_digests_and_a_second_run_spends_no_pull() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::MultiArch,
        "multi",
        &format!("{up}/team/multi:v1"),
        Format::Oci,
    );
    image::push_new(
        &p.tools,
        Kind::Single,
        "docker",
        &format!("{up}/library/docker-format:1.0"),
        Format::DockerV2S2,
    );
    let yaml = config(
        &p.cache.host(),
        &[
            (format!("{up}/team/multi"), "v1"),
            (format!("{up}/library/docker-format"), "1.0"),
        ],
        "",
    );

    let first = ImageSync::new().config(&yaml).run();
    first.expect_code(0);
    assert_eq!(first.actions(), ["pulled", "pulled"]);
    for (index, (source, target)) in [
        (
            format!("{up}/team/multi:v1"),
            format!("{}/team/multi:v1", p.cache.host()),
        ),
        (
            format!("{up}/library/docker-format:1.0"),
            format!("{}/library/docker-format:1.0", p.cache.host()),
        ),
    ]
    .iter()
    .enumerate()
    {
        let upstream_digest = image::digest_of(&p.tools, source).expect("upstream digest");
        assert_eq!(
            image::digest_of(&p.tools, target).as_deref(),
            Some(upstream_digest.as_str()),
            "{target}"
        );
        let result = first.result(index);
        assert_eq!(result["remote_digest"], upstream_digest.as_str());
        assert_eq!(result["cached_digest"], serde_json::Value::Null);
        assert_eq!(result["tool"], "crane");
        assert_eq!(result["error"], serde_json::Value::Null);
    }
    assert_eq!(
        image::media_type_of(&p.tools, &format!("{}/team/multi:v1", p.cache.host())),
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        image::media_type_of(
            &p.tools,
            &format!("{}/library/docker-format:1.0", p.cache.host())
        ),
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let summary = &first.report()["summary"];
    assert_eq!(
        summary,
        &serde_json::json!({"pulled": 2, "already_cached": 0, "would_pull": 0, "failed": 0, "deferred": 0, "total": 2})
    );
    assert_eq!(first.report()["dry_run"], false);

    let (upstream_before, cache_before) = (p.upstream.counts(), p.cache.counts());
    let second = ImageSync::new().config(&yaml).run();
    second.expect_code(0);
    assert_eq!(second.actions(), ["already_cached", "already_cached"]);
    assert_eq!(
        second.result(0)["cached_digest"],
        second.result(0)["remote_digest"]
    );
    // Digest checks are image-sync's own HEADs: a no-op run starts no process at all.
    assert_eq!(second.result(0)["tool"], "image-sync");
    assert!(second.stderr.contains("processes=0"), "{}", second.stderr);
    let upstream = p.upstream.counts() - upstream_before;
    assert_eq!(
        (
            upstream.manifest_heads,
            upstream.manifest_gets,
            upstream.blob_reads
        ),
        (2, 0, 0),
        "{upstream:?}"
    );
    assert_eq!((p.cache.counts() - cache_before).writes, 0);
}

#[test]
fn a_moved_tag_is_copied_again_alone() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "a1",
        &format!("{up}/app/a:stable"),
        Format::Oci,
    );
    image::push_new(
        &p.tools,
        Kind::MultiArch,
        "b1",
        &format!("{up}/app/b:stable"),
        Format::Oci,
    );
    let yaml = config(
        &p.cache.host(),
        &[
            (format!("{up}/app/a"), "stable"),
            (format!("{up}/app/b"), "stable"),
        ],
        "",
    );
    ImageSync::new().config(&yaml).run().expect_code(0);
    let old = image::digest_of(&p.tools, &format!("{up}/app/a:stable")).expect("digest");

    image::push_new(
        &p.tools,
        Kind::Single,
        "a2",
        &format!("{up}/app/a:stable"),
        Format::Oci,
    );
    let moved = image::digest_of(&p.tools, &format!("{up}/app/a:stable")).expect("digest");
    assert_ne!(old, moved);
    let rerun = ImageSync::new().config(&yaml).run();
    rerun.expect_code(0);
    assert_eq!(rerun.actions(), ["pulled", "already_cached"]);
    assert_eq!(rerun.result(0)["cached_digest"], old.as_str());
    assert_eq!(rerun.result(0)["remote_digest"], moved.as_str());
    assert_eq!(
        image::digest_of(&p.tools, &format!("{}/app/a:stable", p.cache.host())),
        Some(moved)
    );
}

#[test]
fn a_missing_tag_fails_only_that_image_and_the_report_is_complete() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "ok",
        &format!("{up}/app/ok:1"),
        Format::Oci,
    );
    let images = [
        (format!("{up}/app/ok"), "1"),
        (format!("{up}/app/ok"), "does-not-exist"),
        (format!("{up}/app/no-such-repo"), "1"),
    ];
    let run = ImageSync::new()
        .config(&config(&p.cache.host(), &images, ""))
        .run();
    run.expect_code(1);
    assert_eq!(run.actions(), ["pulled", "failed", "failed"]);
    let missing_tag = run.result(1)["error"].as_str().expect("error text");
    assert!(
        missing_tag.starts_with("manifest unknown: HEAD http://"),
        "{missing_tag}"
    );
    assert!(!missing_tag.contains('\n'));
    let missing_repo = run.result(2)["error"].as_str().expect("error text");
    assert!(
        missing_repo.starts_with("name unknown") || missing_repo.starts_with("manifest unknown"),
        "{missing_repo}"
    );
    assert_eq!(run.report()["summary"]["failed"], 2);
    assert_eq!(run.report()["summary"]["total"], 3);
    assert_eq!(run.result(1)["image"], format!("{up}/app/ok"));
    assert_eq!(run.result(1)["tag"], "does-not-exist");
    // A definite answer is not retried with skopeo.
    assert!(
        !run.stderr.contains("retrying the digest check with skopeo"),
        "{}",
        run.stderr
    );
}

#[test]
fn skip_on_error_turns_failures_into_exit_zero_but_still_reports_them() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "ok",
        &format!("{up}/app/ok:1"),
        Format::Oci,
    );
    let images = [
        (format!("{up}/app/ok"), "1"),
        (format!("{up}/app/ok"), "missing"),
    ];
    let run = ImageSync::new()
        .config(&config(&p.cache.host(), &images, "  skip_on_error: true\n"))
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled", "failed"]);
    assert_eq!(run.report()["summary"]["failed"], 1);
}

#[test]
fn dry_run_reports_would_pull_and_writes_nothing() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::MultiArch,
        "dry",
        &format!("{up}/app/dry:1"),
        Format::Oci,
    );
    let yaml = config(&p.cache.host(), &[(format!("{up}/app/dry"), "1")], "");
    let upstream_before = p.upstream.counts();
    let run = ImageSync::new().config(&yaml).arg("--dry-run").run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["would_pull"]);
    assert_eq!(run.report()["dry_run"], true);
    assert_eq!(run.report()["summary"]["would_pull"], 1);
    assert_eq!(p.cache.counts().writes, 0, "{}", p.cache.access_log());
    assert_eq!(
        image::digest_of(&p.tools, &format!("{}/app/dry:1", p.cache.host())),
        None
    );
    let upstream = p.upstream.counts() - upstream_before;
    assert_eq!(
        (
            upstream.manifest_heads,
            upstream.manifest_gets,
            upstream.blob_reads
        ),
        (1, 0, 0),
        "a dry run spends no pull: {upstream:?}"
    );
}

#[test]
fn without_crane_skopeo_does_the_work_and_keeps_digests() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::MultiArch,
        "sk",
        &format!("{up}/app/multi:1"),
        Format::Oci,
    );
    image::push_new(
        &p.tools,
        Kind::Single,
        "sk2",
        &format!("{up}/app/docker:1"),
        Format::DockerV2S2,
    );
    let yaml = config(
        &p.cache.host(),
        &[
            (format!("{up}/app/multi"), "1"),
            (format!("{up}/app/docker"), "1"),
        ],
        "",
    );
    let run_dir = tempfile::tempdir().expect("dir");
    let only_skopeo = support::bin_with(run_dir.path(), &[&p.tools.skopeo]);

    let first = ImageSync::new()
        .config(&yaml)
        .env("PATH", &only_skopeo)
        .run();
    first.expect_code(0);
    assert_eq!(first.actions(), ["pulled", "pulled"]);
    assert_eq!(first.result(0)["tool"], "skopeo");
    assert!(
        first.stderr.contains("crane is not on PATH") && first.stderr.contains("spend pull quota"),
        "{}",
        first.stderr
    );
    for name in ["app/multi:1", "app/docker:1"] {
        let upstream = image::digest_of(&p.tools, &format!("{up}/{name}"));
        assert!(upstream.is_some());
        assert_eq!(
            image::digest_of(&p.tools, &format!("{}/{name}", p.cache.host())),
            upstream,
            "{name}"
        );
    }
    let second = ImageSync::new()
        .config(&yaml)
        .env("PATH", &only_skopeo)
        .run();
    second.expect_code(0);
    assert_eq!(second.actions(), ["already_cached", "already_cached"]);
}

#[test]
fn credentials_come_from_docker_config_and_never_show() {
    let Some(tools) = support::tools() else {
        return;
    };
    let (user, password) = ("sync-bot", "pa55-w0rd-secret");
    let upstream = Registry::start_with_auth(&tools, user, password);
    let cache = Registry::start(&tools);
    let up = upstream.host();
    let seed_auth = tempfile::tempdir().expect("dir");
    support::write_docker_config(seed_auth.path(), &up, user, password);
    OciLayout::new(Kind::MultiArch, "private", 64).push_with_authfile(
        &tools,
        &format!("{up}/private/app:1"),
        &seed_auth.path().join("config.json"),
    );

    let yaml = config(&cache.host(), &[(format!("{up}/private/app"), "1")], "");
    let good = tempfile::tempdir().expect("dir");
    support::write_docker_config(good.path(), &up, user, password);
    let run = ImageSync::new()
        .config(&yaml)
        .env("DOCKER_CONFIG", good.path())
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"]);

    // The skopeo path gets the same file through --authfile.
    let fresh_cache = Registry::start(&tools);
    let path_dir = tempfile::tempdir().expect("dir");
    let only_skopeo = support::bin_with(path_dir.path(), &[&tools.skopeo]);
    let yaml_fresh = config(
        &fresh_cache.host(),
        &[(format!("{up}/private/app"), "1")],
        "",
    );
    let via_skopeo = ImageSync::new()
        .config(&yaml_fresh)
        .env("DOCKER_CONFIG", good.path())
        .env("PATH", &only_skopeo)
        .run();
    via_skopeo.expect_code(0);
    assert_eq!(
        (
            via_skopeo.actions()[0].as_str(),
            &via_skopeo.result(0)["tool"]
        ),
        ("pulled", &serde_json::json!("skopeo"))
    );

    // Manifest GETs the registry answered: the pulls.
    let pulls = |requests: &[(String, String, u16)]| {
        requests
            .iter()
            .filter(|(method, path, status)| {
                method == "GET" && path.contains("/manifests/") && *status == 200
            })
            .count()
    };
    let pulls_before_failures = pulls(&upstream.requests());
    let wrong_password = "wr0ng-secret-value";
    let bad = tempfile::tempdir().expect("dir");
    support::write_docker_config(bad.path(), &up, user, wrong_password);
    let denied = ImageSync::new()
        .config(&yaml)
        .env("DOCKER_CONFIG", bad.path())
        .run();
    denied.expect_code(1);
    let error = denied.result(0)["error"].as_str().expect("error");
    assert!(error.starts_with("unauthorized"), "{error}");
    for secret in [password, wrong_password] {
        assert!(
            !denied.stdout.contains(secret) && !denied.stderr.contains(secret),
            "{secret} leaked"
        );
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{secret} leaked"
        );
    }
    let anonymous = ImageSync::new().config(&yaml).run();
    anonymous.expect_code(1);
    assert!(
        anonymous.result(0)["error"]
            .as_str()
            .expect("error")
            .starts_with("unauthorized")
    );
    // Without credentials for a host that asks for them, image-sync's own check does not
    // answer `unauthorized` itself: crane (which may have a helper) has the last word.
    assert_eq!(anonymous.result(0)["tool"], "crane");
    assert_eq!(
        pulls(&upstream.requests()),
        pulls_before_failures,
        "the wrong and the missing credentials cost no pull"
    );
}

#[test]
fn a_hung_upstream_times_out_without_blocking_the_rest() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    let hung = HungSocket::start();
    image::push_new(
        &p.tools,
        Kind::Single,
        "one",
        &format!("{up}/app/one:1"),
        Format::Oci,
    );
    image::push_new(
        &p.tools,
        Kind::Single,
        "two",
        &format!("{up}/app/two:1"),
        Format::Oci,
    );
    let images = [
        (format!("{}/app/hung", hung.host()), "1"),
        (format!("{up}/app/one"), "1"),
        (format!("{up}/app/two"), "1"),
    ];
    let mut yaml = format!("cache_registry: \"{}\"\nimages:\n", p.cache.host());
    for (source, tag) in &images {
        yaml.push_str(&format!("  - {{source: \"{source}\", tag: \"{tag}\"}}\n"));
    }
    yaml.push_str(
        "settings:\n  concurrency: 2\n  check_timeout_secs: 2\n  pull_timeout_secs: 60\n",
    );
    let run = ImageSync::new().config(&yaml).run();
    run.expect_code(1);
    assert_eq!(run.actions(), ["failed", "pulled", "pulled"]);
    let error = run.result(0)["error"].as_str().expect("error");
    assert!(
        error.starts_with("timed out after 2 s: HEAD http://127.0.0.1:"),
        "{error}"
    );
    // A check that timed out is retried (default `retries: 2`) with backoff, then given up.
    assert_eq!(run.result(0)["attempts"], 3);
    let hung_ms = run.result(0)["duration_ms"].as_u64().expect("duration");
    assert!((6_000..30_000).contains(&hung_ms), "{hung_ms}");
    assert_eq!(run.result(1)["attempts"], 1);
}

#[test]
fn copies_and_checks_stay_within_their_own_bounds() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    // Checks of the upstream go through a proxy that holds every manifest HEAD for 300 ms,
    // so that checks overlap whenever the bound lets them.
    let proxy = FaultProxy::start(up.clone())
        .rule(Rule::new("HEAD", "/manifests/").respond(Fault::delay_ms(300)));
    let mut images = Vec::new();
    for i in 0..6 {
        image::push_new(
            &p.tools,
            Kind::Single,
            &format!("c{i}"),
            &format!("{up}/app/c{i}:1"),
            Format::Oci,
        );
        images.push((format!("{}/app/c{i}", proxy.host()), "1"));
    }
    // A shim in front of the real crane records when each copy starts and ends; it sleeps
    // first so that copies overlap whenever the bound lets them.
    let dir = tempfile::tempdir().expect("dir");
    let bin = support::bin_with(dir.path(), &[&p.tools.skopeo]);
    let log = dir.path().join("spans.log");
    let shim = format!(
        "#!/bin/sh\necho \"start $1\" >> '{log}'\nsleep 0.3\n'{crane}' \"$@\"\nstatus=$?\necho \"end $1\" >> '{log}'\nexit $status\n",
        log = log.display(),
        crane = p.tools.crane.display()
    );
    support::write_script(&bin.join("crane"), &shim);
    let path = format!("{}:/usr/bin:/bin", bin.display());

    let settings = "  concurrency: 2\n  check_concurrency: 3\n";
    let run = ImageSync::new()
        .config(&config(&p.cache.host(), &images, settings))
        .env("PATH", path)
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), vec!["pulled"; 6]);

    let spans = std::fs::read_to_string(&log).expect("spans");
    let (mut running, mut copy_peak, mut copies) = (0_i32, 0_i32, 0);
    for line in spans.lines() {
        match line {
            "start copy" => {
                running += 1;
                copies += 1;
            }
            "end copy" => running -= 1,
            other => panic!("only copies spawn crane, saw {other:?}"),
        }
        copy_peak = copy_peak.max(running);
    }
    assert_eq!(
        (copy_peak, copies),
        (2, 6),
        "copies: (peak, count)\n{spans}"
    );

    let heads: Vec<(Duration, Duration)> = proxy
        .requests()
        .into_iter()
        .filter(|seen| seen.method == "HEAD" && seen.path.contains("/manifests/"))
        .map(|seen| (seen.at, seen.at + seen.duration.expect("finished")))
        .collect();
    assert_eq!(heads.len(), 6, "one upstream HEAD per image");
    let check_peak = heads
        .iter()
        .map(|&(start, _)| {
            heads
                .iter()
                .filter(|&&(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert_eq!(
        check_peak, 3,
        "upstream checks run under their own bound, above the copy bound"
    );
    assert!(
        run.stderr.contains("processes=6"),
        "one process per copy, none per check: {}",
        run.stderr
    );
}

#[test]
fn a_listed_cache_name_on_loopback_is_reached_by_crane_without_weakening_the_upstream() {
    let Some(p) = pair() else { return };
    // The machine's own host name resolves to 127.0.0.1 here (/etc/hosts); crane would not
    // speak plain HTTP to it by itself, so it has to be listed as insecure.
    let Some(name) = crate::support::tls_registry::tls_host_name() else {
        let message = "no host name resolving to 127.0.0.1 only (see /etc/hosts)";
        assert!(
            std::env::var_os(support::REQUIRE_TOOLS_VAR).is_none(),
            "{message}"
        );
        eprintln!("SKIPPED: {message}");
        return;
    };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::MultiArch,
        "named",
        &format!("{up}/app/named:1"),
        Format::Oci,
    );
    let cache = format!("{name}:{}", p.cache.port());
    let yaml = config(
        &cache,
        &[(format!("{up}/app/named"), "1")],
        &format!("  insecure_registries: [\"{cache}\"]\n"),
    );
    let run = ImageSync::new().config(&yaml).run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"]);
    assert_eq!(run.result(0)["tool"], "crane");
    assert!(run.stderr.contains("treated as insecure"), "{}", run.stderr);
    let second = ImageSync::new().config(&yaml).run();
    assert_eq!(second.actions(), ["already_cached"]);
}

#[test]
fn a_bearer_challenge_is_answered_with_a_token_scoped_to_the_repository() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "token",
        &format!("{up}/team/app:1"),
        Format::Oci,
    );
    // A token endpoint that records what it is asked, and a proxy whose first manifest
    // HEAD answers with a bearer challenge pointing at it (later ones pass through).
    let token_server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let realm = format!("http://{}/token", token_server.local_addr().expect("addr"));
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorder = std::sync::Arc::clone(&asked);
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        for stream in token_server.incoming().flatten().take(4) {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            while reader.read_line(&mut head).is_ok_and(|n| n > 2) {}
            recorder.lock().expect("lock").push(head);
            let body = r#"{"token": "t0ken-for-test"}"#;
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let challenge = format!(
        "Bearer realm=\"{realm}\",service=\"test-registry\",scope=\"repository:team/app:pull\""
    );
    let proxy = FaultProxy::start(up.clone()).rule(
        Rule::new("HEAD", "/manifests/")
            .attempts(1..=1)
            .respond(Fault::status(401).header("WWW-Authenticate", &challenge)),
    );
    let auth_dir = tempfile::tempdir().expect("dir");
    support::write_docker_config(auth_dir.path(), &proxy.host(), "bot", "token-secret");

    let run = ImageSync::new()
        .config(&config(
            &p.cache.host(),
            &[(format!("{}/team/app", proxy.host()), "1")],
            "",
        ))
        .env("DOCKER_CONFIG", auth_dir.path())
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"]);
    let asked = asked.lock().expect("lock").clone();
    assert!(!asked.is_empty(), "the token endpoint was asked");
    let request = asked[0].to_ascii_lowercase();
    assert!(request.starts_with("get /token?"), "{request}");
    assert!(
        request.contains("scope=repository%3ateam%2fapp%3apull"),
        "{request}"
    );
    assert!(request.contains("service=test-registry"), "{request}");
    assert!(
        request.contains("user-agent: image-sync/"),
        "image-sync itself, not crane, asked: {request}"
    );
    assert_eq!(
        asked.len(),
        1,
        "one token for the check; the copy by crane needs none (the proxy lets it through)"
    );
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD
        .encode("bot:token-secret")
        .to_ascii_lowercase();
    assert!(
        request.contains(&format!("authorization: basic {basic}")),
        "credentials go to the token endpoint: {request}"
    );
    assert_eq!(run.result(0)["attempts"], 1, "a challenge is not a failure");
    assert!(!run.stderr.contains("token-secret") && !run.stderr.contains("t0ken-for-test"));
}

#[test]
fn an_https_registry_on_loopback_is_checked_over_https_by_image_sync_itself() {
    let Some(tools) = support::tools() else {
        return;
    };
    let Some(tls) = crate::support::tls_registry::TlsRegistry::start(&tools) else {
        return;
    };
    let cache = crate::support::registry::Registry::start(&tools);
    // Seed over verified TLS, then name the registry by 127.0.0.1 (in its certificate): a
    // host crane would also try plain HTTP for, so the check must find HTTPS by itself.
    tls.push_trusted(
        &tools,
        Kind::Single,
        "loopback-tls",
        &format!("{}/team/app:1", tls.host()),
    );
    let source = format!("127.0.0.1:{}/team/app", tls.port());
    let run = ImageSync::new()
        .config(&config(&cache.host(), &[(source, "1")], ""))
        .arg("--dry-run")
        .env("SSL_CERT_FILE", tls.ca_cert_path())
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["would_pull"]);
    let log = tls.access_log();
    assert!(
        log.lines()
            .any(|line| line.contains("\"HEAD /v2/team/app/manifests/1 ")
                && line.contains("image-sync/")),
        "image-sync's own HEAD reached the HTTPS registry:\n{log}"
    );
    assert!(
        !log.contains("go-containerregistry"),
        "not handed to crane:\n{log}"
    );
    assert!(run.stderr.contains("processes=0"), "{}", run.stderr);
}
