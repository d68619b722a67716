//! Platform filters against real registries: a six-platform index with buildx attestations
//! made here, cached with only the listed platforms (each child by its upstream digest),
//! the upstream manifest GETs read from its access log, a second run that costs none, the
//! media type kept, single-platform images and `all` copied as they are, a listed platform
//! the index lacks warned about, a pin of the upstream index digest satisfied by the
//! filtered index recording it, and a real containerd pulling the filtered image by tag
//! through the mirror while the upstream is stopped.

use serde_json::Value;

use std::sync::Arc;

use crate::support::containerd::{hosts_toml, pair_and_containerd};
use crate::support::fault::{FaultProxy, Quota};
use crate::support::image::{self, Format, Kind, OciLayout};
use crate::support::runner::{ImageSync, Outcome};
use crate::support::{self, Pair};

/// The six platforms of the test index (as Docker Hub's ubuntu has).
const SIX: &[&str] = &[
    "linux/amd64",
    "linux/arm64/v8",
    "linux/arm/v7",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
];

fn manifest(pair: &Pair, reference: &str) -> Value {
    serde_json::from_str(&image::crane(&pair.tools, &["manifest", reference]))
        .expect("manifest json")
}

fn run(config: &str) -> Outcome {
    ImageSync::new().config(config).run()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_six_platform_index_is_cached_with_two_platforms_their_attestations_and_no_get_the_next_run() {
    let Some(pair) = support::pair() else {
        return;
    };
    let (up, c) = (pair.upstream.host(), pair.cache.host());
    OciLayout::index("six", SIX, true, 256).push(
        &pair.tools,
        &format!("{up}/library/six:1"),
        Format::Oci,
    );
    let upstream_index = manifest(&pair, &format!("{up}/library/six:1"));
    let upstream_digest =
        image::digest_of(&pair.tools, &format!("{up}/library/six:1")).expect("upstream digest");
    let config = format!(
        r#"
cache_registry: "{c}"
images:
  - {{source: "{up}/library/six", tag: "1"}}
settings:
  platforms: ["linux/arm64", "linux/amd64", "windows/amd64"]
"#
    );
    let before = pair.upstream.counts();
    let first = run(&config);
    first.expect_code(0);
    let spent = pair.upstream.counts() - before;
    let result = first.result(0);
    assert_eq!(result["action"], "pulled", "{}", first.stderr);
    // One GET for the index, one per kept child: two images and their two attestations.
    assert_eq!(spent.manifest_gets, 1 + 4, "{}", first.stderr);
    assert!(
        first.stderr.contains("manifest_gets=5"),
        "the ledger counts the same GETs: {}",
        first.stderr
    );
    assert_eq!(text(&result["remote_digest"]), upstream_digest);
    let filtered = text(&result["filtered_digest"]);
    assert!(filtered.starts_with("sha256:") && filtered != upstream_digest);
    assert_eq!(
        result["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64/v8"])
    );
    assert!(
        first.stderr.contains("windows/amd64") && first.stderr.contains("no manifest"),
        "a listed platform the index lacks is named: {}",
        first.stderr
    );

    // The cache's index: the same media type, the kept children by their upstream digests,
    // the upstream digest and the filter recorded.
    let cached = manifest(&pair, &format!("{c}/library/six:1"));
    assert_eq!(
        image::digest_of(&pair.tools, &format!("{c}/library/six:1")).as_deref(),
        Some(filtered.as_str())
    );
    assert_eq!(cached["mediaType"], upstream_index["mediaType"]);
    assert_eq!(
        cached["annotations"]["io.github.pleme-io.image-sync.upstream-digest"],
        upstream_digest.as_str()
    );
    assert_eq!(
        cached["annotations"]["io.github.pleme-io.image-sync.platforms"],
        "linux/amd64,linux/arm64,windows/amd64"
    );
    let children: Vec<&Value> = cached["manifests"]
        .as_array()
        .expect("children")
        .iter()
        .collect();
    assert_eq!(children.len(), 4);
    let upstream_children = upstream_index["manifests"].as_array().expect("children");
    for child in &children {
        assert!(
            upstream_children.contains(child),
            "{child} is an upstream child as it was"
        );
        let digest = text(&child["digest"]);
        assert_eq!(
            image::digest_of(&pair.tools, &format!("{c}/library/six@{digest}")).as_deref(),
            Some(digest.as_str()),
            "the child is in the cache under its upstream digest"
        );
    }
    let attestations: Vec<&&Value> = children
        .iter()
        .filter(|child| child["platform"]["os"] == "unknown")
        .collect();
    assert_eq!(attestations.len(), 2);
    for attestation in attestations {
        let subject = text(&attestation["annotations"]["vnd.docker.reference.digest"]);
        assert!(
            children
                .iter()
                .any(|child| text(&child["digest"]) == subject),
            "an attestation of a kept child"
        );
    }

    // The next run: upstream HEAD against the recorded digest, no GET.
    let before = pair.upstream.counts();
    let second = run(&config);
    second.expect_code(0);
    let spent = pair.upstream.counts() - before;
    assert_eq!(
        second.result(0)["action"],
        "already_cached",
        "{}",
        second.stderr
    );
    assert_eq!(spent.manifest_gets, 0);
    assert_eq!(spent.manifest_heads, 1);
    assert_eq!(text(&second.result(0)["filtered_digest"]), filtered);
    assert_eq!(text(&second.result(0)["remote_digest"]), upstream_digest);
    assert_eq!(second.result(0)["platforms"], first.result(0)["platforms"]);

    // A different filter makes a new index; the children already cached are not pulled again.
    let wider = config.replace(", \"windows/amd64\"", ", \"linux/s390x\"");
    let before = pair.upstream.counts();
    let third = run(&wider);
    third.expect_code(0);
    assert_eq!(third.result(0)["action"], "pulled");
    assert_eq!((pair.upstream.counts() - before).manifest_gets, 1 + 2);
    assert_eq!(
        third.result(0)["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64/v8", "linux/s390x"])
    );
}

#[test]
fn a_docker_list_stays_a_docker_list_with_one_child_and_single_images_and_all_are_copied_as_they_are()
 {
    let Some(pair) = support::pair() else {
        return;
    };
    let (up, c) = (pair.upstream.host(), pair.cache.host());
    OciLayout::index(
        "list",
        &["linux/amd64", "linux/arm64", "linux/arm/v7"],
        false,
        64,
    )
    .push(&pair.tools, &format!("{up}/org/list:1"), Format::DockerV2S2);
    image::push_new(
        &pair.tools,
        Kind::Single,
        "lone",
        &format!("{up}/org/lone:1"),
        Format::Oci,
    );
    image::push_new(
        &pair.tools,
        Kind::MultiArch,
        "every",
        &format!("{up}/org/every:1"),
        Format::Oci,
    );
    let config = format!(
        r#"
cache_registry: "{c}"
images:
  - {{source: "{up}/org/list", tag: "1"}}
  - {{source: "{up}/org/lone", tag: "1"}}
  - {{source: "{up}/org/every", tag: "1", platforms: ["all"]}}
settings:
  platforms: ["linux/arm64"]
"#
    );
    let before = pair.upstream.counts();
    let first = run(&config);
    first.expect_code(0);
    assert_eq!(first.actions(), ["pulled"; 3], "{}", first.stderr);
    // The list: 1 + its one kept child; the single image: 1; `all`: 1 + 2 (crane's copy).
    assert_eq!((pair.upstream.counts() - before).manifest_gets, 2 + 1 + 3);
    let list = manifest(&pair, &format!("{c}/org/list:1"));
    assert_eq!(
        list["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    assert_eq!(list["manifests"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["manifests"][0]["platform"]["architecture"], "arm64");
    assert!(first.result(0)["filtered_digest"].is_string());
    for (i, repo) in [(1, "org/lone"), (2, "org/every")] {
        let result = first.result(i);
        assert!(result.get("filtered_digest").is_none(), "{result}");
        assert_eq!(
            image::digest_of(&pair.tools, &format!("{c}/{repo}:1")),
            image::digest_of(&pair.tools, &format!("{up}/{repo}:1")),
            "{repo} is copied as it is"
        );
    }
    let before = pair.upstream.counts();
    let second = run(&config);
    second.expect_code(0);
    assert_eq!(second.actions(), ["already_cached"; 3]);
    assert_eq!((pair.upstream.counts() - before).manifest_gets, 0);
}

#[test]
fn platforms_are_validated_at_check_naming_the_file_the_image_and_the_entry() {
    let config = r#"
cache_registry: "127.0.0.1:5000"
images:
  - {source: "nginx", tag: "1", platforms: ["linux/amd64", "linux"]}
  - {source: "redis", tag: "7", platforms: ["all", "linux/arm64"]}
settings:
  platforms: ["Linux/AMD64"]
"#;
    let checked = ImageSync::new().config(config).arg("--check").run();
    checked.expect_code(2);
    for expected in [
        "config.yaml",
        "settings.platforms[0]: `Linux/AMD64` is not a platform",
        "images[0] (source `nginx`) field `platforms[1]`: `linux` is not a platform",
        "images[1] (source `redis`) field `platforms[0]`: `all` stands alone",
    ] {
        assert!(
            checked.stderr.contains(expected),
            "{expected}: {}",
            checked.stderr
        );
    }
    assert!(!checked.stderr.contains("panicked"));
}

#[test]
fn a_real_containerd_pulls_the_filtered_image_by_tag_through_the_mirror_with_the_upstream_stopped()
{
    let Some((pair, containerd)) = pair_and_containerd() else {
        return;
    };
    let Pair {
        tools,
        upstream,
        cache,
    } = pair;
    let (up, c) = (upstream.host(), cache.host());
    OciLayout::index("node", SIX, true, 128).push(
        &tools,
        &format!("{up}/library/node:1"),
        Format::Oci,
    );
    // The node's own platform is the one kept.
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let config = format!(
        "cache_registry: \"{c}\"\nimages:\n  - {{source: \"{up}/library/node\", tag: \"1\"}}\nsettings:\n  platforms: [\"linux/{arch}\"]\n"
    );
    let before = upstream.counts();
    let synced = run(&config);
    synced.expect_code(0);
    assert_eq!((upstream.counts() - before).manifest_gets, 1 + 2);
    let filtered = text(&synced.result(0)["filtered_digest"]);
    drop(upstream);

    let hosts = tempfile::tempdir().expect("hosts dir");
    hosts_toml(&config, &format!("http://{c}"), hosts.path(), &[]);
    let reference = format!("{up}/library/node:1");
    let pulled = containerd.pull_ok(hosts.path(), &reference);
    assert_eq!(
        pulled,
        support::containerd::Pulled {
            digest: filtered,
            unpacked: true
        }
    );
}

#[test]
fn signatures_of_the_upstream_index_and_of_kept_children_are_synced_with_a_filter() {
    let Some(pair) = support::pair() else {
        return;
    };
    let (up, c) = (pair.upstream.host(), pair.cache.host());
    OciLayout::index("signed", &["linux/amd64", "linux/arm64"], false, 64).push(
        &pair.tools,
        &format!("{up}/org/signed:1"),
        Format::Oci,
    );
    let upstream_index = manifest(&pair, &format!("{up}/org/signed:1"));
    let index_digest =
        image::digest_of(&pair.tools, &format!("{up}/org/signed:1")).expect("upstream digest");
    let child = |arch: &str| {
        upstream_index["manifests"]
            .as_array()
            .expect("children")
            .iter()
            .find(|child| child["platform"]["architecture"] == arch)
            .map(|child| text(&child["digest"]))
            .expect("child")
    };
    // Legacy cosign signature tags (any manifest will do: only the tag names matter here).
    let signatures = [
        (index_digest.clone(), "sig-index"),
        (child("amd64"), "sig-amd64"),
        (child("arm64"), "sig-arm64"),
    ];
    for (digest, seed) in &signatures {
        let tag = format!("{}.sig", digest.replace(':', "-"));
        image::push_new(
            &pair.tools,
            Kind::Single,
            seed,
            &format!("{up}/org/signed:{tag}"),
            Format::Oci,
        );
    }
    let config = format!(
        "cache_registry: \"{c}\"\nimages:\n  - {{source: \"{up}/org/signed\", tag: \"1\"}}\nsettings:\n  platforms: [\"linux/amd64\"]\n  referrers: true\n"
    );
    let first = run(&config);
    first.expect_code(0);
    assert_eq!(first.result(0)["action"], "pulled", "{}", first.stderr);
    let has = |digest: &str| {
        image::digest_of(
            &pair.tools,
            &format!("{c}/org/signed:{}.sig", digest.replace(':', "-")),
        )
        .is_some()
    };
    assert!(has(&index_digest), "the upstream index digest's signature");
    assert!(has(&child("amd64")), "the kept child's signature");
    assert!(!has(&child("arm64")), "not the dropped child's");
    assert_eq!(first.result(0)["referrers"]["copied"], 2);
    // A no-op run checks them again without a pull.
    let before = pair.upstream.counts();
    let second = run(&config);
    second.expect_code(0);
    assert_eq!(second.result(0)["action"], "already_cached");
    assert_eq!(second.result(0)["referrers"]["already_cached"], 2);
    assert_eq!((pair.upstream.counts() - before).manifest_gets, 0);
}

#[test]
fn an_index_without_any_listed_platform_fails_alone_after_one_get_naming_what_it_offers() {
    let Some(pair) = support::pair() else {
        return;
    };
    let (up, c) = (pair.upstream.host(), pair.cache.host());
    OciLayout::index("s390x-only", &["linux/s390x", "linux/ppc64le"], true, 64).push(
        &pair.tools,
        &format!("{up}/org/mainframe:1"),
        Format::Oci,
    );
    image::push_new(
        &pair.tools,
        Kind::MultiArch,
        "fine",
        &format!("{up}/org/fine:1"),
        Format::Oci,
    );
    let config = format!(
        "cache_registry: \"{c}\"\nimages:\n  - {{source: \"{up}/org/mainframe\", tag: \"1\"}}\n  - {{source: \"{up}/org/fine\", tag: \"1\"}}\nsettings:\n  platforms: [\"linux/amd64\"]\n"
    );
    let before = pair.upstream.counts();
    let failed = run(&config);
    failed.expect_code(1);
    assert_eq!(failed.actions(), ["failed", "pulled"], "{}", failed.stderr);
    let error = text(&failed.result(0)["error"]);
    assert!(
        error.contains("no manifest for any listed platform (linux/amd64)")
            && error.contains("linux/ppc64le, linux/s390x"),
        "{error}"
    );
    // The failed image: its index only; the other: its index and one child.
    assert_eq!((pair.upstream.counts() - before).manifest_gets, 1 + 2);
    assert_eq!(
        image::digest_of(&pair.tools, &format!("{c}/org/mainframe:1")),
        None
    );
}

#[test]
fn a_filtered_copy_spends_one_plus_kept_children_pulls_of_a_metered_upstreams_quota() {
    let Some(pair) = support::pair() else {
        return;
    };
    let (up, c) = (pair.upstream.host(), pair.cache.host());
    OciLayout::index("metered", SIX, true, 64).push(
        &pair.tools,
        &format!("{up}/library/metered:1"),
        Format::Oci,
    );
    // Docker Hub's quota in front of the upstream: each manifest GET spends one pull.
    let quota = Arc::new(Quota::new(100, 50, 21_600, "203.0.113.7"));
    let hub = FaultProxy::start(up.clone()).with_quota(Arc::clone(&quota));
    let config = format!(
        "cache_registry: \"{c}\"\nimages:\n  - {{source: \"{}/library/metered\", tag: \"1\"}}\nsettings:\n  platforms: [\"linux/amd64\"]\n",
        hub.host()
    );
    let first = run(&config);
    first.expect_code(0);
    assert_eq!(first.result(0)["action"], "pulled", "{}", first.stderr);
    let reported = &first.report()["quota"][hub.host()];
    // The index, the amd64 manifest and its attestation.
    assert_eq!(reported["manifest_gets"], 3, "{reported}");
    assert_eq!(reported["remaining_at_start"], 50);
    assert_eq!(reported["remaining_at_end"], 47);
    assert_eq!(quota.remaining(), 47);
    let second = run(&config);
    second.expect_code(0);
    assert_eq!(second.result(0)["action"], "already_cached");
    assert_eq!(quota.remaining(), 47, "a no-op run spends no pull");
}

#[test]
fn children_reach_the_cache_before_the_index_that_lists_them_as_zot_requires() {
    let Some(pair) = support::pair() else {
        return;
    };
    let up = pair.upstream.host();
    OciLayout::index("ordered", SIX, true, 64).push(
        &pair.tools,
        &format!("{up}/library/ordered:1"),
        Format::Oci,
    );
    // Zot refuses (400 MANIFEST_INVALID) an index whose children it does not hold: every
    // kept child must be written before the index.
    let cache = FaultProxy::start(pair.cache.host());
    let config = format!(
        "cache_registry: \"{}\"\nimages:\n  - {{source: \"{up}/library/ordered\", tag: \"1\"}}\nsettings:\n  platforms: [\"linux/amd64\", \"linux/arm64\"]\n",
        cache.host()
    );
    let before = pair.upstream.counts();
    let synced = run(&config);
    synced.expect_code(0);
    assert_eq!((pair.upstream.counts() - before).manifest_gets, 1 + 4);
    let puts: Vec<String> = cache
        .requests()
        .iter()
        .filter(|seen| {
            seen.method == "PUT" && seen.path.starts_with("/v2/library/ordered/manifests/")
        })
        .map(|seen| {
            seen.path
                .trim_start_matches("/v2/library/ordered/manifests/")
                .to_owned()
        })
        .collect();
    assert_eq!(puts.len(), 5, "{puts:?}");
    assert_eq!(
        puts.last().map(String::as_str),
        Some("1"),
        "the index last: {puts:?}"
    );
    let cached = manifest(&pair, &format!("{}/library/ordered:1", pair.cache.host()));
    let mut children: Vec<String> = cached["manifests"]
        .as_array()
        .expect("children")
        .iter()
        .map(|child| text(&child["digest"]))
        .collect();
    let mut written = puts[..4].to_vec();
    children.sort();
    written.sort();
    assert_eq!(written, children);
}

#[test]
fn a_pin_names_the_upstream_index_digest_and_is_satisfied_by_the_filtered_index_recording_it() {
    let Some(pair) = support::pair() else {
        return;
    };
    let (up, c) = (pair.upstream.host(), pair.cache.host());
    OciLayout::index("pinned", SIX, true, 64).push(
        &pair.tools,
        &format!("{up}/org/pinned:1"),
        Format::Oci,
    );
    let pin = image::digest_of(&pair.tools, &format!("{up}/org/pinned:1")).expect("digest");
    // The tag moves on upstream; the pin holds.
    OciLayout::index("pinned-next", SIX, true, 64).push(
        &pair.tools,
        &format!("{up}/org/pinned:1"),
        Format::Oci,
    );
    let config = format!(
        "cache_registry: \"{c}\"\nimages:\n  - source: \"{up}/org/pinned\"\n    tag: \"1\"\n    digest: \"{pin}\"\nsettings:\n  platforms: [\"linux/amd64\"]\n"
    );
    let before = pair.upstream.counts();
    let first = run(&config);
    first.expect_code(0);
    let result = first.result(0);
    assert_eq!(result["action"], "pulled", "{}", first.stderr);
    // The pinned index, the amd64 manifest and its attestation.
    assert_eq!((pair.upstream.counts() - before).manifest_gets, 3);
    assert_eq!(text(&result["remote_digest"]), pin);
    assert_eq!(result["tag_moved"], true);
    let filtered = text(&result["filtered_digest"]);
    assert!(filtered.starts_with("sha256:") && filtered != pin);
    let cached = manifest(&pair, &format!("{c}/org/pinned:1"));
    assert_eq!(
        cached["annotations"]["io.github.pleme-io.image-sync.upstream-digest"],
        pin.as_str()
    );
    // The next run: the recorded digest equals the pin, nothing pulled.
    let before = pair.upstream.counts();
    let second = run(&config);
    second.expect_code(0);
    assert_eq!(
        second.result(0)["action"],
        "already_cached",
        "{}",
        second.stderr
    );
    assert_eq!(text(&second.result(0)["filtered_digest"]), filtered);
    assert_eq!((pair.upstream.counts() - before).manifest_gets, 0);
}
