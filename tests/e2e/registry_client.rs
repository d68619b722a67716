//! The registry layer against real registries: failures typed by the side that failed,
//! a cache that refuses writes the way Zot does, tokens that expire, HEADs without a
//! digest, credentials found like crane finds them, DNS failures, local errors, one
//! deadline per check. Every test counts the upstream manifest GETs it caused.

use std::path::Path;
use std::time::Duration;

use crate::support::dns::FailingDns;
use crate::support::fault::{Fault, FaultProxy, Rule, TokenAuth};
use crate::support::image::{self, Format, Kind};
use crate::support::registry::{HungSocket, Registry};
use crate::support::runner::{ImageSync, Outcome, outcome};
use crate::support::tls_registry::TlsRegistry;
use crate::support::{self, pair, write_script};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn yaml(cache: &str, images: &[(String, &str)], settings: &str) -> String {
    let mut yaml = format!("cache_registry: \"{cache}\"\nimages:\n");
    for (source, tag) in images {
        yaml.push_str(&format!("  - {{source: \"{source}\", tag: \"{tag}\"}}\n"));
    }
    yaml.push_str("settings:\n  pull_timeout_secs: 60\n");
    yaml.push_str(settings);
    yaml
}

/// The `key=value` number of the log's "run finished" line.
fn finished(run: &Outcome, key: &str) -> u64 {
    let line = run
        .stderr
        .lines()
        .rev()
        .find(|line| line.contains("run finished"))
        .unwrap_or_else(|| panic!("no run finished line:\n{}", run.stderr));
    let start = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|digits| digits.parse().ok())
        .expect("a number")
}

fn error_of(run: &Outcome, index: usize) -> String {
    run.result(index)["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A PATH whose `crane` is a wrapper in `dir/bin` that runs `before` and then the real
/// crane (`before` ends with the command that execs it, e.g. `exec setpriv ...`).
fn crane_wrapper(dir: &Path, crane: &Path, before: &str) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    write_script(
        &bin.join("crane"),
        &format!("#!/bin/sh\n{before} {} \"$@\"\n", crane.display()),
    );
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A credential helper `docker-credential-NAME` (the script) in `dir/bin` and a Docker config
/// in `dir/docker` that names it: the PATH and `DOCKER_CONFIG` to run with.
fn credential_helper(
    dir: &Path,
    name: &str,
    script: &str,
    config: serde_json::Value,
) -> (String, std::path::PathBuf) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    write_script(&bin.join(format!("docker-credential-{name}")), script);
    let docker_dir = dir.join("docker");
    std::fs::create_dir_all(&docker_dir).expect("docker dir");
    std::fs::write(docker_dir.join("config.json"), config.to_string()).expect("config");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (path, docker_dir)
}

/// Item 1: Zot v2.1 without `docker2s2` answers a Docker manifest PUT with 415
/// `MANIFEST_INVALID`. That is final: one copy attempt, one upstream manifest GET, no
/// skopeo, nothing tagged, and the message says what to change.
#[test]
fn a_cache_that_refuses_docker_manifests_costs_one_pull_and_names_docker2s2() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "zot-refuses",
        &format!("{up}/app/docker:1"),
        Format::DockerV2S2,
    );
    let zot = FaultProxy::start(p.cache.host()).rule(
        Rule::new("PUT", "/manifests/")
            .content_type(DOCKER_MANIFEST)
            .respond(Fault::zot_refuses_media_type(DOCKER_MANIFEST)),
    );
    let run = ImageSync::new()
        .config(&yaml(&zot.host(), &[(format!("{up}/app/docker"), "1")], ""))
        .run();
    run.expect_code(1);
    assert_eq!(run.actions(), ["failed"]);
    let error = error_of(&run, 0);
    for needle in ["MANIFEST_INVALID", DOCKER_MANIFEST, "docker2s2"] {
        assert!(error.contains(needle), "{needle} in {error}");
    }
    assert!(
        error.starts_with("the cache refused the copy: crane copy"),
        "{error}"
    );
    assert_eq!(run.result(0)["attempts"], 1, "no retry, no fallback");
    assert_eq!(run.result(0)["tool"], "crane");
    p.upstream.expect_manifest_gets(1, "one pull");
    assert_eq!(finished(&run, "processes"), 1, "one crane, no skopeo");
    assert_eq!(zot.count("PUT", "/manifests/"), 1);
    assert!(
        image::digest_of(&p.tools, &format!("{}/app/docker:1", p.cache.host())).is_none(),
        "no tag written"
    );
}

/// Issue 18 item 1: an nginx ingress in front of the cache answers a blob upload with an
/// HTML `413 Request Entity Too Large`. Every 4xx to a cache write but 408 and 429 is a
/// final refusal: one copy attempt, one upstream manifest GET per image per run (it was
/// three, "transient"), and the message names the status and the body-size limit.
#[test]
fn an_ingress_413_to_a_blob_upload_costs_one_pull_per_image_per_run() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    for repo in ["app/big-a", "app/big-b"] {
        image::push_new(
            &p.tools,
            Kind::Single,
            repo,
            &format!("{up}/{repo}:1"),
            Format::Oci,
        );
    }
    let html = "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
    let ingress = FaultProxy::start(p.cache.host()).rule(
        Rule::new("PATCH", "/blobs/uploads/").respond(
            Fault::status(413)
                .header("Content-Type", "text/html")
                .body(html),
        ),
    );
    let images = [
        (format!("{up}/app/big-a"), "1"),
        (format!("{up}/app/big-b"), "1"),
    ];
    for run_number in 1..=2_usize {
        let run = ImageSync::new()
            .config(&yaml(&ingress.host(), &images, "  retries: 2\n"))
            .run();
        run.expect_code(1);
        assert_eq!(run.actions(), ["failed", "failed"]);
        for index in 0..2 {
            let error = error_of(&run, index);
            assert!(
                error.starts_with("the cache refused the copy: crane copy"),
                "{error}"
            );
            for needle in ["413", "HTTP 413", "body size"] {
                assert!(error.contains(needle), "{needle} in {error}");
            }
            assert_eq!(run.result(index)["attempts"], 1, "no retry: {error}");
        }
        assert!(
            !run.stderr.contains("transient failure; retrying"),
            "{}",
            run.stderr
        );
        p.upstream
            .expect_manifest_gets(2 * run_number, "one pull per image per run");
    }
    assert!(
        ingress.count("PATCH", "/blobs/uploads/") >= 4,
        "the uploads reached the ingress"
    );
}

/// Item 2a: a 429 on the upstream manifest GET during a copy trips the upstream's
/// breaker, not the cache's, although crane's message names both.
#[test]
fn an_upstream_rate_limit_during_a_copy_trips_the_upstream_not_the_cache() {
    let Some(p) = pair() else { return };
    let other = Registry::start(&p.tools);
    let up = p.upstream.host();
    for (registry, repo) in [(&up, "app/a"), (&up, "app/b"), (&other.host(), "app/c")] {
        image::push_new(
            &p.tools,
            Kind::Single,
            repo,
            &format!("{registry}/{repo}:1"),
            Format::Oci,
        );
    }
    let limited = FaultProxy::start(up.clone())
        .rule(Rule::new("GET", "/manifests/").respond(Fault::too_many_requests()));
    let images = [
        (format!("{}/app/a", limited.host()), "1"),
        (format!("{}/app/b", limited.host()), "1"),
        (format!("{}/app/c", other.host()), "1"),
    ];
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &images,
            "  concurrency: 1\n  check_concurrency: 1\n",
        ))
        .run();
    run.expect_code(1);
    assert_eq!(run.actions(), ["failed", "failed", "pulled"]);
    assert!(
        error_of(&run, 0).starts_with("rate limited: crane copy"),
        "{}",
        error_of(&run, 0)
    );
    assert!(
        error_of(&run, 1).starts_with(&format!("skipped: {} rate limited", limited.host())),
        "{}",
        error_of(&run, 1)
    );
    assert!(
        !run.stderr.contains(&format!("skipped: {}", p.cache.host())),
        "{}",
        run.stderr
    );
    assert_eq!(
        limited.count("GET", "/manifests/"),
        3,
        "crane's own three tries, once"
    );
    p.upstream
        .expect_manifest_gets(0, "every GET was answered by the proxy");
}

/// Item 2b: when the copy reaches the cache by its IP literal (a listed cache name and a
/// verified HTTPS upstream), a cache that rate limits the upload trips the cache, not the
/// upstream.
#[test]
fn a_cache_refusing_uploads_at_its_address_trips_the_cache_not_the_upstream() {
    let Some(tools) = support::tools() else {
        return;
    };
    let Some(tls) = TlsRegistry::start(&tools) else {
        return;
    };
    let cache = Registry::start(&tools);
    for repo in ["app/a", "app/b"] {
        tls.push_trusted(
            &tools,
            Kind::Single,
            repo,
            &format!("{}/{repo}:1", tls.host()),
        );
    }
    let cache_proxy = FaultProxy::start(cache.host())
        .rule(Rule::new("POST", "/blobs/uploads/").respond(Fault::too_many_requests()));
    let cache_host = format!("{}:{}", tls.name(), cache_proxy.port());
    let images = [
        (format!("{}/app/a", tls.host()), "1"),
        (format!("{}/app/b", tls.host()), "1"),
    ];
    let run = ImageSync::new()
        .config(&yaml(
            &cache_host,
            &images,
            &format!("  concurrency: 1\n  check_concurrency: 1\n  insecure_registries: [\"{cache_host}\"]\n"),
        ))
        .env("SSL_CERT_FILE", tls.ca_cert_path())
        .run();
    run.expect_code(1);
    assert_eq!(run.actions(), ["failed", "failed"]);
    let first = error_of(&run, 0);
    assert!(first.starts_with("rate limited: crane copy"), "{first}");
    assert!(
        first.contains(&format!("POST http://127.0.0.1:{}", cache_proxy.port())),
        "by literal: {first}"
    );
    let second = error_of(&run, 1);
    assert!(
        second.starts_with(&format!("skipped: {cache_host} rate limited")),
        "{second}"
    );
    assert!(
        !run.stderr.contains(&format!("skipped: {}", tls.host())),
        "{}",
        run.stderr
    );
    assert_eq!(tls.counts().manifest_gets, 1, "one copy started, one pull");
}

/// Syncs one image into a cache behind a token gate, with the copy slowed down past the
/// token's life so that the verification after it needs a new token. Returns the run
/// and image-sync's own traffic to the gate: (token fetches, 401 answers to its manifest
/// requests).
fn sync_through_token_gate(auth: TokenAuth) -> Option<(Outcome, (usize, usize))> {
    let p = pair()?;
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "token-cache",
        &format!("{up}/app/tok:1"),
        Format::Oci,
    );
    let gate = FaultProxy::start_with_tokens(p.cache.host(), auth)
        .rule(Rule::new("PUT", "/manifests/").respond(Fault::delay_ms(3_000)));
    let run = ImageSync::new()
        .config(&yaml(&gate.host(), &[(format!("{up}/app/tok"), "1")], ""))
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"], "{}", error_of(&run, 0));
    assert_eq!(run.result(0)["attempts"], 1, "a new token is not a retry");
    assert_eq!(p.upstream.counts().manifest_gets, 1);
    let ours: Vec<_> = gate
        .requests()
        .into_iter()
        .filter(|seen| seen.user_agent.starts_with("image-sync/"))
        // The record of what the run wrote (`image-sync/records`, see docs/src/prune.md)
        // is written after the image's own requests, with its own push token.
        .filter(|seen| !seen.path.contains("records"))
        .collect();
    // The image's own tokens: the run's one write of its record (prune's
    // `image-sync/records`, once per run) asks for a token of its own.
    let tokens = ours
        .iter()
        .filter(|seen| seen.path.starts_with("/token") && !seen.path.contains("records"))
        .count();
    let challenged = ours
        .iter()
        .filter(|seen| seen.path.contains("/manifests/") && seen.status == Some(401))
        .count();
    Some((run, (tokens, challenged)))
}

/// Item 3a: a token is not used past its `expires_in`: the check after a long copy
/// fetches a new one without being refused first.
#[test]
fn a_token_past_its_lifetime_is_renewed_before_use() {
    let Some((_, traffic)) = sync_through_token_gate(TokenAuth {
        expires_in: Some(2),
        valid_for: Duration::from_secs(2),
    }) else {
        return;
    };
    assert_eq!(traffic, (2, 1), "one challenge, then a token per lifetime");
}

/// Item 3b: a registry that revokes a token before the lifetime it announced answers
/// 401 with a challenge: the check fetches a fresh token once and goes on.
#[test]
fn a_token_refused_with_a_challenge_is_refreshed_once() {
    let Some((_, traffic)) = sync_through_token_gate(TokenAuth {
        expires_in: Some(300),
        valid_for: Duration::from_secs(2),
    }) else {
        return;
    };
    assert_eq!(
        traffic,
        (2, 2),
        "the first challenge, and one after revocation"
    );
}

/// Item 3c: concurrent checks of one repository share one token fetch, and a host whose
/// auth is known gets its token before the first request (no 401 round trip).
#[test]
fn concurrent_checks_of_one_repository_share_one_token() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    let tags = ["1", "2", "3", "4", "5", "6"];
    for tag in tags {
        image::push_new(
            &p.tools,
            Kind::Single,
            tag,
            &format!("{up}/app/many:{tag}"),
            Format::Oci,
        );
    }
    let gate = FaultProxy::start_with_tokens(
        up.clone(),
        TokenAuth {
            expires_in: None,
            valid_for: Duration::from_secs(300),
        },
    );
    let images: Vec<(String, &str)> = tags
        .iter()
        .map(|tag| (format!("{}/app/many", gate.host()), *tag))
        .collect();
    let run = ImageSync::new()
        .config(&yaml(&p.cache.host(), &images, "  check_concurrency: 6\n"))
        .arg("--dry-run")
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), vec!["would_pull"; 6]);
    let tokens = gate
        .requests()
        .into_iter()
        .filter(|seen| {
            seen.user_agent.starts_with("image-sync/") && seen.path.starts_with("/token")
        })
        .count();
    assert_eq!(
        tokens,
        1,
        "one token for the repository: {:?}",
        gate.requests()
    );
    assert_eq!(finished(&run, "processes"), 0);
    assert_eq!(p.upstream.counts().manifest_gets, 0);
}

/// Issue 18 item 3: only a HEAD without `Docker-Content-Digest` falls back to a GET, for that
/// answer (crane's rule): one such answer among five costs one GET, not five. A host is
/// remembered as one whose HEADs never carry the digest only after three in a row (its
/// later checks GET at once), with one warning that says so. Each check is image-sync's
/// own, counted per image (`check_gets`).
#[test]
fn a_head_without_a_digest_costs_a_get_for_that_answer_and_only_a_streak_is_remembered() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    let repos = ["app/v", "app/w", "app/x", "app/y", "app/z"];
    image::push_singles(&p.tools, &up, &repos);
    let proxy = FaultProxy::start(up.clone());
    let images: Vec<(String, &str)> = repos
        .iter()
        .map(|repo| (format!("{}/{repo}", proxy.host()), "1"))
        .collect();
    let config = yaml(&p.cache.host(), &images, "  check_concurrency: 1\n");
    ImageSync::new().config(&config).run().expect_code(0);

    // One HEAD in five lacks the digest.
    proxy.add_rule(
        Rule::new("HEAD", "/manifests/")
            .attempts(1..=1)
            .respond(Fault::StripDigest),
    );
    let before = p.upstream.counts();
    let run = ImageSync::new().config(&config).run();
    run.expect_code(0);
    assert_eq!(run.actions(), vec!["already_cached"; 5]);
    let spent = p.upstream.counts() - before;
    assert_eq!(
        (spent.manifest_heads, spent.manifest_gets),
        (5, 1),
        "one GET, for the one answer without a digest"
    );
    assert_eq!(run.result(0)["check_gets"], 1);
    for index in 1..5 {
        assert_eq!(run.result(index)["check_gets"], 0);
    }
    assert!(
        !run.stderr.contains("without Docker-Content-Digest"),
        "no warning for one answer: {}",
        run.stderr
    );

    // Every HEAD lacks it: after three in a row the host is remembered.
    proxy.clear_rules();
    proxy.add_rule(Rule::new("HEAD", "/manifests/").respond(Fault::StripDigest));
    let before = p.upstream.counts();
    let run = ImageSync::new().config(&config).run();
    run.expect_code(0);
    assert_eq!(run.actions(), vec!["already_cached"; 5]);
    let spent = p.upstream.counts() - before;
    assert_eq!(
        (spent.manifest_heads, spent.manifest_gets),
        (3, 5),
        "three HEADs in a row without a digest, then GETs only"
    );
    for index in 0..5 {
        assert_eq!(run.result(index)["check_gets"], 1);
        assert_eq!(run.result(index)["tool"], "image-sync");
    }
    assert_eq!(
        run.stderr
            .matches("3 manifest HEAD requests in a row without Docker-Content-Digest")
            .count(),
        1,
        "{}",
        run.stderr
    );
    assert_eq!(finished(&run, "processes"), 0, "not handed to crane");
}

/// Item 5: copies that reach a basic-auth cache by its IP literal (a listed cache name
/// and a verified HTTPS upstream) carry the cache's credentials, through a private config
/// for crane that is removed afterwards; none is printed.
#[test]
fn a_basic_auth_cache_reached_by_its_address_gets_its_credentials() {
    let Some(tools) = support::tools() else {
        return;
    };
    let Some(tls) = TlsRegistry::start(&tools) else {
        return;
    };
    let cache = Registry::start_with_auth(&tools, "writer", "cache-s3cret");
    tls.push_trusted(
        &tools,
        Kind::MultiArch,
        "auth-literal",
        &format!("{}/app/lit:1", tls.host()),
    );
    let cache_host = format!("{}:{}", tls.name(), cache.port());
    let auth_dir = tempfile::tempdir().expect("dir");
    support::write_docker_config(auth_dir.path(), &cache_host, "writer", "cache-s3cret");
    // The run's own temporary directory: other tests' runs keep theirs in the shared one.
    let run_tmp = tempfile::tempdir().expect("dir");
    let config = yaml(
        &cache_host,
        &[(format!("{}/app/lit", tls.host()), "1")],
        &format!("  insecure_registries: [\"{cache_host}\"]\n"),
    );
    let run = ImageSync::new()
        .config(&config)
        .env("DOCKER_CONFIG", auth_dir.path())
        .env("TMPDIR", run_tmp.path())
        .env("SSL_CERT_FILE", tls.ca_cert_path())
        .env("RUST_LOG", "image_sync=debug")
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"], "{}", error_of(&run, 0));
    assert_eq!(run.result(0)["tool"], "crane");
    assert!(
        run.stderr
            .contains(&format!("127.0.0.1:{}/app/lit:1", cache.port())),
        "crane copied to the literal: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("cache-s3cret") && !run.stdout.contains("cache-s3cret"));
    assert_eq!(
        tls.counts().manifest_gets,
        3,
        "index and two platforms, once"
    );
    let leftovers: Vec<_> = std::fs::read_dir(run_tmp.path())
        .expect("tmp")
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("image-sync-auth-")
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "the private config is removed: {leftovers:?}"
    );
}

/// Item 6: a credential helper and `REGISTRY_AUTH_FILE` are found as crane finds them, by
/// image-sync's own check (no crane process).
#[test]
fn credential_helpers_and_the_registry_auth_file_are_found_like_crane() {
    let Some(tools) = support::tools() else {
        return;
    };
    let upstream = Registry::start_with_auth(&tools, "reader", "helper-s3cret");
    let cache = Registry::start(&tools);
    let up = upstream.host();
    let dir = tempfile::tempdir().expect("dir");
    support::write_docker_config(dir.path(), &up, "reader", "helper-s3cret");
    let auth_file = dir.path().join("auth.json");
    std::fs::rename(dir.path().join("config.json"), &auth_file).expect("rename");
    image::OciLayout::new(Kind::Single, "helper", 64).push_with_authfile(
        &tools,
        &format!("{up}/app/helped:1"),
        &auth_file,
    );
    let config = yaml(&cache.host(), &[(format!("{up}/app/helped"), "1")], "");

    // A helper named in credHelpers, found on PATH.
    let asked = dir.path().join("asked");
    let (path, docker_dir) = credential_helper(
        dir.path(),
        "itest",
        &format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" >> {}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"reader\",\"Secret\":\"helper-s3cret\"}}' \"$server\"\n",
            asked.display()
        ),
        serde_json::json!({"credHelpers": {up.clone(): "itest"}}),
    );
    let run = ImageSync::new()
        .config(&config)
        .arg("--dry-run")
        .env("PATH", &path)
        .env("HOME", dir.path())
        .env("DOCKER_CONFIG", &docker_dir)
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["would_pull"], "{}", error_of(&run, 0));
    assert_eq!(run.result(0)["tool"], "image-sync");
    let asked = std::fs::read_to_string(&asked).expect("the helper was asked");
    assert!(asked.lines().all(|line| line.starts_with(&up)), "{asked}");
    assert!(!asked.is_empty());
    assert!(!run.stderr.contains("helper-s3cret"));

    // REGISTRY_AUTH_FILE, when no Docker config exists.
    let run = ImageSync::new()
        .config(&config)
        .arg("--dry-run")
        .env("HOME", dir.path())
        .env("REGISTRY_AUTH_FILE", &auth_file)
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["would_pull"], "{}", error_of(&run, 0));
    assert_eq!(run.result(0)["tool"], "image-sync");
    assert_eq!(finished(&run, "processes"), 0);
    assert_eq!(upstream.counts().manifest_gets, 0, "checks are HEADs");
}

/// Item 7a: a temporary DNS failure (SERVFAIL: EAI_AGAIN) is retried and trips no
/// breaker; NXDOMAIN is an answer: final, and the host's other images are skipped.
#[test]
fn a_temporary_dns_failure_is_retried_and_nxdomain_is_final() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "dns",
        &format!("{up}/app/fine:1"),
        Format::Oci,
    );
    let dns = FailingDns::start();
    let images = [
        ("servfail.test:5000/app/one".to_owned(), "1"),
        ("servfail.test:5000/app/two".to_owned(), "1"),
        ("gone.test:5000/app/three".to_owned(), "1"),
        ("gone.test:5000/app/four".to_owned(), "1"),
        (format!("{up}/app/fine"), "1"),
    ];
    let runner = ImageSync::new().config(&yaml(
        &p.cache.host(),
        &images,
        "  retries: 1\n  check_concurrency: 1\n  check_timeout_secs: 10\n",
    ));
    let run = outcome(
        dns.wrap(&runner.command())
            .output()
            .expect("run under unshare"),
    );
    run.expect_code(1);
    assert_eq!(
        run.actions(),
        ["failed", "failed", "failed", "failed", "pulled"]
    );
    for index in 0..2 {
        let error = error_of(&run, index);
        assert!(error.contains("temporary DNS failure"), "{error}");
        assert_eq!(run.result(index)["attempts"], 2, "retried: {error}");
    }
    let nxdomain = error_of(&run, 2);
    assert!(
        nxdomain.starts_with("unreachable:") && nxdomain.contains("no such host"),
        "{nxdomain}"
    );
    assert_eq!(run.result(2)["attempts"], 1);
    assert!(
        error_of(&run, 3).starts_with("skipped: gone.test:5000 unreachable"),
        "{}",
        error_of(&run, 3)
    );
    assert!(
        dns.queries() > 0,
        "lookups went to the failing server ({})",
        dns.resolv_conf().display()
    );
    p.upstream
        .expect_manifest_gets(1, "only the fine image was copied");
}

/// Item 7b: a local error of crane's (it cannot read the credentials file) is not the
/// registry's `DENIED`: the next attempt goes to skopeo, and `attempts` counts both.
#[test]
fn a_local_permission_error_is_local_and_the_next_attempt_uses_skopeo() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "local",
        &format!("{up}/app/local:1"),
        Format::Oci,
    );
    let dir = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let docker_dir = dir.path().join("docker");
    std::fs::create_dir_all(&docker_dir).expect("docker dir");
    std::fs::set_permissions(&docker_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config_json = docker_dir.join("config.json");
    std::fs::write(&config_json, "{}").expect("config");
    std::fs::set_permissions(&config_json, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // The real crane, run as nobody: the root-only credentials file is out of its reach.
    let path = crane_wrapper(
        dir.path(),
        &p.tools.crane,
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups",
    );
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[(format!("{up}/app/local"), "1")],
            "",
        ))
        .env("PATH", &path)
        .env("DOCKER_CONFIG", &docker_dir)
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"]);
    assert_eq!(run.result(0)["tool"], "skopeo");
    assert_eq!(run.result(0)["attempts"], 2, "crane, then skopeo");
    assert!(
        run.stderr.contains("crane failed on this machine"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("permission denied"), "{}", run.stderr);
    assert!(!run.stderr.contains("error=denied"), "{}", run.stderr);
    assert!(
        p.upstream.counts().manifest_gets <= 2,
        "{:?}",
        p.upstream.requests()
    );
}

/// Item 8: `check_timeout_secs` bounds the whole check: the HTTPS probe and the plain
/// HTTP attempt of a loopback host share it.
#[test]
fn one_deadline_covers_every_scheme_of_a_check() {
    let Some(p) = pair() else { return };
    let hung = HungSocket::start();
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[(format!("{}/app/hung", hung.host()), "1")],
            "  retries: 0\n  check_timeout_secs: 3\n",
        ))
        .run();
    run.expect_code(1);
    let error = error_of(&run, 0);
    assert!(
        error.starts_with("timed out after 3 s: HEAD http://"),
        "both schemes were tried within the one deadline: {error}"
    );
    let took = run.result(0)["duration_ms"].as_u64().expect("duration");
    assert!(
        (2_900..4_500).contains(&took),
        "bounded by the check timeout: {took} ms"
    );
}

/// `digest_check: crane` makes every check a `crane digest` process, as the design card
/// draws the pipeline.
#[test]
fn digest_check_crane_runs_crane_for_every_check() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["app/c1", "app/c2"]);
    let images = [(format!("{up}/app/c1"), "1"), (format!("{up}/app/c2"), "1")];
    let config = yaml(&p.cache.host(), &images, "  digest_check: crane\n");
    ImageSync::new().config(&config).run().expect_code(0);
    let before = p.upstream.counts();
    let run = ImageSync::new().config(&config).run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["already_cached", "already_cached"]);
    assert_eq!(run.result(0)["tool"], "crane");
    assert_eq!(
        finished(&run, "processes"),
        5,
        "the cache probe and two checks per image"
    );
    let spent = p.upstream.counts() - before;
    assert_eq!((spent.manifest_heads, spent.manifest_gets), (2, 0));
}

/// Item 9: a redirect from a host listed as insecure is not followed to another host by
/// image-sync's own client (crane, which the check is then handed to, is the reference).
#[test]
fn redirects_from_a_listed_host_stay_on_that_host() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "redirect",
        &format!("{up}/app/moved:1"),
        Format::Oci,
    );
    let elsewhere = FaultProxy::start(up.clone());
    let listed = FaultProxy::start(up.clone()).rule(Rule::new("HEAD", "/manifests/").respond(
        Fault::status(307).header(
            "Location",
            &format!("http://{}/v2/app/moved/manifests/1", elsewhere.host()),
        ),
    ));
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[(format!("{}/app/moved", listed.host()), "1")],
            &format!("  insecure_registries: [\"{}\"]\n", listed.host()),
        ))
        .arg("--dry-run")
        .run();
    run.expect_code(0);
    let followed: Vec<_> = elsewhere
        .requests()
        .into_iter()
        .filter(|seen| seen.user_agent.starts_with("image-sync/"))
        .collect();
    assert!(
        followed.is_empty(),
        "image-sync followed the redirect: {followed:?}"
    );
    assert_eq!(
        listed.count("HEAD", "/manifests/"),
        2,
        "image-sync's HEAD, then crane's"
    );
    assert_eq!(p.upstream.counts().manifest_gets, 0);
}

/// crane children run with `GOGC=off` and `GOMEMLIMIT=128MiB` (measured in BENCHMARKS.md),
/// unless the operator set either: the real crane, behind a wrapper that records what it
/// was given.
#[test]
fn crane_children_get_the_go_runtime_settings_unless_the_operator_set_them() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["app/gc1", "app/gc2"]);
    let dir = tempfile::tempdir().expect("dir");
    let seen = dir.path().join("seen");
    let path = crane_wrapper(
        dir.path(),
        &p.tools.crane,
        &format!(
            "echo \"GOGC=${{GOGC:-unset}} GOMEMLIMIT=${{GOMEMLIMIT:-unset}}\" >> {}\nexec",
            seen.display()
        ),
    );
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[(format!("{up}/app/gc1"), "1")],
            "",
        ))
        .env("PATH", &path)
        .run();
    run.expect_code(0);
    assert_eq!(run.result(0)["tool"], "crane");
    assert_eq!(
        std::fs::read_to_string(&seen).expect("crane ran"),
        "GOGC=off GOMEMLIMIT=128MiB\n"
    );
    std::fs::remove_file(&seen).expect("reset");
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[(format!("{up}/app/gc2"), "1")],
            "",
        ))
        .env("PATH", &path)
        .env("GOGC", "150")
        .run();
    run.expect_code(0);
    assert_eq!(
        std::fs::read_to_string(&seen).expect("crane ran"),
        "GOGC=150 GOMEMLIMIT=unset\n",
        "the operator's setting wins"
    );
    assert_eq!(p.upstream.counts().manifest_gets, 2, "one copy each");
}

/// Issue 18 item 5: a token endpoint (here the cache's, which the probe before the fan-out
/// asks first) whose `expires_in` is `u64::MAX` neither panics image-sync nor keeps the token
/// for ever: the lifetime is capped and the run reports. (A dry run: crane and skopeo
/// themselves refuse that token response, so a copy would fail in them.)
#[test]
fn a_token_that_claims_to_live_for_ever_is_capped_and_the_run_reports() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["app/forever"]);
    let gate = FaultProxy::start_with_tokens(
        p.cache.host(),
        TokenAuth {
            expires_in: Some(u64::MAX),
            valid_for: Duration::from_secs(300),
        },
    );
    let run = ImageSync::new()
        .config(&yaml(
            &gate.host(),
            &[(format!("{up}/app/forever"), "1")],
            "",
        ))
        .arg("--dry-run")
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["would_pull"], "{}", error_of(&run, 0));
    assert_eq!(run.result(0)["tool"], "image-sync");
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    let tokens = gate
        .requests()
        .into_iter()
        .filter(|seen| {
            seen.user_agent.starts_with("image-sync/") && seen.path.starts_with("/token")
        })
        .count();
    assert_eq!(tokens, 1, "the cache's token, used for its checks");
    assert_eq!(p.upstream.counts().manifest_gets, 0);
}

/// Issue 18 item 8: credential helpers run under the check's deadline, once per key per
/// run, in parallel for different keys, with no lock held while one runs. A helper slower
/// than `check_timeout_secs` makes the first checks time out naming the helper (a local
/// failure: no registry's breaker trips, so the cache probe does not fail every image);
/// the retries find its answer. Every key was asked once.
#[test]
fn slow_credential_helpers_run_once_per_key_in_parallel_within_the_check_deadline() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["app/h1", "app/h2", "app/h3"]);
    let dir = tempfile::tempdir().expect("dir");
    let asked = dir.path().join("asked");
    let running = dir.path().join("running");
    let overlap = dir.path().join("overlap");
    std::fs::create_dir_all(&running).expect("running dir");
    // Not found for every key, after 2 s; records how many helpers ran at once.
    let (path, docker_dir) = credential_helper(
        dir.path(),
        "slowtest",
        &format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" >> {asked}\ntouch {running}/$$\nsleep 2\nls {running} | wc -l >> {overlap}\nrm -f {running}/$$\necho 'credentials not found in native keychain'\nexit 1\n",
            asked = asked.display(),
            running = running.display(),
            overlap = overlap.display()
        ),
        serde_json::json!({"credsStore": "slowtest"}),
    );
    let images: Vec<(String, &str)> = ["app/h1", "app/h2", "app/h3"]
        .iter()
        .map(|repo| (format!("{up}/{repo}"), "1"))
        .collect();
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &images,
            "  check_timeout_secs: 3\n  retries: 3\n  check_concurrency: 4\n",
        ))
        .arg("--dry-run")
        .env("PATH", &path)
        .env("HOME", dir.path())
        .env("DOCKER_CONFIG", &docker_dir)
        .run();
    run.expect_code(0);
    assert_eq!(
        run.actions(),
        vec!["would_pull"; 3],
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(!run.stderr.contains("no scheme reached"), "{}", run.stderr);
    let asked = std::fs::read_to_string(&asked).expect("the helper was asked");
    let mut keys: Vec<&str> = asked.lines().collect();
    let total = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(total, keys.len(), "each key once: {asked}");
    let cache = p.cache.host();
    for key in [
        format!("{cache}/app/h1"),
        cache.clone(),
        format!("{up}/app/h1"),
        format!("{up}/app/h2"),
        format!("{up}/app/h3"),
        up.clone(),
    ] {
        assert!(keys.contains(&key.as_str()), "{key} asked: {asked}");
    }
    let most_at_once = std::fs::read_to_string(&overlap)
        .expect("overlap")
        .lines()
        .filter_map(|line| line.trim().parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    assert!(
        most_at_once >= 2,
        "helpers for different keys ran in parallel"
    );
    assert_eq!(p.upstream.counts().manifest_gets, 0);
}

/// Issue 18 item 8: a helper that does not answer within the check's deadline fails that
/// check with a timeout naming the helper, within the deadline (not the helper's own 20 s),
/// and trips no breaker.
#[test]
fn a_credential_helper_past_the_deadline_fails_the_check_naming_it() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["app/hung-helper"]);
    let dir = tempfile::tempdir().expect("dir");
    let (path, docker_dir) = credential_helper(
        dir.path(),
        "hangs",
        "#!/bin/sh\nsleep 15\nexit 1\n",
        serde_json::json!({"credHelpers": {up.clone(): "hangs"}}),
    );
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[(format!("{up}/app/hung-helper"), "1")],
            "  check_timeout_secs: 2\n  retries: 0\n",
        ))
        .arg("--dry-run")
        .env("PATH", &path)
        .env("HOME", dir.path())
        .env("DOCKER_CONFIG", &docker_dir)
        .run();
    run.expect_code(1);
    let error = error_of(&run, 0);
    assert!(
        error.starts_with("timed out: credential helper docker-credential-hangs gave no answer"),
        "{error}"
    );
    let took = run.result(0)["duration_ms"].as_u64().expect("duration");
    assert!(took < 5_000, "bounded by the check's deadline: {took} ms");
    assert_eq!(p.upstream.counts().manifest_heads, 0, "nothing was sent");
}

/// Issue 18 item 10: a plain-HTTP registry listed in `insecure_registries` whose bearer
/// realm is on its own host works when its manifest HEAD is slow (3 s): the HEAD that
/// answered proves the scheme (no probe of the next one), and the realm rule sees the
/// scheme the challenge came over.
#[test]
fn a_listed_plain_http_registry_with_its_own_realm_works_when_its_head_is_slow() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["app/slow"]);
    let gate = FaultProxy::start_with_tokens(
        up.clone(),
        TokenAuth {
            expires_in: Some(300),
            valid_for: Duration::from_secs(300),
        },
    )
    .rule(Rule::new("HEAD", "/manifests/").respond(Fault::delay_ms(3_000)));
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[(format!("{}/app/slow", gate.host()), "1")],
            &format!(
                "  check_timeout_secs: 12\n  retries: 0\n  insecure_registries: [\"{}\"]\n",
                gate.host()
            ),
        ))
        .arg("--dry-run")
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["would_pull"], "{}", error_of(&run, 0));
    assert_eq!(run.result(0)["tool"], "image-sync");
    assert!(!run.stderr.contains("is not HTTPS"), "{}", run.stderr);
    assert_eq!(p.upstream.counts().manifest_gets, 0);
}

/// Issue 18, tokens: checks of many repositories behind a token-issuing registry share
/// token requests (several repository scopes per request, at most 16), instead of one
/// token per repository.
#[test]
fn checks_of_many_repositories_share_token_requests_of_bounded_scope() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    let repos: Vec<String> = (0..24).map(|n| format!("team/r{n}")).collect();
    let names: Vec<&str> = repos.iter().map(String::as_str).collect();
    image::push_singles(&p.tools, &up, &names);
    let gate = FaultProxy::start_with_tokens(
        up.clone(),
        TokenAuth {
            expires_in: Some(300),
            valid_for: Duration::from_secs(300),
        },
    );
    let images: Vec<(String, &str)> = repos
        .iter()
        .map(|repo| (format!("{}/{repo}", gate.host()), "1"))
        .collect();
    let run = ImageSync::new()
        .config(&yaml(&p.cache.host(), &images, "  check_concurrency: 8\n"))
        .arg("--dry-run")
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), vec!["would_pull"; 24]);
    let token_requests: Vec<String> = gate
        .requests()
        .into_iter()
        .filter(|seen| {
            seen.user_agent.starts_with("image-sync/") && seen.path.starts_with("/token")
        })
        .map(|seen| seen.path)
        .collect();
    let scopes: Vec<usize> = token_requests
        .iter()
        .map(|path| path.matches("scope=").count())
        .collect();
    assert_eq!(
        scopes.iter().sum::<usize>(),
        24,
        "every repository's scope once: {token_requests:?}"
    );
    assert!(scopes.iter().all(|&n| (1..=16).contains(&n)), "{scopes:?}");
    assert!(
        token_requests.len() <= 12,
        "at most half as many token requests as repositories: {scopes:?}"
    );
    assert_eq!(p.upstream.counts().manifest_gets, 0);
}

/// Issue 18 item 13: a truncated Docker config (a write cut short) is this machine's
/// problem: a `local error` naming the file, not a broken connection (crane says
/// `unexpected EOF`); no registry request, no pull.
#[test]
fn a_truncated_docker_config_is_a_local_error_not_a_broken_connection() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "truncated",
        &format!("{up}/app/cut:1"),
        Format::Oci,
    );
    let before = p.upstream.counts();
    let auth_dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        auth_dir.path().join("config.json"),
        format!("{{\"auths\": {{\"{up}\": {{\"auth\": \"cmVhZGVyOnMz"),
    )
    .expect("config.json");
    let config = yaml(&p.cache.host(), &[(format!("{up}/app/cut"), "1")], "");
    let run = ImageSync::new()
        .config(&config)
        .env("DOCKER_CONFIG", auth_dir.path())
        .run();
    run.expect_code(1);
    assert_eq!(run.actions(), ["failed"]);
    let error = error_of(&run, 0);
    assert!(
        error.starts_with("local error:") && error.contains("config.json is truncated"),
        "{error}"
    );
    assert!(!error.contains("cmVhZGVy"), "{error}");
    assert_eq!(p.upstream.counts().manifest_gets, 0);
    assert_eq!(
        p.upstream.counts() - before,
        Default::default(),
        "no request upstream"
    );
}
