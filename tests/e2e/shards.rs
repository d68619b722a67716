//! Shards (`--shard I/N`, `--shard-count N` with `JOB_COMPLETION_INDEX`): every image in
//! exactly one shard, the shards' union equal to the unsharded run, each shard sending
//! upstream only its own images' requests.

use std::collections::BTreeSet;

use serde_json::json;

use crate::support::image;
use crate::support::pair;
use crate::support::runner::{ImageSync, Outcome};

const IMAGES: usize = 12;

fn config(upstream: &str, cache: &str) -> String {
    let mut yaml = format!("cache_registry: \"{cache}\"\nimages:\n");
    for i in 0..IMAGES {
        yaml.push_str(&format!(
            "  - source: \"{upstream}/shard/app{i}\"\n    tag: \"1\"\n"
        ));
    }
    yaml.push_str("settings:\n  check_timeout_secs: 20\n  pull_timeout_secs: 60\n");
    yaml
}

/// (image, tag, remote digest) of every result.
fn entries(outcome: &Outcome) -> Vec<(String, String, String)> {
    outcome.report()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            let text = |key: &str| r[key].as_str().unwrap_or_default().to_owned();
            (text("image"), text("tag"), text("remote_digest"))
        })
        .collect()
}

#[test]
fn four_shards_cover_every_image_once_and_their_union_is_the_unsharded_run() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    let repositories: Vec<String> = (0..IMAGES).map(|i| format!("shard/app{i}")).collect();
    let names: Vec<&str> = repositories.iter().map(String::as_str).collect();
    image::push_singles(&p.tools, &up, &names);
    let yaml = config(&up, &p.cache.host());

    let before = p.upstream.counts();
    let whole = ImageSync::new().config(&yaml).arg("--dry-run").run();
    whole.expect_code(0);
    assert_eq!(whole.actions(), vec!["would_pull"; IMAGES]);
    assert!(whole.report().get("shard").is_none(), "unsharded: no shard");
    let upstream = p.upstream.counts() - before;
    assert_eq!(
        (upstream.manifest_heads, upstream.manifest_gets),
        (IMAGES, 0)
    );
    let unsharded: BTreeSet<_> = entries(&whole).into_iter().collect();
    assert_eq!(unsharded.len(), IMAGES);

    let mut union = Vec::new();
    let mut non_empty = 0;
    for index in 0..4 {
        let run = ImageSync::new().config(&yaml);
        // The last shard as a pod of an Indexed Job sees it: the count as an argument, the
        // index from Kubernetes.
        let run = if index == 3 {
            run.arg("--shard-count")
                .arg("4")
                .env("JOB_COMPLETION_INDEX", "3")
        } else {
            run.arg("--shard").arg(format!("{index}/4"))
        };
        let (before, seen) = (p.upstream.counts(), p.upstream.requests().len());
        let outcome = run.run();
        outcome.expect_code(0);
        let report = outcome.report();
        assert_eq!(report["shard"], json!({"index": index, "count": 4}));
        let results = entries(&outcome);
        assert_eq!(report["summary"]["total"], results.len());
        assert!(outcome.actions().iter().all(|action| action == "pulled"));
        // In config order within the shard.
        let positions: Vec<usize> = results
            .iter()
            .map(|(image, _, _)| {
                image
                    .rsplit("app")
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("index")
            })
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
        // Only this shard's images were asked for upstream: one HEAD each, and one
        // manifest GET per copy (a single-platform image).
        let upstream = p.upstream.counts() - before;
        assert_eq!(
            (upstream.manifest_heads, upstream.manifest_gets),
            (results.len(), results.len()),
            "shard {index}"
        );
        let asked: BTreeSet<String> = p.upstream.requests()[seen..]
            .iter()
            .filter(|(_, path, _)| path.contains("/manifests/"))
            .filter_map(|(_, path, _)| path.split('/').nth(3).map(str::to_owned))
            .collect();
        let own: BTreeSet<String> = results
            .iter()
            .map(|(image, _, _)| image.rsplit('/').next().expect("name").to_owned())
            .collect();
        assert!(
            asked.is_subset(&own),
            "shard {index} asked {asked:?}, owns {own:?}"
        );
        non_empty += usize::from(!results.is_empty());
        union.extend(results);
    }
    assert_eq!(union.len(), IMAGES, "every image exactly once: {union:?}");
    let union: BTreeSet<_> = union.into_iter().collect();
    assert_eq!(union, unsharded);
    assert!(non_empty >= 2, "12 images all in one of 4 shards");

    // Together the shards filled the cache: an unsharded run finds everything cached.
    let before = p.upstream.counts();
    let after = ImageSync::new().config(&yaml).run();
    after.expect_code(0);
    assert_eq!(after.actions(), vec!["already_cached"; IMAGES]);
    let upstream = p.upstream.counts() - before;
    assert_eq!(
        (
            upstream.manifest_heads,
            upstream.manifest_gets,
            upstream.blob_reads
        ),
        (IMAGES, 0, 0)
    );
}

#[test]
fn shard_arguments_are_usage_errors_before_any_request() {
    let yaml =
        "cache_registry: \"127.0.0.1:1\"\nimages:\n  - {source: \"127.0.0.1:1/a\", tag: \"1\"}\n";
    let missing_index = ImageSync::new()
        .config(yaml)
        .arg("--shard-count")
        .arg("4")
        .without_env("JOB_COMPLETION_INDEX")
        .run();
    missing_index.expect_code(2);
    assert!(missing_index.report.is_none());
    assert!(
        missing_index.stderr.contains("needs JOB_COMPLETION_INDEX"),
        "{}",
        missing_index.stderr
    );
    let out_of_range = ImageSync::new()
        .config(yaml)
        .arg("--shard-count")
        .arg("4")
        .env("JOB_COMPLETION_INDEX", "4")
        .run();
    out_of_range.expect_code(2);
    assert!(
        out_of_range.stderr.contains("JOB_COMPLETION_INDEX=4"),
        "{}",
        out_of_range.stderr
    );
    for bad in ["4/4", "1", "x/2", "0/0"] {
        let outcome = ImageSync::new().config(yaml).arg("--shard").arg(bad).run();
        outcome.expect_code(2);
        assert!(
            outcome.stderr.contains("--shard"),
            "{bad}: {}",
            outcome.stderr
        );
    }
    let both = ImageSync::new()
        .config(yaml)
        .arg("--shard")
        .arg("0/2")
        .arg("--shard-count")
        .arg("2")
        .run();
    both.expect_code(2);
}

#[test]
fn check_prints_the_partition_and_its_balance() {
    let mut yaml = String::from("cache_registry: \"cache:5000\"\nimages:\n");
    for i in 0..40 {
        yaml.push_str(&format!("  - {{source: \"team/app{i}\", tag: \"1\"}}\n"));
    }
    let outcome = ImageSync::new()
        .config(&yaml)
        .arg("--check")
        .arg("--shard-count")
        .arg("4")
        .without_env("JOB_COMPLETION_INDEX")
        .run();
    outcome.expect_code(0);
    let stderr = &outcome.stderr;
    assert!(
        stderr.contains("shards: 40 image(s) over 4 shard(s)") && stderr.contains("balance"),
        "{stderr}"
    );
    // Each image is listed once with its shard.
    let listed: Vec<&str> = stderr
        .lines()
        .filter(|line| line.trim_start().starts_with("shard ") && line.contains("<-"))
        .collect();
    assert_eq!(listed.len(), 40, "{stderr}");
}
