//! Tag rules (`images[].tags`) against a real registry holding ~60 tags, listed over
//! several pages (`settings.tag_page_size` is the registry's `n`).

use std::process::Command;
use std::time::Duration;

use crate::support::fault::{Fault, FaultProxy, Rule, TokenAuth};
use crate::support::image::{self, Format, Kind};
use crate::support::pair;
use crate::support::runner::ImageSync;

/// The upstream's tags: 1.25.0 .. 1.30.7, a `v` one, pre-releases, alpine variants and
/// names that are no version at all.
fn upstream_tags() -> Vec<String> {
    let mut tags = Vec::new();
    for minor in 25..=30 {
        for patch in 0..=7 {
            tags.push(format!("1.{minor}.{patch}"));
        }
        tags.push(format!("1.{minor}-alpine"));
    }
    tags.extend(
        [
            "v1.28.9",
            "1.28.10-rc.1",
            "1.29.0-rc.1",
            "latest",
            "edge",
            "stable",
            "1.9-alpine",
            "1.10-alpine",
        ]
        .map(str::to_owned),
    );
    tags
}

/// Serves the upstream's tag list in pages of `page` through the proxy's rules, each with a
/// `Link: <...>; rel="next"` to the following one, as Distribution 3 and Docker Hub do
/// (Distribution 2.8, the test registry, ignores `n`).
fn paginate(proxy: &FaultProxy, repository: &str, tags: &[String], page: usize) {
    let mut sorted = tags.to_vec();
    sorted.sort();
    for (i, chunk) in sorted.chunks(page).enumerate() {
        let path = match i {
            0 => format!("/v2/{repository}/tags/list?n={page}"),
            _ => format!(
                "/v2/{repository}/tags/list?last={}&n={page}",
                sorted[i * page - 1]
            ),
        };
        let body = serde_json::json!({"name": repository, "tags": chunk}).to_string();
        let mut fault = Fault::status(200)
            .header("Content-Type", "application/json")
            .body(body);
        if (i + 1) * page < sorted.len() {
            fault = fault.header(
                "Link",
                &format!(
                    "</v2/{repository}/tags/list?last={}&n={page}>; rel=\"next\"",
                    chunk[chunk.len() - 1]
                ),
            );
        }
        proxy.add_rule(Rule::new("GET", &path).respond(fault));
    }
}

#[test]
fn tag_rules_select_exactly_the_expected_tags_over_several_pages() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "rules",
        &format!("{up}/rules/app:seed"),
        Format::Oci,
    );
    let mut tags = upstream_tags();
    for tag in &tags {
        let output = Command::new(&p.tools.crane)
            .args(["tag", &format!("{up}/rules/app:seed"), tag])
            .output()
            .expect("crane tag");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    tags.push("seed".to_owned());
    assert!(tags.len() >= 60, "{}", tags.len());
    // The upstream as Docker Hub shows it: bearer tokens from a token endpoint after a 401
    // challenge, and tag lists in pages.
    let proxy = FaultProxy::start_with_tokens(
        up.clone(),
        TokenAuth {
            expires_in: Some(300),
            valid_for: Duration::from_secs(300),
        },
    );
    let page = 7;
    paginate(&proxy, "rules/app", &tags, page);
    let pages = tags.len().div_ceil(page);
    let source = format!("{}/rules/app", proxy.host());
    let yaml = format!(
        r#"cache_registry: "{cache}"
images:
  - source: "{source}"
    tags:
      semver: ">=1.27, <1.29"
      latest: 4
  - source: "{source}"
    tag: "stable"
  - source: "{source}"
    tags:
      regex: '(\d+)\.(\d+)-alpine'
      exclude: '1\.2[5-7]-alpine'
      include: [latest, stable]
settings:
  check_timeout_secs: 20
  pull_timeout_secs: 60
  tag_page_size: {page}
"#,
        cache = p.cache.host()
    );

    let check = ImageSync::new().config(&yaml).arg("--check").run();
    check.expect_code(0);
    assert!(
        check.stderr.contains("semver \">=1.27, <1.29\", latest 4")
            && check.stderr.contains("regex \"(\\d+)\\.(\\d+)-alpine\""),
        "{}",
        check.stderr
    );
    assert!(proxy.requests().is_empty(), "--check asks no registry");

    let dry = ImageSync::new().config(&yaml).arg("--dry-run").run();
    dry.expect_code(0);
    assert!(dry.stderr.contains("tags selected"), "{}", dry.stderr);
    let selected: Vec<(String, String)> = dry.report()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["tag"].as_str().unwrap_or_default().to_owned(),
                r["selected_by"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    let rules1 = "rules: semver \">=1.27, <1.29\", latest 4";
    let rules3 = "rules: regex \"(\\d+)\\.(\\d+)-alpine\", exclude \"1\\.2[5-7]-alpine\", include [latest, stable]";
    let expected: Vec<(String, String)> = [
        // The four highest in range: v1.28.9 counts as 1.28.9; 1.28.10-rc.1 is a pre-release.
        ("v1.28.9", rules1),
        ("1.28.7", rules1),
        ("1.28.6", rules1),
        ("1.28.5", rules1),
        ("stable", "-"),
        // By the captures as numbers: 1.30 > 1.29 > 1.28 > 1.10 > 1.9; `stable` is the
        // explicit entry's already.
        ("1.30-alpine", rules3),
        ("1.29-alpine", rules3),
        ("1.28-alpine", rules3),
        ("1.10-alpine", rules3),
        ("1.9-alpine", rules3),
        ("latest", "include"),
    ]
    .iter()
    .map(|(tag, by)| ((*tag).to_owned(), (*by).to_owned()))
    .collect();
    assert_eq!(selected, expected);
    assert!(dry.actions().iter().all(|action| action == "would_pull"));

    // The two entries share one source, so one listing: it walked every page and met the
    // 401 challenge once; the second entry selected from the same list at no cost. The
    // report counts exactly what the proxy saw.
    let lists = dry.report()["tag_lists"].as_array().expect("tag_lists");
    let counted: Vec<u64> = lists
        .iter()
        .map(|l| l["requests"].as_u64().expect("n"))
        .collect();
    assert_eq!(counted, [pages as u64 + 1, 0]);
    assert_eq!(proxy.count("GET", "/tags/list"), pages + 1);
    assert_eq!(proxy.count("GET", "/token"), 1);
    for list in lists {
        assert_eq!(list["listed"], tags.len());
        assert_eq!(list["error"], serde_json::Value::Null);
    }
    // Then one HEAD per selected tag, and no pull.
    assert_eq!(proxy.count("HEAD", "/manifests/"), expected.len());
    assert_eq!(proxy.count("GET", "/manifests/"), 0);

    // A real run copies exactly those tags.
    let run = ImageSync::new().config(&yaml).run();
    run.expect_code(0);
    assert_eq!(run.actions(), vec!["pulled"; expected.len()]);
    for (tag, _) in &expected {
        assert!(
            image::digest_of(&p.tools, &format!("{}/rules/app:{tag}", p.cache.host())).is_some(),
            "{tag}"
        );
    }
    assert_eq!(
        image::digest_of(&p.tools, &format!("{}/rules/app:1.27.0", p.cache.host())),
        None
    );
}

#[test]
fn a_listing_that_fails_fails_its_entry_only() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["rules/there"]);
    let yaml = format!(
        "cache_registry: \"{cache}\"\nimages:\n  - source: \"{up}/rules/missing\"\n    tags: {{semver: \"^1\"}}\n  - source: \"{up}/rules/there\"\n    tag: \"1\"\n",
        cache = p.cache.host()
    );
    let outcome = ImageSync::new().config(&yaml).run();
    outcome.expect_code(1);
    assert_eq!(outcome.actions(), ["failed", "pulled"]);
    let error = outcome.result(0)["error"].as_str().expect("error");
    assert!(
        error.starts_with("listing tags: name unknown")
            || error.starts_with("listing tags: manifest unknown"),
        "{error}"
    );
    assert_eq!(outcome.report()["tag_lists"][0]["requests"], 1);
    // The failed listing cost no pull; the other entry's copy one.
    assert_eq!(p.upstream.counts().manifest_gets, 1);
}

#[test]
fn tag_rule_mistakes_are_config_errors_naming_image_and_field() {
    let yaml = "cache_registry: \"cache:5000\"\nimages:\n  - {source: a, tag: \"1\", tags: {semver: \"^1\"}}\n  - {source: b, digest: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\", tags: {include: [x]}}\n  - {source: c, tags: {semver: \">=1.x.y.z\", latest: 0}}\n  - {source: d}\n  - {source: e, tags: {regex: '.*', unknown: 1}}\n";
    let outcome = ImageSync::new().config(yaml).arg("--check").run();
    outcome.expect_code(2);
    // serde stops at the unknown key first, naming the image and the line.
    assert!(
        outcome.stderr.contains("images[4] (source `e`)")
            && outcome.stderr.contains("unknown field `unknown`"),
        "{}",
        outcome.stderr
    );
    let yaml = yaml.replace(", unknown: 1", "");
    let outcome = ImageSync::new().config(&yaml).arg("--check").run();
    outcome.expect_code(2);
    for text in [
        "images[0] (source `a`) field `tags`: give either `tag` or `tags`, not both",
        "images[1] (source `b`) field `digest`: pins one tag; it cannot go with `tags`",
        "images[2] (source `c`) field `tags.semver`: `>=1.x.y.z` is not a version range",
        "images[2] (source `c`) field `tags.latest`: is 0; it must be between 1 and 1000",
        "images[3] (source `d`) field `tag`: missing field `tag` (or `tags`, for tag rules)",
    ] {
        assert!(
            outcome.stderr.contains(text),
            "missing {text:?}:\n{}",
            outcome.stderr
        );
    }
}

#[test]
fn sigterm_during_a_hung_listing_stops_the_run_at_once() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_singles(&p.tools, &up, &["rules/hung", "rules/later"]);
    let proxy =
        FaultProxy::start(up.clone()).rule(Rule::new("GET", "/tags/list").respond(Fault::Stall));
    let yaml = format!(
        "cache_registry: \"{cache}\"\nimages:\n  - source: \"{hung}/rules/hung\"\n    tags: {{regex: '.*'}}\n  - source: \"{up}/rules/later\"\n    tag: \"1\"\nsettings:\n  check_timeout_secs: 30\n",
        cache = p.cache.host(),
        hung = proxy.host(),
    );
    let run = ImageSync::new().config(&yaml);
    let child = run.spawn();
    assert!(
        proxy.wait_for("GET", "/tags/list", 1, Duration::from_secs(10)),
        "the listing started"
    );
    let stopped = std::time::Instant::now();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let result = crate::support::runner::outcome(child.wait_with_output().expect("wait"));
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
    result.expect_code(143);
    assert_eq!(result.actions(), ["failed", "deferred"]);
    let error = result.result(0)["error"].as_str().expect("error");
    assert!(error.starts_with("listing tags: interrupted"), "{error}");
}

/// Issue 18 item 9: tag-rule listings count against the run deadline (its clock starts
/// with the run), run `check_concurrency` at a time, and none starts past the deadline:
/// that entry is deferred, like an image. Each listing here takes 2 s; `--deadline 3`
/// (a second of slack either side).
#[test]
fn tag_listings_run_under_the_deadline_and_check_concurrency() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    let repos = ["slow/a", "slow/b", "slow/c"];
    image::push_singles(&p.tools, &up, &repos);
    let slow = FaultProxy::start(up.clone())
        .rule(Rule::new("GET", "/tags/list").respond(Fault::delay_ms(2_000)));
    let yaml = |check_concurrency: usize| {
        let mut yaml = format!("cache_registry: \"{}\"\nimages:\n", p.cache.host());
        for repo in repos {
            yaml.push_str(&format!(
                "  - source: \"{}/{repo}\"\n    tags: {{regex: \"1\"}}\n",
                slow.host()
            ));
        }
        yaml.push_str(&format!(
            "settings:\n  check_concurrency: {check_concurrency}\n"
        ));
        yaml
    };
    // One at a time: the third listing would start at 4 s, past the deadline.
    let serial = ImageSync::new()
        .config(&yaml(1))
        .args(["--dry-run", "--deadline", "3"])
        .run();
    serial.expect_code(0);
    assert_eq!(slow.count("GET", "/tags/list"), 2, "{}", serial.stdout);
    assert_eq!(serial.actions(), ["deferred", "deferred", "deferred"]);
    let third = serial.result(2)["error"].as_str().expect("error");
    assert!(
        third.starts_with("deferred: run deadline reached before the tags were listed"),
        "{third}"
    );
    let first = serial.result(0)["error"].as_str().expect("error");
    assert!(
        first.starts_with("deferred: run deadline reached before this image started"),
        "the listed entries' images start past the deadline: {first}"
    );
    assert_eq!(p.upstream.counts().manifest_gets, 0);

    // Three at a time: all three listings start at once, within the deadline.
    let parallel = ImageSync::new()
        .config(&yaml(3))
        .args(["--dry-run", "--deadline", "3"])
        .run();
    parallel.expect_code(0);
    assert_eq!(
        slow.count("GET", "/tags/list"),
        2 + 3,
        "{}",
        parallel.stdout
    );
    let lists = parallel.report()["tag_lists"]
        .as_array()
        .expect("tag_lists");
    assert!(
        lists
            .iter()
            .all(|list| list["error"].is_null() && list["listed"] == 1),
        "{}",
        parallel.stdout
    );
    assert_eq!(p.upstream.counts().manifest_gets, 0);
}

/// Issue 18 item 9: listings respect the breakers: a registry that refused the first
/// listing's connection gets no second listing request.
#[test]
fn a_refusing_registry_gets_one_listing_request_per_run() {
    let Some(p) = pair() else { return };
    let dead = format!("127.0.0.1:{}", crate::support::registry::free_port());
    let yaml = format!(
        "cache_registry: \"{}\"\nimages:\n  - source: \"{dead}/gone/a\"\n    tags: {{regex: \".*\"}}\n  - source: \"{dead}/gone/b\"\n    tags: {{regex: \".*\"}}\nsettings:\n  check_concurrency: 1\n  check_timeout_secs: 5\n",
        p.cache.host()
    );
    let outcome = ImageSync::new().config(&yaml).run();
    outcome.expect_code(1);
    assert_eq!(outcome.actions(), ["failed", "failed"]);
    let first = outcome.result(0)["error"].as_str().expect("error");
    assert!(first.starts_with("listing tags: unreachable"), "{first}");
    let second = outcome.result(1)["error"].as_str().expect("error");
    assert!(
        second.starts_with(&format!("listing tags: skipped: {dead} unreachable")),
        "{second}"
    );
    assert_eq!(outcome.report()["tag_lists"][1]["requests"], 0);
    assert_eq!(p.upstream.counts().manifest_gets, 0);
}
