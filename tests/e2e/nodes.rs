//! From the cache to the node: a real containerd, configured with the `hosts.toml` files
//! `image-sync hosts-toml` writes (the ones docs/src/nodes.md prints), pulls and unpacks what
//! image-sync cached, by the upstream name, while the upstream is down.

use crate::support::containerd::{hosts_toml, pair_and_containerd};
use crate::support::image::{self, Format, Kind};
use crate::support::registry::Registry;
use crate::support::runner::ImageSync;
use crate::support::{self, Pair};

/// Manifest requests (HEAD or GET) the cache answered 200 for `repository` with containerd's
/// `?ns=<host>` (a mirror request), or without it (a request by the cache's own name).
fn served(cache: &Registry, repository: &str, ns: Option<&str>) -> usize {
    let prefix = format!("/v2/{repository}/manifests/");
    cache
        .requests()
        .iter()
        .filter(|(method, path, status)| {
            (method == "GET" || method == "HEAD")
                && *status == 200
                && path.starts_with(&prefix)
                && match ns {
                    Some(ns) => path.ends_with(&format!("?ns={}", ns.replace(':', "%3A"))),
                    None => !path.contains('?'),
                }
        })
        .count()
}

#[test]
fn a_real_containerd_pulls_every_kind_of_image_from_the_cache_with_the_upstream_down() {
    let Some((pair, containerd)) = pair_and_containerd() else {
        return;
    };
    let Pair {
        tools,
        upstream,
        cache,
    } = pair;
    let (up, c) = (upstream.host(), cache.host());
    for (kind, seed, repo) in [
        (Kind::Single, "nodes-official", "library/nodes-official"),
        (Kind::Single, "nodes-ghcr", "org/nodes-app"),
        (Kind::MultiArch, "nodes-multi", "library/nodes-multi"),
        (Kind::Single, "nodes-renamed", "other/nodes-renamed"),
        (Kind::Single, "nodes-prefixed", "org/nodes-prefixed"),
    ] {
        image::push_new(&tools, kind, seed, &format!("{up}/{repo}:1"), Format::Oci);
    }
    let config = format!(
        r#"
cache_registry: "{c}"
images:
  - {{source: "{up}/library/nodes-official", tag: "1"}}
  - {{source: "{up}/org/nodes-app", tag: "1"}}
  - {{source: "{up}/library/nodes-multi", tag: "1"}}
  - {{source: "{up}/other/nodes-renamed", tag: "1", cache_as: "team/renamed"}}
"#
    );
    let prefixed = format!(
        "cache_registry: \"{c}/mirror\"\nimages:\n  - {{source: \"{up}/org/nodes-prefixed\", tag: \"1\"}}\n"
    );
    let before = upstream.counts();
    let first = ImageSync::new().config(&config).run();
    first.expect_code(0);
    let second = ImageSync::new().config(&prefixed).run();
    second.expect_code(0);
    assert_eq!(first.actions(), ["pulled"; 4]);
    assert_eq!(second.actions(), ["pulled"]);
    // One manifest GET per single image, three for the index (index + two platforms).
    assert_eq!(
        (upstream.counts() - before).manifest_gets,
        1 + 1 + 3 + 1 + 1
    );
    let digest = |outcome: &crate::support::runner::Outcome, i: usize| {
        outcome.result(i)["remote_digest"]
            .as_str()
            .expect("digest")
            .to_owned()
    };

    // The upstream goes away: whatever a node pulls now comes from the cache.
    drop(upstream);
    let hosts = tempfile::tempdir().expect("hosts dir");
    let mirror = format!("http://{c}");
    hosts_toml(&config, &mirror, hosts.path(), &[]);
    // The same cache paths, named as an operator's config names them: Docker Hub and ghcr.io.
    let named = format!(
        "cache_registry: \"{c}\"\nimages:\n  - {{source: \"library/nodes-official\", tag: \"1\"}}\n  - {{source: \"ghcr.io/org/nodes-app\", tag: \"1\"}}\n"
    );
    hosts_toml(&named, &mirror, hosts.path(), &[]);
    let prefixed_hosts = tempfile::tempdir().expect("prefixed hosts dir");
    hosts_toml(&prefixed, &mirror, prefixed_hosts.path(), &[]);
    let docker_file =
        std::fs::read_to_string(hosts.path().join("docker.io/hosts.toml")).expect("docker.io");
    assert!(
        docker_file.contains(&format!("[host.\"http://{c}\"]")),
        "{docker_file}"
    );

    let pulls = [
        // (reference a node pulls, hosts dir, repository the cache serves, ns, expected digest)
        (
            format!("{up}/library/nodes-official:1"),
            hosts.path(),
            "library/nodes-official",
            Some(up.as_str()),
            digest(&first, 0),
        ),
        (
            "docker.io/library/nodes-official:1".to_owned(),
            hosts.path(),
            "library/nodes-official",
            Some("docker.io"),
            digest(&first, 0),
        ),
        (
            "ghcr.io/org/nodes-app:1".to_owned(),
            hosts.path(),
            "org/nodes-app",
            Some("ghcr.io"),
            digest(&first, 1),
        ),
        (
            format!("{up}/library/nodes-multi:1"),
            hosts.path(),
            "library/nodes-multi",
            Some(up.as_str()),
            digest(&first, 2),
        ),
        // A distinct cache_as: by the cache's own name.
        (
            format!("{c}/team/renamed:1"),
            hosts.path(),
            "team/renamed",
            None,
            digest(&first, 3),
        ),
        // A cache path prefix: override_path = true and the prefix in the host URL.
        (
            format!("{up}/org/nodes-prefixed:1"),
            prefixed_hosts.path(),
            "mirror/org/nodes-prefixed",
            Some(up.as_str()),
            digest(&second, 0),
        ),
    ];
    for (reference, dir, repository, ns, expected) in pulls {
        let served_before = served(&cache, repository, ns);
        let pulled = containerd.pull_ok(dir, &reference);
        assert_eq!(
            pulled,
            support::containerd::Pulled {
                digest: expected,
                unpacked: true
            },
            "{reference}"
        );
        assert!(
            served(&cache, repository, ns) > served_before,
            "the cache served no manifest of {repository} (ns {ns:?}) for {reference}; manifest requests: {:?}",
            cache
                .requests()
                .iter()
                .filter(|(_, path, _)| path.contains("/manifests/"))
                .collect::<Vec<_>>()
        );
    }
    // A copy by upstream name of an image with a distinct cache_as is not in the cache.
    let missing = containerd.pull(hosts.path(), &format!("{up}/other/nodes-renamed:1"));
    assert!(!missing.status.success());
}

#[test]
fn fail_open_falls_back_to_the_upstream_and_fail_closed_never_asks_it() {
    let Some((pair, containerd)) = pair_and_containerd() else {
        return;
    };
    let Pair {
        tools,
        upstream,
        cache,
    } = pair;
    let (up, c) = (upstream.host(), cache.host());
    image::push_new(
        &tools,
        Kind::Single,
        "nodes-uncached",
        &format!("{up}/team/uncached:1"),
        Format::Oci,
    );
    // Listed but not synced yet: the cache does not have it.
    let config = format!(
        "cache_registry: \"{c}\"\nimages:\n  - {{source: \"{up}/team/uncached\", tag: \"1\"}}\n"
    );
    let open = tempfile::tempdir().expect("open");
    let closed = tempfile::tempdir().expect("closed");
    let mirror = format!("http://{c}");
    hosts_toml(&config, &mirror, open.path(), &[]);
    hosts_toml(&config, &mirror, closed.path(), &["--fail-closed"]);
    let reference = format!("{up}/team/uncached:1");

    let before = upstream.counts();
    let failed = containerd.pull(closed.path(), &reference);
    assert!(
        !failed.status.success(),
        "fail-closed pulled from somewhere: {}",
        String::from_utf8_lossy(&failed.stdout)
    );
    assert_eq!(
        upstream.counts() - before,
        Default::default(),
        "fail-closed asked the upstream"
    );
    let asked = cache
        .requests()
        .iter()
        .filter(|(_, path, status)| {
            path.starts_with("/v2/team/uncached/manifests/1") && *status == 404
        })
        .count();
    assert!(
        asked >= 1,
        "the cache was not asked: {:?}",
        cache.requests()
    );

    let pulled = containerd.pull_ok(open.path(), &reference);
    assert!(pulled.unpacked);
    let spent = upstream.counts() - before;
    assert_eq!(
        spent.manifest_gets, 1,
        "fail-open: the node's pull is one manifest GET upstream ({spent:?})"
    );
}

#[test]
fn the_nodes_chapter_prints_the_files_hosts_toml_writes() {
    let chapter =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/src/nodes.md"))
            .expect("docs/src/nodes.md");
    let config = "cache_registry: \"image-cache.image-cache.svc.cluster.local:5000\"\nimages:\n  - {source: \"docker.io/library/nginx\", tag: \"1.27-alpine\"}\n  - {source: \"ghcr.io/project-zot/zot-linux-amd64\", tag: \"v2.1.2\"}\n";
    let prefixed = config.replace(".local:5000", ".local:5000/mirror");
    for (config, extra) in [
        (config, &[][..]),
        (config, &["--fail-closed"][..]),
        (prefixed.as_str(), &[][..]),
    ] {
        let dir = tempfile::tempdir().expect("dir");
        hosts_toml(config, "http://10.96.120.15:5000", dir.path(), extra);
        let written =
            std::fs::read_to_string(dir.path().join("docker.io/hosts.toml")).expect("docker.io");
        // The prefixed example in the chapter is shown without the comment lines, indented.
        let shown: String = if config.contains("/mirror") {
            written
                .lines()
                .filter(|line| !line.starts_with('#'))
                .map(|line| {
                    if line.is_empty() {
                        "\n".to_owned()
                    } else {
                        format!("  {line}\n")
                    }
                })
                .collect()
        } else {
            written.clone()
        };
        assert!(
            chapter.contains(&shown),
            "docs/src/nodes.md does not show the file hosts-toml writes ({extra:?}):\n{shown}"
        );
    }
}
