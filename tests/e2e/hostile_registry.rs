//! A hostile registry: answers that are malformed or extreme (truncated JSON, a 50 MB
//! manifest, numbers that overflow, huge or malformed `WWW-Authenticate` and `Link`
//! headers, 10,000 referrers, a token endpoint that hangs or answers HTML, redirects that
//! bounce between hosts), served by the fault proxy in front of a real Distribution
//! registry. Each must end in a typed failure of that image (or a bounded warning), never a
//! panic, a hang past its deadline, or a lost report; every test counts the upstream
//! manifest GETs it caused.
//!
//! Property tests then feed every parser that reads a registry's bytes (challenges, `Link`,
//! rate-limit headers, token responses, manifests and indexes, referrers indexes, tag lists,
//! Docker configs) arbitrary and hostile input: no panic, bounded results. Failures persist
//! to `tests/proptest-regressions/hostile_registry.txt`; `PROPTEST_RNG_SEED` (set by
//! `scripts/test`) fixes the draw.

use std::time::{Duration, Instant};

use image_sync::registry::auth::{self, MAX_TOKEN_LIFETIME, TokenResponse};
use image_sync::registry::client::{
    MAX_REFERRERS, next_link, parse_index, parse_manifest, parse_tag_page,
};
use image_sync::registry::credentials::Keyring;
use image_sync::registry::{docker_hub, quota};
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::hostile_input::persisted;
use crate::support::fault::{Fault, FaultProxy, Rule, TokenAuth};
use crate::support::image;
use crate::support::registry::Registry;
use crate::support::runner::{ImageSync, Outcome};
use crate::support::{Pair, pair};

/// Longer than any of these runs takes; a run past it is a hang.
const RUN_LIMIT: Duration = Duration::from_secs(90);

fn yaml(cache: &str, images: &[String], settings: &str) -> String {
    let mut yaml = format!("cache_registry: \"{cache}\"\nimages:\n");
    for source in images {
        yaml.push_str(&format!("  - {{source: \"{source}\", tag: \"1\"}}\n"));
    }
    yaml.push_str("settings:\n  pull_timeout_secs: 60\n");
    yaml.push_str(settings);
    yaml
}

fn error_of(run: &Outcome, index: usize) -> String {
    run.result(index)["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// image-sync's own requests to a proxy with this method and path.
fn ours(proxy: &FaultProxy, method: &str, path: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|seen| {
            seen.user_agent.starts_with("image-sync/")
                && seen.method == method
                && seen.path.contains(path)
        })
        .count()
}

/// A manifest GET that answers with `body` (the HEAD before it carries no digest, so the
/// check must GET): that image fails as a malformed answer after one GET, no tool runs, and
/// a good image beside it is copied.
fn a_manifest_body_fails_only_its_image(body: Vec<u8>, needle: &str) {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["app/hostile", "app/fine"]);
    let proxy = FaultProxy::start(up.clone())
        .rule(Rule::new("HEAD", "/manifests/").respond(Fault::StripDigest))
        .rule(
            Rule::new("GET", "/manifests/").respond(
                Fault::status(200)
                    .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                    .body(body),
            ),
        );
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[
                format!("{}/app/hostile", proxy.host()),
                format!("{up}/app/fine"),
            ],
            "",
        ))
        .run_within(RUN_LIMIT);
    run.expect_code(1);
    assert_eq!(run.actions(), ["failed", "pulled"]);
    let error = error_of(&run, 0);
    assert!(
        error.starts_with("malformed answer: GET http://"),
        "{error}"
    );
    assert!(error.contains(needle), "{error}");
    assert_eq!(run.result(0)["attempts"], 1, "final: {error}");
    assert_eq!(run.result(0)["tool"], "image-sync");
    assert_eq!(
        proxy.count("GET", "/manifests/"),
        1,
        "one GET found it: {:?}",
        proxy.requests()
    );
    p.upstream
        .expect_manifest_gets(1, "the good image's copy only");
}

#[test]
fn a_truncated_manifest_fails_that_image_as_malformed_for_one_get() {
    a_manifest_body_fails_only_its_image(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{"#
            .to_vec(),
        "the manifest is not JSON",
    );
}

#[test]
fn a_50_mb_manifest_is_refused_unread_for_one_get() {
    let mut body = br#"{"schemaVersion":2,"layers":[""#.to_vec();
    body.resize(50 * 1024 * 1024, b'a');
    a_manifest_body_fails_only_its_image(body, "larger than 4 MiB");
}

/// Rate-limit headers whose numbers overflow `u64` (or come close) are read within bounds:
/// the copy goes on, the report carries capped figures, nothing panics.
#[test]
fn quota_headers_with_overflowing_numbers_are_capped_and_the_run_reports() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["app/numbers"]);
    let digest = image::digest_of(&p.tools, &format!("{up}/app/numbers:1")).expect("digest");
    let proxy = FaultProxy::start(up.clone()).rule(
        Rule::new("HEAD", "/manifests/").respond(
            Fault::status(200)
                .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                .header("Docker-Content-Digest", &digest)
                .header(
                    "ratelimit-limit",
                    "18446744073709551615;w=99999999999999999999999",
                )
                .header(
                    "ratelimit-remaining",
                    "18446744073709551615;w=18446744073709551615",
                ),
        ),
    );
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[format!("{}/app/numbers", proxy.host())],
            "",
        ))
        .run_within(RUN_LIMIT);
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"], "{}", error_of(&run, 0));
    let quota = &run.report()["quota"][proxy.host()];
    assert_eq!(quota["limit"], u64::from(u32::MAX), "{}", run.stdout);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_eq!(p.upstream.counts().manifest_gets, 1, "one copy");
}

/// 401s whose `WWW-Authenticate` is 100 KB of garbage, or a challenge cut in the middle of
/// its realm: no usable challenge, so the check goes to crane, which fails on the same 401:
/// a typed failure for each image, no pull.
#[test]
fn huge_and_malformed_challenges_end_in_typed_failures() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["app/huge", "app/cut"]);
    let huge = FaultProxy::start(up.clone()).rule(Rule::new("*", "/v2/").respond(
        Fault::status(401).header(
            "WWW-Authenticate",
            &format!("Negotiate {}", "x".repeat(100_000)),
        ),
    ));
    let cut = FaultProxy::start(up.clone()).rule(Rule::new("*", "/v2/").respond(
        Fault::status(401).header(
            "WWW-Authenticate",
            &format!("Bearer realm=\"http://127.0.0.1:1/{}", "a".repeat(20_000)),
        ),
    ));
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[
                format!("{}/app/huge", huge.host()),
                format!("{}/app/cut", cut.host()),
            ],
            "  retries: 0\n",
        ))
        .run_within(RUN_LIMIT);
    run.expect_code(1);
    assert_eq!(run.actions(), ["failed", "failed"]);
    for index in 0..2 {
        let error = error_of(&run, index);
        assert!(
            !error.is_empty() && !error.starts_with("timed out"),
            "{error}"
        );
        assert!(error.len() < 2_000, "bounded: {} chars", error.len());
    }
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_eq!(p.upstream.counts().manifest_gets, 0);
}

/// Tag lists whose `Link: rel="next"` points at the same page, at another host, or is 60 KB
/// of garbage, and a 9 MiB page: the loop, the other host and the page's size end their
/// entry with a failure that says why (after one page, not a thousand), the garbage link
/// ends the listing with the tags read.
#[test]
fn hostile_link_headers_end_the_listing_after_one_page() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    for repo in ["links/same", "links/away", "links/junk", "links/big"] {
        image::push_singles(&p.tools, &up, &[repo]);
    }
    let page = |link: &str| {
        Fault::status(200)
            .header("Content-Type", "application/json")
            .header("Link", link)
            .body(r#"{"name":"x","tags":["1"]}"#)
    };
    let same = FaultProxy::start(up.clone())
        .rule(Rule::new("GET", "/tags/list").respond(page("<>; rel=\"next\"")));
    let away = FaultProxy::start(up.clone()).rule(Rule::new("GET", "/tags/list").respond(page(
        "<http://127.0.0.2:9/v2/links/away/tags/list?last=1>; rel=\"next\"",
    )));
    let junk_link = format!("{}; rel=\"next\"", "x".repeat(60_000));
    let junk = FaultProxy::start(up.clone())
        .rule(Rule::new("GET", "/tags/list").respond(page(&junk_link)));
    let big_page = format!(
        r#"{{"name":"x","tags":["{}"]}}"#,
        "a".repeat(9 * 1024 * 1024)
    );
    let big = FaultProxy::start(up.clone()).rule(
        Rule::new("GET", "/tags/list").respond(
            Fault::status(200)
                .header("Content-Type", "application/json")
                .body(big_page),
        ),
    );
    let entries: String = [&same, &away, &junk, &big]
        .iter()
        .zip(["same", "away", "junk", "big"])
        .map(|(proxy, name)| {
            format!(
                "  - {{source: \"{}/links/{name}\", tags: {{regex: '.*'}}}}\n",
                proxy.host()
            )
        })
        .collect();
    let yaml = format!(
        "cache_registry: \"{}\"\nimages:\n{entries}settings:\n  check_timeout_secs: 10\n  retries: 0\n",
        p.cache.host()
    );
    let run = ImageSync::new()
        .config(&yaml)
        .arg("--dry-run")
        .run_within(RUN_LIMIT);
    run.expect_code(1);
    let errors: Vec<String> = run.report()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| result["error"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        errors
            .iter()
            .any(|error| error.contains("was read already")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|error| error.contains("is on another host")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|error| error.contains("a tag-list page larger than 8 MiB")),
        "{errors:?}"
    );
    assert!(
        run.report()["results"]
            .as_array()
            .expect("results")
            .iter()
            .any(|result| result["image"]
                .as_str()
                .is_some_and(|image| image.contains("links/junk"))
                && result["action"] == "would_pull"),
        "the junk link ends the listing with its tags: {}",
        run.stdout
    );
    assert_eq!(ours(&same, "GET", "/tags/list"), 1, "one page, not a loop");
    assert_eq!(ours(&away, "GET", "/tags/list"), 1);
    assert_eq!(p.upstream.counts().manifest_gets, 0);
}

/// Pushes `repo` (one image) upstream and syncs it with `settings` into `cache` (which
/// serves the referrers API) through a proxy whose referrers API lists an SPDX artifact
/// for each of `digests` (none of which the upstream has). The image itself is copied;
/// returns the proxy and the run.
fn sync_with_listed_referrers(
    p: &Pair,
    cache: &Registry,
    repo: &str,
    digests: impl IntoIterator<Item = String>,
    settings: &str,
) -> (FaultProxy, Outcome) {
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &[repo]);
    let descriptors: Vec<String> = digests
        .into_iter()
        .map(|digest| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":1,"artifactType":"application/spdx+json"}}"#
            )
        })
        .collect();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        descriptors.join(",")
    );
    let proxy = FaultProxy::start(up).rule(
        Rule::new("GET", "/referrers/").respond(
            Fault::status(200)
                .header("Content-Type", "application/vnd.oci.image.index.v1+json")
                .body(index),
        ),
    );
    let run = ImageSync::new()
        .config(&yaml(
            &cache.host(),
            &[format!("{}/{repo}", proxy.host())],
            settings,
        ))
        .run_within(RUN_LIMIT);
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"], "{}", error_of(&run, 0));
    (proxy, run)
}

/// A referrers index that lists 10,000 artifacts is refused as a whole: the image is
/// copied, its referrers end in a bounded warning, and no artifact is looked at (the cache
/// serves the referrers API, as Zot does, so nothing else stops the 10,000 copies).
#[test]
fn ten_thousand_referrers_end_in_a_bounded_warning() {
    let Some(p) = pair() else { return };
    let Some(cache) = Registry::start_with_referrers_api() else {
        return;
    };
    let (_proxy, run) = sync_with_listed_referrers(
        &p,
        &cache,
        "app/flood",
        vec![format!("sha256:{}", "c".repeat(64)); 10_000],
        "  referrers: true\n",
    );
    assert_eq!(run.result(0)["referrers"]["failed"], 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("referrers not synced"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("more than the {MAX_REFERRERS}")),
        "{}",
        run.stderr
    );
    p.upstream.expect_manifest_gets(1, "the image's copy only");
}

/// Issue 18 item 4: a referrers listing longer than `settings.referrers_per_image` (here
/// 150 artifacts, a cap of 5) is cut to the cap with a warning: 5 artifacts are looked at
/// (each a GET of a digest the upstream does not have), not 150.
#[test]
fn referrers_past_the_per_image_cap_are_left_out_with_a_warning() {
    let Some(p) = pair() else { return };
    let Some(cache) = Registry::start_with_referrers_api() else {
        return;
    };
    let (proxy, run) = sync_with_listed_referrers(
        &p,
        &cache,
        "app/many",
        (0..150).map(|i| format!("sha256:{i:064x}")),
        "  referrers: true\n  referrers_per_image: 5\n",
    );
    assert_eq!(run.result(0)["referrers"]["failed"], 5, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("more referrers than settings.referrers_per_image"),
        "{}",
        run.stderr
    );
    assert_eq!(
        proxy.count("GET", "/manifests/sha256:0000000000"),
        5,
        "five artifacts looked at, not 150"
    );
    p.upstream
        .expect_manifest_gets(1 + 5, "the image and the five");
}

/// A token endpoint that never answers: the check fails within its deadline, naming the
/// token request; nothing else waits for it.
#[test]
fn a_token_endpoint_that_hangs_fails_the_check_within_its_deadline() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["app/tokenhang"]);
    let gate = FaultProxy::start_with_tokens(
        up.clone(),
        TokenAuth {
            expires_in: Some(300),
            valid_for: Duration::from_secs(300),
        },
    )
    .rule(Rule::new("GET", "/token").respond(Fault::Stall));
    let started = Instant::now();
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[format!("{}/app/tokenhang", gate.host())],
            "  check_timeout_secs: 3\n  retries: 0\n",
        ))
        .arg("--dry-run")
        .run_within(RUN_LIMIT);
    run.expect_code(1);
    let error = error_of(&run, 0);
    assert!(error.starts_with("timed out after 3 s: "), "{error}");
    assert!(error.contains("token"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no hang past the deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(ours(&gate, "GET", "/token"), 1);
    assert_eq!(p.upstream.counts().manifest_gets, 0);
}

/// A token endpoint that answers an HTML page: image-sync hands the check to crane, which
/// fails on the same page: a typed failure, no pull.
#[test]
fn a_token_endpoint_that_answers_html_is_a_typed_failure() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["app/tokenhtml"]);
    let gate = FaultProxy::start_with_tokens(
        up.clone(),
        TokenAuth {
            expires_in: Some(300),
            valid_for: Duration::from_secs(300),
        },
    )
    .rule(
        Rule::new("GET", "/token").respond(
            Fault::status(200)
                .header("Content-Type", "text/html")
                .body("<html><body>Sign in to continue</body></html>"),
        ),
    );
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[format!("{}/app/tokenhtml", gate.host())],
            "  retries: 0\n",
        ))
        .run_within(RUN_LIMIT);
    run.expect_code(1);
    assert_eq!(run.actions(), ["failed"]);
    assert!(!error_of(&run, 0).is_empty());
    assert_eq!(ours(&gate, "GET", "/token"), 1, "image-sync asked once");
    assert_eq!(p.upstream.counts().manifest_gets, 0);
}

/// Two hosts that redirect every manifest request to each other: image-sync follows at most
/// five redirects, then hands the check to crane, which gives up too: a typed failure.
#[test]
fn redirects_bouncing_between_hosts_are_bounded() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["app/bounce"]);
    let first = FaultProxy::start(up.clone());
    let second = FaultProxy::start(up.clone());
    let to = |proxy: &FaultProxy| {
        Fault::status(307).header(
            "Location",
            &format!("http://{}/v2/app/bounce/manifests/1", proxy.host()),
        )
    };
    first.add_rule(Rule::new("*", "/manifests/").respond(to(&second)));
    second.add_rule(Rule::new("*", "/manifests/").respond(to(&first)));
    let run = ImageSync::new()
        .config(&yaml(
            &p.cache.host(),
            &[format!("{}/app/bounce", first.host())],
            "  retries: 0\n",
        ))
        .run_within(RUN_LIMIT);
    run.expect_code(1);
    assert_eq!(run.actions(), ["failed"]);
    let followed = ours(&first, "HEAD", "/manifests/") + ours(&second, "HEAD", "/manifests/");
    assert!((1..=6).contains(&followed), "bounded: {followed}");
    assert_eq!(p.upstream.counts().manifest_gets, 0);
}

// Property tests of every parser that reads a registry's bytes.

/// Pieces registries' answers are built from, with hostile ones mixed in.
const PIECES: &[&str] = &[
    "Bearer ",
    "Basic ",
    "realm=",
    "service=",
    "scope=",
    "\"",
    ",",
    ";",
    "=",
    " ",
    "<",
    ">",
    "rel=\"next\"",
    "rel=next",
    "https://",
    "http://",
    "127.0.0.1",
    "[::ffff:127.0.0.1]",
    "169.254.169.254",
    "localhost",
    "/v2/a/tags/list?n=1",
    "w=",
    "100",
    "-1",
    "1e400",
    "18446744073709551616",
    "{",
    "}",
    "[",
    "]",
    ":",
    "\"token\"",
    "\"expires_in\"",
    "\"manifests\"",
    "\"digest\"",
    "\"tags\"",
    "sha256:",
    "null",
    "\\",
    "\u{0}",
    "é",
];

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(PIECES), 0..40)
            .prop_map(|pieces| pieces.concat()),
        ".{0,300}",
        (prop::sample::select(PIECES), 0usize..20_000)
            .prop_map(|(piece, times)| piece.repeat(times)),
    ]
}

fn headers(name: &'static str, values: &[String]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for value in values {
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            map.append(HeaderName::from_static(name), value);
        }
    }
    map
}

/// Generous for one parse of ~100 KB in a debug build on a busy machine.
const PARSE_BUDGET: Duration = Duration::from_secs(2);

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    assert!(
        started.elapsed() < PARSE_BUDGET,
        "{what} took {:?}",
        started.elapsed()
    );
    value
}

proptest! {
    #![proptest_config(persisted(256))]

    #[test]
    fn challenges_and_realms_never_panic_and_only_safe_realms_pass(values in prop::collection::vec(hostile_text(), 0..4)) {
        let map = headers("www-authenticate", &values);
        if let Some(auth::Challenge::Bearer { realm, .. }) = timed("challenge", || auth::challenge(&map)) {
            prop_assert!(realm.starts_with("http"));
            if auth::realm_allowed(&realm, "ghcr.io", false).is_ok() {
                let url = reqwest::Url::parse(&realm).expect("an allowed realm is a URL");
                prop_assert_eq!(url.scheme(), "https");
                let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_owned();
                if let Ok(address) = host.parse::<std::net::IpAddr>() {
                    prop_assert!(!auth::is_internal_address(address), "{}", realm);
                }
            }
        }
        for value in &values {
            let _ = auth::parse_challenge(value);
        }
    }

    #[test]
    fn link_headers_never_panic(values in prop::collection::vec(hostile_text(), 0..4)) {
        let base = reqwest::Url::parse("http://127.0.0.1:5000/v2/a/tags/list?n=10").expect("url");
        let map = headers("link", &values);
        if let Some(next) = timed("next_link", || next_link(&map, &base)) {
            prop_assert!(!next.as_str().is_empty());
        }
    }

    #[test]
    fn rate_limit_headers_are_read_within_bounds(limit in hostile_text(), remaining in hostile_text()) {
        let mut map = headers("ratelimit-limit", &[limit]);
        map.extend(headers("ratelimit-remaining", &[remaining]));
        if let Some((read, _)) = quota::rate_limit(&map) {
            prop_assert!(read.limit <= u64::from(u32::MAX) && read.remaining <= u64::from(u32::MAX));
            prop_assert!(read.window_secs.is_none_or(|window| window <= u64::from(u32::MAX)));
        }
    }

    #[test]
    fn token_responses_never_panic_and_live_at_most_an_hour(body in hostile_text(), number in hostile_text()) {
        for bytes in [body.clone(), format!(r#"{{"token":"t","expires_in":{number}}}"#)] {
            if let Some((token, lifetime)) = TokenResponse::parse(bytes.as_bytes()).and_then(TokenResponse::into_token) {
                prop_assert!(!token.is_empty());
                prop_assert!(lifetime.is_none_or(|lifetime| lifetime <= MAX_TOKEN_LIFETIME));
            }
        }
    }

    #[test]
    fn manifests_referrers_and_tag_lists_never_panic(body in hostile_text()) {
        let bytes = body.as_bytes();
        let _ = timed("parse_manifest", || parse_manifest(bytes));
        if let Ok(referrers) = timed("parse_index", || parse_index(bytes)) {
            prop_assert!(referrers.len() <= MAX_REFERRERS);
        }
        let _ = timed("parse_tag_page", || parse_tag_page(bytes));
    }

    #[test]
    fn docker_configs_never_panic(body in hostile_text(), key in hostile_text()) {
        for bytes in [body.clone(), format!(r#"{{"auths":{{"{key}":{{"auth":"{body}"}}}},"credHelpers":{{"{key}":"x"}}}}"#)] {
            let _ = timed("Keyring::parse", || Keyring::parse(bytes.as_bytes()));
            if let Some(warning) = docker_hub::warning(bytes.as_bytes()) {
                prop_assert!(warning.len() < 10_000, "bounded warning");
            }
        }
    }
}
