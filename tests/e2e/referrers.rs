//! Signatures, attestations and OCI 1.1 referrers (`referrers: true`): made upstream with
//! real oras (cosign's legacy tags and an attached artifact, which Distribution 2.8 records
//! in the referrers tag schema), synced by digest, found by the same lookups in the cache,
//! and free on a run in which nothing changed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::fault::{Fault, FaultProxy, Rule, TokenAuth};
use crate::support::image::{self, Format, Kind};
use crate::support::registry::Registry;
use crate::support::runner::{ImageSync, Outcome};
use crate::support::{self, Pair};

/// Runs oras (plain HTTP: the registries are on loopback) in `dir` and returns its stdout.
fn oras(oras: &Path, dir: &Path, args: &[&str]) -> String {
    let output = Command::new(oras)
        .args(args)
        .arg("--plain-http")
        .current_dir(dir)
        .output()
        .expect("run oras");
    assert!(
        output.status.success(),
        "oras {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What an artifact-aware client finds for `subject` (`oras discover`: the referrers API,
/// else the tag schema): the referrers' (artifactType, digest), sorted.
fn discover(oras_path: &Path, dir: &Path, subject: &str) -> Vec<(String, String)> {
    let json: Value = serde_json::from_str(&oras(
        oras_path,
        dir,
        &["discover", "--format", "json", subject],
    ))
    .expect("discover json");
    let mut found: Vec<(String, String)> = json["referrers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["artifactType"].as_str().unwrap_or_default().to_owned(),
                r["digest"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    found.sort();
    found
}

/// Pushes a small artifact file as `reference` (a legacy cosign tag) or attaches it to
/// `reference` (`attach`: an OCI 1.1 referrer with a subject).
fn artifact(
    oras_path: &Path,
    dir: &Path,
    verb: &str,
    reference: &str,
    artifact_type: &str,
    text: &str,
) {
    artifact_with(oras_path, dir, &[verb], reference, artifact_type, text);
}

/// [`artifact`] with the verb and its options given as `verb`.
fn artifact_with(
    oras_path: &Path,
    dir: &Path,
    verb: &[&str],
    reference: &str,
    artifact_type: &str,
    text: &str,
) {
    let name = format!("{}.json", artifact_type.replace(['/', '+', '.'], "-"));
    std::fs::write(dir.join(&name), text).expect("artifact file");
    let file = format!("{name}:{artifact_type}");
    let mut args = verb.to_vec();
    args.extend(["--artifact-type", artifact_type, reference, &file]);
    oras(oras_path, dir, &args);
}

struct Signed {
    pair: Pair,
    oras: PathBuf,
    dir: tempfile::TempDir,
    digest: String,
    config: String,
}

/// An image upstream with a legacy signature, a legacy attestation and an OCI 1.1 SBOM
/// referrer; the config syncs it with `referrers: true`.
fn signed_image(extra_settings: &str) -> Option<Signed> {
    let pair = support::pair()?;
    let oras_path = support::extra_tool("oras")?;
    let dir = tempfile::tempdir().expect("artifacts dir");
    let up = pair.upstream.host();
    let image_ref = format!("{up}/team/signed:1");
    image::push_new(&pair.tools, Kind::Single, "signed", &image_ref, Format::Oci);
    let digest = image::digest_of(&pair.tools, &image_ref).expect("digest");
    let tag = digest.replace(':', "-");
    let base = format!("{up}/team/signed");
    artifact(
        &oras_path,
        dir.path(),
        "push",
        &format!("{base}:{tag}.sig"),
        "application/vnd.dev.cosign.simplesigning.v1+json",
        "{\"sig\":1}",
    );
    artifact(
        &oras_path,
        dir.path(),
        "push",
        &format!("{base}:{tag}.att"),
        "application/vnd.dsse.envelope.v1+json",
        "{\"att\":1}",
    );
    artifact(
        &oras_path,
        dir.path(),
        "attach",
        &format!("{base}@{digest}"),
        "application/spdx+json",
        "{\"sbom\":1}",
    );
    let config = format!(
        "cache_registry: \"{}\"\nimages:\n  - {{source: \"{up}/team/signed\", tag: \"1\"}}\nsettings:\n  referrers: true\n{extra_settings}",
        pair.cache.host()
    );
    Some(Signed {
        pair,
        oras: oras_path,
        dir,
        digest,
        config,
    })
}

fn referrer_counts(outcome: &Outcome) -> (u64, u64, u64) {
    let r = &outcome.result(0)["referrers"];
    (
        r["copied"].as_u64().expect("copied"),
        r["already_cached"].as_u64().expect("already_cached"),
        r["failed"].as_u64().expect("failed"),
    )
}

/// Upstream manifest GETs of the image itself (its tag or its digest): a re-copy.
fn image_gets(signed: &Signed) -> usize {
    signed
        .pair
        .upstream
        .requests()
        .iter()
        .filter(|(method, path, _)| {
            method == "GET"
                && (path.ends_with("/team/signed/manifests/1")
                    || path.ends_with(&format!("/team/signed/manifests/{}", signed.digest)))
        })
        .count()
}

#[test]
fn signatures_attestations_and_referrers_follow_the_image_and_a_no_op_run_spends_no_pull() {
    let Some(signed) = signed_image("") else {
        return;
    };
    let (up, cache) = (signed.pair.upstream.host(), signed.pair.cache.host());
    let tag = signed.digest.replace(':', "-");

    let before = signed.pair.upstream.counts();
    let first = ImageSync::new().config(&signed.config).run();
    first.expect_code(0);
    assert_eq!(first.actions(), ["pulled"]);
    // .sig, .att and the referrers index (with its one artifact).
    assert_eq!(referrer_counts(&first), (3, 0, 0));
    let spent = signed.pair.upstream.counts() - before;
    // The image, .sig, .att, the referrers index and the artifact it lists.
    assert_eq!(spent.manifest_gets, 5, "first run: {spent:?}");

    // The cache answers the same lookups with the same digests.
    for suffix in [".sig", ".att", ""] {
        let (upstream_ref, cache_ref) = (
            format!("{up}/team/signed:{tag}{suffix}"),
            format!("{cache}/team/signed:{tag}{suffix}"),
        );
        let tools = &signed.pair.tools;
        assert_eq!(
            image::digest_of(tools, &cache_ref),
            image::digest_of(tools, &upstream_ref),
            "{cache_ref}"
        );
    }
    let upstream_found = discover(
        &signed.oras,
        signed.dir.path(),
        &format!("{up}/team/signed@{}", signed.digest),
    );
    let cache_found = discover(
        &signed.oras,
        signed.dir.path(),
        &format!("{cache}/team/signed@{}", signed.digest),
    );
    assert_eq!(upstream_found.len(), 1, "{upstream_found:?}");
    assert_eq!(cache_found, upstream_found);

    // Nothing changed: HEADs only (the image and its four tags), no manifest GET.
    let before = signed.pair.upstream.counts();
    let second = ImageSync::new().config(&signed.config).run();
    second.expect_code(0);
    assert_eq!(second.actions(), ["already_cached"]);
    assert_eq!(referrer_counts(&second), (0, 3, 0));
    let spent = signed.pair.upstream.counts() - before;
    assert_eq!(
        (spent.manifest_gets, spent.manifest_heads, spent.blob_reads),
        (0, 5, 0),
        "no-op run: {spent:?}"
    );

    // Upstream, a new signature replaces the .sig and a second referrer is attached.
    artifact(
        &signed.oras,
        signed.dir.path(),
        "push",
        &format!("{up}/team/signed:{tag}.sig"),
        "application/vnd.dev.cosign.simplesigning.v1+json",
        "{\"sig\":2}",
    );
    artifact(
        &signed.oras,
        signed.dir.path(),
        "attach",
        &format!("{up}/team/signed@{}", signed.digest),
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "{\"bundle\":1}",
    );
    let before_gets = image_gets(&signed);
    let before = signed.pair.upstream.counts();
    let third = ImageSync::new().config(&signed.config).run();
    third.expect_code(0);
    assert_eq!(third.actions(), ["already_cached"]);
    assert_eq!(referrer_counts(&third), (2, 1, 0));
    assert_eq!(
        image_gets(&signed),
        before_gets,
        "the image was fetched again"
    );
    let spent = signed.pair.upstream.counts() - before;
    let cache_found = discover(
        &signed.oras,
        signed.dir.path(),
        &format!("{cache}/team/signed@{}", signed.digest),
    );
    assert_eq!(cache_found.len(), 2, "{cache_found:?}");
    assert_eq!(
        cache_found,
        discover(
            &signed.oras,
            signed.dir.path(),
            &format!("{up}/team/signed@{}", signed.digest)
        )
    );
    // The new .sig, the new referrers index and both artifacts it lists: crane reads every
    // child of an index it copies, also one the cache already holds.
    assert_eq!(spent.manifest_gets, 4, "third run: {spent:?}");
}

/// A proxy in front of `signed`'s cache that refuses every referrer tag (a PUT of a
/// `sha256-<hex>` manifest, and only those) with MANIFEST_INVALID, and `signed`'s config
/// pointed at it.
fn cache_refusing_referrer_tags(signed: &Signed) -> (FaultProxy, String) {
    let proxy = FaultProxy::start(signed.pair.cache.host()).rule(
        Rule::new("PUT", "/manifests/sha256-").respond(Fault::registry_error(
            400,
            "MANIFEST_INVALID",
            "manifest invalid",
        )),
    );
    let config = signed
        .config
        .replace(&signed.pair.cache.host(), &proxy.host());
    (proxy, config)
}

#[test]
fn a_referrer_the_cache_refuses_is_counted_and_fails_the_image_only_when_required() {
    // One copy at a time: the first refusal stops the image's other referrer copies.
    let Some(signed) = signed_image("  concurrency: 1\n") else {
        return;
    };
    // The cache refuses every referrer tag (and only those); the image itself goes in.
    let (_proxy, config) = cache_refusing_referrer_tags(&signed);

    let before = signed.pair.upstream.counts();
    let lenient = ImageSync::new().config(&config).run();
    lenient.expect_code(0);
    assert_eq!(lenient.actions(), ["pulled"]);
    assert_eq!(referrer_counts(&lenient), (0, 0, 3));
    assert!(lenient.result(0)["error"].is_null());
    assert!(
        lenient.stderr.contains("referrers not synced"),
        "{}",
        lenient.stderr
    );
    // The image, and the one referrer copy the cache refused (issue 18 item 4: the other
    // two were not attempted, each would have spent a pull for the same refusal).
    assert_eq!((signed.pair.upstream.counts() - before).manifest_gets, 2);
    assert!(
        lenient.stderr.contains("no more referrer copies go to it"),
        "{}",
        lenient.stderr
    );

    let required = config.replace(
        "  referrers: true\n",
        "  referrers: true\n  referrers_required: true\n",
    );
    let before = signed.pair.upstream.counts();
    let strict = ImageSync::new().config(&required).run();
    strict.expect_code(1);
    assert_eq!(strict.actions(), ["failed"]);
    assert_eq!(referrer_counts(&strict), (0, 0, 3));
    let error = strict.result(0)["error"].as_str().expect("error");
    assert!(
        error.starts_with("the cache refused the copy: ")
            && error.contains("MANIFEST_INVALID")
            && error.contains("referrers_required: true"),
        "{error}"
    );
    assert_eq!(
        strict.result(0)["cached_digest"].as_str(),
        Some(signed.digest.as_str())
    );
    // The image was cached already: one referrer copy was tried again, one pull.
    assert_eq!((signed.pair.upstream.counts() - before).manifest_gets, 1);
    assert_eq!(
        image_gets(&signed),
        1,
        "the image is read once, by the first run"
    );
}

/// Issue 18 item 4: a cache that refuses referrers costs one pull per run, not one per
/// referrer of every image: after its first refusal no referrer copy goes to it (a
/// breaker by host, as for images); the images themselves are copied.
#[test]
fn a_cache_refusing_referrers_costs_one_pull_per_run_not_one_per_referrer() {
    let Some(signed) = signed_image("  concurrency: 1\n  check_concurrency: 1\n") else {
        return;
    };
    let up = signed.pair.upstream.host();
    let other = format!("{up}/team/second");
    image::push_new(
        &signed.pair.tools,
        Kind::Single,
        "second",
        &format!("{other}:1"),
        Format::Oci,
    );
    let digest = image::digest_of(&signed.pair.tools, &format!("{other}:1")).expect("digest");
    artifact(
        &signed.oras,
        signed.dir.path(),
        "push",
        &format!("{other}:{}.sig", digest.replace(':', "-")),
        "application/vnd.dev.cosign.simplesigning.v1+json",
        "{\"sig\":2}",
    );
    let (proxy, config) = cache_refusing_referrer_tags(&signed);
    let config = config.replace(
        "images:\n",
        &format!("images:\n  - {{source: \"{other}\", tag: \"1\"}}\n"),
    );
    for run_number in 1..=2 {
        let before = signed.pair.upstream.counts();
        let run = ImageSync::new().config(&config).run();
        run.expect_code(0);
        let pulled = if run_number == 1 {
            "pulled"
        } else {
            "already_cached"
        };
        assert_eq!(run.actions(), [pulled, pulled]);
        assert_eq!(
            proxy.count("PUT", "/manifests/sha256-"),
            run_number,
            "one refused write per run"
        );
        let spent = signed.pair.upstream.counts() - before;
        let images = if run_number == 1 { 2 } else { 0 };
        assert_eq!(
            spent.manifest_gets,
            images + 1,
            "run {run_number}: {spent:?}"
        );
        let second = &run.result(1)["referrers"];
        assert_eq!(second["copied"], 0);
        assert!(second["failed"].as_u64() >= Some(1), "{second}");
        assert!(
            run.stderr.contains("refused a referrer copy"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn without_referrers_nothing_but_the_image_is_looked_at() {
    let Some(signed) = signed_image("") else {
        return;
    };
    let config = signed
        .config
        .replace("  referrers: true\n", "  referrers: false\n");
    let before = signed.pair.upstream.counts();
    let run = ImageSync::new().config(&config).run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"]);
    assert!(run.result(0).get("referrers").is_none(), "{}", run.stdout);
    let spent = signed.pair.upstream.counts() - before;
    assert_eq!(
        (spent.manifest_heads, spent.manifest_gets),
        (1, 1),
        "{spent:?}"
    );
    let tag = signed.digest.replace(':', "-");
    let sig = format!("{}/team/signed:{tag}.sig", signed.pair.cache.host());
    assert_eq!(image::digest_of(&signed.pair.tools, &sig), None);
}

/// GETs of the referrers API in a registry's access log.
fn referrers_gets(registry: &Registry) -> usize {
    registry
        .requests()
        .iter()
        .filter(|(method, path, _)| method == "GET" && path.contains("/referrers/"))
        .count()
}

/// `oras attach` through the referrers API only (no tag-schema index), as cosign v3 and
/// oras do against Docker Hub or Zot.
const BY_API: &[&str] = &["attach", "--distribution-spec", "v1.1-referrers-api"];

/// The tools, oras, and an upstream and a cache that both serve the referrers API; `None`
/// (skip) when one is missing outside CI.
fn api_registries() -> Option<(support::Tools, PathBuf, Registry, Registry)> {
    let tools = support::tools()?;
    let oras_path = support::extra_tool("oras")?;
    let upstream = Registry::start_with_referrers_api()?;
    let cache = Registry::start_with_referrers_api()?;
    Some((tools, oras_path, upstream, cache))
}

#[test]
fn referrers_the_upstream_lists_by_its_api_are_copied_by_digest_into_a_cache_with_the_api() {
    let Some((tools, oras_path, upstream, cache)) = api_registries() else {
        return;
    };
    let dir = tempfile::tempdir().expect("artifacts dir");
    let (up, c) = (upstream.host(), cache.host());
    image::push_new(
        &tools,
        Kind::MultiArch,
        "api",
        &format!("{up}/team/api:1"),
        Format::Oci,
    );
    let digest = image::digest_of(&tools, &format!("{up}/team/api:1")).expect("digest");
    let subject = format!("{up}/team/api@{digest}");
    let tag = digest.replace(':', "-");
    artifact(
        &oras_path,
        dir.path(),
        "push",
        &format!("{up}/team/api:{tag}.sig"),
        "application/vnd.dev.cosign.simplesigning.v1+json",
        "{\"sig\":1}",
    );
    artifact_with(
        &oras_path,
        dir.path(),
        BY_API,
        &subject,
        "application/spdx+json",
        "{\"sbom\":1}",
    );
    artifact_with(
        &oras_path,
        dir.path(),
        BY_API,
        &subject,
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "{\"bundle\":1}",
    );
    let no_index = format!("{up}/team/api:{tag}");
    assert_eq!(
        image::digest_of(&tools, &no_index),
        None,
        "oras kept a tag-schema index"
    );
    let config = format!(
        "cache_registry: \"{c}\"\nimages:\n  - {{source: \"{up}/team/api\", tag: \"1\"}}\nsettings:\n  referrers: true\n"
    );
    let lookup = |registry: &str| {
        discover(
            &oras_path,
            dir.path(),
            &format!("{registry}/team/api@{digest}"),
        )
    };

    let before = upstream.counts();
    let first = ImageSync::new().config(&config).run();
    first.expect_code(0);
    assert_eq!(first.actions(), ["pulled"]);
    // The .sig, and the two artifacts the referrers API lists.
    assert_eq!(referrer_counts(&first), (3, 0, 0));
    // The index and its two platform manifests, the .sig, the two artifacts.
    assert_eq!((upstream.counts() - before).manifest_gets, 3 + 1 + 2);
    assert_eq!(referrers_gets(&upstream), 1, "one GET of the referrers API");
    // The cache's referrers API answers with the same artifacts (oras asks the API first).
    assert_eq!(lookup(&c).len(), 2);
    assert_eq!(lookup(&c), lookup(&up));

    let (before, api_before) = (upstream.counts(), referrers_gets(&upstream));
    let second = ImageSync::new().config(&config).run();
    second.expect_code(0);
    assert_eq!(second.actions(), ["already_cached"]);
    assert_eq!(referrer_counts(&second), (0, 3, 0));
    let spent = upstream.counts() - before;
    // HEADs of the image and the three legacy tags; one referrers GET; no manifest GET.
    assert_eq!(
        (spent.manifest_heads, spent.manifest_gets, spent.blob_reads),
        (4, 0, 0),
        "no-op run: {spent:?}"
    );
    assert_eq!(referrers_gets(&upstream) - api_before, 1);

    artifact_with(
        &oras_path,
        dir.path(),
        BY_API,
        &subject,
        "application/vnd.in-toto+json",
        "{\"att\":2}",
    );
    let before = upstream.counts();
    let third = ImageSync::new().config(&config).run();
    third.expect_code(0);
    assert_eq!(referrer_counts(&third), (1, 3, 0));
    // Only the new artifact is read.
    assert_eq!((upstream.counts() - before).manifest_gets, 1);
    assert_eq!(lookup(&c), lookup(&up));
}

#[test]
fn api_only_referrers_cannot_reach_a_cache_without_the_api_and_say_so() {
    let Some(tools) = support::tools() else {
        return;
    };
    let (Some(oras_path), Some(upstream)) = (
        support::extra_tool("oras"),
        Registry::start_with_referrers_api(),
    ) else {
        return;
    };
    let cache = Registry::start(&tools);
    let dir = tempfile::tempdir().expect("artifacts dir");
    let (up, c) = (upstream.host(), cache.host());
    image::push_new(
        &tools,
        Kind::Single,
        "api-only",
        &format!("{up}/team/api:1"),
        Format::Oci,
    );
    let digest = image::digest_of(&tools, &format!("{up}/team/api:1")).expect("digest");
    artifact_with(
        &oras_path,
        dir.path(),
        BY_API,
        &format!("{up}/team/api@{digest}"),
        "application/spdx+json",
        "{\"sbom\":1}",
    );
    let config = format!(
        "cache_registry: \"{c}\"\nimages:\n  - {{source: \"{up}/team/api\", tag: \"1\"}}\nsettings:\n  referrers: true\n"
    );
    let before = upstream.counts();
    let run = ImageSync::new().config(&config).run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"]);
    assert_eq!(referrer_counts(&run), (0, 0, 1));
    assert!(
        run.stderr.contains("use a cache that serves it (Zot)"),
        "{}",
        run.stderr
    );
    // The image only: nothing was copied for the referrer.
    assert_eq!((upstream.counts() - before).manifest_gets, 1);
}

/// Runs cosign offline (no transparency log, a key pair made in the test) in `dir`.
fn cosign(cosign: &Path, dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(cosign)
        .args(args)
        .current_dir(dir)
        .env("COSIGN_PASSWORD", "")
        .env("COSIGN_YES", "true")
        .env("SIGSTORE_NO_CACHE", "true")
        .env("TUF_ROOT", dir.join("tuf"))
        .env("HOME", dir)
        .output()
        .expect("run cosign")
}

#[test]
fn cosign_verifies_the_cache_copy_of_a_signed_image_offline() {
    let Some(pair) = support::pair() else {
        return;
    };
    let Some(cosign_path) = support::extra_tool("cosign") else {
        return;
    };
    let dir = tempfile::tempdir().expect("cosign dir");
    let (up, c) = (pair.upstream.host(), pair.cache.host());
    let image_ref = format!("{up}/team/cosigned:1");
    image::push_new(
        &pair.tools,
        Kind::Single,
        "cosigned",
        &image_ref,
        Format::Oci,
    );
    let digest = image::digest_of(&pair.tools, &image_ref).expect("digest");
    let generated = cosign(&cosign_path, dir.path(), &["generate-key-pair"]);
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let signed = cosign(
        &cosign_path,
        dir.path(),
        &[
            "sign",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--allow-http-registry",
            &format!("{up}/team/cosigned@{digest}"),
        ],
    );
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let verify = |registry: &str| {
        cosign(
            &cosign_path,
            dir.path(),
            &[
                "verify",
                "--key",
                "cosign.pub",
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
                &format!("{registry}/team/cosigned@{digest}"),
            ],
        )
    };
    assert!(
        verify(&up).status.success(),
        "upstream: {}",
        String::from_utf8_lossy(&verify(&up).stderr)
    );

    let config = format!(
        "cache_registry: \"{c}\"\nimages:\n  - {{source: \"{up}/team/cosigned\", tag: \"1\"}}\nsettings:\n  referrers: true\n"
    );
    // Without referrers the cache holds the image but no signature: verification fails.
    let bare = ImageSync::new()
        .config(&config.replace("referrers: true", "referrers: false"))
        .run();
    bare.expect_code(0);
    assert!(!verify(&c).status.success(), "verified without a signature");

    let before = pair.upstream.counts();
    let run = ImageSync::new().config(&config).run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["already_cached"]);
    // cosign v2 signs into the legacy `sha256-<hex>.sig` tag.
    assert_eq!(referrer_counts(&run), (1, 0, 0), "{}", run.stdout);
    // The signature manifest only: the image is not read again.
    assert_eq!((pair.upstream.counts() - before).manifest_gets, 1);
    let verified = verify(&c);
    assert!(
        verified.status.success(),
        "cosign verify against the cache: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
}

#[test]
fn the_referrers_api_behind_bearer_tokens_is_read_with_the_image_checks_token() {
    let Some((tools, oras_path, upstream, cache)) = api_registries() else {
        return;
    };
    let dir = tempfile::tempdir().expect("artifacts dir");
    let up = upstream.host();
    image::push_new(
        &tools,
        Kind::Single,
        "gated",
        &format!("{up}/team/gated:1"),
        Format::Oci,
    );
    let digest = image::digest_of(&tools, &format!("{up}/team/gated:1")).expect("digest");
    artifact_with(
        &oras_path,
        dir.path(),
        BY_API,
        &format!("{up}/team/gated@{digest}"),
        "application/spdx+json",
        "{\"sbom\":1}",
    );
    // Docker Hub's way: every request needs a bearer token from the proxy's /token.
    let gate = FaultProxy::start_with_tokens(
        up.clone(),
        TokenAuth {
            expires_in: Some(300),
            valid_for: Duration::from_secs(300),
        },
    );
    let config = format!(
        "cache_registry: \"{}\"\nimages:\n  - {{source: \"{}/team/gated\", tag: \"1\"}}\nsettings:\n  referrers: true\n",
        cache.host(),
        gate.host()
    );
    let before = upstream.counts();
    let run = ImageSync::new().config(&config).run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"]);
    assert_eq!(referrer_counts(&run), (1, 0, 0), "{}", run.stderr);
    // The image and the artifact.
    assert_eq!((upstream.counts() - before).manifest_gets, 2);
    let ours: Vec<(String, Option<u16>)> = gate
        .requests()
        .into_iter()
        .filter(|seen| {
            seen.user_agent.starts_with("image-sync/") && seen.path.contains("/referrers/")
        })
        .map(|seen| (seen.method, seen.status))
        .collect();
    // The token of the image's check opens the referrers API at once: no 401 round.
    assert_eq!(ours, [("GET".to_owned(), Some(200))]);
}

#[test]
fn referrer_checks_that_must_get_are_reported_and_a_dry_run_looks_at_none() {
    let Some(signed) = signed_image("") else {
        return;
    };
    let up = signed.pair.upstream.host();
    let proxy = FaultProxy::start(up.clone());
    let config = signed
        .config
        .replace(&format!("\"{up}/"), &format!("\"{}/", proxy.host()));

    // A dry run reads the image's digests only.
    let before = signed.pair.upstream.counts();
    let dry = ImageSync::new().config(&config).arg("--dry-run").run();
    dry.expect_code(0);
    assert_eq!(dry.actions(), ["would_pull"]);
    assert!(dry.result(0).get("referrers").is_none(), "{}", dry.stdout);
    let spent = signed.pair.upstream.counts() - before;
    assert_eq!(
        (spent.manifest_heads, spent.manifest_gets),
        (1, 0),
        "{spent:?}"
    );

    ImageSync::new().config(&config).run().expect_code(0);
    // A proxy that drops Docker-Content-Digest from HEADs: each check whose HEAD finds a tag
    // GETs it, and after three such HEADs in a row every check there is a GET.
    proxy.add_rule(Rule::new("HEAD", "/manifests/").respond(Fault::StripDigest));
    let before = signed.pair.upstream.counts();
    let seen_before = signed.pair.upstream.requests().len();
    let run = ImageSync::new().config(&config).run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["already_cached"]);
    assert_eq!(referrer_counts(&run), (0, 3, 0));
    let spent = signed.pair.upstream.counts() - before;
    // GETs, each of which returned a manifest: the image, .sig, .att and the referrers index
    // (pulls on Docker Hub), all reported.
    let manifest_gets: Vec<u16> = signed.pair.upstream.requests()[seen_before..]
        .iter()
        .filter(|(method, path, _)| method == "GET" && path.contains("/manifests/"))
        .map(|(_, _, status)| *status)
        .collect();
    assert_eq!(manifest_gets, [200; 4], "{spent:?}");
    assert_eq!(spent.manifest_gets, 4, "{spent:?}");
    assert_eq!(run.result(0)["check_gets"], 4);
}

/// The quota reserve covers referrer copies as it covers image copies: with pulls for the
/// image only, the image is copied and its referrers wait for the next run.
#[test]
fn referrer_copies_stay_above_the_quota_reserve() {
    let Some(signed) = signed_image("  quota_reserve: 1\n  concurrency: 1\n") else {
        return;
    };
    let up = signed.pair.upstream.host();
    let quota = std::sync::Arc::new(crate::support::fault::Quota::new(
        100,
        2,
        3_600,
        "198.51.100.9",
    ));
    let hub = FaultProxy::start(up.clone()).with_quota(std::sync::Arc::clone(&quota));
    let config = signed
        .config
        .replace(&format!("\"{up}/"), &format!("\"{}/", hub.host()));
    let run = ImageSync::new().config(&config).run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"]);
    let (copied, _, failed) = referrer_counts(&run);
    assert_eq!(copied, 0, "no referrer copy below the reserve");
    assert!(
        failed >= 2,
        "the signature and the attestation wait: {failed}"
    );
    assert!(run.stderr.contains("quota reserve:"), "{}", run.stderr);
    assert_eq!(quota.remaining(), 1, "the image's one pull, and no more");
    assert_eq!(run.report()["quota"][hub.host()]["manifest_gets"], 1);
}

/// A pinned image that is already cached still brings its referrers up to date: a
/// signature added upstream after the first run arrives on the next one.
#[test]
fn a_cached_pin_still_follows_its_signatures() {
    let Some(signed) = signed_image("") else {
        return;
    };
    let config = signed.config.replace(
        "tag: \"1\"}",
        &format!("tag: \"1\", digest: \"{}\"}}", signed.digest),
    );
    assert!(config.contains("digest:"), "{config}");
    let first = ImageSync::new().config(&config).run();
    first.expect_code(0);
    assert_eq!(first.actions(), ["pulled"]);
    let up = signed.pair.upstream.host();
    let tag = signed.digest.replace(':', "-");
    artifact(
        &signed.oras,
        signed.dir.path(),
        "push",
        &format!("{up}/team/signed:{tag}.sbom"),
        "application/spdx+json",
        "{\"sbom\":2}",
    );
    let before = image_gets(&signed);
    let second = ImageSync::new().config(&config).run();
    second.expect_code(0);
    assert_eq!(second.actions(), ["already_cached"]);
    let (copied, already_cached, failed) = referrer_counts(&second);
    assert_eq!((copied, failed), (1, 0), "the new .sbom tag, nothing else");
    assert!(already_cached >= 2, "{already_cached}");
    assert_eq!(
        image_gets(&signed),
        before,
        "the image itself is not fetched again"
    );
}
