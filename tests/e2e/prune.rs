//! `image-sync prune` against a real Distribution registry with deletes enabled (it deletes
//! by digest only), and behind the fault proxy imitating Zot (which deletes a tag alone):
//! only tags image-sync recorded writing and the config no longer lists go; a listed tag,
//! a tag someone else pushed, a tag pushed over, and a digest a staying tag holds stay;
//! dry run by default; `--max-deletions`; records of concurrent shards are all seen; a
//! config error deletes nothing; `settings.prune` after a complete run only. Prune sends
//! no upstream request.

use serde_json::Value;

use crate::support::fault::{Fault, FaultProxy, Rule};
use crate::support::image::{self, Format, Kind, OciLayout};
use crate::support::runner::{ImageSync, Outcome};
use crate::support::{self, Pair};

fn config(cache: &str, up: &str, images: &[(&str, &str)], extra: &str) -> String {
    let mut text = format!("cache_registry: \"{cache}\"\nimages:\n");
    for (repo, tag) in images {
        text.push_str(&format!(
            "  - {{source: \"{up}/{repo}\", tag: \"{tag}\"}}\n"
        ));
    }
    text.push_str(extra);
    text
}

fn prune(config: &str, args: &[&str]) -> Outcome {
    ImageSync::new()
        .config(config)
        .arg("prune")
        .args(args)
        .run()
}

/// How many records the cache holds.
fn records(pair: &Pair) -> usize {
    let repository = format!("{}/image-sync/records", pair.cache.host());
    image::crane(&pair.tools, &["ls", &repository])
        .lines()
        .count()
}

fn strings(value: &Value) -> Vec<String> {
    let mut list: Vec<String> = value
        .as_array()
        .unwrap_or_else(|| panic!("a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect();
    list.sort();
    list
}

fn why<'a>(report: &'a Value, image: &str) -> &'a str {
    report["prune"]["kept"]
        .as_array()
        .expect("kept")
        .iter()
        .find(|kept| kept["image"] == image)
        .and_then(|kept| kept["why"].as_str())
        .unwrap_or_else(|| panic!("{image} not kept: {report}"))
}

/// Pushes `app:1`, `app:2` and `app:3` (2 and 3: one digest), `app:4` and `lib:1`.
fn upstream_images(pair: &Pair) {
    let up = pair.upstream.host();
    for (seed, tag) in [("p1", "app:1"), ("p4", "app:4"), ("pl", "lib:1")] {
        image::push_new(
            &pair.tools,
            Kind::Single,
            seed,
            &format!("{up}/{tag}"),
            Format::Oci,
        );
    }
    let twin = OciLayout::new(Kind::Single, "p2", 64);
    twin.push(&pair.tools, &format!("{up}/app:2"), Format::Oci);
    twin.push(&pair.tools, &format!("{up}/app:3"), Format::Oci);
}

const ALL: &[(&str, &str)] = &[
    ("app", "1"),
    ("app", "2"),
    ("app", "3"),
    ("app", "4"),
    ("lib", "1"),
];

/// A pair whose cache holds every image of [`ALL`], copied by image-sync (so recorded);
/// with the upstream and cache hosts and that config.
fn synced_all() -> Option<(Pair, String, String, String)> {
    let pair = support::pair()?;
    let (up, c) = (pair.upstream.host(), pair.cache.host());
    upstream_images(&pair);
    let full = config(&c, &up, ALL, "");
    ImageSync::new().config(&full).run().expect_code(0);
    Some((pair, up, c, full))
}

#[test]
fn prune_deletes_only_unlisted_tags_image_sync_wrote_and_never_a_shared_digest_on_distribution() {
    let Some((pair, up, c, _)) = synced_all() else {
        return;
    };
    // Someone else's tag, and a tag image-sync wrote that someone pushed over.
    image::push_new(
        &pair.tools,
        Kind::Single,
        "theirs",
        &format!("{c}/app:theirs"),
        Format::Oci,
    );
    image::push_new(
        &pair.tools,
        Kind::Single,
        "over",
        &format!("{c}/app:4"),
        Format::Oci,
    );

    // The config now lists app:1 and app:3 only.
    let cut = config(&c, &up, &[("app", "1"), ("app", "3")], "");
    let upstream_before = pair.upstream.counts();
    let cache_before = pair.cache.requests().len();
    let dry = prune(&cut, &[]);
    dry.expect_code(0);
    let report = dry.report();
    assert_eq!(
        strings(&report["prune"]["would_delete"]),
        [format!("{c}/lib:1")],
        "{}",
        dry.stderr
    );
    assert!(strings(&report["prune"]["deleted"]).is_empty());
    assert_eq!(report["prune"]["deletes"], "digest");
    assert_eq!(why(report, &format!("{c}/app:1")), "listed in the config");
    assert!(why(report, &format!("{c}/app:2")).contains("also tagged `3`"));
    assert!(why(report, &format!("{c}/app:4")).contains("did not write"));
    assert!(
        !report.to_string().contains("app:theirs"),
        "a tag image-sync never wrote is not even considered"
    );
    // A dry run deletes nothing: only the two probes, which name nothing that exists.
    let deletes: Vec<String> = pair.cache.requests()[cache_before..]
        .iter()
        .filter(|(method, _, _)| method == "DELETE")
        .map(|(_, path, _)| path.clone())
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    assert!(
        deletes
            .iter()
            .all(|path| path.contains("image-sync/records"))
    );

    // Over the cap: nothing deleted, exit 1.
    let capped = prune(&cut, &["--apply", "--max-deletions", "0"]);
    capped.expect_code(1);
    assert!(strings(&capped.report()["prune"]["deleted"]).is_empty());
    assert!(image::digest_of(&pair.tools, &format!("{c}/lib:1")).is_some());

    // A config error: exit 2, nothing deleted.
    prune("cache_registry: \"\"\nimages: []\n", &["--apply"]).expect_code(2);
    assert!(image::digest_of(&pair.tools, &format!("{c}/lib:1")).is_some());

    let applied = prune(&cut, &["--apply"]);
    applied.expect_code(0);
    assert_eq!(
        strings(&applied.report()["prune"]["deleted"]),
        [format!("{c}/lib:1")]
    );
    assert_eq!(image::digest_of(&pair.tools, &format!("{c}/lib:1")), None);
    for kept in ["app:1", "app:2", "app:3", "app:4", "app:theirs"] {
        assert!(
            image::digest_of(&pair.tools, &format!("{c}/{kept}")).is_some(),
            "{kept} stays"
        );
    }
    assert_eq!(
        pair.upstream.counts() - upstream_before,
        Default::default(),
        "prune asks the upstream nothing"
    );
    // The records were merged into one.
    assert_eq!(records(&pair), 1);

    // A second prune finds nothing more to delete; the listed tags are still kept.
    let again = prune(&cut, &["--apply"]);
    again.expect_code(0);
    assert!(strings(&again.report()["prune"]["would_delete"]).is_empty());
    assert_eq!(
        why(again.report(), &format!("{c}/app:3")),
        "listed in the config"
    );
}

#[test]
fn behind_a_cache_that_deletes_tags_alone_a_shared_digest_loses_only_its_unlisted_tag() {
    let Some(pair) = support::pair() else {
        return;
    };
    let up = pair.upstream.host();
    upstream_images(&pair);
    // Zot: a tag DELETE removes that tag only (202), a missing tag is a 404.
    let proxy = FaultProxy::start(pair.cache.host())
        .rule(
            Rule::new("DELETE", "/manifests/image-sync-delete-probe").respond(
                Fault::registry_error(404, "MANIFEST_UNKNOWN", "manifest unknown (zot)"),
            ),
        )
        .rule(Rule::new("DELETE", "/v2/app/manifests/2").respond(Fault::status(202)));
    let c = proxy.host();
    ImageSync::new()
        .config(&config(&c, &up, ALL, ""))
        .run()
        .expect_code(0);
    let cut = config(
        &c,
        &up,
        &[("app", "1"), ("app", "3"), ("app", "4"), ("lib", "1")],
        "",
    );
    let applied = prune(&cut, &["--apply"]);
    applied.expect_code(0);
    let report = applied.report();
    assert_eq!(report["prune"]["deletes"], "tag");
    assert_eq!(strings(&report["prune"]["deleted"]), [format!("{c}/app:2")]);
    let deletes: Vec<String> = proxy
        .requests()
        .iter()
        .filter(|seen| seen.method == "DELETE" && seen.path.starts_with("/v2/app/"))
        .map(|seen| seen.path.clone())
        .collect();
    assert_eq!(deletes, ["/v2/app/manifests/2"], "by tag, never by digest");
    assert!(image::digest_of(&pair.tools, &format!("{}/app:3", pair.cache.host())).is_some());
}

#[test]
fn records_of_concurrent_shards_are_all_seen_and_settings_prune_runs_after_a_complete_run_only() {
    let Some(pair) = support::pair() else {
        return;
    };
    let (up, c) = (pair.upstream.host(), pair.cache.host());
    upstream_images(&pair);
    let full = config(&c, &up, ALL, "");
    // Two shards at once, each recording what it wrote.
    let runs: Vec<_> = (0..2)
        .map(|index| {
            let run = ImageSync::new()
                .config(&full)
                .arg("--shard")
                .arg(format!("{index}/2"));
            let child = run.spawn();
            (run, child)
        })
        .collect();
    let mut stderr = String::new();
    // The ports are random and the shard of an image hashes its source: now and then one
    // shard owns all five and writes the only record (a shard that wrote nothing records
    // nothing).
    let (mut writers, mut pulled) = (0, 0);
    for (_run, child) in runs {
        let done = crate::support::runner::outcome(child.wait_with_output().expect("wait"));
        done.expect_code(0);
        let copied = done.report()["summary"]["pulled"]
            .as_u64()
            .expect("summary.pulled");
        writers += usize::from(copied > 0);
        pulled += copied;
        stderr.push_str(&done.stderr);
    }
    assert_eq!(pulled, 5, "{stderr}");
    assert_eq!(records(&pair), writers, "{stderr}");
    // Nothing listed any more but app:1: every other tag of both shards would go (app:2
    // and app:3 share a digest, so both go with it).
    let only = config(&c, &up, &[("app", "1")], "settings:\n  prune: true\n");
    let dry = prune(&only, &[]);
    dry.expect_code(0);
    assert_eq!(
        strings(&dry.report()["prune"]["would_delete"]),
        ["app:2", "app:3", "app:4", "lib:1"].map(|t| format!("{c}/{t}"))
    );
    // A failed run never prunes: app:1 is already cached, the other image is missing.
    let broken = config(
        &c,
        &up,
        &[("app", "1"), ("absent", "1")],
        "settings:\n  prune: true\n",
    );
    let before = pair.upstream.counts();
    let failed = ImageSync::new().config(&broken).run();
    failed.expect_code(1);
    assert_eq!(failed.actions(), ["already_cached", "failed"]);
    assert!(failed.report().get("prune").is_none());
    assert_eq!((pair.upstream.counts() - before).manifest_gets, 0);
    assert!(image::digest_of(&pair.tools, &format!("{c}/lib:1")).is_some());
    // A sharded run never prunes; a complete one does.
    let sharded = ImageSync::new()
        .config(&only)
        .arg("--shard")
        .arg("0/1")
        .run();
    sharded.expect_code(0);
    assert!(sharded.report().get("prune").is_none());
    assert!(image::digest_of(&pair.tools, &format!("{c}/lib:1")).is_some());
    let complete = ImageSync::new().config(&only).run();
    complete.expect_code(0);
    assert_eq!(
        strings(&complete.report()["prune"]["deleted"]),
        ["app:2", "app:3", "app:4", "lib:1"].map(|t| format!("{c}/{t}"))
    );
    assert_eq!(image::digest_of(&pair.tools, &format!("{c}/lib:1")), None);
    assert!(image::digest_of(&pair.tools, &format!("{c}/app:1")).is_some());
}

#[test]
fn fifty_one_tags_to_delete_are_over_the_default_cap_nothing_is_deleted_and_the_exit_code_is_1() {
    let Some(pair) = support::pair() else {
        return;
    };
    let (up, c) = (pair.upstream.host(), pair.cache.host());
    upstream_images(&pair);
    // 51 tags: over the default `--max-deletions` (50) by one. Each its own image: 51
    // copies of one image at once race on the same blobs in Distribution (500s, retried).
    let tags: Vec<String> = (0..51).map(|n| n.to_string()).collect();
    for tag in &tags {
        OciLayout::new(Kind::Single, &format!("many-{tag}"), 64).push(
            &pair.tools,
            &format!("{up}/many:{tag}"),
            Format::Oci,
        );
    }
    let mut listed: Vec<(&str, &str)> = tags.iter().map(|tag| ("many", tag.as_str())).collect();
    listed.push(("app", "1"));
    let before = pair.upstream.counts();
    let synced = ImageSync::new().config(&config(&c, &up, &listed, "")).run();
    synced.expect_code(0);
    assert_eq!(synced.actions(), vec!["pulled"; 52], "{}", synced.stderr);
    // crane copy GETs the source manifest of each tag once.
    assert_eq!(
        (pair.upstream.counts() - before).manifest_gets,
        52,
        "{}",
        synced.stderr
    );

    // A truncated config: only app:1 left.
    let cut = config(&c, &up, &[("app", "1")], "");
    let cache_before = pair.cache.requests().len();
    let capped = prune(&cut, &["--apply"]);
    capped.expect_code(1);
    let report = capped.report();
    assert_eq!(strings(&report["prune"]["would_delete"]).len(), 51);
    assert!(strings(&report["prune"]["deleted"]).is_empty());
    let error = report["prune"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("51 tags would be deleted, more than --max-deletions 50"),
        "{error}"
    );
    let deletes: Vec<String> = pair.cache.requests()[cache_before..]
        .iter()
        .filter(|(method, path, _)| method == "DELETE" && !path.contains("image-sync/records"))
        .map(|(_, path, _)| path.clone())
        .collect();
    assert!(deletes.is_empty(), "nothing deleted: {deletes:?}");
    for tag in ["0", "50"] {
        assert!(image::digest_of(&pair.tools, &format!("{c}/many:{tag}")).is_some());
    }
    // Raised on purpose, the same cleanup goes through.
    let raised = prune(&cut, &["--apply", "--max-deletions", "51"]);
    raised.expect_code(0);
    assert_eq!(strings(&raised.report()["prune"]["deleted"]).len(), 51);
    assert_eq!(image::digest_of(&pair.tools, &format!("{c}/many:0")), None);
    assert!(image::digest_of(&pair.tools, &format!("{c}/app:1")).is_some());
}

/// The records library against a real registry: a client as a run builds it.
mod records_of {
    use std::sync::Arc;
    use std::time::Duration;

    use image_sync::input::reference::Repository;
    use image_sync::registry::client::Client;
    use image_sync::registry::credentials::Keyring;
    use image_sync::registry::quota::{Ledger, Reserve};
    use image_sync::run::prune::records::{self, Entry};
    use image_sync::tls::TlsPolicy;

    pub const BUDGET: Duration = Duration::from_secs(30);

    pub fn client() -> Client {
        Client::new(
            TlsPolicy::new(Default::default()),
            Arc::new(Keyring::discover()),
            Arc::new(Ledger::new(Reserve::Pulls(0))),
        )
        .expect("client")
    }

    pub fn entry(tag: &str) -> Entry {
        Entry {
            repository: "app".to_owned(),
            tag: tag.to_owned(),
            digest: format!("sha256:{}", "a".repeat(64)),
        }
    }

    /// Every entry of every record there now.
    pub async fn recorded(client: &Client, repo: &Repository) -> (usize, Vec<Entry>) {
        let read = records::read(client, repo, BUDGET).await.expect("read");
        let mut entries: Vec<Entry> = read.iter().flat_map(|r| r.entries.clone()).collect();
        entries.sort();
        entries.dedup();
        (read.len(), entries)
    }

    pub use records::{Added, COMPACT_AT, add, read, record, write};
}

#[test]
fn two_writers_merging_the_records_at_once_lose_no_entry_and_a_recorded_entry_is_not_written_again()
{
    let Some(tools) = support::tools() else {
        return;
    };
    let cache = crate::support::registry::Registry::start(&tools);
    let repo = image_sync::input::reference::Repository::new(&cache.host(), "image-sync/records");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use records_of::*;
        let client = client();
        // COMPACT_AT records of one entry each: the next writer merges.
        let mut expected: Vec<_> = (0..COMPACT_AT)
            .map(|n| entry(&format!("old-{n:02}")))
            .collect();
        for old in &expected {
            write(&client, &repo, std::slice::from_ref(old), "seed", BUDGET)
                .await
                .expect("write");
        }
        // An entry some record holds is not written again: no push.
        let puts = |cache: &crate::support::registry::Registry| {
            cache
                .requests()
                .iter()
                .filter(|(method, path, _)| method == "PUT" && path.contains("/manifests/"))
                .count()
        };
        let before = puts(&cache);
        let covered = record(&client, &repo, &expected[..3], "again", BUDGET).await;
        assert_eq!(covered.expect("record"), Added::Covered);
        assert_eq!(puts(&cache), before);

        // The worst interleaving: both writers read every record before either merges.
        let seen_by_a = read(&client, &repo, BUDGET).await.expect("read a");
        let seen_by_b = read(&client, &repo, BUDGET).await.expect("read b");
        assert_eq!((seen_by_a.len(), seen_by_b.len()), (COMPACT_AT, COMPACT_AT));
        for (seen, writer) in [(&seen_by_a, "from-a"), (&seen_by_b, "from-b")] {
            let written = entry(writer);
            let merged = add(
                &client,
                &repo,
                seen,
                std::slice::from_ref(&written),
                writer,
                BUDGET,
            )
            .await;
            assert!(
                matches!(merged, Ok(Added::Merged { replaced, .. }) if replaced == COMPACT_AT),
                "{merged:?}"
            );
            expected.push(written);
        }
        expected.sort();
        let (count, entries) = recorded(&client, &repo).await;
        assert_eq!(entries, expected, "no entry lost");
        assert_eq!(count, 2, "each writer's merge, the records they read gone");

        // Truly at once, over the compaction threshold again: nothing lost either.
        for n in 0..COMPACT_AT {
            let one = entry(&format!("more-{n:02}"));
            write(&client, &repo, std::slice::from_ref(&one), "seed", BUDGET)
                .await
                .expect("write");
            expected.push(one);
        }
        let (c, d) = (entry("from-c"), entry("from-d"));
        let (merged_c, merged_d) = tokio::join!(
            record(&client, &repo, std::slice::from_ref(&c), "c", BUDGET),
            record(&client, &repo, std::slice::from_ref(&d), "d", BUDGET),
        );
        assert!(matches!(merged_c, Ok(Added::Merged { .. })), "{merged_c:?}");
        assert!(matches!(merged_d, Ok(Added::Merged { .. })), "{merged_d:?}");
        expected.extend([c, d]);
        expected.sort();
        let (count, entries) = recorded(&client, &repo).await;
        assert_eq!(entries, expected, "no entry lost");
        assert!(count <= 3, "merged: {count} records");

        // A cache that refuses deletes (405 UNSUPPORTED) gets the new entries alone: a merge
        // whose records read could not go would only add to them.
        let refusing =
            FaultProxy::start(cache.host()).rule(Rule::new("DELETE", "/manifests/").respond(
                Fault::registry_error(405, "UNSUPPORTED", "deletes disabled"),
            ));
        let behind =
            image_sync::input::reference::Repository::new(&refusing.host(), "image-sync/records");
        for n in 0..COMPACT_AT {
            let one = entry(&format!("kept-{n:02}"));
            write(&client, &behind, std::slice::from_ref(&one), "seed", BUDGET)
                .await
                .expect("write");
        }
        let (count, _) = recorded(&client, &behind).await;
        let added = record(&client, &behind, &[entry("late")], "e", BUDGET).await;
        assert!(matches!(added, Ok(Added::Written(_))), "{added:?}");
        assert_eq!(recorded(&client, &behind).await.0, count + 1);
    });
}

#[test]
fn a_run_that_copies_again_what_a_record_holds_writes_no_record() {
    let Some((pair, _, c, full)) = synced_all() else {
        return;
    };
    assert_eq!(records(&pair), 1);
    // lib:1 goes from the cache (not by prune); the next run copies it again, same digest.
    let digest = image::digest_of(&pair.tools, &format!("{c}/lib:1")).expect("cached");
    image::crane(&pair.tools, &["delete", &format!("{c}/lib@{digest}")]);
    let before = pair.upstream.counts();
    let cache_before = pair.cache.requests().len();
    let again = ImageSync::new().config(&full).run();
    again.expect_code(0);
    assert_eq!(
        again.actions(),
        [
            "already_cached",
            "already_cached",
            "already_cached",
            "already_cached",
            "pulled"
        ]
    );
    assert_eq!((pair.upstream.counts() - before).manifest_gets, 1);
    let pushed: Vec<String> = pair.cache.requests()[cache_before..]
        .iter()
        .filter(|(method, path, _)| {
            method != "GET" && method != "HEAD" && path.contains("image-sync/records")
        })
        .map(|(method, path, _)| format!("{method} {path}"))
        .collect();
    assert!(
        pushed.is_empty(),
        "the entry was recorded already: {pushed:?}"
    );
    assert_eq!(records(&pair), 1);
}
