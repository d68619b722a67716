//! Digest pins (`images[].digest`, `watch_tag`) and immutable tags
//! (`settings.immutable_tags`), counted against the upstream registry's access log.

use crate::support::image::{self, Format, Kind};
use crate::support::pair;
use crate::support::registry::{Counts, Registry};
use crate::support::runner::{ImageSync, Outcome};

const SETTINGS: &str = "settings:\n  check_timeout_secs: 20\n  pull_timeout_secs: 60\n";

/// Runs image-sync and returns its outcome with the upstream requests it caused:
/// (counts by kind, every `/v2/` request line).
fn run_counting(
    upstream: &Registry,
    run: ImageSync,
) -> (Outcome, Counts, Vec<(String, String, u16)>) {
    let (before, seen) = (upstream.counts(), upstream.requests().len());
    let outcome = run.run();
    let requests = upstream.requests()[seen..].to_vec();
    (outcome, upstream.counts() - before, requests)
}

fn pinned(cache: &str, source: &str, digest: &str, extra: &str) -> String {
    format!(
        "cache_registry: \"{cache}\"\nimages:\n  - source: \"{source}\"\n    tag: \"1\"\n    digest: \"{digest}\"\n{extra}{SETTINGS}"
    )
}

#[test]
fn a_cached_pin_costs_no_upstream_request_and_a_moved_tag_is_reported_with_the_pin_kept() {
    let Some(p) = pair() else { return };
    let (up, cache) = (p.upstream.host(), p.cache.host());
    let source = format!("{up}/pin/app");
    image::push_new(
        &p.tools,
        Kind::MultiArch,
        "pin-a",
        &format!("{source}:1"),
        Format::Oci,
    );
    let a = image::digest_of(&p.tools, &format!("{source}:1")).expect("digest a");
    let cached = format!("{cache}/pin/app:1");
    let unwatched = pinned(&cache, &source, &a, "    watch_tag: false\n");

    // Not cached yet: source@pin is copied to the tag, without a HEAD of the tag.
    let (first, upstream, requests) =
        run_counting(&p.upstream, ImageSync::new().config(&unwatched));
    first.expect_code(0);
    assert_eq!(first.actions(), ["pulled"]);
    assert_eq!(first.result(0)["remote_digest"], a.as_str());
    assert_eq!(first.result(0)["skipped_check"], "pinned");
    assert_eq!(
        image::digest_of(&p.tools, &cached).as_deref(),
        Some(a.as_str())
    );
    assert_eq!(upstream.manifest_heads, 0, "{requests:?}");
    assert!(
        requests
            .iter()
            .filter(|(_, path, _)| path.contains("/manifests/"))
            .all(|(_, path, _)| !path.ends_with("/manifests/1")),
        "the tag was never asked for: {requests:?}"
    );

    // Cached and unwatched: no upstream request at all.
    let (second, _, requests) = run_counting(&p.upstream, ImageSync::new().config(&unwatched));
    second.expect_code(0);
    assert_eq!(second.actions(), ["already_cached"]);
    assert_eq!(second.result(0)["cached_digest"], a.as_str());
    assert!(requests.is_empty(), "{requests:?}");
    assert!(second.result(0).get("tag_moved").is_none());

    // Watched (the default): one free HEAD of the tag, which still points at the pin.
    let watched = pinned(&cache, &source, &a, "");
    let (third, upstream, _) = run_counting(&p.upstream, ImageSync::new().config(&watched));
    third.expect_code(0);
    assert_eq!(third.actions(), ["already_cached"]);
    assert_eq!(third.result(0)["tag_moved"], false);
    assert_eq!(third.result(0)["upstream_digest"], a.as_str());
    assert_eq!(
        (
            upstream.manifest_heads,
            upstream.manifest_gets,
            upstream.blob_reads
        ),
        (1, 0, 0)
    );

    // The upstream re-pushes the tag: reported, warned about, the pin kept, nothing failed.
    image::push_new(
        &p.tools,
        Kind::MultiArch,
        "pin-b",
        &format!("{source}:1"),
        Format::Oci,
    );
    let b = image::digest_of(&p.tools, &format!("{source}:1")).expect("digest b");
    assert_ne!(a, b);
    let metrics = tempfile::tempdir().expect("dir");
    let metrics_file = metrics.path().join("metrics.prom");
    let (moved, upstream, _) = run_counting(
        &p.upstream,
        ImageSync::new()
            .config(&watched)
            .arg("--metrics-file")
            .arg(&metrics_file),
    );
    moved.expect_code(0);
    assert_eq!(moved.actions(), ["already_cached"]);
    let result = moved.result(0);
    assert_eq!(result["tag_moved"], true);
    assert_eq!(result["upstream_digest"], b.as_str());
    assert_eq!(result["remote_digest"], a.as_str());
    assert!(
        moved
            .stderr
            .contains("the upstream tag moved away from the pinned digest"),
        "{}",
        moved.stderr
    );
    assert_eq!(
        image::digest_of(&p.tools, &cached).as_deref(),
        Some(a.as_str())
    );
    assert_eq!(
        (
            upstream.manifest_heads,
            upstream.manifest_gets,
            upstream.blob_reads
        ),
        (1, 0, 0)
    );
    let text = std::fs::read_to_string(&metrics_file).expect("metrics");
    assert!(
        text.contains(&format!(
            "image_sync_tag_moved{{image=\"{source}\",tag=\"1\"}} 1"
        )),
        "{text}"
    );

    // Pinning the new digest copies it; pinning the old one again copies it back, by digest,
    // although the upstream tag points elsewhere.
    for (pin, seed) in [(&b, "b"), (&a, "a")] {
        let yaml = pinned(&cache, &source, pin, "    watch_tag: false\n");
        let dry = ImageSync::new().config(&yaml).arg("--dry-run").run();
        dry.expect_code(0);
        assert_eq!(dry.actions(), ["would_pull"], "{seed}");
        let (copied, upstream, requests) =
            run_counting(&p.upstream, ImageSync::new().config(&yaml));
        copied.expect_code(0);
        assert_eq!(copied.actions(), ["pulled"], "{seed}");
        assert_eq!(
            image::digest_of(&p.tools, &cached).as_deref(),
            Some(pin.as_str())
        );
        // The index by digest, then each of its two platform manifests: no HEAD of the tag.
        assert_eq!(
            (upstream.manifest_heads, upstream.manifest_gets),
            (0, 3),
            "{requests:?}"
        );
    }
}

#[test]
fn a_pin_the_upstream_does_not_have_fails_clearly() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "pin-missing",
        &format!("{up}/pin/gone:1"),
        Format::Oci,
    );
    let missing = format!("sha256:{}", "0".repeat(64));
    let yaml = pinned(&p.cache.host(), &format!("{up}/pin/gone"), &missing, "");
    let (outcome, upstream, requests) = run_counting(&p.upstream, ImageSync::new().config(&yaml));
    outcome.expect_code(1);
    assert_eq!(outcome.actions(), ["failed"]);
    let error = outcome.result(0)["error"].as_str().expect("error");
    assert!(
        error.starts_with("manifest unknown")
            && error.contains(&format!(
                "the pinned digest {missing} is not in {up}/pin/gone"
            )),
        "{error}"
    );
    // The watch HEAD of the tag, and the copy's one GET of the missing digest (a 404).
    assert_eq!(
        (
            upstream.manifest_heads,
            upstream.manifest_gets,
            upstream.blob_reads
        ),
        (1, 1, 0),
        "{requests:?}"
    );
    assert!(requests.iter().any(|(method, path, status)| method == "GET"
        && path.ends_with(&format!("/manifests/{missing}"))
        && *status == 404));
    assert_eq!(
        image::digest_of(&p.tools, &format!("{}/pin/gone:1", p.cache.host())),
        None
    );
}

#[test]
fn an_immutable_tag_the_cache_has_costs_no_upstream_request() {
    let Some(p) = pair() else { return };
    let (up, cache) = (p.upstream.host(), p.cache.host());
    let source = format!("{up}/imm/app");
    image::push_new(
        &p.tools,
        Kind::Single,
        "imm-1",
        &format!("{source}:v1.0.0"),
        Format::Oci,
    );
    image::push_new(
        &p.tools,
        Kind::Single,
        "imm-latest",
        &format!("{source}:latest"),
        Format::Oci,
    );
    let yaml = format!(
        "cache_registry: \"{cache}\"\nimages:\n  - {{source: \"{source}\", tag: \"v1.0.0\"}}\n  - {{source: \"{source}\", tag: \"latest\"}}\n{SETTINGS}  immutable_tags: ['v\\d+\\.\\d+\\.\\d+']\n"
    );

    // Not cached: an immutable tag is checked and copied like any other.
    let (first, upstream, _) = run_counting(&p.upstream, ImageSync::new().config(&yaml));
    first.expect_code(0);
    assert_eq!(first.actions(), ["pulled", "pulled"]);
    assert_eq!(upstream.manifest_heads, 2);
    let old = image::digest_of(&p.tools, &format!("{source}:v1.0.0")).expect("digest");

    // The upstream re-pushes v1.0.0 (the documented risk): the cached tag is kept, and the
    // run asks the upstream about `latest` only.
    image::push_new(
        &p.tools,
        Kind::Single,
        "imm-1-repushed",
        &format!("{source}:v1.0.0"),
        Format::Oci,
    );
    let (second, upstream, requests) = run_counting(&p.upstream, ImageSync::new().config(&yaml));
    second.expect_code(0);
    assert_eq!(second.actions(), ["already_cached", "already_cached"]);
    let immutable = second.result(0);
    assert_eq!(immutable["skipped_check"], "immutable");
    assert_eq!(immutable["cached_digest"], old.as_str());
    assert_eq!(immutable["remote_digest"], serde_json::Value::Null);
    assert!(second.result(1).get("skipped_check").is_none());
    assert_eq!(
        (
            upstream.manifest_heads,
            upstream.manifest_gets,
            upstream.blob_reads
        ),
        (1, 0, 0)
    );
    assert!(
        requests.iter().all(|(_, path, _)| !path.contains("v1.0.0")),
        "{requests:?}"
    );

    // A dry run still checks immutable tags: it shows what the re-push changed.
    let (dry, upstream, _) =
        run_counting(&p.upstream, ImageSync::new().config(&yaml).arg("--dry-run"));
    dry.expect_code(0);
    assert_eq!(dry.actions(), ["would_pull", "already_cached"]);
    assert_eq!(upstream.manifest_heads, 2);
}

#[test]
fn bad_pins_and_patterns_are_config_errors_naming_the_field() {
    let yaml = "cache_registry: \"cache:5000\"\nimages:\n  - {source: nginx, tag: \"1\", digest: \"sha256:abc\"}\n  - {source: redis, tag: \"7\", watch_tag: false}\nsettings:\n  immutable_tags: [\"v(1\"]\n";
    let outcome = ImageSync::new().config(yaml).arg("--check").run();
    outcome.expect_code(2);
    for text in [
        "images[0] (source `nginx`) field `digest`: `sha256:abc` is not a digest",
        "images[1] (source `redis`) field `watch_tag`: applies to a pinned image only",
        "settings.immutable_tags[0]: `v(1` is not a regular expression",
    ] {
        assert!(
            outcome.stderr.contains(text),
            "missing {text:?}:\n{}",
            outcome.stderr
        );
    }
}

#[test]
fn pinned_and_immutable_images_stay_cached_while_the_upstream_is_down() {
    let Some(p) = pair() else { return };
    let (up, cache) = (p.upstream.host(), p.cache.host());
    image::push_singles(&p.tools, &up, &["down/a", "down/b", "down/c"]);
    // Read once, before any counting: crane's digest requests go to the real upstream.
    let (a, b) = (
        image::digest_of(&p.tools, &format!("{up}/down/a:1")).expect("digest a"),
        image::digest_of(&p.tools, &format!("{up}/down/b:1")).expect("digest b"),
    );
    let yaml = |host: &str| {
        format!(
            "cache_registry: \"{cache}\"\nimages:\n  - {{source: \"{host}/down/a\", tag: \"1\", digest: \"{}\"}}\n  - {{source: \"{host}/down/b\", tag: \"1\", digest: \"{}\"}}\n  - {{source: \"{host}/down/c\", tag: \"1\"}}\n{SETTINGS}  retries: 0\n  immutable_tags: ['1']\n",
            a, b,
        )
    };
    let first = ImageSync::new().config(&yaml(&up)).run();
    first.expect_code(0);
    assert_eq!(first.actions(), ["pulled", "pulled", "pulled"]);

    // The same images (the cache path has no host) from an upstream that refuses
    // connections: the watch fails (a warning, the breaker trips), nothing else does.
    let dead = format!("127.0.0.1:{}", crate::support::registry::free_port());
    let (cache_before, seen) = (p.cache.counts(), p.upstream.requests().len());
    let down = ImageSync::new().config(&yaml(&dead)).run();
    down.expect_code(0);
    assert_eq!(
        down.actions(),
        ["already_cached", "already_cached", "already_cached"]
    );
    assert_eq!(down.result(2)["skipped_check"], "immutable");
    assert!(
        down.result(0).get("tag_moved").is_none(),
        "not watched: no verdict"
    );
    assert!(
        down.stderr
            .contains("cannot watch the upstream tag of a pinned image"),
        "{}",
        down.stderr
    );
    assert_eq!((p.cache.counts() - cache_before).writes, 0);
    assert_eq!(
        p.upstream.requests().len(),
        seen,
        "the real upstream was not asked"
    );
}
